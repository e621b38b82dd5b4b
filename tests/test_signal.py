"""Signal preparation: bad-region policy, cleaning, resampling, windows with padding masks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan
from fmrilm.signal import (
    BadRegionWarning,
    SignalConfig,
    check_regions,
    make_windows,
    preprocess,
    resample,
    scan_windows,
)


def _scan(t=120, r=6, tr=2.0, seed=0) -> Scan:
    rng = np.random.default_rng(seed)
    ts = rng.normal(size=(t, r)) + np.linspace(0, 5, t)[:, None] + 50  # offset and drift
    return Scan(ts, tr=tr, scan_id="s0", source="mem.npy")


def _peak_frequency(x: np.ndarray, tr: float) -> float:
    spectrum = np.abs(np.fft.rfft(x - x.mean()))
    return float(np.fft.rfftfreq(len(x), d=tr)[np.argmax(spectrum)])


# ------------------------------------------------------------------------------------------------- config
def test_config_round_trips_and_rejects_bad_values():
    config = SignalConfig(target_tr=1.5, window_length=32, stride=16, low_pass=0.1, bad_regions="reject")
    assert SignalConfig.from_dict(config.to_dict()) == config
    assert SignalConfig.from_dict({**config.to_dict(), "from_a_newer_version": 1}) == config
    with pytest.raises(FmriInputError, match="bad-region policy"):
        SignalConfig(bad_regions="ignore")
    with pytest.raises(FmriInputError, match="window_length"):
        SignalConfig(window_length=0)


# ------------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize(
    "n_time,length,stride,expected_valid",
    [
        (100, 48, None, [48, 48, 4]),  # last partial window padded
        (96, 48, None, [48, 48]),  # exact multiple: no empty window
        (10, 48, None, [10]),  # shorter than a window: one padded window
        (96, 48, 24, [48, 48, 48]),  # overlapping
        (100, 48, 24, [48, 48, 48, 28]),
    ],
)
def test_windows_shapes_and_padding_mask(n_time, length, stride, expected_valid):
    ts = np.arange(n_time * 3, dtype=np.float32).reshape(n_time, 3) + 1  # no zero in the real data
    windows, mask = make_windows(ts, length, stride)
    assert windows.shape == (len(expected_valid), length, 3) and windows.dtype == np.float32
    assert mask.shape == (len(expected_valid), length) and mask.dtype == bool
    assert mask.sum(axis=1).tolist() == expected_valid
    assert (windows[~mask] == 0).all()  # padding is zero
    assert (windows[mask] != 0).all()
    step = stride or length
    for w in range(len(expected_valid)):
        valid = mask[w]
        np.testing.assert_array_equal(windows[w][valid], ts[w * step : w * step + valid.sum()])
    assert (mask[:, :1]).all()  # every window starts on real data


# ---------------------------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("tr,target", [(2.5, 2.0), (0.8, 2.0), (3.0, 2.0), (2.185, 2.0)])
def test_resampling_preserves_a_slow_sinusoid(tr, target):
    duration = 600.0
    n = int(duration / tr)
    t = np.arange(n) * tr
    freq = 0.04  # Hz, well below every Nyquist here
    ts = np.sin(2 * np.pi * freq * t)[:, None].astype(np.float32)
    out = resample(ts, tr, target)
    assert out.dtype == np.float32
    assert abs(out.shape[0] - n * tr / target) <= 1
    assert _peak_frequency(out[:, 0], target) == pytest.approx(freq, abs=1.0 / duration)
    expected = np.sin(2 * np.pi * freq * np.arange(out.shape[0]) * target)
    inner = slice(10, -10)  # away from the filter's edges
    assert np.corrcoef(out[inner, 0], expected[inner])[0, 1] > 0.99


def test_downsampling_is_anti_aliased():
    """A 0.4 Hz component above the 0.25 Hz Nyquist of TR 2 s must vanish, not fold into the slow band."""
    tr, n = 0.5, 1200
    t = np.arange(n) * tr
    slow = np.sin(2 * np.pi * 0.03 * t)
    fast = np.sin(2 * np.pi * 0.4 * t)
    out = resample(np.stack([slow + fast], axis=1), tr, 2.0)[20:-20, 0]
    expected = np.sin(2 * np.pi * 0.03 * (np.arange(out.size) + 20) * 2.0)
    assert np.std(out - expected) < 0.1  # naive decimation would leave an aliased 0.1 Hz wave of amplitude 1


# ---------------------------------------------------------------------------------------------- preprocess
def test_preprocess_standardizes_each_good_region_and_keeps_bad_ones_zero():
    scan = _scan(t=150, r=6, tr=2.5)
    ts = scan.timeseries.copy()
    ts[:, 1] = 0.0  # all-zero (ABIDE has these)
    ts[:, 4] = 7.0  # constant
    scan = Scan(ts, tr=2.5, scan_id="s1", source="mem.npy")
    with pytest.warns(BadRegionWarning, match="s1"):
        out = preprocess(scan, SignalConfig(target_tr=2.0))
    assert out.tr == 2.0 and out.flags["native_tr"] == 2.5
    assert out.timeseries.shape == (round(150 * 2.5 / 2.0), 6)
    assert out.flags["bad_regions"] == [1, 4]
    good = [0, 2, 3, 5]
    np.testing.assert_allclose(out.timeseries[:, good].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out.timeseries[:, good].std(axis=0, ddof=1), 1, atol=1e-4)
    assert (out.timeseries[:, [1, 4]] == 0).all()
    assert scan.timeseries[0, 4] == 7.0  # the input scan is not modified


def test_preprocess_detrends():
    t = np.arange(200)
    ts = np.stack([0.05 * t + np.sin(t / 5.0), -0.02 * t + np.cos(t / 7.0)], axis=1)
    out = preprocess(Scan(ts, tr=2.0), SignalConfig(target_tr=None, standardize=False)).timeseries
    for col in range(2):
        slope = np.polyfit(t, out[:, col], 1)[0]
        assert abs(slope) < 1e-4


def test_band_pass_removes_fast_component():
    tr, n = 1.0, 400
    t = np.arange(n) * tr
    ts = np.stack([np.sin(2 * np.pi * 0.03 * t) + np.sin(2 * np.pi * 0.3 * t)], axis=1)
    config = SignalConfig(target_tr=None, standardize=False, low_pass=0.1)
    out = preprocess(Scan(ts, tr=tr), config).timeseries[:, 0]
    spectrum = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(n, d=tr)
    assert spectrum[np.argmin(abs(freqs - 0.3))] < 0.05 * spectrum[np.argmin(abs(freqs - 0.03))]


def test_scan_windows_cover_the_resampled_scan():
    scan = _scan(t=130, r=4, tr=3.0)
    config = SignalConfig(target_tr=2.0, window_length=48)
    windows, mask = scan_windows(scan, config)
    n_resampled = preprocess(scan, config).n_timepoints
    assert windows.shape == (int(np.ceil(n_resampled / 48)), 48, 4)
    assert mask.sum() == n_resampled
    assert np.isfinite(windows).all()


def test_preprocess_refuses_too_short_scan():
    with pytest.raises(FmriInputError, match="10 timepoints.*Fix:"):
        preprocess(_scan(t=10), SignalConfig())


# --------------------------------------------------------------------------------------------- bad regions
def test_check_regions_repairs_sparse_nan_by_interpolation_and_zeroes_mostly_nan():
    ts = np.tile(np.arange(50, dtype=np.float32)[:, None], (1, 4))
    ts[:, 3] = np.random.default_rng(0).normal(size=50)
    ts[[10, 11], 0] = np.nan  # 4%: interpolated
    ts[5, 2] = np.inf
    ts[:30, 1] = np.nan  # 60%: zeroed
    with pytest.warns(BadRegionWarning, match="3 bad region"):
        fixed, bad = check_regions(ts, policy="repair", file="x.1D", subject="s9")
    assert bad == [0, 1, 2]
    np.testing.assert_allclose(fixed[:, 0], np.arange(50))  # linear ramp restored exactly
    np.testing.assert_allclose(fixed[:, 2], np.arange(50))
    assert (fixed[:, 1] == 0).all()
    np.testing.assert_array_equal(fixed[:, 3], ts[:, 3])
    assert np.isfinite(fixed).all()


def test_check_regions_clean_input_is_untouched_and_silent():
    ts = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed, bad = check_regions(ts)
    assert bad == [] and np.array_equal(fixed, ts)


def test_reject_policy_raises_with_region_indices():
    ts = np.random.default_rng(2).normal(size=(40, 3))
    ts[:, 2] = 0
    with pytest.raises(FmriInputError, match=r"region indices 2.*Fix:.*bad_regions='repair'"):
        check_regions(ts, policy="reject", file="a.csv", subject="s2")
    scan = Scan(ts, tr=2.0, scan_id="s2", source="a.csv")
    with pytest.raises(FmriInputError, match="'a.csv' and subject 's2'"):
        preprocess(scan, SignalConfig(bad_regions="reject"))


def test_every_abide_scan_preprocesses_to_finite_output(abide_dir):
    import pandas as pd

    trs = pd.read_csv(abide_dir / "phenotypes.csv").set_index("FILE_ID")["TR"]
    config = SignalConfig()
    n_flagged = 0
    with np.load(abide_dir / "timeseries_cc200.npz") as archive:
        for file_id in archive.files:
            scan = Scan(archive[file_id], tr=float(trs[file_id]), scan_id=file_id)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BadRegionWarning)
                out = preprocess(scan, config)
            assert np.isfinite(out.timeseries).all(), file_id
            bad = out.flags["bad_regions"]
            n_flagged += bool(bad)
            assert (out.timeseries[:, bad] == 0).all(), file_id
    assert n_flagged > 0  # the real data does have constant-zero ROI columns


# ------------------------------------------------------------------------------------- edges of every setting
def test_each_setting_is_refused_below_its_smallest_value_and_accepted_at_it():
    for bad, words in (
        ({"target_tr": 0}, "target_tr must be positive seconds, got 0"),
        ({"window_length": 0}, "window_length must be at least 1, got 0"),
        ({"stride": 0}, "stride must be at least 1, got 0"),
        ({"min_timepoints": 1}, "min_timepoints must be at least 2, got 1"),
    ):
        with pytest.raises(FmriInputError, match=f"{words}.*Fix: give"):
            SignalConfig(**bad)
    smallest = SignalConfig(target_tr=None, window_length=1, stride=1, min_timepoints=2)
    windows, mask = make_windows(np.ones((3, 2)), smallest.window_length, smallest.stride)
    assert windows.shape == (3, 1, 2) and mask.all()


def test_a_quiet_region_beside_a_loud_one_is_not_called_constant():
    """Constancy is judged against each region's own magnitude: a region varying by 1e-3 around 0 is signal,
    even next to a region at 1e4 (a global scale would flag it), while a truly flat one is flagged."""
    rng = np.random.default_rng(3)
    ts = np.stack([1e4 + rng.normal(size=60), 1e-3 * rng.normal(size=60), np.full(60, 7.0)], axis=1).astype(
        np.float32
    )
    with pytest.warns(BadRegionWarning):
        fixed, bad = check_regions(ts)
    assert bad == [2]
    np.testing.assert_array_equal(fixed[:, 1], ts[:, 1])


def test_a_scan_without_any_usable_region_is_one_clear_error():
    ts = np.zeros((40, 3))
    ts[:, 1] = np.nan
    with pytest.raises(
        FmriInputError, match="Every region is constant.*Fix: check that the file holds the region"
    ):
        check_regions(ts, file="mask.nii.csv")


def test_the_reject_message_lists_the_bad_regions_and_counts_a_long_list():
    ts = np.random.default_rng(2).normal(size=(30, 20))
    ts[:, [1, 3]] = 5.0
    with pytest.raises(FmriInputError, match=r"2 of 20 regions .* \(region indices 1, 3\)\. Fix:"):
        check_regions(ts, policy="reject")
    ts[:, :15] = 0.0
    with pytest.raises(FmriInputError, match=r"region indices 0, 1, .*, 11, \.\.\. \(15 in all\)\)"):
        check_regions(ts, policy="reject")


def test_resampling_returns_float32_also_when_the_tr_already_matches():
    ts = np.random.default_rng(0).normal(size=(20, 2))  # float64 in
    same = resample(ts, 2.0, 2.0)
    assert same.dtype == np.float32 and np.allclose(same, ts, atol=1e-6)
    assert resample(ts, 2.5, 2.0).dtype == np.float32


def test_refusals_of_a_scan_name_its_subject_and_the_fix():
    short = Scan(np.random.default_rng(0).normal(size=(10, 3)), tr=2.0, scan_id="s", subject_id="sub-7")
    with pytest.raises(FmriInputError) as err:
        preprocess(short)
    assert err.value.subject == "sub-7" and "sub-7" in str(err.value)
    no_tr = _scan()
    no_tr.tr = 0.0
    with pytest.raises(FmriInputError, match=r"no valid TR \(0.0\).*Fix: set the TR in seconds"):
        preprocess(no_tr)


def test_regions_already_flagged_are_kept_without_a_second_warning():
    scan = _scan()
    scan.timeseries[:, 4] = 3.0  # constant: repaired to zero
    scan.flags["bad_regions"] = [4, 1]  # 4 was flagged when loaded; 1 by an earlier step
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing new to warn about
        ready = preprocess(scan)
    assert ready.flags["bad_regions"] == [1, 4] and (ready.timeseries[:, 4] == 0).all()
    scan.timeseries[:, 0] = 0.0
    with pytest.warns(BadRegionWarning, match=r"1 bad region\(s\) .* indices 0;"):
        assert preprocess(scan).flags["bad_regions"] == [0, 1, 4]
