"""`bench_warm_start`: where Stage 3 starts, scored on held-out scans before any tuning step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_connectome import tiny_connectome_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def planted_probe_set(root, n_scans: int):
    """A saved tiny model with a scan summary (``root/model``), a cohort whose diagnosis and age are planted in
    the first connectome component, and an instruction set with a quarter of the subjects held out:
    ``(model, instruction set folder, held-out subjects)``."""
    from fmrilm.instructions.builder import build_instructions, save_instruction_set
    from fmrilm.instructions.spec import load_tasks

    from fmrilm.cohort import Cohort
    from fmrilm.splits import stratified_split

    model, tok, scans = tiny_connectome_model(n_scans)
    signal = np.asarray([tok.encode(s).values.reshape(-1)[0] for s in scans])
    z = (signal - signal.mean()) / signal.std()
    pheno = [
        {"diagnosis": "patient" if v > 0 else "control", "age": float(np.clip(20 + 6 * v, 7, 40))} for v in z
    ]
    cohort = Cohort.from_scans(scans, pheno, atlas=scans[0].atlas)
    cohort.save(root / "cohort")
    model.save_pretrained(root / "model")
    split = stratified_split(cohort, label="diagnosis", test_size=0.25, seed=0)
    tasks = load_tasks("diagnosis,age")
    rows, meta = build_instructions(cohort, tasks, split=split, paradigms=["brain"], seed=0)
    meta["cohort_dir"] = str(root / "cohort")
    instructions = save_instruction_set(rows, meta, tasks, root / "instructions")
    return model, instructions, len(split["test"])


@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    """`planted_probe_set` of 64 scans: the Stage-2 model the warm start starts from."""
    root = tmp_path_factory.mktemp("warm")
    _, instructions, n_test = planted_probe_set(root, 64)
    return root, instructions, n_test


def test_the_warm_start_is_scored_on_held_out_scans_next_to_its_probes(stage2, capsys):
    from fmrilm.eval.bench_warm_start import main

    root, instructions, n_test = stage2
    out = root / "report.json"
    argv = ["--model", str(root / "model"), "--instructions", str(instructions), "--tasks", "diagnosis,age"]
    assert main([*argv, "--rounds", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["held_out_scans"] == n_test
    results = report["results"]
    assert set(results) == {"stage2", "warm start, 0 rounds", "probe"}
    warm = results["warm start, 0 rounds"]
    assert {p["task"] for p in warm["probes"]} == {"diagnosis", "age"}
    # the planted answers are in the summary: the probes read them on held-out scans ...
    assert results["probe"]["diagnosis"]["auc"] > 0.9 and results["probe"]["age"]["pearson_r"] > 0.8
    # ... and the warm-started LLM answers more with them than the untouched model (a tiny random LLM's age
    # answer barely moves within the step's bounds, so only the direction is asserted for age)
    assert warm["diagnosis"]["auc"] > 0.85 > results["stage2"]["diagnosis"]["auc"]
    assert warm["age"]["pearson_r"] > results["stage2"]["age"]["pearson_r"]
    printed = capsys.readouterr().out
    assert "| warm start, 0 rounds |" in printed and "AUC" in printed and "MAE" in printed


def test_bad_rounds_are_refused_by_name(stage2):
    from fmrilm.eval.bench_warm_start import main

    root, instructions, _ = stage2
    with pytest.raises(SystemExit):
        main(["--model", str(root / "model"), "--instructions", str(instructions), "--rounds", "two"])


def test_a_set_without_a_split_is_refused_by_name(stage2, tmp_path):
    from datasets import load_from_disk
    from fmrilm.eval.bench_warm_start import main

    root, instructions, _ = stage2
    import shutil

    copy = tmp_path / "nosplit"
    shutil.copytree(instructions, copy)
    rows = load_from_disk(str(copy / "dataset"), keep_in_memory=True).remove_columns("split")
    shutil.rmtree(copy / "dataset")
    rows.save_to_disk(str(copy / "dataset"))
    with pytest.raises(SystemExit, match="no split column"):
        main(["--model", str(root / "model"), "--instructions", str(copy)])


def test_the_gradient_timing_compares_the_same_gradient_both_ways(stage2, capsys):
    from fmrilm.eval.bench_warm_start import main

    root, instructions, _ = stage2
    out = root / "speed.json"
    argv = ["--model", str(root / "model"), "--instructions", str(instructions), "--tasks", "diagnosis,age"]
    assert main([*argv, "--rounds", "0", "--gradient-speed", "--repeats", "1", "--json", str(out)]) == 0
    speed = json.loads(out.read_text())["gradient_speed"]
    assert set(speed) == {"diagnosis", "age"}
    for timing in speed.values():
        assert timing["prompts"] > 1 and timing["together_s"] > 0 and timing["one_at_a_time_s"] > 0
        assert timing["speedup"] == pytest.approx(timing["one_at_a_time_s"] / timing["together_s"])
        assert timing["max_relative_difference"] < 1e-4  # the same gradient
    assert "margin gradient, age" in capsys.readouterr().out


def test_a_task_without_a_cohort_column_is_refused_by_name(stage2, monkeypatch):
    """A descriptor task's answers have no cohort column to score against: one message naming it, not a
    traceback from the metrics."""
    from fmrilm.eval.bench_warm_start import main

    from fmrilm.cohort import Cohort

    root, instructions, _ = stage2
    table = Cohort.phenotype_table
    monkeypatch.setattr(Cohort, "phenotype_table", lambda self: table(self).drop(columns=["age"]))
    argv = ["--model", str(root / "model"), "--instructions", str(instructions), "--tasks", "diagnosis,age"]
    with pytest.raises(SystemExit, match=r"\['age'\] have no column in the cohort.*\['diagnosis'\]"):
        main(argv)
