"""Signal preparation: bad regions, cleaning, resampling to the model TR, fixed-length windows.

Every scan reaches the tokenizer through :func:`scan_windows`, so scans from sites with different TRs, lengths
and defects become windows of the same duration and shape. Cleaning (detrend, band-pass, z-score) is nilearn's
``signal.clean``; resampling is scipy's polyphase filter; only the bad-region policy and the windowing are
written here, because no library does them the way a tokenizer needs (explicit flags, padding masks).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields, replace
from fractions import Fraction
from os import PathLike
from typing import Any

import numpy as np

from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan

BAD_REGION_POLICIES = ("repair", "reject")
#: A region whose non-finite samples are at most this fraction of the scan is interpolated over time;
#: beyond it the region carries too little signal to trust and is set to zero.
MAX_INTERPOLATED_FRACTION = 0.1
#: Largest denominator of the rational up/down factors used for resampling (keeps the TR error below ~1e-6).
MAX_RESAMPLE_DENOMINATOR = 1000


class BadRegionWarning(UserWarning):
    """A region was constant, all-zero or non-finite and was repaired (see ``scan.flags['bad_regions']``)."""


@dataclass
class SignalConfig:
    """How a scan is turned into windows; saved with every model so inference prepares scans like training."""

    target_tr: float | None = 2.0
    window_length: int = 48
    stride: int | None = None
    detrend: bool = True
    standardize: bool = True
    low_pass: float | None = None
    high_pass: float | None = None
    bad_regions: str = "repair"
    min_timepoints: int = 24

    def __post_init__(self) -> None:
        if self.bad_regions not in BAD_REGION_POLICIES:
            raise FmriInputError(
                f"Unknown bad-region policy '{self.bad_regions}'",
                fix=f"use one of {', '.join(BAD_REGION_POLICIES)}",
            )
        if self.target_tr is not None and not self.target_tr > 0:
            raise FmriInputError(
                f"target_tr must be positive seconds, got {self.target_tr}", fix="give e.g. target_tr=2.0"
            )
        if int(self.window_length) < 1:
            raise FmriInputError(
                f"window_length must be at least 1, got {self.window_length}",
                fix="give e.g. window_length=48",
            )
        if self.stride is not None and int(self.stride) < 1:
            raise FmriInputError(
                f"stride must be at least 1, got {self.stride}", fix="give a positive stride or None"
            )
        if int(self.min_timepoints) < 2:
            raise FmriInputError(
                f"min_timepoints must be at least 2, got {self.min_timepoints}", fix="give e.g. 24"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SignalConfig:
        """Build from a dict; unknown keys (from a newer version) are ignored rather than fatal."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# -------------------------------------------------------------------------------------------------- bad regions
def find_bad_regions(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of regions with non-finite samples, and of regions that are constant (incl. all-zero)."""
    finite = np.isfinite(ts)
    nonfinite = np.flatnonzero(~finite.all(axis=0))
    with np.errstate(invalid="ignore"):
        filled = np.where(finite, ts, 0.0)
        spread = np.ptp(filled, axis=0)
        scale = np.abs(filled).max(axis=0)
    # Constant within float32 precision: relative spread below 1e-6 of the region's magnitude.
    constant = np.flatnonzero((spread <= 1e-6 * np.maximum(scale, 1e-30)) & finite.all(axis=0))
    return nonfinite, constant


def check_regions(
    ts: np.ndarray,
    *,
    policy: str = "repair",
    file: str | PathLike | None = None,
    subject: str | None = None,
    warn: bool = True,
) -> tuple[np.ndarray, list[int]]:
    """Handle constant, all-zero and non-finite regions by an explicit policy; never silently.

    ``"repair"``: a region with few non-finite samples (at most ``MAX_INTERPOLATED_FRACTION``) is linearly
    interpolated over time; a region with more, or a constant / all-zero region, is set to zero, so it stays
    zero (not NaN) through detrending and z-scoring. The repaired indices are returned (and warned about with
    :class:`BadRegionWarning`) so the caller records them in ``scan.flags['bad_regions']``.
    ``"reject"``: any bad region raises :class:`FmriInputError`.
    """
    if policy not in BAD_REGION_POLICIES:
        raise FmriInputError(
            f"Unknown bad-region policy '{policy}'",
            fix=f"use one of {', '.join(BAD_REGION_POLICIES)}",
            file=file,
            subject=subject,
        )
    ts = np.asarray(ts, dtype=np.float32)
    if ts.ndim != 2:
        raise FmriInputError(
            f"Expected a (time, regions) array, got shape {ts.shape}",
            fix="give a 2D array with one column per region",
            file=file,
            subject=subject,
        )
    nonfinite, constant = find_bad_regions(ts)
    bad = sorted({int(i) for i in nonfinite} | {int(i) for i in constant})
    if not bad:
        return ts, []
    if policy == "reject":
        raise FmriInputError(
            f"{len(bad)} of {ts.shape[1]} regions are constant, all-zero or contain NaN/Inf "
            f"(region indices {_short_list(bad)})",
            fix="fix those regions in the data, or load with bad_regions='repair' to zero/interpolate and flag them",
            file=file,
            subject=subject,
        )
    if len(bad) == ts.shape[1]:
        raise FmriInputError(
            "Every region is constant, all-zero or non-finite, so the scan carries no signal",
            fix="check that the file holds the region time series (not e.g. a mask or a header-only export)",
            file=file,
            subject=subject,
        )
    fixed = ts.copy()
    t = np.arange(ts.shape[0])
    for r in nonfinite:
        ok = np.isfinite(fixed[:, r])
        if ok.sum() >= 2 and (1.0 - ok.mean()) <= MAX_INTERPOLATED_FRACTION:
            fixed[~ok, r] = np.interp(t[~ok], t[ok], fixed[ok, r])
            if np.ptp(fixed[:, r]) == 0:
                fixed[:, r] = 0.0
        else:
            fixed[:, r] = 0.0
    fixed[:, constant] = 0.0
    if warn:
        where = " ".join(
            x for x in (f"in '{file}'" if file else "", f"(subject '{subject}')" if subject else "") if x
        )
        warnings.warn(
            f"{len(bad)} bad region(s) {where} repaired (constant/all-zero set to 0, sparse NaN/Inf "
            f"interpolated): indices {_short_list(bad)}; recorded in scan.flags['bad_regions']",
            BadRegionWarning,
            stacklevel=2,
        )
    return fixed, bad


def _short_list(values: list[int], limit: int = 12) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")


# ------------------------------------------------------------------------------------------------- resampling
def resample(ts: np.ndarray, tr: float, target_tr: float) -> np.ndarray:
    """Resample ``(T, R)`` from ``tr`` to ``target_tr`` seconds with an anti-aliased polyphase filter.

    ``scipy.signal.resample_poly`` low-pass filters (Kaiser FIR) before decimating, so downsampling does not
    alias fast noise into the slow band, and unlike FFT resampling it does not assume the scan is periodic
    (no wrap-around ringing between the first and last volume). The rate ratio is approximated by a fraction
    with denominator <= ``MAX_RESAMPLE_DENOMINATOR`` (e.g. 2.5 s -> 2.0 s is up 5 / down 4); the edges are
    padded along a fitted line to avoid a step at either end.
    """
    from scipy.signal import resample_poly

    ts = np.asarray(ts, dtype=np.float32)
    if tr <= 0 or target_tr <= 0:
        raise FmriInputError(
            f"TR must be positive seconds, got tr={tr}, target_tr={target_tr}", fix="give the TR in seconds"
        )
    ratio = Fraction(float(tr) / float(target_tr)).limit_denominator(MAX_RESAMPLE_DENOMINATOR)
    up, down = ratio.numerator, ratio.denominator
    if up == down or ts.shape[0] == 0:
        return ts.copy()
    out = resample_poly(ts.astype(np.float64), up, down, axis=0, padtype="line")
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------------- preprocess
def preprocess(scan: Scan, config: SignalConfig | None = None) -> Scan:
    """Bad regions handled, detrended / band-passed at the native TR, resampled, then z-scored.

    Z-scoring comes last so the windows the tokenizer sees have exactly zero mean and unit variance per
    region whatever the resampling did; repaired regions are re-zeroed at the end so they stay exactly 0.
    """
    from nilearn.signal import clean

    config = config or SignalConfig()
    file, subject = scan.source, scan.subject_id
    ts = np.asarray(scan.timeseries, dtype=np.float32)
    if ts.ndim != 2:
        raise FmriInputError(
            f"Expected a (time, regions) array, got shape {ts.shape}",
            fix="give a 2D array with one column per region",
            file=file,
            subject=subject,
        )
    if ts.shape[0] < config.min_timepoints:
        raise FmriInputError(
            f"The scan has {ts.shape[0]} timepoints, fewer than the {config.min_timepoints} needed",
            fix="use a longer scan, or lower SignalConfig.min_timepoints if short scans are intended",
            file=file,
            subject=subject,
        )
    if not scan.tr or scan.tr <= 0:
        raise FmriInputError(
            f"The scan has no valid TR ({scan.tr})",
            fix="set the TR in seconds (tr= / --tr)",
            file=file,
            subject=subject,
        )
    known = {int(i) for i in scan.flags.get("bad_regions", [])}
    ts, bad = check_regions(ts, policy=config.bad_regions, file=file, subject=subject, warn=False)
    new = sorted(set(bad) - known)
    if new:
        warnings.warn(
            f"{len(new)} bad region(s) in '{file}' (subject '{subject}') repaired before cleaning: indices "
            f"{_short_list(new)}; recorded in scan.flags['bad_regions']",
            BadRegionWarning,
            stacklevel=2,
        )
    zero_cols = np.flatnonzero(~ts.any(axis=0))  # repaired to zero: must stay exactly zero
    if config.detrend or config.low_pass or config.high_pass:
        ts = clean(
            ts,
            detrend=config.detrend,
            standardize=None,
            filter="butterworth" if (config.low_pass or config.high_pass) else False,
            low_pass=config.low_pass,
            high_pass=config.high_pass,
            t_r=float(scan.tr),
        )
    tr = float(scan.tr)
    if config.target_tr is not None and not np.isclose(tr, config.target_tr, rtol=1e-6):
        ts = resample(ts, tr, config.target_tr)
        tr = float(config.target_tr)
    if config.standardize:
        ts = clean(ts, detrend=False, standardize="zscore_sample", filter=False, t_r=tr)
    ts = np.asarray(ts, dtype=np.float32)
    ts[:, zero_cols] = 0.0
    all_bad = sorted(known | set(bad))
    flags = dict(scan.flags)
    flags["bad_regions"] = all_bad
    flags["signal"] = config.to_dict()
    flags["native_tr"] = float(scan.flags.get("native_tr", scan.tr))
    return replace(scan, timeseries=ts, tr=tr, flags=flags)


# -------------------------------------------------------------------------------------------------- windowing
def make_windows(
    ts: np.ndarray, window_length: int, stride: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``(T, R)`` into ``(W, L, R)`` float32 windows with a ``(W, L)`` bool mask of real timepoints.

    Windows start at 0, stride, 2*stride, ... until one reaches the end; the last partial window is padded
    with zeros (mask False), and a scan shorter than one window gives a single padded window, so no
    timepoint is dropped and the tokenizer knows which samples are padding.
    """
    ts = np.asarray(ts, dtype=np.float32)
    if ts.ndim != 2:
        raise FmriInputError(
            f"Expected a (time, regions) array, got shape {ts.shape}", fix="give a 2D array (time, regions)"
        )
    length = int(window_length)
    step = int(stride) if stride else length
    if length < 1 or step < 1:
        raise FmriInputError(
            f"window_length and stride must be positive, got {window_length} and {stride}",
            fix="give e.g. window_length=48",
        )
    n_time, n_regions = ts.shape
    n_windows = 1 if n_time <= length else 1 + int(np.ceil((n_time - length) / step))
    starts = np.arange(n_windows) * step
    padded_len = int(starts[-1]) + length
    padded = np.zeros((padded_len, n_regions), dtype=np.float32)
    padded[:n_time] = ts
    valid = np.zeros(padded_len, dtype=bool)
    valid[:n_time] = True
    idx = starts[:, None] + np.arange(length)[None, :]
    return padded[idx], valid[idx]


def scan_windows(scan: Scan, config: SignalConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``preprocess`` then ``make_windows``: the windows the tokenizer reads from one scan."""
    config = config or SignalConfig()
    ready = preprocess(scan, config)
    return make_windows(ready.timeseries, config.window_length, config.stride)
