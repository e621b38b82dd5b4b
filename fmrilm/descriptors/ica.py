"""Group ICA on the reference cohort, dual-regression projection of windows, and component time-course features.

The group decomposition is a temporal ICA (scikit-learn ``FastICA``) of the reference scans' region time series,
concatenated in time: its mixing matrix holds one spatial map over regions per component. A new window is
projected by dual regression (Beckmann et al., 2009): stage 1 regresses the group maps on each timepoint's
spatial pattern, giving component time courses; stage 2 regresses those time courses on the data, giving the
window's own maps. Projection is two small least-squares solves, so a window costs microseconds, whereas
fitting ICA per scan (the naive route) costs a whole FastICA run and gives components that do not correspond
across scans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmrilm.atlas import UNASSIGNED, Atlas

ICA_METRICS = ("amplitude", "lf_hf_log_ratio", "falff", "autocorr", "coupling", "map_similarity")


@dataclass
class GroupICA:
    """Group spatial maps ``(R, C)`` (FastICA mixing), unmixing ``(C, R)``, data mean ``(R,)``, component labels."""

    maps: np.ndarray
    unmixing: np.ndarray
    mean: np.ndarray
    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.maps = np.asarray(self.maps, dtype=np.float64)
        self.unmixing = np.asarray(self.unmixing, dtype=np.float64)
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self._stage1 = np.linalg.pinv(self.maps - self.maps.mean(axis=0, keepdims=True))

    @property
    def n_components(self) -> int:
        return int(self.maps.shape[1])

    @classmethod
    def fit(
        cls,
        timeseries: list[np.ndarray],
        atlas: Atlas,
        n_components: int = 16,
        *,
        seed: int = 0,
        max_timepoints: int = 60000,
        max_iter: int = 400,
    ) -> GroupICA:
        """Temporal FastICA of the concatenated ``(T_i, R)`` series (evenly subsampled to ``max_timepoints``)."""
        import warnings

        from sklearn.decomposition import FastICA
        from sklearn.exceptions import ConvergenceWarning

        data = np.concatenate([np.asarray(t, dtype=np.float64) for t in timeseries], axis=0)
        if len(data) > max_timepoints:
            data = data[np.linspace(0, len(data) - 1, max_timepoints).astype(int)]
        n_components = int(min(n_components, data.shape[1], len(data) - 1))
        ica = FastICA(
            n_components=n_components,
            whiten="unit-variance",
            random_state=seed,
            max_iter=max_iter,
            tol=1e-3,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ica.fit(data)
        maps = ica.mixing_
        unmixing = ica.components_
        # Sign and order are arbitrary in ICA: make each map's largest loading positive, then order the
        # components by explained variance so component 1 is the largest in every fit.
        idx = np.abs(maps).argmax(axis=0)
        signs = np.sign(maps[idx, np.arange(maps.shape[1])])
        signs[signs == 0] = 1.0
        maps, unmixing = maps * signs, unmixing * signs[:, None]
        order = np.argsort(-(maps**2).sum(axis=0), kind="stable")
        maps, unmixing = maps[:, order], unmixing[order]
        return cls(maps=maps, unmixing=unmixing, mean=ica.mean_, labels=component_labels(maps, atlas))

    def dual_regression(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, T, R)`` windows -> component time courses ``(N, T, C)`` and window maps ``(N, C, R)``."""
        y = np.asarray(ts, dtype=np.float64)
        spatial = y - y.mean(axis=2, keepdims=True)  # stage 1 fits each timepoint's pattern with an intercept
        tc = np.matmul(spatial, self._stage1.T)
        tc_c = tc - tc.mean(axis=1, keepdims=True)
        y_c = y - y.mean(axis=1, keepdims=True)
        maps = np.matmul(np.linalg.pinv(tc_c), y_c)
        return tc, maps

    def to_dict(self) -> dict[str, Any]:
        return {
            "maps": self.maps.tolist(),
            "unmixing": self.unmixing.tolist(),
            "mean": self.mean.tolist(),
            "labels": list(self.labels),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupICA:
        return cls(
            maps=data["maps"], unmixing=data["unmixing"], mean=data["mean"], labels=data.get("labels", [])
        )


def component_labels(maps: np.ndarray, atlas: Atlas, top: int = 2) -> list[str]:
    """Networks that carry most of each component's positive map, e.g. 'Visual+DorsalAttention'.

    A network's weight is its summed positive loading divided by the square root of its size: a plain sum
    names the largest networks for every component, a plain mean names two-region networks.
    """
    nets = [n for n in atlas.network_names if n != UNASSIGNED] or atlas.network_names
    owner = np.asarray(atlas.networks)
    labels = []
    for c in range(maps.shape[1]):
        pos = np.clip(maps[:, c], 0.0, None)
        mass = np.array([pos[owner == n].sum() / np.sqrt(max((owner == n).sum(), 1)) for n in nets])
        order = [nets[i] for i in np.argsort(-mass, kind="stable")[:top] if mass[i] > 0]
        if len(order) == 2 and mass[nets.index(order[1])] < 0.5 * mass[nets.index(order[0])]:
            order = order[:1]
        labels.append("+".join(order) if order else nets[0])
    return labels


def band_masks(n_time: int, tr: float, low: tuple[float, float], high: tuple[float, float]):
    """Boolean masks over ``rfftfreq(n_time, tr)`` for the low band, the high band and all nonzero frequencies."""
    f = np.fft.rfftfreq(n_time, d=tr)
    return (f >= low[0]) & (f <= low[1]), (f > high[0]) & (f <= high[1]), f > 0


def timecourse_features(
    tc: np.ndarray,
    tr: float,
    low: tuple[float, float] = (0.01, 0.08),
    high: tuple[float, float] = (0.08, 0.25),
) -> np.ndarray:
    """Per-component amplitude, log10 low/high power ratio, fALFF, lag-1 autocorrelation and mean |coupling|.

    ``tc`` is ``(N, T, C)``; returns ``(N, 5, C)``. fALFF is Zou et al.'s ratio of the amplitude (square-root
    power) summed over the low band to that summed over all nonzero frequencies. A band with no frequency bin
    (too short a window) gives NaN rather than a made-up value.
    """
    x = np.asarray(tc, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    n_time = x.shape[1]
    amplitude = np.sqrt((x * x).mean(axis=1))
    power = np.abs(np.fft.rfft(x, axis=1)) ** 2
    lo, hi, nz = band_masks(n_time, tr, low, high)
    p_lo, p_hi = power[:, lo].sum(axis=1), power[:, hi].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log10(p_lo / p_hi) if lo.any() and hi.any() else np.full_like(p_lo, np.nan)
        amp = np.sqrt(power)
        falff = amp[:, lo].sum(axis=1) / amp[:, nz].sum(axis=1) if lo.any() else np.full_like(p_lo, np.nan)
        var = (x * x).sum(axis=1)
        autocorr = (x[:, 1:] * x[:, :-1]).sum(axis=1) / var
        norm = np.sqrt(var)
        xn = x / norm[:, None, :]
        corr = np.abs(np.matmul(np.swapaxes(xn, 1, 2), xn))
    n_comp = x.shape[2]
    coupling = (corr.sum(axis=2) - 1.0) / max(n_comp - 1, 1)
    return np.stack([amplitude, ratio, falff, autocorr, coupling], axis=1)


def map_similarity(window_maps: np.ndarray, group_maps: np.ndarray) -> np.ndarray:
    """Spatial correlation ``(N, C)`` of each window's dual-regression map with its group map."""
    a = window_maps - window_maps.mean(axis=2, keepdims=True)
    b = (group_maps - group_maps.mean(axis=0, keepdims=True)).T[None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=2) / np.sqrt((a * a).sum(axis=2) * (b * b).sum(axis=2))


def ica_feature_names(n_components: int) -> list[str]:
    names = [f"ica.{metric}.IC{c + 1}" for metric in ICA_METRICS for c in range(n_components)]
    return names + ["ica.coupling"]


def ica_features(
    ts: np.ndarray,
    ica: GroupICA,
    tr: float,
    low: tuple[float, float] = (0.01, 0.08),
    high: tuple[float, float] = (0.08, 0.25),
) -> np.ndarray:
    """``(N, T, R)`` windows -> ``(N, F)`` in the order of :func:`ica_feature_names`."""
    tc, maps = ica.dual_regression(ts)
    per = timecourse_features(tc, tr, low, high)  # (N, 5, C)
    sim = map_similarity(maps, ica.maps)[:, None, :]
    block = np.concatenate([per, sim], axis=1)
    flat = block.reshape(block.shape[0], -1)
    return np.concatenate([flat, per[:, 4].mean(axis=1, keepdims=True)], axis=1)
