r"""Choosing a calibration's accuracy models and fusion on a set of training targets (offline).

The choices here are made once on every target for the packaged fit (:mod:`service.pipeline.calibration.fit`)
and once per held-out target by the leave-one-target-out evaluation
(:mod:`service.pipeline.calibration.evaluation`), which is why they sit apart from both: the evaluation must
repeat exactly the selection the fit makes, on the other targets only.

Accuracy models
---------------
The anchor is the analytic view of the softmax layer (Seddik & Tamaazousti, AAAI 2022; Seddik et al.,
AISTATS 2021): the weights of a trained softmax converge to the centred class means, so the accuracy of
the class-mean softmax (estimator ``class_means``, leave-one-out) is itself an estimate of what a
trained head reaches. It is biased (fine-tuning also moves the features; a probe uses the covariances),
so it is calibrated in :math:`t`-space (:func:`service.pipeline.calibration.model.to_logit`). The model is a
ridge-stabilised linear regression :math:`t(a) = \beta_0 + \sum_j \beta_j\, t(s_j)` on ``class_means`` plus at
most two other accuracy-like scores (:data:`ACCURACY_INPUTS`), and, when the results come from more than one
sample size, :math:`\log` of the images per class (the leave-one-out scores hardly change from 10 to 20 images
per class while the fine-tuned accuracy rises); which inputs is chosen by inner LOTO mean absolute error.
The interval is the :math:`(1-q)/2` and :math:`(1+q)/2` quantiles of the LOTO residuals in :math:`t`-space
(split-conformal order statistics, nominal coverage :math:`q` = 90 %); the evaluation reports the coverage
actually measured on held-out targets next to the nominal one.

Fusion
------
Members (at most three, equal weights) and the standardisation are chosen by greedy forward selection
maximising the mean weighted Kendall τ over the *training* targets (a member joins only if it adds at least
0.01). Candidates are the estimators cheap enough to be recomputed on resamples (:data:`FUSABLE_ESTIMATORS`: no
D x D decomposition or PCA, the linear probe's bounded fit; and a recorded mean cost per pair below
``max_member_seconds``) and the backbone's source-task accuracy (a prior, as Chaves et al. 2024 recommend).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidCalibration
from service.pipeline.benchmark.metrics import metric_values
from service.pipeline.calibration.model import (
    _NORMALISATIONS,
    _RIDGE,
    IMAGES_PER_CLASS,
    NOMINAL_COVERAGE,
    PRIOR_FIELDS,
    AccuracyModel,
    Fusion,
    _input_value,
    from_logit,
    fused_scores,
    to_logit,
)
from service.pipeline.calibration.samples import Sample, _inputs_of, _mean, _per_target, _rankings, _targets

__all__ = ["ACCURACY_INPUTS", "FUSABLE_ESTIMATORS"]
#: Accuracy-like scores (fractions in [0, 1]) the accuracy model may use; ``class_means`` is always one.
ACCURACY_INPUTS = ("class_means", "knn", "linear_probe", "lda")
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
#: Every prior may join a fusion whatever ``fusable`` says (nothing to recompute on resamples).
_PRIORS = frozenset(PRIOR_FIELDS)
_MAX_MEMBERS = 3
#: A member joins the fusion only if it raises the training targets' mean τw by this much: with a handful
#: of targets smaller gains are mostly noise, and every member costs p_best time.
_MIN_GAIN = 0.01


# ------------------------------------------------------------------------------------- accuracy model


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


# ---------------------------------------------------------------------------------------------- fusion


def _tau(scores: NDArray[np.float64], accuracy: NDArray[np.float64]) -> float | None:
    keep = np.isfinite(scores)
    if keep.sum() < 2:
        return None
    return metric_values(scores[keep], accuracy[keep])["weighted_tau"]


def _fusion_tau(groups: Mapping[tuple[str, str], Sequence[Sample]], fusion: Fusion) -> dict[str, float | None]:
    """Weighted τ of the fused score per target (the mean over its settings)."""
    return _per_target(
        {
            key: _tau(fused_scores([s.scores for s in rows], fusion), np.array([s.finetune for s in rows], dtype=float))
            for key, rows in groups.items()
        }
    )


def _fusion_candidates(
    samples: Sequence[Sample], directions: Mapping[str, bool], max_member_seconds: float, fusable: Collection[str]
) -> list[str]:
    """Scores present on every target for at least two backbones, cheap to recompute (or the prior)."""
    groups = _rankings(samples)
    names = sorted({n for s in samples for n in s.scores} - _NOT_FUSABLE)
    out = []
    for name in names:
        if name not in directions or (name not in _PRIORS and name not in fusable):
            continue
        if any(sum(s.scores.get(name) is not None for s in rows) < 2 for rows in groups.values()):
            continue
        costs = [s.seconds[name] for s in samples if name in s.seconds]
        if name not in _PRIORS and costs and float(np.mean(costs)) > max_member_seconds:
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
