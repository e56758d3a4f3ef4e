"""Transfer advice: the source head read as a classifier, and the rule that picks a strategy per backbone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.contract.results import TransferAdvice
from service.pipeline.ranking.transfer import scratch_advice, source_head_accuracy, transfer_advice


def _one_hot(indices: np.ndarray, width: int) -> np.ndarray:
    probs = np.full((indices.size, width), 0.1 / width)
    probs[np.arange(indices.size), indices] += 0.9
    return probs


def test_a_source_head_whose_classes_are_the_targets_reads_them_off_one_to_one():
    labels = np.repeat(np.arange(4), 10)
    head = source_head_accuracy(_one_hot(labels * 3 + 1, 20), labels)  # target c is source class 3c + 1
    assert head["accuracy"] == 1.0 and head["one_to_one"] and head["n"] == 40
    assert 0.93 < head["low"] < 1.0 and head["high"] == 1.0


def test_leave_one_out_counts_an_image_alone_in_its_source_class_as_wrong():
    labels = np.array([0, 0, 0, 1, 1, 1])
    source = np.array([5, 5, 7, 2, 2, 2])  # the third image is alone in source class 7: nobody else names it
    head = source_head_accuracy(_one_hot(source, 8), labels)
    assert head["accuracy"] == pytest.approx(5 / 6) and head["one_to_one"]
    # two target classes falling in one source class: not one to one; a tie counts as wrong
    merged = source_head_accuracy(_one_hot(np.array([3, 3, 3, 3]), 8), np.array([0, 0, 1, 1]))
    assert not merged["one_to_one"] and merged["accuracy"] == 0.0


def _prediction(value: float) -> dict[str, Any]:
    return {"value": value, "low": value - 0.05, "high": value + 0.05, "inputs": ["ridge_probe"]}


def _row(linear: float | None, full: float | None, layers: dict[str, Any] | None = None) -> dict[str, Any]:
    predicted = {"linear_probe": linear and _prediction(linear), "finetune": full and _prediction(full)}
    return {"predicted_accuracy": predicted, "layers": layers, "gmacs": 0.5, "n_images": 200}


LABELS = np.repeat(np.arange(4), 50)
UNRELATED_HEAD = _one_hot(np.zeros(200, dtype=np.int64), 10)  # everything falls in one source class


def test_linear_when_it_is_predicted_as_good_as_a_full_fine_tune():
    advice = transfer_advice(_row(0.80, 0.78), UNRELATED_HEAD, LABELS)
    assert advice is not None and advice["strategy"] == "linear" and advice["freeze_stages"] is None
    assert advice["advice"] == "train a new head on the frozen features; expected 0.80 [0.75, 0.85]"
    costs = {o["strategy"]: o["cost"] for o in advice["options"]}
    assert costs["as_classifier"]["passes"] == 0 and costs["linear"] == {"passes": 1.0, "gmacs": 100.0}
    assert costs["full"]["passes"] == 30.0  # 10 epochs of a forward and a backward pass
    TransferAdvice.model_validate(advice)


def test_full_or_partial_at_the_layer_advice_depth_when_fine_tuning_is_predicted_better():
    assert transfer_advice(_row(0.60, 0.80), UNRELATED_HEAD, LABELS)["strategy"] == "full"
    layers = {"n_stages": 5, "freeze_stages": 2, "layers": [{"module": m} for m in ("act1", "layer1", "layer2")]}
    advice = transfer_advice(_row(0.60, 0.80, layers), UNRELATED_HEAD, LABELS)
    assert advice["strategy"] == "partial" and advice["freeze_stages"] == 2
    assert advice["advice"] == (
        "freeze stages 1-2 (up to layer1), fine-tune the rest; a full fine-tune is expected to reach 0.80 [0.75, 0.85]"
    )
    partial = next(o for o in advice["options"] if o["strategy"] == "partial")
    assert partial["predicted"] is None and partial["cost"]["passes"] == pytest.approx((1 + 2 * 0.6) * 10)
    # every stage transfers: the layer advice alone (no calibration) says linear
    every = {"n_stages": 5, "freeze_stages": 5, "layers": []}
    assert transfer_advice(_row(None, None, every), None, LABELS)["strategy"] == "linear"
    assert transfer_advice(_row(None, None), None, LABELS) is None


def test_as_a_classifier_when_the_source_head_maps_one_to_one_and_is_as_good():
    head = _one_hot(LABELS + 3, 10)
    advice = transfer_advice(_row(0.90, 0.95), head, LABELS)
    assert advice["strategy"] == "as_classifier"
    assert advice["advice"].startswith("use it as a classifier as it is") and "measured 1.00" in advice["advice"]
    # a head that is right half of the time is no classifier for this target
    noisy = LABELS.copy()
    noisy[::2] = (noisy[::2] + 1) % 4
    assert transfer_advice(_row(0.90, 0.95), _one_hot(noisy, 10), LABELS)["strategy"] == "full"


def test_scratch_for_an_untrained_network_and_where_its_pretrained_weights_do_not_help():
    def ranked(id_: str, linear: float, full: float) -> dict[str, Any]:
        row = {"id": id_, **_row(linear, full)}
        row["transfer"] = transfer_advice(row, None, LABELS)
        return row

    rows = [
        ranked("random:resnet10t", 0.30, 0.62),
        ranked("resnet10t.helps", 0.70, 0.75),  # linear 0.70 < full 0.75 -> full 0.75 beats scratch 0.62: kept
        ranked("resnet10t.hurts", 0.55, 0.50),  # linear 0.55 is its best; scratch 0.62 beats it
        ranked("convnext_atto.other", 0.40, 0.45),  # another architecture: no untrained twin in the ranking
    ]
    scratch_advice(rows, ["resnet10t", "resnet10t", "resnet10t", "convnext_atto"])
    strategies = [row["transfer"]["strategy"] for row in rows]
    assert strategies == ["scratch", "full", "scratch", "full"]
    assert rows[0]["transfer"]["advice"] == (
        "train it from scratch, every layer: an untrained network has nothing to transfer; expected 0.62 [0.57, 0.67]"
    )
    assert "not expected to help here (linear 0.55 against 0.62 from random weights)" in rows[2]["transfer"]["advice"]
    scratch_option = rows[2]["transfer"]["options"][-1]
    assert scratch_option["strategy"] == "scratch" and scratch_option["cost"]["passes"] == 30.0
    assert {o["strategy"] for o in rows[2]["transfer"]["options"]} == {"linear", "full", "scratch"}
    TransferAdvice.model_validate(rows[2]["transfer"])
