"""The descriptor-question ceiling: a linear reader of the components against the most-frequent-answer bar."""

from __future__ import annotations

import numpy as np
from fmrilm.eval.bench_descriptor_reading import linear_reader_rate


def _data(seed: int, signal: float):
    rng = np.random.default_rng(seed)
    n, k = 300, 12
    X = rng.normal(size=(n, k))
    answers = np.where(signal * X[:, 0] + rng.normal(size=n) > 0.8, "higher", "lower")
    sites = np.repeat([f"s{i}" for i in range(6)], n // 6)
    train = np.isin(sites, ["s0", "s1", "s2", "s3", "s4"])
    return X, answers, train, sites


def test_a_readable_answer_beats_the_bar_and_an_unreadable_one_does_not():
    X, answers, train, sites = _data(0, signal=3.0)
    readable = linear_reader_rate("modularity", X, answers, train, sites)
    assert readable.n_test == 50 and readable.n_answers == 2
    assert readable.bar == np.mean(answers[~train] == "lower")  # the training rows' most frequent answer
    assert readable.reader > readable.bar + 0.1

    X, answers, train, sites = _data(1, signal=0.0)
    noise = linear_reader_rate("modularity", X, answers, train, sites)
    assert noise.reader < noise.bar + 0.1
