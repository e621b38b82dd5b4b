"""The tangent-space FC baseline: nilearn's tangent space, with a reference fitted on training scans only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from fmrilm.eval.baselines import tangent_features

from fmrilm.atlas import Atlas
from fmrilm.scan import Scan


class ListCohort:
    """The two calls `tangent_features` makes of a cohort."""

    def __init__(self, scans: list[Scan]) -> None:
        self.scans = scans

    def __len__(self) -> int:
        return len(self.scans)

    def scan(self, i: int) -> Scan:
        return self.scans[i]


def _scans(n: int) -> list[Scan]:
    atlas = Atlas.builtin("dosenbach160").subset(np.arange(12))
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        ts = rng.standard_normal((60, 3)) @ rng.standard_normal((3, 12)) + rng.standard_normal((60, 12))
        out.append(Scan(ts.astype(np.float32), tr=2.0, atlas=atlas, scan_id=f"s{i}", subject_id=f"sub{i}"))
    return out


def test_test_scans_never_shape_the_reference():
    scans = _scans(10)
    train = list(range(7))
    before = tangent_features(ListCohort(scans), train)
    changed = list(scans)
    mixed = scans[9].timeseries.copy()
    mixed[:, 1] += 2.0 * mixed[:, 0]  # a new coupling in one test scan
    changed[9] = replace(scans[9], timeseries=mixed)
    after = tangent_features(ListCohort(changed), train)
    np.testing.assert_allclose(before[:9], after[:9], atol=1e-5)  # every other scan unchanged
    assert np.abs(before[9] - after[9]).max() > 1e-3
    trained_on_all = tangent_features(ListCohort(scans), list(range(10)))
    assert np.abs(trained_on_all - before).max() > 1e-4  # the reference is the train part's, not everyone's
    assert before.shape == (10, 12 * 11 // 2) and np.isfinite(before).all()
