"""Request and response models of the HTTP API (v1). Unknown fields are refused (``extra="forbid"``),
so a typo is a 422 rather than a silently ignored option."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "MAX_BACKBONES",
    "MAX_BOOTSTRAP",
    "DatasetSpec",
    "RankingRequest",
    "FinetuneRequest",
    "JobCreated",
    "JobView",
    "ErrorBody",
    "timestamp",
]

#: Candidates in one ranking; each costs a model load and a pass over the dataset.
MAX_BACKBONES = 64
#: Half-sample replicates for p_best; 200 puts the share's standard error under 0.035 and bounds the refits.
MAX_BOOTSTRAP = 200
_JOB_ID = r"^[0-9a-f]{32}$"


class ErrorBody(BaseModel):
    """Every error response: a stable machine ``code`` and a ``detail`` that says how to fix it
    (some errors add context fields, e.g. ``suggestions``)."""

    model_config = ConfigDict(extra="allow")

    code: str
    detail: str


class DatasetSpec(BaseModel):
    """Where the images are: ``{"kind": "folder", "path": "/data/pets"}``, ``{"kind": "builtin", "name":
    "glyphs-greek", "split": "test"}``. Paths must resolve under the server's data roots."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["folder", "manifest", "hf", "builtin"]
    path: str | None = Field(None, min_length=1, max_length=4096)
    name: str | None = Field(None, min_length=1, max_length=200)
    split: str | None = Field(None, min_length=1, max_length=100)


BackboneId = Annotated[str, Field(min_length=1, max_length=1024)]
EstimatorName = Annotated[str, Field(min_length=1, max_length=64)]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be finite")
    return value


LearningRate = Annotated[float, Field(gt=0, le=10), AfterValidator(_finite)]


class RankingRequest(BaseModel):
    """``POST /v1/rankings``: rank ``backbones`` on ``dataset``."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetSpec
    backbones: list[BackboneId] = Field(
        min_length=1,
        max_length=MAX_BACKBONES,
        description="timm ids (arch.tag), zoo:NAME, random:ARCH; local-dir:/@file only under the weights dirs.",
    )
    estimators: list[EstimatorName] | None = Field(
        None, min_length=1, max_length=64, description="Default: every estimator that applies (GET /v1/estimators)."
    )
    max_per_class: int | None = Field(None, ge=1, le=1_000_000, description="Rank on a seeded per-class sample.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the per-class sample (and of the half-samples).")
    n_bootstrap: int = Field(
        0,
        ge=0,
        le=MAX_BOOTSTRAP,
        description="Half-sample replicates for each backbone's probability of being best (p_best; 0: none). "
        "Each replicate refits the fused ranking's members for every backbone (the packaged fusion is the "
        "linear probe: ~0.1-1 s per backbone and replicate on a CPU).",
    )


class FinetuneRequest(BaseModel):
    """``POST /v1/finetunes``: fine-tune ``backbone``, or the winner of the succeeded ranking ``ranking_id``
    (on that ranking's dataset unless ``dataset`` is given)."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetSpec | None = None
    backbone: BackboneId | None = None
    ranking_id: str | None = Field(None, pattern=_JOB_ID)
    strategy: Literal["linear", "partial", "full"] = "full"
    epochs: int | None = Field(None, ge=1, le=1000)
    lr_grid: list[LearningRate] | None = Field(None, min_length=1, max_length=16)
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(None, min_length=1, max_length=10)
    batch_size: int | None = Field(None, ge=1, le=4096)
    max_per_class: int | None = Field(None, ge=1, le=1_000_000)
    input_size: int | None = Field(None, ge=8, le=1024, description="Train at this side length (e.g. 32).")

    @model_validator(mode="after")
    def _one_backbone(self) -> FinetuneRequest:
        if (self.backbone is None) == (self.ranking_id is None):
            raise ValueError("give exactly one of 'backbone' and 'ranking_id'")
        if self.backbone is not None and self.dataset is None:
            raise ValueError("'dataset' is required with 'backbone' (it is optional only with 'ranking_id')")
        return self


class JobCreated(BaseModel):
    """Answer to a submission (202, or 200 for an idempotent replay)."""

    id: str
    kind: str
    state: str
    url: str
    events_url: str


class JobView(BaseModel):
    """A job: its state, progress while it runs, and its result (``succeeded``) or error (``failed``)."""

    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    request: dict[str, Any]
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]


def timestamp(value: float | None) -> datetime | None:
    """Unix seconds (the store's clock) as an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)
