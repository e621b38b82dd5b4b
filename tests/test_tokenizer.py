"""The VQ fMRI tokenizer as a user relies on it: stable codes, region-order invariance, save/load, any atlas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmrilm.atlas import Atlas
from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan
from fmrilm.tokenizer import FmriTokenizerConfig, FmriTokenizerModel
from fmrilm.tokenizer.losses import (
    TokenizerLoss,
    TokenizerLossConfig,
    gradient_reversal,
    reconstruction_loss,
    siglip_loss,
)

N_REGIONS = 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def tiny_config(**overrides) -> FmriTokenizerConfig:
    return FmriTokenizerConfig.from_preset("tiny", codebook_size=32, num_latents=8, **overrides)


def windows_and_coords(n: int = 12, regions: int = N_REGIONS, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 48, regions, generator=gen)
    coords = torch.rand(regions, 3, generator=gen) * 140 - 70
    return x, coords


def trained_tokenizer(
    quantizer: str = "vq", steps: int = 3
) -> tuple[FmriTokenizerModel, torch.Tensor, torch.Tensor]:
    """A tokenizer after a few training steps (its k-means codebook initialised and EMA-updated)."""
    torch.manual_seed(0)
    model = FmriTokenizerModel(tiny_config(quantizer=quantizer))
    x, coords = windows_and_coords()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        out = model(x, coords, mask_ratio=0.5)
        loss = reconstruction_loss(out.reconstruction, x) + out.commit_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, x, coords


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_save_load_gives_identical_codes_and_signal(tmp_path, quantizer):
    from transformers import AutoConfig, AutoModel

    model, x, coords = trained_tokenizer(quantizer)
    codes = model.encode(x, coords)
    assert codes.shape == (len(x), 8) and codes.dtype == torch.long
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin")), "weights must be safetensors only"

    loaded = FmriTokenizerModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.encode(x, coords), codes)
    assert torch.equal(loaded.decode(codes, coords), model.decode(codes, coords))
    assert torch.equal(loaded.codebook_vectors(), model.codebook_vectors())
    # registered with the Auto classes
    assert AutoConfig.from_pretrained(tmp_path).model_type == "fmri_tokenizer"
    auto = AutoModel.from_pretrained(tmp_path)
    assert isinstance(auto, FmriTokenizerModel)
    assert torch.equal(auto.encode(x, coords), codes)


def test_eval_codes_are_deterministic_and_do_not_touch_the_codebook():
    model, x, coords = trained_tokenizer()
    model.train()  # encode must behave as eval regardless of the mode the model is in
    before = model.codebook_vectors()
    first = model.encode(x, coords)
    second = model.encode(x, coords)
    assert torch.equal(first, second)
    assert torch.equal(model.codebook_vectors(), before), "encode must not update the EMA codebook"
    assert model.training, "encode must restore the training mode"


def test_untrained_tokenizer_encodes_deterministically_without_kmeans_on_the_input():
    model = FmriTokenizerModel(tiny_config())
    x, coords = windows_and_coords()
    assert not model.is_codebook_initialized
    first = model.encode(x, coords)
    assert torch.equal(model.encode(x[:5], coords), first[:5]), "codes must not depend on the batch"
    assert not model.is_codebook_initialized, "eval must leave the k-means initialisation to training"


def test_permuting_regions_with_their_coordinates_leaves_codes_unchanged():
    """The encoder has no region-index embedding: it reads a set of (signal, position) pairs.

    Float sums in another order differ by ~1e-7, so latents are compared with atol 1e-5 and codes exactly.
    """
    model, x, coords = trained_tokenizer()
    perm = torch.randperm(N_REGIONS, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        lat, _, _ = model.encode_latents(x, coords)
        lat_p, _, _ = model.encode_latents(x[:, :, perm], coords[perm])
    torch.testing.assert_close(lat_p, lat, atol=1e-5, rtol=0)
    codes = model.encode(x, coords)
    assert torch.equal(model.encode(x[:, :, perm], coords[perm]), codes)
    # the decoder is equivariant: asking for the permuted regions gives the permuted signal
    torch.testing.assert_close(
        model.decode(codes, coords[perm]), model.decode(codes, coords)[:, :, perm], atol=1e-5, rtol=0
    )


def test_one_tokenizer_reads_and_writes_any_atlas():
    model, _, _ = trained_tokenizer()
    for regions in (7, 33):
        x, coords = windows_and_coords(n=3, regions=regions, seed=regions)
        codes = model.encode(x, coords)
        assert codes.shape == (3, 8)
        assert model.decode(codes, coords).shape == (3, 48, regions)
    atlas = Atlas.builtin("dosenbach160")
    assert model.decode(codes, atlas).shape == (3, 48, 160)
    assert ((0 <= codes) & (codes < 32)).all()


def test_encode_a_scan_uses_the_tokenizer_windows():
    model, _, _ = trained_tokenizer()
    atlas = Atlas.builtin("dosenbach160").subset(np.arange(N_REGIONS), name="sub20")
    rng = np.random.default_rng(0)
    scan = Scan(timeseries=rng.standard_normal((130, N_REGIONS)), tr=2.0, atlas=atlas, scan_id="s1")
    windows, mask = model.windows(scan)
    assert windows.shape == (3, 48, N_REGIONS) and mask.shape == (3, 48)
    assert not mask[-1].all(), "130 samples end in a padded window"
    codes = model.encode(scan)
    assert torch.equal(codes, model.encode(windows, atlas, mask=mask))
    assert model.embed(scan).shape == (3, model.config.hidden_size)


def test_bad_input_fails_with_one_clear_error():
    model, x, coords = trained_tokenizer()
    with pytest.raises(FmriInputError, match="not \\(windows, 48, regions\\)"):
        model.encode(x[:, :40], coords)
    with pytest.raises(FmriInputError, match="coordinates"):
        model.encode(x, coords[:5])
    with pytest.raises(FmriInputError, match="no atlas"):
        model.encode(Scan(timeseries=np.zeros((60, N_REGIONS)), tr=2.0, scan_id="s"))
    with pytest.raises(FmriInputError, match="must lie in"):
        model.decode(torch.full((1, 8), 99), coords)
    with pytest.raises(FmriInputError, match="not \\(windows, 8\\)"):
        model.decode(torch.zeros(2, 5, dtype=torch.long), coords)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(FmriInputError, match="NaN"):
        model.encode(bad, coords)
    with pytest.raises(ValueError, match="multiple of patch_length"):
        FmriTokenizerConfig(window_length=40, patch_length=24)
    with pytest.raises(ValueError, match="fsq_levels"):
        FmriTokenizerConfig(quantizer="fsq", codebook_size=512, fsq_levels=[8, 8])


def test_codebook_views_have_documented_shapes():
    model, _, _ = trained_tokenizer()
    assert model.codebook_vectors().shape == (32, model.config.codebook_dim)
    assert model.code_embeddings().shape == (32, model.config.hidden_size)
    assert model.code_text_embeddings() is None  # not aligned to an LLM
    aligned = FmriTokenizerModel(tiny_config(text_embed_dim=24))
    assert aligned.code_text_embeddings().shape == (32, 24)
    fsq = FmriTokenizerModel(tiny_config(quantizer="fsq"))
    assert fsq.codebook_vectors().shape == (32, len(fsq.config.fsq_levels))


def test_reconstruction_loss_ignores_padding():
    target = torch.zeros(2, 4, 3)
    pred = torch.zeros(2, 4, 3)
    pred[:, 2:] = 10.0  # wrong only where the window is padding
    mask = torch.tensor([[True, True, False, False]] * 2)
    assert reconstruction_loss(pred, target, mask).item() == 0.0
    assert reconstruction_loss(pred, target).item() > 0


def test_siglip_loss_prefers_matching_pairs_and_reversal_flips_gradients():
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(6, 16, generator=gen)
    positives = torch.eye(6, dtype=torch.bool)
    scale, bias = torch.tensor(2.3), torch.tensor(-5.0)
    matched = siglip_loss(text + 0.05 * torch.randn(6, 16, generator=gen), text, positives, scale, bias)
    shuffled = siglip_loss(text.roll(1, 0), text, positives, scale, bias)
    assert matched < shuffled

    x = torch.ones(3, requires_grad=True)
    (gradient_reversal(x, 0.5) * 2).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -1.0))


def test_subject_loss_reads_only_windows_whose_scan_is_known_and_trains_the_encoder():
    """The subject term is the MSE of a linear head on the pooled codes against the window's scan components;
    windows without a known scan (NaN targets) neither count nor move it."""
    x, coords = windows_and_coords()
    model = FmriTokenizerModel(tiny_config())
    model.train()
    loss_fn = TokenizerLoss(TokenizerLossConfig(subject_weight=2.0), model.config.hidden_size, subject_dim=3)
    out = model(x, coords, mask_ratio=0.0)
    target = torch.randn(len(x), 3, generator=torch.Generator().manual_seed(1))
    target[::3] = float("nan")
    total, parts = loss_fn(out, x, subject_target=target)
    known = ~torch.isnan(target).any(1)
    expected = torch.nn.functional.mse_loss(loss_fn.subject_head(out.pooled[known]), target[known])
    assert parts["subject"] == pytest.approx(float(expected.detach()), rel=1e-5)
    assert float(total.detach()) == pytest.approx(
        parts["reconstruction"] + 0.25 * parts["commitment"] + 2 * parts["subject"], rel=1e-5
    )
    # the subject term alone reaches the window encoder (its codes are what must carry the scan)
    alone = TokenizerLoss(
        TokenizerLossConfig(reconstruction_weight=0.0, commitment_weight=0.0, subject_weight=1.0),
        model.config.hidden_size,
        subject_dim=3,
    )
    only, parts = alone(out, x, subject_target=target)
    assert set(parts) == {"reconstruction", "subject"}
    only.backward()
    assert alone.subject_head.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    # switched off (weight 0, or no targets given): no subject term
    off = TokenizerLoss(TokenizerLossConfig(), model.config.hidden_size, subject_dim=3)
    assert "subject" not in off(out, x, subject_target=target)[1] and off.subject_head is None


def test_tokenizer_loss_uses_every_configured_term():
    x, coords = windows_and_coords()
    model = FmriTokenizerModel(tiny_config(text_embed_dim=16))
    model.train()
    loss_fn = TokenizerLoss(TokenizerLossConfig(site_weight=0.1), model.config.hidden_size, 16, num_sites=3)
    out = model(x, coords, mask_ratio=0.5)
    text = torch.randn(4, 16)
    text_index = torch.tensor([0, 1, 2, 3, -1, 0, 1, 2, 3, 0, 1, -1])
    sites = torch.tensor([0, 1, 2] * 4)
    total, parts = loss_fn(out, x, None, model.align_proj, text, text_index, sites)
    assert set(parts) == {"reconstruction", "commitment", "alignment", "adversarial", "site"}
    total.backward()
    assert model.align_proj.weight.grad is not None and loss_fn.site_classifier[0].weight.grad is not None
    # without texts and sites only reconstruction and commitment are computed
    _, parts = TokenizerLoss(TokenizerLossConfig(), model.config.hidden_size)(out, x)
    assert set(parts) == {"reconstruction", "commitment"}


def test_quantizers_build_without_library_warnings(capfd):
    """Building the window and connectome quantizers prints nothing (vector-quantize-pytorch >= 1.34 logs a
    deprecation for its old dead-code argument), and the dead-code rule is the one the tokenizer is configured
    with, as a count or as the library's own conversion of it to a share of the mean cluster size."""
    from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer
    from fmrilm.tokenizer.modeling import dead_code_kwargs

    config = tiny_config()
    model = FmriTokenizerModel(config)
    connectome = ConnectomeTokenizer(ConnectomeConfig(num_tokens=4, components=8), np.zeros((6, 3)))
    captured = capfd.readouterr()
    assert "deprecated" not in captured.err + captured.out
    kwargs = dead_code_kwargs(config.vq_dead_code_threshold, config.codebook_size)
    (name, value), *_ = kwargs.items()
    codebook = model.quantizer._codebook
    if name == "dead_code_threshold_ratio":
        assert value == pytest.approx(config.vq_dead_code_threshold / config.codebook_size)
        assert codebook.dead_code_threshold_ratio == pytest.approx(value)
        assert connectome.quantizer.layers[0]._codebook.dead_code_threshold_ratio == pytest.approx(
            1.0 / connectome.config.codebook_size
        )
    else:
        assert codebook.threshold_ema_dead_code == pytest.approx(config.vq_dead_code_threshold)
