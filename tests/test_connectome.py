"""Connectome tokens and soft brain tokens: what a user relies on when the LLM reads a whole scan's FC."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from fmrilm.atlas import Atlas
from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan
from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer, resampling_weights

SMALL = ConnectomeConfig(num_tokens=2, components=8, codebook_size=8, num_levels=2, quantizer_steps=20)


def structured_scan(atlas: Atlas, seed: int, n_timepoints: int = 80, scan_id: str | None = None) -> Scan:
    """A scan whose regions share a few latent sources with subject-specific loadings (real FC structure)."""
    rng = np.random.default_rng(seed)
    sources = rng.standard_normal((n_timepoints, 4))
    loadings = rng.standard_normal((4, atlas.n_regions))
    ts = sources @ loadings + 0.5 * rng.standard_normal((n_timepoints, atlas.n_regions))
    sid = scan_id or f"s{seed}"
    return Scan(ts.astype(np.float32), tr=2.0, atlas=atlas, scan_id=sid, subject_id=f"sub-{sid}")


def tiny_connectome_model(n_scans: int):
    """A tiny LLM with connectome tokens (2 x 4 components) and a scan summary, fitted on ``n_scans`` scans of a
    24-region atlas: ``(model, connectome tokenizer, scans)``."""
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    atlas = Atlas.builtin("dosenbach160").subset(np.arange(24))
    scans = [structured_scan(atlas, i) for i in range(n_scans)]
    config = ConnectomeConfig(num_tokens=2, components=8, codebook_size=8, num_levels=2, quantizer_steps=20)
    tok = ConnectomeTokenizer.fit(scans, config)
    host = tiny_fmri_tokenizer()
    host.set_connectome(tok)
    llm, text_tokenizer = tiny_causal_lm()
    return FmriLM.from_base(llm, host, tokenizer=text_tokenizer), tok, scans


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    return Atlas.builtin("dosenbach160").subset(np.arange(24))


@pytest.fixture(scope="module")
def fitted(atlas) -> tuple[ConnectomeTokenizer, list[Scan]]:
    scans = [structured_scan(atlas, i) for i in range(14)]
    return ConnectomeTokenizer.fit(scans, SMALL), scans


def test_connectome_tokens_do_not_depend_on_region_order(fitted):
    tok, scans = fitted
    scan = scans[3]
    perm = np.random.default_rng(1).permutation(scan.n_regions)
    shuffled = replace(scan, timeseries=scan.timeseries[:, perm], atlas=scan.atlas.subset(perm))
    a, b = tok.encode(scan), tok.encode(shuffled)
    np.testing.assert_allclose(a.values, b.values, atol=1e-5)
    np.testing.assert_array_equal(a.codes, b.codes)


def test_tangent_vector_equals_nilearns_tangent_transform(fitted):
    from nilearn.connectome import ConnectivityMeasure

    tok, scans = fitted
    series = [tok.reference_timeseries(s) for s in scans]
    measure = ConnectivityMeasure(kind="tangent", vectorize=True, discard_diagonal=True).fit(series)
    ours = np.stack([tok.tangent_vector(x) for x in series])
    np.testing.assert_allclose(ours, measure.transform(series), atol=1e-6)


def test_scans_differ_and_quantizer_keeps_more_with_more_levels(fitted):
    tok, scans = fitted
    z = tok.continuous(scans)
    assert z.shape == (len(scans), SMALL.components)
    assert np.abs(z[0] - z[1]).max() > 0.1  # different subjects, different tokens
    assert np.mean(z.var(axis=0)) == pytest.approx(1.0, rel=0.1)  # unit variance on average when fitted
    codes, deq = tok.quantize(z)
    assert codes.shape == (len(scans), SMALL.num_tokens, SMALL.num_levels)
    first = tok.quantizer.layers[0]  # the first level alone
    with torch.no_grad():
        one, _, _ = first(torch.as_tensor(z).view(len(z), SMALL.num_tokens, -1))
    err_one = np.linalg.norm(z - one.reshape(len(z), -1).numpy())
    err_all = np.linalg.norm(z - deq)
    assert err_all < err_one


def test_another_atlas_maps_into_the_same_space(fitted):
    tok, _ = fitted
    other = Atlas.builtin("seitzman300").subset(np.arange(40))
    tokens = tok.encode(structured_scan(other, 99))
    assert tokens.values.shape == (SMALL.num_tokens, SMALL.group_dim)
    assert np.isfinite(tokens.values).all()


def test_kernel_is_the_identity_on_the_reference_and_fills_bad_regions(atlas):
    w = resampling_weights(atlas.coords, atlas.coords, sigma_mm=4.0)
    assert np.allclose(np.diag(w), 1.0, atol=0.05)
    usable = np.ones(atlas.n_regions, dtype=bool)
    usable[5] = False
    w = resampling_weights(atlas.coords, atlas.coords, sigma_mm=4.0, usable=usable)
    assert w[:, 5].max() == 0.0 and np.isclose(w[5].sum(), 1.0)


def test_save_and_load_give_identical_tokens(fitted, tmp_path):
    tok, scans = fitted
    tok.save_pretrained(tmp_path / "c")
    again = ConnectomeTokenizer.from_pretrained(tmp_path / "c")
    a, b = tok.encode(scans[0]), again.encode(scans[0])
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_allclose(a.values, b.values)


def test_components_are_the_pca_of_standardized_tangent_features_keeping_their_relative_variance(fitted):
    """The default: each tangent feature z-scored over the fitting scans (as the tangent-FC baseline's probe
    sees it), then a PCA whose components keep their share of the variance, unit variance on average."""
    from sklearn.decomposition import PCA

    tok, scans = fitted
    vectors = np.stack([tok.tangent_vector(tok.reference_timeseries(s)) for s in scans])
    standardized = (vectors - vectors.mean(axis=0)) / vectors.std(axis=0)
    pca = PCA(n_components=SMALL.components).fit(standardized)
    expected = pca.transform(standardized) / np.sqrt(np.mean(pca.explained_variance_))
    z = tok.continuous(scans)
    signs = np.sign((z * expected).sum(axis=0))  # a PCA axis is defined up to its sign
    np.testing.assert_allclose(z * signs, expected, rtol=1e-3, atol=1e-4)


def test_components_are_whitened_on_request_and_old_tokenizers_load_as_trained(fitted, tmp_path):
    from safetensors.torch import load_file, save_file

    tok, scans = fitted
    whitened = ConnectomeTokenizer.fit(scans, replace(SMALL, whiten=True))
    z, zw = tok.continuous(scans), whitened.continuous(scans)
    np.testing.assert_allclose(zw.std(axis=0), 1.0, atol=0.2)
    # the same reference and PCA: the two differ by the per-component scale only
    scale = tok.pca_scale.numpy()
    np.testing.assert_allclose(zw * scale / tok.component_divisor(), z, rtol=1e-4, atol=1e-5)
    # a tokenizer saved before `whiten` and `standardize` existed whitened raw tangent features, and had no
    # feature scale: it must load as it was trained
    old = ConnectomeTokenizer.fit(scans, replace(SMALL, whiten=True, standardize=False))
    assert np.all(old.feature_scale.numpy() == 1.0)
    old.save_pretrained(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "connectome_config.json").read_text())
    del meta["whiten"], meta["standardize"]
    (tmp_path / "old" / "connectome_config.json").write_text(json.dumps(meta))
    state = load_file(str(tmp_path / "old" / "connectome.safetensors"))
    del state["feature_scale"]
    save_file(state, str(tmp_path / "old" / "connectome.safetensors"))
    loaded = ConnectomeTokenizer.from_pretrained(tmp_path / "old")
    assert loaded.config.whiten is True and loaded.config.standardize is False
    np.testing.assert_allclose(loaded.continuous(scans[:2]), old.continuous(scans[:2]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(old.continuous(scans[:2]), zw[:2], atol=1e-2)  # standardizing changes them
    # a standardizing tokenizer without its feature scale is refused by name, not loaded with ones
    tok.save_pretrained(tmp_path / "new")
    state = load_file(str(tmp_path / "new" / "connectome.safetensors"))
    del state["feature_scale"]
    save_file(state, str(tmp_path / "new" / "connectome.safetensors"))
    with pytest.raises(FmriInputError, match="weights do not match its config"):
        ConnectomeTokenizer.from_pretrained(tmp_path / "new")


def test_too_few_scans_and_bad_sizes_are_refused(atlas):
    from fmrilm.errors import FmriInputError

    with pytest.raises(FmriInputError, match="multiple of num_tokens"):
        ConnectomeConfig(num_tokens=3, components=8)
    with pytest.raises(FmriInputError, match="4 connectome tokens need more than 4 training scans, got 3"):
        ConnectomeTokenizer.fit([structured_scan(atlas, i) for i in range(3)], replace(SMALL, num_tokens=4))


def test_a_fit_keeps_as_many_components_as_its_scans_support(atlas):
    """`components` is the most: 5 scans support 4 of SMALL's 8 (a PCA keeps one fewer than its scans)."""
    tok = ConnectomeTokenizer.fit([structured_scan(atlas, i) for i in range(5)], SMALL)
    assert tok.config.components == 4 and tok.config.group_dim == 2
    assert tok.encode(structured_scan(atlas, 9)).values.shape == (2, 2)


# ------------------------------------------------------------------------------------------ the LLM side
@pytest.fixture(scope="module")
def model(fitted):
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    tok, _ = fitted
    host = tiny_fmri_tokenizer()
    host.set_connectome(tok)
    llm, text_tokenizer = tiny_causal_lm()
    return FmriLM.from_base(llm, host, tokenizer=text_tokenizer)


def _messages():
    return [{"role": "user", "content": [{"type": "fmri"}, {"type": "text", "text": "Describe."}]}]


def test_every_fmri_part_starts_with_the_connectome_tokens_and_carries_their_values(model, fitted):
    _, scans = fitted
    proc = model.processor
    batch = proc([_messages(), _messages()], [[scans[0]], [scans[1]]])
    ids = batch["input_ids"]
    fc = proc.ids.is_connectome(ids)
    assert fc.sum(1).tolist() == [SMALL.num_tokens, SMALL.num_tokens]
    for b, scan in enumerate(scans[:2]):
        start = int((ids[b] == proc.ids.start_id).nonzero()[0])
        assert fc[b, start + 1 : start + 1 + SMALL.num_tokens].all()  # right after <brain_start>
        values = batch["connectome_values"][b][fc[b]].numpy()  # (M, components), block-sparse
        expected = fitted[0].encode(scan).values
        d = SMALL.group_dim
        for g in range(SMALL.num_tokens):
            np.testing.assert_allclose(values[g, g * d : (g + 1) * d], expected[g], atol=1e-6)
            assert not np.delete(values[g], np.s_[g * d : (g + 1) * d]).any()
        # the scan summary: the start marker holds every component at once
        summary = batch["connectome_values"][b, start].numpy()
        np.testing.assert_allclose(summary, expected.reshape(-1), atol=1e-6)
        rest = np.ones(ids.shape[1], bool)
        rest[np.flatnonzero(fc[b])] = False
        rest[start] = False
        assert not batch["connectome_values"][b][rest].any()  # text and window codes read no values


def test_a_prompt_showing_one_connectome_token_keeps_each_scans_whole_vector_on_its_start_marker(
    model, fitted
):
    """``connectome_shown=1``: each part shows only its first connectome token, yet its start marker still
    reads all M groups of its own scan (two parts in one prompt: the second scan's values stay its own)."""
    _, scans = fitted
    proc, tok = model.processor, fitted[0]
    two = [
        {
            "role": "user",
            "content": [{"type": "fmri"}, {"type": "fmri"}, {"type": "text", "text": "Compare."}],
        }
    ]
    full = proc(two, [scans[0], scans[1]])["input_ids"]
    proc.config.connectome_shown = 1
    try:
        batch = proc(two, [scans[0], scans[1]])
    finally:
        proc.config.connectome_shown = None
    ids, values = batch["input_ids"][0], batch["connectome_values"][0].numpy()
    assert full.shape[1] - ids.shape[0] == 2 * (SMALL.num_tokens - 1)  # M - 1 fewer tokens per part
    starts = (ids == proc.ids.start_id).nonzero()[:, 0].tolist()
    fc = proc.ids.is_connectome(ids).nonzero()[:, 0].tolist()
    assert fc == [s + 1 for s in starts]  # one connectome token right after each start marker
    d = SMALL.group_dim
    for start, scan in zip(starts, scans[:2], strict=True):
        expected = tok.encode(scan).values
        np.testing.assert_allclose(values[start], expected.reshape(-1), atol=1e-6)  # the whole vector
        np.testing.assert_allclose(values[start + 1, :d], expected[0], atol=1e-6)  # group 0 on its token
        assert not values[start + 1, d:].any()
    with pytest.raises(FmriInputError, match="connectome_shown"):
        type(proc.config)(connectome_shown=0)


def test_without_values_the_model_is_plain_transformers(model, fitted):
    _, scans = fitted
    batch = model.processor(_messages(), [scans[0]])
    plain = model.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ours, plain)
    soft = model(**batch).logits
    assert not torch.allclose(soft, plain)  # the values change what the LLM reads
    projection = model.soft_projection
    with torch.no_grad():
        saved = [projection.proj.weight.clone(), projection.summary.weight.clone()]
        projection.proj.weight.zero_()
        try:  # only the summary reads the values: the scan changes the start marker alone
            only_summary = model(**batch).logits
            start = int((batch["input_ids"][0] == model.processor.ids.start_id).nonzero()[0])
            torch.testing.assert_close(only_summary[0, :start], plain[0, :start])
            assert not torch.allclose(only_summary[0, start:], plain[0, start:])
            projection.summary.weight.zero_()  # zero projections: exactly the code embeddings
            torch.testing.assert_close(model(**batch).logits, plain)
        finally:
            projection.proj.weight.copy_(saved[0])
            projection.summary.weight.copy_(saved[1])


def test_the_scan_summary_reads_only_the_leading_components_it_is_given(fitted, tmp_path):
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.processing import FmriProcessorConfig
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    tok, scans = fitted
    host = tiny_fmri_tokenizer()
    host.set_connectome(tok)
    llm, text_tokenizer = tiny_causal_lm()
    top3 = FmriLM.from_base(llm, host, tokenizer=text_tokenizer, scan_summary_components=3)
    assert top3.soft_projection.summary.weight.shape[1] == 3
    batch = top3.processor(_messages(), [scans[0]])
    start = int((batch["input_ids"][0] == top3.processor.ids.start_id).nonzero()[0])
    with torch.no_grad():
        top3.soft_projection.proj.weight.zero_()  # the summary alone reads the values
        base = top3(**batch).logits
        tail = {k: v.clone() for k, v in batch.items()}
        tail["connectome_values"][0, start, 3:] += 5.0  # past the summary's components: nothing changes
        torch.testing.assert_close(top3(**tail).logits, base)
        head = {k: v.clone() for k, v in batch.items()}
        head["connectome_values"][0, start, 0] += 5.0
        assert not torch.allclose(top3(**head).logits, base)
    top3.save_pretrained(tmp_path / "m")
    again = FmriLM.from_pretrained(tmp_path / "m")
    assert again.processor.config.summary_components == 3
    torch.testing.assert_close(again(**batch).logits, base)
    # a model saved before the setting existed read every component
    assert FmriProcessorConfig(connectome_tokens=2, connectome_components=8).summary_components == 8
    with pytest.raises(FmriInputError, match="scan_summary_components"):
        FmriProcessorConfig(scan_summary_components=0)


def test_discrete_only_models_emit_no_values(fitted):
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    tok, scans = fitted
    host = tiny_fmri_tokenizer()
    host.set_connectome(tok)
    llm, text_tokenizer = tiny_causal_lm()
    discrete = FmriLM.from_base(llm, host, tokenizer=text_tokenizer, soft_tokens=False)
    batch = discrete.processor(_messages(), [scans[0]])
    assert "connectome_values" not in batch and discrete.soft_projection is None
    assert discrete.processor.ids.is_connectome(batch["input_ids"]).sum() == SMALL.num_tokens
    llm, text_tokenizer = tiny_causal_lm()
    groups_only = FmriLM.from_base(llm, host, tokenizer=text_tokenizer, scan_summary=False)
    batch = groups_only.processor(_messages(), [scans[0]])
    assert groups_only.soft_projection.summary is None
    start = int((batch["input_ids"][0] == groups_only.processor.ids.start_id).nonzero()[0])
    assert not batch["connectome_values"][0, start].any()


def test_save_load_gives_identical_answers_and_generation_keeps_the_prompt(model, fitted, tmp_path):
    from fmrilm.model.modeling import FmriLM

    _, scans = fitted
    with torch.no_grad():
        model.soft_projection.proj.weight.mul_(3.0)  # trained-looking, not the initial values
        model.soft_projection.summary.weight.mul_(3.0)
    model.save_pretrained(tmp_path / "m")
    again = FmriLM.from_pretrained(tmp_path / "m")
    batch = model.processor(_messages(), [scans[2]])
    torch.testing.assert_close(
        model(**batch).logits, again(**again.processor(_messages(), [scans[2]])).logits
    )
    out = again.generate(**batch, max_new_tokens=3, do_sample=False)
    assert torch.equal(out[0, : batch["input_ids"].shape[1]], batch["input_ids"][0])
    assert again.reply(_messages(), [scans[2]], max_new_tokens=4) == model.reply(
        _messages(), [scans[2]], max_new_tokens=4
    )


def test_stage3_examples_carry_the_connectome_values(model, fitted):
    from fmrilm.train.stage3 import EncodedScans, build_examples

    tok, scans = fitted
    codes = EncodedScans({"s0": np.zeros((2, model.processor.config.num_latents), np.int64)})
    codes.connectome = {"s0": tok.encode(scans[0])}
    row = {
        "task": "t",
        "messages": [
            {"role": "user", "content": [{"type": "fmri", "scan_id": "s0"}, {"type": "text", "text": "?"}]},
            {"role": "assistant", "content": "yes"},
        ],
    }
    (example,), _ = build_examples(model.processor, [row], codes)
    np.testing.assert_allclose(example["connectome_values"], tok.encode(scans[0]).values)
    loss = model(**model.processor.pad([example]), loss_reduction="example").loss
    loss.backward()
    assert model.soft_projection.proj.weight.grad.abs().sum() > 0  # the projection learns
    assert model.soft_projection.summary.weight.grad.abs().sum() > 0  # and the scan summary
    model.zero_grad()


def test_finetuned_adapters_keep_their_soft_projection(fitted, tmp_path):
    import copy

    from fmrilm.train.finetune import save_adapters
    from safetensors.torch import load_file

    from fmrilm.model.adapters import LoraSettings
    from fmrilm.model.modeling import FmriLM, SoftBrainProjection
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    tok, _ = fitted
    host = tiny_fmri_tokenizer()
    host.set_connectome(tok)
    llm, text_tokenizer = tiny_causal_lm()
    model = FmriLM.from_base(llm, host, tokenizer=text_tokenizer)
    tuned = copy.deepcopy(model).add_adapters(LoraSettings(r=2))
    with torch.no_grad():
        tuned.soft_projection.proj.weight.add_(1.0)  # what fine-tuning changed
    save_adapters(tuned, tmp_path, {"note": "test"})
    saved = load_file(str(tmp_path / SoftBrainProjection.WEIGHTS_NAME))
    torch.testing.assert_close(saved["proj.weight"], tuned.soft_projection.proj.weight.detach())


def test_a_model_fitted_on_cc200_and_dosenbach_reads_seitzman_and_nifti_scans(abide_dir, tmp_path):
    """Any atlas: connectome tokens fitted on CC200 (ABIDE) and simulated Dosenbach-160 scans; a Seitzman-300
    scan and a NIfTI scan parcellated with its own labels image go through the whole model."""
    from fmrilm.data_gen.nifti import write_bold_image, write_labels_image

    from fmrilm import load_scan
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.scoring import TaskCard, store_tasks
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    cc200 = Atlas.from_centroids_table(abide_dir / "cc200_centroids.csv")
    dosenbach = Atlas.builtin("dosenbach160")
    scans = [structured_scan(cc200, i) for i in range(8)] + [
        structured_scan(dosenbach, 50 + i) for i in range(8)
    ]
    tok = ConnectomeTokenizer.fit(scans, SMALL, reference_coords=cc200.coords)
    host = tiny_fmri_tokenizer()
    host.set_connectome(tok)
    llm, text_tokenizer = tiny_causal_lm()
    model = FmriLM.from_base(llm, host, tokenizer=text_tokenizer)
    card = TaskCard(name="diagnosis", type="binary", questions=["Diagnosis?"], options=["yes", "no"])
    store_tasks(model, [card])

    seitzman = structured_scan(Atlas.builtin("seitzman300"), 7)
    small = Atlas.builtin("seitzman300").subset(np.arange(0, 300, 10))  # 30 regions, a labels image of them
    labels_path, labels, affine = write_labels_image(small, tmp_path / "atlas")
    bold = write_bold_image(
        structured_scan(small, 8).timeseries, 2.0, labels, affine, tmp_path / "sub-01_bold.nii.gz",
        rng=np.random.default_rng(0),
    )  # fmt: skip
    nifti = load_scan(bold, atlas=labels_path)
    for scan in (seitzman, nifti):
        probs = model.predict(scan, "diagnosis")
        assert set(probs) == {"yes", "no"} and abs(sum(probs.values()) - 1) < 1e-6
        batch = model.processor([_messages()], [[scan]])
        assert int(model.processor.ids.is_connectome(batch["input_ids"]).sum()) == SMALL.num_tokens
    a, b = (model.processor.encode_connectome(s).values for s in (seitzman, nifti))
    assert np.isfinite(a).all() and np.isfinite(b).all() and np.abs(a - b).max() > 1e-3


def test_stage3_skips_window_codes_when_only_connectome_tokens_are_shown(model, fitted):
    from fmrilm.train.stage3 import asks_for_windows, encode_scans

    from fmrilm.cohort import Cohort

    tok, scans = fitted
    cohort = Cohort.from_scans(scans[:3], [{"sex": "male"}] * 3, atlas=scans[0].atlas)
    codes = encode_scans(cohort, model.processor.fmri_tokenizer, windows=False)
    k = model.processor.config.num_latents
    assert sorted(codes) == sorted(str(s.scan_id) for s in scans[:3])
    assert all(c.shape == (0, k) for c in codes.values())  # no window was encoded
    for scan in scans[:3]:
        np.testing.assert_allclose(codes.connectome[str(scan.scan_id)].values, tok.encode(scan).values)

    def rows(window):
        part = {"type": "fmri", "scan_id": "s0", "window": window}
        return {
            "messages": [json.dumps([{"role": "user", "content": [part, {"type": "text", "text": "?"}]}])]
        }

    assert not asks_for_windows(rows(None)) and asks_for_windows(rows(2))


def test_components_follow_the_fitted_axes_after_a_reload(fitted):
    """The float64 PCA axes are converted once and reused: a tokenizer whose weights are replaced (a loaded
    state, an in-place change) must project with the new axes, exactly as a fresh float64 product would."""
    tok, scans = fitted
    before = tok.continuous(scans[:3])
    vectors = np.stack([tok.tangent_vector(tok.reference_timeseries(s)) for s in scans[:3]])
    centred = (vectors - tok.pca_mean.numpy()) / tok.feature_scale.numpy()
    direct = centred @ tok.pca_components.numpy().astype(np.float64).T
    np.testing.assert_array_equal(before, (direct / tok.component_divisor()).astype(np.float32))
    other = ConnectomeTokenizer(tok.config, tok.reference_coords.numpy(), n_features=vectors.shape[1])
    state = {k: v.clone() for k, v in tok.state_dict().items()}
    state["pca_components"] = -state["pca_components"]
    other.load_state_dict(state)
    np.testing.assert_allclose(other.continuous(scans[:3]), -before, rtol=1e-5, atol=1e-6)
    tok.pca_components.mul_(-1.0)
    try:
        np.testing.assert_allclose(tok.continuous(scans[:3]), -before, rtol=1e-5, atol=1e-6)
    finally:
        tok.pca_components.mul_(-1.0)
    np.testing.assert_array_equal(tok.continuous(scans[:3]), before)


def test_the_encoding_benchmark_times_the_same_tokens_both_ways(fitted):
    """`bench_encode` compares the projection inside and outside the one-BLAS-thread block: both must give the
    tokens `encode` gives, or its ratio would compare different work."""
    from fmrilm.eval.bench_encode import _projection_outside_limit

    tok, scans = fitted
    for scan in scans[:3]:
        before, now = _projection_outside_limit(tok, scan), tok.encode(scan)
        np.testing.assert_array_equal(before.codes, now.codes)
        np.testing.assert_allclose(before.values, now.values, rtol=1e-6, atol=1e-7)


def test_encoding_many_scans_gives_each_scans_tokens_in_order_without_a_warning(fitted):
    """Stages 2-3 and evaluation encode a cohort with `encode_many` (chunks on threads): every scan must get
    exactly the tokens `encode` gives it, in the order given, a bad region included, and nothing printed."""
    tok, scans = fitted
    bad = replace(scans[5], timeseries=scans[5].timeseries.copy(), scan_id="bad")
    bad.timeseries[:, 3] = 0.0  # a constant region: zeroed by the cleaning, a BadRegionWarning inside
    given = [*scans[:5], bad, *scans[6:9]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        many = list(tok.encode_many(iter(given), workers=2, chunk=4))  # chunks of 4, 4 and 1
    assert len(many) == len(given)
    for scan, tokens in zip(given, many, strict=True):
        one = tok.encode(scan)
        np.testing.assert_array_equal(tokens.codes, one.codes)
        np.testing.assert_array_equal(tokens.values, one.values)
    assert not np.array_equal(many[0].values, many[1].values)
    assert list(tok.encode_many([])) == []


def test_command_line_and_demo_default_components_are_the_tokenizers_default():
    """`train tokenizer` and the demo presets spell the default component count out (their parsers stay free of
    torch imports); a change to `ConnectomeConfig` must reach them."""
    import argparse

    from fmrilm.eval.demo import PRESETS
    from fmrilm.train.stage1 import add_arguments, config_from_args

    default = ConnectomeConfig().components
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--cohort", "c", "--out", "o"])
    assert config_from_args(args).connectome["components"] == default
    assert all(p.connectome_components == default for p in PRESETS.values())


def test_components_supported_is_the_largest_multiple_of_the_token_count_a_pca_of_the_scans_keeps():
    config = ConnectomeConfig(num_tokens=32)
    assert config.components_supported(549) == 544  # the demo's ABIDE training scans alone
    assert config.components_supported(33) == 32 and config.components_supported(32) == 0
