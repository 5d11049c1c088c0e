"""The experiment's statistics: means over seeds and items with two-level bootstrap intervals, paired differences."""

import numpy as np
import pytest

from lavit_cli.statistics import bootstrap_mean, paired_difference


def test_the_interval_holds_the_mean_and_reports_each_seed():
    rng = np.random.default_rng(0)
    matrix = (rng.random((3, 400)) < 0.7).astype(float)
    estimate = bootstrap_mean(matrix)
    assert estimate.low < estimate.mean < estimate.high
    assert estimate.per_seed == tuple(matrix.mean(axis=1))
    assert 0.6 < estimate.low and estimate.high < 0.8


def test_identical_students_differ_by_exactly_zero():
    matrix = (np.random.default_rng(1).random((3, 50)) < 0.5).astype(float)
    difference = paired_difference(matrix, matrix)
    assert (difference.mean, difference.low, difference.high) == (0.0, 0.0, 0.0)
    assert not difference.excludes_zero


def test_a_clear_gain_excludes_zero_and_a_coin_flip_does_not():
    rng = np.random.default_rng(2)
    base = (rng.random((3, 400)) < 0.5).astype(float)
    better = np.maximum(base, (rng.random((3, 400)) < 0.4).astype(float))  # never worse, often better
    assert paired_difference(better, base).low > 0
    noise = (rng.random((3, 400)) < 0.5).astype(float)
    assert not paired_difference(noise, base).excludes_zero


def test_seeds_that_disagree_widen_the_interval():
    agreeing = np.tile((np.arange(200) % 2).astype(float), (3, 1))
    disagreeing = agreeing.copy()
    disagreeing[0] = 1.0
    disagreeing[2] = 0.0
    narrow, wide = bootstrap_mean(agreeing), bootstrap_mean(disagreeing)
    assert wide.high - wide.low > 3 * (narrow.high - narrow.low)


def test_intervals_are_reproducible():
    matrix = np.random.default_rng(3).random((2, 30))
    assert bootstrap_mean(matrix) == bootstrap_mean(matrix)


def test_unpaired_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        paired_difference(np.zeros((3, 10)), np.zeros((2, 10)))
