"""Every figure in an evaluation report equals an independent computation from the predictions themselves.

`fmrilm eval` runs end to end on a small simulated cohort (zero-shot model and every baseline), with the
model's scores replaced by a known "oracle" (it scores the true class higher, with noise), so the right
answer is known from the cohort table alone. Then:

- each method row of ``report.json`` is recomputed with scikit-learn / scipy from its own ``y_true`` /
  ``y_score`` / ``y_pred``, and the Markdown summary shows the same numbers;
- the oracle's AUC, balanced accuracy and MAE are recomputed from the cohort's own truth (this is what catches
  per-class score columns put in the wrong order: a model that scores the right class higher must get an
  AUC above 0.5);
- bootstrap intervals resample whole subjects (constructed subjects with two scans each), and Student-t
  intervals over seeds equal a computation by hand.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from fmrilm.eval.evaluate import EvalConfig, evaluate
from fmrilm.eval.metrics import classification_metrics, paired_difference, resample_indices, seed_ci
from fmrilm.eval.metrics import evaluate as metric_intervals
from fmrilm.eval.report import MethodResult, write_report
from scipy.stats import pearsonr
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)

from fmrilm.model.scoring import PROB_PREFIX

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

N_SUBJECTS = 24
TEST_SITE = "site-1"


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A simulated cohort (3 sites) and a tiny untrained model, written to disk once."""
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    from fmrilm.model.modeling import FmriLM
    from fmrilm.model.testing import tiny_causal_lm, tiny_fmri_tokenizer

    root = tmp_path_factory.mktemp("trust")
    cohort = simulate_cohort(SimulationConfig(n_subjects=N_SUBJECTS, n_sites=3, timepoints=(40, 60), seed=0))
    cohort.save(root / "cohort")
    llm, tok = tiny_causal_lm("llama", initializer_range=0.3)
    model = FmriLM.from_base(llm, tokenizer=tok, fmri_tokenizer=tiny_fmri_tokenizer(codebook_size=16))
    model.save_pretrained(root / "model")
    return root, cohort.phenotype_table()


def oracle_patient_score(row: int, is_patient: bool) -> float:
    """Probability of 'patient' the oracle gives cohort row ``row``: higher for patients, noisy, never tied."""
    noise = np.random.default_rng([7, row]).normal(0.0, 0.3)
    return float(np.clip(0.5 + (0.2 if is_patient else -0.2) + noise, 0.01, 0.99))


def oracle_age(row: int, age: float) -> float:
    """The oracle's age: the truth plus a known error."""
    return float(age + np.random.default_rng([8, row]).normal(0.0, 5.0))


def install_oracle(monkeypatch):
    """`FmriLM.predict_cohort` runs for real (its table format), then its scores are replaced by the oracle's."""
    from fmrilm.model.modeling import FmriLM

    real = FmriLM.predict_cohort

    def predict_cohort(self, cohort, task, indices=None, **kwargs):
        frame = real(self, cohort, task, indices, **kwargs)
        table = cohort.phenotype_table()
        if frame.attrs["task"] == "diagnosis":
            assert set(frame.attrs["options"]) == {"patient", "control"}
            p = np.asarray(
                [oracle_patient_score(i, table.loc[i, "diagnosis"] == "patient") for i in frame["index"]]
            )
            frame[PROB_PREFIX + "patient"] = p
            frame[PROB_PREFIX + "control"] = 1.0 - p
            frame["prediction"] = np.where(p > 0.5, "patient", "control")
        else:
            frame["prediction"] = [oracle_age(i, table.loc[i, "age"]) for i in frame["index"]]
        return frame

    monkeypatch.setattr(FmriLM, "predict_cohort", predict_cohort)


def run_eval(world, task: str, name: str):
    root, _ = world
    out = root / name
    cfg = EvalConfig(
        model=str(root / "model"), cohort=str(root / "cohort"), task=task, out=str(out),
        test_sites=[TEST_SITE], shots=[0], seeds=1, n_boot=200, progress=False,
    )  # fmt: skip
    run = evaluate(cfg)
    return run, json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


@pytest.fixture(scope="module")
def diagnosis_report(world):
    with pytest.MonkeyPatch.context() as mp:
        install_oracle(mp)
        return run_eval(world, "diagnosis", "dx")


@pytest.fixture(scope="module")
def age_report(world):
    with pytest.MonkeyPatch.context() as mp:
        install_oracle(mp)
        return run_eval(world, "age", "age")


# ------------------------------------------------------------------------------------------- recomputation
def recompute(row: dict) -> dict[str, float]:
    """The metrics of one report row from its own predictions, with sklearn / scipy only."""
    y_true = list(row["y_true"])
    if row["task_type"] == "regression":
        t, p = np.asarray(y_true, dtype=float), np.asarray(row["y_pred"], dtype=float)
        r = pearsonr(t, p).statistic if np.ptp(p) > 0 else math.nan
        return {"mae": mean_absolute_error(t, p), "pearson_r": r, "r2": r2_score(t, p)}
    classes = row["classes"]
    score = np.asarray(row["y_score"], dtype=float)
    assert score.shape == (len(y_true), len(classes))
    # The predicted class is the most probable one, in the order of `classes`.
    assert list(row["y_pred"]) == [classes[j] for j in score.argmax(axis=1)], row["method"]
    positive = classes[1]
    truth = np.asarray([y == positive for y in y_true])
    pred = np.asarray([y == positive for y in row["y_pred"]])
    return {
        "auc": roc_auc_score(truth, score[:, 1]),
        "balanced_accuracy": balanced_accuracy_score(y_true, row["y_pred"]),
        "f1": f1_score(truth, pred, zero_division=0),
        "accuracy": accuracy_score(y_true, row["y_pred"]),
    }


def summary_cells(markdown: str) -> dict[str, list[str]]:
    """``{method: [cell, ...]}`` of the report's '## Summary' table."""
    block = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    out = {}
    for line in rows[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = dict(zip(header, cells, strict=True))
    return out


def check_every_row(report: dict, markdown: str, names: tuple[str, ...]) -> None:
    cells = summary_cells(markdown)
    assert {r["method"] for r in report["results"]} == set(cells)
    for row in report["results"]:
        expected = recompute(row)
        for name, value in expected.items():
            reported = row["metrics"][name]
            assert reported["value"] == pytest.approx(value, abs=1e-6, nan_ok=True), (row["method"], name)
            # The interval brackets its own point estimate (a bootstrap of the same predictions).
            if math.isfinite(value):
                assert reported["low"] - 1e-9 <= reported["value"] <= reported["high"] + 1e-9
        for name in names:  # what a reader sees in report.md is the same number
            shown = re.match(r"(\S+) \[", cells[row["method"]][name]).group(1)
            want = f"{expected[name]:.3f}" if math.isfinite(expected[name]) else "—"
            assert shown == want, (row["method"], name, shown)


# -------------------------------------------------------------------------------------------------- tests
def test_every_classification_row_equals_sklearn_on_its_own_predictions(diagnosis_report):
    run, report, markdown = diagnosis_report
    methods = {r["method"] for r in report["results"]}
    assert {"fmrilm_zero_shot", "fc_linear", "code_probe", "demographics", "prior"} <= methods
    check_every_row(report, markdown, ("balanced_accuracy", "auc", "f1"))


def test_a_model_that_scores_the_true_class_higher_gets_the_auc_the_truth_gives(world, diagnosis_report):
    """The oracle's scores against the cohort's own diagnosis column: the report must say the same, whatever
    order the per-class columns come in."""
    _, table = world
    run, report, _ = diagnosis_report
    (zero,) = [r for r in report["results"] if r["method"] == "fmrilm_zero_shot"]
    rows = run.test_rows
    assert set(table.loc[rows, "site"]) == {TEST_SITE}
    is_patient = (table.loc[rows, "diagnosis"] == "patient").to_numpy()
    assert 0 < is_patient.sum() < len(rows)  # both classes in the test part: AUC is defined
    p = np.asarray([oracle_patient_score(i, bool(y)) for i, y in zip(rows, is_patient, strict=True)])
    truth_auc = roc_auc_score(is_patient, p)
    assert truth_auc > 0.5  # the oracle is informative on this split, so the check below can fail
    assert zero["metrics"]["auc"]["value"] == pytest.approx(truth_auc, abs=1e-9)
    assert zero["metrics"]["auc"]["value"] > 0.5
    pred_patient = p > 0.5
    expected_ba = balanced_accuracy_score(is_patient, pred_patient)
    assert zero["metrics"]["balanced_accuracy"]["value"] == pytest.approx(expected_ba)
    # the positive class of a binary report is the task's first-listed answer
    assert zero["classes"] == ["control", "patient"]
    assert zero["metrics"]["f1"]["value"] == pytest.approx(f1_score(is_patient, pred_patient))
    # and the prediction of each test subject is where the truth put it
    assert zero["y_true"] == table.loc[rows, "diagnosis"].tolist()
    assert zero["subject_ids"] == table.loc[rows, "subject_id"].astype(str).tolist()


def test_every_regression_row_equals_sklearn_and_scipy(world, age_report):
    _, table = world
    run, report, markdown = age_report
    methods = {r["method"] for r in report["results"]}
    assert {"fmrilm_zero_shot", "fc_linear", "code_probe", "demographics", "train_mean"} <= methods
    check_every_row(report, markdown, ("mae", "pearson_r"))
    # The model row against the cohort's own ages: the oracle's known errors.
    (zero,) = [r for r in report["results"] if r["method"] == "fmrilm_zero_shot"]
    ages = table.loc[run.test_rows, "age"].to_numpy(dtype=float)
    guesses = np.asarray([oracle_age(i, a) for i, a in zip(run.test_rows, ages, strict=True)])
    assert zero["metrics"]["mae"]["value"] == pytest.approx(np.mean(np.abs(guesses - ages)))
    assert zero["metrics"]["pearson_r"]["value"] == pytest.approx(pearsonr(ages, guesses).statistic)
    (floor,) = [r for r in report["results"] if r["method"] == "train_mean"]
    train_mean = table.loc[run.split["train"], "age"].astype(float).mean()
    assert floor["metrics"]["mae"]["value"] == pytest.approx(np.mean(np.abs(ages - train_mean)))


# ----------------------------------------------------------------------------------------------- bootstrap
def paired_subject_results() -> list[MethodResult]:
    """Ten subjects with two scans each. Classification: one scan of each subject right, one wrong; regression:
    absolute errors 1 and 3. Resampling SUBJECTS keeps accuracy at exactly 0.5 and MAE at exactly 2 in every
    draw, so their intervals have zero width; resampling scans would spread them."""
    subjects = [f"sub-{i // 2}" for i in range(20)]
    y = ["a" if (i // 2) % 2 else "b" for i in range(20)]
    wrong = {"a": "b", "b": "a"}
    pred = [t if i % 2 else wrong[t] for i, t in enumerate(y)]
    p_b = np.asarray([0.8 if p == "b" else 0.2 for p in pred])
    ages = np.arange(20, dtype=float) * 2 + 10
    guesses = ages + np.asarray([1.0 if i % 2 else -3.0 for i in range(20)])
    return [
        MethodResult(
            "paired",
            "group",
            "binary",
            y,
            pred,
            np.stack([1 - p_b, p_b], 1),
            ["a", "b"],
            subject_ids=subjects,
        ),
        MethodResult("paired", "age", "regression", ages.tolist(), guesses.tolist(), subject_ids=subjects),
    ]


def test_report_intervals_resample_subjects_not_scans(tmp_path):
    paths = write_report(paired_subject_results(), tmp_path / "report", n_boot=300)
    rows = {r["task"]: r["metrics"] for r in json.loads(paths["json"].read_text())["results"]}
    for name, value in (("accuracy", 0.5), ("balanced_accuracy", 0.5)):
        m = rows["group"][name]
        assert (m["low"], m["value"], m["high"]) == pytest.approx((value, value, value)), name
    m = rows["age"]["mae"]
    assert (m["low"], m["value"], m["high"]) == pytest.approx((2.0, 2.0, 2.0))
    # the same predictions without subject ids are resampled scan by scan: the interval opens up
    loose = paired_subject_results()[1]
    loose.subject_ids = None
    m = loose.score(n_boot=300).metrics["mae"]
    assert m["high"] - m["low"] > 0.5


def test_a_paired_difference_is_the_subject_bootstrap_of_both_methods_on_the_same_draws():
    """Model minus baseline: the point value is the difference of the two reported metrics, the interval a
    percentile bootstrap over subjects that scores both methods on each draw (checked by hand), and what the
    two share cancels, so it is far narrower than either method's own interval."""
    rng = np.random.default_rng(5)
    n = 120
    truth = rng.uniform(8, 40, n)
    shared = rng.normal(0, 6, n)  # both methods miss the same subjects the same way
    base = truth + shared + rng.normal(0, 0.5, n)
    better = truth + 0.8 * shared + rng.normal(0, 0.5, n)
    subjects = [f"p{i // 2}" for i in range(n)]  # two scans a subject
    got = paired_difference(
        "regression", truth, {"y_pred": better}, {"y_pred": base}, groups=subjects, n_boot=2000, seed=4
    )
    mae = got["mae"]
    assert mae["difference"] == pytest.approx(np.abs(better - truth).mean() - np.abs(base - truth).mean())
    hand = [
        np.abs(better[idx] - truth[idx]).mean() - np.abs(base[idx] - truth[idx]).mean()
        for idx in resample_indices(n, subjects, 2000, 4)
    ]
    assert (mae["low"], mae["high"]) == pytest.approx(tuple(np.quantile(hand, [0.025, 0.975])))
    assert mae["high"] < 0 and mae["at_least_as_good"] == 1.0  # a smaller MAE is the better one
    own = metric_intervals("regression", truth, y_pred=base, groups=subjects, n_boot=2000, seed=4)["mae"]
    assert mae["high"] - mae["low"] < 0.5 * (own["high"] - own["low"])
    # a method against itself: no difference on any draw
    same = paired_difference("regression", truth, {"y_pred": base}, {"y_pred": base}, n_boot=50)
    assert all(
        v["difference"] == v["low"] == v["high"] == 0 and v["at_least_as_good"] == 1 for v in same.values()
    )


def test_a_paired_classification_difference_ranks_the_better_reader_first():
    rng = np.random.default_rng(2)
    y = np.array(["a", "b"] * 60)
    signal = (y == "b").astype(float)
    good = 1 / (1 + np.exp(-(2 * signal - 1 + rng.normal(0, 0.8, len(y)))))
    noise = rng.uniform(0, 1, len(y))
    got = paired_difference(
        "binary", y, {"y_score": good}, {"y_score": noise}, classes=["a", "b"], n_boot=500, seed=0
    )
    expected = (
        classification_metrics(y, good, ["a", "b"])["auc"]
        - classification_metrics(y, noise, ["a", "b"])["auc"]
    )
    assert got["auc"]["difference"] == pytest.approx(expected)
    assert got["auc"]["low"] > 0 and got["auc"]["at_least_as_good"] == 1.0
    backwards = paired_difference(
        "binary", y, {"y_score": noise}, {"y_score": good}, classes=["a", "b"], n_boot=500, seed=0
    )
    assert backwards["auc"]["high"] < 0 and backwards["auc"]["at_least_as_good"] == 0.0
    with pytest.raises(ValueError, match="every test row"):
        paired_difference("binary", y, {"y_score": good}, {"y_score": noise[:-1]}, classes=["a", "b"])


def test_every_bootstrap_draw_keeps_a_subjects_scans_together():
    groups = ["s0", "s0", "s1", "s2", "s2", "s2", "s3"]
    members = {"s0": [0, 1], "s1": [2], "s2": [3, 4, 5], "s3": [6]}
    for idx in resample_indices(len(groups), groups, n_boot=50, seed=1):
        counts = np.bincount(idx, minlength=len(groups))
        for rows in members.values():
            assert len(set(counts[rows])) == 1, (idx, rows)  # all of a subject's scans, or none
        assert sum(counts[rows[0]] for rows in members.values()) == len(members)  # 4 subjects drawn


def test_bootstrap_interval_equals_a_subject_bootstrap_by_hand():
    """Eight subjects with four scans each whose errors share a subject offset: the reported interval of the MAE
    matches a percentile bootstrap over subjects written here, and is much wider than one over scans."""
    rng = np.random.default_rng(11)
    n_sub, per = 8, 4
    offset = rng.normal(0, 4, n_sub)
    truth = rng.uniform(10, 60, n_sub * per)
    pred = truth + np.repeat(offset, per) + rng.normal(0, 0.5, n_sub * per)
    subjects = np.repeat([f"p{i}" for i in range(n_sub)], per)
    res = metric_intervals("regression", truth, y_pred=pred, groups=subjects, n_boot=4000, seed=3)["mae"]

    by_subject = np.abs(pred - truth).reshape(n_sub, per)
    draws = np.random.default_rng(99).integers(0, n_sub, size=(4000, n_sub))
    hand = by_subject[draws].mean(axis=(1, 2))  # equal scans per subject: MAE = mean of subject means
    lo, hi = np.quantile(hand, [0.025, 0.975])
    sd = hand.std()
    assert res["low"] == pytest.approx(lo, abs=0.25 * sd) and res["high"] == pytest.approx(hi, abs=0.25 * sd)
    scans = metric_intervals("regression", truth, y_pred=pred, n_boot=4000, seed=3)["mae"]
    assert (scans["high"] - scans["low"]) < 0.75 * (hi - lo)


# ---------------------------------------------------------------------------------------------------- seeds
def test_seed_interval_equals_a_student_t_interval_by_hand():
    values = [0.61, 0.66, 0.64, 0.70]
    mean = (0.61 + 0.66 + 0.64 + 0.70) / 4  # 0.6525
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)  # 0.037749...
    t_975_df3 = 3.182446305284263  # Student-t table, two-sided 95 %, 3 degrees of freedom
    half = t_975_df3 * sd / 2
    assert seed_ci(values) == pytest.approx((mean, mean - half, mean + half), abs=1e-12)
    assert half == pytest.approx(0.0600679, abs=1e-6)
    # clipped to what the metric can take, and the NaN of a failed seed is left out
    _, _, high = seed_ci([0.95, 0.99, 1.0], metric="balanced_accuracy")
    assert high == 1.0
    assert seed_ci([0.61, float("nan"), 0.66, 0.64, 0.70]) == pytest.approx(seed_ci(values))


def test_report_over_seeds_row_is_the_hand_computed_interval(tmp_path):
    """Three seeds of a few-shot run: the report's over-seed mean and interval of each metric are the Student-t
    ones of the three per-seed values, and those values are each seed's own sklearn figure."""
    rng = np.random.default_rng(5)
    y = ["x", "y"] * 10
    runs = []
    for seed in range(3):
        p = np.clip(0.5 + 0.25 * (np.asarray(y) == "y") + rng.normal(0, 0.25, 20), 0.01, 0.99)
        pred = ["y" if v > 0.5 else "x" for v in p]
        runs.append(
            MethodResult("m", "t", "binary", y, pred, np.stack([1 - p, p], 1), ["x", "y"], shots=4, seed=seed)
        )
    paths = write_report(runs, tmp_path / "r", n_boot=50)
    record = json.loads(paths["json"].read_text())
    (agg,) = record["over_seeds"]
    assert agg["n_seeds"] == 3
    aucs = [roc_auc_score(np.asarray(y) == "y", r.y_score[:, 1]) for r in runs]
    mean = sum(aucs) / 3
    sd = math.sqrt(sum((a - mean) ** 2 for a in aucs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, df=2)
    expected = (mean, max(0.0, mean - half), min(1.0, mean + half))
    assert (agg["auc"]["mean"], agg["auc"]["low"], agg["auc"]["high"]) == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------------------------------------ retrieval
def test_retrieval_accuracy_on_constructed_embeddings():
    """fMRI -> text retrieval (Stage 1's held-out figure) on vectors whose answer is known by construction."""
    import torch

    from fmrilm.tokenizer.metrics import retrieval_accuracy

    texts = torch.eye(8)  # eight orthogonal texts
    target = torch.tensor([0, 1, 2, 3, 4, 5])
    exact = retrieval_accuracy(texts[target] + 0.01, texts, target)
    assert exact["top1"] == 1.0 and exact["top5"] == 1.0 and exact["chance_top1"] == 1 / 8
    # each brain vector points at its own text for the first four queries and at the next text for the
    # last two, where its own text ranks second: top-1 is 4/6, top-5 is 6/6
    brain = texts[target].clone()
    brain[4:] = 0.5 * texts[target[4:]] + texts[target[4:] + 1]
    result = retrieval_accuracy(brain, texts, target)
    assert result["top1"] == pytest.approx(4 / 6) and result["top5"] == 1.0 and result["n_queries"] == 6
    # and brain vectors opposite to their text rank it last
    assert retrieval_accuracy(-texts[target] + 0.1, texts, target)["top5"] == 0.0


def test_bootstrap_ci_resamples_subjects_with_the_asked_level():
    """`bootstrap_ci` on its own: the mean of per-subject constants (two scans each) can only take values of
    subject means, its interval follows ``alpha``, and a metric that is never finite gives NaN, not an error."""
    from fmrilm.eval.metrics import bootstrap_ci

    values = np.repeat(np.arange(6, dtype=float), 2)  # subject i's two scans both score i
    groups = np.repeat([f"s{i}" for i in range(6)], 2)
    draws = [float(values[idx].mean()) for idx in resample_indices(12, groups, 400, 4)]
    assert all(abs(d * 6 - round(d * 6)) < 1e-9 for d in draws)  # sums of six whole subjects
    wide = bootstrap_ci(lambda idx: float(values[idx].mean()), 12, groups=groups, n_boot=400, seed=4)
    narrow = bootstrap_ci(
        lambda idx: float(values[idx].mean()), 12, groups=groups, n_boot=400, seed=4, alpha=0.5
    )
    assert wide == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])))
    assert narrow == pytest.approx(tuple(np.quantile(draws, [0.25, 0.75])))
    assert wide[0] < narrow[0] <= narrow[1] < wide[1]
    assert all(math.isnan(v) for v in bootstrap_ci(lambda idx: float("nan"), 5, n_boot=20))
    assert all(math.isnan(v) for v in seed_ci([float("nan"), float("nan")]))
    # a Student-t interval on an MAE is clipped at 0, its lower bound
    mean, low, high = seed_ci([0.1, 0.2, 3.0], metric="mae")
    assert low == 0.0 and high > mean > 0


# ------------------------------------------------------------------------------------------ edge cases of metrics
def test_a_one_dimensional_score_is_refused_for_more_than_two_classes():
    with pytest.raises(ValueError, match="1-D score is only meaningful for a binary task"):
        metric_intervals("classification", ["a", "b", "c"], y_score=np.array([0.2, 0.5, 0.9]), classes="abc")


def test_multiclass_draws_missing_a_class_are_left_out_of_the_auc_interval():
    """Three classes, one of them held by a single scan: many resamples miss it and have no AUC; the interval is
    formed from the others (not an error, not NaN), while the point AUC is sklearn's."""
    rng = np.random.default_rng(2)
    y = ["a"] * 8 + ["b"] * 8 + ["c"]
    score = rng.dirichlet(np.ones(3), size=len(y))
    out = metric_intervals("classification", y, y_score=score, classes=["a", "b", "c"], n_boot=200, seed=0)
    codes = np.asarray([{"a": 0, "b": 1, "c": 2}[v] for v in y])
    assert out["auc"]["value"] == pytest.approx(roc_auc_score(codes, score, multi_class="ovr"))
    assert np.isfinite(out["auc"]["low"]) and out["auc"]["low"] <= out["auc"]["high"]
    # with no "c" at all the AUC is undefined, and so is its interval
    none = metric_intervals("classification", y[:-1], y_score=score[:-1], classes=["a", "b", "c"], n_boot=50)
    assert (
        math.isnan(none["auc"]["value"])
        and math.isnan(none["auc"]["low"])
        and math.isnan(none["auc"]["high"])
    )


def test_pearson_r_of_values_spread_less_than_one_is_still_computed():
    """Proportions (0-0.5): Pearson r and its interval exist for any spread above zero, not only above one."""
    rng = np.random.default_rng(4)
    truth = rng.uniform(0.0, 0.5, 30)
    pred = np.clip(truth + rng.normal(0, 0.05, 30), 0, 0.5)
    out = metric_intervals("regression", truth, y_pred=pred, n_boot=200, seed=1)["pearson_r"]
    assert out["value"] == pytest.approx(pearsonr(truth, pred).statistic)
    assert np.isfinite(out["low"]) and out["low"] <= out["value"] <= out["high"]


def test_constant_predictions_have_no_pearson_r_but_keep_their_mae_interval():
    truth = np.arange(10, dtype=float)
    out = metric_intervals("regression", truth, y_pred=np.full(10, 4.0), n_boot=100, seed=0)
    assert all(math.isnan(out["pearson_r"][k]) for k in ("value", "low", "high"))
    assert out["mae"]["value"] == pytest.approx(mean_absolute_error(truth, np.full(10, 4.0)))
    assert out["mae"]["low"] < out["mae"]["value"] < out["mae"]["high"]


def test_a_scan_by_scan_bootstrap_draws_every_row():
    draws = np.concatenate(list(resample_indices(5, None, n_boot=200, seed=0)))
    assert draws.min() == 0 and draws.max() == 4 and set(draws.tolist()) == {0, 1, 2, 3, 4}


def test_intervals_are_reproducible_with_their_seed_and_move_with_another():
    rng = np.random.default_rng(8)
    y = ["x", "y"] * 15
    p = np.clip(0.5 + 0.2 * (np.asarray(y) == "y") + rng.normal(0, 0.3, 30), 0.01, 0.99)
    args = dict(y_score=np.stack([1 - p, p], 1), classes=["x", "y"], n_boot=100)
    first = metric_intervals("classification", y, seed=3, **args)
    assert metric_intervals("classification", y, seed=3, **args) == first
    assert metric_intervals("classification", y, seed=4, **args)["auc"] != first["auc"]


def test_confident_scores_written_to_report_json_give_back_the_reported_auc():
    """A baseline's probabilities can sit within 1e-7 of 0 or 1 (FC on ABIDE): what report.json keeps must
    rank the scans as the scored ones did, so the AUC recomputed from the file is the one reported."""
    rng = np.random.default_rng(0)
    y = np.asarray(["a", "b"] * 40)
    margin = 14 + 3 * rng.normal(size=80) + (y == "b") * 2.0  # both classes near probability 1
    p_b = 1 / (1 + np.exp(-margin))
    score = np.column_stack([1 - p_b, p_b])
    result = MethodResult(
        method="confident", task="t", task_type="binary", y_true=list(y),
        y_pred=["b"] * 80, y_score=score, classes=["a", "b"],
    ).score(n_boot=10)  # fmt: skip
    again = MethodResult.from_dict(json.loads(json.dumps(result.to_dict(predictions=True))))
    reported = result.metrics["auc"]["value"]
    assert roc_auc_score(y == "b", again.y_score[:, 1]) == pytest.approx(reported, abs=1e-12)
