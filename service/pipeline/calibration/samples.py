"""The rows calibration is fitted on: benchmark results reduced to (target, backbone) samples, and their groups.

Offline only (the fitting, :mod:`service.pipeline.calibration.fit`, and its leave-one-target-out evaluation,
:mod:`service.pipeline.calibration.evaluation`, read them); apart from both so that the evaluation and the
selection it repeats per held-out target (:mod:`service.pipeline.calibration.selection`) share one reading of
benchmark results (:mod:`service.pipeline.benchmark.results` writes them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import InvalidCalibration
from service.pipeline.calibration.model import IMAGES_PER_CLASS

__all__ = ["Sample", "samples_from_results", "zoo_hashes_of"]


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
    #: The target's kind (glyphs, photos, ...): leave-one-kind-out holds out a kind's targets together;
    #: "" when the result does not say (the target is then a kind of its own).
    kind: str = ""

    def truth(self, ground_truth: str) -> float | None:
        return self.finetune if ground_truth == "finetune" else self.linear_probe


def samples_from_results(
    results: Sequence[Mapping[str, Any]], kinds: Mapping[str, str] | None = None
) -> tuple[list[Sample], dict[str, bool]]:
    """The rows of benchmark results, and each score's direction (``{name: higher_is_better}``).

    Targets are identified by name: the same target in two results is one LOTO group (held out together),
    and two rankings (``Sample.setting``: the result's suite name, numbered if two results share one).
    A target's kind is the result's (``targets[].kind``), else ``kinds[target name]`` (for results recorded
    before targets carried one), else none.

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
                kind = str(target.get("kind") or (kinds or {}).get(str(target["name"])) or "")
                for row in target["backbones"]:
                    samples.append(_sample(target, row, setting, kind))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InvalidCalibration(
                f"input {index + 1} is a malformed benchmark result ({type(err).__name__}: {err}); "
                "calibrate from the JSON that `backbone-rank benchmark` writes"
            ) from None
    if not samples:
        raise InvalidCalibration("the benchmark results hold no (target, backbone) rows")
    return samples, directions


def zoo_hashes_of(results: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The zoo a calibration is fitted with, as the benchmark results recorded it (the calibration's
    ``source["zoo"]``): ``{"models": {id: {"weights_sha256", "source_dataset_sha256"}}, "note"}``; None when the
    results used no ``zoo:`` backbone.

    A hash the results do not record (results written before benchmarks recorded them), or on which they
    disagree (two zoo builds), is null, and ``note`` says which and why (after the results' own zoo notes).
    """
    seen: dict[str, dict[str, set[str | None]]] = {}
    notes: list[str] = []
    for result in results:
        block = (result.get("zoo") or {}).get("models") or {}
        if (result.get("zoo") or {}).get("note") not in (None, *notes):  # e.g. hashes added after the run
            notes.append(str(result["zoo"]["note"]))
        for target in result.get("targets") or []:
            for row in target.get("backbones") or []:
                backbone = str(row.get("id"))
                if not backbone.startswith("zoo:"):
                    continue
                found = seen.setdefault(backbone, {"weights_sha256": set(), "source_dataset_sha256": set()})
                found["weights_sha256"].add(row.get("weights_sha256"))
                found["source_dataset_sha256"].add((block.get(backbone) or {}).get("source_dataset_sha256"))
    if not seen:
        return None
    models = {
        backbone: {key: next(iter(values)) if len(values) == 1 else None for key, values in found.items()}
        for backbone, found in seen.items()
    }
    unrecorded = [b for b, found in seen.items() if None in found["weights_sha256"]]
    differing = [b for b, found in seen.items() if len(found["weights_sha256"] - {None}) > 1]
    if unrecorded:
        notes.append(
            f"the results (some or all) record no weights sha256 for {', '.join(unrecorded)} (written before "
            "benchmarks recorded them): which build of them the calibration was fitted with is unknown"
        )
    if differing:
        notes.append(f"the results used different weights for {', '.join(differing)}: none is recorded")
    return {"models": models, "note": "; ".join(notes) or None}


def _sample(target: Mapping[str, Any], row: Mapping[str, Any], setting: str, kind: str) -> Sample:
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
        kind=kind,
    )


def _targets(samples: Sequence[Sample]) -> list[str]:
    return list(dict.fromkeys(s.target for s in samples))


def _inputs_of(sample: Sample) -> Mapping[str, float | None]:
    return {**sample.scores, IMAGES_PER_CLASS: sample.images_per_class}


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


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None
