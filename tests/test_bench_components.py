"""The one-pass learner behind the whitening decision (eval/bench_components.py) learns what it is shown."""

from __future__ import annotations

import numpy as np
from fmrilm.eval.bench_components import adam_logistic
from sklearn.metrics import roc_auc_score


def test_one_adam_pass_learns_a_planted_direction_and_more_passes_learn_more():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 64))
    y = (X[:, 0] + 0.8 * X[:, 1] + rng.standard_normal(600) > 0).astype(int)
    train, test = slice(0, 400), slice(400, None)
    one = roc_auc_score(y[test], adam_logistic(X[train], y[train], X[test], passes=1, seed=0))
    three = roc_auc_score(y[test], adam_logistic(X[train], y[train], X[test], passes=3, seed=0))
    assert one > 0.6
    assert three > one
    shuffled = roc_auc_score(
        rng.permutation(y[test]), adam_logistic(X[train], y[train], X[test], passes=1, seed=0)
    )
    assert abs(shuffled - 0.5) < 0.12  # no signal in, none out


def test_a_pass_learns_less_when_the_signal_is_shrunk_among_equal_noise_components():
    # why the benchmark exists: the learner sees the scale (the same data, the signal component at its PCA
    # scale or divided down to unit SD among equal-noise components)
    rng = np.random.default_rng(1)
    n, d = 500, 128
    signal = rng.standard_normal(n)
    y = (signal + 1.5 * rng.standard_normal(n) > 0).astype(int)
    scale = np.r_[4.0, np.full(d - 1, 0.7)]
    kept = np.c_[signal, rng.standard_normal((n, d - 1))] * scale / np.sqrt(np.mean(scale**2))
    whitened = kept / kept.std(axis=0)
    train, test = slice(0, 300), slice(300, None)
    auc = {
        name: np.mean(
            [
                roc_auc_score(y[test], adam_logistic(Z[train], y[train], Z[test], passes=1, seed=s))
                for s in range(3)
            ]
        )
        for name, Z in (("kept", kept), ("whitened", whitened))
    }
    assert auc["kept"] > auc["whitened"]


def test_probe_c_scores_the_warm_start_probe_per_cv_seed_and_every_fixed_c():
    from fmrilm.eval.bench_components import probe_c_scores
    from fmrilm.train.probe_init import PROBE_CS

    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 20))
    y = (X[:, 0] + 0.5 * rng.standard_normal(300) > 0).astype(int)
    groups = np.asarray([f"site{i % 5}" for i in range(300)])
    scores = probe_c_scores(X[:200], y[:200], X[200:], groups[:200], cv_seeds=3)
    probes = [k for k in scores if k.startswith("warm-start probe")]
    fixed = [k for k in scores if k.startswith("logistic, C")]
    assert len(probes) == 3 and len(fixed) == len(PROBE_CS)
    for name, s in scores.items():
        assert s.shape == (100,)
        if name in probes or name == fixed[-1]:  # the probes, and the weakest penalty: the planted direction
            assert roc_auc_score(y[200:], s) > 0.85


def test_adam_shows_each_drawn_row_as_itself_or_one_of_its_views():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((600, 32))
    y = (X[:, 0] + 0.5 * rng.standard_normal(600) > 0).astype(int)
    train, test = slice(0, 400), slice(400, None)
    plain = roc_auc_score(y[test], adam_logistic(X[train], y[train], X[test], passes=1, seed=0))
    # views that keep the row: the same reading; views of pure noise: three in four rows carry no label
    kept = adam_logistic(X[train], y[train], X[test], passes=1, seed=0, views=np.repeat(X[train, None], 3, 1))
    noise = adam_logistic(
        X[train], y[train], X[test], passes=1, seed=0, views=rng.standard_normal((400, 3, 32))
    )
    assert abs(roc_auc_score(y[test], kept) - plain) < 0.02
    assert roc_auc_score(y[test], noise) < plain - 0.05


def test_a_crop_is_one_contiguous_stretch_of_the_scan():
    from fmrilm.eval.bench_components import random_crop

    from fmrilm.scan import Scan

    series = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    scan = Scan(timeseries=series, tr=2.0, scan_id="s1")
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(20):
        cut = random_crop(scan, 0.7, rng)
        assert cut.timeseries.shape == (140, 3) and cut.scan_id == "s1"
        start = int(cut.timeseries[0, 0]) // 3
        np.testing.assert_array_equal(cut.timeseries, series[start : start + 140])
        starts.add(start)
    assert len(starts) > 5  # random, not always the first stretch
    short = Scan(timeseries=series[:50], tr=2.0)
    assert random_crop(short, 0.5, rng).timeseries.shape[0] == 40  # never below the floor
    assert random_crop(Scan(timeseries=series[:30], tr=2.0), 0.5, rng).timeseries.shape[0] == 30
