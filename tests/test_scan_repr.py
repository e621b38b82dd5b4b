"""`print(scan)` is one line that says what the scan is (not hundreds of lines of numbers)."""

from __future__ import annotations

import warnings

import numpy as np

from fmrilm import load_scan
from fmrilm.atlas import Atlas
from fmrilm.scan import Scan


def test_a_loaded_scan_prints_as_one_line_with_id_shape_tr_atlas_and_its_repairs(tmp_path):
    ts = np.random.default_rng(0).standard_normal((200, 160)).astype(np.float32)
    ts[:, [3, 17]] = 0.0  # two empty regions: repaired and recorded in the flags
    np.save(tmp_path / "sub-01.npy", ts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = load_scan(tmp_path / "sub-01.npy", atlas="dosenbach160", tr=2.0)
    assert sorted(scan.flags["bad_regions"]) == [3, 17]
    text = repr(scan)
    assert text == str(scan)  # what print shows
    assert "\n" not in text and len(text) < 200
    assert text.startswith("Scan(id='sub-01', shape=(200, 160), tr=2, atlas='dosenbach160', flags: ")
    assert "bad_regions (2)" in text


def test_flags_are_summarised_and_a_scan_without_atlas_or_flags_says_so():
    atlas = Atlas.builtin("dosenbach160")
    scan = Scan(
        np.zeros((50, 160)),
        tr=0.72,
        atlas=atlas,
        scan_id="sub-02_ses-1",
        flags={"bad_regions": [1, 2, 3], "signal": {"detrend": True}, "native_tr": 2.5, "note": "x" * 100},
    )
    text = repr(scan)
    assert "tr=0.72" in text and "bad_regions (3), signal, native_tr=2.5, note=" in text
    assert "\n" not in text and len(text) < 160  # a long value is cut
    bare = repr(Scan(np.zeros((10, 4)), tr=1.0))
    assert bare == "Scan(id='scan', shape=(10, 4), tr=1, atlas=None, flags: none)"
