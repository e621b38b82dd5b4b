"""`make mutants`' own arithmetic (tests/mutants.py): the seeded sample and its Wilson interval."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.mutants import draw_sample, summary_line, wilson_interval


def test_the_sample_is_seeded_sorted_and_capped():
    names = [f"m.x_f__mutmut_{i}" for i in range(200)]
    first = draw_sample(names, 50, seed=0)
    assert first == draw_sample(list(reversed(names)), 50, seed=0)  # the same names whatever the order given
    assert first == sorted(first) and len(set(first)) == 50 and set(first) <= set(names)
    assert draw_sample(names, 50, seed=1) != first
    assert draw_sample(names[:10], 50, seed=0) == sorted(names[:10])
    with pytest.raises(ValueError, match="at least 1"):
        draw_sample(names, 0, seed=0)


def test_wilson_interval_matches_the_textbook_values():
    # Wilson score interval, z = 1.96: 46 of 50 -> (0.8117, 0.9685); 50 of 50 -> (0.9287, 1)
    assert wilson_interval(46, 50) == pytest.approx((0.8117, 0.9685), abs=5e-4)
    low, high = wilson_interval(50, 50)
    assert low == pytest.approx(0.9287, abs=5e-4) and high == pytest.approx(1.0)
    assert wilson_interval(0, 10)[0] == 0.0


def test_a_sample_line_says_it_is_an_estimate_and_counts_timeouts_as_killed():
    line = summary_line("eval/metrics.py", Counter(killed=40, timeout=2, survived=8), sampled_from=643)
    assert "SAMPLE ESTIMATE" in line and "killed  42 /  50" in line and "84.0%" in line
    assert "sample of 50 of 643 mutants" in line and "timed out 2 (counted killed)" in line
    assert "SAMPLE" not in summary_line("eval/metrics.py", Counter(killed=3))
