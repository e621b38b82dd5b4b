"""Every supported scan format loads as (time, regions) float32 with the right TR, ids and atlas."""

from __future__ import annotations

import json
import warnings

import h5py
import nibabel as nib
import numpy as np
import pytest

import fmrilm
from fmrilm.atlas import Atlas
from fmrilm.io import load_scan, load_scans

T, R = 60, 5


def _series(seed: int = 0, t: int = T, r: int = R) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(t, r)).astype(np.float32) * 3 + 100


def _write_table(path, data, sep, header):
    lines = []
    if header is not None:
        lines.append(sep.join(header))
    lines += [sep.join(f"{v:.6f}" for v in row) for row in data]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------- real ABIDE
def test_abide_samples_load_as_t_by_200(abide_dir):
    files = sorted((abide_dir / "samples").glob("*.1D"))
    assert len(files) == 4
    for f in files:
        scan = load_scan(f, tr=2.0)
        assert scan.timeseries.shape[1] == 200
        assert scan.timeseries.shape[0] >= 78
        assert scan.timeseries.dtype == np.float32
        assert scan.subject_id == f.name[: -len(".1D")]
        assert scan.source == str(f)
        assert np.isfinite(scan.timeseries).all()


def test_abide_sample_matches_numpy_loadtxt_and_cc200_atlas(abide_dir):
    f = sorted((abide_dir / "samples").glob("*.1D"))[0]
    scan = load_scan(f, atlas=abide_dir / "cc200_centroids.csv", tr=2.0)
    expected = np.loadtxt(f, comments="#", dtype=np.float32)
    np.testing.assert_allclose(scan.timeseries, expected, rtol=1e-6)
    assert scan.atlas is not None and scan.atlas.n_regions == 200


def test_abide_npz_loads_every_key(abide_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few real scans have zero columns: flagged, tested elsewhere
        scans = load_scans(abide_dir / "timeseries_cc200.npz", tr=2.0)
    assert len(scans) == 695
    assert {s.timeseries.shape[1] for s in scans} == {200}
    assert len({s.subject_id for s in scans}) == 695
    flagged = [s for s in scans if s.flags.get("bad_regions")]
    assert flagged, "ABIDE has scans with constant-zero ROI columns; they must be flagged"
    assert all((s.timeseries[:, s.flags["bad_regions"]] == 0).all() for s in flagged)


# -------------------------------------------------------------------------------------------------- tables
def test_afni_1d_with_hash_header(tmp_path):
    data = _series()
    path = tmp_path / "sub-01.1D"
    _write_table(path, data, "\t", [f"#{i + 1}" for i in range(R)])
    scan = load_scan(path, tr=2.0)
    np.testing.assert_allclose(scan.timeseries, data, rtol=1e-5)
    assert scan.subject_id == "sub-01" and scan.tr == 2.0


@pytest.mark.parametrize("ext,sep", [(".csv", ","), (".tsv", "\t"), (".txt", " "), (".txt", ",")])
@pytest.mark.parametrize("header", ["names", "numbers", None])
def test_delimited_tables_with_or_without_header(tmp_path, ext, sep, header):
    data = _series(1)
    names = {"names": [f"roi_{i}" for i in range(R)], "numbers": [str(i + 1) for i in range(R)], None: None}
    path = tmp_path / f"s1{ext}"
    _write_table(path, data, sep, names[header])
    scan = load_scan(path, tr=1.5)
    assert scan.timeseries.shape == (T, R)
    np.testing.assert_allclose(scan.timeseries, data, rtol=1e-5)


def test_pandas_csv_with_index_and_time_column_gives_tr(tmp_path):
    import pandas as pd

    data = _series(2)
    frame = pd.DataFrame(data, columns=[f"r{i}" for i in range(R)])
    frame.insert(0, "time", np.arange(T) * 0.8)
    path = tmp_path / "timed.csv"
    frame.to_csv(path)  # writes the index as an unnamed first column
    scan = load_scan(path)
    assert scan.timeseries.shape == (T, R)
    assert scan.tr == pytest.approx(0.8)


def test_bids_sidecar_gives_tr(tmp_path):
    path = tmp_path / "sub-02_bold.tsv"
    _write_table(path, _series(3), "\t", None)
    (tmp_path / "sub-02_bold.json").write_text(json.dumps({"RepetitionTime": 2.5}))
    assert load_scan(path).tr == 2.5
    assert load_scan(path, tr=2.5).tr == 2.5
    with pytest.warns(UserWarning, match="sidecar"):
        assert load_scan(path, tr=2.0).tr == 2.0  # the argument wins, with a warning


# -------------------------------------------------------------------------------------------------- arrays
def test_npy(tmp_path):
    data = _series(4)
    np.save(tmp_path / "sub-03.npy", data.astype(np.float64))
    scan = load_scan(tmp_path / "sub-03.npy", tr=2.0)
    assert scan.timeseries.dtype == np.float32
    np.testing.assert_allclose(scan.timeseries, data, rtol=1e-6)
    assert scan.subject_id == "sub-03"


def test_npz_single_array_and_keys(tmp_path):
    single = tmp_path / "one.npz"
    np.savez(single, _series(5))
    assert load_scan(single, tr=2.0).subject_id == "one"

    many = tmp_path / "many.npz"
    arrays = {"subA": _series(6), "subB": _series(7, t=40), "tr": np.float64(1.5)}
    np.savez(many, **arrays)
    scan = load_scan(many, key="subB")
    assert scan.subject_id == "subB" and scan.timeseries.shape == (40, R) and scan.tr == 1.5
    scans = load_scans(many)
    assert [s.subject_id for s in scans] == ["subA", "subB"]
    np.testing.assert_allclose(scans[0].timeseries, arrays["subA"], rtol=1e-6)
    with pytest.warns(UserWarning, match="entry 'tr' says 1.5"):  # the argument wins over the stored TR
        per_key = load_scans(many, tr={"subA": 2.0, "subB": 3.0})
    assert [s.tr for s in per_key] == [2.0, 3.0]


@pytest.mark.parametrize("ext", [".h5", ".hdf5"])
def test_hdf5_single_and_keyed(tmp_path, ext):
    single = tmp_path / f"one{ext}"
    with h5py.File(single, "w") as handle:
        handle.create_dataset("ts", data=_series(8))
        handle.attrs["RepetitionTime"] = 2.2
    scan = load_scan(single)
    assert scan.tr == pytest.approx(2.2) and scan.timeseries.shape == (T, R) and scan.subject_id == "one"

    many = tmp_path / f"many{ext}"
    with h5py.File(many, "w") as handle:
        handle.create_dataset("subjects/s1", data=_series(9))
        handle.create_dataset("subjects/s2", data=_series(10))
    scan = load_scan(many, key="subjects/s2", tr=2.0)
    np.testing.assert_allclose(scan.timeseries, _series(10), rtol=1e-6)
    assert [s.subject_id for s in load_scans(many, tr=2.0)] == ["subjects/s1", "subjects/s2"]


def test_public_name_is_exported():
    assert fmrilm.load_scan is load_scan
    assert fmrilm.load_scans is load_scans


# --------------------------------------------------------------------------------------------------- NIfTI
AFFINE = np.array([[4.0, 0, 0, -20], [0, 4.0, 0, -20], [0, 0, 4.0, -20], [0, 0, 0, 1]])
BLOCKS = [(slice(1, 4), slice(1, 4), slice(1, 4)), (slice(6, 9), slice(1, 4), slice(1, 4)),
          (slice(1, 4), slice(6, 9), slice(6, 9))]  # fmt: skip


def _nifti_case(tmp_path, tr=2.0, unit="sec", n_time=50):
    """A 10^3 image whose three labelled blocks carry three known signals plus voxel noise."""
    rng = np.random.default_rng(11)
    t = np.arange(n_time)
    truth = np.stack([np.sin(2 * np.pi * f * t) for f in (0.03, 0.07, 0.11)], axis=1).astype(np.float32)
    data = rng.normal(scale=0.2, size=(10, 10, 10, n_time)).astype(np.float32)
    labels = np.zeros((10, 10, 10), dtype=np.int16)
    for value, (block, label) in enumerate(zip(BLOCKS, (5, 9, 2), strict=True)):
        labels[block] = label
        data[block] += truth[:, value]
    img = nib.Nifti1Image(data, AFFINE)
    img.header.set_xyzt_units("mm", unit)
    img.header.set_zooms((4.0, 4.0, 4.0, tr))
    img_path = tmp_path / "sub-07_bold.nii.gz"
    nib.save(img, img_path)
    labels_path = tmp_path / "toy_labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, AFFINE), labels_path)
    return img_path, labels_path, truth, labels


def test_nifti_labels_image_parcellates_back_to_region_signals(tmp_path):
    img_path, labels_path, truth, labels = _nifti_case(tmp_path)
    scan = load_scan(img_path, atlas=labels_path)
    assert scan.tr == 2.0 and scan.subject_id == "sub-07_bold"
    assert scan.timeseries.shape == (50, 3)
    assert scan.atlas.labels == ["2", "5", "9"]  # sorted label values
    # atlas order is by label value: 2 -> block 2, 5 -> block 0, 9 -> block 1
    for col, block in zip(range(3), (2, 0, 1), strict=True):
        assert np.corrcoef(scan.timeseries[:, col], truth[:, block])[0, 1] > 0.9


def test_nifti_tr_in_milliseconds_and_argument_override(tmp_path):
    img_path, labels_path, _, _ = _nifti_case(tmp_path, tr=1500.0, unit="msec")
    assert load_scan(img_path, atlas=labels_path).tr == pytest.approx(1.5)
    with pytest.warns(UserWarning, match="NIfTI header"):
        assert load_scan(img_path, atlas=labels_path, tr=2.0).tr == 2.0


def test_nifti_spheres_atlas(tmp_path):
    img_path, _, truth, _ = _nifti_case(tmp_path)
    centres = np.array([[-8.0, -8.0, -8.0], [12.0, -8.0, -8.0], [-8.0, 12.0, 12.0]])  # block centres in mm
    atlas = Atlas(
        name="toy_spheres", labels=["a", "b", "c"], coords=centres, networks=["x"] * 3, radius_mm=4.0
    )
    scan = load_scan(img_path, atlas=atlas)
    assert scan.timeseries.shape == (50, 3) and scan.atlas.name == "toy_spheres"
    for col in range(3):
        assert np.corrcoef(scan.timeseries[:, col], truth[:, col])[0, 1] > 0.9


def test_nifti_sphere_outside_image_is_zeroed_and_flagged(tmp_path):
    img_path, _, truth, _ = _nifti_case(tmp_path)
    centres = np.array([[-8.0, -8.0, -8.0], [300.0, 300.0, 300.0]])
    atlas = Atlas(name="toy", labels=["in", "out"], coords=centres, networks=["x"] * 2, radius_mm=4.0)
    with pytest.warns(UserWarning, match="bad region"):
        scan = load_scan(img_path, atlas=atlas)
    assert scan.flags["bad_regions"] == [1] and scan.flags["empty_regions"] == [1]
    assert (scan.timeseries[:, 1] == 0).all()
    assert np.corrcoef(scan.timeseries[:, 0], truth[:, 0])[0, 1] > 0.9


def test_bids_sidecar_overrides_a_disagreeing_nifti_header_with_a_warning(tmp_path):
    img_path, labels_path, _, _ = _nifti_case(tmp_path, tr=2.0)
    (tmp_path / "sub-07_bold.json").write_text(json.dumps({"RepetitionTime": 2.5}))
    with pytest.warns(UserWarning, match="sidecar.*2.5.*NIfTI header says 2.0"):
        assert load_scan(img_path, atlas=labels_path).tr == 2.5


def test_nifti_with_builtin_coordinate_atlas(tmp_path):
    """A built-in atlas name gives spheres at its MNI coordinates (Seitzman-300 ships a radius)."""
    affine = np.array([[6.0, 0, 0, -90], [0, 6.0, 0, -126], [0, 0, 6.0, -72], [0, 0, 0, 1]])
    data = np.random.default_rng(3).normal(size=(31, 37, 31, 24)).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((6.0, 6.0, 6.0, 2.0))
    path = tmp_path / "mni_bold.nii"
    nib.save(img, path)
    scan = load_scan(path, atlas="seitzman300")
    assert scan.timeseries.shape == (24, 300)
    assert scan.atlas.name == "seitzman300" and scan.tr == 2.0
    assert "bad_regions" not in scan.flags  # every sphere falls inside an MNI-sized field of view
