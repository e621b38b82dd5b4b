"""Subject-level splits: stratified and leave-sites-out, never a subject in two parts; stored in the cohort."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fmrilm.atlas import Atlas
from fmrilm.cli import main
from fmrilm.cohort import Cohort
from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan
from fmrilm.splits import (
    MISSING_LABEL,
    describe_split,
    leave_sites_out_split,
    list_splits,
    load_split,
    load_split_cohorts,
    save_split,
    split_cohort,
    stratified_folds,
    stratified_split,
)

SITES = ["S1", "S2", "S3", "S4", "S5"]


def _table(n_subjects: int = 300, seed: int = 0) -> pd.DataFrame:
    """Subjects with 1-3 scans each, at one site, 35% patients, ages 8-60 (a few missing labels)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        site = SITES[rng.integers(len(SITES))]
        dx = "patient" if rng.random() < 0.35 else "control"
        if s % 50 == 7:
            dx = None
        age = float(rng.uniform(8, 60))
        for k in range(int(rng.integers(1, 4))):
            rows.append(
                {
                    "scan_id": f"sub{s}_ses{k}",
                    "subject_id": f"sub{s}",
                    "site": site,
                    "diagnosis": dx,
                    "age": age,
                }
            )
    return pd.DataFrame(rows)


def _assert_grouped(table: pd.DataFrame, split: dict[str, list[int]]) -> None:
    """Every row in exactly one part, every subject in exactly one part."""
    assert sorted(i for idx in split.values() for i in idx) == list(range(len(table)))
    part_of = {}
    for part, idx in split.items():
        for subject in table.loc[idx, "subject_id"]:
            assert part_of.setdefault(subject, part) == part, f"subject {subject} in two parts"


def _fraction(table: pd.DataFrame, idx: list[int], value: str = "patient") -> float:
    return float((table.loc[idx, "diagnosis"] == value).mean())


def test_stratified_split_groups_subjects_and_keeps_label_proportions():
    table = _table()
    split = stratified_split(table, label="diagnosis", test_size=0.2, val_size=0.1, seed=1)
    assert set(split) == {"train", "val", "test"}
    _assert_grouped(table, split)
    overall = _fraction(table, list(range(len(table))))
    for part in split:
        assert _fraction(table, split[part]) == pytest.approx(overall, abs=0.05), part
    assert len(split["test"]) / len(table) == pytest.approx(0.2, abs=0.05)
    assert len(split["val"]) / len(table) == pytest.approx(0.1, abs=0.05)
    # reproducible with the seed, different with another one
    assert stratified_split(table, label="diagnosis", test_size=0.2, val_size=0.1, seed=1) == split
    assert stratified_split(table, label="diagnosis", test_size=0.2, val_size=0.1, seed=2) != split


def test_stratified_split_on_a_numeric_label_bins_it():
    table = _table(seed=4)
    split = stratified_split(table, label="age", test_size=0.25, seed=0)
    _assert_grouped(table, split)
    assert table.loc[split["test"], "age"].mean() == pytest.approx(table["age"].mean(), abs=3.0)


def test_stratified_folds_cover_every_row_once():
    table = _table(n_subjects=120)
    folds = stratified_folds(table, label="diagnosis", n_folds=4, seed=0)
    assert len(folds) == 4
    tests = sorted(i for fold in folds for i in fold["test"])
    assert tests == list(range(len(table)))
    for fold in folds:
        _assert_grouped(table, fold)


def test_leave_sites_out_named_sites_and_validation_fraction():
    table = _table()
    split = leave_sites_out_split(table, test_sites=["S2", "s4"], val_size=0.15, label="diagnosis", seed=0)
    _assert_grouped(table, split)
    assert set(table.loc[split["test"], "site"]) == {"S2", "S4"}  # site names match case-insensitively
    assert not set(table.loc[split["train"] + split["val"], "site"]) & {"S2", "S4"}
    assert 0.05 < len(split["val"]) / (len(split["train"]) + len(split["val"])) < 0.25


def test_leave_sites_out_random_sites_are_reproducible():
    table = _table()
    a = leave_sites_out_split(table, n_test_sites=2, n_val_sites=1, seed=5)
    b = leave_sites_out_split(table, n_test_sites=2, n_val_sites=1, seed=5)
    assert a == b
    _assert_grouped(table, a)
    test_sites, val_sites = set(table.loc[a["test"], "site"]), set(table.loc[a["val"], "site"])
    train_sites = set(table.loc[a["train"], "site"])
    assert len(test_sites) == 2 and len(val_sites) == 1 and len(train_sites) == 2
    assert not (test_sites & val_sites) and not (train_sites & (test_sites | val_sites))
    draws = {
        tuple(sorted(set(table.loc[leave_sites_out_split(table, seed=s)["test"], "site"]))) for s in range(8)
    }
    assert len(draws) > 1  # the seed does choose


def test_leave_sites_out_refuses_what_it_cannot_do():
    table = _table(n_subjects=60)
    with pytest.raises(FmriInputError, match="S9.*S1, S2"):
        leave_sites_out_split(table, test_sites=["S9"])
    with pytest.raises(FmriInputError, match="No site is left"):
        leave_sites_out_split(table, test_sites=SITES[:3], val_sites=SITES[3:])
    spanning = pd.DataFrame(
        {
            "subject_id": ["a", "a", "b", "c", "d"],
            "site": ["S1", "S2", "S1", "S2", "S3"],
            "scan_id": list("12345"),
        }
    )
    with pytest.raises(FmriInputError) as excinfo:
        leave_sites_out_split(spanning, test_sites=["S2"])
    assert str(excinfo.value).startswith("Subject 'a': ")
    with pytest.raises(FmriInputError, match="no column 'handedness'"):
        stratified_split(table, label="handedness")


# ---------------------------------------------------------------------------------------------- on disk
@pytest.fixture
def cohort_dir(tmp_path):
    table = _table(n_subjects=40, seed=2)
    atlas = Atlas(name="toy", labels=["a", "b", "c"], coords=np.eye(3) * 10, networks=["n"] * 3)
    rng = np.random.default_rng(0)
    scans = [
        Scan(rng.standard_normal((30, 3)), tr=2.0, scan_id=r.scan_id, subject_id=r.subject_id, site=r.site)
        for r in table.itertuples()
    ]
    phenos = [{"diagnosis": r.diagnosis, "age": r.age} for r in table.itertuples()]
    Cohort.from_scans(scans, phenos, atlas=atlas, name="toy").save(tmp_path / "toy")
    return tmp_path / "toy"


def test_cli_split_writes_a_json_that_reads_back(cohort_dir, capsys):
    assert main(["cohort", "split", str(cohort_dir), "--kind", "leave-sites-out", "--test-sites", "S1"]) == 0
    assert (
        main(
            ["cohort", "split", str(cohort_dir), "--kind", "stratified", "--test-size", "0.25", "--seed", "3"]
        )
        == 0
    )
    assert "Wrote split 'stratified'" in capsys.readouterr().out
    assert list_splits(cohort_dir) == ["leave-sites-out", "stratified"]
    record = json.loads((cohort_dir / "splits" / "leave-sites-out.json").read_text())
    assert record["kind"] == "leave-sites-out" and record["params"]["test_sites"] == ["S1"]
    parts = load_split_cohorts(cohort_dir, "leave-sites-out")
    assert set(parts["test"].dataset["site"]) == {"S1"} and "S1" not in set(parts["train"].dataset["site"])
    assert parts["test"].name == "toy-test"
    cohort = Cohort.load(cohort_dir)
    split = load_split(cohort_dir, "stratified")
    _assert_grouped(cohort.phenotype_table(), split)
    sizes = {p: len(c) for p, c in split_cohort(cohort, split).items()}
    assert sizes == {p: len(i) for p, i in split.items()}
    assert main(["cohort", "info", str(cohort_dir)]) == 0
    assert "Splits: leave-sites-out, stratified" in capsys.readouterr().out


def test_a_split_of_another_cohort_version_is_caught(cohort_dir):
    cohort = Cohort.load(cohort_dir)
    save_split(cohort_dir, "s", stratified_split(cohort, seed=0), kind="stratified")
    reordered = cohort.select(list(range(len(cohort)))[::-1])
    with pytest.raises(FmriInputError, match="another version of the cohort"):
        load_split(cohort_dir, "s", reordered)
    with pytest.raises(FmriInputError, match="no split 'nope'.*available: s"):
        load_split(cohort_dir, "nope")
    with pytest.raises(FmriInputError, match="not a usable split name"):
        save_split(cohort_dir, "../escape", {"train": [0]}, kind="stratified")


# ------------------------------------------------------------------------------------- refusals and summaries
def test_every_refusal_is_one_clear_error_that_names_the_setting():
    """Each way a split cannot be made is an FmriInputError naming the setting and what to do instead."""
    table = _table(n_subjects=60)
    with pytest.raises(FmriInputError, match="test_size \\+ val_size = 1.10 leaves nothing to train on"):
        stratified_split(table, test_size=0.6, val_size=0.5)
    small = _table(n_subjects=8, seed=3)
    with pytest.raises(FmriInputError, match="^val_size 0.05 of"):
        stratified_split(small, test_size=0.25, val_size=0.05)
    with pytest.raises(
        FmriInputError, match="Cannot hold out 5 of the cohort's 5.*--test-sites.*stratified split"
    ):
        leave_sites_out_split(table, n_test_sites=5)
    with pytest.raises(FmriInputError, match="Site\\(s\\) S2 are both test and validation sites"):
        leave_sites_out_split(table, test_sites=["S1", "S2"], val_sites=["s2", "S3"])
    with pytest.raises(FmriInputError, match="^val_size must be a fraction between 0 and 1, got 1.5"):
        leave_sites_out_split(table, test_sites=["S1"], val_size=1.5)
    with pytest.raises(FmriInputError, match="The table has no 'site' column.*table with ids"):
        stratified_split(table.drop(columns="site"))


def test_the_summary_of_a_split_describes_each_part(tmp_path):
    """Scans, subjects and sites per part, the mean and SD of a numeric label with many values, and counts of
    a label with few values (missing ones included); `save_split` stores the same summary."""
    table = _table(n_subjects=80, seed=6)
    split = stratified_split(table, label="diagnosis", test_size=0.25, seed=0)
    info = describe_split(table, split, "age")
    for part, idx in split.items():
        rows = table.loc[idx]
        assert info[part]["n_scans"] == len(idx) and info[part]["n_subjects"] == rows["subject_id"].nunique()
        assert info[part]["sites"] == rows["site"].value_counts().sort_index().to_dict()
        assert info[part]["age"] == pytest.approx({"mean": rows["age"].mean(), "sd": rows["age"].std()})
    counts = describe_split(table, split, "diagnosis")["test"]["diagnosis"]
    expected = table.loc[split["test"], "diagnosis"].fillna(MISSING_LABEL).value_counts().to_dict()
    assert counts == expected and sum(counts.values()) == len(split["test"])
    # ten distinct numbers (and missing ones) are classes, eleven are a continuous label
    table["grade"] = [float(i % 10) if i % 7 else None for i in range(len(table))]
    grade = describe_split(table, split, "grade")["train"]["grade"]  # numbers first, in order, then missing
    assert list(grade) == [f"{float(v)}" for v in range(10)] + [MISSING_LABEL]
    assert grade[MISSING_LABEL] == table.loc[split["train"], "grade"].isna().sum()
    table["grade"] = [float(i % 11) for i in range(len(table))]
    assert set(describe_split(table, split, "grade")["train"]["grade"]) == {"mean", "sd"}


def test_a_saved_split_keeps_its_summary_and_refuses_bad_rows_or_silent_replacement(cohort_dir):
    cohort = Cohort.load(cohort_dir)
    split = stratified_split(cohort, seed=0)
    path = save_split(cohort_dir, "s", split, kind="stratified", label="diagnosis")
    record = json.loads(path.read_text())
    assert record["summary"] == json.loads(json.dumps(describe_split(cohort, split, "diagnosis")))
    with pytest.raises(FmriInputError, match="already holds a different split named 's'.*--overwrite"):
        save_split(cohort_dir, "s", stratified_split(cohort, seed=1), kind="stratified")
    with pytest.raises(FmriInputError, match="Part 'test' has row indices outside.*from this cohort"):
        save_split(cohort_dir, "t", {"train": [0], "test": [len(cohort)]}, kind="stratified")
    with pytest.raises(FmriInputError, match="'a b' is not a usable split name.*letters, digits"):
        save_split(cohort_dir, "a b", split, kind="stratified")
