"""`python -m fmrilm.eval.pool`: several folds' reports become one, and its figures are the folds' predictions
scored together; runs that cannot be pooled honestly are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fmrilm.eval.pool import main
from fmrilm.eval.report import MethodResult, write_report
from scipy.stats import pearsonr
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error, roc_auc_score

CLASSES = ["control", "patient"]


def _fold(seed: int, subjects: list[str], classes: list[str] = CLASSES) -> list[MethodResult]:
    """A model's and a baseline's predictions for one fold: a binary task and a regression."""
    rng = np.random.default_rng(seed)
    n = len(subjects)
    truth = rng.choice(classes, size=n)
    results = []
    for method in ("fmrilm_zero_shot", "fc_linear"):
        p = np.clip(0.5 + 0.3 * (truth == classes[1]) - 0.15 + rng.normal(0, 0.25, n), 0.01, 0.99)
        score = np.stack([1 - p, p], axis=1)
        results.append(
            MethodResult(
                method=method,
                task="diagnosis",
                task_type="binary",
                y_true=truth.tolist(),
                y_pred=np.asarray(classes)[score.argmax(1)].tolist(),
                y_score=score,
                classes=list(classes),
                subject_ids=list(subjects),
                shots=0 if method.startswith("fmrilm") else None,
            )
        )
        age = rng.uniform(8, 30, n)
        results.append(
            MethodResult(
                method=method,
                task="age",
                task_type="regression",
                y_true=age.tolist(),
                y_pred=(age + rng.normal(0, 4, n)).tolist(),
                subject_ids=list(subjects),
                shots=0 if method.startswith("fmrilm") else None,
            )
        )
    return results


def _write(folder, results, predictions=True):
    write_report(results, folder, predictions=predictions, n_boot=50)
    return folder


@pytest.fixture
def two_folds(tmp_path):
    a = _write(tmp_path / "fold1", _fold(0, [f"a{i}" for i in range(30)]))
    b = _write(tmp_path / "fold2", _fold(1, [f"b{i}" for i in range(40)]))
    return a, b


def _rows(folder):
    return json.loads((folder / "report.json").read_text())["results"]


def test_pooled_figures_are_the_folds_predictions_scored_together(two_folds, tmp_path, capsys):
    a, b = two_folds
    out = tmp_path / "pooled"
    assert main([str(a), str(b / "report.json"), "--out", str(out), "--n-boot", "50"]) == 0
    pooled = {(r["task"], r["method"]): r for r in _rows(out)}
    assert len(pooled) == 4 and all(r["n"] == 70 for r in pooled.values())
    for method in ("fmrilm_zero_shot", "fc_linear"):
        folds = [
            next(r for r in _rows(f) if r["method"] == method and r["task"] == "diagnosis") for f in (a, b)
        ]
        truth = sum((f["y_true"] for f in folds), [])
        score = np.concatenate([np.asarray(f["y_score"])[:, 1] for f in folds])
        pred = sum((f["y_pred"] for f in folds), [])
        metrics = pooled[("diagnosis", method)]["metrics"]
        assert metrics["auc"]["value"] == pytest.approx(roc_auc_score(np.asarray(truth) == "patient", score))
        assert metrics["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(truth, pred))
        assert metrics["auc"]["low"] <= metrics["auc"]["value"] <= metrics["auc"]["high"]
        ages = [next(r for r in _rows(f) if r["method"] == method and r["task"] == "age") for f in (a, b)]
        t, p = sum((f["y_true"] for f in ages), []), sum((f["y_pred"] for f in ages), [])
        age = pooled[("age", method)]["metrics"]
        assert age["mae"]["value"] == pytest.approx(mean_absolute_error(t, p))
        assert age["pearson_r"]["value"] == pytest.approx(pearsonr(t, p).statistic)
    printed = capsys.readouterr().out
    fold_auc = next(r for r in _rows(a) if r["method"] == "fc_linear" and r["task"] == "diagnosis")
    assert f"{fold_auc['metrics']['auc']['value']:.3f}" in printed  # each fold's own figure is shown beside
    assert "different models" in (out / "report.md").read_text()  # the pooled AUC's caveat is in the report
    # the pooled model against the pooled baseline on the same 70 subjects, printed and in report.json
    (row,) = [c for c in json.loads((out / "report.json").read_text())["versus"] if c["task"] == "diagnosis"]
    auc = row["metrics"]["auc"]
    expected = (
        pooled[("diagnosis", "fmrilm_zero_shot")]["metrics"]["auc"]["value"]
        - pooled[("diagnosis", "fc_linear")]["metrics"]["auc"]["value"]
    )
    assert row["n"] == 70 and auc["difference"] == pytest.approx(expected)
    assert "diagnosis: fmrilm_zero_shot minus fc_linear: balanced_accuracy" in printed
    assert f"auc {auc['difference']:+.3f} [{auc['low']:+.3f}, {auc['high']:+.3f}]" in printed


def test_a_demo_folder_is_one_run_with_every_task(two_folds, tmp_path):
    a, b = two_folds
    demo = tmp_path / "demo"
    (demo / "eval").mkdir(parents=True)
    a.rename(demo / "eval" / "abide_diagnosis")
    out = tmp_path / "pooled"
    assert main([str(demo), str(b), "--out", str(out), "--n-boot", "20"]) == 0
    assert {r["n"] for r in _rows(out)} == {70}


def test_a_subject_in_two_folds_is_refused(tmp_path, capsys):
    a = _write(tmp_path / "fold1", _fold(0, [f"s{i}" for i in range(20)]))
    b = _write(tmp_path / "fold2", _fold(1, [f"s{i}" for i in range(15, 30)]))
    assert main([str(a), str(b), "--out", str(tmp_path / "pooled")]) == 2
    err = capsys.readouterr().err
    assert "Subject 's15' is scored in two runs" in err and "fold2" in err
    assert not (tmp_path / "pooled").exists()  # nothing half-written


def test_the_same_report_twice_is_refused(two_folds, tmp_path, capsys):
    a, _ = two_folds
    assert main([str(a), str(a / "report.json"), "--out", str(tmp_path / "pooled")]) == 2
    assert "given twice" in capsys.readouterr().err


def test_a_report_without_predictions_is_refused(tmp_path, capsys):
    a = _write(tmp_path / "fold1", _fold(0, [f"a{i}" for i in range(20)]))
    b = _write(tmp_path / "fold2", _fold(1, [f"b{i}" for i in range(20)]), predictions=False)
    assert main([str(a), str(b), "--out", str(tmp_path / "pooled")]) == 2
    err = capsys.readouterr().err
    assert "lacks its predictions" in err and "fold2" in err


def test_answers_in_another_order_are_refused(tmp_path, capsys):
    a = _write(tmp_path / "fold1", _fold(0, [f"a{i}" for i in range(20)]))
    b = _write(tmp_path / "fold2", _fold(1, [f"b{i}" for i in range(20)], classes=CLASSES[::-1]))
    assert main([str(a), str(b), "--out", str(tmp_path / "pooled")]) == 2
    assert "has answers ['patient', 'control'] here" in capsys.readouterr().err


def test_a_missing_run_is_one_sentence(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "pooled")]) == 2
    err = capsys.readouterr().err
    assert "No such report or folder" in err and "nowhere" in err and "Traceback" not in err
