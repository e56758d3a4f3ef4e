"""Where the benchmark scripts write their JSON unless ``--out`` says otherwise.

``<cache dir>/benchmarks`` — the folder ``backbone-rank benchmark`` writes to
(``BACKBONE_RANK_BENCHMARK_RESULTS_DIR``, else ``BACKBONE_RANK_CACHE_DIR``, else
``$XDG_CACHE_HOME/backbone-rank``, as ``service.config.Settings``) — so a run never overwrites the
recorded results in the source tree. Recording a run is explicit: ``--out benchmarks/results``
(``make bench-record``).
"""

from __future__ import annotations

import os
from pathlib import Path


def default_out_dir() -> Path:
    """``<cache dir>/benchmarks``, read from the environment without importing ``service`` (and pydantic)."""
    explicit = os.environ.get("BACKBONE_RANK_BENCHMARK_RESULTS_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("BACKBONE_RANK_CACHE_DIR")
    if not cache:
        cache = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "backbone-rank")
    return Path(cache) / "benchmarks"
