"""k-shot sampling: balanced, seeded, one scan per subject, never a test subject, clear error when too few."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fmrilm.instructions.fewshot import sample_k_shot

from fmrilm.errors import FmriInputError


def _table(n_subjects: int = 30, scans_per_subject: int = 2) -> pd.DataFrame:
    """Subjects with two scans each; diagnosis balanced-ish, a few missing; age numeric."""
    rows = []
    for s in range(n_subjects):
        dx = None if s % 10 == 9 else ("patient" if s % 3 == 0 else "control")
        for k in range(scans_per_subject):
            rows.append(
                {"scan_id": f"sub{s}_ses{k}", "subject_id": f"sub{s}", "diagnosis": dx, "age": 10.0 + s}
            )
    return pd.DataFrame(rows)


def test_k_per_class_and_one_scan_per_subject():
    table = _table()
    idx = sample_k_shot(table, "diagnosis", k=4, seed=0)
    picked = table.iloc[idx]
    assert picked["diagnosis"].value_counts().to_dict() == {"control": 4, "patient": 4}
    assert picked["subject_id"].is_unique
    assert picked["diagnosis"].notna().all()


def test_same_seed_same_pick_different_seed_different():
    table = _table()
    a = sample_k_shot(table, "diagnosis", k=3, seed=7)
    b = sample_k_shot(table, "diagnosis", k=3, seed=7)
    np.testing.assert_array_equal(a, b)
    others = [tuple(sample_k_shot(table, "diagnosis", k=3, seed=s)) for s in range(1, 6)]
    assert any(o != tuple(a) for o in others)


def test_never_uses_test_subjects():
    table = _table()
    test_subjects = {f"sub{s}" for s in range(0, 30, 2)}
    for seed in range(20):
        idx = sample_k_shot(table, "diagnosis", k=3, seed=seed, exclude_subjects=test_subjects)
        assert not set(table.iloc[idx]["subject_id"]) & test_subjects


def test_candidates_restrict_the_pool():
    table = _table()
    train_rows = [
        i for i in range(len(table)) if table.loc[i, "subject_id"] in {f"sub{s}" for s in range(15)}
    ]
    idx = sample_k_shot(table, "diagnosis", k=2, seed=0, candidates=train_rows)
    assert set(idx) <= set(train_rows)


def test_error_when_a_class_has_fewer_than_k_subjects():
    table = _table()  # 'patient': subjects 0,3,...,27 minus missing -> 10 subjects; excluding most leaves < 4
    exclude = {f"sub{s}" for s in range(0, 24, 3)}
    with pytest.raises(FmriInputError, match=r"Class 'patient'.*fewer than k=4"):
        sample_k_shot(table, "diagnosis", k=4, seed=0, exclude_subjects=exclude)


def test_unknown_label_column_is_a_clear_error():
    with pytest.raises(FmriInputError, match="no column 'handedness'"):
        sample_k_shot(_table(), "handedness", k=1, seed=0)


def test_numeric_label_with_bins_is_balanced_per_bin():
    table = _table()
    idx = sample_k_shot(table, "age", k=3, seed=0, bins=[0, 20, 30, 100])
    ages = table.iloc[idx]["age"].to_numpy()
    counts = np.histogram(ages, bins=[0, 20, 30, 100])[0]
    assert counts.tolist() == [3, 3, 3]
    assert table.iloc[idx]["subject_id"].is_unique


def test_works_on_a_cohort_object():
    from fmrilm.atlas import Atlas
    from fmrilm.cohort import Cohort
    from fmrilm.scan import Scan

    atlas = Atlas(name="toy", labels=["a", "b"], coords=np.zeros((2, 3)), networks=["A", "B"])
    rng = np.random.default_rng(0)
    scans = [
        Scan(rng.normal(size=(20, 2)), tr=2.0, atlas=atlas, scan_id=f"s{i}", subject_id=f"p{i}")
        for i in range(8)
    ]
    cohort = Cohort.from_scans(scans, [{"sex": "male" if i % 2 else "female"} for i in range(8)], atlas=atlas)
    idx = sample_k_shot(cohort, "sex", k=2, seed=1)
    assert sorted(cohort.phenotype_table().iloc[idx]["sex"]) == ["female", "female", "male", "male"]


def test_a_sparse_bin_leaves_its_shortfall_to_the_other_bins():
    table = _table()  # one subject per age 10..39: bins below hold 2, 18 and 10 subjects
    bins = [0, 12, 30, 100]
    idx = sample_k_shot(table, "age", k=3, seed=0, bins=bins)
    assert len(idx) == 9 and table.iloc[idx]["subject_id"].is_unique
    counts = np.histogram(table.iloc[idx]["age"].to_numpy(), bins=bins)[0]
    assert counts.tolist() == [2, 4, 3]  # the sparse bin gives all it has, the next one makes up the rest
    assert np.array_equal(idx, sample_k_shot(table, "age", k=3, seed=0, bins=bins))


def test_too_few_subjects_in_all_bins_is_a_clear_error():
    with pytest.raises(FmriInputError, match=r"fewer than k=50 per bin"):
        sample_k_shot(_table(), "age", k=50, seed=0, bins=[0, 20, 30, 100])


def test_seed_interval_stays_inside_the_metric_range():
    from fmrilm.eval.metrics import seed_ci

    mean, low, high = seed_ci([0.98, 1.0], metric="balanced_accuracy")
    assert high == 1.0 and low < mean < high
    assert seed_ci([0.02, 0.3], metric="mae")[1] == 0.0
    assert seed_ci([0.98, 1.0])[2] > 1.0  # without a metric nothing is clipped
