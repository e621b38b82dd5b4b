"""Stage 2 alignment: a tiny model learns fMRI -> descriptor pairs; `fmrilm train align` runs, saves and resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fmrilm.train.stage2 import ScanCodes, Stage2Config, build_items, conversation

from fmrilm.model.adapters import LoraSettings
from fmrilm.model.modeling import FmriLM
from fmrilm.model.testing import random_scan, tiny_causal_lm, tiny_fmri_tokenizer

K, CODEBOOK = 4, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_tiny_model_overfits_a_handful_of_fmri_to_descriptor_pairs():
    """The Stage-2 examples and loss teach a tiny random LM to say each scan's own descriptor."""
    torch.manual_seed(0)
    llm, tok = tiny_causal_lm("llama", initializer_range=0.5)  # logits wide enough to learn with LoRA alone
    model = FmriLM.from_base(llm, tokenizer=tok, codebook_size=CODEBOOK, num_latents=K)
    model.add_adapters(LoraSettings(r=8, alpha=16, dropout=0.0))
    texts = [
        "Default mode coupling is elevated.",
        "Visual coupling is reduced.",
        "Salience and frontoparietal are typical.",
        "Modularity is markedly high.",
    ]
    rng = np.random.default_rng(0)
    data = ScanCodes(
        scan_ids=[f"s{i}" for i in range(4)],
        subjects=[f"sub{i}" for i in range(4)],
        codes=[rng.integers(0, CODEBOOK, (1, K)) for _ in range(4)],
        valid=[np.ones(1, bool) for _ in range(4)],
    )
    items = build_items(data, {(f"s{i}", 0): t for i, t in enumerate(texts)}, np.arange(4))["describe"]
    cfg = Stage2Config(cohorts=[], tokenizer="", out="")
    conversations = [conversation("describe", item, data, cfg, rng) for item in items]
    batch = model.processor.pad([model.processor.training_example(c) for c in conversations])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-2)
    model.train()
    for _ in range(120):
        loss = model(**batch, loss_reduction="example").loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert loss.item() < 0.05
    for conv, text in zip(conversations, texts, strict=True):
        assert conv[0]["content"][0]["codes"].shape == (1, K)
        assert model.reply(conv[:1], max_new_tokens=40) == text  # greedy, with the KV cache


def test_example_loss_equals_each_examples_own_mean_token_loss():
    llm, tok = tiny_causal_lm("qwen3")
    model = FmriLM.from_base(llm, tokenizer=tok, codebook_size=CODEBOOK, num_latents=K).eval()
    proc = model.processor
    examples = [
        proc.training_example(
            [{"role": "user", "content": [{"type": "fmri"}]}, {"role": "assistant", "content": answer}],
            [np.arange(K)[None]],
        )
        for answer in ("A long answer about default mode coupling and visual networks.", "ok")
    ]
    out = model(**proc.pad(examples), loss_reduction="example")
    singles = torch.stack([model(**proc.pad([e])).loss for e in examples])
    torch.testing.assert_close(out.example_losses, singles, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.loss, singles.mean(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ the CLI stage
@pytest.fixture(scope="module")
def stage2_inputs(tmp_path_factory):
    """A 4-subject cohort, its window descriptor corpus, a tiny tokenizer and a tiny base LLM, on disk."""
    import datasets

    from fmrilm.cohort import Cohort

    root = tmp_path_factory.mktemp("stage2")
    scans = [random_scan(48, seed=i, scan_id=f"scan{i}") for i in range(4)]
    Cohort.from_scans(scans, atlas=scans[0].atlas, name="tiny").save(root / "cohort")
    rows = [
        {
            "scan_id": s.scan_id,
            "window": w,
            "text": f"Window {w} of {s.scan_id}: coupling is typical.",
            "text_graph": f"Modularity of {s.scan_id} is typical.",
        }
        for s in scans
        for w in range(3)
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "corpus"))
    (root / "corpus" / "reference.json").write_text(json.dumps({"format_version": 1, "stats": {"fc": [0.1]}}))
    tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K).save_pretrained(root / "tokenizer")
    llm, tok = tiny_causal_lm("llama")
    llm.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root


def align_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "align", "--cohort", str(root / "cohort"), "--corpus", str(root / "corpus"),
        "--tokenizer", str(root / "tokenizer"), "--base", str(root / "base"), "--out", str(out),
        "--steps", "4", "--batch-size", "3", "--save-every", "2", "--eval-every", "2", "--log-every", "1",
        "--val-fraction", "0.25", "--lora-r", "4", "--lr", "1e-2", "--warmup-steps", "0", "--no-progress", *extra,
    ]  # fmt: skip


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model" / "adapters" / "adapter_model.safetensors"))


def test_align_cli_trains_saves_a_loadable_model_and_resumes_exactly(stage2_inputs, tmp_path):
    from fmrilm.cli import main

    root = stage2_inputs
    assert main(align_args(root, tmp_path / "run")) == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert [e["step"] for e in metrics["train"]] == [1, 2, 3, 4]
    assert {"val_loss_describe", "val_loss_forecast", "val_loss_replay"} <= set(metrics["val"][-1])
    split = json.loads((run / "split.json").read_text())
    assert len(split["val_subjects"]) == 1 and split["train_examples"]["describe"] == 9

    model = FmriLM.from_pretrained(run)  # the Stage-2 folder resolves to run/model
    assert model.has_adapters
    assert model.processor.config.descriptor_reference == {"format_version": 1, "stats": {"fc": [0.1]}}
    assert model.processor.config.atlas["name"] == random_scan(8).atlas.name
    assert model.processor.config.forecast_context_windows == 2
    scan = random_scan(48, seed=7)
    assert isinstance(model.describe(scan, window=0, max_new_tokens=3), str)
    assert model.forecast(scan, windows=1).timeseries.shape == (16, scan.n_regions)
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000002", "step-000004"]
    ckpt_bytes = sum(f.stat().st_size for f in (run / "checkpoints" / "step-000002").rglob("*.safetensors"))
    base_bytes = (root / "base" / "model.safetensors").stat().st_size
    assert ckpt_bytes < base_bytes, "checkpoints hold the adapters, not the frozen LLM"

    # interrupt after step 2: drop what came later, then resume to step 4
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    shutil.rmtree(resumed / "model")
    assert main(align_args(root, resumed, "--resume")) == 0
    expected, got = adapter_tensors(run), adapter_tensors(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    steps = [e["step"] for e in json.loads((resumed / "metrics.json").read_text())["train"]]
    assert steps == [1, 2, 3, 4]


def test_align_refuses_to_overwrite_a_run_and_needs_a_corpus_to_describe(stage2_inputs, tmp_path, capsys):
    from fmrilm.cli import main

    root = stage2_inputs
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_config.json").write_text("{}")
    assert main(align_args(root, tmp_path / "run")) == 2
    assert "already holds a training run" in capsys.readouterr().err
    args = [a for a in align_args(root, tmp_path / "other") if a not in ("--corpus", str(root / "corpus"))]
    assert main(args) == 2
    assert "needs descriptor texts" in capsys.readouterr().err


def test_describe_texts_can_come_from_chosen_corpus_columns(stage2_inputs):
    from fmrilm.train.stage2 import corpus_texts

    from fmrilm.errors import FmriInputError

    texts = corpus_texts(stage2_inputs / "corpus", ["text_graph"])
    assert len(texts) == 12 and texts[("scan1", 2)] == "Modularity of scan1 is typical."
    with pytest.raises(FmriInputError, match="no column text_nope"):
        corpus_texts(stage2_inputs / "corpus", ["text_nope"])
