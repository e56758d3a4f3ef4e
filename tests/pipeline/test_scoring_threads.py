"""Scoring small feature matrices runs on one BLAS thread; large ones keep the library's threads."""

from __future__ import annotations

import numpy  # noqa: F401  # loads the BLAS library that threadpoolctl reports on
from threadpoolctl import threadpool_info, threadpool_limits

from service.pipeline.ranking.threads import SINGLE_THREAD_MAX_ELEMENTS, scoring_threads


def _blas_threads() -> list[int]:
    return [int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas"]


def test_small_matrices_score_on_one_thread_and_the_limit_is_lifted_after():
    with threadpool_limits(2, user_api="blas"):
        before = _blas_threads()
        assert before  # numpy's BLAS is loaded and seen
        with scoring_threads(820, 1280):
            assert set(_blas_threads()) == {1}
        assert _blas_threads() == before
        with scoring_threads(SINGLE_THREAD_MAX_ELEMENTS // 1024 + 1, 1024):
            assert _blas_threads() == before
