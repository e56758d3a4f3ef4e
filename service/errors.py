"""Typed errors with stable machine codes, shared by the pipeline, the CLI and the HTTP API.

Every error a user can cause carries a ``code`` (stable, documented, never reworded), an HTTP
``status`` for the API, and a ``detail`` that says how to fix the input.

    BackboneRankError
    ├── DatasetError
    │   ├── DatasetNotFound            dataset_not_found            404
    │   ├── PathOutsideRoots           path_outside_roots           403
    │   ├── InvalidDataset             invalid_dataset              422
    │   ├── EmptyDataset               empty_dataset                422
    │   ├── TooFewClasses              too_few_classes              422
    │   ├── TooFewSamplesPerClass      too_few_samples_per_class    422
    │   └── UploadError                (dataset uploads, POST /v1/datasets)
    │       ├── UploadTooLarge         upload_too_large             413  (the archive is over max_upload_bytes)
    │       ├── TooManyFiles           too_many_files               413  (more entries than max_upload_files)
    │       ├── ArchiveBomb            archive_bomb                 413  (over the extracted-size or ratio budget)
    │       ├── UnsafeArchiveEntry     unsafe_archive_entry         422  (names the entry: absolute, .., a link...)
    │       ├── NotAnArchive           not_an_archive               415  (not a zip or tar, or one we cannot read)
    │       ├── TruncatedArchive       truncated_archive            422  (ends early or is damaged)
    │       └── NoImages               no_images                    422  (no image in an allowed format)
    ├── BackboneError
    │   ├── UnknownBackbone            unknown_backbone             422
    │   ├── WeightsUnavailable         weights_unavailable          422
    │   ├── UnsafeCheckpointFormat     unsafe_checkpoint_format     422
    │   ├── ZooBuildFailed             zoo_build_failed             500  (a zoo model did not learn its source)
    │   ├── UnknownCandidateSet        unknown_candidate_set        422  (an @set name that does not exist)
    │   └── InvalidCandidateSet        invalid_candidate_set        422  (a bad count or filter, or no match)
    ├── HubError                       (downloads from the Hugging Face hub)
    │   ├── HubUnreachable             hub_unreachable              503  (no answer within the timeout)
    │   ├── DownloadNotAllowed         download_not_allowed         403  (a repo outside the download allowlist)
    │   ├── DownloadTooLarge           download_too_large           413  (over the download size limit)
    │   ├── InsufficientDisk           insufficient_disk            507  (the cache's disk lacks room for it)
    │   └── DownloadFailed             download_failed              502  (truncated, corrupted or refused by the hub)
    ├── EstimatorError
    │   ├── UnknownEstimator           unknown_estimator            422
    │   └── EstimatorNeedsSourceHead   estimator_needs_source_head  422
    ├── InvalidResult                  invalid_result               422  (also a ValueError)
    ├── InvalidCalibration             invalid_calibration          500  (also a ValueError; a bad calibration file)
    ├── InvalidFinetuneConfig          invalid_finetune_config      422  (also a ValueError)
    ├── ExecutorUnavailable            executor_unavailable         422  (executor "ray" without Ray installed)
    └── ServiceError                   (the HTTP API and its jobs)
        ├── InvalidRequest             invalid_request              422
        │   └── LocalOnlyOption        local_only_option            422  (a local path sent to a server)
        ├── Unauthorized               unauthorized                 401
        ├── JobNotFound                job_not_found                404
        ├── ReportNotFound             report_not_found             404
        ├── ArtifactNotFound           artifact_not_found           404
        ├── JobFinished                job_finished                 409
        ├── JobNotSucceeded            job_not_succeeded            409
        ├── JobCorrupt                 corrupt                      409  (the job's stored row cannot be read)
        ├── IdempotencyKeyReused       idempotency_key_reused       422
        ├── RequestTooLarge            request_too_large            413
        ├── QueueFull                  queue_full                   429
        ├── QuotaExceeded              quota_exceeded               429  (one API key's jobs queued or running)
        ├── TooManyStreams             too_many_streams             429  (open event streams, per key or in all)
        └── NotReady                   not_ready                    503

A failed job's ``error`` is ``{"code", "detail"}`` with one of the codes above or, for failures
only a worker can see: ``worker_lost`` (its worker stopped responding ``max_job_attempts`` times),
``internal_error`` (a bug: see the worker log) and ``gpu_out_of_memory``; a job whose stored row cannot be
read shows ``corrupt`` (in lists and on GET, alone: its neighbours are unaffected).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "BackboneRankError",
    "DatasetError",
    "DatasetNotFound",
    "PathOutsideRoots",
    "InvalidDataset",
    "EmptyDataset",
    "TooFewClasses",
    "TooFewSamplesPerClass",
    "UploadError",
    "UploadTooLarge",
    "TooManyFiles",
    "ArchiveBomb",
    "UnsafeArchiveEntry",
    "NotAnArchive",
    "TruncatedArchive",
    "NoImages",
    "BackboneError",
    "UnknownBackbone",
    "WeightsUnavailable",
    "UnsafeCheckpointFormat",
    "ZooBuildFailed",
    "UnknownCandidateSet",
    "InvalidCandidateSet",
    "HubError",
    "HubUnreachable",
    "DownloadNotAllowed",
    "DownloadTooLarge",
    "InsufficientDisk",
    "DownloadFailed",
    "EstimatorError",
    "UnknownEstimator",
    "EstimatorNeedsSourceHead",
    "InvalidResult",
    "InvalidCalibration",
    "InvalidFinetuneConfig",
    "ExecutorUnavailable",
    "ServiceError",
    "InvalidRequest",
    "Unauthorized",
    "JobNotFound",
    "ReportNotFound",
    "ArtifactNotFound",
    "JobFinished",
    "JobNotSucceeded",
    "JobCorrupt",
    "IdempotencyKeyReused",
    "RequestTooLarge",
    "QueueFull",
    "QuotaExceeded",
    "TooManyStreams",
    "NotReady",
]


class BackboneRankError(Exception):
    """Base class: ``code`` and ``status`` are class attributes, ``detail`` the message."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400

    def __init__(self, detail: str, **context: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.context = context

    def to_dict(self) -> dict[str, Any]:
        """The API error body: ``{"code", "detail"}`` plus any context fields."""
        return {"code": self.code, "detail": self.detail, **self.context}


class DatasetError(BackboneRankError):
    code = "dataset_error"
    status = 422


class DatasetNotFound(DatasetError):
    code = "dataset_not_found"
    status = 404


class PathOutsideRoots(DatasetError):
    code = "path_outside_roots"
    status = 403


class InvalidDataset(DatasetError):
    code = "invalid_dataset"


class EmptyDataset(DatasetError):
    code = "empty_dataset"


class TooFewClasses(DatasetError):
    code = "too_few_classes"


class TooFewSamplesPerClass(DatasetError):
    code = "too_few_samples_per_class"


class UploadError(DatasetError):
    """An uploaded dataset archive that is refused (``POST /v1/datasets``); nothing of it is kept."""

    code = "upload_error"


class UploadTooLarge(UploadError):
    """The archive is larger than ``max_upload_bytes`` (counted while it streams, whatever Content-Length said)."""

    code = "upload_too_large"
    status = 413


class UploadDiskFull(UploadError):
    """Storing the archive (and then its extracted files) would leave the uploads folder's disk with less than
    ``min_free_disk_bytes`` free."""

    code = "upload_disk_full"
    status = 507


class TooManyFiles(UploadError):
    """The archive holds more entries (files and folders) than ``max_upload_files``."""

    code = "too_many_files"
    status = 413


class ArchiveBomb(UploadError):
    """The archive would extract to more than ``max_upload_extracted_bytes``, or expands more than
    ``max_upload_ratio`` times its own size (a zip bomb): counted from its headers and again while extracting."""

    code = "archive_bomb"
    status = 413


class UnsafeArchiveEntry(UploadError):
    """An entry that could write outside the upload's folder or is no plain file or folder: an absolute path, a
    ``..`` component, a link, a device or FIFO, a duplicate name. ``entry`` names it."""

    code = "unsafe_archive_entry"


class NotAnArchive(UploadError):
    """The body is not a zip or tar (plain, .gz, .bz2, .xz) archive, or one this service cannot read
    (encrypted entries, an unsupported compression method)."""

    code = "not_an_archive"
    status = 415


class TruncatedArchive(UploadError):
    """The archive ends before its end (an interrupted upload or copy) or its data is damaged (bad checksum)."""

    code = "truncated_archive"


class NoImages(UploadError):
    """Nothing in the archive is an image in an allowed format (JPEG, PNG, BMP, GIF, TIFF, WEBP)."""

    code = "no_images"


class BackboneError(BackboneRankError):
    code = "backbone_error"
    status = 422


class UnknownBackbone(BackboneError):
    code = "unknown_backbone"


class WeightsUnavailable(BackboneError):
    code = "weights_unavailable"


class UnsafeCheckpointFormat(BackboneError):
    code = "unsafe_checkpoint_format"


class ZooBuildFailed(BackboneError):
    """A built-in zoo model failed to build, e.g. it did not learn its source task (a recipe bug)."""

    code = "zoo_build_failed"
    status = 500


class UnknownCandidateSet(BackboneError):
    """A named candidate set (``-b @name``) that does not exist; ``valid`` lists the ones that do."""

    code = "unknown_candidate_set"


class InvalidCandidateSet(BackboneError):
    """A known candidate set with a bad count or filter (``valid`` lists the filters), or one no model satisfies."""

    code = "invalid_candidate_set"


class HubError(BackboneRankError):
    code = "hub_error"
    status = 502


class HubUnreachable(HubError):
    """The hub did not answer within the timeout (no network, a wrong ``HF_ENDPOINT``, a firewall)."""

    code = "hub_unreachable"
    status = 503


class DownloadNotAllowed(HubError):
    """A repo outside the process's download allowlist (``BACKBONE_RANK_HUB_ALLOWED_REPOS``): a request cannot
    make a service fetch arbitrary repos."""

    code = "download_not_allowed"
    status = 403


class DownloadTooLarge(HubError):
    code = "download_too_large"
    status = 413


class InsufficientDisk(HubError):
    code = "insufficient_disk"
    status = 507


class DownloadFailed(HubError):
    """A download that did not complete or whose bytes do not match the hub's checksum; nothing of it is kept."""

    code = "download_failed"
    status = 502


class EstimatorError(BackboneRankError):
    code = "estimator_error"
    status = 422


class UnknownEstimator(EstimatorError):
    code = "unknown_estimator"


class EstimatorNeedsSourceHead(EstimatorError):
    code = "estimator_needs_source_head"


class InvalidResult(BackboneRankError, ValueError):
    """A result file or dict that is not a benchmark, ranking or fine-tune result (reports, ``backbone-rank report``).

    Also a ``ValueError``, so library callers can treat it like any other bad argument.
    """

    code = "invalid_result"
    status = 422


class InvalidCalibration(BackboneRankError, ValueError):
    """A calibration file (predicted accuracy, fused ranking) that is missing, unreadable or malformed, or
    benchmark results that cannot be calibrated (``backbone-rank calibrate``).

    Status 500 in the service: the file is the operator's configuration, not the request's fault.
    """

    code = "invalid_calibration"
    status = 500


class ExecutorUnavailable(BackboneRankError):
    """The request (or the settings) chose an executor this installation cannot run: ``ray`` without Ray installed,
    or a local Ray cluster that could not be kept on the loopback interface. The detail says how to fix it."""

    code = "executor_unavailable"
    status = 422


class ServiceError(BackboneRankError):
    code = "service_error"
    status = 400


class InvalidRequest(ServiceError):
    code = "invalid_request"
    status = 422


class Unauthorized(ServiceError):
    code = "unauthorized"
    status = 401


class LocalOnlyOption(InvalidRequest):
    """An option that names something on the caller's machine (a weights directory) sent to a server, which
    cannot see it: refused rather than dropped."""

    code = "local_only_option"

    @classmethod
    def refusing(cls, fields: Sequence[str], *, shown: Sequence[str] | None = None) -> LocalOnlyOption:
        """The refusal of the request ``fields`` (named as ``shown``, e.g. the CLI's options), in the same words
        whoever refuses them: the CLI before sending, the API on submission, the worker on a stored request."""
        return cls(
            f"{', '.join(shown or fields)} names directories on the caller's machine, which the server cannot see; "
            "put the weights in one of the server's weights dirs (BACKBONE_RANK_WEIGHTS_DIRS), or run locally",
            fields=list(fields),
        )


class JobNotFound(ServiceError):
    code = "job_not_found"
    status = 404


class ReportNotFound(ServiceError):
    code = "report_not_found"
    status = 404


class ArtifactNotFound(ServiceError):
    code = "artifact_not_found"
    status = 404


class JobFinished(ServiceError):
    code = "job_finished"
    status = 409


class JobNotSucceeded(ServiceError):
    code = "job_not_succeeded"
    status = 409


class JobCorrupt(ServiceError):
    """A job whose stored row cannot be read (damaged JSON in the job store): it cannot run, be reported or
    give its winner; submit it again."""

    code = "corrupt"
    status = 409


class IdempotencyKeyReused(ServiceError):
    code = "idempotency_key_reused"
    status = 422


class RequestTooLarge(ServiceError):
    code = "request_too_large"
    status = 413


class QueueFull(ServiceError):
    code = "queue_full"
    status = 429


class QuotaExceeded(ServiceError):
    """One API key already has ``max_active_jobs_per_key`` jobs queued or running: one client cannot fill the
    queue for everyone."""

    code = "quota_exceeded"
    status = 429


class TooManyStreams(ServiceError):
    """The service already holds ``max_event_streams`` open event streams (``GET .../events``), or this API key
    ``max_event_streams_per_key``: close one (or follow the job by polling ``GET``) and retry."""

    code = "too_many_streams"
    status = 429


class NotReady(ServiceError):
    code = "not_ready"
    status = 503


class InvalidFinetuneConfig(BackboneRankError, ValueError):
    """A fine-tuning request that cannot run as given: unknown strategy, empty learning-rate grid, ..."""

    code = "invalid_finetune_config"
    status = 422
