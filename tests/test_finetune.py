"""`fmrilm finetune`: balanced seeded k-shot from the train part only, never a test subject; a new task (YAML) on
a new atlas; an adapters-only folder that loads back to the fine-tuned model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fmrilm.instructions.spec import MIN_QUESTIONS
from fmrilm.train import finetune as ft

from fmrilm.atlas import Atlas
from fmrilm.cli import main as cli_main
from fmrilm.cohort import Cohort
from fmrilm.errors import FmriInputError
from fmrilm.model.adapters import LoraSettings
from fmrilm.model.modeling import FmriLM
from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer
from fmrilm.scan import Scan

K, CODEBOOK = 4, 16
N_SUBJECTS = 20
LEAKY = "p03"  # has one scan in the split's train part and one in its test part


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """A trained-looking base: tiny LLM with (non-zero) adapters, which fine-tuning merges first."""
    path = tmp_path_factory.mktemp("base") / "model"
    llm, tok = tiny_causal_lm("llama", initializer_range=0.5)
    model = FmriLM.from_base(
        llm, tokenizer=tok, fmri_tokenizer=tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K),
        lora=LoraSettings(r=4, alpha=8),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.llm.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    """A cohort on an atlas the base never saw (9 regions), one subject with two sessions."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    atlas = Atlas(
        name="lab9",
        labels=[f"q{i}" for i in range(9)],
        coords=rng.normal(size=(9, 3)) * 30,
        networks=["A"] * 9,
    )
    scans, pheno = [], []
    for i in range(N_SUBJECTS):
        subject = f"p{i:02d}"
        for session in ("1", "2") if subject == LEAKY else ("1",):
            scans.append(
                Scan(
                    rng.normal(size=(40, 9)).astype(np.float32),
                    tr=2.0,
                    atlas=atlas,
                    scan_id=f"{subject}-{session}",
                    subject_id=subject,
                    session_id=session,
                )  # fmt: skip
            )
            pheno.append({"diagnosis": "patient" if i % 2 else "control", "hand": "L" if i % 3 else "R"})
    Cohort.from_scans(scans, pheno, atlas=atlas).save(root / "cohort")
    return root / "cohort"


def run_cli(base, cohort_dir, out, *extra) -> dict:
    args = ["finetune", "--model", base, "--cohort", str(cohort_dir), "--out", str(out), "--steps", "3"]
    assert cli_main([*args, "--batch-size", "4", "--no-progress", *extra]) == 0
    return json.loads((out / ft.FINETUNE_FILE).read_text())


def test_k_shot_is_balanced_seeded_and_never_uses_a_test_subject(base, cohort_dir, tmp_path):
    cohort = Cohort.load(cohort_dir)
    subjects = [str(s) for s in cohort.dataset["subject_id"]]
    leaky_rows = [i for i, s in enumerate(subjects) if s == LEAKY]
    test = [leaky_rows[1]] + [i for i, s in enumerate(subjects) if s in {"p00", "p01", "p06", "p07"}]
    train = [i for i in range(len(subjects)) if i not in test]  # holds LEAKY's other session
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": train, "test": test}))

    info = run_cli(
        base, cohort_dir, tmp_path / "a", "--task", "diagnosis", "--shots", "3", "--split", str(split_file)
    )
    used = info["used"]
    test_subjects = {subjects[i] for i in test}
    assert set(info["test_subjects"]) == test_subjects
    assert not set(used["subjects"]) & test_subjects and LEAKY not in used["subjects"]
    assert all(i in train for i in used["rows"])
    labels = list(used["labels"].values())
    assert len(used["subjects"]) == 6 and labels.count("patient") == labels.count("control") == 3
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["setup"]["train_examples"] == {
        "diagnosis": 6
    }

    again = run_cli(
        base, cohort_dir, tmp_path / "b", "--task", "diagnosis", "--shots", "3", "--split", str(split_file)
    )
    assert again["used"] == used  # same seed, same subjects
    other = run_cli(
        base,
        cohort_dir,
        tmp_path / "c",
        "--task",
        "diagnosis",
        "--shots",
        "3",
        "--split",
        str(split_file),
        "--seed",
        "7",
    )
    assert (
        other["used"]["subjects"] != used["subjects"] and not set(other["used"]["subjects"]) & test_subjects
    )

    with pytest.raises(FmriInputError, match="only .* eligible subject"):
        ft.finetune(
            ft.FinetuneConfig(
                model=base,
                cohort=str(cohort_dir),
                task="diagnosis",
                out=str(tmp_path / "d"),
                shots=20,
                split=str(split_file),
                steps=1,
            )  # fmt: skip
        )


def test_new_task_on_new_atlas_saves_adapters_only_and_loads_back(base, cohort_dir, tmp_path, monkeypatch):
    task = tmp_path / "handedness.yaml"
    task.write_text(
        yaml.safe_dump(
            {
                "name": "handedness",
                "type": "binary",
                "target": "hand",
                "questions": [
                    f"Which hand does participant variant {i} write with?" for i in range(MIN_QUESTIONS)
                ],
                "answers": {"maps": [{"name": "lr", "values": {"L": "left", "R": "right"}}]},
            }
        )
    )
    cohort = Cohort.load(cohort_dir)
    scan = cohort.scan(0)
    seen = {}
    save = ft.save_adapters

    def remember_then_save(model, out_dir, info):  # the in-memory fine-tuned model, just before saving
        seen["probs"] = model.predict(scan, "handedness")
        save(model, out_dir, info)

    monkeypatch.setattr(ft, "save_adapters", remember_then_save)
    out = tmp_path / "ft"
    cfg = ft.FinetuneConfig(
        model=base, cohort=str(cohort_dir), task=str(task), out=str(out), shots=2, steps=4, batch_size=4,
        lr=1e-2, lora={"r": 4, "alpha": 8},
    )  # fmt: skip
    ft.finetune(cfg)

    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", ft.FINETUNE_FILE, ft.SPLIT_FILE} <= files
    assert "model.safetensors" not in files and "checkpoints" not in files
    adapter_size = (out / "adapter_model.safetensors").stat().st_size
    assert adapter_size < 0.5 * (Path(base) / "model.safetensors").stat().st_size
    split = json.loads((out / ft.SPLIT_FILE).read_text())
    info = json.loads((out / ft.FINETUNE_FILE).read_text())
    assert split["test_subjects"] and not set(info["used"]["subjects"]) & set(split["test_subjects"])

    model = ft.load_finetuned(out)
    probs = model.predict(scan, "handedness")
    assert list(probs) == ["left", "right"]
    np.testing.assert_allclose(list(probs.values()), list(seen["probs"].values()), rtol=1e-5, atol=1e-7)
    assert model.predict(scan, "handedness") == probs  # loading is deterministic (eval mode, no dropout)

    other = tmp_path / "other"
    llm, tok = tiny_causal_lm("llama", seed=3)
    FmriLM.from_base(llm, tokenizer=tok, codebook_size=CODEBOOK, num_latents=K).save_pretrained(other)
    with pytest.raises(FmriInputError, match="another base model"):
        ft.load_finetuned(out, base=other)
