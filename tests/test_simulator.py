"""The simulator: realistic structure, per-site TR, reproducibility, recoverable-but-not-trivial effects, NIfTI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from fmrilm.data_gen.hemodynamics import ModeSampler
from fmrilm.data_gen.networks import canonical_network, network_role
from fmrilm.data_gen.simulate import (
    CouplingModel,
    SimulationConfig,
    bold_from_coupling,
    simulate_cohort,
    simulate_euler,
)

from fmrilm.atlas import Atlas
from fmrilm.cohort import load_cohort
from fmrilm.errors import FmriInputError


@pytest.fixture(scope="module")
def small_atlas() -> Atlas:
    """Every third Dosenbach region (54 regions, all six networks): keeps the recovery test fast."""
    return Atlas.builtin("dosenbach160").subset(list(range(0, 160, 3)), name="dosenbach54")


def mean_fc(cohort) -> np.ndarray:
    return np.mean(
        [np.corrcoef(np.asarray(ts, dtype=float).T) for ts in cohort.dataset["timeseries"]], axis=0
    )


def block_mean(fc: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    block = fc[np.ix_(a, b)]
    if np.array_equal(a, b):
        block = block[~np.eye(len(a), dtype=bool)]
    return float(block.mean())


@pytest.mark.parametrize("atlas", ["dosenbach160", "seitzman300"])
def test_dmn_is_anticorrelated_with_task_positive_networks(atlas):
    cohort = simulate_cohort(SimulationConfig(n_subjects=12, atlas=atlas, timepoints=(150, 180), seed=3))
    fc = mean_fc(cohort)
    canon = np.array([canonical_network(n) for n in cohort.atlas.networks])
    dmn = np.flatnonzero(canon == "DMN")
    tp_nets = sorted({c for c in canon if network_role(c) == "task_positive"})
    assert len(dmn) > 5 and tp_nets, "the atlas mapping must find the DMN and task-positive networks"
    dmn_within = block_mean(fc, dmn, dmn)
    assert dmn_within > 0.15
    for net in tp_nets:
        idx = np.flatnonzero(canon == net)
        if len(idx) < 3:  # too few regions for a stable block mean
            continue
        assert block_mean(fc, dmn, idx) < -0.03, f"DMN-{net} should be anticorrelated"
        assert block_mean(fc, idx, idx) > 0.1, f"{net} should be coherent within itself"


def test_each_site_has_its_own_tr_and_lengths_stay_in_range():
    config = SimulationConfig(n_subjects=9, n_sites=3, tr_range=(1.5, 3.0), timepoints=(100, 140), seed=5)
    cohort = simulate_cohort(config)
    table = cohort.phenotype_table()
    sites = {s["name"]: s["tr"] for s in cohort.meta["simulator"]["sites"]}
    assert sorted(sites.values()) == [1.5, 2.25, 3.0]
    assert set(table["site"]) == set(sites)
    for _, row in table.iterrows():
        assert row["tr"] == pytest.approx(sites[row["site"]])
    assert table["site"].value_counts().tolist() == [3, 3, 3]
    assert table["n_timepoints"].between(100, 140).all()
    assert table["scan_id"].tolist() == [f"sim-{i:04d}" for i in range(1, 10)]
    assert set(table["sex"]) <= {"male", "female"} and set(table["diagnosis"]) <= {"patient", "control"}
    assert table["age"].between(*config.age_range).all()


def test_same_seed_same_cohort_and_subjects_do_not_depend_on_cohort_size(small_atlas):
    def make(n: int, seed: int):
        return simulate_cohort(
            SimulationConfig(n_subjects=n, atlas=small_atlas, timepoints=(60, 80), seed=seed)
        )

    a, b, longer, other = make(4, 11), make(4, 11), make(7, 11), make(4, 12)
    for i in range(4):
        assert np.array_equal(a.scan(i).timeseries, b.scan(i).timeseries)
        assert np.array_equal(a.scan(i).timeseries, longer.scan(i).timeseries)
        assert a.scan(i).site == longer.scan(i).site
    assert a.phenotype_table().equals(b.phenotype_table())
    assert not np.array_equal(a.scan(0).timeseries[:60], other.scan(0).timeseries[:60])


def test_fast_spectral_path_matches_the_euler_reference():
    """Same coupling: the frequency-domain draw and a per-step Euler loop give the same FC and smoothness."""
    atlas = Atlas.builtin("dosenbach160").subset(list(range(0, 160, 8)))
    config = SimulationConfig(atlas=atlas)
    coupling = CouplingModel(atlas, config).template
    rng = np.random.default_rng(0)
    tr, n_t = 2.0, 600
    sampler = ModeSampler(tr, n_t + 50)
    fast = [bold_from_coupling(rng, coupling, sampler, n_t, config.tau_s) for _ in range(4)]
    slow = [simulate_euler(rng, coupling, tr, n_t, tau_s=config.tau_s) for _ in range(4)]

    def summary(series):
        fc = np.mean([np.corrcoef(x.T) for x in series], axis=0)
        lag1 = np.mean([np.mean(np.sum(x[1:] * x[:-1], 0) / np.sum(x * x, 0)) for x in series])
        return fc[np.triu_indices_from(fc, 1)], lag1

    fc_fast, lag_fast = summary([x - x.mean(0) for x in fast])
    fc_slow, lag_slow = summary(slow)
    assert np.corrcoef(fc_fast, fc_slow)[0, 1] > 0.9
    assert np.abs(fc_fast - fc_slow).mean() < 0.06
    assert lag_fast == pytest.approx(lag_slow, abs=0.05)
    assert 0.5 < lag_fast < 0.95  # HRF-smoothed at TR 2 s, but not a constant


def recovery_scores(cohort) -> dict[str, float]:
    """Fisher-z FC + logistic regression (sex, diagnosis) / ridge (age), 5-fold subject-level CV."""
    from nilearn.connectome import ConnectivityMeasure
    from scipy.stats import pearsonr
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    series = [np.asarray(ts, dtype=np.float32) for ts in cohort.dataset["timeseries"]]
    fc = ConnectivityMeasure(kind="correlation", vectorize=True, discard_diagonal=True).fit_transform(series)
    features = np.arctanh(np.clip(fc, -0.999, 0.999))
    table = cohort.phenotype_table()
    groups = table["subject_id"].to_numpy()
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for column, positive in (("sex", "female"), ("diagnosis", "patient")):
            y = (table[column] == positive).to_numpy().astype(int)
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1e-3, max_iter=1000))
            cv = StratifiedGroupKFold(5, shuffle=True, random_state=0)
            pred = cross_val_predict(model, features, y, groups=groups, cv=cv)
            scores[column] = balanced_accuracy_score(y, pred)
        age = table["age"].to_numpy()
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(1, 5, 9)))
        pred = cross_val_predict(model, features, age, groups=groups, cv=GroupKFold(5))
        scores["age"] = pearsonr(pred, age).statistic
    return scores


def test_phenotypes_are_recoverable_but_not_trivial_and_scale_with_effect_size(small_atlas):
    """300 subjects each. Under no effect, CV balanced accuracy has SD ~0.5/sqrt(300) = 0.03 and Pearson r
    SD ~1/sqrt(300) = 0.06, so 0.6 and 0.3 are > 3 and 5 SDs above chance, and 0.5 +- 0.1 / |r| < 0.25 bound
    chance (the thresholds hold for seeds 1-3, not just the one used here). Half the effect sizes must give lower scores; default sizes must stay well short of perfect."""
    base = SimulationConfig(n_subjects=300, atlas=small_atlas, timepoints=(120, 180), seed=1)
    scores = {}
    for scale in (1.0, 0.5, 0.0):
        config = SimulationConfig.from_dict(base.to_dict())
        config.diagnosis_effect = base.diagnosis_effect * scale
        config.sex_effect = base.sex_effect * scale
        config.age_effect = base.age_effect * scale
        scores[scale] = recovery_scores(simulate_cohort(config))

    full, half, null = scores[1.0], scores[0.5], scores[0.0]
    for column in ("sex", "diagnosis"):
        assert 0.6 < full[column] < 0.92, (column, scores)
        assert half[column] < full[column] - 0.03, (column, scores)
        assert abs(null[column] - 0.5) < 0.1, (column, scores)
    assert 0.3 < full["age"] < 0.9, scores
    assert half["age"] < full["age"] - 0.05, scores
    assert abs(null["age"]) < 0.25, scores


def test_ground_truth_effects_are_stored_and_survive_save_load(tmp_path, small_atlas):
    config = SimulationConfig(n_subjects=3, atlas=small_atlas, timepoints=(60, 70), sex_effect=0.0)
    cohort = simulate_cohort(config)
    cohort.save(tmp_path / "sim")
    meta = load_cohort(tmp_path / "sim").meta["simulator"]
    effects = {e["phenotype"]: e for e in meta["effects"]}
    assert effects["diagnosis"]["size"] == config.diagnosis_effect
    assert effects["diagnosis"]["pairs"] == [["DMN", "DMN"], ["DMN", "FrontoParietal"]]
    assert effects["diagnosis"]["direction"] == "decrease"
    assert effects["diagnosis"]["atlas_networks"] == {
        "DMN": ["default"],
        "FrontoParietal": ["fronto-parietal"],
    }
    assert effects["sex"]["size"] == 0.0 and effects["sex"]["pairs"] == [["Visual", "Somatomotor"]]
    assert effects["age"]["direction"] == "decrease"
    assert SimulationConfig.from_dict(meta["config"]).to_dict() == config.to_dict()
    assert cohort.phenotypes == {"sex": "binary", "age": "regression", "diagnosis": "binary"}


def test_an_effect_on_a_network_the_atlas_lacks_is_refused():
    coords = np.array([[0, -50, 30], [0, 50, 0], [-40, -80, 0], [40, -80, 0], [-50, -20, 50], [50, -20, 50]])
    atlas = Atlas("toy", [f"r{i}" for i in range(6)], coords, ["Visual"] * 4 + ["Somatomotor"] * 2)
    with pytest.raises(FmriInputError, match="does not have"):
        simulate_cohort(SimulationConfig(n_subjects=2, atlas=atlas, timepoints=(60, 60)))
    cohort = simulate_cohort(
        SimulationConfig(n_subjects=2, atlas=atlas, timepoints=(60, 60), diagnosis_effect=0, age_effect=0)
    )
    assert cohort.scan(0).timeseries.shape == (60, 6)


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"timepoints": (200, 100)}, "timepoints"),
        ({"n_subjects": 0}, "n_subjects"),
        ({"sex_effect": -0.2}, "sex effect"),
        ({"coupling_gain": 1.2}, "coupling_gain"),
    ],
)
def test_invalid_settings_fail_with_a_clear_error(settings, words):
    with pytest.raises(FmriInputError, match=words):
        simulate_cohort(SimulationConfig(**settings))


def test_unknown_setting_is_named():
    with pytest.raises(FmriInputError, match="coupling_gian"):
        SimulationConfig.from_dict({"coupling_gian": 0.5})


def test_simulated_nifti_parcellates_back_to_its_region_signals(tmp_path):
    from fmrilm.data_gen.nifti import LABELS_IMAGE, write_nifti_scans

    from fmrilm.io import load_scan

    cohort = simulate_cohort(SimulationConfig(n_subjects=2, timepoints=(90, 110), seed=2))
    paths = write_nifti_scans(cohort, tmp_path, 2)
    for i, path in enumerate(paths):
        original = cohort.scan(i)
        sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["RepetitionTime"] == pytest.approx(original.tr)
        loaded = load_scan(path, atlas=tmp_path / LABELS_IMAGE)
        assert loaded.tr == pytest.approx(original.tr)
        assert loaded.timeseries.shape == original.timeseries.shape
        r = [np.corrcoef(loaded.timeseries[:, j], original.timeseries[:, j])[0, 1] for j in range(160)]
        assert min(r) > 0.9


def test_cli_writes_a_cohort_with_nifti_and_refuses_to_clobber(tmp_path, capsys):
    from fmrilm.cli import main

    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"timepoints": [70, 90], "n_sites": 3}))
    out = tmp_path / "cohort"
    argv = ["simulate", "--subjects", "6", "--out", str(out), "--config", str(settings)]
    argv += ["--sites", "2", "--seed", "4", "--effect-size", "0", "--age-effect", "0.5", "--nifti", "2"]
    assert main(argv + ["--quiet"]) == 0
    cohort = load_cohort(out)
    assert len(cohort) == 6 and cohort.atlas.name == "dosenbach160"
    table = cohort.phenotype_table()
    assert table["site"].nunique() == 2 and table["n_timepoints"].between(70, 90).all()
    sizes = {e["phenotype"]: e["size"] for e in cohort.meta["simulator"]["effects"]}
    assert sizes == {"diagnosis": 0.0, "sex": 0.0, "age": 0.5}
    assert sorted(p.name for p in (out / "nifti").glob("*.nii.gz")) == [
        "atlas_labels.nii.gz",
        "sim-0001_task-rest_bold.nii.gz",
        "sim-0002_task-rest_bold.nii.gz",
    ]
    assert "wrote 6 simulated scans" in capsys.readouterr().out

    assert main(["simulate", "--subjects", "3", "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert len(load_cohort(out)) == 6  # untouched
    assert main(["simulate", "--subjects", "3", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert len(load_cohort(out)) == 3
    assert not list(tmp_path.glob(".cohort*")), "no temporary folder is left behind"
