"""Layer scores: how well each stage of a backbone transfers, and what that says about freezing.

Early stages of a pretrained network compute general features (edges, blobs, textures), late ones features
specific to the source task (Yosinski et al., "How transferable are features in deep neural networks?",
NeurIPS 2014). Scoring every stage's spatially averaged output on the target shows where that turns: the
stage after which the scores stop rising is as deep as the source's features help this target, so the
stages up to it can stay frozen and the later ones should be retrained (Lee et al., "Surgical
Fine-Tuning Improves Adaptation to Distribution Shifts", ICLR 2023, find the best block to tune depends
on the kind of shift).

Every stage and the pooled pre-logits come from one forward pass
(:func:`service.pipeline.features.extract.extract_features` with ``stages=True``); each is scored with
:data:`LAYER_ESTIMATORS`. The decision uses ``ridge_probe``, the exact leave-one-out accuracy of a
ridge classifier: an accuracy on the same scale for every layer, whatever its width, where LogME's
evidence and most other scores grow or shrink with the dimension. LogME is reported next to it.

- **best layer for feature extraction**: the layer with the highest leave-one-out accuracy (the earliest
  of equal ones: it costs the least to run).
- **freezing depth**: the earliest layer whose accuracy is within one standard error of the best,
  ``sqrt(p (1 - p) / N)`` at the best accuracy ``p`` over the ``N`` images scored (a smaller
  difference is not told apart by ``N`` leave-one-out trials); the stages up to and including it are
  frozen. When that is the last stage or the pre-logits, everything transfers and the advice is a new
  head on frozen features.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from estimators import Statistics, score
from service.pipeline.features.extract import FeatureSet
from service.pipeline.ranking.threads import scoring_threads

__all__ = [
    "DECIDING_ESTIMATOR",
    "LAYER_ESTIMATORS",
    "PRE_LOGITS",
    "freeze_depth",
    "frozen_span",
    "layer_report",
    "score_layer",
]

#: Scores of every layer; the first decides.
LAYER_ESTIMATORS: tuple[str, ...] = ("ridge_probe", "logme")
DECIDING_ESTIMATOR = LAYER_ESTIMATORS[0]
#: The name of the last layer: the pooled features the head reads (``forward_head(pre_logits=True)``).
PRE_LOGITS = "pre_logits"


def score_layer(features: Any, labels: Any) -> dict[str, float | None]:
    """:data:`LAYER_ESTIMATORS` on one layer's (N, D) features; None where a score is not finite."""
    stats = Statistics(features, labels)
    with scoring_threads(stats.n_samples, stats.n_features):
        scores: dict[str, float | None] = {}
        for name in LAYER_ESTIMATORS:
            value = score(name, stats=stats)
            scores[name] = value if math.isfinite(value) else None
    return scores


def freeze_depth(accuracies: Sequence[float | None], n_samples: int) -> tuple[int, int]:
    """The best layer and the freezing depth from per-layer accuracies (the module docstring's rule).

    Parameters
    ----------
    accuracies : sequence of float or None
        Leave-one-out accuracy of each layer in forward order, the pre-logits last; None: not scored.
    n_samples : int
        Images behind each accuracy.

    Returns
    -------
    best, earliest : int
        Positions in ``accuracies`` of the best layer and of the earliest layer within one standard error
        of it (the last layer to freeze).

    Raises
    ------
    ValueError
        No layer was scored.
    """
    scored = [(i, a) for i, a in enumerate(accuracies) if a is not None]
    if not scored:
        raise ValueError("no layer was scored")
    best_value = max(a for _, a in scored)
    best = min(i for i, a in scored if a == best_value)
    tolerance = math.sqrt(best_value * (1.0 - best_value) / max(n_samples, 1))
    earliest = min(i for i, a in scored if a >= best_value - tolerance)
    return best, earliest


def layer_report(feature_set: FeatureSet) -> dict[str, Any] | None:
    """Per-layer scores of one backbone and the layer advice (a ``BackboneRow.layers`` block).

    Returns None when the extraction kept no stages (``stages=False``); a block with ``layers`` holding
    only the pre-logits and a ``note`` when the model cannot return its stages.
    """
    if feature_set.stages is None or feature_set.features is None:
        return None
    labels = feature_set.labels
    layers: list[dict[str, Any]] = [
        {
            "index": stage.index,
            "module": stage.module,
            "dim": int(stage.features.shape[1]),
            "scores": score_layer(stage.features, labels),
        }
        for stage in feature_set.stages
    ]
    layers.append(
        {
            "index": None,
            "module": PRE_LOGITS,
            "dim": int(feature_set.features.shape[1]),
            "scores": score_layer(feature_set.features, labels),
        }
    )
    n_stages = len(feature_set.stages)
    best, earliest = freeze_depth([layer["scores"][DECIDING_ESTIMATOR] for layer in layers], len(labels))
    report: dict[str, Any] = {
        "layers": layers,
        "decided_by": DECIDING_ESTIMATOR,
        "best_layer": layers[best]["module"],
        "n_stages": n_stages,
        "freeze_stages": None,
        "advice": None,
    }
    if not n_stages:
        report["note"] = "the model does not return its stages (no timm feature_info/forward_intermediates)"
        return report
    report["freeze_stages"] = frozen = min(earliest + 1, n_stages)
    report["advice"] = _advice(layers, n_stages, frozen)
    return report


def frozen_span(layers: Sequence[Mapping[str, Any]], frozen: int) -> str:
    """The first ``frozen`` stages in words, e.g. "stages 1-2 (up to layer1)" (``layers``: a report's layers)."""
    stages = "stage 1" if frozen == 1 else f"stages 1-{frozen}"
    return f"{stages} (up to {layers[frozen - 1]['module']})"


def _advice(layers: Sequence[dict[str, Any]], n_stages: int, frozen: int) -> str:
    if frozen >= n_stages:
        return "every stage transfers: train a new head on the frozen features"
    return (
        f"freeze {frozen_span(layers, frozen)} and fine-tune from {layers[frozen]['module']} on: "
        f"the later stages score no higher on this data"
    )
