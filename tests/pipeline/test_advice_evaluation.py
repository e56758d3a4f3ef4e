"""The leave-one-target-out evaluation of the linear-vs-full advice on benchmark rows."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import InvalidCalibration
from service.pipeline.calibration.advice import loto_advice_evaluation
from service.pipeline.calibration.samples import Sample


def _samples(linear_gain: float, n_targets: int = 4) -> list[Sample]:
    """Accuracy tracks the class-mean score on every target; the linear probe is ``linear_gain`` above full."""
    rng = np.random.default_rng(0)
    rows = []
    for t in range(n_targets):
        for b in range(6):
            score = float(rng.uniform(0.2, 0.7))
            full = 0.15 + 0.8 * score
            rows.append(
                Sample(
                    target=f"t{t}",
                    backbone=f"b{b}",
                    n_classes=10,
                    scores={"class_means": score},
                    finetune=full,
                    linear_probe=full + linear_gain,
                    setting="s",
                )
            )
    return rows


def test_the_advice_picks_linear_where_linear_is_predicted_and_measured_better():
    out = loto_advice_evaluation(_samples(linear_gain=0.08))
    overall = out["overall"]
    assert overall["n"] == 24 and overall["advised_linear_share"] == 1.0
    assert overall["hit_rate"] == {"advised": 1.0, "always_full": 0.0, "always_linear": 1.0}
    assert overall["regret"]["advised"] == 0.0 and overall["regret"]["always_full"] == pytest.approx(0.08)
    assert out["by_setting"]["s"] == overall and out["within"] == 0.01


def test_the_advice_picks_full_where_fine_tuning_gains():
    overall = loto_advice_evaluation(_samples(linear_gain=-0.08))["overall"]
    assert overall["advised_linear_share"] == 0.0 and overall["hit_rate"]["advised"] == 1.0
    assert overall["regret"]["always_linear"] == pytest.approx(0.08) and overall["regret"]["advised"] == 0.0


def test_fewer_than_three_targets_is_refused():
    with pytest.raises(InvalidCalibration, match="at least 3 targets"):
        loto_advice_evaluation(_samples(0.05, n_targets=2))
