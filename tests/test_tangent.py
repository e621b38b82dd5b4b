"""The threaded tangent space gives nilearn's ConnectivityMeasure(kind="tangent") mean, whitening and vectors."""

from __future__ import annotations

import numpy as np
import pytest
from nilearn.connectome import ConnectivityMeasure

from fmrilm.tangent import covariances, geometric_mean, tangent_vectors, whitening


def population(n: int = 12, regions: int = 15, timepoints: int = 60, seed: int = 0) -> list[np.ndarray]:
    """Signals whose covariances differ a good deal between scans (so the mean takes several steps)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mixing = np.eye(regions) + 0.6 * rng.standard_normal((regions, regions))
        x = rng.standard_normal((timepoints, regions)) @ mixing
        out.append((x - x.mean(0)) / x.std(0))
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_threaded_tangent_space_equals_nilearns(workers):
    series = population()
    measure = ConnectivityMeasure(kind="tangent", vectorize=True, discard_diagonal=True)
    expected = measure.fit_transform(series)

    covs = covariances(series, workers=workers)
    mean = geometric_mean(covs, workers=workers)
    np.testing.assert_allclose(mean, measure.mean_, rtol=1e-7, atol=1e-10)
    white = whitening(mean)
    np.testing.assert_allclose(white, measure.whitening_, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(tangent_vectors(covs, white, workers=workers), expected, rtol=1e-6, atol=1e-9)
    assert not np.allclose(mean, covs.mean(0), atol=1e-3), "the geometric mean is not the arithmetic one"


def test_a_covariance_that_is_not_positive_definite_is_refused():
    covs = covariances(population(n=4))
    covs[2] = -covs[2]
    with pytest.raises((ValueError, FloatingPointError)):
        geometric_mean(covs)
