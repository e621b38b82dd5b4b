"""One entry point for every imaging feature: :class:`FeatureExtractor` turns windows into a feature matrix.

The extractor holds what features are computed against (atlas, group gradients, group ICA, TR, options); it is
built by :class:`fmrilm.descriptors.reference.ReferenceStats`, which also knows the population mean and SD of
every feature. Windows of equal valid length are processed as one batch, so a scan's windows cost a handful of
matrix products per family.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from fmrilm.atlas import Atlas
from fmrilm.descriptors.connectivity import correlation, fc_feature_names, fc_features, fisher_z
from fmrilm.descriptors.gradients import gradient_feature_names, gradient_features
from fmrilm.descriptors.graph import graph_feature_names, graph_features
from fmrilm.descriptors.ica import GroupICA, ica_feature_names, ica_features

FAMILIES = ("fc", "graph", "gradient", "ica")
#: BLAS threads while features are computed (None: leave the library default). The matrices are small
#: (regions x regions) and batched, so multithreaded BLAS spends more on synchronisation than it gains: on a
#: loaded 2-core machine describing ABIDE scans was 27x slower with OpenBLAS's default 2 threads than with 1.
#: Parallelism comes from processes instead (``fmrilm corpus build --num-proc``).
BLAS_THREADS: int | None = 1


@dataclass
class FeatureConfig:
    """Options of the feature families; stored in the reference statistics so inference matches training.

    ``min_valid`` is the fewest real (unpadded) timepoints a window needs to get a descriptor; shorter tail
    windows are skipped because correlations over a dozen samples are noise.
    """

    density: float = 0.15
    n_gradients: int = 3
    gradient_sparsity: float = 0.9
    n_components: int = 16
    low_band: tuple[float, float] = (0.01, 0.08)
    high_band: tuple[float, float] = (0.08, 0.25)
    min_valid: int = 24

    def __post_init__(self) -> None:
        self.low_band = tuple(float(v) for v in self.low_band)
        self.high_band = tuple(float(v) for v in self.high_band)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class FeatureExtractor:
    """Computes the ``(N, F)`` feature matrix of windows ``(N, T, R)`` sampled every ``tr`` seconds."""

    atlas: Atlas
    config: FeatureConfig
    group_gradients: np.ndarray
    ica: GroupICA
    tr: float

    @property
    def names(self) -> list[str]:
        return feature_names(self.atlas, self.config.n_gradients, self.ica.n_components)

    def families(self) -> dict[str, np.ndarray]:
        """Column indices of each family in :attr:`names`."""
        names = self.names
        return {f: np.array([i for i, n in enumerate(names) if n.startswith(f + ".")]) for f in FAMILIES}

    def compute(self, windows: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Features of every window with at least ``config.min_valid`` real timepoints.

        Returns ``(features (N_kept, F) float64, kept_index (N_kept,) int)``; ``mask`` ``(N, T)`` marks real
        timepoints (as :func:`fmrilm.signal.make_windows` returns it), None means all are real.
        """
        with _blas_limit():
            return self._compute(windows, mask)

    def _compute(self, windows: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        windows = np.asarray(windows, dtype=np.float64)
        if windows.ndim == 2:
            windows = windows[None]
        n = windows.shape[0]
        if mask is None:
            mask = np.ones(windows.shape[:2], dtype=bool)
        valid = np.asarray(mask, dtype=bool).sum(axis=1)
        out = np.full((n, len(self.names)), np.nan)
        keep = valid >= min(self.config.min_valid, windows.shape[1])
        for length in np.unique(valid[keep]):
            idx = np.flatnonzero(keep & (valid == length))
            batch = np.stack([windows[i][np.asarray(mask[i], dtype=bool)] for i in idx])
            out[idx] = self._compute_batch(batch)
        kept = np.flatnonzero(keep)
        return out[kept], kept

    def _compute_batch(self, ts: np.ndarray) -> np.ndarray:
        r = correlation(ts)
        z = fisher_z(r)
        cfg = self.config
        return np.concatenate(
            [
                fc_features(z, self.atlas),
                graph_features(z, self.atlas, cfg.density),
                gradient_features(r, self.atlas, self.group_gradients, cfg.gradient_sparsity),
                ica_features(ts, self.ica, self.tr, cfg.low_band, cfg.high_band),
            ],
            axis=1,
        )


def feature_names(atlas: Atlas, n_gradients: int, n_components: int) -> list[str]:
    """Names of every feature, family by family (``fc.*``, ``graph.*``, ``gradient.*``, ``ica.*``)."""
    return (
        fc_feature_names(atlas)
        + graph_feature_names(atlas)
        + gradient_feature_names(atlas, n_gradients)
        + ica_feature_names(n_components)
    )


_CONTROLLER = None


def _blas_limit():
    """Context that caps BLAS threads at :data:`BLAS_THREADS` (a cached threadpoolctl controller: ~20 us)."""
    import contextlib

    global _CONTROLLER
    if BLAS_THREADS is None:
        return contextlib.nullcontext()
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=BLAS_THREADS, user_api="blas")
