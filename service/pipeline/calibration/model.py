r"""What a ranking applies at request time: a fitted calibration's accuracy models and fusion, read from JSON.

A ranking's scores are unitless; a user wants to know *what accuracy* to expect and *how sure* the
winner is. A calibration answers both from benchmark results: it is fitted offline
(:mod:`service.pipeline.calibration.fit`) and only applied here. This module holds the value types the
calibration file holds, the maps they apply and the file's reading and writing; nothing here fits, so that
the request-time path (:mod:`service.pipeline.ranking.rank`) imports neither the fitting nor its
leave-one-target-out evaluation.

Predicted accuracy
------------------
With chance :math:`1/C`, accuracies are mapped to the logit of their share of the way from chance to
perfect,

.. math::  t(a) = \operatorname{logit}\Big(\operatorname{clip}\big(\tfrac{a - 1/C}{1 - 1/C},\,
           \epsilon, 1 - \epsilon\big)\Big), \qquad \epsilon = 0.02,

which makes targets with different class counts comparable and keeps predictions inside
:math:`(1/C, 1)`. The clip matters near chance: with a few hundred test images an accuracy is known to
a point or two, so shares below 2 % of the way are indistinguishable from chance, and letting them run
to a logit of -7 would hand a few near-chance backbones (random-init controls) most of the fit and
inflate every interval. An :class:`AccuracyModel` is a linear map
:math:`t(a) = \beta_0 + \sum_j \beta_j\, t(s_j)` on accuracy-like scores (and :math:`\log` of the images per
class, :data:`IMAGES_PER_CLASS`); a prediction is for fine-tuning on as many images per class as were ranked.
The interval is the prediction plus the model's residual quantiles in :math:`t`-space (nominal coverage
:data:`NOMINAL_COVERAGE`), mapped back. A calibration lists several models per ground truth; the first whose
inputs a ranking has is used.

Fused ranking
-------------
Per target, each member score is oriented (higher = better) and standardised across the candidate
backbones (z-score, or rank mapped to [0, 1]); the fused score (:func:`fused_scores`) is the weighted mean of
the members a backbone has. How sure the winner is (``p_best``) is in :mod:`service.pipeline.calibration.p_best`.

Calibration file (JSON, ``schema_version`` 1, ``"kind": "calibration"``)::

    {
      "schema_version": 1, "kind": "calibration", "created": "2026-12-06T23:20:00Z",
      "source": {"results": [{"file", "suite", "fingerprint", "created", "n_targets", "n_backbones"}],
                 "zoo": {"models": {"zoo:NAME": {"weights_sha256", "source_dataset_sha256"}},   # null: unrecorded
                         "note": str | null} | null},                                  # (samples.zoo_hashes_of)
      "predicted_accuracy": {
        "finetune" | "linear_probe": {            # null when the results have no such ground truth
          "nominal_coverage": 0.9,
          "models": [                            # the first whose inputs a ranking has is used
            {"inputs": ["class_means", ...], "coef": [b0, b1, ...], "ridge": 0.01,
             "residual_quantiles": [low, high], "n_train": int}
          ]
        }
      },
      "fusion": {"members": [...], "weights": [...], "normalisation": "zscore" | "rank",
                 "higher_is_better": {member: bool}},
      "evaluation": {...}                        # the LOTO tables (see evaluation.loto_evaluation)
    }

The packaged default is ``service/builtin/calibration.json`` (regenerate it with
``backbone-rank calibrate RESULT.json -o service/builtin/calibration.json``). Without it a ranking
falls back to the mean of the per-estimator ranks and gives no predicted accuracy and no ``p_best``
rather than made-up ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata

import service
from service.atomic import write_text_atomic
from service.errors import InvalidCalibration
from service.pipeline.benchmark.metrics import as_higher_is_better

__all__ = [
    "PRIOR_FIELDS",
    "AccuracyModel",
    "Calibration",
    "DEFAULT_CALIBRATION_PATH",
    "Fusion",
    "GROUND_TRUTHS",
    "IMAGES_PER_CLASS",
    "NOMINAL_COVERAGE",
    "SCHEMA_VERSION",
    "fused_scores",
    "load_calibration",
    "resolve_calibration",
    "save_calibration",
]

_logger = logging.getLogger(__name__)
SCHEMA_VERSION = 1
#: The packaged calibration: package data of ``service`` (a file, not an import of ``service.builtin``).
DEFAULT_CALIBRATION_PATH = Path(service.__file__).resolve().parent / "builtin" / "calibration.json"
#: How results name the packaged calibration (``path`` of the default one).
PACKAGED_CALIBRATION_NAME = "packaged:service/builtin/calibration.json"
#: Ground truths a benchmark row records: the fine-tuned test accuracy and the linear-probe accuracy.
GROUND_TRUTHS = ("finetune", "linear_probe")
#: A further input of the accuracy model, entered as its logarithm: the images per class the ranking (and the
#: fine-tuning it predicts) used. The leave-one-out scores barely move between 10 and 20 images per class while
#: fine-tuned accuracy rises, so across settings the score-to-accuracy map needs the sample size.
IMAGES_PER_CLASS = "images_per_class"
NOMINAL_COVERAGE = 0.9
#: Fusion members that are facts of a backbone, not scores on the dataset -> the ranked row's field holding them:
#: free to compute, the same on every resample, and (service/pipeline/benchmark) baselines in every benchmark.
PRIOR_FIELDS: Mapping[str, str] = {
    "source_accuracy": "source_accuracy",
    "model_size": "params_m",
    "imagenet_top1": "imagenet_top1",
}
_EPS = 0.02
_RIDGE = 1e-2
_NORMALISATIONS = ("zscore", "rank")


# ------------------------------------------------------------------------------------- accuracy model


def to_logit(accuracy: NDArray[np.float64] | float, n_classes: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """:math:`t(a)`: logit of the share of the way from chance (1/C) to 1, clipped to [ε, 1-ε]."""
    chance = 1.0 / np.asarray(n_classes, dtype=float)
    share = np.clip((np.asarray(accuracy, dtype=float) - chance) / (1.0 - chance), _EPS, 1.0 - _EPS)
    return np.log(share) - np.log1p(-share)


def from_logit(value: NDArray[np.float64] | float, n_classes: NDArray[np.float64] | float) -> NDArray[np.float64]:
    """Inverse of :func:`to_logit` (on the unclipped range)."""
    chance = 1.0 / np.asarray(n_classes, dtype=float)
    return chance + (1.0 - chance) / (1.0 + np.exp(-np.asarray(value, dtype=float)))


@dataclass(frozen=True)
class AccuracyModel:
    """:math:`t(a) = \\beta_0 + \\sum_j \\beta_j t(s_j)` with a residual interval in :math:`t`-space."""

    inputs: tuple[str, ...]
    coef: tuple[float, ...]  # intercept first
    residual_quantiles: tuple[float, float]
    n_train: int
    ridge: float = _RIDGE

    def applies(self, scores: Mapping[str, float | None]) -> bool:
        """Whether ``scores`` (which carry :data:`IMAGES_PER_CLASS` too, when known) hold every input."""
        return all((value := scores.get(name)) is not None and math.isfinite(value) for name in self.inputs)

    def predict_logit(self, n_classes: int, scores: Mapping[str, float | None]) -> float:
        x = np.array([_input_value(name, float(scores[name]), n_classes) for name in self.inputs])  # type: ignore[arg-type]  # callers check applies() first
        return float(self.coef[0] + np.dot(self.coef[1:], x))

    def predict(self, n_classes: int, scores: Mapping[str, float | None]) -> dict[str, float]:
        """``{"value", "low", "high"}`` accuracies; ``low <= value <= high`` always."""
        center = self.predict_logit(n_classes, scores)
        low_q, high_q = self.residual_quantiles
        value, low, high = (float(from_logit(center + d, n_classes)) for d in (0.0, min(low_q, 0.0), max(high_q, 0.0)))
        return {"value": value, "low": low, "high": high}

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "coef": list(self.coef),
            "ridge": self.ridge,
            "residual_quantiles": list(self.residual_quantiles),
            "n_train": self.n_train,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccuracyModel:
        inputs = tuple(str(n) for n in data["inputs"])
        coef = tuple(float(c) for c in data["coef"])
        low, high = (float(q) for q in data["residual_quantiles"])
        if len(coef) != len(inputs) + 1 or not all(math.isfinite(c) for c in coef) or not low <= high:
            raise ValueError("coef must hold an intercept plus one finite coefficient per input; low <= high")
        return cls(inputs, coef, (low, high), int(data["n_train"]), float(data.get("ridge", _RIDGE)))


def _input_value(name: str, value: float, n_classes: int) -> float:
    """An input of the accuracy model: log of the images per class, else the t-value of an accuracy-like score."""
    if name == IMAGES_PER_CLASS:
        return math.log(value) if value > 0 else math.nan
    return float(to_logit(value, n_classes))


def _predict(
    models: Sequence[AccuracyModel], n_classes: int, scores: Mapping[str, float | None]
) -> dict[str, Any] | None:
    """The first model whose inputs ``scores`` (with :data:`IMAGES_PER_CLASS` when known) hold."""
    for model in models:
        if model.applies(scores):
            return {**model.predict(n_classes, scores), "inputs": list(model.inputs)}
    return None


# ---------------------------------------------------------------------------------------------- fusion


@dataclass(frozen=True)
class Fusion:
    """Weighted mean of standardised member scores (standardised across the backbones of one target)."""

    members: tuple[str, ...]
    weights: tuple[float, ...]
    normalisation: str
    higher_is_better: Mapping[str, bool]

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": list(self.members),
            "weights": list(self.weights),
            "normalisation": self.normalisation,
            "higher_is_better": {m: bool(self.higher_is_better[m]) for m in self.members},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fusion:
        members = tuple(str(m) for m in data["members"])
        weights = tuple(float(w) for w in data["weights"])
        normalisation = str(data["normalisation"])
        directions = {str(k): bool(v) for k, v in data["higher_is_better"].items()}
        if not members or len(weights) != len(members) or any(not w > 0 for w in weights):
            raise ValueError("fusion needs at least one member and one positive weight per member")
        if normalisation not in _NORMALISATIONS or set(members) - set(directions):
            raise ValueError(f"normalisation must be one of {_NORMALISATIONS}; every member needs a direction")
        return cls(members, weights, normalisation, directions)


def _standardise(values: NDArray[np.float64], normalisation: str) -> NDArray[np.float64]:
    """Standardise the finite entries across backbones; NaN stays NaN. Fewer than 2 values or a constant -> 0."""
    out = np.full(values.shape, np.nan)
    present = np.isfinite(values)
    if present.sum() < 2:
        out[present] = 0.0
        return out
    v = values[present]
    if normalisation == "rank":
        out[present] = (rankdata(v, method="average") - 1.0) / (v.size - 1)
    else:
        spread = float(v.std())
        out[present] = (v - v.mean()) / spread if spread > 1e-12 * max(float(np.abs(v).max()), 1e-300) else 0.0
    return out


def fused_scores(score_rows: Sequence[Mapping[str, float | None]], fusion: Fusion) -> NDArray[np.float64]:
    """Fused score of each backbone (higher = better); NaN for a backbone with none of the members.

    Shape
    -----
    score_rows : n_backbones mappings ``{score name: value or None}``; returns (n_backbones,).
    """
    total = np.zeros(len(score_rows))
    weight = np.zeros(len(score_rows))
    for member, w in zip(fusion.members, fusion.weights, strict=True):
        raw = np.array(
            [np.nan if (value := row.get(member)) is None else float(value) for row in score_rows], dtype=np.float64
        )
        z = _standardise(as_higher_is_better(raw, fusion.higher_is_better[member]), fusion.normalisation)
        present = np.isfinite(z)
        total[present] += w * z[present]
        weight[present] += w
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), np.nan)


# ------------------------------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration: accuracy models per ground truth, the fusion, and its LOTO evaluation."""

    accuracy: Mapping[str, Sequence[AccuracyModel] | None]
    fusion: Fusion
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    path: str | None = None

    def predict_accuracy(
        self, n_classes: int, scores: Mapping[str, float | None], images_per_class: float | None = None
    ) -> dict[str, Any] | None:
        """``{"finetune": {"value", "low", "high", "inputs"} | None, "linear_probe": ...}``; None if neither applies.

        ``images_per_class``: how many images per class the scores were computed on (and the fine-tuning would
        use); models that need it are skipped without it.
        """
        inputs = {**scores, IMAGES_PER_CLASS: images_per_class}
        out = {gt: (_predict(models, n_classes, inputs) if models else None) for gt, models in self.accuracy.items()}
        return out if any(v is not None for v in out.values()) else None

    def headline(self) -> dict[str, Any]:
        """The LOTO numbers a ranking carries so that its reader can judge the predictions and the order."""
        accuracy = self.evaluation.get("accuracy") or {}
        fusion = self.evaluation.get("fusion") or {}
        out: dict[str, Any] = {}
        for gt in GROUND_TRUTHS:
            overall = (accuracy.get(gt) or {}).get("overall") or {}
            out[f"{gt}_mae"] = overall.get("mae")
            out[f"{gt}_coverage"] = overall.get("coverage")
        out["nominal_coverage"] = NOMINAL_COVERAGE
        for key in ("fused_mean_weighted_tau", "best_single", "best_single_mean_weighted_tau"):
            out[key] = fusion.get(key)
        out["images_per_class"] = self.images_per_class()
        return out

    def images_per_class(self) -> list[float]:
        """The images-per-class settings of the benchmark results it was fitted on (empty if unrecorded)."""
        found = set()
        for table in (self.evaluation.get("accuracy") or {}).values():
            for row in (table or {}).get("per_setting") or []:
                if row.get("images_per_class"):
                    found.add(round(float(row["images_per_class"]), 1))
        return sorted(found)

    def zoo_weights(self) -> dict[str, str | None]:
        """``{zoo id: weights sha256 or None (unrecorded)}`` of the zoo models it was fitted with; empty when the
        calibration does not say (fitted before it recorded them, or without zoo models)."""
        models = (self.source.get("zoo") or {}).get("models") or {}
        return {str(backbone): (entry or {}).get("weights_sha256") for backbone, entry in models.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "calibration",
            "created": self.created,
            "source": dict(self.source),
            "predicted_accuracy": {
                gt: (
                    None
                    if not models
                    else {"nominal_coverage": NOMINAL_COVERAGE, "models": [m.to_dict() for m in models]}
                )
                for gt, models in self.accuracy.items()
            },
            "fusion": self.fusion.to_dict(),
            "evaluation": dict(self.evaluation),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str | None = None) -> Calibration:
        where = f" in {path}" if path else ""
        if not isinstance(data, Mapping) or data.get("kind") != "calibration":
            raise InvalidCalibration(f'not a calibration file{where}: expected "kind": "calibration"')
        if data.get("schema_version") != SCHEMA_VERSION:
            raise InvalidCalibration(
                f"calibration schema_version {data.get('schema_version')!r}{where}; this version reads "
                f"{SCHEMA_VERSION}: regenerate it with `backbone-rank calibrate`"
            )
        try:
            accuracy: dict[str, list[AccuracyModel] | None] = {}
            for gt in GROUND_TRUTHS:
                entry = data["predicted_accuracy"].get(gt)
                accuracy[gt] = None if entry is None else [AccuracyModel.from_dict(m) for m in entry["models"]]
            fusion = Fusion.from_dict(data["fusion"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InvalidCalibration(
                f"malformed calibration{where} ({type(err).__name__}: {err}); "
                "regenerate it with `backbone-rank calibrate`"
            ) from None
        return cls(
            accuracy=accuracy,
            fusion=fusion,
            evaluation=data.get("evaluation") or {},
            source=data.get("source") or {},
            created=str(data.get("created", "")),
            path=path,
        )


def save_calibration(calibration: Calibration, path: str | os.PathLike[str]) -> Path:
    """Write the calibration JSON atomically (plain JSON, no pickle)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, json.dumps(calibration.to_dict(), indent=1, allow_nan=False) + "\n")
    return target


def load_calibration(path: str | os.PathLike[str]) -> Calibration:
    """Read a calibration file; a missing, unreadable or malformed one raises :class:`InvalidCalibration`."""
    target = Path(path)
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidCalibration(
            f"calibration file {str(target)!r} does not exist; write one with `backbone-rank calibrate RESULT.json "
            f"-o {target}` or unset BACKBONE_RANK_CALIBRATION_PATH to use the packaged default"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidCalibration(
            f"cannot read calibration file {str(target)!r} ({type(err).__name__}: {err})"
        ) from None
    return Calibration.from_dict(data, path=str(target))


def resolve_calibration(
    calibration: Calibration | str | os.PathLike[str] | None,
) -> Calibration | None:
    """``"default"``: the packaged file, or None (with a log line) when it is not there; a path: that file
    (must exist and be valid); a :class:`Calibration`: itself; None: no calibration (mean-rank fusion)."""
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, str) and calibration == "default":
        if not DEFAULT_CALIBRATION_PATH.is_file():
            _logger.warning(
                "no packaged calibration at %s: ranking by mean rank, without predicted accuracy or p_best",
                DEFAULT_CALIBRATION_PATH,
            )
            return None
        # Named by its place in the package, not this machine's install path: results are compared across hosts.
        return replace(load_calibration(DEFAULT_CALIBRATION_PATH), path=PACKAGED_CALIBRATION_NAME)
    return load_calibration(calibration)
