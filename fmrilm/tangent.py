"""Tangent-space functional connectivity at a population's geometric mean, as nilearn's
``ConnectivityMeasure(kind="tangent")`` computes it, with the per-scan work shared out over threads.

Why not nilearn's estimator itself: its geometric mean runs one eigendecomposition per scan per iteration in one
Python thread, and more BLAS threads do not speed up a 200 x 200 one. Nine iterations over 639 CC200 covariances
took 40 s of the cpu demo's Stage 1, and again most of `fmrilm eval`'s tangent baseline. LAPACK releases the
GIL, so threads share the scans out. The algorithm is nilearn's (`nilearn.connectome.connectivity_matrices.
_geometric_mean`, Fletcher & Joshi 2007): gradient descent along the geodesic from the arithmetic mean, the step
halved when the gradient norm grows, at most 30 steps to a tolerance of 1e-7, on the same Ledoit-Wolf
covariances. `tests/test_tangent.py` holds the mean, the whitening and the vectors to nilearn's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: nilearn's settings for the tangent reference (``ConnectivityMeasure._fit_transform``)
MAX_ITER, TOL = 30, 1e-7


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _chunks(n: int, workers: int) -> list[slice]:
    bounds = np.linspace(0, n, min(n, max(1, workers)) + 1).astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _map_chunks(fn: Callable[[slice], np.ndarray], n: int, workers: int) -> list[np.ndarray]:
    """``fn`` over contiguous slices of ``n`` items, one slice per thread, each thread on one BLAS thread."""
    from threadpoolctl import threadpool_limits

    parts = _chunks(n, workers)
    with threadpool_limits(1):
        if len(parts) == 1:
            return [fn(parts[0])]
        with ThreadPoolExecutor(len(parts)) as pool:
            return list(pool.map(fn, parts))


def covariances(series: Sequence[np.ndarray], workers: int | None = None) -> np.ndarray:
    """``(n, R, R)`` Ledoit-Wolf covariances of ``(T, R)`` signals, nilearn's default estimator."""
    from sklearn.covariance import LedoitWolf

    def part(s: slice) -> np.ndarray:
        return np.stack([LedoitWolf(store_precision=False).fit(x).covariance_ for x in series[s]])

    return np.concatenate(_map_chunks(part, len(series), workers or default_workers()))


def _symmetric_function(fn: Callable[[np.ndarray], np.ndarray], matrices: np.ndarray) -> np.ndarray:
    """``fn`` applied to the eigenvalues of each symmetric matrix of a stack ``(k, R, R)``."""
    vals, vecs = np.linalg.eigh(matrices)
    if np.any(vals <= 0):
        raise ValueError(
            "Expected symmetric positive definite matrices (a covariance has an eigenvalue <= 0)"
        )
    return (vecs * fn(vals)[:, None, :]) @ np.swapaxes(vecs, -1, -2)


def geometric_mean(covs: np.ndarray, workers: int | None = None) -> np.ndarray:
    """The geometric (Riemannian) mean of SPD matrices ``(n, R, R)``: nilearn's algorithm and settings."""
    covs = np.asarray(covs, dtype=np.float64)
    workers = workers or default_workers()
    gmean = covs.mean(axis=0)
    norm_old, step = np.inf, 1.0
    for _ in range(MAX_ITER):
        vals, vecs = np.linalg.eigh(gmean)
        if np.any(vals <= 0):
            raise ValueError("Expected symmetric positive definite matrices (their mean is not)")
        inv_sqrt = (vecs / np.sqrt(vals)) @ vecs.T

        def log_sum(s: slice, w: np.ndarray = inv_sqrt) -> np.ndarray:
            return _symmetric_function(np.log, w @ covs[s] @ w).sum(axis=0)

        logs_mean = np.sum(_map_chunks(log_sum, len(covs), workers), axis=0) / len(covs)
        if np.any(np.isnan(logs_mean)):
            raise FloatingPointError("Nan value after logarithm operation.")
        norm = np.linalg.norm(logs_mean)
        vals_log, vecs_log = np.linalg.eigh(logs_mean)
        sqrt = (vecs * np.sqrt(vals)) @ vecs.T
        gmean = sqrt @ ((vecs_log * np.exp(vals_log * step)) @ vecs_log.T) @ sqrt
        if norm < norm_old:
            norm_old = norm
        elif norm > norm_old:
            step, norm = step / 2.0, norm_old
        if norm / gmean.size < TOL:
            break
    return gmean


def whitening(mean: np.ndarray) -> np.ndarray:
    """``mean^(-1/2)``: what nilearn stores as ``whitening_``."""
    return _symmetric_function(lambda v: 1.0 / np.sqrt(v), np.asarray(mean, dtype=np.float64)[None])[0]


def tangent_vectors(covs: np.ndarray, white: np.ndarray, workers: int | None = None) -> np.ndarray:
    """``(n, R(R-1)/2)`` upper triangles (diagonal left out) of ``log(W C W)``: nilearn's tangent vectors."""
    from nilearn.connectome import sym_matrix_to_vec

    def part(s: slice) -> np.ndarray:
        return sym_matrix_to_vec(_symmetric_function(np.log, white @ covs[s] @ white), discard_diagonal=True)

    return np.concatenate(_map_chunks(part, len(covs), workers or default_workers()))
