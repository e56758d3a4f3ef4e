"""How to transfer: per backbone, the strategy its scores advise, with each strategy's expected accuracy and cost.

The choices of transfer-learning practice, cheapest first:

- ``as_classifier``: the pretrained model as it is, each target class read off the source class it falls in. It
  applies when the target's classes are source classes: then the source head's predictions map onto the target
  labels almost one to one. Its accuracy is measured here, not predicted: the leave-one-out accuracy of that
  mapping (each image's source class mapped to the target class most of the *other* images of that source class
  have), with a Wilson 90 % interval.
- ``linear``: a new head on frozen features (feature extraction); the calibrated linear-probe prediction.
- ``partial``: freeze the first stages, fine-tune the rest; the depth is the layer advice's
  (:mod:`service.pipeline.ranking.layers`, a ranking with ``layer_scores``). No prediction yet: the benchmark
  has no partial fine-tunes to calibrate one on.
- ``full``: fine-tune everything; the calibrated fine-tune prediction.
- ``scratch``: train the architecture from random weights. An untrained candidate (``random:ARCH``) is always
  advised so (there is nothing to transfer), and a pretrained one when the ranking also holds its architecture
  untrained and that is predicted to fine-tune at least as well as the pretrained one's advised option: its
  pretrained weights are not expected to help on this data (:func:`scratch_advice`, across the ranked rows).

The rule, in order:

1. ``as_classifier`` when the mapping is one to one (no two target classes read off the same source class) and
   its accuracy is at least the best trained strategy's predicted accuracy less one standard error of the
   measurement (training would not beat it by a margin the data can show);
2. ``linear`` when its predicted accuracy is at least the full fine-tune's (as good, and a fraction of the cost);
3. otherwise ``partial`` at the layer advice's depth when the layer scores say only the first stages transfer
   (``0 < freeze_stages < n_stages``), else ``full``.

Without a calibration there are no predictions: the advice then rests on the source head and the layer scores
alone, or is left out (``None``).

Cost is counted in passes over the training images (one forward pass = 1; a training step = a forward and a
backward pass, ~3): ``as_classifier`` 0, ``linear`` 1 (the features are extracted once), ``full``
3 x epochs, ``partial`` (1 + 2 x trained share of the stages) x epochs, with the epochs of the fine-tune's
defaults (``service/pipeline/finetune/arguments.py``); times the backbone's GMACs per image where timm publishes
them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.pipeline.finetune.arguments import STRATEGY_DEFAULTS
from service.pipeline.ranking.layers import frozen_span

__all__ = ["scratch_advice", "source_head_accuracy", "transfer_advice"]

_Z90 = 1.6448536269514722


def source_head_accuracy(source_probs: NDArray[Any], labels: NDArray[np.int64]) -> dict[str, Any]:
    """Leave-one-out accuracy of reading each target class off the source class it falls in.

    Parameters
    ----------
    source_probs : ndarray of shape (N, C_s)
        The source head's softmax for each image.
    labels : ndarray of shape (N,)
        Target classes, ``0 .. C_t - 1``.

    Returns
    -------
    dict
        ``accuracy`` (leave-one-out: an image counts as right only when the other images of its source class
        name its target class strictly most often), ``one_to_one`` (every target class's most frequent source
        class is its own), ``low``/``high`` (Wilson 90 % interval) and ``n``.
    """
    source = np.asarray(source_probs).argmax(axis=1)
    labels = np.asarray(labels, dtype=np.int64)
    n, n_classes = labels.shape[0], int(labels.max()) + 1 if labels.size else 0
    counts = np.zeros((int(source.max()) + 1 if n else 0, n_classes), dtype=np.int64)
    np.add.at(counts, (source, labels), 1)
    own = counts[source, labels] - 1  # the other images of this source class with this image's label
    rival = counts[source].copy()
    rival[np.arange(n), labels] = -1
    correct = own > rival.max(axis=1)
    accuracy = float(correct.mean()) if n else 0.0
    dominant = counts.argmax(axis=0)  # per target class, the source class most of its images fall in
    low, high = _wilson(accuracy, n)
    return {
        "accuracy": accuracy,
        "low": low,
        "high": high,
        "n": int(n),
        "one_to_one": bool(n_classes and len(set(dominant.tolist())) == n_classes),
    }


def _wilson(p: float, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    centre = (p + _Z90**2 / (2 * n)) / (1 + _Z90**2 / n)
    half = _Z90 * math.sqrt(p * (1 - p) / n + _Z90**2 / (4 * n * n)) / (1 + _Z90**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _cost(strategy: str, trained_share: float, gmacs: float | None, n_images: int) -> dict[str, float | None]:
    passes = {
        "as_classifier": 0.0,
        "linear": 1.0,
        "partial": (1.0 + 2.0 * trained_share) * STRATEGY_DEFAULTS["partial"].epochs,
        "full": 3.0 * STRATEGY_DEFAULTS["full"].epochs,
        "scratch": 3.0 * STRATEGY_DEFAULTS["full"].epochs,
    }[strategy]
    return {"passes": passes, "gmacs": None if gmacs is None else passes * gmacs * n_images}


def transfer_advice(row: Mapping[str, Any], source_probs: NDArray[Any] | None, labels: NDArray[np.int64]) -> (
    dict[str, Any] | None
):  # fmt: skip
    """The strategy advice of one ranked backbone (a ``BackboneRow.transfer`` block), or None when nothing
    supports one (no calibration, no source head that maps, no layer scores).

    ``row`` is the ranking's row (``predicted_accuracy``, ``layers``, ``gmacs``, ``n_images`` are read).
    """
    predicted = row.get("predicted_accuracy") or {}
    layers = row.get("layers") or {}
    n_stages, freeze = layers.get("n_stages") or 0, layers.get("freeze_stages")
    partial_depth = freeze if freeze is not None and 0 < freeze < n_stages else None
    gmacs, n_images = row.get("gmacs"), int(row.get("n_images") or 0)
    options: dict[str, dict[str, Any]] = {}
    head = None
    if source_probs is not None and labels.size:
        head = source_head_accuracy(source_probs, labels)
        options["as_classifier"] = {
            "predicted": {"value": head["accuracy"], "low": head["low"], "high": head["high"],
                          "inputs": ["source head, leave-one-out"]},
            "note": None if head["one_to_one"] else "two or more target classes fall in the same source class",
        }  # fmt: skip
    for strategy, key in (("linear", "linear_probe"), ("full", "finetune")):
        if predicted.get(key):
            options[strategy] = {"predicted": dict(predicted[key]), "note": None}
    if partial_depth is not None:
        options["partial"] = {
            "predicted": None,
            "note": "no prediction: the benchmark has no partial fine-tunes to calibrate one on",
        }
    trained = [options[s]["predicted"]["value"] for s in ("linear", "full") if s in options]
    chosen: str | None = None
    if head is not None and head["one_to_one"]:
        margin = math.sqrt(head["accuracy"] * (1 - head["accuracy"]) / max(head["n"], 1))
        if not trained or head["accuracy"] >= max(trained) - margin:
            chosen = "as_classifier"
    if chosen is None and "full" in options and "linear" in options:
        linear_value = options["linear"]["predicted"]["value"]
        chosen = "linear" if linear_value >= options["full"]["predicted"]["value"] else "full"
    elif chosen is None and "full" in options:
        chosen = "full"
    elif chosen is None and "linear" in options:
        chosen = "linear"
    if chosen == "full" and partial_depth is not None:
        chosen = "partial"
    if chosen is None and freeze is not None:
        chosen = "linear" if freeze >= n_stages else "partial"
    if chosen is None:
        return None
    trained_share = 1.0 - (partial_depth or 0) / n_stages if n_stages else 1.0
    for strategy, option in options.items():
        option["cost"] = _cost(strategy, trained_share, gmacs, n_images)
    options.setdefault(chosen, {"predicted": None, "note": None, "cost": _cost(chosen, trained_share, gmacs, n_images)})
    return {
        "strategy": chosen,
        "freeze_stages": partial_depth if chosen == "partial" else None,
        "options": [{"strategy": name, **option} for name, option in options.items()],
        "advice": _words(chosen, options[chosen], options.get("full"), partial_depth, layers),
    }


def scratch_advice(rows: list[dict[str, Any]], archs: list[str | None]) -> None:
    """Advise training from scratch where it applies (the module docstring's rule), in place on ranked rows.

    ``archs[i]`` is row ``i``'s timm architecture; an untrained row is one whose id starts with ``random:``.
    """
    untrained: dict[str, dict[str, Any]] = {}
    for row, arch in zip(rows, archs, strict=True):
        full = (row.get("predicted_accuracy") or {}).get("finetune")
        if arch and str(row["id"]).startswith("random:") and full:
            untrained.setdefault(arch, full)
            row["transfer"] = _scratch(row, full, "an untrained network has nothing to transfer")
    for row, arch in zip(rows, archs, strict=True):
        scratch, advice = untrained.get(arch or ""), row.get("transfer")
        if str(row["id"]).startswith("random:") or scratch is None or advice is None:
            continue
        chosen = next((o for o in advice["options"] if o["strategy"] == advice["strategy"]), None)
        best = (chosen or {}).get("predicted") or {}
        if "value" in best and scratch["value"] >= best["value"] and advice["strategy"] != "as_classifier":
            row["transfer"] = _scratch(
                row,
                scratch,
                f"the pretrained weights are not expected to help here ({advice['strategy']} "
                f"{best['value']:.2f} against {scratch['value']:.2f} from random weights)",
                options=advice["options"],
            )


def _scratch(
    row: Mapping[str, Any], predicted: Mapping[str, Any], why: str, options: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    option = {
        "strategy": "scratch",
        "predicted": dict(predicted),
        "cost": _cost("scratch", 1.0, row.get("gmacs"), int(row.get("n_images") or 0)),
        "note": None,
    }
    return {
        "strategy": "scratch",
        "freeze_stages": None,
        "options": [*(options or []), option],
        "advice": f"train it from scratch, every layer: {why}; expected {predicted['value']:.2f} "
        f"[{predicted['low']:.2f}, {predicted['high']:.2f}]",
    }


def _words(
    strategy: str,
    option: Mapping[str, Any],
    full: Mapping[str, Any] | None,
    depth: int | None,
    layers: Mapping[str, Any],
) -> str:
    full_predicted = (full or {}).get("predicted")
    full_expected = (
        f"; a full fine-tune is expected to reach {full_predicted['value']:.2f} "
        f"[{full_predicted['low']:.2f}, {full_predicted['high']:.2f}]"
        if full_predicted
        else ""
    )
    predicted = option.get("predicted")
    expected = (
        f"; expected {predicted['value']:.2f} [{predicted['low']:.2f}, {predicted['high']:.2f}]" if predicted else ""
    )
    if strategy == "as_classifier":
        return "use it as a classifier as it is: the target classes are source classes (map each to its own)" + (
            expected.replace("expected", "measured")
        )
    if strategy == "linear":
        return "train a new head on the frozen features" + expected
    if strategy == "partial" and depth is not None:
        return f"freeze {frozen_span(layers['layers'], depth)}, fine-tune the rest" + full_expected
    return "fine-tune every layer" + expected
