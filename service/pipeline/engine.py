"""The engine's typed entry points: a request model in, a result model out.

``rank``, ``finetune`` and ``benchmark`` take a request of :mod:`service.contract.requests` and the host's
:class:`~service.pipeline.runtime.Runtime`, run the pipeline, and return the result model of
:mod:`service.contract.results` carrying the *effective* request (every default filled in) and the
environment. The CLI (local runs), the job worker (service runs) and the benchmark all come through
here, so one request gives one result whoever runs it.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.contract import (
    RESULT_SCHEMA_VERSION,
    BenchmarkRequest,
    BenchmarkResult,
    FinetuneRequest,
    FinetuneResult,
    RankingRequest,
    RankingResult,
    local_only_fields,
)
from service.contract.requests import DatasetSpec
from service.errors import LocalOnlyOption
from service.pipeline.data.refs import DatasetRef
from service.pipeline.runtime import Runtime

__all__ = ["benchmark", "environment", "finetune", "rank", "winner_request"]

_logger = logging.getLogger(__name__)


def _dataset_ref(spec: DatasetSpec) -> DatasetRef:
    return DatasetRef.from_dict(spec.model_dump(exclude_none=True))


def _check_local_paths(request: RankingRequest | FinetuneRequest, runtime: Runtime) -> None:
    local = local_only_fields(request)
    if local and not runtime.accepts_local_paths:
        raise LocalOnlyOption.refusing(local)


def environment(device: str) -> dict[str, Any]:
    """Versions, device and machine of this process (the benchmark's environment plus the package version)."""
    from service.pipeline.benchmark.results import environment_info

    try:
        version: str | None = importlib.metadata.version("backbone-rank")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"backbone_rank": version, **environment_info(device)}


def rank(
    request: RankingRequest,
    runtime: Runtime,
    *,
    progress: Callable[[Any], None] | None = None,
) -> RankingResult:
    """Rank ``request.backbones`` on ``request.dataset`` (:func:`~service.pipeline.ranking.rank.rank_backbones`), with
    the features extracted where ``request.executor`` (else ``runtime.executor``) says: this process, or Ray actors
    (:mod:`service.pipeline.scaleout`) — the same rows and scores either way."""
    from service.pipeline.features.extract import select_device
    from service.pipeline.ranking.rank import rank_backbones
    from service.pipeline.scaleout.check import require_executor

    _check_local_paths(request, runtime)
    device = request.device or runtime.device
    batch_size = request.batch_size or runtime.batch_size
    executor = request.executor or runtime.executor
    require_executor(executor)
    ray_extractor = None
    if executor == "ray":
        from service.pipeline.scaleout.actor import DatasetLoad
        from service.pipeline.scaleout.extraction import RayExtractor

        load = DatasetLoad(
            ref=_dataset_ref(request.dataset).to_dict(),
            max_per_class=request.max_per_class,
            seed=request.seed,
            min_per_class=runtime.min_per_class,
        )
        ray_extractor = RayExtractor(runtime.ray, load, weights_dirs=tuple(request.weights_dirs))
    result = rank_backbones(
        _dataset_ref(request.dataset),
        request.backbones,
        estimators=request.estimators,
        roots=runtime.roots,
        max_per_class=request.max_per_class,
        seed=request.seed,
        min_per_class=runtime.min_per_class,
        cache=runtime.feature_cache() if request.cache else None,
        weights_dirs=[*runtime.weights_dirs, *map(Path, request.weights_dirs)],
        hf_cache_dir=runtime.hf_cache_dir,
        allowlist=runtime.allowlist,
        device=device,
        batch_size=batch_size,
        layer=request.layer,
        layer_scores=request.layer_scores,
        progress=progress,
        builtin_dir=runtime.builtin_dir,
        streaming=request.streaming,
        calibration=runtime.calibration,
        n_bootstrap=request.n_bootstrap,
        hub_datasets=runtime.hub_datasets(),
        hub=runtime.hub,
        skip_unavailable=bool(request.skip_unavailable),
        uploads_dir=runtime.uploads_dir,
        extractor=ray_extractor,
    )
    effective = request.model_copy(
        update={
            "device": device,
            "batch_size": batch_size,
            "estimators": [column["name"] for column in result["estimators"]],
            "skip_unavailable": bool(request.skip_unavailable),
            "executor": executor,
        }
    )
    document = {
        **result,
        "schema_version": RESULT_SCHEMA_VERSION,
        "kind": "ranking",
        "request": effective.model_dump(mode="json"),
        # On Ray the features come from the actors' devices (environment.executor.devices); this process only scores,
        # on its CPU, and may have no GPU at all.
        "environment": {
            **environment(str(select_device(device)) if ray_extractor is None else "cpu"),
            "executor": ray_extractor.describe() if ray_extractor is not None else {"kind": "local"},
        },
    }
    return RankingResult.model_validate(document)


def finetune(
    request: FinetuneRequest,
    runtime: Runtime,
    *,
    winner_of: RankingResult | None = None,
    output_dir: Path | None = None,
    progress: Callable[[Any], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    job_id: str | None = None,
) -> FinetuneResult:
    """Fine-tune ``request.backbone`` (:func:`~service.pipeline.finetune.finetune.finetune`); with ``winner_of``, the
    backbone is that ranking's winner and the result says where it ranked."""
    from service.pipeline.finetune.finetune import finetune as run_finetune

    _check_local_paths(request, runtime)
    if request.backbone is None or request.dataset is None:
        raise ValueError("the fine-tune request must name its backbone and dataset by now (resolve ranking_id first)")
    device = request.device or runtime.device
    result = run_finetune(
        _dataset_ref(request.dataset),
        request.backbone,
        strategy=request.strategy,
        freeze_stages=request.freeze_stages,
        calibration=runtime.calibration,
        epochs=request.epochs,
        lr_grid=request.lr_grid,
        seeds=tuple(request.seeds or (0,)),
        batch_size=request.batch_size or 128,
        max_per_class=request.max_per_class,
        input_size=request.input_size,
        roots=runtime.roots,
        builtin_dir=runtime.builtin_dir,
        weights_dirs=[*runtime.weights_dirs, *map(Path, request.weights_dirs)],
        hf_cache_dir=runtime.hf_cache_dir,
        output_dir=output_dir,
        device=device,
        progress=progress,
        cancel=cancel,
        allowlist=runtime.allowlist,
        hub=runtime.hub,
        hub_datasets=runtime.hub_datasets(),
        uploads_dir=runtime.uploads_dir,
    )
    effective = request.model_copy(
        update={
            "epochs": result["config"]["epochs"],
            "lr_grid": list(result["lr_grid"]),
            "seeds": list(result["seeds"]),
            "batch_size": result["config"]["batch_size"],
            "device": device,
        }
    )
    document = {
        **result,
        "schema_version": RESULT_SCHEMA_VERSION,
        "kind": "finetune",
        "request": effective.model_dump(mode="json"),
        "environment": environment(str(result["config"]["device"])),
        "ranking_id": request.ranking_id,
        "job_id": job_id,
    }
    if winner_of is not None:
        top = winner_of.backbones[0]
        document["ranking"] = {"rank": top.rank, "mean_rank": top.mean_rank, "n_backbones": len(winner_of.backbones)}
    return FinetuneResult.model_validate(document)


def winner_request(ranking: RankingResult, **fields: Any) -> FinetuneRequest:
    """A fine-tune request for ``ranking``'s winner, on its dataset (split dropped: fine-tuning picks
    train/val/test itself) unless ``fields`` name another one."""
    if not ranking.backbones:
        raise ValueError("the ranking has no backbone to fine-tune")
    dataset = fields.pop("dataset", None) or ranking.dataset.ref.model_copy(update={"split": None})
    return FinetuneRequest(dataset=dataset, backbone=ranking.backbones[0].id, **fields)


def benchmark(
    request: BenchmarkRequest,
    runtime: Runtime,
    *,
    out_dir: Path | None,
    resume: bool = True,
    progress: Callable[[Any], None] | None = None,
) -> BenchmarkResult:
    """Run a benchmark suite (:func:`~service.pipeline.benchmark.benchmark.run_benchmark`)."""
    from service.pipeline.benchmark.benchmark import run_benchmark
    from service.pipeline.benchmark.suites import get_suite
    from service.pipeline.plugins import suite_factory

    suite = get_suite(
        request.suite,
        data_dir=Path(request.data_dir) if request.data_dir else None,
        backbone_map=dict(request.backbone_map) or None,
        per_class=request.per_class,
    )
    device = request.device or runtime.device
    # The effective request names what ran: the suite's targets (in run order) and, for a registered suite
    # that sizes its splits, the images per class it used, so that a rerun of it reproduces the result.
    per_class = request.per_class
    if per_class is None and suite_factory(request.suite) is not None:
        per_class = suite.rank_max_per_class
    targets = list(dict.fromkeys(request.targets)) if request.targets else [t.name for t in suite.targets]
    effective = request.model_copy(update={"device": device, "targets": targets, "per_class": per_class})
    result = run_benchmark(
        suite,
        request=effective.model_dump(mode="json"),
        out_dir=out_dir,
        resume=resume,
        targets=request.targets,
        device=device,
        roots=runtime.roots,
        builtin_dir=runtime.builtin_dir,
        weights_dirs=runtime.weights_dirs,
        hf_cache_dir=runtime.hf_cache_dir,
        n_bootstrap=request.n_bootstrap,
        progress=progress,
        reuse=[Path(p) for p in request.reuse],
        calibration=runtime.calibration,
        p_best=request.p_best,
    )
    return BenchmarkResult.model_validate(result)
