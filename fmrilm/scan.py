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

    @property
    def n_timepoints(self) -> int:
        return int(self.timeseries.shape[0])

    @property
    def n_regions(self) -> int:
        return int(self.timeseries.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_timepoints * float(self.tr)
