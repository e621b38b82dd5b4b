"""Scan embeddings: one vector per scan (or window) from what the LLM reads, for a user's own sklearn models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fmrilm.atlas import Atlas
from fmrilm.errors import FmriInputError
from fmrilm.model.embedding import embed_messages
from fmrilm.scan import Scan
from fmrilm.tokenizer.connectome import ConnectomeConfig, ConnectomeTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

SMALL = ConnectomeConfig(num_tokens=2, components=8, codebook_size=8, num_levels=2, quantizer_steps=20)


def structured_scan(atlas: Atlas, seed: int, n_timepoints: int = 80) -> Scan:
    rng = np.random.default_rng(seed)
    ts = rng.standard_normal((n_timepoints, 4)) @ rng.standard_normal((4, atlas.n_regions))
    ts = ts + 0.5 * rng.standard_normal((n_timepoints, atlas.n_regions))
    return Scan(ts.astype(np.float32), tr=2.0, atlas=atlas, scan_id=f"s{seed}", subject_id=f"sub-{seed}")


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    return Atlas.builtin("dosenbach160").subset(np.arange(24))


def _model(atlas, connectome: bool):
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    host = tiny_fmri_tokenizer(codebook_size=16, num_latents=4)
    if connectome:
        host.set_connectome(ConnectomeTokenizer.fit([structured_scan(atlas, i) for i in range(14)], SMALL))
    llm, tok = tiny_causal_lm(initializer_range=0.3)
    return FmriLM.from_base(llm, host, tokenizer=tok, atlas=atlas).eval()


@pytest.fixture(scope="module")
def model(atlas):
    return _model(atlas, connectome=True)


@pytest.fixture(scope="module")
def older_model(atlas):
    return _model(atlas, connectome=False)


def reference(model, scan) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden state of one unpadded forward over the embedding prompt, and the prompt's ids."""
    batch = model.processor(embed_messages(), [scan])
    embeds = model.embed_inputs(batch["input_ids"], batch.get("connectome_values"))
    with torch.no_grad():
        out = model.llm(inputs_embeds=embeds, output_hidden_states=True)
    return out.hidden_states[-1][0], batch["input_ids"][0]


def test_scan_embedding_is_the_hidden_state_averaged_over_the_connectome_tokens(model, atlas):
    scan = structured_scan(atlas, 50)
    vec = model.embed(scan)
    hidden, ids = reference(model, scan)
    assert vec.shape == (hidden.shape[-1],) and vec.dtype == np.float32
    where = model.processor.ids.is_connectome(ids)
    assert int(where.sum()) == SMALL.num_tokens
    np.testing.assert_allclose(vec, hidden[where].mean(0).numpy(), atol=1e-5)
    # The soft values are part of what the LLM reads: the embedding moves with them.
    with torch.no_grad():
        saved = model.soft_projection.proj.weight.clone()
        model.soft_projection.proj.weight.mul_(5.0)
        try:
            assert np.abs(model.embed(scan) - vec).max() > 1e-4
        finally:
            model.soft_projection.proj.weight.copy_(saved)


def test_window_embeddings_average_each_windows_k_tokens(model, atlas):
    scan = structured_scan(atlas, 51)
    per_window = model.embed(scan, windows=True)
    n_windows = len(model.processor.encode_scan(scan))
    assert per_window.shape == (n_windows, 32) and n_windows == 5
    hidden, ids = reference(model, scan)
    k = model.processor.config.num_latents
    lo = model.processor.ids.first_code_id
    codes = hidden[(ids >= lo) & (ids < lo + model.processor.config.codebook_size)]
    np.testing.assert_allclose(per_window[2], codes[2 * k : 3 * k].mean(0).numpy(), atol=1e-5)


def test_a_model_without_connectome_tokens_averages_its_window_tokens(older_model, atlas):
    scan = structured_scan(atlas, 52)
    vec = older_model.embed(scan)
    np.testing.assert_allclose(vec, older_model.embed(scan, windows=True).mean(0), atol=1e-5)


def test_a_scans_embedding_does_not_depend_on_its_batch(model, atlas):
    scans = [structured_scan(atlas, 60, 48), structured_scan(atlas, 61, 112), structured_scan(atlas, 62, 80)]
    together = model.embed(scans, batch_size=3)  # different lengths: left padding
    assert together.shape == (3, 32)
    for scan, row in zip(scans, together, strict=True):
        np.testing.assert_allclose(row, model.embed(scan), atol=1e-5)
    assert np.abs(together[0] - together[1]).max() > 1e-3  # different scans, different vectors
    windows = model.embed(scans, windows=True, batch_size=2)
    assert [len(w) for w in windows] == [len(model.processor.encode_scan(s)) for s in scans]


def test_bad_input_is_one_clear_error(model):
    with pytest.raises(FmriInputError, match="No scans to embed"):
        model.embed([])
    with pytest.raises(FmriInputError, match="embeddings need a scan"):
        model.embed([np.zeros((10, 24))])


# ----------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def saved(model, atlas, tmp_path_factory):
    from fmrilm.cohort import Cohort

    root = tmp_path_factory.mktemp("embed")
    model.save_pretrained(root / "model")
    scans = [structured_scan(atlas, 70 + i) for i in range(3)]
    Cohort.from_scans(scans, atlas=atlas, name="tiny").save(root / "cohort")
    return root, scans


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".npz"])
def test_cli_writes_one_row_per_scan_in_the_format_of_the_suffix(saved, model, suffix, capsys):
    from fmrilm.cli import main

    root, scans = saved
    out = root / f"emb{suffix}"
    args = ["embed", "--model", str(root / "model"), "--cohort", str(root / "cohort"), "--out", str(out)]
    assert main(args + ["--batch-size", "2"]) == 0
    expected = model.embed(scans)
    if suffix == ".npz":
        data = np.load(out)
        ids, matrix = list(data["scan_id"]), data["embedding"]
    else:
        frame = (
            pd.read_parquet(out)
            if suffix == ".parquet"
            else pd.read_csv(out, sep="\t" if suffix == ".tsv" else ",")
        )
        assert list(frame.columns[:3]) == ["scan_id", "subject_id", "site"]
        ids, matrix = frame["scan_id"].tolist(), frame[[f"e{j}" for j in range(32)]].to_numpy()
    assert ids == [s.scan_id for s in scans]
    np.testing.assert_allclose(matrix, expected, atol=1e-4)
    assert main(args) == 2  # an existing file is not replaced without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_cli_window_rows_and_bad_suffix(saved, capsys):
    from fmrilm.cli import main

    root, scans = saved
    base = ["embed", "--model", str(root / "model"), "--cohort", str(root / "cohort")]
    assert main(base + ["--out", str(root / "emb.xlsx")]) == 2
    assert "--out must end in .csv, .tsv, .parquet, .npz" in capsys.readouterr().err
    assert not (root / "emb.xlsx").exists()
    assert main(base + ["--out", str(root / "win.csv"), "--windows"]) == 0
    frame = pd.read_csv(root / "win.csv")
    assert frame.groupby("scan_id")["window"].apply(list).to_dict() == {
        s.scan_id: [0, 1, 2, 3, 4] for s in scans
    }
