"""The in-memory form of one parcellated scan, shared by every module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmrilm.atlas import Atlas


@dataclass
class Scan:
    """Region time series of one scan.

    ``timeseries`` is ``(time, regions)`` float32 as nilearn returns it; ``tr`` is in seconds. ``flags`` records
    every repair applied on the way in (e.g. ``{"repaired_regions": [3, 17]}``) so nothing is changed silently.
    """

    timeseries: np.ndarray
    tr: float
    atlas: Atlas | None = None
    scan_id: str = "scan"
    subject_id: str | None = None
    session_id: str | None = None
    site: str | None = None
    source: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.timeseries = np.asarray(self.timeseries, dtype=np.float32)
        if self.subject_id is None:
            self.subject_id = self.scan_id

    def __repr__(self) -> str:
        """One line: id, shape, TR, atlas name and a summary of the flags (never the time series)."""
        atlas = self.atlas.name if self.atlas is not None else None
        shape = tuple(int(n) for n in self.timeseries.shape)
        return (
            f"Scan(id={self.scan_id!r}, shape={shape}, tr={float(self.tr):g}, atlas={atlas!r}, "
            f"flags: {_flags_summary(self.flags)})"
        )

    @property
    def n_timepoints(self) -> int:
        return int(self.timeseries.shape[0])

    @property
    def n_regions(self) -> int:
        return int(self.timeseries.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_timepoints * float(self.tr)


def _flags_summary(flags: dict[str, Any]) -> str:
    """``bad_regions (2), signal, native_tr=2.5``: a count for collections, a short value for scalars."""
    if not flags:
        return "none"
    parts = []
    for key, value in flags.items():
        if isinstance(value, (list, tuple, set, np.ndarray)):
            parts.append(f"{key} ({len(value)})")
        elif isinstance(value, dict):
            parts.append(str(key))
        elif isinstance(value, float):
            parts.append(f"{key}={value:g}")
        else:
            text = " ".join(str(value).split())
            parts.append(f"{key}={text if len(text) <= 24 else text[:23] + '…'}")
    return ", ".join(parts)
