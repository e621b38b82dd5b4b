"""Metrics (equal to sklearn/scipy, intervals around the estimate), FC baselines with a planted effect, reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fmrilm.eval.baselines import (
    demographics_baseline,
    fc_features,
    floor_baseline,
    linear_probe,
    run_baselines,
)
from fmrilm.eval.metrics import (
    _codes,
    _fast_classification,
    _fast_regression,
    bootstrap_ci,
    classification_metrics,
    evaluate,
    regression_metrics,
    seed_ci,
)
from fmrilm.eval.report import MethodResult, write_report
from fmrilm.instructions.spec import load_task
from scipy.stats import pearsonr
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)

from fmrilm.atlas import Atlas
from fmrilm.cohort import Cohort
from fmrilm.scan import Scan
from fmrilm.splits import leave_sites_out_split


# ----------------------------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice(["control", "patient"], size=40)
    p = np.clip(rng.random(40) + 0.3 * (y == "patient"), 0, 1)
    pred = np.where(p > 0.5, "patient", "control")
    m = classification_metrics(y, p, ["control", "patient"])
    truth = y == "patient"
    assert m["auc"] == pytest.approx(roc_auc_score(truth, p))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(truth, pred == "patient"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    fast = _fast_classification(
        _codes(y, ["control", "patient"]), np.stack([1 - p, p], 1), (p > 0.5).astype(int), 2
    )
    assert fast == pytest.approx(m)


def test_multiclass_metrics_equal_sklearn():
    rng = np.random.default_rng(3)
    classes = ["a", "b", "c"]
    y = rng.choice(classes, size=60)
    proba = rng.dirichlet([1, 1, 1], size=60)
    pred = np.asarray(classes)[proba.argmax(1)]
    m = classification_metrics(y, proba, classes)
    assert m["auc"] == pytest.approx(
        roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes)
    )
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert _fast_classification(_codes(y, classes), proba, proba.argmax(1), 3) == pytest.approx(m)


def test_regression_metrics_equal_sklearn_and_scipy():
    rng = np.random.default_rng(4)
    t = rng.normal(30, 8, size=50)
    p = t + rng.normal(0, 5, size=50)
    m = regression_metrics(t, p)
    assert m["mae"] == pytest.approx(mean_absolute_error(t, p))
    assert m["pearson_r"] == pytest.approx(pearsonr(t, p).statistic)
    assert m["r2"] == pytest.approx(r2_score(t, p))
    assert _fast_regression(t, p) == pytest.approx(m)


def test_intervals_contain_the_point_estimate():
    rng = np.random.default_rng(5)
    y = rng.choice(["x", "y"], size=80)
    p = np.clip(0.5 + 0.3 * (y == "y") + rng.normal(0, 0.25, 80), 0, 1)
    subjects = [f"s{i // 2}" for i in range(80)]  # two scans per subject: resampled together
    res = evaluate("classification", y, y_score=p, classes=["x", "y"], groups=subjects, n_boot=300)
    for name, v in res.items():
        assert v["low"] <= v["value"] <= v["high"], name
        assert v["high"] > v["low"]
    t = rng.normal(size=60)
    res = evaluate("regression", t, y_pred=t + rng.normal(size=60), n_boot=300)
    for v in res.values():
        assert v["low"] <= v["value"] <= v["high"]
    lo, hi = bootstrap_ci(lambda idx: float(np.mean(t[idx])), len(t), n_boot=300)
    assert lo <= t.mean() <= hi
    mean, lo, hi = seed_ci([0.61, 0.66, 0.64, 0.70])
    assert mean == pytest.approx(0.6525) and lo < mean < hi
    assert seed_ci([0.5]) == (0.5, 0.5, 0.5)


# --------------------------------------------------------------------------------------------------- baselines
def planted_cohort(n: int = 90, effect: float = 0.9, seed: int = 0) -> Cohort:
    """Patients couple regions 0-3 through a shared signal; age scales the coupling of regions 6-8.

    Region 11 is constant zero in every scan (as in real ABIDE scans), so features must stay finite.
    """
    rng = np.random.default_rng(seed)
    n_regions, n_time = 12, 120
    atlas = Atlas(
        name="toy", labels=[f"r{i}" for i in range(n_regions)], coords=rng.normal(size=(n_regions, 3)) * 30,
        networks=["A"] * 6 + ["B"] * 6,
    )  # fmt: skip
    scans, pheno = [], []
    for i in range(n):
        dx = "patient" if i % 2 else "control"
        age = float(rng.uniform(8, 40))
        ts = rng.normal(size=(n_time, n_regions))
        if dx == "patient":
            ts[:, :4] += effect * rng.normal(size=(n_time, 1))
        ts[:, 6:9] += 2.0 * (age - 8) / 32 * rng.normal(size=(n_time, 1))
        ts[:, 11] = 0.0
        scans.append(
            Scan(
                ts.astype(np.float32),
                tr=2.0,
                atlas=atlas,
                scan_id=f"s{i}",
                subject_id=f"sub{i}",
                site=f"site{i % 3}",
            )
        )
        pheno.append(
            {
                "diagnosis": dx,
                "sex": "male" if rng.random() < 0.5 else "female",
                "age": age if i % 17 else None,
            }
        )
    return Cohort.from_scans(scans, pheno, atlas=atlas)


@pytest.fixture(scope="module")
def planted():
    cohort = planted_cohort()
    split = leave_sites_out_split(cohort, test_sites=["site0"])
    return cohort, split, fc_features(cohort)


def test_fc_features_are_finite_fisher_z_of_cleaned_data(planted):
    from nilearn.connectome import ConnectivityMeasure
    from nilearn.signal import clean
    from sklearn.covariance import EmpiricalCovariance

    cohort, _, fc = planted
    n = cohort.atlas.n_regions
    assert fc.shape == (len(cohort), n * (n - 1) // 2) and np.isfinite(fc).all()
    ts = clean(cohort.scan(0).timeseries[:, :11], detrend=True, standardize="zscore_sample", t_r=2.0)
    ref = ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance()).fit_transform([ts])[0]
    iu = np.triu_indices(n, k=1)
    good = iu[1] < 11
    np.testing.assert_allclose(fc[0][good], np.arctanh(ref[iu[0][good], iu[1][good]]), atol=1e-4)
    assert np.all(fc[0][~good] == 0)  # the dead region couples 0, not NaN


def test_fc_baseline_beats_chance_on_held_out_sites(planted):
    cohort, split, fc = planted
    table = cohort.phenotype_table()
    results = run_baselines(cohort, [load_task("diagnosis"), load_task("age")], split, fc=fc)
    by = {(r.method, r.task): r.score(n_boot=200) for r in results}
    dx = by[("fc_linear", "diagnosis")]
    assert dx.classes == ["control", "patient"] and dx.part == "test"
    assert set(table.iloc[split["test"]]["site"]) == {"site0"}
    assert dx.metrics["balanced_accuracy"]["value"] > 0.75
    assert dx.metrics["auc"]["low"] > 0.5
    assert by[("prior", "diagnosis")].metrics["auc"]["value"] == 0.5
    assert by[("demographics", "diagnosis")].info["covariates"] == ["age", "sex"]
    age = by[("fc_linear", "age")]
    assert age.info["n_missing"] > 0  # missing ages left out, not imputed as targets
    assert age.n == sum(1 for i in split["test"] if table.loc[i, "age"] == table.loc[i, "age"])
    assert age.metrics["pearson_r"]["value"] > 0.3
    assert age.metrics["mae"]["value"] < by[("train_mean", "age")].metrics["mae"]["value"]


def test_no_effect_means_chance(planted):
    """The same pipeline on a label that is noise stays near chance (the test above can fail)."""
    cohort, split, fc = planted
    table = cohort.phenotype_table()
    (r,) = linear_probe(fc, table, "sex", split, method="fc_linear")
    assert r.score(n_boot=200).metrics["auc"]["low"] < 0.5 < r.metrics["auc"]["high"]


def test_linear_probe_takes_any_features_and_rejects_nan(planted):
    cohort, split, _ = planted
    table = cohort.phenotype_table()
    codes = np.random.default_rng(0).normal(size=(len(cohort), 7))  # e.g. pooled tokenizer codes
    (r,) = linear_probe(codes, table, load_task("diagnosis"), split, method="code_probe", inner_groups="site")
    assert r.method == "code_probe" and r.info["n_features"] == 7 and r.y_score.shape == (r.n, 2)
    codes[0, 0] = np.nan
    from fmrilm.errors import FmriInputError

    with pytest.raises(FmriInputError, match="NaN"):
        linear_probe(codes, table, "diagnosis", split)


def test_demographics_baseline_handles_missing_covariates(planted):
    cohort, split, _ = planted
    table = cohort.phenotype_table()
    (r,) = demographics_baseline(table, "diagnosis", split)
    assert np.isfinite(r.y_score).all() and r.n == len(split["test"])
    assert demographics_baseline(table, "age", split, covariates=["age"]) == []  # target is never a covariate
    (floor,) = floor_baseline(table, "age", split)
    assert len(set(floor.y_pred)) == 1


# ------------------------------------------------------------------------------------------------------ report
def test_report_writes_json_markdown_and_plots(tmp_path, planted):
    cohort, split, fc = planted
    results = run_baselines(cohort, [load_task("diagnosis"), load_task("age")], split, fc=fc)
    rng = np.random.default_rng(0)
    truth = results[0].y_true
    for k in (2, 4, 8):
        for seed in range(3):
            p = np.clip(
                0.5 + (k / 20) * (np.asarray(truth) == "patient") + rng.normal(0, 0.2, len(truth)), 0, 1
            )
            results.append(
                MethodResult(
                    "fmrilm few-shot", "diagnosis", "binary", truth, list(np.where(p > 0.5, "patient", "control")),
                    np.stack([1 - p, p], 1), ["control", "patient"], shots=k, seed=seed,
                )
            )  # fmt: skip
    paths = write_report(
        results, tmp_path / "report", context={"cohort": "planted", "split": "leave-sites-out"}, n_boot=100
    )
    record = json.loads(paths["json"].read_text())
    methods = {(r["task"], r["method"]) for r in record["results"]}
    assert ("diagnosis", "fc_linear") in methods and ("age", "train_mean") in methods
    assert any(
        a["method"] == "fmrilm few-shot" and a["shots"] == 8 and a["n_seeds"] == 3
        for a in record["over_seeds"]
    )
    md = paths["markdown"].read_text()
    assert "## diagnosis (binary)" in md and "fc_linear" in md and "plots/roc_diagnosis.png" in md
    pngs = {p.name for p in (tmp_path / "report" / "plots").glob("*.png")}
    assert {"roc_diagnosis.png", "calibration_diagnosis.png", "fewshot_diagnosis.png"} <= pngs
    assert any(n.startswith("confusion_diagnosis_fc_linear") for n in pngs)
    assert all((tmp_path / "report" / "plots" / n).read_bytes()[:4] == b"\x89PNG" for n in pngs)


def test_row_space_rotation_gives_the_same_predictions():
    """The speed-up is exact: L2 models on rotated coordinates predict what they predict on raw features."""
    from fmrilm.eval.baselines import make_model

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 300))
    y_reg = X[:, :5].sum(1) + rng.normal(size=40)
    y_cls = np.where(X[:, 0] + 0.5 * rng.normal(size=40) > 0, "a", "b")
    idx = np.arange(40)
    test = rng.normal(size=(20, 300))
    for ttype, y in (("regression", y_reg), ("binary", y_cls)):
        cv40 = [(idx[idx % 3 != k], idx[idx % 3 == k]) for k in range(3)]
        fast = make_model(ttype, cv40, rotate=True).fit(X[:40], y[:40])
        slow = make_model(ttype, cv40, rotate=False).fit(X[:40], y[:40])
        if ttype == "regression":
            assert fast[-1].alpha_ == slow[-1].alpha_
            np.testing.assert_allclose(fast.predict(test), slow.predict(test), rtol=1e-6, atol=1e-6)
        else:
            assert fast[-1].C_ == pytest.approx(slow[-1].C_)
            np.testing.assert_allclose(fast.predict_proba(test), slow.predict_proba(test), atol=2e-3)


def test_a_weakly_regularized_baseline_does_not_depend_on_the_solvers_coordinates():
    """Many features and the weakest C (FC's sex baseline on ABIDE): the fit converges to the same model in
    rotated and raw coordinates, so a reported baseline does not move with the arithmetic's order (BLAS threads)."""
    from fmrilm.eval.baselines import make_model

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3000)) + 2 * rng.normal(size=(300, 1))
    y = np.where(X[:, :20].sum(1) + 6 * rng.normal(size=300) > 0, "a", "b")
    idx = np.arange(300)
    cv = [(idx[idx % 3 != k], idx[idx % 3 == k]) for k in range(3)]
    test = rng.normal(size=(50, 3000))
    scores = []
    for rotate in (True, False):
        model = make_model("binary", cv, rotate=rotate)
        model[-1].set_params(Cs=[10.0])
        scores.append(model.fit(X, y).predict_proba(test)[:, 0])
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-3)


# ------------------------------------------------------------------------------------ gaps mutation testing found
def test_fc_features_detrend_only_when_asked():
    """Two regions of independent noise riding one slow drift: detrended they are uncorrelated, raw the drift
    couples them (so ``detrend=False`` must reach the cleaning, not fall back to the default)."""
    rng = np.random.default_rng(0)
    atlas = Atlas(name="two", labels=["a", "b"], coords=np.eye(2, 3) * 10, networks=["n", "n"])
    drift = np.linspace(0, 20, 100)[:, None]
    scan = Scan((rng.normal(size=(100, 2)) + drift).astype(np.float32), tr=2.0, atlas=atlas, scan_id="s0")
    cohort = Cohort.from_scans([scan], [{}], atlas=atlas)
    assert abs(np.tanh(fc_features(cohort)[0, 0])) < 0.3
    assert np.tanh(fc_features(cohort, detrend=False)[0, 0]) > 0.9


def test_baseline_results_carry_each_rows_subject_and_count_missing_targets(planted):
    """Subject ids let the bootstrap resample whole subjects; ``n_missing`` is the number of rows without a
    target (left out of fitting and scoring)."""
    cohort, split, fc = planted
    table = cohort.phenotype_table()
    (r,) = linear_probe(fc, table, load_task("age"), split)
    scored = [i for i in split["test"] if table.loc[i, "age"] == table.loc[i, "age"]]
    assert r.subject_ids == table.loc[scored, "subject_id"].astype(str).tolist()
    assert r.info["n_missing"] == int(table["age"].isna().sum()) > 0
    for res in run_baselines(cohort, [load_task("diagnosis")], split, fc=fc):
        assert res.subject_ids == table.loc[split["test"], "subject_id"].astype(str).tolist(), res.method


def test_inner_folds_keep_a_subjects_scans_together_and_work_without_groups():
    from fmrilm.eval.baselines import _inner_cv

    y = np.array(["a", "b"] * 12)
    groups = np.repeat([f"s{i}" for i in range(12)], 2)
    for classification in (True, False):
        folds = _inner_cv(y if classification else np.arange(24.0), groups, classification, 4, 0)
        assert len(folds) == 4
        for train, test in folds:
            assert not set(groups[train]) & set(groups[test])
    plain = _inner_cv(np.arange(6.0), None, False, 10, 0)  # more folds asked than rows: one row each
    assert len(plain) == 6 and sorted(int(t) for _, te in plain for t in te) == list(range(6))
    assert len(_inner_cv(y, None, True, 5, 0)) == 5


def test_ungrouped_linear_probe_for_a_regression(planted):
    cohort, split, fc = planted
    (r,) = linear_probe(fc, cohort.phenotype_table(), load_task("age"), split, inner_groups=None, n_inner=3)
    assert r.info["inner_cv"] == "3 folds" and r.task_type == "regression" and np.isfinite(r.y_pred).all()


def test_every_refusal_of_a_probe_is_one_clear_error(planted):
    from types import SimpleNamespace

    from fmrilm.errors import FmriInputError

    cohort, split, fc = planted
    table = cohort.phenotype_table()
    with pytest.raises(FmriInputError, match=r"shape \(3, 66\).*Fix: give one feature row per cohort row"):
        linear_probe(fc[:3], table, "diagnosis", split)
    bad = fc.copy()
    bad[1, 1] = np.inf
    with pytest.raises(FmriInputError, match="NaN or Inf. Fix: impute or drop those features first"):
        linear_probe(bad, table, "diagnosis", split)
    with pytest.raises(FmriInputError, match="The cohort has no column 'handedness'"):
        linear_probe(fc, table, "handedness", split)
    with pytest.raises(FmriInputError, match="Task 'describe' is open-ended: it has no baseline"):
        linear_probe(
            fc, table, SimpleNamespace(name="describe", target="diagnosis", type="open-ended"), split
        )
    controls = [i for i in split["train"] if table.loc[i, "diagnosis"] == "control"]
    with pytest.raises(
        FmriInputError, match="one class only.*Fix: use a split whose train part has every class"
    ):
        linear_probe(fc, table, "diagnosis", {"train": controls, "test": split["test"]})
    with pytest.raises(FmriInputError, match=r"The split has no 'train' part \(parts: \['test'\]\)"):
        linear_probe(fc, table, "diagnosis", {"test": split["test"]})


def test_short_scans_at_their_own_tr_give_fc_and_tangent_features():
    """Both FC baselines read each scan at its own TR and accept scans of 10 timepoints or more (the default
    signal settings would resample to 2 s and ask for 24)."""
    from fmrilm.eval.baselines import tangent_features

    atlas = Atlas.builtin("dosenbach160").subset(np.arange(6))
    scans = []
    for i in range(5):
        rng = np.random.default_rng(i)
        ts = rng.standard_normal((12, 2)) @ rng.standard_normal((2, 6)) + rng.standard_normal((12, 6))
        scans.append(Scan(ts.astype(np.float32), tr=2.5, atlas=atlas, scan_id=f"s{i}", subject_id=f"sub{i}"))
    cohort = Cohort.from_scans(scans, [{}] * 5, atlas=atlas)
    fc = fc_features(cohort)
    tangent = tangent_features(cohort, [0, 1, 2, 3])
    assert fc.shape == tangent.shape == (5, 15) and np.isfinite(tangent).all()
    # the FC of scan 0 is that of its 12 native samples, not of a resampled series
    from nilearn.signal import clean

    z = clean(scans[0].timeseries, detrend=True, standardize="zscore_sample", t_r=2.5)
    np.testing.assert_allclose(fc[0], np.arctanh(np.corrcoef(z.T)[np.triu_indices(6, k=1)]), atol=1e-4)


def test_a_probe_that_does_not_standardize_weighs_each_feature_at_its_own_scale(planted):
    """``standardize=False`` (connectome components, which keep their relative variance on purpose) only centres
    the features: rescaling one column changes what the L2 probe makes of it, while the standardized probe
    gives the same predictions at any column scale."""
    cohort, split, _ = planted
    table = cohort.phenotype_table()
    rng = np.random.default_rng(0)
    y = (table["diagnosis"].astype(str) == "patient").to_numpy(dtype=float)
    X = np.column_stack([2 * y + rng.normal(0, 1.0, len(y)), rng.normal(0, 1.0, (len(y), 20))])
    shrunk = X.copy()
    shrunk[:, 0] *= 1e-3  # the informative column at a noise-level scale

    def scores(features, standardize):
        (r,) = linear_probe(features, table, "diagnosis", split, method="code_probe", standardize=standardize)
        return r

    kept, also_kept = scores(X, True), scores(shrunk, True)
    np.testing.assert_allclose(kept.y_score, also_kept.y_score, atol=1e-6)
    assert kept.info["standardized"] is True
    raw, raw_shrunk = scores(X, False), scores(shrunk, False)
    assert raw.info["standardized"] is False
    auc, auc_shrunk = (r.score(n_boot=10).metrics["auc"]["value"] for r in (raw, raw_shrunk))
    assert auc > 0.75  # at its own scale the informative column is read
    assert auc_shrunk < auc - 0.1  # at 1e-3 of it the penalty wins
