"""Is the transfer advice right? Leave-one-target-out on benchmark results, against fixed policies.

A benchmark result holds, per (target, backbone), two fine-tuned ground truths: a full fine-tune and a linear
probe (a new head on frozen features, the ``linear`` strategy). Between those two the ranking's transfer advice
(:mod:`service.pipeline.ranking.transfer`) decides by the calibrated predictions: ``linear`` when its predicted
accuracy is at least the full fine-tune's. Here each target is held out in turn, both accuracy models are refitted
on the other targets (as the calibration fits them, :mod:`service.pipeline.calibration.selection`), and the
held-out rows are advised from those predictions. Reported per setting (images per class) and overall:

- ``hit_rate``: share of pairs whose advised strategy is the better one or within one accuracy point of it,
- ``regret``: mean accuracy lost against the better strategy, for the advice and for the fixed policies
  *always full* and *always linear*.

The benchmark has no partial fine-tunes and no target whose classes are source classes, so ``partial`` and
``as_classifier`` are not scored here: the advice is measured on the choice the ground truth covers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import InvalidCalibration
from service.pipeline.calibration.model import _predict
from service.pipeline.calibration.samples import Sample, _inputs_of, _targets
from service.pipeline.calibration.selection import _select_accuracy_models

__all__ = ["WITHIN", "loto_advice_evaluation"]

#: An advised strategy within this much accuracy of the better one counts as right (one point).
WITHIN = 0.01
_POLICIES = ("advised", "always_full", "always_linear")


def loto_advice_evaluation(samples: Sequence[Sample]) -> dict[str, Any]:
    """Leave-one-target-out evaluation of the linear-vs-full advice (module docstring).

    Parameters
    ----------
    samples : sequence of Sample
        Benchmark rows with both ground truths (rows missing either are left out).

    Returns
    -------
    dict
        ``{"within": 0.01, "pairs": [...], "by_setting": {setting: summary}, "overall": summary}``; a summary is
        ``{"n", "hit_rate": {policy: share}, "regret": {policy: mean}, "advised_linear_share"}``.

    Raises
    ------
    InvalidCalibration
        Fewer than 3 targets with both ground truths (the accuracy models' inner selection needs 2 to train on).
    """
    usable = [s for s in samples if s.finetune is not None and s.linear_probe is not None]
    targets = _targets(usable)
    if len(targets) < 3:
        raise InvalidCalibration(
            f"the advice is evaluated leave-one-target-out on at least 3 targets with both a fine-tuned and a "
            f"linear-probe accuracy; got {len(targets)}"
        )
    pairs: list[dict[str, Any]] = []
    for held in targets:
        train = [s for s in usable if s.target != held]
        models = {gt: _select_accuracy_models(train, gt) for gt in ("finetune", "linear_probe")}
        for sample in (s for s in usable if s.target == held):
            inputs = _inputs_of(sample)
            predicted = {gt: _predict(models[gt], sample.n_classes, inputs) for gt in models}
            if predicted["finetune"] is None or predicted["linear_probe"] is None:
                continue
            linear = predicted["linear_probe"]["value"] >= predicted["finetune"]["value"]
            full_truth, linear_truth = float(sample.finetune or 0.0), float(sample.linear_probe or 0.0)
            best = max(full_truth, linear_truth)
            chosen = {
                "advised": linear_truth if linear else full_truth,
                "always_full": full_truth,
                "always_linear": linear_truth,
            }
            pairs.append(
                {
                    "target": sample.target,
                    "backbone": sample.backbone,
                    "setting": sample.setting,
                    "advised": "linear" if linear else "full",
                    "predicted": {gt: p["value"] for gt, p in predicted.items() if p is not None},
                    "truth": {"finetune": full_truth, "linear_probe": linear_truth},
                    "regret": {policy: best - value for policy, value in chosen.items()},
                }
            )
    by_setting = {
        setting: _summary([p for p in pairs if p["setting"] == setting])
        for setting in sorted({p["setting"] for p in pairs})
    }
    return {"within": WITHIN, "pairs": pairs, "by_setting": by_setting, "overall": _summary(pairs)}


def _summary(pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not pairs:
        return {"n": 0, "hit_rate": {}, "regret": {}, "advised_linear_share": None}
    regrets = {policy: np.array([p["regret"][policy] for p in pairs]) for policy in _POLICIES}
    return {
        "n": len(pairs),
        "hit_rate": {policy: float(np.mean(values <= WITHIN + 1e-12)) for policy, values in regrets.items()},
        "regret": {policy: float(values.mean()) for policy, values in regrets.items()},
        "advised_linear_share": float(np.mean([p["advised"] == "linear" for p in pairs])),
    }
