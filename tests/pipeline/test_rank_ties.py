"""Ranks with ties: scores equal within a relative 1e-9 (or both NaN) share a rank, in memory and streamed alike."""

from __future__ import annotations

import math

import pytest

from service.pipeline.ranking.rank import TIE_RTOL, tied_ranks


def test_distinct_scores_rank_by_direction():
    assert tied_ranks([0.3, 0.9, 0.5], higher_is_better=True) == [3.0, 1.0, 2.0]
    assert tied_ranks([0.3, 0.9, 0.5], higher_is_better=False) == [1.0, 3.0, 2.0]


def test_scores_within_the_relative_tolerance_share_their_average_rank():
    base = 12.345678
    near = base * (1 + 0.1 * TIE_RTOL)  # a streamed-vs-in-memory difference in the last digits
    assert tied_ranks([base, near, 1.0], higher_is_better=True) == [1.5, 1.5, 3.0]
    assert tied_ranks([near, base, 1.0], higher_is_better=True) == [1.5, 1.5, 3.0]
    # beyond the tolerance they are two values
    far = base * (1 + 10 * TIE_RTOL)
    assert tied_ranks([base, far], higher_is_better=True) == [2.0, 1.0]


def test_a_chain_of_near_values_does_not_merge_values_further_apart_than_the_tolerance():
    step = 0.6 * TIE_RTOL
    values = [1.0, 1.0 + step, 1.0 + 2 * step]  # neighbours within rtol, ends 1.2 rtol apart
    ranks = tied_ranks(values, higher_is_better=True)
    assert ranks == tied_ranks(list(values), higher_is_better=True)  # deterministic
    assert ranks[2] == ranks[1] == 1.5 and ranks[0] == 3.0  # grouped from the best: {top two}, {last}


def test_zeros_and_infinities_and_nans():
    assert tied_ranks([0.0, -0.0, 1.0], higher_is_better=True) == [2.5, 2.5, 1.0]
    assert tied_ranks([math.inf, math.inf, 0.0], higher_is_better=True) == [1.5, 1.5, 3.0]
    # NaN ranks last, whatever the direction, and NaNs tie with each other
    assert tied_ranks([math.nan, 0.2, math.nan, 0.1], higher_is_better=True) == [3.5, 1.0, 3.5, 2.0]
    assert tied_ranks([math.nan, 0.2, math.nan, 0.1], higher_is_better=False) == [3.5, 2.0, 3.5, 1.0]


@pytest.mark.parametrize("n", [0, 1])
def test_empty_and_single(n):
    assert tied_ranks([0.5] * n, higher_is_better=True) == [1.0] * n
