"""Descriptor corpus: contents, reference fitted on the training part only, resume after an interruption."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from fmrilm.data_gen import corpus as corpus_mod
from fmrilm.data_gen.corpus import build_corpus, load_corpus

from fmrilm.atlas import Atlas
from fmrilm.cohort import Cohort
from fmrilm.descriptors import FeatureConfig, ReferenceStats
from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan

NETS = ["Visual"] * 6 + ["DefaultMode"] * 7 + ["FrontoParietal"] * 5 + ["Salience"] * 4
FEATURES = FeatureConfig(n_components=4)


def toy_cohort(n: int = 7, short: int | None = 6) -> Cohort:
    """Scans whose regions follow their network's latent signal; scan ``short`` is too short to describe."""
    rng = np.random.default_rng(0)
    atlas = Atlas("toy", [f"r{i}" for i in range(len(NETS))], rng.uniform(-60, 60, (len(NETS), 3)), NETS)
    scans, pheno = [], []
    for i in range(n):
        n_time = 12 if i == short else int(rng.integers(100, 150))
        latent = {k: rng.standard_normal(n_time) for k in set(NETS)}
        ts = np.stack([0.8 * latent[k] + rng.standard_normal(n_time) for k in NETS], axis=1)
        scans.append(Scan(ts, tr=2.0, atlas=atlas, scan_id=f"scan-{i}", subject_id=f"sub-{i // 2}", site="A"))
        pheno.append({"sex": "female" if i % 2 else "male", "diagnosis": "patient" if i % 3 else "control"})
    return Cohort.from_scans(scans, pheno, atlas=atlas, name="toy")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    cohort = toy_cohort()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = build_corpus(
            cohort, out, feature_config=FEATURES, shard_size=3, units=("window", "scan"), progress=False,
            fit_indices=list(range(6)),
        )  # fmt: skip
    return cohort, out, path


def test_corpus_rows_columns_and_metadata(built):
    cohort, out, path = built
    ds, meta, ref = load_corpus(out)
    names = json.loads((out / "feature_names.json").read_text())
    assert names == ref.feature_names == meta["feature_names"]
    assert set(ds.column_names) == {
        "scan_id", "subject_id", "session_id", "window", "unit",
        "text_fc", "text_graph", "text_gradient", "text_ica", "text", "z",
    }  # fmt: skip
    # every describable scan: its windows 0..W-1 plus one whole-scan row; the 12-timepoint scan is skipped
    expected = []
    for i in range(6):
        n_time = cohort.dataset[i]["n_timepoints"]
        n_windows = 1 + int(np.ceil((n_time - 48) / 48))
        last = n_time - 48 * (n_windows - 1)
        kept = n_windows - (1 if last < FEATURES.min_valid else 0)
        expected += [(f"scan-{i}", w) for w in range(kept)] + [(f"scan-{i}", -1)]
    assert sorted(zip(ds["scan_id"], ds["window"], strict=True)) == sorted(expected)
    assert [s["scan_id"] for s in meta["skipped"]] == ["scan-6"]
    assert "timepoints" in meta["skipped"][0]["reason"]
    assert meta["n_rows"] == len(ds) and meta["complete"]
    z = np.asarray(ds["z"], dtype=np.float32)
    assert z.shape == (len(ds), len(names)) and np.isfinite(z).all()
    for row in ds:
        assert row["text"] == " ".join(row[f"text_{f}"] for f in ("fc", "graph", "gradient", "ica"))
        assert "(z = " in row["text_fc"] and row["text_ica"]
        assert row["unit"] == ("scan" if row["window"] == -1 else "window")
    # no shard folder is left behind
    assert not (out / "shards").exists()


def test_corpus_rows_equal_the_library_descriptors(built):
    cohort, out, _ = built
    ds, _, ref = load_corpus(out)
    scan = cohort.scan(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ref.describe(scan, unit="window", seed=0)
    rows = [r for r in ds if r["scan_id"] == "scan-2" and r["window"] >= 0]
    assert [r["text"] for r in rows] == [d.text for d in expected]
    np.testing.assert_allclose(
        np.asarray([r["z"] for r in rows]), np.stack([d.z for d in expected]), atol=1e-6
    )


def test_reference_is_fitted_on_the_given_rows_only(built):
    _, out, _ = built
    ref = ReferenceStats.load(out / "reference.json")
    assert ref.meta["scan_ids"] == [f"scan-{i}" for i in range(6)]


def test_interrupted_build_resumes_without_redoing_finished_shards(tmp_path, monkeypatch, built):
    _, out_full, _ = built
    cohort = toy_cohort()
    real_save, calls = corpus_mod._save_atomic, {"n": 0}

    def failing_save(dataset, target):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        real_save(dataset, target)

    kwargs = dict(
        feature_config=FEATURES,
        shard_size=3,
        units=("window", "scan"),
        progress=False,
        fit_indices=list(range(6)),
    )
    monkeypatch.setattr(corpus_mod, "_save_atomic", failing_save)
    with warnings.catch_warnings(), pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("ignore")
        build_corpus(cohort, tmp_path / "c", **kwargs)
    assert [p.name for p in (tmp_path / "c" / "shards").iterdir() if not p.name.startswith(".")] == [
        "shard-00000"
    ]
    assert not (tmp_path / "c" / "dataset").exists()

    monkeypatch.setattr(corpus_mod, "_save_atomic", real_save)
    described = []
    real_batch = corpus_mod._describe_batch

    def counting(batch, **kw):
        described.extend(batch["scan_id"])
        return real_batch(batch, **kw)

    monkeypatch.setattr(corpus_mod, "_describe_batch", counting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_corpus(cohort, tmp_path / "c", **kwargs)
    assert sorted(described) == [f"scan-{i}" for i in range(3, 7)]  # shard 0 (scans 0-2) was not redone
    resumed, _, _ = load_corpus(tmp_path / "c")
    full, _, _ = load_corpus(out_full)
    assert resumed["text"] == full["text"]
    np.testing.assert_array_equal(np.asarray(resumed["z"]), np.asarray(full["z"]))


def test_other_settings_in_a_used_folder_are_refused(built):
    _, out, _ = built
    with pytest.raises(FmriInputError, match="other scans or settings"):
        build_corpus(toy_cohort(), out, feature_config=FEATURES, shard_size=3, seed=5, progress=False)


def test_parallel_build_equals_sequential(tmp_path, built):
    _, out_full, _ = built
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_corpus(
            toy_cohort(), tmp_path / "p", reference=out_full / "reference.json", units=("window", "scan"),
            num_proc=2, shard_size=7, progress=False,
        )  # fmt: skip
    par, _, _ = load_corpus(tmp_path / "p")
    seq, _, _ = load_corpus(out_full)
    assert par["text"] == seq["text"]


def test_the_fits_features_are_reused_for_its_own_scans_only(tmp_path, built, monkeypatch):
    """Building a corpus fits the reference on the training scans and then describes them: their features
    are computed once (reused, checked by content) and in parallel with num_proc; the rows and statistics are
    those of computing everything afresh."""
    _, out_full, _ = built
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_corpus(
            toy_cohort(), tmp_path / "fit2", feature_config=FEATURES, shard_size=3, units=("window", "scan"),
            num_proc=2, fit_indices=list(range(6)), progress=False,
        )  # fmt: skip
        build_corpus(
            toy_cohort(), tmp_path / "fresh", reference=tmp_path / "fit2" / "reference.json",
            units=("window", "scan"), progress=False,
        )  # fmt: skip
    # two workers fit the statistics one process fits
    parallel = ReferenceStats.load(tmp_path / "fit2" / "reference.json").to_dict()
    assert json.dumps(parallel) == json.dumps(ReferenceStats.load(out_full / "reference.json").to_dict())
    reused, _, _ = load_corpus(tmp_path / "fit2")
    fresh, _, _ = load_corpus(tmp_path / "fresh")
    assert reused["text"] == fresh["text"] and reused["window"] == fresh["window"]
    np.testing.assert_array_equal(np.asarray(reused["z"]), np.asarray(fresh["z"]))

    calls = []
    compute = ReferenceStats.features_from_timeseries
    monkeypatch.setattr(
        ReferenceStats,
        "features_from_timeseries",
        lambda self, *a, **k: calls.append(1) or compute(self, *a, **k),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_corpus(
            toy_cohort(8, short=None), tmp_path / "once", feature_config=FEATURES, shard_size=3,
            units=("window", "scan"), fit_indices=list(range(6)), progress=False,
        )  # fmt: skip
    assert len(calls) == 2 * 6 + 2 * 2  # each unit of the 6 fitted scans once, of the 2 others once


def test_fitted_features_are_handed_back_only_for_the_same_series():
    from fmrilm.descriptors.reference import FittedFeatures, timeseries_key

    ts = np.random.default_rng(0).standard_normal((60, 5))
    values, index = np.ones((2, 3)), np.arange(2)
    kept = FittedFeatures({"a": (timeseries_key(ts), {"window": (values, index)})})
    found = kept.lookup("a", ts.copy(), "window")
    assert found is not None and np.array_equal(found[0], values) and found[0] is not values
    changed = ts.copy()
    changed[3, 2] += 1e-9
    assert kept.lookup("a", changed, "window") is None  # another series under the same id: computed afresh
    assert kept.lookup("a", ts, "scan") is None and kept.lookup("b", ts, "window") is None
    assert set(kept.subset(["a", "b"])) == {"a"}


def test_cli_fits_reference_on_the_training_split(tmp_path):
    from fmrilm.cli import main
    from fmrilm.splits import save_split

    cohort = toy_cohort(n=8, short=None)
    cohort.save(tmp_path / "cohort")
    save_split(tmp_path / "cohort", "mysplit", {"train": [0, 1, 2, 3, 4, 5], "test": [6, 7]}, kind="manual")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            ["corpus", "build", str(tmp_path / "cohort"), "--out", str(tmp_path / "corpus"), "--components", "4",
             "--fit-on-split", "mysplit:train", "--quiet"]
        )  # fmt: skip
    assert code == 0
    ds, meta, ref = load_corpus(tmp_path / "corpus")
    assert ref.meta["scan_ids"] == [f"scan-{i}" for i in range(6)]
    assert meta["reference_fit_on"] == "split mysplit:train"
    assert {"scan-6", "scan-7"} <= set(ds["scan_id"])  # test scans are described, not used for fitting
    assert main(["corpus", "build", str(tmp_path / "cohort"), "--out", str(tmp_path / "x"),
                 "--fit-on-split", "nosuch"]) == 2  # fmt: skip


def test_corpus_of_a_simulated_cohort(tmp_path):
    from fmrilm.data_gen.simulate import SimulationConfig, simulate_cohort

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = simulate_cohort(SimulationConfig(n_subjects=4, timepoints=(100, 110), seed=1))
        build_corpus(cohort, tmp_path / "sim", feature_config=FEATURES, progress=False)
    ds, meta, _ = load_corpus(tmp_path / "sim")
    assert meta["n_described_scans"] == 4 and not meta["skipped"]
    text = " ".join(ds["text"]).lower()
    assert "network" in text and "(z = " in text
    # simulated phenotype values never reach the text
    assert re.search(r"\b(patient|control|male|female|site|age|years)\b", text) is None
