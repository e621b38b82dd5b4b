"""Functional connectivity features: Fisher-z coupling for every network pair, segregation.

Pearson correlation is computed for a whole batch of windows at once with one matrix product (the same values
as nilearn's ``ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance())``, which the tests
check), because the corpus needs it for thousands of windows and a per-window estimator loop is the slowest
part of a naive pipeline.
"""

from __future__ import annotations

import numpy as np

from fmrilm.atlas import UNASSIGNED, Atlas

#: Correlations are clipped to +-(1 - R_CLIP) before arctanh so perfectly coupled regions stay finite.
R_CLIP = 1e-7


def correlation(ts: np.ndarray) -> np.ndarray:
    """Pearson correlation of ``(..., T, R)`` time series -> ``(..., R, R)`` float64.

    A region that is constant within a window (e.g. a repaired all-zero region) has no defined correlation;
    it gets 0 with every other region (and 1 on the diagonal) instead of NaN, so one dead region does not
    poison every network mean.
    """
    x = np.asarray(ts, dtype=np.float64)
    x = x - x.mean(axis=-2, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=-2, keepdims=True))
    scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 1e-12)
    x = x * scale
    r = np.matmul(np.swapaxes(x, -1, -2), x)
    diag = np.arange(r.shape[-1])
    r[..., diag, diag] = 1.0
    return r


def fisher_z(r: np.ndarray) -> np.ndarray:
    """Fisher z (arctanh) of correlations with a zero diagonal (self-coupling carries no information)."""
    z = np.arctanh(np.clip(r, -1.0 + R_CLIP, 1.0 - R_CLIP))
    diag = np.arange(z.shape[-1])
    z[..., diag, diag] = 0.0
    return z


def membership(atlas: Atlas, networks: list[str] | None = None) -> np.ndarray:
    """One-hot ``(R, K)`` float64 matrix of region -> network for ``networks`` (default: all, in atlas order)."""
    networks = list(atlas.network_names if networks is None else networks)
    nets = np.asarray(atlas.networks)
    return np.stack([(nets == n).astype(np.float64) for n in networks], axis=1)


def fc_networks(atlas: Atlas) -> list[str]:
    """Networks that get FC features: real networks (not 'unassigned') with at least one region."""
    return [n for n in atlas.network_names if n != UNASSIGNED]


def fc_pairs(atlas: Atlas) -> list[tuple[str, str]]:
    """Network pairs (a, b), a <= b in atlas order; within-network pairs need at least two regions."""
    nets = fc_networks(atlas)
    sizes = {n: len(ix) for n, ix in atlas.network_indices().items()}
    pairs = []
    for i, a in enumerate(nets):
        for b in nets[i:]:
            if a == b and sizes[a] < 2:
                continue
            pairs.append((a, b))
    return pairs


def fc_feature_names(atlas: Atlas) -> list[str]:
    names = ["fc.mean", "fc.segregation"]
    names += [f"fc.within.{a}" if a == b else f"fc.between.{a}~{b}" for a, b in fc_pairs(atlas)]
    sizes = {n: len(ix) for n, ix in atlas.network_indices().items()}
    names += [f"fc.segregation.{n}" for n in fc_networks(atlas) if sizes[n] >= 2]
    return names


def fc_features(z: np.ndarray, atlas: Atlas) -> np.ndarray:
    """``(N, R, R)`` Fisher-z matrices -> ``(N, F)`` features in the order of :func:`fc_feature_names`.

    - ``fc.mean``: mean coupling over all region pairs;
    - ``fc.within.A`` / ``fc.between.A~B``: mean coupling over region pairs within A / between A and B;
    - ``fc.segregation``: mean within-network minus mean between-network coupling (pooled over pairs of
      assigned regions). A difference, not Chan et al.'s ratio, because in a 48-timepoint window the mean
      within-network coupling can be near zero and the ratio explodes;
    - ``fc.segregation.A``: mean coupling within A minus mean coupling between A and all other assigned
      regions.
    """
    z = np.asarray(z, dtype=np.float64)
    n_regions = z.shape[-1]
    nets = fc_networks(atlas)
    m = membership(atlas, nets)  # (R, K), unassigned rows are all zero
    off = 1.0 - np.eye(n_regions)
    sums = np.einsum("rk,nrs,sl->nkl", m, z, m, optimize=True)  # diagonal of z is 0, so no self pairs
    counts = m.T @ off @ m
    mean_all = z.sum(axis=(1, 2)) / (n_regions * (n_regions - 1))
    index = {n: i for i, n in enumerate(nets)}
    pair_means = [sums[:, index[a], index[b]] / counts[index[a], index[b]] for a, b in fc_pairs(atlas)]

    within_sum = np.einsum("nkk->nk", sums)
    within_cnt = np.diag(counts)
    row_sum = sums.sum(axis=2)  # coupling of network k with every assigned region
    row_cnt = counts.sum(axis=1)
    pooled_within = _ratio(within_sum.sum(axis=1), within_cnt.sum())
    pooled_between = _ratio(row_sum.sum(axis=1) - within_sum.sum(axis=1), row_cnt.sum() - within_cnt.sum())
    seg = []
    for k in range(len(nets)):
        if within_cnt[k] == 0:
            continue
        between = _ratio(row_sum[:, k] - within_sum[:, k], row_cnt[k] - within_cnt[k])
        seg.append(within_sum[:, k] / within_cnt[k] - between)
    cols = [mean_all, pooled_within - pooled_between, *pair_means, *seg]
    return np.stack(cols, axis=1)


def _ratio(total: np.ndarray, count: float) -> np.ndarray:
    """Mean from a sum and a pair count; NaN (not 0) when there is no pair, so it is never mistaken for data."""
    return total / count if count > 0 else np.full_like(total, np.nan)
