"""`fmrilm eval`: every method (model zero-shot and few-shot, FC, code probe, demographics, floor) on ONE split.

A small simulated cohort (3 sites, dosenbach160) and a tiny model whose tokenizer reads another atlas
(seitzman300) are written to disk once; the CLI then runs the whole evaluation with a few fine-tuning steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fmrilm.eval.evaluate import EvalConfig, evaluate

from fmrilm.cli import main
from fmrilm.errors import FmriInputError

N_SUBJECTS, K_LATENTS, CODEBOOK = 24, 4, 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _signal_sensitive(fmri_tok):
    """Stand-in for a trained tokenizer: an untrained one gives every scan nearly the same codes, so its weight
    matrices get a large seeded random component, which makes codes and latents depend on the signal."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in fmri_tok.parameters():
            if param.ndim >= 2:
                param.add_(torch.randn(param.shape, generator=gen) * 3.0 / param.shape[-1] ** 0.5)
    return fmri_tok


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    from fmrilm.atlas import Atlas
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    root = tmp_path_factory.mktemp("evaluate")
    cohort = simulate_cohort(SimulationConfig(n_subjects=N_SUBJECTS, n_sites=3, timepoints=(40, 60), seed=0))
    cohort.save(root / "cohort")
    llm, tok = tiny_causal_lm("llama", initializer_range=0.3)
    fmri_tok = _signal_sensitive(tiny_fmri_tokenizer(codebook_size=CODEBOOK, num_latents=K_LATENTS))
    model = FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=fmri_tok, atlas=Atlas.builtin("seitzman300"))
    model.save_pretrained(root / "model")
    table = cohort.phenotype_table()
    return root, table


def _results(report: dict) -> list[dict]:
    return report["results"]


def test_eval_cli_scores_every_method_on_the_same_test_subjects(setup, capsys):
    root, table = setup
    out = root / "report"
    rc = main(
        [
            "eval", "--model", str(root / "model"), "--cohort", str(root / "cohort"), "--task", "diagnosis",
            "--split", "leave-sites-out", "--test-sites", "site-1", "--shots", "0,2,3", "--seeds", "2",
            "--steps", "3", "--full", "--full-steps", "3", "--lr", "1e-2", "--n-boot", "200", "--no-progress",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr()
    assert "Loading weights" not in printed.err  # --no-progress: transformers' bars stay off too
    report = json.loads((out / "report.json").read_text())
    # the printed summary and report.md give the report's own paired comparison of the zero-shot model with FC
    from fmrilm.eval.report import versus_text

    (zero_vs_fc,) = [
        c for c in report["versus"]
        if (c["method"], c["reference"], c["protocol"]) == ("fmrilm_zero_shot", "fc_linear", "whole-test-part")
    ]  # fmt: skip
    line = f"- {versus_text(zero_vs_fc, ('balanced_accuracy', 'auc'))}"
    assert line in printed.out.splitlines() and line in (out / "report.md").read_text().splitlines()
    # The report records the command as typed, every given flag in it, and the command with every setting
    # in force (defaults too), which repeats the run exactly.
    typed, in_full = report["context"]["command"], report["context"]["command_in_full"]
    assert typed.startswith("fmrilm eval --model ")
    for given in ("--steps 3", "--full-steps 3", "--lr 1e-2", "--shots 0,2,3", "--seeds 2", "--n-boot 200"):
        assert given in typed and given.split()[0] in in_full, given
    assert "--steps 3 " in in_full and "--batch-size 4 " in in_full  # a default in force is written out
    assert f"- **command**: {typed}" in (out / "report.md").read_text()
    results = _results(report)
    methods = {r["method"] for r in results}
    assert {
        "fmrilm_zero_shot", "fmrilm_few_shot", "fmrilm_full", "fc_linear", "code_probe", "demographics", "prior",
        "fc_linear_few_shot", "code_probe_few_shot",
    } <= methods  # fmt: skip
    runs = {(r["shots"], r["seed"]) for r in results if r["method"] == "fmrilm_few_shot"}
    assert runs == {(2, 0), (2, 1), (3, 0), (3, 1)}

    # One split: every method scored on exactly the test part's subjects, all from the held-out site.
    split = json.loads((out / "split.json").read_text())
    subjects = table["subject_id"].astype(str).to_numpy()
    test_subjects = sorted({subjects[i] for i in split["parts"]["test"]})
    train_subjects = {subjects[i] for i in split["parts"]["train"]}
    assert set(table["site"].to_numpy()[split["parts"]["test"]]) == {"site-1"}
    assert not train_subjects & set(test_subjects)
    assert report["context"]["split"]["inner_cv_groups"] == "site"  # baselines tuned for unseen sites
    for r in results:
        assert sorted(r["subject_ids"]) == test_subjects, r["method"]
        assert r["subject_ids"] == results[0]["subject_ids"]  # same rows, same order
    # The few-shot subjects are k per class, from the train part only.
    for r in results:
        if r["method"] == "fmrilm_few_shot":
            used = set(r["info"]["train_subjects"])
            assert len(used) == 2 * r["shots"] and used <= train_subjects
            labels = table.set_index("subject_id").loc[sorted(used), "diagnosis"]
            assert sorted(labels.value_counts().tolist()) == [r["shots"], r["shots"]]

    (full,) = [r for r in results if r["method"] == "fmrilm_full"]  # every train subject, one run
    assert full["shots"] is None and set(full["info"]["train_subjects"]) == train_subjects

    # Metrics with intervals: bootstrap for every run, Student-t over the two seeds of each k.
    for r in results:
        for name in ("balanced_accuracy", "auc", "f1"):
            m = r["metrics"][name]
            assert m["low"] <= m["value"] <= m["high"], (r["method"], name, m)
        probs = np.asarray(r["y_score"])
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    seeds = {(a["method"], a["shots"]): a for a in report["over_seeds"]}
    for k in (2, 3):
        agg = seeds[("fmrilm_few_shot", k)]
        assert agg["n_seeds"] == 2
        assert agg["auc"]["low"] <= agg["auc"]["mean"] <= agg["auc"]["high"]

    # Markdown with the summary and every plot it links; the model never saw this cohort's atlas.
    md = (out / "report.md").read_text()
    assert "## Summary" in md and all(m in md for m in methods)
    # The default protocol: few-shot subjects from the train part, every number on the whole test part.
    assert report["context"]["few_shot_from"] == "train" and "--few-shot-from train" in in_full
    assert {r["protocol"] for r in results} == {"whole-test-part"} == set(report["protocols"])
    summary = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "Protocol `whole-test-part`: every method scored on the whole test part" in summary
    assert "###" not in summary and "from the test sites" not in md  # one table, one protocol
    links = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    names = {Path(p).name for p in links}
    assert {"roc_diagnosis.png", "calibration_diagnosis.png", "fewshot_diagnosis.png"} <= names
    assert any(n.startswith("confusion_diagnosis_fmrilm_few_shot") for n in names)
    for link in links:
        assert (out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["context"]["cohort"]["atlas"] == "dosenbach160"
    assert report["context"]["model"]["atlas"] == "seitzman300"
    assert not (root / ".report.eval-work").exists()  # work folder removed once the report is written


def test_eval_regression_with_a_stratified_split_and_resume(setup, monkeypatch):
    root, table = setup
    out = root / "age"
    cfg = EvalConfig(
        model=str(root / "model"), cohort=str(root / "cohort"), task="age", out=str(out), split="stratified",
        shots=[0], seeds=1, n_boot=100, progress=False, keep_work=True, code_features="histogram",
    )  # fmt: skip
    run = evaluate(cfg)
    by_method = {r.method: r for r in run.results}
    assert run.context["split"]["inner_cv_groups"] == "subject_id"
    assert set(by_method) == {
        "fmrilm_zero_shot",
        "fc_linear",
        "tangent_linear",
        "code_probe",
        "demographics",
        "train_mean",
    }
    assert by_method["demographics"].info["covariates"] == ["sex"]  # age itself is never a covariate
    assert by_method["code_probe"].info["n_features"] == CODEBOOK
    ages = table["age"].to_numpy()
    for r in run.results:
        assert r.task_type == "regression" and set(r.metrics) >= {"mae", "pearson_r"}
        np.testing.assert_allclose(r.y_true, ages[run.test_rows], rtol=1e-6)
    zero = by_method["fmrilm_zero_shot"]
    # Each prediction is the expectation of the age bins' values under the model's bin probabilities,
    # recomputed here from the saved model and the test scans.
    from fmrilm.instructions.spec import load_task

    from fmrilm.cohort import load_cohort
    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.scoring import TaskCard, score_options

    spec = load_task("age")
    cohort = load_cohort(root / "cohort")
    probs = score_options(
        FmriLM.from_pretrained(root / "model"),
        [cohort.scan(i) for i in run.test_rows],
        TaskCard.from_spec(spec),
        normalize=cfg.normalize,
    )
    expected = probs @ np.asarray(spec.number.bin_values, dtype=float)
    np.testing.assert_allclose(zero.y_pred, expected, rtol=1e-5)

    # A re-run with the same settings reuses the finished model run from the kept work folder.
    from fmrilm.model.modeling import FmriLM

    def refuse(*args, **kwargs):
        raise AssertionError("the zero-shot run should have been reused")

    monkeypatch.setattr(FmriLM, "predict_cohort", refuse)
    again = evaluate(cfg)
    assert {r.method: r.y_pred for r in again.results}["fmrilm_zero_shot"] == zero.y_pred


def test_unknown_task_or_site_is_one_clear_error(setup, capsys):
    root, _ = setup
    base = ["eval", "--model", str(root / "model"), "--cohort", str(root / "cohort")]
    assert main([*base, "--task", "handedness", "--out", str(root / "bad1")]) == 2
    err = capsys.readouterr().err
    assert "Unknown task 'handedness'" in err and "Fix:" in err and "Traceback" not in err

    with pytest.raises(FmriInputError, match=r"Unknown site\(s\) site-9.*site-1, site-2, site-3"):
        evaluate(
            EvalConfig(
                str(root / "model"), str(root / "cohort"), "sex", str(root / "bad2"), test_sites=["site-9"]
            )
        )
    with pytest.raises(FmriInputError, match="only applies to a leave-sites-out split"):
        evaluate(
            EvalConfig(
                str(root / "model"), str(root / "cohort"), "sex", str(root / "bad3"), split="stratified",
                test_sites=["site-1"],
            )
        )  # fmt: skip
    with pytest.raises(FmriInputError, match="fewer than k=50"):
        evaluate(EvalConfig(str(root / "model"), str(root / "cohort"), "sex", str(root / "bad4"), shots=[50]))
    assert not [p.name for p in root.iterdir() if "bad" in p.name]  # nothing half-written, no work folder


def test_a_split_stored_under_the_kind_name_is_the_one_evaluated(setup, tmp_path):
    """`cohort split --kind leave-sites-out` stores 'leave-sites-out'; eval --split leave-sites-out must score
    exactly its test sites (the sites a model was trained without), not a fresh one-site split."""
    import shutil

    from fmrilm.eval.evaluate import resolve_eval_split

    from fmrilm.cohort import load_cohort

    root, _ = setup
    cohort_dir = tmp_path / "cohort"
    shutil.copytree(root / "cohort", cohort_dir)
    split_cli = [
        "cohort",
        "split",
        str(cohort_dir),
        "--kind",
        "leave-sites-out",
        "--test-sites",
        "site-2,site-3",
    ]
    assert main(split_cli) == 0
    cohort = load_cohort(cohort_dir)
    cfg = EvalConfig(str(root / "model"), str(cohort_dir), "sex", str(tmp_path / "out"))
    split, how = resolve_eval_split(cfg, cohort, "sex")
    assert how["test_sites"] == ["site-2", "site-3"]
    fresh, how_fresh = resolve_eval_split(
        EvalConfig(str(root / "model"), str(cohort_dir), "sex", str(tmp_path / "o2"), test_sites=["site-1"]),
        cohort,
        "sex",
    )
    assert how_fresh["test_sites"] == ["site-1"]  # explicit sites still make a fresh split


def test_the_full_command_of_a_report_gives_back_every_setting():
    """`command_in_full` read back through the CLI parser is the same config, for every EvalConfig field."""
    import dataclasses
    import shlex

    from fmrilm.eval.cli import config_from_args
    from fmrilm.eval.evaluate import command_line

    from fmrilm.cli import build_parser

    cfg = EvalConfig(
        model="my models/stage3", cohort="cohorts/sim", task="sex", out="reports/sex", split="stratified",
        test_sites=["site-1", "site-2"], n_test_sites=2, test_size=0.3, shots=[0, 2], seeds=2, seed=5,
        few_shot_from="test", full=True, steps=3, full_steps=7, batch_size=2, lr=0.01, warmup_steps=1,
        soft_lr_scale=2.0, lora_r=4, lora_alpha=8,
        lora_dropout=0.1, target_modules="q_proj,v_proj", paraphrases=2, normalize="mean", batch_size_scoring=3,
        code_features="histogram", few_shot_baselines=False, tangent_baseline=False, covariates=["age"],
        n_boot=50, threads=1, device="cpu", progress=False, keep_work=True,
    )  # fmt: skip
    default = EvalConfig(model="", cohort="", task="", out="")
    for f in dataclasses.fields(EvalConfig):  # a new setting must be added here, and to the command
        assert getattr(cfg, f.name) != getattr(default, f.name), f.name
    line = command_line(cfg)
    assert line.startswith("fmrilm eval --model 'my models/stage3' ")  # quoted: a shell reads it back
    argv = shlex.split(line)[1:]
    assert config_from_args(build_parser("eval").parse_args(argv)) == cfg
    # and with every default in force, each default is still written out
    plain = EvalConfig(model="m", cohort="c", task="sex", out="o")
    in_full = command_line(plain)
    assert "--steps 20 " in in_full and "--lr 0.0005 " in in_full and "--test-sites" not in in_full
    assert config_from_args(build_parser("eval").parse_args(shlex.split(in_full)[1:])) == plain


def test_a_cohort_without_sites_reports_no_test_sites_not_an_empty_name():
    import pandas as pd
    from fmrilm.eval.evaluate import _sites_of

    class NoSites:
        def phenotype_table(self):
            return pd.DataFrame({"subject_id": ["a", "b", "c"], "site": [None, None, "site-1"]})

    assert _sites_of(NoSites(), [0, 1]) == []
    assert _sites_of(NoSites(), [0, 2]) == ["site-1"]
