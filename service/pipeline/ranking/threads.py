"""How many BLAS threads scoring a backbone's features uses: one for the small matrices most rankings have.

Scoring is many small linear-algebra calls (an L-BFGS step, a 512 x 512 eigendecomposition, a Gram of a
thousand rows); on them a multi-threaded BLAS spends more time waking and synchronising its threads than
computing. Measured on the built-in benchmark's 66 (target, backbone) pairs (N <= 820, D <= 1280, a 2-core
machine, nothing else running): the default estimators took 70.8 s on the BLAS library's 2 threads and 22.6 s
on one; on synthetic features, one thread is still faster at N x D = 4000 x 1024 (7.9 s vs 10.3 s) and slower
at 10000 x 2048 (51 s vs 40 s). Above :data:`SINGLE_THREAD_MAX_ELEMENTS` the library keeps its own count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from threadpoolctl import threadpool_limits

__all__ = ["SINGLE_THREAD_MAX_ELEMENTS", "scoring_threads"]

#: Largest feature matrix (N x D elements) scored on one BLAS thread: 4000 x 1024, the largest size measured
#: faster that way.
SINGLE_THREAD_MAX_ELEMENTS = 4096 * 1024


@contextmanager
def scoring_threads(n_samples: int, n_features: int) -> Iterator[None]:
    """One BLAS thread inside the block when the (N, D) features are small, else the library's threads."""
    small = n_samples * n_features <= SINGLE_THREAD_MAX_ELEMENTS
    with threadpool_limits(1, user_api="blas") if small else nullcontext():
        yield
