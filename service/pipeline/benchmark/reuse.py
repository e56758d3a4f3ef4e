"""Reusing the finished (target, backbone) pairs of earlier benchmark results (``run_benchmark(reuse=...)``,
CLI ``backbone-rank benchmark --reuse FILE``).

A wider suite need not fine-tune again what an earlier run already did under the same protocol: the pairs of
a recorded result seed the run's resume checkpoint (:mod:`service.pipeline.benchmark.checkpoint`) with exactly
the pieces the run itself would have written (the target's ranking entry, the fine-tuning, the linear probe),
so the rows of reused pairs come out as recorded, seconds included (the cost stays that of producing them).

A pair is reused only under the same protocol. What the whole file shares with this run is checked first
and a mismatch refuses the file with an error naming it: the environment fingerprint
(:func:`service.pipeline.benchmark.results.environment_info`), the ground truth, the fine-tuning
(:class:`~service.pipeline.benchmark.suites.FinetuneSpec`) and the images per class ranked. Then each pair:
same target dataset reference, classes and ranked images, same backbone at the same input size; a pair that
differs is not reused, logged and listed under ``reused.refused`` of the result with the reason.

When a target's recorded estimators differ from the ones this run scores (an estimator added, a default set
changed), its pairs are *rescored*: the ground truth (fine-tuning, linear probe) is reused and the ranking is
computed again — one feature extraction and the estimators, seconds where the fine-tuning took minutes — so a
recorded benchmark gains a new estimator without fine-tuning anything. Such pairs are listed with
``"rescored": true``.

Separate from the run because it only reads result files and writes checkpoint pieces; nothing here loads a
model or touches an image.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service.model_catalogue import catalogue_info
from service.pipeline.benchmark.checkpoint import _Checkpoint
from service.pipeline.benchmark.suites import Suite, SuiteBackbone, SuiteTarget
from service.pipeline.models.backbones import LoadedBackbone

__all__ = ["ReusePlan", "plan_reuse", "reused_record", "seed_checkpoint"]

_logger = logging.getLogger(__name__)

#: Score keys the run adds beside the estimators' (they are recomputed, never read back as estimator scores).
_BASELINE_SCORES = ("source_accuracy", "model_size", "imagenet_top1", "feature_dim")


class ReusePlan:
    """What a set of recorded results offers this run: accepted pairs (with their checkpoint pieces) and the
    refused ones with their reasons."""

    def __init__(self) -> None:
        #: ``(target, backbone id) -> (file, pieces)``; pieces: ``rank`` entry, ``finetune``, ``linear_probe``.
        self.pairs: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
        #: Per target whose recorded ranking is reused: ``n_images`` and ``estimators`` of that ranking.
        self.rankings: dict[str, dict[str, Any]] = {}
        self.refused: list[dict[str, str]] = []

    def refuse(self, file: str, target: str, backbone: str, reason: str) -> None:
        _logger.warning("not reusing %s / %s from %s: %s", target, backbone, file, reason)
        self.refused.append({"file": file, "target": target, "backbone": backbone, "reason": reason})


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(
            f"--reuse {path}: cannot read it as a benchmark result ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(data, dict) or data.get("kind", "benchmark") != "benchmark" or "targets" not in data:
        raise ValueError(f"--reuse {path}: not a benchmark result (written by `backbone-rank benchmark`)")
    return data


def _json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparing with a recorded definition."""
    return json.loads(json.dumps(value, default=list))


def _protocol_mismatch(data: Mapping[str, Any], suite: Suite, env: Mapping[str, Any]) -> str | None:
    """What the whole recorded result does differently from this run, or None."""
    recorded_env = (data.get("environment") or {}).get("fingerprint")
    if recorded_env != env["fingerprint"]:
        return f"environment fingerprint {recorded_env} differs from this machine's {env['fingerprint']}"
    definition = (data.get("suite") or {}).get("definition") or {}
    if definition.get("ground_truth", "finetune") != suite.ground_truth or suite.ground_truth != "finetune":
        return f"ground truth {definition.get('ground_truth')!r}; only fine-tuned ground truth is reused"
    recorded_spec, spec = definition.get("finetune") or {}, _json(asdict(suite.finetune))
    differing = [
        f"{key} {recorded_spec.get(key)!r} vs {value!r}"
        for key, value in spec.items()
        if recorded_spec.get(key) != value
    ]
    if differing:
        return "fine-tuning differs: " + ", ".join(differing)
    if definition.get("rank_max_per_class") != suite.rank_max_per_class:
        return f"rank_max_per_class {definition.get('rank_max_per_class')} vs {suite.rank_max_per_class}"
    return None


def plan_reuse(
    paths: Sequence[Path],
    *,
    suite: Suite,
    targets: Sequence[SuiteTarget],
    datasets: Mapping[str, Any],
    loaded: Sequence[tuple[SuiteBackbone, LoadedBackbone]],
    estimators: Mapping[str, Sequence[str]],
    env: Mapping[str, Any],
) -> ReusePlan:
    """The pairs of the results at ``paths`` that this run may take as they are (or, rescored, their ground
    truth only).

    ``datasets``: the loaded target datasets by name; ``estimators``: the estimator names this run scores on
    each target; ``env``: this run's :func:`~service.pipeline.benchmark.results.environment_info`.

    Raises:
        ValueError: A file is unreadable or was produced under another protocol (the message names it).
    """
    plan = ReusePlan()
    by_target = {t.name: t for t in targets}
    by_backbone = {sb.id: (sb, b) for sb, b in loaded}
    for path in paths:
        file = str(path)
        data = _read(Path(path))
        mismatch = _protocol_mismatch(data, suite, env)
        if mismatch is not None:
            raise ValueError(f"--reuse {file}: not the protocol of suite {suite.name!r}: {mismatch}")
        recorded_backbones = {b.get("id"): b for b in (data["suite"]["definition"].get("backbones") or [])}
        recorded_estimators = [e["name"] for e in data.get("estimators") or []]
        for target in data["targets"]:
            name = target["name"]
            rows = target.get("backbones") or []
            reason = _target_mismatch(target, by_target.get(name), datasets.get(name))
            if reason is not None:
                for row in rows:
                    plan.refuse(file, name, row["id"], reason)
                continue
            rescore = list(recorded_estimators) != list(estimators[name])
            for row in rows:
                if (name, row["id"]) in plan.pairs:
                    plan.refuse(file, name, row["id"], f"already taken from {plan.pairs[name, row['id']][0]}")
                    continue
                pair = by_backbone.get(row["id"])
                reason = _backbone_mismatch(row, pair, recorded_backbones.get(row["id"]))
                if reason is not None:
                    plan.refuse(file, name, row["id"], reason)
                    continue
                assert pair is not None
                pieces = _pieces(row, target, pair[1], recorded_estimators, suite)
                if rescore:  # the ground truth only: this run ranks the pair again
                    del pieces["rank"]
                else:
                    plan.rankings.setdefault(
                        name, {"n_images": target["n_rank_images"], "estimators": recorded_estimators}
                    )
                plan.pairs[name, row["id"]] = (file, pieces)
    return plan


def _target_mismatch(recorded: Mapping[str, Any], target: SuiteTarget | None, dataset: Any) -> str | None:
    if target is None or dataset is None:
        return "target not in this run"
    if recorded.get("dataset") != target.dataset:
        return f"dataset {recorded.get('dataset')!r} vs {target.dataset!r}"
    if recorded.get("n_classes") != len(dataset.classes) or recorded.get("n_rank_images") != len(dataset):
        return (
            f"{recorded.get('n_classes')} classes / {recorded.get('n_rank_images')} ranked images recorded, "
            f"{len(dataset.classes)} / {len(dataset)} now"
        )
    return None


def _backbone_mismatch(
    row: Mapping[str, Any],
    pair: tuple[SuiteBackbone, LoadedBackbone] | None,
    recorded: Mapping[str, Any] | None,
) -> str | None:
    if pair is None:
        return "backbone not in this run"
    suite_backbone, backbone = pair
    if recorded is not None and recorded.get("input_size") != suite_backbone.input_size:
        return f"suite input_size {recorded.get('input_size')} vs {suite_backbone.input_size}"
    size = int(backbone.data_config["input_size"][-1])
    if row.get("input_size") != size:
        return f"input size {row.get('input_size')} vs {size}"
    if row.get("finetune") is None or row.get("accuracy") is None:
        return "no fine-tuned accuracy recorded"
    return None


def _pieces(
    row: Mapping[str, Any], target: Mapping[str, Any], backbone: LoadedBackbone, estimators: Sequence[str], suite: Suite
) -> dict[str, Any]:
    """The checkpoint pieces the run writes for this pair (see ``_rank_target`` and ``_pair`` in benchmark.py)."""
    scores = row["scores"]
    seconds = row["seconds"]
    entry = catalogue_info(backbone.spec.id)
    pieces: dict[str, Any] = {
        "rank": {
            "scores": {name: scores.get(name) for name in estimators},
            "feature_dim": row["feature_dim"],
            # Results from before the model_size baseline lack it: it is the loaded model's size, not a measurement.
            "params_m": scores["model_size"] if "model_size" in scores else backbone.params_m,
            "imagenet_top1": entry.imagenet_top1 if entry is not None else None,
            "seconds": seconds["rank"],
            "extract_seconds": seconds.get("extract"),
            "estimator_seconds": seconds.get("per_estimator") or {},
        },
        "finetune": {
            "accuracy": {k: row["accuracy"][k] for k in ("mean", "std", "per_seed")},
            "chosen_lr": row["finetune"]["chosen_lr"],
            "val_accuracy_by_lr": row["finetune"]["val_accuracy_by_lr"],
            "seconds": seconds.get("finetune"),
            "n_test": target.get("n_test_images"),
        },
    }
    if suite.finetune.linear_probe:
        # The probe's own seconds are not part of a row; the run never reads them back.
        pieces["linear_probe"] = {"accuracy": row.get("linear_probe_accuracy"), "seconds": None}
    return pieces


def seed_checkpoint(
    plan: ReusePlan, checkpoint: _Checkpoint, loaded: Sequence[tuple[SuiteBackbone, LoadedBackbone]]
) -> None:
    """Write the accepted pairs into ``checkpoint``. A pair the checkpoint already holds work of (a resumed run
    that ranked or fine-tuned it itself) keeps that work and is not reused: rows never mix two runs. Rescored
    pairs seed their ground truth only; the run ranks them as it ranks a new pair."""
    spec_ids = {sb.id: b.spec.id for sb, b in loaded}
    targets = dict.fromkeys(target for target, _ in plan.pairs)
    for target_name in targets:
        ranking = plan.rankings.get(target_name)
        cached = checkpoint.get("rank", target_name, "*")
        piece: dict[str, Any] | None = None
        if ranking is not None:
            piece = (
                {"n_images": ranking["n_images"], "backbones": {}, "estimators": list(ranking["estimators"])}
                if cached is None
                else {**cached, "backbones": dict(cached["backbones"])}
            )
        seeded = []
        for (target, backbone_id), (file, pieces) in plan.pairs.items():
            if target != target_name or checkpoint.get("reused", target, backbone_id) is not None:
                continue  # another target, or seeded by an earlier attempt of this run
            own_ranking = "rank" in pieces and piece is not None and spec_ids[backbone_id] in piece["backbones"]
            if own_ranking or checkpoint.get("finetune", target, backbone_id) is not None:
                plan.refuse(file, target, backbone_id, "this run's checkpoint already holds its own work for the pair")
                continue
            if "rank" in pieces and piece is not None:
                piece["backbones"][spec_ids[backbone_id]] = pieces["rank"]
            seeded.append((backbone_id, file, pieces))
        if not seeded:
            continue
        if piece is not None and any("rank" in pieces for _, _, pieces in seeded):
            checkpoint.put("rank", target_name, "*", piece)
        for backbone_id, file, pieces in seeded:
            for stage in ("finetune", "linear_probe"):
                if stage in pieces:
                    checkpoint.put(stage, target_name, backbone_id, pieces[stage])
            marker = {"file": file} if "rank" in pieces else {"file": file, "rescored": True}
            checkpoint.put("reused", target_name, backbone_id, marker)


def reused_record(
    checkpoint: _Checkpoint,
    offered: Sequence[Path],
    refused: Sequence[Mapping[str, str]],
    rows: Mapping[tuple[str, str], Mapping[str, Any]],
) -> dict[str, Any] | None:
    """The result's ``reused`` block: pairs taken from earlier results (as the checkpoint marks them, so a resumed
    run still says so), the refused ones, and what the reused pieces cost when they were computed (a rescored
    pair's ranking is this run's, so only its fine-tuning counts there)."""
    pairs = [
        {"target": target, "backbone": backbone, "file": data["file"]}
        | ({"rescored": True} if data.get("rescored") else {})
        for (stage, target, backbone), data in checkpoint.done.items()
        if stage == "reused" and (target, backbone) in rows
    ]
    if not pairs and not offered:
        return None
    seconds = [rows[p["target"], p["backbone"]]["seconds"] for p in pairs]
    ranked_then = [s for p, s in zip(pairs, seconds, strict=True) if not p.get("rescored")]  # rescored: ranked now
    return {
        "files": [str(p) for p in offered],
        "pairs": pairs,
        "refused": [dict(r) for r in refused],
        "recorded_seconds": {
            "rank": float(sum(s.get("rank") or 0.0 for s in ranked_then)),
            "finetune": float(sum(s.get("finetune") or 0.0 for s in seconds)),
        },
    }
