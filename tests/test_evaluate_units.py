"""`fmrilm eval`'s pure parts, each checked on small hand-made inputs (seconds, no model, no training).

The end-to-end tests (test_evaluate.py, test_evaluate_from_test.py, test_metrics_trust.py) run the whole
command; these pin down what each step promises on its own: which rows a method is scored on and against which
truth, how few-shot draws are planned and refused, how a whole-test-part result is cut to a draw's remainder,
which split is evaluated, what the summary table says, and when a finished run may be resumed. They are also
the fast test subset `make mutants` runs `eval/evaluate.py` against (tests/mutants.py).
"""

from __future__ import annotations

import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from fmrilm.eval.evaluate import (
    DEFAULT_SHOTS,
    EvalConfig,
    _check_rows,
    _fmt,
    _insert_summary,
    _plan_draws,
    _why_not_resume,
    model_result,
    resolve_eval_split,
    restrict,
    result_from_record,
    result_to_record,
    seeds_of,
    shot_plan,
    summary_table,
    write_split_file,
)
from fmrilm.eval.evaluate import test_draw_plan as draw_plan_from_test  # not collected as a test
from fmrilm.eval.metrics import classification_metrics, seed_ci
from fmrilm.eval.report import FROM_TEST, WHOLE_TEST, MethodResult, write_report

from fmrilm.atlas import Atlas
from fmrilm.cohort import Cohort
from fmrilm.errors import FmriInputError
from fmrilm.model.scoring import PROB_PREFIX
from fmrilm.scan import Scan
from fmrilm.splits import save_split


def _cfg(**kw) -> EvalConfig:
    return EvalConfig(model="m", cohort=kw.pop("cohort", "c"), task="diagnosis", out=kw.pop("out", "o"), **kw)


# ------------------------------------------------------------------------------------------- model_result
def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject_id": ["s0", "s1", "s2", "s3", "s4"],
            "diagnosis": ["control", "patient", "control", "patient", "control"],
            "age": [10.0, 20.0, 30.0, 40.0, 50.0],
        }
    )


def _frame(rows: list[int], labels: list, probs: dict[str, list[float]] | None = None, pred=None):
    """`predict_cohort`'s table, in another row order than asked (the index column says which row)."""
    data = {"index": rows, "label": labels}
    for c, p in (probs or {}).items():
        data[PROB_PREFIX + c] = p
    if pred is not None:
        data["prediction"] = pred
    return pd.DataFrame(data).iloc[::-1].reset_index(drop=True)


def test_model_result_scores_the_asked_rows_against_the_baselines_truth_in_class_order():
    table = _table()
    y = table["diagnosis"].to_numpy()
    classes = ["control", "patient"]
    rows = [3, 0, 4]
    frame = _frame(
        rows,
        ["patient", "control", "control"],
        {"patient": [0.9, 0.2, 0.7], "control": [0.1, 0.8, 0.3]},  # columns not in class order
    )
    info = {"steps": 3}
    r = model_result(
        frame, "fmrilm_zero_shot", SimpleNamespace(name="diagnosis"), (y, classes, "binary"), rows, table,
        shots=2, seed=7, info=info,
    )  # fmt: skip
    assert r.method == "fmrilm_zero_shot" and r.task == "diagnosis" and r.task_type == "binary"
    assert r.y_true == ["patient", "control", "control"]
    assert r.subject_ids == ["s3", "s0", "s4"]
    # columns follow `classes`, rows follow `rows`
    np.testing.assert_allclose(r.y_score, [[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert r.y_pred == ["patient", "control", "patient"]  # the argmax class, not the truth
    assert r.classes == classes and r.part == "test" and r.shots == 2 and r.seed == 7
    assert r.info == {"steps": 3} and r.info is not info  # a copy: later edits do not reach the caller
    plain = model_result(frame, "x", "diagnosis", (y, classes, "binary"), rows, table)
    assert plain.task == "diagnosis" and plain.info == {} and plain.shots is None and plain.seed is None


def test_model_result_refuses_labels_coded_otherwise_than_the_truth():
    table = _table()
    y = table["diagnosis"].to_numpy()
    frame = _frame([0, 1], ["patient", "control"], {"control": [0.5, 0.5], "patient": [0.5, 0.5]})
    with pytest.raises(RuntimeError, match="differ from the baselines' truth"):
        model_result(frame, "m", "diagnosis", (y, ["control", "patient"], "binary"), [0, 1], table)


def test_model_result_for_a_regression_keeps_the_predicted_numbers():
    table = _table()
    y = table["age"].to_numpy()
    rows = [1, 2]
    frame = _frame(rows, [20.0, 30.0], pred=["21.5", 28.0])
    r = model_result(frame, "m", "age", (y, None, "regression"), rows, table)
    assert r.y_true == [20.0, 30.0] and r.y_pred == [21.5, 28.0] and r.y_score is None and r.classes is None
    off = _frame(rows, [20.0, 31.0], pred=[21.5, 28.0])
    with pytest.raises(RuntimeError, match="differ"):
        model_result(off, "m", "age", (y, None, "regression"), rows, table)


def test_a_stored_result_reads_back_equal_without_its_metrics():
    r = MethodResult(
        method="fc_linear", task="diagnosis", task_type="binary", y_true=["a", "b"], y_pred=["a", "a"],
        y_score=np.array([[0.7, 0.3], [0.6, 0.4]]), classes=["a", "b"], subject_ids=["s0", "s1"], shots=4,
        seed=2, info={"C": 1.0}, metrics={"auc": {"value": 1.0}},
    )  # fmt: skip
    record = json.loads(json.dumps(result_to_record(r)))
    assert record["metrics"] == {}
    back = result_from_record(record)
    assert (back.method, back.task, back.task_type, back.classes) == (
        "fc_linear",
        "diagnosis",
        "binary",
        ["a", "b"],
    )
    assert back.y_true == ["a", "b"] and back.y_pred == ["a", "a"] and back.subject_ids == ["s0", "s1"]
    assert back.y_score.dtype == float
    np.testing.assert_allclose(back.y_score, r.y_score)
    assert (back.shots, back.seed, back.info, back.part, back.metrics) == (4, 2, {"C": 1.0}, "test", {})
    bare = {"method": "m", "task": "t", "task_type": "regression", "y_true": [1.0], "y_pred": [2.0]}
    plain = result_from_record(bare)
    assert plain.y_score is None and plain.part == "test" and plain.info == {} and plain.shots is None


# --------------------------------------------------------------------------------------------------- by site
def _two_sites() -> MethodResult:
    """Six subjects of sites A and B whose answers rank well within each site but sit apart between them."""
    p = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])  # A: 0.9 / 0.8 / 0.7, B: 0.3 / 0.2 / 0.1
    return MethodResult(
        method="fmrilm_zero_shot", task="diagnosis", task_type="binary",
        y_true=["b", "a", "a", "b", "b", "a"], y_pred=["b", "b", "b", "a", "a", "a"],
        y_score=np.column_stack([1 - p, p]), classes=["a", "b"], subject_ids=[f"s{i}" for i in range(6)],
        shots=0, seed=0, sites=["A", "A", "A", "B", "B", "B"],
    )  # fmt: skip


def test_each_test_site_is_scored_on_its_own_subjects():
    r = _two_sites()
    by_site = r.by_site()
    assert sorted(by_site) == ["A", "B"] and by_site["A"]["n"] == 3
    for site, rows in (("A", [0, 1, 2]), ("B", [3, 4, 5])):
        expected = classification_metrics(
            [r.y_true[i] for i in rows], r.y_score[rows], r.classes, [r.y_pred[i] for i in rows]
        )
        assert {k: v for k, v in by_site[site].items() if k != "n"} == pytest.approx(expected)
    # each site ranks its scans right (AUC 1), while pooled the two sites' offsets cost ranking
    assert by_site["A"]["auc"] == by_site["B"]["auc"] == 1.0
    assert r.score(n_boot=0).metrics["auc"]["value"] < 1.0
    # a site whose subjects all give one answer has nothing balanced to score: NaN, and no library warning
    lopsided = MethodResult(**{**r.__dict__, "sites": ["A", "B", "B", "A", "B", "B"], "metrics": {}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_site = lopsided.by_site()
    assert by_site["A"]["n"] == 2 and all(math.isnan(v) for k, v in by_site["A"].items() if k != "n")
    assert by_site["B"]["auc"] == pytest.approx(1 / 3)  # B's scores 0.8 / 0.7 / 0.1 (a) against 0.2 (b)
    one_site = MethodResult(**{**r.__dict__, "sites": ["A"] * 6, "metrics": {}})
    assert one_site.by_site() == {} and MethodResult(**{**r.__dict__, "sites": None}).by_site() == {}


def test_sites_are_kept_through_storage_pooling_and_model_results():
    r = _two_sites()
    back = result_from_record(json.loads(json.dumps(result_to_record(r))))
    assert back.sites == r.sites and back.by_site() == r.by_site()
    other = MethodResult(**{**r.__dict__, "sites": ["C"] * 6, "subject_ids": [f"t{i}" for i in range(6)]})
    pooled = MethodResult.pooled([r, other])
    assert pooled.sites == r.sites + ["C"] * 6 and sorted(pooled.by_site()) == ["A", "B", "C"]
    table = _table().assign(site=["X", "Y", "X", None, "Y"])
    y = table["diagnosis"].to_numpy()
    frame = _frame(
        [3, 0, 4], ["patient", "control", "control"], {"patient": [0.9, 0.2, 0.7], "control": [0.1, 0.8, 0.3]}
    )
    made = model_result(frame, "m", "diagnosis", (y, ["control", "patient"], "binary"), [3, 0, 4], table)
    assert made.sites == ["", "X", "Y"]  # a missing site is unknown, never another site's name
    assert (
        model_result(
            frame, "m", "diagnosis", (y, ["control", "patient"], "binary"), [3, 0, 4], _table()
        ).sites
        is None
    )


def test_the_report_has_a_by_site_table_for_results_from_several_sites(tmp_path):
    r = _two_sites()
    paths = write_report([r], tmp_path / "report", n_boot=20)
    md = paths["markdown"].read_text()
    assert "By test site (balanced accuracy / AUC" in md
    header, row = _rows(md.split("By test site", 1)[1].split("\n\n", 2)[1])
    assert header == ["method", "protocol", "seed", "A (n=3)", "B (n=3)", "mean over sites"]
    a, b = r.by_site()["A"], r.by_site()["B"]
    assert row == [
        "fmrilm_zero_shot", "whole-test-part", "0", f"{a['balanced_accuracy']:.3f} / 1.000",
        f"{b['balanced_accuracy']:.3f} / 1.000", f"{(a['balanced_accuracy'] + b['balanced_accuracy']) / 2:.3f} / 1.000",
    ]  # fmt: skip
    stored = json.loads(paths["json"].read_text())["results"][0]
    assert stored["sites"] == r.sites and stored["by_site"]["B"]["auc"] == 1.0
    single = MethodResult(**{**r.__dict__, "sites": ["A"] * 6, "metrics": {}})
    md_one = write_report([single], tmp_path / "one", n_boot=20)["markdown"].read_text()
    assert "By test site" not in md_one


# ------------------------------------------------------------------------------------------- few-shot plans
def test_seeds_count_up_from_the_first_seed():
    assert seeds_of(_cfg(seed=5, seeds=3)) == [5, 6, 7]
    assert seeds_of(_cfg(seeds=1)) == [0]


def test_asked_shots_are_planned_once_each_in_order_for_every_seed():
    calls = []

    def draw(k, s):
        calls.append((k, s))
        return [k, s]

    kept, plan, skipped = _plan_draws(_cfg(shots=[4, 0, 2, 4], seeds=2, seed=3), draw, "runs")
    assert kept == [0, 2, 4] and skipped == []
    assert plan == {(2, 3): [2, 3], (2, 4): [2, 4], (4, 3): [4, 3], (4, 4): [4, 4]}
    assert (0, 3) not in calls  # zero-shot draws nobody


def test_a_k_that_cannot_be_drawn_is_an_error_when_asked_and_dropped_from_the_defaults():
    def draw(k, s):
        if k >= 8 and s == 1:  # fails on the second seed only: the first seed's draw must go too
            raise FmriInputError(f"only 5 subjects for k={k}", fix="lower k")
        return [k]

    with pytest.raises(FmriInputError, match="only 5 subjects for k=8"):
        _plan_draws(_cfg(shots=[2, 8], seeds=2), draw, "runs")
    kept, plan, skipped = _plan_draws(_cfg(seeds=2), draw, "runs")
    assert kept == [k for k in DEFAULT_SHOTS if k < 8] == [0, 2, 4]
    assert skipped == [
        {"shots": 8, "reason": "only 5 subjects for k=8"},
        {"shots": 16, "reason": "only 5 subjects for k=16"},
    ]
    assert sorted(plan) == [(2, 0), (2, 1), (4, 0), (4, 1)]


def test_negative_shots_or_no_seeds_are_one_clear_error():
    with pytest.raises(FmriInputError, match=r"--shots must be 0 or more, got \[-1, 2\]"):
        _plan_draws(_cfg(shots=[2, -1]), lambda k, s: [], "runs")
    with pytest.raises(FmriInputError, match="--seeds must be at least 1, got 0"):
        _plan_draws(_cfg(seeds=0), lambda k, s: [], "runs")
    assert _plan_draws(_cfg(shots=[0], seeds=1), lambda k, s: [], "runs") == ([0], {}, [])


def _cohort_table(n_per_class: int = 4, scans: int = 2) -> pd.DataFrame:
    """Subjects with two scans each: controls c0.., patients p0.."""
    rows = []
    for cls in ("control", "patient"):
        for i in range(n_per_class):
            for _ in range(scans):
                rows.append({"subject_id": f"{cls[0]}{i}", "diagnosis": cls, "age": 10.0 + i})
    return pd.DataFrame(rows)


SPEC = SimpleNamespace(name="diagnosis", target="diagnosis", type="binary", number=None)


def test_few_shot_from_the_train_part_trains_on_k_train_subjects_per_class():
    table = _cohort_table()
    split = {"train": list(range(0, 4)) + list(range(8, 12)), "test": list(range(4, 8)) + list(range(12, 16))}
    kept, plan, skipped = shot_plan(_cfg(shots=[1, 2], seeds=2), table, SPEC, split)
    assert kept == [1, 2] and skipped == []
    subjects = table["subject_id"].to_numpy()
    for (k, _s), rows in plan.items():
        assert set(rows) <= set(split["train"])
        picked = table.loc[rows]
        assert picked.groupby("diagnosis")["subject_id"].nunique().to_dict() == {"control": k, "patient": k}
        assert len({subjects[i] for i in rows}) == len(rows)  # one scan per subject
    with pytest.raises(FmriInputError):
        shot_plan(_cfg(shots=[3]), table, SPEC, split)  # 2 train subjects per class


def test_few_shot_from_the_test_part_scores_only_the_subjects_a_draw_leaves():
    table = _cohort_table(n_per_class=4)
    subjects = table["subject_id"].to_numpy()
    train = [i for i in range(len(table)) if subjects[i] in ("c0", "p0")]
    test_rows = [i for i in range(len(table)) if i not in train]
    kept, plan, skipped = draw_plan_from_test(
        _cfg(shots=[1, 2], seeds=2, few_shot_from="test"), table, SPEC, {"train": train, "test": test_rows},
        test_rows,
    )  # fmt: skip
    assert kept == [1, 2] and skipped == []
    for (k, _s), draw in plan.items():
        drawn = set(draw["subjects"])
        assert draw["subjects"] == sorted(drawn) and len(drawn) == 2 * k
        assert {d[0] for d in drawn} == {"c", "p"}  # k of each class
        assert not drawn & {"c0", "p0"}  # never a train subject
        assert draw["train"] == [i for i in test_rows if subjects[i] in drawn]  # every scan of each
        assert draw["scored"] == [i for i in test_rows if subjects[i] not in drawn]  # the rest, in order
    assert plan[(1, 0)]["subjects"] != plan[(1, 1)]["subjects"] or plan[(2, 0)] != plan[(2, 1)]


def test_a_test_part_draw_that_leaves_a_class_unscored_is_refused_with_the_largest_k():
    table = _cohort_table(n_per_class=3)
    test_rows = list(range(len(table)))
    cfg = _cfg(shots=[3], few_shot_from="test")
    with pytest.raises(FmriInputError) as err:
        draw_plan_from_test(cfg, table, SPEC, {"train": [], "test": test_rows}, test_rows)
    assert "Task 'diagnosis': k=3" in err.value.problem
    assert "at most 2 here" in str(err.value)
    cfg = _cfg(shots=[2], few_shot_from="test")  # 3 per class: k=2 leaves one of each
    assert draw_plan_from_test(cfg, table, SPEC, {"train": [], "test": test_rows}, test_rows)[0] == [2]
    # a class with 2 subjects: k=2 can be drawn, but leaves no subject of that class to score
    small = table[~table["subject_id"].isin(["p2"])].reset_index(drop=True)
    rows = list(range(len(small)))
    with pytest.raises(FmriInputError, match="leaves no 'patient' subject to score"):
        draw_plan_from_test(cfg, small, SPEC, {"train": [], "test": rows}, rows)
    kept, plan, skipped = draw_plan_from_test(
        _cfg(few_shot_from="test"), small, SPEC, {"train": [], "test": rows}, rows
    )
    assert kept == [0] and [s["shots"] for s in skipped] == [2, 4, 8, 16] and plan == {}


def test_a_regression_draw_must_leave_two_subjects_to_score():
    table = _cohort_table(n_per_class=2)
    table["age"] = [10.0, 10.0, 20.0, 20.0, 30.0, 30.0, 40.0, 40.0]
    spec = SimpleNamespace(
        name="age", target="age", type="regression", number=SimpleNamespace(bins=[0.0, 100.0])
    )
    rows = list(range(len(table)))
    kept, plan, _ = draw_plan_from_test(
        _cfg(shots=[2], few_shot_from="test"), table, spec, {"train": [], "test": rows}, rows
    )
    assert len(plan[(2, 0)]["subjects"]) == 2 and len(plan[(2, 0)]["scored"]) == 4
    with pytest.raises(FmriInputError, match="fewer than two subjects to score.*lower --shots \\(fewer\\)"):
        draw_plan_from_test(
            _cfg(shots=[3], few_shot_from="test"), table, spec, {"train": [], "test": rows}, rows
        )


def test_restrict_keeps_the_predictions_of_the_rows_a_draw_left():
    whole = MethodResult(
        method="fc_linear", task="diagnosis", task_type="binary", y_true=["a", "b", "a", "b"],
        y_pred=["a", "a", "b", "b"], y_score=np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]),
        classes=["a", "b"], subject_ids=["s0", "s1", "s2", "s3"], shots=None, seed=0, info={"C": 1},
        sites=["X", "Y", "X", "Z"],
    )  # fmt: skip
    test_rows = [10, 11, 12, 13]
    r = restrict(whole, [13, 11], test_rows, shots=2, seed=5)
    assert r.y_true == ["b", "b"] and r.y_pred == ["b", "a"] and r.subject_ids == ["s3", "s1"]
    assert r.sites == ["Z", "Y"]  # each kept subject's own site
    np.testing.assert_allclose(r.y_score, [[0.2, 0.8], [0.6, 0.4]])
    assert (r.shots, r.seed, r.protocol, r.method, r.classes) == (2, 5, FROM_TEST, "fc_linear", ["a", "b"])
    assert r.info == {"C": 1, "own_shots": None, "own_seed": 0} and whole.info == {"C": 1}
    bare = MethodResult(method="m", task="t", task_type="regression", y_true=[1.0, 2.0], y_pred=[1.5, 2.5])
    cut = restrict(bare, [5], [4, 5], shots=1, seed=0)
    assert cut.y_score is None and cut.subject_ids is None and cut.sites is None and cut.y_pred == [2.5]
    with pytest.raises(RuntimeError, match="scored on other test rows"):
        restrict(whole, [10], [10, 11], shots=1, seed=0)


# ---------------------------------------------------------------------------------------------------- split
@pytest.fixture
def cohort_dir(tmp_path):
    """Six subjects at three sites, two scans each."""
    atlas = Atlas(name="toy", labels=["a", "b", "c"], coords=np.eye(3) * 10, networks=["n"] * 3)
    rng = np.random.default_rng(0)
    scans, phenos = [], []
    for s in range(6):
        for k in range(2):
            site = f"site-{s % 3}"
            scans.append(
                Scan(
                    rng.standard_normal((20, 3)),
                    tr=2.0,
                    scan_id=f"sub{s}_{k}",
                    subject_id=f"sub{s}",
                    site=site,
                )
            )
            phenos.append({"diagnosis": "patient" if s % 2 else "control"})
    Cohort.from_scans(scans, phenos, atlas=atlas, name="toy").save(tmp_path / "toy")
    return tmp_path / "toy"


def test_the_asked_split_is_evaluated_and_says_how_it_was_made(cohort_dir, tmp_path):
    cohort = Cohort.load(cohort_dir)
    sites = cohort.phenotype_table()["site"].to_numpy()
    split, how = resolve_eval_split(
        _cfg(cohort=str(cohort_dir), test_sites=["site-2"], seed=4), cohort, "diagnosis"
    )
    assert {sites[i] for i in split["test"]} == {"site-2"} and "site-2" not in {
        sites[i] for i in split["train"]
    }
    assert how == {"kind": "leave-sites-out", "test_sites": ["site-2"], "seed": 4}
    split, how = resolve_eval_split(
        _cfg(cohort=str(cohort_dir), split="stratified", test_size=0.34, seed=1), cohort, "diagnosis"
    )
    assert how == {"kind": "stratified", "label": "diagnosis", "test_size": 0.34, "seed": 1}
    assert sorted(split["train"] + split["test"]) == list(range(12))
    with pytest.raises(FmriInputError, match="--test-sites only applies to a leave-sites-out split"):
        resolve_eval_split(
            _cfg(cohort=str(cohort_dir), split="stratified", test_sites=["site-1"]), cohort, "diagnosis"
        )
    # a split stored under the kind's name is the one evaluated, unless --test-sites asks for a fresh one
    stored = {"train": [0, 1, 2, 3, 4, 5, 6, 7], "test": [8, 9, 10, 11]}
    save_split(cohort_dir, "leave-sites-out", stored, kind="leave-sites-out")
    split, how = resolve_eval_split(_cfg(cohort=str(cohort_dir)), cohort, "diagnosis")
    assert (
        split["test"] == [8, 9, 10, 11]
        and how["kind"] == "saved"
        and how["test_sites"] == ["site-1", "site-2"]
    )
    split, how = resolve_eval_split(_cfg(cohort=str(cohort_dir), test_sites=["site-0"]), cohort, "diagnosis")
    assert how["kind"] == "leave-sites-out" and how["test_sites"] == ["site-0"]


def test_an_unknown_or_unusable_split_is_one_clear_error(cohort_dir, tmp_path):
    cohort = Cohort.load(cohort_dir)
    save_split(cohort_dir, "mine", {"train": list(range(8)), "test": list(range(8, 12))}, kind="stratified")
    with pytest.raises(FmriInputError, match="Unknown split 'nope'.*stored in the cohort: mine"):
        resolve_eval_split(_cfg(cohort=str(cohort_dir), split="nope"), cohort, "diagnosis")
    assert resolve_eval_split(_cfg(cohort=str(cohort_dir), split="mine"), cohort, "diagnosis")[0]["test"] == [
        8,
        9,
        10,
        11,
    ]
    no_test = tmp_path / "no_test.json"
    no_test.write_text(json.dumps({"train": list(range(12)), "test": []}))
    with pytest.raises(FmriInputError, match="The split has no 'test' rows"):
        resolve_eval_split(_cfg(cohort=str(cohort_dir), split=str(no_test)), cohort, "diagnosis")
    shared = tmp_path / "shared.json"  # sub0's two scans on both sides
    shared.write_text(json.dumps({"train": [0, 2, 3], "test": [1, 4, 5]}))
    with pytest.raises(FmriInputError, match="puts subject 'sub0' in both 'train' and 'test'"):
        resolve_eval_split(_cfg(cohort=str(cohort_dir), split=str(shared)), cohort, "diagnosis")


def test_the_split_file_lists_each_parts_rows_and_scan_ids(cohort_dir, tmp_path):
    cohort = Cohort.load(cohort_dir)
    path = write_split_file(
        tmp_path / "d" / "s.json", cohort, {"train": [0, 1], "test": [np.int64(3)]}, {"kind": "x"}
    )
    record = json.loads(path.read_text())
    assert record == {
        "kind": "x",
        "parts": {"train": [0, 1], "test": [3]},
        "scan_ids": {"train": ["sub0_0", "sub0_1"], "test": ["sub1_1"]},
    }


# -------------------------------------------------------------------------------------------------- summary
def _with_metrics(method, shots, seed, values, protocol=WHOLE_TEST, ttype="binary"):
    names = (
        ("mae", "pearson_r", "r2")
        if ttype == "regression"
        else ("balanced_accuracy", "auc", "f1", "accuracy")
    )
    metrics = {m: {"value": v, "low": v - 0.1, "high": v + 0.1} for m, v in zip(names, values, strict=True)}
    return MethodResult(
        method=method, task="diagnosis", task_type=ttype, y_true=[0], y_pred=[0], shots=shots, seed=seed,
        metrics=metrics, protocol=protocol,
    )  # fmt: skip


def _rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    ]


def test_the_summary_table_shows_single_runs_with_their_interval_and_seeds_as_a_t_interval():
    results = [
        _with_metrics("fmrilm_zero_shot", 0, 0, (0.6, 0.7, 0.55, 0.6)),
        _with_metrics("fmrilm_few_shot", 4, 0, (0.5, 0.6, 0.5, 0.5)),
        _with_metrics("fmrilm_few_shot", 2, 0, (0.6, 0.62, 0.58, 0.6)),
        _with_metrics("fmrilm_few_shot", 2, 1, (0.7, 0.66, 0.6, 0.7)),
        _with_metrics("fc_linear", None, 0, (0.65, float("nan"), 0.6, 0.6)),
    ]
    text = summary_table(results)
    assert text.startswith("## Summary\n\nProtocol `whole-test-part`: ") and "###" not in text
    rows = _rows(text)
    assert rows[0] == ["method", "shots", "runs", "balanced_accuracy", "auc", "f1"]
    mean, low, high = seed_ci([0.6, 0.7], metric="balanced_accuracy")
    auc = "{:.3f} [{:.3f}, {:.3f}]".format(*seed_ci([0.62, 0.66], metric="auc"))
    assert rows[1:] == [
        ["fmrilm_zero_shot", "0", "1", "0.600 [0.500, 0.700]", "0.700 [0.600, 0.800]", "0.550 [0.450, 0.650]"],
        ["fmrilm_few_shot", "2", "2", f"{mean:.3f} [{low:.3f}, {high:.3f}]", auc,
         "0.590 [0.463, 0.717]"],
        ["fmrilm_few_shot", "4", "1", "0.500 [0.400, 0.600]", "0.600 [0.500, 0.700]", "0.500 [0.400, 0.600]"],
        ["fc_linear", "all", "1", "0.650 [0.550, 0.750]", "— [—, —]", "0.600 [0.500, 0.700]"],
    ]  # fmt: skip
    assert (mean, round(low, 3), round(high, 3)) == (pytest.approx(0.65), 0.015, 1.0)


def test_the_summary_keeps_protocols_apart_and_orders_draws_by_k():
    results = [
        _with_metrics("fmrilm_zero_shot", 0, 0, (3.0, 0.5, 0.2), ttype="regression"),
        _with_metrics("fmrilm_few_shot", 4, 0, (2.0, 0.6, 0.3), FROM_TEST, "regression"),
        _with_metrics("fmrilm_zero_shot", 4, 0, (3.5, 0.4, 0.1), FROM_TEST, "regression"),
        _with_metrics("fmrilm_few_shot", 2, 0, (2.5, 0.55, 0.2), FROM_TEST, "regression"),
        _with_metrics("fmrilm_zero_shot", 2, 0, (3.2, 0.45, 0.1), FROM_TEST, "regression"),
    ]
    text = summary_table(results)
    whole_at, test_at = text.index("### Whole test part"), text.index("### Few-shot from the test sites")
    assert whole_at < test_at
    assert (
        "Protocol `few-shot-from-test`:" in text[test_at:] and "none of them on the whole test part" in text
    )
    rows = _rows(text[test_at:])
    assert rows[0] == ["method", "k drawn", "runs", "mae", "pearson_r"]
    # rows of one k together, in the order the methods first appear
    assert [r[:2] for r in rows[1:]] == [
        ["fmrilm_few_shot", "2"],
        ["fmrilm_zero_shot", "2"],
        ["fmrilm_few_shot", "4"],
        ["fmrilm_zero_shot", "4"],
    ]
    assert rows[1][3:] == ["2.500 [2.400, 2.600]", "0.550 [0.450, 0.650]"]
    assert _rows(text[whole_at:test_at])[1] == [
        "fmrilm_zero_shot",
        "0",
        "1",
        "3.000 [2.900, 3.100]",
        "0.500 [0.400, 0.600]",
    ]


def test_results_without_metrics_are_scored_for_the_summary():
    r = MethodResult(
        method="prior", task="diagnosis", task_type="binary", y_true=["a", "b", "a", "b"],
        y_pred=["a", "a", "a", "a"], y_score=np.tile([0.5, 0.5], (4, 1)), classes=["a", "b"],
    )  # fmt: skip
    text = summary_table([r])
    assert r.metrics["balanced_accuracy"]["value"] == 0.5
    row = _rows(text)[1]
    assert row[:3] == ["prior", "all", "1"] and row[3].startswith("0.500 [")


def test_numbers_print_with_three_decimals_and_a_dash_for_none_or_nan():
    assert (
        _fmt(0.12345) == "0.123" and _fmt(None) == "—" and _fmt(float("nan")) == "—" and _fmt(math.inf) == "—"
    )


def test_the_summary_goes_right_after_the_report_header(tmp_path):
    md = tmp_path / "report.md"
    md.write_text("# Report\n\nintro\n## Methods\nrows\n## Plots\n")
    _insert_summary(md, "## Summary\n\ntable\n")
    assert md.read_text() == "# Report\n\nintro\n## Summary\n\ntable\n\n## Methods\nrows\n## Plots\n"
    plain = tmp_path / "plain.md"
    plain.write_text("# Report\nno sections")
    _insert_summary(plain, "## Summary\n")
    assert plain.read_text() == "# Report\nno sections\n## Summary\n"


# --------------------------------------------------------------------------------------------------- checks
def test_precomputed_features_need_one_row_per_scan():
    _check_rows(np.zeros((3, 2)), [0, 1, 2], "fc")
    with pytest.raises(FmriInputError, match=r"'fc' features have shape \(2, 2\).*cohort's 3"):
        _check_rows(np.zeros((2, 2)), [0, 1, 2], "fc")
    with pytest.raises(FmriInputError, match=r"shape \(3,\)"):
        _check_rows(np.zeros(3), [0, 1, 2], "fc")


def test_a_run_is_resumed_only_when_nothing_it_depends_on_changed():
    key = {"settings": {"steps": 20, "seeds": 3}, "model_files": "m1", "cohort": "c1"}
    assert _why_not_resume(dict(key), key) is None
    changed = {
        "settings": {"steps": 5, "seeds": 3, "lr": 0.1},
        "model_files": "m2",
        "cohort": "c1",
        "task_file": "t",
    }
    why = _why_not_resume(changed, key)
    assert why == "settings changed: lr, steps; the model's files changed; the task file changed"
    assert _why_not_resume({**key, "split_file": "s"}, key) == "the split file changed"
    assert _why_not_resume({**key, "other": 1}, key) == "its key differs"


# ------------------------------------------------------------------------------------------ resuming a run
def test_a_finished_run_is_reused_only_while_settings_model_and_cohort_are_unchanged(
    cohort_dir, tmp_path, caplog
):
    """The work folder beside --out keeps finished runs under a content key: the same settings, model files and
    cohort reuse them; a changed result setting or a changed model file starts afresh and says why; a setting
    that changes no number (threads, progress) does not."""
    from fmrilm.eval.evaluate import RESUME_KEY_FILE, _cached, _store, _work_dir

    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"one")
    (model / "README.md").write_text("card")  # the model card is not the model
    out = tmp_path / "reports" / "r"
    cfg = _cfg(cohort=str(cohort_dir), out=str(out), steps=5)
    work = _work_dir(out, cfg, model)
    assert work == out.parent / ".r.eval-work" and (work / RESUME_KEY_FILE).exists()
    result = MethodResult(method="m", task="t", task_type="regression", y_true=[1.0], y_pred=[2.0], shots=2)
    _store(work, "m-k2", result)
    with caplog.at_level("INFO", logger="fmrilm.eval"):
        assert _cached(work, "m-k2").y_pred == [2.0] and _cached(work, "other") is None
    assert f"m-k2: reusing the finished run in {work}" in caplog.text

    (model / "README.md").write_text("a new card")
    assert _cached(
        _work_dir(out, _cfg(cohort=str(cohort_dir), out=str(out), steps=5, threads=3), model), "m-k2"
    )
    with caplog.at_level("WARNING", logger="fmrilm.eval"):
        _work_dir(out, _cfg(cohort=str(cohort_dir), out=str(out), steps=6), model)
    assert "settings changed: steps" in caplog.text and _cached(work, "m-k2") is None
    _store(work, "m-k2", result)
    (model / "weights.bin").write_bytes(b"two")
    caplog.clear()
    with caplog.at_level("WARNING", logger="fmrilm.eval"):
        _work_dir(out, _cfg(cohort=str(cohort_dir), out=str(out), steps=6), model)
    assert "the model's files changed" in caplog.text and _cached(work, "m-k2") is None


def test_a_work_folder_eval_did_not_write_is_never_removed(cohort_dir, tmp_path, caplog):
    from fmrilm.eval.evaluate import _work_dir

    model = tmp_path / "model"
    model.mkdir()
    out = tmp_path / "r"
    foreign = tmp_path / ".r.eval-work"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FmriInputError, match="not written by fmrilm eval"):
        _work_dir(out, _cfg(cohort=str(cohort_dir), out=str(out)), model)
    assert (foreign / "notes.txt").read_text() == "mine"
    (foreign / "notes.txt").unlink()
    (foreign / "settings.sha1").write_text("old")  # an older fmrilm's work folder: restarted, with the reason
    with caplog.at_level("WARNING", logger="fmrilm.eval"):
        _work_dir(out, _cfg(cohort=str(cohort_dir), out=str(out)), model)
    assert "keyed runs on paths" in caplog.text and not (foreign / "settings.sha1").exists()
    (foreign / "resume_key.json").write_text("{not json")
    caplog.clear()
    with caplog.at_level("WARNING", logger="fmrilm.eval"):
        _work_dir(out, _cfg(cohort=str(cohort_dir), out=str(out)), model)
    assert "its key file is unreadable" in caplog.text


def test_a_task_file_or_split_file_is_part_of_the_resume_key(cohort_dir, tmp_path):
    from fmrilm.eval.evaluate import resume_key

    model = tmp_path / "model"
    model.mkdir()
    split = tmp_path / "split.json"
    split.write_text('{"train": [0], "test": [1]}')
    key = resume_key(_cfg(cohort=str(cohort_dir), split=str(split)), model)
    assert set(key) == {"settings", "model_files", "cohort", "split_file"}
    assert "model" not in key["settings"] and "cohort" not in key["settings"] and "out" not in key["settings"]
    split.write_text('{"train": [1], "test": [0]}')
    assert (
        resume_key(_cfg(cohort=str(cohort_dir), split=str(split)), model)["split_file"] != key["split_file"]
    )


# ---------------------------------------------------------------------------------------------------- tasks
def test_only_phenotype_tasks_with_a_truth_are_evaluated(cohort_dir):
    from fmrilm.eval.evaluate import load_eval_task

    table = Cohort.load(cohort_dir).phenotype_table()
    spec, bound, card = load_eval_task("diagnosis", table, cohort_dir)
    assert spec.name == "diagnosis" and card.type == "binary" and spec.source == "phenotype"
    with pytest.raises(FmriInputError, match="answered from descriptors"):
        load_eval_task("describe", table, cohort_dir)


def test_few_shot_probes_need_two_subjects_per_class_and_record_whom_they_were_fitted_on():
    from fmrilm.eval.evaluate import _few_shot_baselines

    table = _cohort_table(n_per_class=4, scans=1)
    rng = np.random.default_rng(0)
    y = (table["diagnosis"] == "patient").to_numpy()
    fc = rng.normal(size=(len(table), 5)) + 2.0 * y[:, None]
    codes = rng.normal(size=(len(table), 3))
    train, test = [0, 1, 4, 5], [2, 3, 6, 7]
    assert _few_shot_baselines(fc, codes, table, SPEC, train, test, 1, 0, "binary", _cfg()) == []
    out = _few_shot_baselines(fc, codes, table, SPEC, train, test, 2, 3, "binary", _cfg())
    assert [r.method for r in out] == ["fc_linear_few_shot", "code_probe_few_shot"]
    for r in out:
        assert (r.shots, r.seed, r.n) == (2, 3, 4)
        assert r.info["train_subjects"] == ["c0", "c1", "p0", "p1"]
        assert r.subject_ids == ["c2", "c3", "p2", "p3"]


def test_a_protocol_the_summary_does_not_know_is_shown_by_its_name():
    text = summary_table([_with_metrics("m", None, 0, (0.5, 0.5, 0.5, 0.5), protocol="external-cohort")])
    assert "Protocol `external-cohort`: external-cohort.\n" in text
    assert text.endswith(" |\n")  # each table ends with its last row and a blank line


# ------------------------------------------------------------------------------------------------ code features
class _Scans:
    """The two things `code_features` asks of a cohort: its length and each scan."""

    def __init__(self, scans) -> None:
        self.scans = list(scans)

    def __len__(self) -> int:
        return len(self.scans)

    def scan(self, i: int):
        return self.scans[i]


def test_the_code_probe_reads_the_connectome_values_the_llm_reads():
    from fmrilm.eval.evaluate import code_features, resolve_code_features

    from tests.test_connectome import tiny_connectome_model

    model, tok, scans = tiny_connectome_model(12)
    host = model.fmri_tokenizer
    rows = code_features(host, _Scans(scans[:5]), "auto")
    expected = np.stack([np.asarray(tok.encode(s).values, dtype=np.float64).reshape(-1) for s in scans[:5]])
    np.testing.assert_allclose(rows, expected, rtol=1e-6, atol=1e-6)
    assert rows.shape == (5, tok.config.components)  # every component the summary reads
    assert resolve_code_features("auto", host) == "connectome"
    assert resolve_code_features("latents", host) == "latents"  # asked for by name: kept


def test_without_connectome_tokens_auto_reads_window_latents_and_connectome_is_refused():
    from fmrilm.eval.evaluate import code_features, resolve_code_features

    from fmrilm.errors import FmriInputError
    from fmrilm.model.testing import tiny_fmri_tokenizer

    host = tiny_fmri_tokenizer()
    assert getattr(host, "connectome", None) is None
    assert resolve_code_features("auto", host) == "latents"
    with pytest.raises(FmriInputError, match="connectome tokens") as err:
        code_features(host, _Scans([]), "connectome")
    assert "--code-features latents" in str(err.value)
    with pytest.raises(FmriInputError, match="Unknown code features"):
        resolve_code_features("codes", host)


def _reader(model: MethodResult, method: str, order: list[int], p: np.ndarray, **changes) -> MethodResult:
    """A baseline's result on ``model``'s subjects, listed in ``order``, with positive-answer scores ``p``."""
    return MethodResult(**{
        **model.__dict__, "method": method, "shots": None, "seed": None, "metrics": {},
        "subject_ids": [model.subject_ids[i] for i in order], "y_true": [model.y_true[i] for i in order],
        "y_pred": [model.y_pred[i] for i in order], "y_score": np.column_stack([1 - p, p]),
        "sites": [model.sites[i] for i in order], **changes,
    })  # fmt: skip


def test_agreement_ranks_a_models_scores_against_each_reader_on_the_same_subjects(tmp_path):
    from fmrilm.eval.report import agreement

    model = _two_sites()  # positive scores 0.9 .. 0.1 for s0 .. s5
    order = [5, 3, 1, 0, 2, 4]  # the reader lists the subjects in another order: matched by id, not position
    mine = model.y_score[:, 1]
    same = _reader(model, "code_probe", order, mine[order] / 2)  # the same ranking at another scale
    reverse = _reader(model, "fc_linear", order, 1 - mine[order])
    other_protocol = _reader(model, "tangent_linear", order, mine[order], protocol=FROM_TEST)
    rows = agreement([model, same, reverse, other_protocol])
    got = {a["reader"]: a for a in rows}
    assert set(got) == {"code_probe", "fc_linear"}  # a reader scored in another protocol is not compared
    assert got["code_probe"]["spearman"] == pytest.approx(1.0) and got["code_probe"]["n"] == 6
    assert got["fc_linear"]["spearman"] == pytest.approx(-1.0)
    # a partial ranking: the reader swaps two subjects
    swapped = mine.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    partial = agreement([model, _reader(model, "code_probe", list(range(6)), swapped)])[0]["spearman"]
    assert partial == pytest.approx(1 - 6 * 2 / (6 * 35))
    # a regression is ranked by its values; a constant reader has no ranking to agree with
    reg = MethodResult(
        method="fmrilm_zero_shot", task="age", task_type="regression", y_true=[10.0, 12, 14, 16],
        y_pred=[11.0, 12, 15, 13], subject_ids=["a", "b", "c", "d"], shots=0, seed=0,
    )  # fmt: skip
    ridge = MethodResult(**{**reg.__dict__, "method": "fc_linear", "shots": None, "y_pred": [1.0, 2, 4, 3]})
    flat = MethodResult(**{**reg.__dict__, "method": "code_probe", "shots": None, "y_pred": [5.0] * 4})
    got = {a["reader"]: a["spearman"] for a in agreement([reg, ridge, flat])}
    assert got["fc_linear"] == pytest.approx(1.0) and math.isnan(got["code_probe"])
    # the report carries it: a table in report.md, the rows in report.json
    paths = write_report([model, same, reverse], tmp_path / "report", n_boot=20)
    md = paths["markdown"].read_text()
    header, row = _rows(md.split("Rank agreement with the linear readers", 1)[1].split("\n\n", 2)[1])
    assert header == ["method", "protocol", "shots", "seed", "n", "code_probe", "fc_linear"]
    assert row == ["fmrilm_zero_shot", "whole-test-part", "0", "0", "6", "1.00", "-1.00"]
    stored = json.loads(paths["json"].read_text())["agreement"]
    assert {a["reader"]: a["spearman"] for a in stored} == pytest.approx(
        {"code_probe": 1.0, "fc_linear": -1.0}
    )


def test_versus_compares_each_model_run_with_the_baselines_scored_on_the_same_subjects(tmp_path):
    from fmrilm.eval.metrics import paired_difference
    from fmrilm.eval.report import versus

    model = _two_sites()
    order = [5, 3, 1, 0, 2, 4]  # listed in another order: matched by subject id
    mine = model.y_score[:, 1]
    flipped = _reader(model, "fc_linear", order, 1 - mine[order])
    tangent = _reader(model, "tangent_linear", order, mine[order] / 2)
    elsewhere = _reader(model, "fc_linear", order, mine[order], protocol=FROM_TEST)  # another protocol
    probe = _reader(model, "code_probe", order, mine[order])  # a reader, not a baseline to beat
    rows = versus([model, flipped, tangent, elsewhere, probe], n_boot=50)
    got = {(r["reference"], r["protocol"]): r for r in rows}
    assert set(got) == {("fc_linear", WHOLE_TEST), ("tangent_linear", WHOLE_TEST)}
    row = got[("fc_linear", WHOLE_TEST)]
    assert row["n"] == 6 and row["method"] == "fmrilm_zero_shot"
    by_hand = paired_difference(
        "binary", model.y_true, {"y_score": model.y_score, "y_pred": model.y_pred},
        {"y_score": np.column_stack([mine, 1 - mine]), "y_pred": [flipped.y_pred[order.index(i)] for i in range(6)]},
        classes=model.classes, groups=model.subject_ids, n_boot=50,
    )  # fmt: skip
    assert set(row["metrics"]) == set(by_hand)
    for name, values in by_hand.items():
        assert row["metrics"][name] == pytest.approx(values), name
    assert got[("tangent_linear", WHOLE_TEST)]["metrics"]["auc"]["difference"] == 0.0  # the same ranking
    # a baseline scored on other subjects is not compared; a few-shot run meets the baseline of its own draw
    fewer = _reader(model, "fc_linear", [0, 1, 2, 3, 4], mine[:5])
    assert versus([model, fewer], n_boot=10) == []
    tuned = MethodResult(
        **{**model.__dict__, "method": "fmrilm_few_shot", "shots": 8, "seed": 2, "metrics": {}}
    )
    own_draw = _reader(model, "fc_linear_few_shot", list(range(6)), mine, shots=8, seed=2)
    other_draw = _reader(model, "fc_linear_few_shot", list(range(6)), 1 - mine, shots=8, seed=3)
    (row,) = [
        r for r in versus([tuned, other_draw, own_draw], n_boot=10) if r["reference"] == "fc_linear_few_shot"
    ]
    assert row["seed"] == 2 and row["metrics"]["auc"]["difference"] == 0.0
    # a regression's MAE difference, and the report carries every row: a table in report.md, report.json
    reg = MethodResult(
        method="fmrilm_zero_shot", task="age", task_type="regression", y_true=[10.0, 12, 14, 16],
        y_pred=[11.0, 12, 15, 13], subject_ids=["a", "b", "c", "d"], shots=0, seed=None,
    )  # fmt: skip
    ridge = MethodResult(
        **{**reg.__dict__, "method": "fc_linear", "shots": None, "y_pred": [12.0, 12, 12, 12]}
    )
    (row,) = versus([reg, ridge], n_boot=10)
    assert row["metrics"]["mae"]["difference"] == pytest.approx(1.25 - 2.0)
    paths = write_report([model, flipped, reg, ridge], tmp_path / "report", n_boot=20)
    md = paths["markdown"].read_text()
    header, first = _rows(
        md.split("Against the baselines on the same test subjects", 1)[1].split("\n\n", 2)[1]
    )
    assert header == ["method", "protocol", "shots", "seed", "baseline", "n", "balanced_accuracy", "auc"]
    assert first[:6] == ["fmrilm_zero_shot", "whole-test-part", "0", "0", "fc_linear", "6"]
    auc = json.loads(paths["json"].read_text())["versus"][0]["metrics"]["auc"]
    assert first[7].startswith(f"{auc['difference']:+.3f} [{auc['low']:+.3f}, {auc['high']:+.3f}]")
    assert "a smaller MAE is better" in md.split("## age", 1)[1]


def test_the_summary_says_how_far_the_model_is_from_each_baseline_on_the_same_subjects():
    from fmrilm.eval.report import versus, versus_text

    model = MethodResult(**{**_two_sites().__dict__, "seed": None})
    mine = model.y_score[:, 1]
    fc = _reader(model, "fc_linear", [5, 3, 1, 0, 2, 4], 1 - mine[[5, 3, 1, 0, 2, 4]])
    text = summary_table([model, fc])
    (row,) = versus([model, fc])
    ba, auc = row["metrics"]["balanced_accuracy"], row["metrics"]["auc"]
    line = next(x for x in text.splitlines() if x.startswith("- fmrilm_zero_shot minus fc_linear: "))
    assert f"balanced_accuracy {ba['difference']:+.3f} [{ba['low']:+.3f}, {ba['high']:+.3f}]" in line
    assert f"auc {auc['difference']:+.3f} [{auc['low']:+.3f}, {auc['high']:+.3f}]" in line
    assert f"({auc['at_least_as_good']:.0%})" in line and auc["difference"] > 0
    # given the report's own rows, the summary prints them as they are (not drawn again), and only its own
    moved = {
        **row,
        "metrics": {m: {**v, "difference": v["difference"] + 1.0} for m, v in row["metrics"].items()},
    }
    elsewhere = {**row, "protocol": FROM_TEST}
    shown = summary_table([model, fc], [moved, elsewhere])
    lines = [x for x in shown.splitlines() if x.startswith("- fmrilm_zero_shot minus")]
    assert lines == [f"- {versus_text(moved, ('balanced_accuracy', 'auc'))}"]


def test_the_code_probe_reads_connectome_values_at_their_own_scale_and_pooled_codes_standardized():
    from fmrilm.eval.evaluate import code_probe_standardizes

    assert (
        code_probe_standardizes("connectome") is False
    )  # as the LLM's projection and Stage 3's probe read them
    assert code_probe_standardizes("latents") and code_probe_standardizes("histogram")


def test_the_fine_tuning_runs_use_the_soft_projection_rate_asked_for(monkeypatch, tmp_path):
    """``fmrilm eval --soft-lr-scale 0`` fine-tunes with the soft projection frozen (where Stage 3 planted the
    scan reading), and a negative rate is refused by name."""
    import argparse

    import fmrilm.train.finetune as ft
    from fmrilm.eval.cli import add_arguments, config_from_args
    from fmrilm.eval.evaluate import finetune_and_score

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--model", "m", "--cohort", "c", "--task", "diagnosis", "--out", str(tmp_path / "out")]
    cfg = config_from_args(parser.parse_args([*base, "--soft-lr-scale", "0"]))
    assert cfg.soft_lr_scale == 0.0
    assert config_from_args(parser.parse_args(base)).soft_lr_scale == ft.FinetuneConfig.soft_lr_scale
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--soft-lr-scale", "-1"])

    seen = {}

    class Stop(Exception):
        pass

    def record(config, *args, **kwargs):
        seen["cfg"] = config
        raise Stop

    monkeypatch.setattr(ft, "finetune", record)
    with pytest.raises(Stop):
        finetune_and_score(cfg, 8, 0, tmp_path / "split.json", tmp_path / "run", None, None, [])
    assert seen["cfg"].soft_lr_scale == 0.0 and seen["cfg"].shots == 8
