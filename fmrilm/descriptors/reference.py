"""Reference statistics: what a descriptor is measured against, fitted on a population and saved as JSON.

A descriptor says "coupling between the visual and default-mode networks is somewhat elevated (z = 1.4)": the
z needs a population mean and SD per feature, and two families also need group-level objects (the group
gradients that windows are aligned to and the group ICA they are projected on). All of that lives here, in one
self-contained JSON file, so a trained model carries the exact statistics its corpus was written with.

Statistics are kept per unit: ``"window"`` (features of one ``SignalConfig`` window) and ``"scan"`` (features of a
whole preprocessed scan), because a 48-timepoint correlation is far noisier than a 200-timepoint one and the two
must not share an SD. Fit them on training scans only; fitting on test scans leaks the test population into the
z values.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmrilm.atlas import Atlas
from fmrilm.descriptors.connectivity import correlation, fisher_z
from fmrilm.descriptors.features import FAMILIES, FeatureConfig, FeatureExtractor, feature_names
from fmrilm.descriptors.gradients import group_gradients
from fmrilm.descriptors.ica import GroupICA
from fmrilm.errors import FmriInputError
from fmrilm.scan import Scan

FORMAT_VERSION = 1
UNITS = ("window", "scan")
#: z values are clipped to this magnitude: beyond it the number says nothing more and only hurts models.
Z_CLIP = 10.0
#: A feature whose reference SD is below this is treated as constant (z = 0).
MIN_SD = 1e-9


@dataclass
class Descriptor:
    """The descriptor of one window (``window >= 0``) or of a whole scan (``window == -1``)."""

    scan_id: str
    subject_id: str
    window: int
    z: np.ndarray
    texts: dict[str, str]

    @property
    def text(self) -> str:
        """All families' sentences, in family order."""
        return " ".join(self.texts[f] for f in FAMILIES if self.texts.get(f))


def timeseries_key(ts: np.ndarray) -> str:
    """A content key of a preprocessed series (shape, dtype and bytes): what features were computed from."""
    import hashlib

    arr = np.ascontiguousarray(ts)
    digest = hashlib.sha1(f"{arr.shape}{arr.dtype}".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


class FittedFeatures(dict):
    """The features `ReferenceStats.fit` computed for its scans: ``scan id -> (timeseries_key, {unit: (values,
    index)})``. `lookup` hands them back only for the very series they came from (checked by content)."""

    def lookup(self, scan_id: str, ts: np.ndarray, unit: str) -> tuple[np.ndarray, np.ndarray] | None:
        entry = self.get(str(scan_id))
        if entry is None or unit not in entry[1] or entry[0] != timeseries_key(ts):
            return None
        values, index = entry[1][unit]
        return values.copy(), index.copy()

    def subset(self, scan_ids: Iterable[str]) -> FittedFeatures:
        """The entries of ``scan_ids`` (what one worker's share of a corpus needs)."""
        return FittedFeatures({str(i): self[str(i)] for i in scan_ids if str(i) in self})


def _unit_features(ref: ReferenceStats, ts: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every unit's features of one preprocessed series (one task of `ReferenceStats.fit`'s second pass)."""
    return {unit: ref.features_from_timeseries(ts, unit) for unit in UNITS}


@dataclass
class ReferenceStats:
    """Population statistics of every descriptor feature plus the group gradients and group ICA."""

    atlas: Atlas
    signal_config: Any  # fmrilm.signal.SignalConfig
    feature_config: FeatureConfig
    tr: float
    group_gradients: np.ndarray
    ica: GroupICA
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        #: features of the scans it was fitted on, when `fit` was asked to keep them (never saved)
        self.fitted_features = FittedFeatures()
        self.group_gradients = np.asarray(self.group_gradients, dtype=np.float64)
        self._extractor = FeatureExtractor(
            self.atlas, self.feature_config, self.group_gradients, self.ica, float(self.tr)
        )

    # -------------------------------------------------------------------------------------------- features
    @property
    def extractor(self) -> FeatureExtractor:
        return self._extractor

    @property
    def feature_names(self) -> list[str]:
        return self._extractor.names

    def features(self, scan: Scan, unit: str = "window") -> tuple[np.ndarray, np.ndarray]:
        """Raw features ``(N, F)`` of a scan's windows (``unit="window"``) or of the whole scan (``"scan"``).

        Returns the features and the index of each row's window (``[-1]`` for the whole scan). Windows with
        fewer than ``feature_config.min_valid`` real timepoints are skipped.
        """
        _check_unit(unit)
        ts = self.prepare(scan)
        return self.features_from_timeseries(ts, unit)

    def prepare(self, scan: Scan) -> np.ndarray:
        """The scan preprocessed with the reference's SignalConfig, after checking it fits the reference."""
        from fmrilm.signal import preprocess

        if scan.n_regions != self.atlas.n_regions:
            raise FmriInputError(
                f"The scan has {scan.n_regions} regions but the reference statistics were fitted on atlas "
                f"'{self.atlas.name}' with {self.atlas.n_regions}",
                file=scan.source,
                subject=scan.subject_id,
                fix="parcellate the scan with the reference's atlas, or fit reference statistics on this atlas",
            )
        ready = preprocess(scan, self.signal_config)
        if not np.isclose(ready.tr, self.tr, rtol=1e-4):
            raise FmriInputError(
                f"The scan's TR after preprocessing is {ready.tr} s but the reference statistics use {self.tr} s",
                file=scan.source,
                subject=scan.subject_id,
                fix="set SignalConfig.target_tr so every scan is resampled to one TR",
            )
        return ready.timeseries

    def features_from_timeseries(self, ts: np.ndarray, unit: str = "window") -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`features` for an already preprocessed ``(T, R)`` array at the reference TR."""
        from fmrilm.signal import make_windows

        _check_unit(unit)
        if unit == "scan":
            values, _ = self._extractor.compute(ts[None])
            return values, np.full(len(values), -1)
        windows, mask = make_windows(ts, self.signal_config.window_length, self.signal_config.stride)
        return self._extractor.compute(windows, mask)

    def zscore(self, values: np.ndarray, unit: str = "window") -> np.ndarray:
        """z values ``(N, F)`` against the reference; NaN features (undefined in that window) stay NaN."""
        _check_unit(unit)
        if unit not in self.stats:
            raise FmriInputError(
                f"These reference statistics have no '{unit}' statistics",
                fix="refit them with ReferenceStats.fit (it fits both units)",
            )
        mean = np.asarray(self.stats[unit]["mean"], dtype=np.float64)
        sd = np.asarray(self.stats[unit]["sd"], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            z = np.where(
                sd > MIN_SD, (np.asarray(values, dtype=np.float64) - mean) / np.where(sd > 0, sd, 1), 0.0
            )
        return np.clip(z, -Z_CLIP, Z_CLIP)

    def describe(self, scan: Scan, unit: str = "window", seed: int = 0) -> list[Descriptor]:
        """Descriptors (z vector + text per family) of a scan's windows or of the whole scan."""
        values, index = self.features(scan, unit)
        return self.describe_values(values, index, scan.scan_id, str(scan.subject_id), unit, seed)

    def describe_values(
        self,
        values: np.ndarray,
        index: np.ndarray,
        scan_id: str,
        subject_id: str,
        unit: str = "window",
        seed: int = 0,
    ) -> list[Descriptor]:
        from fmrilm.descriptors.text import render

        z = self.zscore(values, unit)
        context = self.text_context()
        names = self.feature_names
        out = []
        for row, w in zip(z, index, strict=True):
            texts = render(row, names, context, seed=window_seed(seed, scan_id, int(w)))
            out.append(Descriptor(scan_id, subject_id, int(w), row.astype(np.float32), texts))
        return out

    def text_context(self):
        from fmrilm.descriptors.text import TextContext

        if getattr(self, "_context", None) is None:
            self._context = TextContext.from_reference(self)
        return self._context

    # ------------------------------------------------------------------------------------------------- fit
    @classmethod
    def fit(
        cls,
        data: Any,
        atlas: Atlas | None = None,
        signal_config: Any = None,
        feature_config: FeatureConfig | None = None,
        *,
        max_scans: int | None = None,
        seed: int = 0,
        progress: bool = True,
        n_jobs: int = 1,
        keep_features: bool = False,
    ) -> ReferenceStats:
        """Fit on a Cohort or a sequence of Scans (training scans only).

        Two passes: the group objects first (group gradients from the mean whole-scan Fisher-z matrix; group
        ICA on the concatenated preprocessed series), then every feature of every window and every whole scan,
        whose mean and SD become the statistics. ``max_scans`` evenly subsamples a large cohort. ``n_jobs``
        worker processes compute the second pass (joblib; the same statistics). ``keep_features`` keeps each
        scan's features in ``fitted_features`` (`FittedFeatures`), so describing the same scans afterwards
        (a corpus of the cohort the reference was fitted on) need not compute them again.
        """
        from fmrilm.progress import progress as show_progress
        from fmrilm.signal import SignalConfig, preprocess

        signal_config = signal_config or SignalConfig()
        feature_config = feature_config or FeatureConfig()
        scans, n_scans, atlas, name = _scan_source(data, atlas, max_scans)
        if atlas.n_regions < feature_config.n_gradients + 2:
            raise FmriInputError(
                f"Atlas '{atlas.name}' has {atlas.n_regions} regions, too few for "
                f"{feature_config.n_gradients} gradients",
                fix="use an atlas with more regions (descriptors are meant for tens to hundreds)",
            )
        ready: list[np.ndarray] = []
        ids: list[str] = []
        subjects: set[str] = set()
        tr = None
        for scan in show_progress(scans, total=n_scans, desc="reference: preprocess", disable=not progress):
            if scan.n_regions != atlas.n_regions:
                raise FmriInputError(
                    f"The scan has {scan.n_regions} regions but atlas '{atlas.name}' has {atlas.n_regions}",
                    file=scan.source,
                    subject=scan.subject_id,
                    fix="fit reference statistics on scans of one atlas",
                )
            prepared = preprocess(scan, signal_config)
            if tr is None:
                tr = float(prepared.tr)
            elif not np.isclose(prepared.tr, tr, rtol=1e-4):
                raise FmriInputError(
                    f"Scans have different TRs ({prepared.tr} s and {tr} s) after preprocessing",
                    file=scan.source,
                    subject=scan.subject_id,
                    fix="set SignalConfig.target_tr so every scan is resampled to one TR",
                )
            ready.append(prepared.timeseries)
            ids.append(scan.scan_id)
            subjects.add(str(scan.subject_id))
        if len(ready) < 2:
            raise FmriInputError(
                f"Reference statistics need at least 2 scans, got {len(ready)}",
                fix="fit on a cohort with more scans (ideally hundreds)",
            )
        mean_z = np.mean([fisher_z(correlation(ts[None]))[0] for ts in ready], axis=0)
        r_mean = np.tanh(mean_z)
        np.fill_diagonal(r_mean, 1.0)
        gradients = group_gradients(r_mean, feature_config.n_gradients, feature_config.gradient_sparsity)
        ica = GroupICA.fit(ready, atlas, feature_config.n_components, seed=seed)
        ref = cls(
            atlas=atlas,
            signal_config=signal_config,
            feature_config=feature_config,
            tr=tr,
            group_gradients=gradients,
            ica=ica,
        )
        per_unit: dict[str, list[np.ndarray]] = {u: [] for u in UNITS}
        shown = show_progress(ready, desc="reference: features", disable=not progress)
        if int(n_jobs) > 1 and len(ready) > 1:
            from joblib import Parallel, delayed

            every = Parallel(n_jobs=int(n_jobs), return_as="generator")(
                delayed(_unit_features)(ref, ts) for ts in shown
            )
        else:
            every = (_unit_features(ref, ts) for ts in shown)
        kept: dict[str, tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]] = {}
        for scan_id, ts, features in zip(ids, ready, every, strict=True):
            for unit in UNITS:
                per_unit[unit].append(features[unit][0])
            if keep_features:
                kept[scan_id] = (timeseries_key(ts), features)
        ref.fitted_features = FittedFeatures(kept)
        for unit in UNITS:
            values = np.concatenate(per_unit[unit], axis=0)
            ref.stats[unit] = _moments(values)
        ref.meta = {
            "cohort": name,
            "n_scans": len(ready),
            "n_subjects": len(subjects),
            "scan_ids": ids,
            "seed": seed,
        }
        return ref

    # ------------------------------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "fmrilm-reference-stats",
            "version": FORMAT_VERSION,
            "atlas": self.atlas.to_dict(),
            "signal_config": self.signal_config.to_dict(),
            "feature_config": self.feature_config.to_dict(),
            "tr": float(self.tr),
            "feature_names": self.feature_names,
            "group_gradients": self.group_gradients.tolist(),
            "ica": self.ica.to_dict(),
            "stats": {
                unit: {"mean": _json_list(s["mean"]), "sd": _json_list(s["sd"]), "n": int(s["n"])}
                for unit, s in self.stats.items()
            },
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceStats:
        from fmrilm.signal import SignalConfig

        if data.get("format") != "fmrilm-reference-stats":
            raise FmriInputError(
                "Not a reference statistics file", fix="give a reference.json written by ReferenceStats.save"
            )
        atlas = Atlas.from_dict(data["atlas"])
        ref = cls(
            atlas=atlas,
            signal_config=SignalConfig.from_dict(data["signal_config"]),
            feature_config=FeatureConfig.from_dict(data["feature_config"]),
            tr=float(data["tr"]),
            group_gradients=np.asarray(data["group_gradients"], dtype=np.float64),
            ica=GroupICA.from_dict(data["ica"]),
            stats={
                unit: {
                    "mean": np.array([np.nan if v is None else v for v in s["mean"]], dtype=np.float64),
                    "sd": np.array([np.nan if v is None else v for v in s["sd"]], dtype=np.float64),
                    "n": int(s["n"]),
                }
                for unit, s in data.get("stats", {}).items()
            },
            meta=data.get("meta", {}),
        )
        if ref.feature_names != list(data.get("feature_names", ref.feature_names)):
            raise FmriInputError(
                "The reference statistics list different features than this version of fmrilm computes",
                fix="refit the reference statistics with this version",
            )
        return ref

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.to_dict(), fh, allow_nan=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceStats:
        path = Path(path)
        if not path.exists():
            raise FmriInputError("Reference statistics file not found", file=path, fix="check the path")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise FmriInputError(
                f"The reference statistics file is not valid JSON ({exc})", file=path, fix="refit and save it"
            ) from exc
        try:
            return cls.from_dict(data)
        except FmriInputError as exc:
            raise FmriInputError(exc.problem, fix=exc.fix, file=path) from exc


def window_seed(seed: int, scan_id: str, window: int) -> int:
    """A stable per-window phrasing seed (same text for the same window in every run and worker)."""
    return zlib.crc32(f"{seed}:{scan_id}:{window}".encode())


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise FmriInputError(f"Unknown descriptor unit '{unit}'", fix=f"use one of {', '.join(UNITS)}")


def _moments(values: np.ndarray) -> dict[str, Any]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN feature -> NaN mean, as intended
        mean = np.nanmean(values, axis=0)
        sd = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
    return {"mean": mean, "sd": sd, "n": int(len(values))}


def _json_list(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=np.float64)]


def _scan_source(
    data: Any, atlas: Atlas | None, max_scans: int | None
) -> tuple[Iterable[Scan], int, Atlas, str]:
    """Scans to fit on (lazily for a Cohort, so a big cohort is never all in memory twice), their count,
    the atlas and a name for the metadata."""
    from fmrilm.cohort import Cohort

    if isinstance(data, Cohort):
        idx = np.arange(len(data))
        if max_scans and len(idx) > max_scans:
            idx = idx[np.linspace(0, len(idx) - 1, max_scans).astype(int)]
        return (data.scan(int(i)) for i in idx), len(idx), atlas or data.atlas, data.name
    scans: Sequence[Scan] = list(data)
    if not scans:
        raise FmriInputError("No scan to fit reference statistics on", fix="give a cohort or a list of scans")
    if max_scans and len(scans) > max_scans:
        scans = [scans[int(i)] for i in np.linspace(0, len(scans) - 1, max_scans).astype(int)]
    atlas = atlas or scans[0].atlas
    if atlas is None:
        raise FmriInputError("The scans carry no atlas", fix="pass atlas= to ReferenceStats.fit")
    return scans, len(scans), atlas, "scans"


__all__ = ["Descriptor", "FittedFeatures", "ReferenceStats", "feature_names", "timeseries_key", "window_seed"]
