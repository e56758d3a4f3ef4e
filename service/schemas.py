"""Response models of the HTTP API (v1): job views, job summaries (lists) and errors. The request bodies and the
results are the contract's models (:mod:`service.contract`), the same ones the CLI, the client and the worker use;
a summary's fields are parts of its kind's result, each with its place in the result (``PATHS``), so a list reads
those parts and never a whole result."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.contract import (
    MAX_BACKBONES,
    MAX_BOOTSTRAP,
    DatasetSpec,
    FinetuneRequest,
    FinetuneResult,
    RankingRequest,
    RankingResult,
)
from service.contract.results import PredictedAccuracy

__all__ = [
    "MAX_BACKBONES",
    "MAX_BOOTSTRAP",
    "DatasetSpec",
    "RankingRequest",
    "FinetuneRequest",
    "JobCreated",
    "JobView",
    "RankingJob",
    "FinetuneJob",
    "JobSummary",
    "RankingSummary",
    "FinetuneSummary",
    "RankingJobSummary",
    "FinetuneJobSummary",
    "ErrorBody",
    "FieldError",
    "SkippedFile",
    "UploadedDataset",
    "timestamp",
]


class FieldError(BaseModel):
    """One problem of an ``invalid_request`` body or parameter: where (``["body", "backbones", 0]``), what, and
    pydantic's error type (``json_invalid`` for a body that cannot be parsed)."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error response (4xx and 5xx): a stable machine ``code`` and a ``detail`` that says how to fix it
    (some errors add context fields, e.g. ``suggestions``; ``invalid_request`` lists its ``errors``)."""

    model_config = ConfigDict(extra="allow")

    code: str
    detail: str
    errors: list[FieldError] | None = None


class JobCreated(BaseModel):
    """Answer to a submission (202, or 200 for an idempotent replay)."""

    id: str
    kind: str
    state: str
    url: str
    events_url: str


class _JobFields(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]


class JobView(_JobFields):
    """A job: its state, progress while it runs, and its result (``succeeded``) or error (``failed``). A job whose
    stored row cannot be read has ``error.code == "corrupt"`` and a null ``request``, ``progress`` and ``result``."""

    request: dict[str, Any] | None
    result: dict[str, Any] | None


class RankingJob(JobView):
    """A ranking job: its (validated, stored) request and, once succeeded, its :class:`RankingResult`."""

    request: RankingRequest | None  # type: ignore[assignment]  # narrows the generic view's mapping to the typed model
    result: RankingResult | None  # type: ignore[assignment]  # likewise for the result


class FinetuneJob(JobView):
    """A fine-tune job: its request (``ranking_id`` resolved to the winner) and, once succeeded, its result."""

    request: FinetuneRequest | None  # type: ignore[assignment]  # as RankingJob
    result: FinetuneResult | None  # type: ignore[assignment]  # as RankingJob


class SkippedFile(BaseModel):
    """A file of an uploaded archive that is not in the dataset, and why (``unsupported_format``: not an image;
    ``corrupt_image``, ``too_many_pixels``, ``too_large_file``: an image outside the decoder's limits)."""

    path: str
    reason: str


class UploadedDataset(BaseModel):
    """A dataset uploaded as an archive (``POST /v1/datasets``). Use ``dataset`` (or its text form ``ref``) as the
    ``dataset`` of a ranking or fine-tune request."""

    id: str = Field(description="The sha256 of the archive: the same archive uploaded again is the same dataset.")
    ref: str = Field(description="upload:<id>, the dataset reference (CLI, client).")
    dataset: DatasetSpec = Field(description="The reference as a request's dataset: {kind: upload, name: <id>}.")
    name: str | None = Field(description="The name given on upload (?name=), for people; not unique.")
    format: str = Field(description="zip, tar, tar.gz, tar.bz2 or tar.xz (recognised by content).")
    layout: Literal["folder", "manifest"] = Field(description="One folder per class, or a .csv/.jsonl manifest.")
    manifest: str | None = Field(description="The manifest's name, for a manifest dataset.")
    classes: list[str]
    class_counts: dict[str, int] = Field(description="Usable images per class (all splits together).")
    splits: dict[str, dict[str, int]] = Field(description="Per split (train/val/test folders), images per class.")
    n_images: int
    n_entries: int = Field(description="Entries (files and folders) in the archive.")
    archive_bytes: int
    extracted_bytes: int
    sha256: str
    skipped: dict[str, int] = Field(description="Files left out, by reason (hidden_file: dot files, __MACOSX).")
    skipped_files: list[SkippedFile] = Field(description="The first 100 files left out, each with its reason.")
    created_at: datetime
    last_uploaded_at: datetime
    expires_at: datetime | None = Field(description="When it is removed unless uploaded again (null: kept).")
    url: str


class RankingSummary(BaseModel):
    """A ranking in a list: what it ranks (from its request) and, once succeeded, what it found: its winner (rank 1
    of the fused order) and the winner's predictions (fields of its :class:`RankingResult`'s first row; null where
    there is none yet)."""

    #: Where each field is in a RankingResult (SQLite JSON paths): ``backbones`` is best first.
    PATHS: ClassVar[dict[str, str]] = {
        "dataset": "request:$.dataset",
        "backbones": "request:$.backbones",
        "winner": "$.backbones[0].id",
        "predicted_accuracy": "$.backbones[0].predicted_accuracy",
        "p_best": "$.backbones[0].p_best",
    }

    dataset: DatasetSpec | None = Field(None, description="The ranked dataset (from the request).")
    backbones: list[str] | None = Field(None, description="The candidates asked for (from the request).")

    winner: str | None = Field(None, description="The id of the best-ranked backbone.")
    predicted_accuracy: PredictedAccuracy | None = Field(
        None, description="The winner's predicted fine-tune and linear-probe accuracy, with their intervals."
    )
    p_best: float | None = Field(None, description="The winner's probability of being the best (when asked for).")


class FinetuneSummary(BaseModel):
    """A fine-tune in a list: its dataset (from its request) and, once succeeded, what it reached (fields of its
    :class:`FinetuneResult`)."""

    #: As RankingSummary.PATHS, in a FinetuneResult.
    PATHS: ClassVar[dict[str, str]] = {
        "dataset": "request:$.dataset",
        "backbone": "$.backbone.id",
        "strategy": "$.strategy",
        "test_accuracy": "$.test_accuracy.mean",
        "ranking_id": "$.ranking_id",
    }

    dataset: DatasetSpec | None = Field(None, description="The dataset (from the request; null: a ranking's).")
    backbone: str | None = Field(None, description="The fine-tuned backbone's id.")
    strategy: str | None = None
    test_accuracy: float | None = Field(None, description="Mean test accuracy over the seeds.")
    ranking_id: str | None = Field(None, description="The ranking whose winner this is, if any.")


class JobSummary(_JobFields):
    """A job in a list: a :class:`JobView` without its request and result, with a ``summary``: what the request
    asked for and, once succeeded, what the result found (the whole job: GET ``links.self``). A job whose stored
    row cannot be read has ``error.code == "corrupt"``."""

    summary: dict[str, Any] | None


class RankingJobSummary(JobSummary):
    summary: RankingSummary | None  # type: ignore[assignment]  # narrows the generic summary to its kind's model


class FinetuneJobSummary(JobSummary):
    summary: FinetuneSummary | None  # type: ignore[assignment]  # as RankingJobSummary


def timestamp(value: float | None) -> datetime | None:
    """Unix seconds (the store's clock) as an aware UTC datetime."""
    return None if value is None else datetime.fromtimestamp(value, UTC)
