"""The typed contract between the user and the engine: requests (:mod:`.requests`) and results
(:mod:`.results`). Pydantic only, no torch: the CLI, the REST API, the Python client and the job
worker all speak these models."""

from .requests import (
    MAX_BACKBONES,
    MAX_BOOTSTRAP,
    BenchmarkRequest,
    DatasetSpec,
    FinetuneRequest,
    RankingRequest,
    local_only_fields,
)
from .results import (
    RESULT_SCHEMA_VERSION,
    AnyResult,
    BenchmarkResult,
    Environment,
    FinetuneResult,
    RankingResult,
    load_result,
    result_kind,
)

__all__ = [
    "MAX_BACKBONES",
    "MAX_BOOTSTRAP",
    "RESULT_SCHEMA_VERSION",
    "AnyResult",
    "BenchmarkRequest",
    "BenchmarkResult",
    "DatasetSpec",
    "Environment",
    "FinetuneRequest",
    "FinetuneResult",
    "RankingRequest",
    "RankingResult",
    "load_result",
    "local_only_fields",
    "result_kind",
]
