"""Boundary cases: window counts at every length edge, TR bounds on both sides, fewer and more columns than the
atlas, split fractions exact to one subject."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from fmrilm.atlas import Atlas
from fmrilm.errors import FmriInputError
from fmrilm.io import TR_RANGE_S, load_scan
from fmrilm.scan import Scan
from fmrilm.signal import SignalConfig, make_windows, scan_windows
from fmrilm.splits import leave_sites_out_split, stratified_split


# ------------------------------------------------------------------------------------------------- windows
def window_cases():
    """(n_time, length, stride, expected windows, real samples in the last window), written out by hand:
    L samples fill one window; one more opens a second; L + k steps fill k + 1 windows exactly; one more
    sample opens window k + 2, which holds L - step + 1 real samples."""
    cases = []
    for length, stride in ((16, None), (16, 5), (48, 24), (10, 3), (7, 1)):
        step = stride or length
        cases += [
            (length - 1, length, stride, 1, length - 1),
            (length, length, stride, 1, length),
            (length + 1, length, stride, 2, length - step + 1),
        ]
        for k in (1, 2, 3):
            cases.append((length + k * step, length, stride, k + 1, length))
            cases.append((length + k * step + 1, length, stride, k + 2, length - step + 1))
    return cases


@pytest.mark.parametrize("n_time,length,stride,n_windows,last_valid", window_cases())
def test_window_count_at_every_length_edge(n_time, length, stride, n_windows, last_valid):
    ts = np.arange(1, n_time * 2 + 1, dtype=np.float32).reshape(n_time, 2)  # no zero among real samples
    windows, mask = make_windows(ts, length, stride)
    assert windows.shape == (n_windows, length, 2)
    assert mask.sum(axis=1)[-1] == last_valid
    assert mask[:-1].all()  # only the last window may be padded
    step = stride or length
    seen = set()
    for w in range(n_windows):
        real = windows[w][mask[w]]
        np.testing.assert_array_equal(real, ts[w * step : w * step + len(real)])
        seen |= set(range(w * step, w * step + len(real)))
    assert seen == set(range(n_time))  # no timepoint dropped
    assert (windows[~mask] == 0).all()


@pytest.mark.parametrize("extra,n_windows", [(0, 2), (1, 3)])
def test_scan_windows_count_through_preprocessing(extra, n_windows):
    """At the model TR, preprocessing keeps every sample, so the edges above hold for a whole scan too."""
    config = SignalConfig(target_tr=2.0, window_length=24, min_timepoints=24)
    n_time = 48 + extra
    ts = np.random.default_rng(0).normal(size=(n_time, 4)).astype(np.float32)
    windows, mask = scan_windows(Scan(ts, tr=2.0, scan_id="edge"), config)
    assert windows.shape == (n_windows, 24, 4) and int(mask.sum()) == n_time


# ---------------------------------------------------------------------------------------------------- TR
@pytest.fixture
def table_file(tmp_path):
    path = tmp_path / "sub-01.npy"
    np.save(path, np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32))
    return path


def test_tr_range_is_the_documented_one():
    assert TR_RANGE_S == (0.05, 30.0)


@pytest.mark.parametrize("tr", [0.05, 0.8, 2.0, 30.0])
def test_tr_inside_the_bounds_loads(table_file, tr):
    assert load_scan(table_file, tr=tr).tr == tr


@pytest.mark.parametrize("tr", [0.0499, 0.01, 0.0, -2.0, 30.01, 2000.0, float("nan")])
def test_tr_outside_the_bounds_is_refused_on_both_sides(table_file, tr):
    with pytest.raises(FmriInputError, match=r"outside 0\.05-30\.0 s") as info:
        load_scan(table_file, tr=tr)
    assert "sub-01" in str(info.value) and "seconds" in info.value.fix


@pytest.mark.parametrize("tr,ok", [(0.04, False), (0.05, True), (30.0, True), (31.0, False)])
def test_sidecar_tr_bounds(table_file, tr, ok):
    table_file.with_suffix(".json").write_text(json.dumps({"RepetitionTime": tr}))
    if ok:
        assert load_scan(table_file).tr == tr
    else:
        with pytest.raises(FmriInputError, match=r"sidecar .* outside 0\.05-30\.0 s"):
            load_scan(table_file)


# ------------------------------------------------------------------------------------------- atlas columns
def toy_atlas(n: int) -> Atlas:
    coords = np.random.default_rng(1).normal(size=(n, 3)) * 30
    return Atlas(name="toy", labels=[f"r{i}" for i in range(n)], coords=coords, networks=["A"] * n)


@pytest.mark.parametrize("n_columns", [5, 6, 7])
def test_fewer_or_more_columns_than_the_atlas_is_refused(tmp_path, n_columns):
    path = tmp_path / "sub-c.csv"
    pd.DataFrame(np.random.default_rng(0).normal(size=(40, n_columns))).to_csv(path, index=False)
    atlas = toy_atlas(6)
    if n_columns == 6:
        scan = load_scan(path, atlas=atlas, tr=2.0)
        assert scan.timeseries.shape == (40, 6) and scan.atlas.n_regions == 6
        return
    with pytest.raises(FmriInputError, match=f"has {n_columns} region columns but atlas 'toy' has 6 regions"):
        load_scan(path, atlas=atlas, tr=2.0)


# ---------------------------------------------------------------------------------------------------- splits
def subjects_table(n_subjects: int, seed: int = 0) -> pd.DataFrame:
    """Subjects with 1-3 scans each (so a share of scans is not a share of subjects), 40% patients."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_subjects):
        dx = "patient" if rng.random() < 0.4 else "control"
        age = float(rng.uniform(8, 60))
        for k in range(int(rng.integers(1, 4))):
            rows.append(
                {
                    "scan_id": f"s{s}-{k}",
                    "subject_id": f"s{s}",
                    "site": f"S{s % 4}",
                    "diagnosis": dx,
                    "age": age,
                }
            )
    return pd.DataFrame(rows)


def n_subjects_in(table: pd.DataFrame, rows: list[int]) -> int:
    return table.loc[rows, "subject_id"].nunique()


@pytest.mark.parametrize("n_subjects", [10, 23, 57, 100])
@pytest.mark.parametrize("test_size", [0.1, 0.15, 0.2, 0.25, 0.3, 0.5])
@pytest.mark.parametrize("label", ["diagnosis", "age"])
def test_stratified_test_share_is_exact_to_one_subject(n_subjects, test_size, label):
    table = subjects_table(n_subjects, seed=n_subjects)
    for seed in (0, 1):
        split = stratified_split(table, label=label, test_size=test_size, seed=seed)
        held = n_subjects_in(table, split["test"])
        assert abs(held - test_size * n_subjects) < 1, (held, test_size * n_subjects)
        assert n_subjects_in(table, split["train"]) == n_subjects - held


@pytest.mark.parametrize("n_subjects", [20, 61])
def test_stratified_validation_share_is_exact_to_one_subject(n_subjects):
    table = subjects_table(n_subjects, seed=3)
    split = stratified_split(table, label="diagnosis", test_size=0.2, val_size=0.15, seed=0)
    assert abs(n_subjects_in(table, split["test"]) - 0.2 * n_subjects) < 1
    assert abs(n_subjects_in(table, split["val"]) - 0.15 * n_subjects) < 1


def test_leave_sites_out_validation_share_is_exact_to_one_subject():
    table = subjects_table(80, seed=4)
    for label in (None, "diagnosis"):
        split = leave_sites_out_split(table, test_sites=["S0"], val_size=0.3, label=label, seed=0)
        train_subjects = table.loc[split["train"] + split["val"], "subject_id"].nunique()
        assert abs(n_subjects_in(table, split["val"]) - 0.3 * train_subjects) < 1, label


def test_a_share_that_rounds_to_no_subject_is_one_clear_error():
    table = subjects_table(4)
    with pytest.raises(FmriInputError, match=re.escape("test_size 0.1 of 4 subject(s)")):
        stratified_split(table, label="diagnosis", test_size=0.1)
