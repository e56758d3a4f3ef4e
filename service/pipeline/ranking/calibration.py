r"""Predicted accuracy with an interval, and the fused default ranking, calibrated on benchmark results.

A ranking's scores are unitless; a user wants to know *what accuracy* to expect and *how sure* the
winner is. Both are learned here from benchmark results (:mod:`service.pipeline.benchmark.benchmark`), whose
rows pair each (target, backbone) score with the fine-tuned and the linear-probe accuracy, and both
are validated leave-one-target-out (LOTO): every number reported for a target comes from a fit that
never saw that target, model selection included.

Predicted accuracy
------------------
The anchor is the analytic view of the softmax layer (Seddik & Tamaazousti, AAAI 2022; Seddik et al.,
AISTATS 2021): the weights of a trained softmax converge to the centred class means, so the accuracy of
the class-mean softmax (estimator ``class_means``, leave-one-out) is itself an estimate of what a
trained head reaches. It is biased (fine-tuning also moves the features; a probe uses the covariances),
so it is calibrated. With chance :math:`1/C`, accuracies are mapped to the logit of their share of
the way from chance to perfect,

.. math::  t(a) = \operatorname{logit}\Big(\operatorname{clip}\big(\tfrac{a - 1/C}{1 - 1/C},\,
           \epsilon, 1 - \epsilon\big)\Big), \qquad \epsilon = 0.02,

which makes targets with different class counts comparable and keeps predictions inside
:math:`(1/C, 1)`. The clip matters near chance: with a few hundred test images an accuracy is known to
a point or two, so shares below 2 % of the way are indistinguishable from chance, and letting them run
to a logit of -7 would hand a few near-chance backbones (random-init controls) most of the fit and
inflate every interval. The model is a ridge-stabilised linear regression
:math:`t(a) = \beta_0 + \sum_j \beta_j\, t(s_j)` on ``class_means`` plus at most two other
accuracy-like scores (``knn``, ``linear_probe``, ``lda``), and, when the results come from more than one
sample size, :math:`\log` of the images per class (:data:`IMAGES_PER_CLASS`: the leave-one-out scores hardly
change from 10 to 20 images per class while the fine-tuned accuracy rises); which inputs is chosen by
inner LOTO mean absolute error. A prediction is for fine-tuning on as many images per class as were ranked.
The interval is the prediction plus the :math:`(1-q)/2` and :math:`(1+q)/2`
quantiles of the LOTO residuals in :math:`t`-space (split-conformal order statistics, nominal coverage
:math:`q` = 90 %), mapped back; the evaluation reports the coverage actually measured on held-out targets
next to the nominal one.

Fused ranking
-------------
Per target, each member score is oriented (higher = better) and standardised across the candidate
backbones (z-score, or rank mapped to [0, 1]); the fused score is the weighted mean of the members a
backbone has. Members (at most three, equal weights) and the standardisation are chosen by greedy
forward selection maximising the mean weighted Kendall τ over the *training* targets (a member joins
only if it adds at least 0.01). Candidates are the estimators cheap enough to be recomputed on
resamples (:data:`FUSABLE_ESTIMATORS`: no D x D decomposition or PCA, the linear probe's bounded fit; and
a recorded mean cost per pair below ``max_member_seconds``) and the backbone's source-task accuracy (a prior, as Chaves
et al. 2024 recommend). The LOTO evaluation states plainly whether the
fusion reaches the best single estimator.

Probability of being best: the fused members are recomputed on ``n_bootstrap`` class-stratified
half-samples of the target images (the same images for every backbone), and ``p_best`` is the share of
replicates a backbone tops (ties split). Half-samples without replacement rather than the n-out-of-n
bootstrap, because a duplicated image would be its own nearest neighbour and its own class member in the
leave-one-out scores (kNN, class means); half-sampling matches the bootstrap's variance to first order.

Calibration file (JSON, ``schema_version`` 1, ``"kind": "calibration"``)::

    {
      "schema_version": 1, "kind": "calibration", "created": "2026-12-06T23:20:00Z",
      "source": {"results": [{"file", "suite", "fingerprint", "created", "n_targets", "n_backbones"}]},
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
      "evaluation": {...}                        # the LOTO tables (see loto_evaluation)
    }

The packaged default is ``service/builtin/calibration.json`` (regenerate it with
``backbone-rank calibrate RESULT.json -o service/builtin/calibration.json``). Without it a ranking
falls back to the mean of the per-estimator ranks and gives no predicted accuracy and no ``p_best``
rather than made-up ones.
"""

from __future__ import annotations

import datetime as _dt
import functools
import itertools
import json
import logging
import math
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata

import service
from service.atomic import write_text_atomic
from service.errors import InvalidCalibration
from service.pipeline.benchmark.metrics import as_higher_is_better, metric_values
from service.pipeline.plugins import source_info

__all__ = [
    "ACCURACY_INPUTS",
    "AccuracyModel",
    "Calibration",
    "IMAGES_PER_CLASS",
    "DEFAULT_CALIBRATION_PATH",
    "FUSABLE_ESTIMATORS",
    "evaluation_markdown",
    "Fusion",
    "GROUND_TRUTHS",
    "NOMINAL_COVERAGE",
    "SCHEMA_VERSION",
    "fit_calibration",
    "fused_scores",
    "load_calibration",
    "loto_evaluation",
    "p_best",
    "resolve_calibration",
    "samples_from_results",
    "save_calibration",
]

_logger = logging.getLogger(__name__)
SCHEMA_VERSION = 1
#: The packaged calibration: package data of ``service`` (a file, not an import of ``service.builtin``).
DEFAULT_CALIBRATION_PATH = Path(service.__file__).resolve().parent / "builtin" / "calibration.json"
#: Ground truths a benchmark row records: the fine-tuned test accuracy and the linear-probe accuracy.
GROUND_TRUTHS = ("finetune", "linear_probe")
#: Accuracy-like scores (fractions in [0, 1]) the accuracy model may use; ``class_means`` is always one.
ACCURACY_INPUTS = ("class_means", "knn", "linear_probe", "lda")
#: A further input of the accuracy model, entered as its logarithm: the images per class the ranking (and the
#: fine-tuning it predicts) used. The leave-one-out scores barely move between 10 and 20 images per class while
#: fine-tuned accuracy rises, so across settings the score-to-accuracy map needs the sample size.
IMAGES_PER_CLASS = "images_per_class"
NOMINAL_COVERAGE = 0.9
#: Not fusion candidates: a dimension is not an estimate of transferability, and "random" is a reference.
_NOT_FUSABLE = frozenset({"feature_dim", "random"})
#: Estimators cheap enough to be recomputed n_bootstrap times per backbone for ``p_best``: none needs a D x D
#: decomposition or a PCA (O(N D C), O(N^2 D) or O(N C_s C)), except the linear probe, a bounded logistic fit
#: (100 L-BFGS iterations on a quarter of the images per half-sample) kept because it is the strongest single
#: cheap estimator on the default benchmark (τw 0.860 over 20 and 10 images per class; kNN, next, 0.818). The
#: benchmark's recorded seconds cannot decide this alone: a shared Gram/eigh is charged to the first estimator
#: that needs it, so h_score or logme look free there, and an eigh of D = 512 takes seconds on a loaded CPU.
FUSABLE_ESTIMATORS = frozenset(
    {"class_means", "knn", "leep", "nce", "etran_energy", "pactran_dirichlet", "linear_probe"}
)
_PRIOR = "source_accuracy"
_EPS = 0.02
_RIDGE = 1e-2
_MAX_MEMBERS = 3
#: A member joins the fusion only if it raises the training targets' mean τw by this much: with a handful
#: of targets smaller gains are mostly noise, and every member costs p_best time.
_MIN_GAIN = 0.01
_NORMALISATIONS = ("zscore", "rank")


# ------------------------------------------------------------------------------------------------ samples


@dataclass(frozen=True)
class Sample:
    """One (target, backbone) row of a benchmark result, reduced to what calibration reads."""

    target: str
    backbone: str
    n_classes: int
    scores: Mapping[str, float | None]
    finetune: float | None
    linear_probe: float | None
    seconds: Mapping[str, float] = field(default_factory=dict)
    #: Which benchmark result (setting: suite, images per class) the row comes from. One target ranked in
    #: two settings is two rankings (scored apart) but one LOTO group (held out together).
    setting: str = ""
    #: Images per class the row was ranked (and fine-tuned) on; None when the result does not say.
    images_per_class: float | None = None

    def truth(self, ground_truth: str) -> float | None:
        return self.finetune if ground_truth == "finetune" else self.linear_probe


def samples_from_results(results: Sequence[Mapping[str, Any]]) -> tuple[list[Sample], dict[str, bool]]:
    """The rows of benchmark results, and each score's direction (``{name: higher_is_better}``).

    Targets are identified by name: the same target in two results is one LOTO group (held out together),
    and two rankings (``Sample.setting``: the result's suite name, numbered if two results share one).

    Raises
    ------
    InvalidCalibration
        A result that is not a benchmark result, or a malformed one (e.g. a row without accuracy).
    """
    samples: list[Sample] = []
    directions: dict[str, bool] = {}
    names = [str(((r.get("suite") or {}) if isinstance(r, Mapping) else {}).get("name") or "") for r in results]
    for index, result in enumerate(results):
        setting = names[index] if names.count(names[index]) == 1 else f"{names[index]}#{index + 1}"
        if not isinstance(result, Mapping) or result.get("kind") != "benchmark" or "targets" not in result:
            kind = result.get("kind") if isinstance(result, Mapping) else None
            raise InvalidCalibration(
                f"input {index + 1} is not a benchmark result (kind {kind!r}); "
                "calibrate from the JSON that `backbone-rank benchmark` writes"
            )
        try:
            for entry in [*result.get("estimators", []), *result.get("baselines", [])]:
                directions[entry["name"]] = bool(entry["higher_is_better"])
            for target in result["targets"]:
                for row in target["backbones"]:
                    samples.append(_sample(target, row, setting))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InvalidCalibration(
                f"input {index + 1} is a malformed benchmark result ({type(err).__name__}: {err}); "
                "calibrate from the JSON that `backbone-rank benchmark` writes"
            ) from None
    if not samples:
        raise InvalidCalibration("the benchmark results hold no (target, backbone) rows")
    return samples, directions


def _sample(target: Mapping[str, Any], row: Mapping[str, Any], setting: str) -> Sample:
    accuracy = row.get("accuracy") or {}
    if accuracy.get("mean") is None:
        raise ValueError(f"target {target['name']!r}, backbone {row.get('id')!r} has no accuracy")
    probe = row.get("linear_probe_accuracy")
    n_images = target.get("n_rank_images")
    return Sample(
        target=str(target["name"]),
        backbone=str(row["id"]),
        n_classes=int(target["n_classes"]),
        scores={k: (None if v is None else float(v)) for k, v in row["scores"].items()},
        finetune=float(accuracy["mean"]),
        linear_probe=None if probe is None else float(probe),
        seconds=dict((row.get("seconds") or {}).get("per_estimator") or {}),
        setting=setting,
        images_per_class=None if not n_images else float(n_images) / int(target["n_classes"]),
    )


def _targets(samples: Sequence[Sample]) -> list[str]:
    return list(dict.fromkeys(s.target for s in samples))


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


def _inputs_of(sample: Sample) -> Mapping[str, float | None]:
    return {**sample.scores, IMAGES_PER_CLASS: sample.images_per_class}


def _design(samples: Sequence[Sample], inputs: Sequence[str]) -> NDArray[np.float64]:
    columns = [np.ones(len(samples))]
    for name in inputs:
        columns.append(np.array([_input_value(name, float(_inputs_of(s)[name]), s.n_classes) for s in samples]))  # type: ignore[arg-type]  # samples are _usable: every input present
    return np.column_stack(columns)


def _fit_coef(samples: Sequence[Sample], inputs: Sequence[str], ground_truth: str) -> NDArray[np.float64]:
    """Least squares with a small ridge on the slopes (the intercept is free); keeps 2-3 inputs stable."""
    x = _design(samples, inputs)
    y = np.array([to_logit(s.truth(ground_truth), s.n_classes) for s in samples])  # type: ignore[arg-type]  # samples are _usable: truth present
    penalty = _RIDGE * len(samples) * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ y)


def _usable(samples: Sequence[Sample], inputs: Sequence[str], ground_truth: str) -> list[Sample]:
    return [
        s
        for s in samples
        if s.truth(ground_truth) is not None and all(_inputs_of(s).get(n) is not None for n in inputs)
    ]


def _loto_residuals(
    samples: Sequence[Sample], inputs: Sequence[str], ground_truth: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """Held-out residuals in t-space and absolute errors in accuracy, every target left out in turn."""
    usable = _usable(samples, inputs, ground_truth)
    targets = _targets(usable)
    if len(targets) < 2:
        return None
    residuals, errors = [], []
    for held in targets:
        train = [s for s in usable if s.target != held]
        test = [s for s in usable if s.target == held]
        if len(train) < len(inputs) + 2:
            return None
        coef = _fit_coef(train, inputs, ground_truth)
        predicted = _design(test, inputs) @ coef
        truth = np.array([s.truth(ground_truth) for s in test], dtype=float)
        n_classes = np.array([s.n_classes for s in test], dtype=float)
        residuals.append(to_logit(truth, n_classes) - predicted)
        errors.append(np.abs(from_logit(predicted, n_classes) - truth))
    return np.concatenate(residuals), np.concatenate(errors)


def _candidate_inputs(samples: Sequence[Sample]) -> list[tuple[str, ...]]:
    """``class_means`` plus up to two other accuracy-like scores that every row has (so that the candidates'
    LOTO errors are measured on the same rows), each also with :data:`IMAGES_PER_CLASS` when the rows come
    from more than one sample size."""
    if not any(s.scores.get("class_means") is not None for s in samples):
        raise InvalidCalibration(
            "the benchmark results have no class_means scores, the anchor of the accuracy model; "
            "rerun the benchmark with the default estimators"
        )
    others = [n for n in ACCURACY_INPUTS[1:] if all(s.scores.get(n) is not None for s in samples)]
    subsets = [("class_means", *combo) for k in range(3) for combo in itertools.combinations(others, k)]
    sizes = {s.images_per_class for s in samples}
    if None not in sizes and len(sizes) > 1:  # several sample sizes to learn the size effect from
        subsets += [(*subset, IMAGES_PER_CLASS) for subset in subsets]
    return subsets


def _residual_bounds(residuals: NDArray[np.float64]) -> tuple[float, float]:
    """Split-conformal order statistics: the floor((n+1)α/2)-th and ceil((n+1)(1-α/2))-th smallest residuals.

    The (n+1) correction keeps the nominal coverage for a new exchangeable residual at finite n; rows of
    one target are not exchangeable with another's (a target-level shift), which is why the evaluation
    measures the coverage on held-out targets instead of trusting the nominal one.
    """
    ordered = np.sort(residuals)
    n = ordered.size
    alpha = 1.0 - NOMINAL_COVERAGE
    # the 1e-9 keeps 0.1 = 1 - 0.9 (0.0999...) from moving an exact integer position by one
    low = max(1, math.floor((n + 1) * alpha / 2.0 + 1e-9))
    high = min(n, math.ceil((n + 1) * (1.0 - alpha / 2.0) - 1e-9))
    return float(ordered[low - 1]), float(ordered[high - 1])


def _fit_accuracy_model(samples: Sequence[Sample], inputs: Sequence[str], ground_truth: str) -> AccuracyModel | None:
    """Fit on every usable sample; the interval comes from this input set's LOTO residuals."""
    usable = _usable(samples, inputs, ground_truth)
    loto = _loto_residuals(samples, inputs, ground_truth)
    if loto is None:
        return None
    low, high = _residual_bounds(loto[0])
    coef = _fit_coef(usable, inputs, ground_truth)
    return AccuracyModel(tuple(inputs), tuple(float(c) for c in coef), (float(low), float(high)), len(usable))


def _select_accuracy_models(samples: Sequence[Sample], ground_truth: str) -> list[AccuracyModel]:
    """The input set with the lowest LOTO MAE on ``samples``, then the class_means-only fallback."""
    best: tuple[float, tuple[str, ...]] | None = None
    for inputs in _candidate_inputs(samples):
        loto = _loto_residuals(samples, inputs, ground_truth)
        if loto is None:
            continue
        mae = float(np.mean(loto[1]))
        if best is None or mae < best[0] - 1e-12:  # ties keep the smaller (earlier) input set
            best = (mae, inputs)
    if best is None:
        return []
    # fallbacks for rankings that lack an input: class_means with the size when the size was chosen, then alone
    fallbacks = [("class_means", IMAGES_PER_CLASS)] if IMAGES_PER_CLASS in best[1] else []
    chosen = list(dict.fromkeys([best[1], *fallbacks, ("class_means",)]))
    models = [_fit_accuracy_model(samples, inputs, ground_truth) for inputs in chosen]
    return [m for m in models if m is not None]


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


def _tau(scores: NDArray[np.float64], accuracy: NDArray[np.float64]) -> float | None:
    keep = np.isfinite(scores)
    if keep.sum() < 2:
        return None
    return metric_values(scores[keep], accuracy[keep])["weighted_tau"]


def _rankings(samples: Sequence[Sample]) -> dict[tuple[str, str], list[Sample]]:
    """The rows of each ranking problem: one target in one setting."""
    groups: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.target, s.setting), []).append(s)
    return groups


def _per_target(values: Mapping[tuple[str, str], float | None]) -> dict[str, float | None]:
    """Mean over a target's settings of per-ranking values (a target counts once however many settings)."""
    collected: dict[str, list[float | None]] = {}
    for (target, _), value in values.items():
        collected.setdefault(target, []).append(value)
    return {target: _mean(found) for target, found in collected.items()}


def _fusion_tau(groups: Mapping[tuple[str, str], Sequence[Sample]], fusion: Fusion) -> dict[str, float | None]:
    """Weighted τ of the fused score per target (the mean over its settings)."""
    return _per_target(
        {
            key: _tau(fused_scores([s.scores for s in rows], fusion), np.array([s.finetune for s in rows], dtype=float))
            for key, rows in groups.items()
        }
    )


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _fusion_candidates(
    samples: Sequence[Sample], directions: Mapping[str, bool], max_member_seconds: float, fusable: Collection[str]
) -> list[str]:
    """Scores present on every target for at least two backbones, cheap to recompute (or the prior)."""
    groups = _rankings(samples)
    names = sorted({n for s in samples for n in s.scores} - _NOT_FUSABLE)
    out = []
    for name in names:
        if name not in directions or (name != _PRIOR and name not in fusable):
            continue
        if any(sum(s.scores.get(name) is not None for s in rows) < 2 for rows in groups.values()):
            continue
        costs = [s.seconds[name] for s in samples if name in s.seconds]
        if name != _PRIOR and costs and float(np.mean(costs)) > max_member_seconds:
            continue
        out.append(name)
    return out


def _select_fusion(
    samples: Sequence[Sample], directions: Mapping[str, bool], candidates: Sequence[str]
) -> tuple[Fusion, float | None]:
    """Greedy forward selection (equal weights, <= 3 members) on the mean weighted τ of ``samples``' targets."""
    groups = _rankings(samples)
    best: tuple[float, Fusion] | None = None
    chosen: list[str] = []
    while len(chosen) < _MAX_MEMBERS:
        step: tuple[float, Fusion] | None = None
        for name in candidates:
            if name in chosen:
                continue
            members = (*chosen, name)
            for normalisation in _NORMALISATIONS:
                fusion = Fusion(members, (1.0,) * len(members), normalisation, {m: directions[m] for m in members})
                value = _mean(list(_fusion_tau(groups, fusion).values()))
                if value is not None and (step is None or value > step[0] + 1e-12):
                    step = (value, fusion)
        if step is None or (best is not None and step[0] < best[0] + _MIN_GAIN):
            break  # adding a member no longer helps on the training targets
        best = step
        chosen = list(step[1].members)
    if best is None:
        raise InvalidCalibration("no estimator is scored for at least two backbones on every target: nothing to fuse")
    return best[1], best[0]


# ------------------------------------------------------------------------------------------ evaluation


def loto_evaluation(
    samples: Sequence[Sample],
    directions: Mapping[str, bool],
    *,
    max_member_seconds: float = 5.0,
    fusable: Collection[str] = FUSABLE_ESTIMATORS,
) -> dict[str, Any]:
    """Leave-one-target-out tables: accuracy MAE/coverage per target, fused vs single-estimator τw.

    For each held-out target everything is refitted on the other targets only: the accuracy model's
    input set (by inner LOTO), its coefficients and its interval quantiles; the fusion's members and
    standardisation. Baselines: the raw class-mean accuracy (no calibration) and a constant (the mean
    t-value of the training rows).
    """
    targets = _targets(samples)
    if len(targets) < 3:
        raise InvalidCalibration(
            f"leave-one-target-out needs at least 3 targets (inner selection needs 2 to train on); got {len(targets)}"
        )
    out: dict[str, Any] = {
        "protocol": "leave-one-target-out: each target's numbers come from a fit on the other targets only",
        "nominal_coverage": NOMINAL_COVERAGE,
        "max_member_seconds": max_member_seconds,
        "fusable": sorted(fusable),
        "accuracy": {},
    }
    for ground_truth in GROUND_TRUTHS:
        if not any(s.truth(ground_truth) is not None for s in samples):
            out["accuracy"][ground_truth] = None
            continue
        rows: list[dict[str, Any]] = []
        errors, raw_errors, const_errors, hits = [], [], [], []
        by_setting: dict[str, dict[str, list[float]]] = {}
        for held in targets:
            train = [s for s in samples if s.target != held]
            test = [s for s in samples if s.target == held and s.truth(ground_truth) is not None]
            models = _select_accuracy_models(train, ground_truth)
            if not test or not models:
                continue
            usable_train = [s for s in train if s.truth(ground_truth) is not None]
            constant = float(
                np.mean([to_logit(s.truth(ground_truth), s.n_classes) for s in usable_train])  # type: ignore[arg-type]  # truth present: usable_train
            )
            err, raw, const, hit = [], [], [], []
            for s in test:
                truth = float(s.truth(ground_truth))  # type: ignore[arg-type]  # test holds samples with a truth only
                prediction = _predict(models, s.n_classes, _inputs_of(s))
                if prediction is None:
                    continue
                err.append(abs(prediction["value"] - truth))
                hit.append(prediction["low"] <= truth <= prediction["high"])
                const.append(abs(float(from_logit(constant, s.n_classes)) - truth))
                setting = by_setting.setdefault(s.setting, {"err": [], "hit": [], "raw": [], "per_class": []})
                setting["err"].append(err[-1])
                setting["hit"].append(float(hit[-1]))
                if s.images_per_class is not None:
                    setting["per_class"].append(s.images_per_class)
                if (class_means := s.scores.get("class_means")) is not None:
                    raw.append(abs(float(class_means) - truth))
                    setting["raw"].append(raw[-1])
            if not err:
                continue
            rows.append(
                {
                    "target": held,
                    "n": len(err),
                    "mae": float(np.mean(err)),
                    "coverage": float(np.mean(hit)),
                    "mae_raw_class_means": float(np.mean(raw)) if raw else None,
                    "mae_constant": float(np.mean(const)),
                    "inputs": list(models[0].inputs),
                }
            )
            errors += err
            raw_errors += raw
            const_errors += const
            hits += hit
        out["accuracy"][ground_truth] = {
            "per_target": rows,
            "overall": {
                "n": len(errors),
                "mae": float(np.mean(errors)) if errors else None,
                "mean_target_mae": _mean([r["mae"] for r in rows]),
                "coverage": float(np.mean(hits)) if hits else None,
                "nominal_coverage": NOMINAL_COVERAGE,
                "mae_raw_class_means": float(np.mean(raw_errors)) if raw_errors else None,
                "mae_constant": float(np.mean(const_errors)) if const_errors else None,
            },
            "per_setting": [
                {
                    "setting": name,
                    "images_per_class": _mean(list(v["per_class"])),
                    "n": len(v["err"]),
                    "mae": float(np.mean(v["err"])),
                    "coverage": float(np.mean(v["hit"])),
                    "mae_raw_class_means": _mean(list(v["raw"])),
                }
                for name, v in by_setting.items()
            ],
        }
    out["fusion"] = _loto_fusion(samples, directions, targets, max_member_seconds, fusable)
    # the same protocol with every estimator allowed as a member (no cost limit): what the cost rule gives up
    every = {n for s in samples for n in s.scores} - _NOT_FUSABLE
    unrestricted = _loto_fusion(samples, directions, targets, math.inf, every)
    out["fusion_unrestricted"] = {
        "fused_mean_weighted_tau": unrestricted["fused_mean_weighted_tau"],
        "fused_at_least_best_single": unrestricted["fused_at_least_best_single"],
        "per_target": [
            {"target": r["target"], "members": r["fusion"]["members"], "weighted_tau": r["weighted_tau"]}
            for r in unrestricted["per_target"]
        ],
    }
    return out


def _loto_fusion(
    samples: Sequence[Sample],
    directions: Mapping[str, bool],
    targets: Sequence[str],
    max_member_seconds: float,
    fusable: Collection[str],
) -> dict[str, Any]:
    groups = _rankings(samples)

    def score_tau(name: str, higher_is_better: bool) -> dict[str, float | None]:
        per_ranking = {}
        for key, rows in groups.items():
            raw = np.array([np.nan if s.scores.get(name) is None else s.scores[name] for s in rows], dtype=float)
            per_ranking[key] = _tau(
                as_higher_is_better(raw, higher_is_better), np.array([s.finetune for s in rows], dtype=float)
            )
        return _per_target(per_ranking)

    singles = sorted({n for s in samples for n in s.scores} - _NOT_FUSABLE - {_PRIOR})
    single_tau = {name: score_tau(name, directions[name]) for name in singles if name in directions}
    prior_tau = score_tau(_PRIOR, True) if _PRIOR in directions else {}
    per_target = []
    fused_values: list[float | None] = []
    selected_single_values: list[float | None] = []
    for held in targets:
        train = [s for s in samples if s.target != held]
        candidates = _fusion_candidates(train, directions, max_member_seconds, fusable)
        fusion, train_tau = _select_fusion(train, directions, candidates)
        tau = _fusion_tau({key: rows for key, rows in groups.items() if key[0] == held}, fusion)[held]
        # the honest single-estimator analogue: the one best on the training targets
        train_targets = [t for t in targets if t != held]
        ranked_singles = sorted(
            (n for n in single_tau if all(single_tau[n][t] is not None for t in train_targets)),
            key=lambda n: (-float(np.mean([single_tau[n][t] for t in train_targets])), n),
        )
        picked = ranked_singles[0] if ranked_singles else None
        fused_values.append(tau)
        selected_single_values.append(single_tau[picked][held] if picked else None)
        per_target.append(
            {
                "target": held,
                "fusion": fusion.to_dict(),
                "train_weighted_tau": train_tau,
                "weighted_tau": tau,
                "selected_single": picked,
                "selected_single_weighted_tau": single_tau[picked][held] if picked else None,
                "single_weighted_tau": {n: single_tau[n][held] for n in single_tau},
                "prior_weighted_tau": prior_tau.get(held),
            }
        )
    single_means = {n: _mean(list(v.values())) for n, v in single_tau.items()}
    present_means = {n: v for n, v in single_means.items() if v is not None}
    ranked = sorted(present_means, key=lambda n: -present_means[n])
    fused_mean = _mean(fused_values)
    best = ranked[0] if ranked else None
    best_mean = single_means[best] if best else None
    # the bar within the fusion's cost class: cheap enough to be recomputed for p_best
    cheap = set(_fusion_candidates(samples, directions, max_member_seconds, fusable)) - {_PRIOR}
    best_cheap = next((n for n in ranked if n in cheap), None)
    return {
        "metric": "weighted Kendall tau (scipy.stats.weightedtau) of the score vs the fine-tuned accuracy, "
        "mean over targets",
        "per_target": per_target,
        "fused_mean_weighted_tau": fused_mean,
        "single_mean_weighted_tau": single_means,
        "prior_mean_weighted_tau": _mean(list(prior_tau.values())) if prior_tau else None,
        "best_single": best,
        "best_single_mean_weighted_tau": best_mean,
        "best_fusable_single": best_cheap,
        "best_fusable_single_mean_weighted_tau": single_means[best_cheap] if best_cheap else None,
        "loto_selected_single_mean_weighted_tau": _mean(selected_single_values),
        "fused_at_least_best_single": (
            None if fused_mean is None or best_mean is None else bool(fused_mean >= best_mean - 1e-12)
        ),
    }


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


def fit_calibration(
    results: Sequence[Mapping[str, Any]],
    *,
    files: Sequence[str | os.PathLike[str]] | None = None,
    max_member_seconds: float = 5.0,
    fusable: Collection[str] = FUSABLE_ESTIMATORS,
) -> Calibration:
    """Fit on every target of ``results`` (benchmark result dicts) and attach the LOTO evaluation.

    Parameters
    ----------
    results : sequence of benchmark results
    files : the paths they were read from (recorded in ``source``), optional
    max_member_seconds : float
        Fusion members must cost at most this many seconds per (target, backbone) on average (as the
        benchmark recorded), since ``p_best`` recomputes them on every resample. The prior is free.
    fusable : collection of str
        Estimators allowed as fusion members (default :data:`FUSABLE_ESTIMATORS`, the ones without a
        D x D decomposition or PCA). Every estimator is still compared as a single one.

    Raises
    ------
    InvalidCalibration
        Not benchmark results, fewer than 3 targets, or no ``class_means`` scores.
    """
    samples, directions = samples_from_results(results)
    evaluation = loto_evaluation(samples, directions, max_member_seconds=max_member_seconds, fusable=fusable)
    accuracy: dict[str, list[AccuracyModel] | None] = {}
    for gt in GROUND_TRUTHS:
        models = _select_accuracy_models(samples, gt) if any(s.truth(gt) is not None for s in samples) else []
        accuracy[gt] = models or None
    candidates = _fusion_candidates(samples, directions, max_member_seconds, fusable)
    fusion, train_tau = _select_fusion(samples, directions, candidates)
    # what the packaged fusion could choose from, and how it scores on the targets it was chosen on (optimistic)
    evaluation["fusion"]["final_candidates"] = candidates
    evaluation["fusion"]["final_train_mean_weighted_tau"] = train_tau
    names = list(files) if files is not None else [None] * len(results)
    source = {
        "results": [
            {
                "file": None if name is None else str(name),
                "suite": (r.get("suite") or {}).get("name"),
                "fingerprint": (r.get("environment") or {}).get("fingerprint"),
                "created": r.get("created"),
                "n_targets": len(r["targets"]),
                "n_backbones": len({row["id"] for t in r["targets"] for row in t["backbones"]}),
            }
            for r, name in zip(results, names, strict=True)
        ]
    }
    created = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Calibration(accuracy=accuracy, fusion=fusion, evaluation=evaluation, source=source, created=created)


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
        return load_calibration(DEFAULT_CALIBRATION_PATH)
    return load_calibration(calibration)


# --------------------------------------------------------------------------------------------- p_best


def _half_sample(labels: NDArray[np.int64], rng: np.random.Generator) -> NDArray[np.intp]:
    """Class-stratified half-sample without replacement (at least 2 per class, so leave-one-out scores work)."""
    picked = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        take = min(rows.size, max(2, int(math.ceil(rows.size / 2))))
        picked.append(rng.choice(rows, size=take, replace=False))
    return np.sort(np.concatenate(picked))


def p_best(
    score_fn: Callable[[NDArray[np.intp]], list[Mapping[str, float | None]]],
    labels: NDArray[np.int64],
    fusion: Fusion,
    *,
    n_bootstrap: int = 50,
    seed: int = 0,
    on_replicate: Callable[[int], None] | None = None,
) -> NDArray[np.float64]:
    """Share of half-sample replicates in which each backbone has the highest fused score.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(rows) -> [{member: score}, ...]``: every backbone's member scores recomputed on the
        image subset ``rows`` (the same rows for every backbone).
    labels : ndarray of shape (N,)
        Class of each image (the strata).
    n_bootstrap : int
        Replicates (> 0). Deterministic given ``seed``.
    on_replicate : callable, optional
        Called with the number of replicates done after each one (progress; may raise to stop).

    Returns
    -------
    ndarray of shape (n_backbones,)
        Sums to 1; tied leaders share a replicate equally.
    """
    if n_bootstrap <= 0:
        raise ValueError("n_bootstrap must be positive")
    rng = np.random.default_rng(seed)
    counts: NDArray[np.float64] | None = None
    for replicate in range(1, n_bootstrap + 1):
        rows = _half_sample(np.asarray(labels), rng)
        fused = fused_scores(score_fn(rows), fusion)
        if counts is None:
            counts = np.zeros(fused.size)
        if not np.isfinite(fused).any():
            counts += 1.0 / fused.size  # nothing scored: no backbone is preferred
        else:
            top = np.flatnonzero(fused == np.nanmax(fused))
            counts[top] += 1.0 / top.size
        if on_replicate is not None:
            on_replicate(replicate)
    assert counts is not None
    return counts / n_bootstrap


@functools.cache
def _suite_source_accuracies() -> dict[str, float]:
    """Source accuracies the known suites record (published ImageNet top-1 of the real backbones)."""
    from service.pipeline.benchmark.suites import get_suite, suite_names

    known: dict[str, float] = {}
    for name in suite_names():
        for backbone in get_suite(name).backbones:
            if backbone.source_accuracy is not None and not backbone.id.startswith(("zoo:", "unavailable:")):
                known[backbone.id] = float(backbone.source_accuracy)
    return known


def source_accuracy_of(backbone_id: str) -> float | None:
    """The backbone's accuracy on its own source task when known offline, else None: what the host knows (the
    built-in zoo's card, :func:`service.pipeline.plugins.source_info`), else the published ImageNet top-1 the
    known benchmark suites record (the same numbers the benchmark's ``source_accuracy`` baseline, and so the
    calibration, used)."""
    _, value = source_info(backbone_id)
    if value is not None:
        return value if math.isfinite(value) else None
    return _suite_source_accuracies().get(backbone_id)


# ------------------------------------------------------------------------------------------- markdown


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def evaluation_markdown(data: Mapping[str, Any]) -> str:
    """The LOTO tables of a calibration (``Calibration.to_dict()``) as Markdown, for benchmarks/README.md."""
    evaluation = data["evaluation"]
    lines: list[str] = []
    for ground_truth, table in evaluation["accuracy"].items():
        if not table:
            continue
        overall = table["overall"]
        label = ground_truth.replace("_", "-")
        lines += [
            f"Predicted {label} accuracy, leave-one-target-out (mean absolute error, accuracy as a fraction; interval "
            f"coverage nominal {overall['nominal_coverage']:.0%}, measured {_cell(overall['coverage'], '.0%')}):",
            "",
            "| target | backbones | MAE | coverage | MAE, raw class-mean accuracy | MAE, constant | inputs |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in table["per_target"]:
            lines.append(
                f"| {row['target']} | {row['n']} | {_cell(row['mae'], '.3f')} | {_cell(row['coverage'], '.0%')} | "
                f"{_cell(row['mae_raw_class_means'], '.3f')} | {_cell(row['mae_constant'], '.3f')} | "
                f"{', '.join(row['inputs'])} |"
            )
        lines += [
            f"| **all** | {overall['n']} | **{_cell(overall['mae'], '.3f')}** | {_cell(overall['coverage'], '.0%')} | "
            f"{_cell(overall['mae_raw_class_means'], '.3f')} | {_cell(overall['mae_constant'], '.3f')} | |",
            "",
        ]
        settings = table.get("per_setting") or []
        if len(settings) > 1:
            lines += [
                f"The same held-out {label} predictions by benchmark setting:",
                "",
                "| setting | images per class | rows | MAE | coverage | MAE, raw class-mean accuracy |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {row['setting']} | {_cell(row['images_per_class'], '.0f')} | {row['n']} | "
                f"{_cell(row['mae'], '.3f')} | {_cell(row['coverage'], '.0%')} | "
                f"{_cell(row['mae_raw_class_means'], '.3f')} |"
                for row in settings
            ]
            lines.append("")
    fusion = evaluation["fusion"]
    best = fusion["best_single"]
    lines += [
        "Fused ranking vs single estimators, leave-one-target-out (weighted Kendall τ against the fine-tuned "
        "accuracy; fusion and the selected single estimator are chosen on the other targets only):",
        "",
        f"| target | fused | members | selected single | best single ({best}) | source-accuracy prior |",
        "|---|---|---|---|---|---|",
    ]
    for row in fusion["per_target"]:
        lines.append(
            f"| {row['target']} | {_cell(row['weighted_tau'], '+.3f')} | {', '.join(row['fusion']['members'])} | "
            f"{row['selected_single']} {_cell(row['selected_single_weighted_tau'], '+.3f')} | "
            f"{_cell(row['single_weighted_tau'].get(best) if best else None, '+.3f')} | "
            f"{_cell(row['prior_weighted_tau'], '+.3f')} |"
        )
    verdict = fusion["fused_at_least_best_single"]
    lines += [
        f"| **mean** | **{_cell(fusion['fused_mean_weighted_tau'], '+.3f')}** | | "
        f"{_cell(fusion['loto_selected_single_mean_weighted_tau'], '+.3f')} | "
        f"{_cell(fusion['best_single_mean_weighted_tau'], '+.3f')} | "
        f"{_cell(fusion['prior_mean_weighted_tau'], '+.3f')} |",
        "",
        "Verdict: the fused ranking "
        + ("reaches" if verdict else "does **not** reach" if verdict is False else "cannot be compared with")
        + f" the best single estimator in hindsight ({best}). Best single estimator cheap enough to be a fusion "
        f"member (recomputed for p_best): {fusion.get('best_fusable_single')} "
        f"{_cell(fusion.get('best_fusable_single_mean_weighted_tau'), '+.3f')}.",
    ]
    unrestricted = evaluation.get("fusion_unrestricted")
    if unrestricted:
        lines += [
            "",
            "Without the cost rule (every estimator may be a member, p_best then recomputes expensive ones), the "
            f"same protocol gives a mean of {_cell(unrestricted['fused_mean_weighted_tau'], '+.3f')} ("
            + "; ".join(f"{r['target']}: {', '.join(r['members'])}" for r in unrestricted["per_target"])
            + ").",
        ]
    return "\n".join(lines) + "\n"
