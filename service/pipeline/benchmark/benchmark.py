"""Benchmark: does the ranking predict what fine-tuning actually gives?

For every (target, backbone) pair of a suite (:mod:`service.pipeline.benchmark.suites`) this scores
the backbone with every estimator on the target's train split (features extracted without the
feature cache, so the ranking cost is measured honestly), obtains the ground-truth accuracy — by
fine-tuning (:func:`service.pipeline.finetune.finetune.finetune`: lr chosen on the val split, mean and spread
over seeds, reported on the test split) or from a published table — and then, per target and per
method, measures how well the scores predict the accuracies (:mod:`service.pipeline.benchmark.metrics`: weighted
Kendall τ as the literature uses, Kendall τ, Pearson r, top-1 regret, bootstrap intervals).

Beside the estimators stand the product's own orders, what a user of ``rank`` gets: ``default``, the calibrated
fused order ``rank`` returns with default settings, and ``predicted_accuracy``, both computed from the recorded
scores with the ranking's own functions (:mod:`service.pipeline.benchmark.default_order`); with ``p_best`` the
default order's p(best) is resampled per target as ``rank --bootstrap`` does, and the summary checks how often the
backbone given p >= 0.5 is the best (:mod:`service.pipeline.benchmark.checks`, which also flags backbones good
under the linear probe and bad after fine-tuning, or the other way round).

Next to the estimators stand the baselines a skeptic asks for: the backbone's accuracy on its own
source task, its size (parameters) and ImageNet-1k top-1 (the priors that "How NOT to benchmark your SITE
metric", ICLR 2026, and "Back to the Basics", 2024, found hard to beat), its feature dimension (wide features
favour several scores) and a random ranking.

Every row records the sha256 of the weights it loaded, and the result's ``zoo`` block what the host knows of
the zoo models' origin (weights and source dataset hashes, :func:`service.pipeline.plugins.provenance`), so that
a calibration fitted on it can name the zoo it learned from.

The result follows the benchmark schema (:class:`service.contract.BenchmarkResult`, ``schema_version`` 2,
``"kind": "benchmark"``; version 1 lacked the ``request``), rendered by :mod:`service.reports`; it is written as
``benchmark-<suite>-<fingerprint>.json`` plus a ``.csv`` with one row per (target, backbone). Work is
checkpointed after every fine-tuned pair in a ``.partial.jsonl`` file, so an interrupted hour-long run
resumes where it stopped (same suite definition and environment only).

This module is the run; the summary, the environment and the files are :mod:`service.pipeline.benchmark.results`,
the checkpoint :mod:`service.pipeline.benchmark.checkpoint`.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from estimators import get_estimator
from service.errors import BackboneRankError, DatasetNotFound, InvalidDataset, WeightsUnavailable
from service.pipeline.benchmark.checkpoint import _Checkpoint
from service.pipeline.benchmark.default_order import add_default_order
from service.pipeline.benchmark.results import environment_info, summarize, write_results
from service.pipeline.benchmark.reuse import plan_reuse, reused_record, seed_checkpoint
from service.pipeline.benchmark.suites import Suite, SuiteBackbone, SuiteTarget, missing_data_hint
from service.pipeline.calibration.model import Calibration, resolve_calibration
from service.pipeline.data.datasets import load_dataset
from service.pipeline.features.extract import extract_features, select_device
from service.pipeline.models.backbones import LoadedBackbone, load_backbone
from service.pipeline.plugins import prepare_backbones, provenance, source_info
from service.pipeline.ranking.rank import default_estimators, rank_feature_sets

__all__ = [
    "BASELINES",
    "BenchmarkProgress",
    "SCHEMA_VERSION",
    "load_suite_backbones",
    "run_benchmark",
]

#: 2: the effective request is recorded (service.contract.results reads every version).
SCHEMA_VERSION = 2

#: Baselines reported beside the estimators (all higher-is-better).
BASELINES: tuple[dict[str, Any], ...] = (
    {
        "name": "source_accuracy",
        "higher_is_better": True,
        "description": "accuracy of the backbone on its own source task (zoo card / published ImageNet top-1)",
    },
    {
        "name": "model_size",
        "higher_is_better": True,
        "description": "parameters of the backbone (bigger ranks higher): the prior 'How NOT to benchmark your "
        "SITE metric' (ICLR 2026) found beating LogME",
    },
    {
        "name": "imagenet_top1",
        "higher_is_better": True,
        "description": "the backbone's ImageNet-1k top-1 (timm's published table, or the suite's published one); "
        "none for backbones not trained on ImageNet",
    },
    {"name": "feature_dim", "higher_is_better": True, "description": "dimension of the pooled features"},
    {
        "name": "random",
        "higher_is_better": True,
        "description": "a random ranking: the expectation over 1,000 permutations, with the 95 % range it reaches",
    },
)


@dataclass(frozen=True)
class BenchmarkProgress:
    """Where a benchmark run is. ``detail`` carries the fine-tune progress event during fine-tuning."""

    stage: str  # "rank" | "finetune" | "linear_probe" | "skip" | "done"
    target: str
    backbone: str | None
    done: int  # (target, backbone) pairs finished
    total: int
    detail: Any = None


BenchmarkCallback = Callable[[BenchmarkProgress], None]


# ---------------------------------------------------------------------------------------------- running


def run_benchmark(
    suite: Suite,
    *,
    out_dir: Path | Literal["default"] | None = "default",
    resume: bool = True,
    targets: Sequence[str] | None = None,
    device: str = "auto",
    batch_size: int = 64,
    roots: Sequence[str | Path] | None = None,
    builtin_dir: Path | None = None,
    weights_dirs: Sequence[Path] = (),
    hf_cache_dir: Path | None = None,
    n_bootstrap: int = 500,
    build_zoo: bool = True,
    progress: BenchmarkCallback | None = None,
    request: Mapping[str, Any] | None = None,
    reuse: Sequence[str | Path] = (),
    calibration: Calibration | str | os.PathLike[str] | None = "default",
    p_best: int = 0,
) -> dict[str, Any]:
    """Run ``suite`` and return the benchmark result (written to ``out_dir`` unless it is None).

    Parameters
    ----------
    suite : Suite
    out_dir : Path, "default" or None
        Where the JSON/CSV results and the resume checkpoint go: ``"default"`` is the settings'
        ``benchmark_results_dir`` (``<cache dir>/benchmarks``, what the service's benchmark reports show);
        None writes nothing.
    resume : bool
        Reuse finished pieces of an interrupted run of the same suite definition and environment.
    targets : sequence of str, optional
        Run only these targets of the suite.
    build_zoo : bool
        Build the zoo models the suite uses and that are missing (``backbone-rank zoo build``).
    n_bootstrap : int
        Bootstrap replicates per target for the metrics' intervals (:func:`summarize`).
    calibration : "default", a path, a Calibration or None
        What the product's ``default`` order and ``predicted_accuracy`` apply, as ``rank`` does
        (:func:`~service.pipeline.benchmark.default_order.add_default_order`); None: the mean-rank order.
    p_best : int
        Half-sample replicates of the default order's ``p_best`` per target, computed as ``rank --bootstrap``
        does, for the p(best) check (0: not run; each refits the fusion's members for every backbone).
    request : mapping, optional
        The effective ``BenchmarkRequest`` (JSON) that asked for this run, recorded in the result.
    reuse : sequence of paths
        Earlier benchmark results whose (target, backbone) pairs are taken as recorded instead of computed,
        when they were produced under the same protocol (:mod:`service.pipeline.benchmark.reuse`); the
        result's ``reused`` block lists them with their files and every refused pair with the mismatch.

    Raises
    ------
    ValueError
        Unknown target names, or fewer than 2 usable backbones / no usable target, or a ``reuse`` file that is
        unreadable or was produced under another protocol (environment, fine-tuning, sample size, estimators).
    BackboneRankError
        A dataset or backbone problem of a fine-tuned suite (published suites skip what is missing).
    """
    started = time.perf_counter()
    if out_dir == "default":
        from service.config import get_settings

        out_dir = get_settings().benchmark_results_dir
    chosen = _select_targets(suite, targets)
    # Datasets first: a missing one is reported before the zoo is built or any backbone is loaded.
    datasets = _load_targets(suite, chosen, roots=roots, builtin_dir=builtin_dir)
    resolved = resolve_calibration(calibration)  # a bad calibration file fails before any work
    if build_zoo:
        _build_missing_zoo(suite)
    env = environment_info(str(select_device(device)))
    checkpoint = _Checkpoint(
        out_dir / f".benchmark-{suite.name}-{suite.fingerprint()}-{env['fingerprint']}.partial.jsonl"
        if out_dir is not None
        else None,
        resume,
    )
    loaded, skipped = load_suite_backbones(suite, weights_dirs, hf_cache_dir)
    estimator_names = list(suite.estimators) if suite.estimators else None
    refused: list[dict[str, str]] = []
    if reuse:
        usable = {t.name: datasets[t.name] for t in chosen if not isinstance(datasets[t.name], BackboneRankError)}
        plan = plan_reuse(
            [Path(p) for p in reuse],
            suite=suite,
            targets=chosen,
            datasets=usable,
            loaded=loaded,
            estimators={
                name: estimator_names or default_estimators(len(ds), len(ds.classes)) for name, ds in usable.items()
            },
            env=env,
        )
        seed_checkpoint(plan, checkpoint, loaded)
        refused = plan.refused
    total = len(chosen) * len(loaded)
    done = 0
    target_results: list[dict[str, Any]] = []
    skipped_targets: list[dict[str, str]] = []
    for target in chosen:
        dataset = datasets[target.name]
        if isinstance(dataset, BackboneRankError):
            e = dataset
            skipped_targets.append({"target": target.name, "reason": f"[{e.code}] {e.detail}"})
            _emit(progress, BenchmarkProgress("skip", target.name, None, done, total, e.detail))
            continue
        _emit(progress, BenchmarkProgress("rank", target.name, None, done, total))
        ranking = _rank_target(
            dataset, loaded, suite, estimator_names, device, batch_size, checkpoint, target, resolved, p_best
        )
        rows = []
        for suite_backbone, backbone in loaded:
            row = _pair(
                suite,
                target,
                suite_backbone,
                backbone,
                ranking,
                checkpoint,
                done,
                total,
                progress,
                roots=roots,
                builtin_dir=builtin_dir,
                weights_dirs=weights_dirs,
                hf_cache_dir=hf_cache_dir,
                device=device,
            )
            rows.append(row)
            done += 1
            _emit(progress, BenchmarkProgress("done", target.name, suite_backbone.id, done, total))
        target_results.append(
            {
                "name": target.name,
                "dataset": target.dataset,
                "relation": target.relation,
                "kind": target.kind,
                "n_classes": len(dataset.classes),
                "n_rank_images": ranking["n_images"],
                "n_test_images": _first(r.get("_n_test") for r in rows),
                "backbones": rows,
                "p_best": ranking.get("p_best"),
            }
        )
    if not target_results:
        raise ValueError(
            f"no target of suite {suite.name!r} could be loaded: "
            + "; ".join(f"{s['target']}: {s['reason']}" for s in skipped_targets)
        )
    estimators_meta = [
        {"name": n, "higher_is_better": get_estimator(n).higher_is_better, "reference": get_estimator(n).reference}
        for n in (estimator_names or _estimators_of(target_results))
    ]
    for result in target_results:
        for row in result["backbones"]:
            row.pop("_n_test", None)
    result = {
        "schema_version": SCHEMA_VERSION,
        "kind": "benchmark",
        "request": dict(request) if request is not None else None,
        "suite": {
            "name": suite.name,
            "description": suite.description,
            "ground_truth": suite.ground_truth,
            "fingerprint": suite.fingerprint(),
            "definition": suite.to_dict(),
        },
        "created": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "environment": env,
        "zoo": _zoo_block(loaded),
        "estimators": estimators_meta,
        "baselines": [dict(b) for b in BASELINES],
        "targets": target_results,
        "skipped": {"backbones": skipped, "targets": skipped_targets},
        "reused": reused_record(
            checkpoint,
            [Path(p) for p in reuse],
            refused,
            {(t["name"], row["id"]): row for t in target_results for row in t["backbones"]},
        ),
    }
    add_default_order(result, resolved)
    summarize(result, n_bootstrap=n_bootstrap)
    result["seconds"] = {"total": time.perf_counter() - started}
    if out_dir is not None:
        paths = write_results(result, out_dir)
        result["files"] = {k: str(v) for k, v in paths.items()}
        if checkpoint.path is not None and checkpoint.path.exists():
            checkpoint.path.unlink()  # the run is complete; its results are in the JSON
    return result


def _emit(progress: BenchmarkCallback | None, event: BenchmarkProgress) -> None:
    if progress is not None:
        progress(event)


def _first(values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _select_targets(suite: Suite, names: Sequence[str] | None) -> list[SuiteTarget]:
    if not names:
        return list(suite.targets)
    known = {t.name: t for t in suite.targets}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"suite {suite.name!r} has no target(s) {unknown}; its targets: {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(names)]


def _load_targets(
    suite: Suite, chosen: Sequence[SuiteTarget], *, roots: Sequence[str | Path] | None, builtin_dir: Path | None
) -> dict[str, Any]:
    """``{target name: Dataset, or the error that prevented loading it}``.

    A fine-tuned suite needs every target (the first error is raised); a published suite skips what is missing,
    but when no target loads, one short coded error names the missing datasets and how to provide them.
    """
    datasets: dict[str, Any] = {}
    for target in chosen:
        try:
            datasets[target.name] = load_dataset(
                target.dataset, roots=roots, max_per_class=suite.rank_max_per_class, builtin_dir=builtin_dir
            )
        except BackboneRankError as e:
            if suite.ground_truth != "published":
                raise
            datasets[target.name] = e
    failed = {name: e for name, e in datasets.items() if isinstance(e, BackboneRankError)}
    if len(failed) < len(datasets):
        return datasets
    hint = missing_data_hint(suite)
    refs = [t.dataset for t in chosen]
    if all(isinstance(e, DatasetNotFound) for e in failed.values()):
        parents = {str(Path(ref).parent) for ref in refs}
        if len(refs) > 1 and len(parents) == 1 and parents != {"."}:
            missing = f"missing under {parents.pop()}: " + ", ".join(f"{Path(ref).name}/" for ref in refs)
        else:
            missing = "missing: " + ", ".join(refs)
        raise DatasetNotFound(f"no target of suite {suite.name!r} was found ({missing}); {hint}", missing=refs)
    reasons = "; ".join(f"{name}: [{e.code}] {e.detail}" for name, e in failed.items())
    raise InvalidDataset(f"no target of suite {suite.name!r} could be loaded ({reasons}); {hint}")


def _build_missing_zoo(suite: Suite) -> None:
    """Make the suite's backbones available where the host can (the built-in zoo builds missing models)."""
    prepare_backbones([b.id for b in suite.backbones])


def load_suite_backbones(
    suite: Suite, weights_dirs: Sequence[Path], hf_cache_dir: Path | None
) -> tuple[list[tuple[SuiteBackbone, LoadedBackbone]], list[dict[str, str]]]:
    """Load every backbone of ``suite`` at the suite's input size; published suites skip (and report) the
    unavailable ones."""
    loaded: list[tuple[SuiteBackbone, LoadedBackbone]] = []
    skipped: list[dict[str, str]] = []
    for suite_backbone in suite.backbones:
        if suite_backbone.id.startswith("unavailable:"):
            skipped.append(
                {
                    "backbone": suite_backbone.published_name or suite_backbone.id,
                    "reason": "timm has no such weights; map it with --backbone NAME=ARCH@/path/weights.safetensors",
                }
            )
            continue
        try:
            backbone = load_backbone(suite_backbone.id, weights_dirs=weights_dirs, hf_cache_dir=hf_cache_dir)
        except (WeightsUnavailable, BackboneRankError) as e:
            if suite.ground_truth != "published":
                raise
            skipped.append({"backbone": suite_backbone.id, "reason": f"[{e.code}] {e.detail}"})
            continue
        if suite_backbone.input_size is not None:
            size = int(suite_backbone.input_size)
            backbone = replace(backbone, data_config={**backbone.data_config, "input_size": (3, size, size)})
        loaded.append((suite_backbone, backbone))
    if len(loaded) < 2 and skipped:
        # One short line naming what is missing (each reason names every place searched: kilobytes for 11 models).
        usable = f" (only {loaded[0][0].id} loaded)" if loaded else ""
        raise WeightsUnavailable(
            f"suite {suite.name!r}: fewer than 2 usable backbones{usable}; no weights on this machine for "
            + ", ".join(s["backbone"] for s in skipped)
            + ". Put <id>.safetensors into a weights dir (BACKBONE_RANK_WEIGHTS_DIRS) or the HF cache, or map a "
            "model to your weights with --backbone NAME=ARCH@/path/weights.safetensors; `backbone-rank rank` with "
            "one of these ids lists every place searched",
            skipped=skipped,
        )
    if len(loaded) < 2:
        raise ValueError(f"suite {suite.name!r}: fewer than 2 usable backbones; a suite needs at least 2")
    return loaded, skipped


def _zoo_block(loaded: Sequence[tuple[SuiteBackbone, LoadedBackbone]]) -> dict[str, Any] | None:
    """The result's ``zoo`` block: what the host knows of each backbone's origin by content (the built-in zoo's
    cards: weights and source dataset sha256), with the hash of the weights this run loaded; None without any."""
    models = {}
    for suite_backbone, backbone in loaded:
        found = provenance(suite_backbone.id)
        if found is not None:
            models[suite_backbone.id] = {**found, "weights_sha256": backbone.weights_sha256}
    return {"models": models, "note": None} if models else None


def _rank_target(
    dataset: Any,
    loaded: Sequence[tuple[SuiteBackbone, LoadedBackbone]],
    suite: Suite,
    estimator_names: list[str] | None,
    device: str,
    batch_size: int,
    checkpoint: _Checkpoint,
    target: SuiteTarget,
    calibration: Calibration | None,
    n_p_best: int,
) -> dict[str, Any]:
    """Scores and ranking seconds per backbone id, and with ``n_p_best`` the default order's p_best (checkpointed
    as one piece per target).

    Only the backbones the checkpointed piece lacks are ranked (those of pairs reused from an earlier result
    are in it already): each backbone's scores depend on its own features only. p_best compares every backbone
    on the same half-samples, so a piece without the p_best asked for is recomputed whole.
    """
    cached = checkpoint.get("rank", target.name, "*")
    if n_p_best and cached is not None and cached.get("p_best_asked") != n_p_best:
        cached = None
    backbones = [b for _, b in loaded if cached is None or b.spec.id not in cached["backbones"]]
    if cached is not None and not backbones:
        return cached
    feature_sets = extract_features(dataset, backbones, device=device, batch_size=batch_size, cache=None)
    # p_best as `rank --bootstrap` computes it: the same fusion on the same features, with the benchmark's priors
    ranked = rank_feature_sets(
        dataset,
        feature_sets,
        estimators=estimator_names or default_estimators(len(dataset), len(dataset.classes)),
        calibration=calibration if n_p_best else None,
        n_bootstrap=n_p_best,
        source_accuracy={b.spec.id: _source_of(s, b)[1] for s, b in loaded},
    )
    by_id = dict(cached["backbones"]) if cached is not None else {}
    for row in ranked["backbones"]:
        seconds = row["seconds"]
        by_id[row["id"]] = {
            "scores": row["scores"],
            "feature_dim": row["feature_dim"],
            "params_m": row.get("params_m"),
            "imagenet_top1": row.get("imagenet_top1"),
            "seconds": seconds["extract"] + seconds["score"],
            "extract_seconds": seconds["extract"],
            "estimator_seconds": seconds.get("per_estimator", {}),
            "p_best": row["p_best"],
        }
    piece = {
        "n_images": len(dataset),
        "backbones": by_id,
        "estimators": [e["name"] for e in ranked["estimators"]],
        "p_best": ranked["fusion"]["p_best"],
        "p_best_asked": n_p_best,
    }
    checkpoint.put("rank", target.name, "*", piece)
    return piece


def _pair(
    suite: Suite,
    target: SuiteTarget,
    suite_backbone: SuiteBackbone,
    backbone: LoadedBackbone,
    ranking: dict[str, Any],
    checkpoint: _Checkpoint,
    done: int,
    total: int,
    progress: BenchmarkCallback | None,
    **kwargs: Any,
) -> dict[str, Any]:
    """One (target, backbone) row: scores, baselines, ground truth, seconds."""
    ranked = ranking["backbones"][backbone.spec.id]
    source, source_accuracy = _source_of(suite_backbone, backbone)
    scores = dict(ranked["scores"])
    scores["source_accuracy"] = source_accuracy
    scores["model_size"] = ranked.get("params_m")  # absent from a ranking checkpointed by an older version
    scores["imagenet_top1"] = (
        100.0 * source_accuracy
        if source == "imagenet-1k" and source_accuracy is not None
        else ranked.get("imagenet_top1")
    )
    scores["feature_dim"] = float(ranked["feature_dim"])
    row: dict[str, Any] = {
        "id": suite_backbone.id,
        "arch": backbone.spec.arch,
        "feature_dim": ranked["feature_dim"],
        "input_size": int(backbone.data_config["input_size"][-1]),
        "source": source,
        "source_accuracy": source_accuracy,
        "weights_sha256": backbone.weights_sha256,
        "scores": scores,
        "p_best": ranked.get("p_best"),
        "linear_probe_accuracy": None,
        "finetune": None,
        "seconds": {
            "rank": ranked["seconds"],
            "extract": ranked["extract_seconds"],
            "per_estimator": ranked["estimator_seconds"],
            "finetune": None,
        },
    }
    if suite.ground_truth == "published":
        value = suite.published[target.name][suite_backbone.id]
        row["accuracy"] = {"mean": value, "std": None, "per_seed": [value]}
        return row
    spec = suite.finetune
    common = {
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "max_per_class": spec.max_per_class,
        "input_size": suite_backbone.input_size,
        **kwargs,
    }

    def relay(stage: str) -> Callable[[Any], None]:
        def forward(event: Any) -> None:
            _emit(progress, BenchmarkProgress(stage, target.name, suite_backbone.id, done, total, event))

        return forward

    from service.pipeline.finetune.finetune import finetune

    tuned = checkpoint.get("finetune", target.name, suite_backbone.id)
    if tuned is None:
        _emit(progress, BenchmarkProgress("finetune", target.name, suite_backbone.id, done, total))
        result = finetune(
            target.dataset,
            suite_backbone.id,
            strategy=spec.strategy,
            lr_grid=spec.lr_grid,
            seeds=spec.seeds,
            progress=relay("finetune"),
            **common,
        )
        tuned = {
            "accuracy": result["test_accuracy"],
            "chosen_lr": result["chosen_lr"],
            "val_accuracy_by_lr": result["val_accuracy_by_lr"],
            "seconds": result["seconds"]["total"],
            "n_test": _n_test(result),
        }
        checkpoint.put("finetune", target.name, suite_backbone.id, tuned)
    row["accuracy"] = {k: tuned["accuracy"][k] for k in ("mean", "std", "per_seed")}
    row["finetune"] = {
        "strategy": spec.strategy,
        "chosen_lr": tuned["chosen_lr"],
        "epochs": spec.epochs,
        "input_size": row["input_size"],
        "seeds": list(spec.seeds),
        "val_accuracy_by_lr": tuned["val_accuracy_by_lr"],
    }
    row["seconds"]["finetune"] = tuned["seconds"]
    row["_n_test"] = tuned.get("n_test")
    if spec.linear_probe:
        probe = checkpoint.get("linear_probe", target.name, suite_backbone.id)
        if probe is None:
            _emit(progress, BenchmarkProgress("linear_probe", target.name, suite_backbone.id, done, total))
            result = finetune(target.dataset, suite_backbone.id, strategy="linear", seeds=(0,), **common)
            probe = {"accuracy": result["test_accuracy"]["mean"], "seconds": result["seconds"]["total"]}
            checkpoint.put("linear_probe", target.name, suite_backbone.id, probe)
        row["linear_probe_accuracy"] = probe["accuracy"]
    return row


def _n_test(finetune_result: dict[str, Any]) -> int | None:
    test = (finetune_result.get("dataset", {}).get("splits") or {}).get("test") or {}
    return test.get("n_images")


def _source_of(suite_backbone: SuiteBackbone, backbone: LoadedBackbone) -> tuple[str | None, float | None]:
    """``(source task, accuracy on it)`` from the suite, else from the host (e.g. a zoo model's card)."""
    if suite_backbone.source_accuracy is not None:
        return (
            "imagenet-1k" if suite_backbone.published_name or ".in1k" in suite_backbone.id else None,
            suite_backbone.source_accuracy,
        )
    return source_info(suite_backbone.id)


def _estimators_of(targets: Sequence[dict[str, Any]]) -> list[str]:
    baseline_names = {b["name"] for b in BASELINES}
    for target in targets:
        for row in target["backbones"]:
            return [n for n in row["scores"] if n not in baseline_names]
    return []
