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
    │   └── TooFewSamplesPerClass      too_few_samples_per_class    422
    ├── BackboneError
    │   ├── UnknownBackbone            unknown_backbone             422
    │   ├── WeightsUnavailable         weights_unavailable          422
    │   └── UnsafeCheckpointFormat     unsafe_checkpoint_format     422
    └── EstimatorError
        ├── UnknownEstimator           unknown_estimator            422
        └── EstimatorNeedsSourceHead   estimator_needs_source_head  422
"""

from __future__ import annotations

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
    "BackboneError",
    "UnknownBackbone",
    "WeightsUnavailable",
    "UnsafeCheckpointFormat",
    "EstimatorError",
    "UnknownEstimator",
    "EstimatorNeedsSourceHead",
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


class BackboneError(BackboneRankError):
    code = "backbone_error"
    status = 422


class UnknownBackbone(BackboneError):
    code = "unknown_backbone"


class WeightsUnavailable(BackboneError):
    code = "weights_unavailable"


class UnsafeCheckpointFormat(BackboneError):
    code = "unsafe_checkpoint_format"


class EstimatorError(BackboneRankError):
    code = "estimator_error"
    status = 422


class UnknownEstimator(EstimatorError):
    code = "unknown_estimator"


class EstimatorNeedsSourceHead(EstimatorError):
    code = "estimator_needs_source_head"
