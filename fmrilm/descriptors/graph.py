"""Graph metrics of a proportionally thresholded functional connectivity graph, for a batch of windows.

All metrics are matrix expressions over the whole batch (no per-node Python loop), so a window costs a few
matrix products. Definitions follow networkx so values can be checked against it (the tests do):

- the graph keeps the strongest ``density`` fraction of region pairs by Fisher-z coupling (positive couplings
  only), weighted by that coupling;
- global efficiency: networkx ``global_efficiency`` (unweighted shortest paths on the kept edges);
- modularity: networkx ``community.modularity(G, partition, weight="weight")`` with a FIXED partition, the atlas
  networks ('unassigned' regions form one community). A fixed partition is comparable across scans and windows;
  an optimized one would change from window to window and its Q would not be a property of the scan;
- clustering: networkx ``average_clustering(G, weight="weight")`` (Onnela's geometric mean of weights,
  normalized by the largest weight in the graph; nodes with degree < 2 count as 0);
- strength: sum of a node's kept weights, averaged over the nodes of each network;
- participation coefficient (Guimera & Amaral, weighted): ``1 - sum_s (k_is / k_i)^2`` over the atlas networks,
  0 for isolated nodes, averaged over the nodes of each network.
"""

from __future__ import annotations

import numpy as np

from fmrilm.atlas import Atlas
from fmrilm.descriptors.connectivity import fc_networks, membership

GLOBAL_METRICS = ("global_efficiency", "modularity", "clustering")


def proportional_threshold(z: np.ndarray, density: float) -> np.ndarray:
    """Keep the ``round(density * R(R-1)/2)`` strongest positive pairs of each ``(N, R, R)`` matrix; rest 0."""
    z = np.asarray(z, dtype=np.float64)
    n_regions = z.shape[-1]
    iu, ju = np.triu_indices(n_regions, k=1)
    values = z[:, iu, ju]
    k = int(round(float(density) * len(iu)))
    k = min(max(k, 1), len(iu))
    keep = np.argpartition(-values, k - 1, axis=1)[:, :k]
    kept = np.zeros_like(values)
    np.put_along_axis(kept, keep, np.take_along_axis(values, keep, axis=1), axis=1)
    kept = np.where(kept > 0, kept, 0.0)
    w = np.zeros_like(z)
    w[:, iu, ju] = kept
    return w + np.swapaxes(w, 1, 2)


def global_efficiency(w: np.ndarray) -> np.ndarray:
    """Mean inverse shortest-path length (unweighted; 0 for disconnected pairs), breadth-first by matmul."""
    adj = (np.asarray(w) > 0).astype(np.float32)
    n, r, _ = adj.shape
    if r < 2:
        return np.zeros(n)
    reached = np.broadcast_to(np.eye(r, dtype=bool), adj.shape).copy()
    frontier = reached.astype(np.float32)
    total = np.zeros(n)
    for dist in range(1, r):
        step = (np.matmul(frontier, adj) > 0) & ~reached
        count = step.sum(axis=(1, 2))
        if not count.any():
            break
        total += count / dist
        reached |= step
        frontier = step.astype(np.float32)
    return total / (r * (r - 1))


def modularity(w: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Newman's weighted modularity of the fixed partition ``m`` (one-hot ``(R, K)``, every region in one)."""
    w = np.asarray(w, dtype=np.float64)
    two_m = w.sum(axis=(1, 2))
    inside = np.einsum("rk,nrs,sk->nk", m, w, m, optimize=True)
    degree = w.sum(axis=2) @ m
    with np.errstate(invalid="ignore", divide="ignore"):
        q = (inside / two_m[:, None] - (degree / two_m[:, None]) ** 2).sum(axis=1)
    return np.where(two_m > 0, q, 0.0)


def clustering(w: np.ndarray) -> np.ndarray:
    """Average weighted (Onnela) clustering coefficient, as networkx ``average_clustering(weight=...)``."""
    w = np.asarray(w, dtype=np.float64)
    top = w.max(axis=(1, 2), keepdims=True)
    c = np.cbrt(np.divide(w, top, out=np.zeros_like(w), where=top > 0))
    triangles = np.einsum("nij,nji->ni", np.matmul(c, c), c)  # each triangle twice, as networkx counts
    degree = (w > 0).sum(axis=2).astype(np.float64)
    denom = degree * (degree - 1)
    local = np.divide(triangles, denom, out=np.zeros_like(triangles), where=denom > 0)
    return local.mean(axis=1)


def participation(w: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Weighted participation coefficient of every node ``(N, R)`` for the partition ``m``."""
    strength = w.sum(axis=2)
    by_module = np.matmul(w, m)
    frac = np.divide(
        by_module, strength[..., None], out=np.zeros_like(by_module), where=strength[..., None] > 0
    )
    return np.where(strength > 0, 1.0 - (frac**2).sum(axis=2), 0.0)


def graph_feature_names(atlas: Atlas) -> list[str]:
    nets = fc_networks(atlas)
    return (
        [f"graph.{g}" for g in GLOBAL_METRICS]
        + [f"graph.strength.{n}" for n in nets]
        + [f"graph.participation.{n}" for n in nets]
    )


def graph_features(z: np.ndarray, atlas: Atlas, density: float) -> np.ndarray:
    """``(N, R, R)`` Fisher-z matrices -> ``(N, F)`` in the order of :func:`graph_feature_names`."""
    w = proportional_threshold(z, density)
    partition = membership(atlas)  # all networks incl. 'unassigned', so every region is in one community
    nets = fc_networks(atlas)
    per_net = membership(atlas, nets)
    per_net = per_net / per_net.sum(axis=0, keepdims=True)
    strength = w.sum(axis=2) @ per_net
    part = participation(w, partition) @ per_net
    cols = [global_efficiency(w), modularity(w, partition), clustering(w)]
    return np.concatenate([np.stack(cols, axis=1), strength, part], axis=1)
