"""Each bad scan input fails with one clear FmriInputError that names the file, the subject and a fix."""

from __future__ import annotations

import gzip
import re

import h5py
import nibabel as nib
import numpy as np
import pytest

from fmrilm.atlas import Atlas
from fmrilm.errors import FmriInputError
from fmrilm.io import load_scan, load_scans
from fmrilm.signal import BadRegionWarning

T, R = 40, 4


def _data(t=T, r=R, seed=0):
    return np.random.default_rng(seed).normal(size=(t, r)).astype(np.float32)


def _atlas(n=R):
    return Atlas(name="toy", labels=[str(i) for i in range(n)], coords=np.zeros((n, 3)), networks=["x"] * n)


def _raises(path, subject, match, **kwargs):
    """Load and check the error: the problem matches, and the message names file, subject and a fix."""
    with pytest.raises(FmriInputError, match=match) as info:
        load_scan(path, **kwargs)
    message = str(info.value)
    assert f"'{path}'" in message, message
    assert f"subject '{subject}'" in message, message
    assert re.search(r"Fix: \S", message), message
    return info.value


def _write_csv(path, data):
    path.write_text("\n".join(",".join(str(v) for v in row) for row in data) + "\n")


# ------------------------------------------------------------------------------------------------- the file
def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.1D", "nope", "not found", tr=2.0)


def test_folder_instead_of_file(tmp_path):
    (tmp_path / "scans.csv").mkdir()
    _raises(tmp_path / "scans.csv", "scans", "folder", tr=2.0)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "sub-1.xlsx"
    path.write_bytes(b"PK\x03\x04")
    error = _raises(path, "sub-1", "Unsupported file type '.xlsx'", tr=2.0)
    assert ".1D" in error.fix and ".nii.gz" in error.fix


@pytest.mark.parametrize(
    "name,content,what",
    [
        ("s.npy", b"\x93NUMPY garbage", "NumPy .npy"),
        ("s.npz", b"PK\x03\x04 not a zip", "NumPy .npz"),
        ("s.h5", b"\x89HDF\r\n\x1a\n broken", "HDF5"),
        ("s.nii.gz", gzip.compress(b"\x00" * 100), "NIfTI"),
        ("s.csv", b"\xff\xfe\x00\xd8 binary \x00\x9c", "text table"),
    ],
)
def test_corrupt_file(tmp_path, name, content, what):
    path = tmp_path / name
    path.write_bytes(content)
    kwargs = {"atlas": _atlas()} if name.endswith(".nii.gz") else {}
    _raises(path, "s", f"Cannot read the file as .*{what}", tr=2.0, **kwargs)


def test_truncated_nifti(tmp_path):
    img = nib.Nifti1Image(np.zeros((6, 6, 6, 30), np.float32), np.eye(4))
    full = tmp_path / "full.nii"
    nib.save(img, full)
    path = tmp_path / "cut.nii"
    path.write_bytes(full.read_bytes()[:2000])
    _raises(path, "cut", "Cannot read the file as a NIfTI", atlas=_atlas(), tr=2.0)


def test_ragged_table(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("1,2,3\n4,5,6\n7,8,9,10,11\n")
    _raises(path, "ragged", "Cannot read the file as a text table", tr=2.0)


def test_empty_table(tmp_path):
    path = tmp_path / "empty.1D"
    path.write_text("#1\t#2\n\n")
    _raises(path, "empty", "empty", tr=2.0)


# -------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", [(T,), (T, R, 2)])
def test_array_not_2d(tmp_path, shape):
    path = tmp_path / "odd.npy"
    np.save(path, np.ones(shape, np.float32))
    _raises(path, "odd", re.escape(f"got shape {shape}"), tr=2.0)


def test_nifti_without_atlas(tmp_path):
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5, 30), np.float32), np.eye(4)), path)
    error = _raises(path, "bold", "needs an atlas", tr=2.0)
    assert "atlas=" in error.fix


def test_nifti_3d_image(tmp_path):
    path = tmp_path / "anat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.float32), np.eye(4)), path)
    _raises(path, "anat", "Expected a 4D NIfTI", atlas=_atlas(), tr=2.0)


def test_nifti_atlas_without_labels_image_or_radius(tmp_path):
    path = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5, 30), np.float32), np.eye(4)), path)
    _raises(path, "bold", "neither a labels image nor a sphere radius", atlas=_atlas(), tr=2.0)


def test_transposed_table(tmp_path):
    path = tmp_path / "sub-t.csv"
    _write_csv(path, _data(t=T, r=R).T)  # regions x time
    error = _raises(path, "sub-t", "looks transposed", atlas=_atlas(R), tr=2.0)
    assert "transpose" in error.fix


def test_too_few_timepoints(tmp_path):
    path = tmp_path / "short.npy"
    np.save(path, _data(t=10))
    _raises(path, "short", "10 timepoints, fewer than the 24 needed", tr=2.0)


def test_region_count_mismatch_with_atlas(tmp_path):
    path = tmp_path / "sub-m.npy"
    np.save(path, _data(r=5))
    _raises(path, "sub-m", "5 region columns but atlas 'toy' has 4", atlas=_atlas(4), tr=2.0)


def test_non_numeric_cell(tmp_path):
    path = tmp_path / "sub-n.csv"
    rows = [",".join(f"{v:.3f}" for v in row) for row in _data()]
    rows[6] = rows[6].replace(rows[6].split(",")[2], "n/a?", 1)
    path.write_text("a,b,c,d\n" + "\n".join(rows) + "\n")
    _raises(path, "sub-n", r"Non-numeric cell 'n/a\?' at line 8, column 'c'", tr=2.0)


def test_non_numeric_array(tmp_path):
    path = tmp_path / "sub-s.npy"
    np.save(path, np.array([["a"] * R] * T))
    _raises(path, "sub-s", "non-numeric type", tr=2.0)


# ------------------------------------------------------------------------------------------- bad regions
def _with_bad_regions():
    data = _data(t=T, r=6)
    data[3, 0] = np.nan
    data[:, 2] = np.inf
    data[:, 4] = 0.0
    data[:, 5] = 3.5
    return data


def test_bad_regions_rejected(tmp_path):
    path = tmp_path / "sub-b.npy"
    np.save(path, _with_bad_regions())
    error = _raises(
        path, "sub-b", r"4 of 6 regions .* \(region indices 0, 2, 4, 5\)", tr=2.0, bad_regions="reject"
    )
    assert "bad_regions='repair'" in error.fix


def test_bad_regions_repaired_and_flagged(tmp_path):
    path = tmp_path / "sub-b.npy"
    np.save(path, _with_bad_regions())
    with pytest.warns(BadRegionWarning, match=r"sub-b.*indices 0, 2, 4, 5"):
        scan = load_scan(path, tr=2.0)
    assert scan.flags["bad_regions"] == [0, 2, 4, 5]
    assert np.isfinite(scan.timeseries).all()
    assert (scan.timeseries[:, [2, 4, 5]] == 0).all()
    assert scan.timeseries[3, 0] != 0  # one NaN sample is interpolated, not zeroed


def test_all_regions_bad(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, np.zeros((T, R), np.float32))
    _raises(path, "flat", "Every region is constant", tr=2.0)


def test_unknown_bad_region_policy(tmp_path):
    path = tmp_path / "sub-p.npy"
    np.save(path, _data())
    _raises(path, "sub-p", "Unknown bad-region policy 'ignore'", tr=2.0, bad_regions="ignore")


# ------------------------------------------------------------------------------------------ atlas and TR
def test_unknown_atlas(tmp_path):
    path = tmp_path / "sub-a.npy"
    np.save(path, _data())
    error = _raises(path, "sub-a", "Unknown atlas 'aal-9000'", atlas="aal-9000", tr=2.0)
    assert "seitzman300" in error.fix


def test_no_tr_known(tmp_path):
    path = tmp_path / "sub-r.csv"
    _write_csv(path, _data())
    error = _raises(path, "sub-r", "No TR is known")
    assert "tr=" in error.fix and "--tr" in error.fix


def test_tr_in_milliseconds(tmp_path):
    path = tmp_path / "sub-ms.npy"
    np.save(path, _data())
    _raises(path, "sub-ms", "looks like milliseconds", tr=2000)


# ------------------------------------------------------------------------------------------ keyed archives
def test_archive_with_many_arrays_needs_a_key(tmp_path):
    path = tmp_path / "cohort.npz"
    np.savez(path, a=_data(), b=_data())
    with pytest.raises(FmriInputError, match=r"holds 2 arrays .*Fix: pass key=") as info:
        load_scan(path, tr=2.0)
    assert f"'{path}'" in str(info.value)


def test_archive_unknown_key(tmp_path):
    path = tmp_path / "cohort.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("a", data=_data())
    _raises(path, "zz", "No array named 'zz'", key="zz", tr=2.0)


def test_bad_array_inside_archive_names_its_key(tmp_path):
    path = tmp_path / "cohort.npz"
    np.savez(path, good=_data(), short=_data(t=5))
    with pytest.raises(FmriInputError, match=r"subject 'short'.*array 'short'.*5 timepoints"):
        load_scans(path, tr=2.0)
