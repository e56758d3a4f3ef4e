"""Run one job's request in the worker process: a ranking or a fine-tuning, with progress and cancel.

The functions here turn a stored request (the JSON the API accepted) into calls of
:func:`service.pipeline.rank.rank_backbones` and :func:`service.pipeline.finetune.finetune`, with the
service's settings (data roots, caches, weights dirs, device, allowlist). The pipeline imports
torch, so it is imported inside the functions: importing this module stays cheap.

Cooperative stop: :class:`JobContext` carries a ``stop_reason`` callable (a cancel asked for, the lease
lost, the worker shutting down). Ranking checks it at every extraction progress event and raises
:class:`JobInterrupted`; fine-tuning gets it as its ``cancel`` callback (checked every batch).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.config import Settings
from service.pipeline.backbone_ids import service_allows

__all__ = ["JobContext", "JobInterrupted", "EXECUTORS", "run_ranking", "run_finetune", "ranking_counters"]

_logger = logging.getLogger(__name__)

#: Progress is written at most this often (plus every stage change): SQLite writes are not free.
PROGRESS_INTERVAL_S = 0.25


class JobInterrupted(Exception):
    """The job stopped early; ``reason`` is ``"cancel"``, ``"lost"`` or ``"shutdown"``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class JobContext:
    """What a running job may use: its id, the settings, a progress sink and the stop flag.

    ``write_progress(dict)`` stores progress; ``stop_reason()`` returns None while the job may go on.
    """

    job_id: str
    settings: Settings
    write_progress: Callable[[dict[str, Any]], None]
    stop_reason: Callable[[], str | None]
    _last_write: float = field(default=0.0, init=False)
    _last_stage: Any = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def check(self) -> None:
        """Raise :class:`JobInterrupted` when the job must stop."""
        reason = self.stop_reason()
        if reason is not None:
            raise JobInterrupted(reason)

    def progress(self, progress: Mapping[str, Any], *, force: bool = False) -> None:
        """Store ``progress`` (throttled, except on a stage change or ``force``), then honour a stop and
        the test hook ``fault_progress_delay_s``."""
        stage = (progress.get("stage"), progress.get("backbone"))
        now = time.monotonic()
        with self._lock:
            due = force or stage != self._last_stage or now - self._last_write >= PROGRESS_INTERVAL_S
            if due:
                self._last_write, self._last_stage = now, stage
        if due:
            self.write_progress(dict(progress))
        self.check()
        delay = self.settings.fault_progress_delay_s
        deadline = time.monotonic() + delay
        while delay and time.monotonic() < deadline:
            time.sleep(min(0.05, delay))
            self.check()


def _roots(settings: Settings) -> list[Path]:
    # The service never runs in "CLI mode" (roots=None allows the dataset's own folder): no roots, no paths.
    return list(settings.data_roots)


def _allowlist(settings: Settings) -> Callable[[str], bool]:
    patterns, weights_dirs = list(settings.allowed_backbones), list(settings.weights_dirs)
    return lambda backbone_id: service_allows(backbone_id, patterns=patterns, weights_dirs=weights_dirs)


def _setup(settings: Settings) -> None:
    """Point the process-wide weights providers at this worker's settings, and set torch's threads."""
    from service.builtin.packaged_weights import register_packaged_weights, set_packaged_weights_dir
    from service.builtin.zoo import register_zoo
    from service.catalog import zoo_dir

    set_packaged_weights_dir(settings.cache_dir / "weights")
    register_packaged_weights()
    register_zoo(zoo_dir(settings))
    if settings.num_threads:
        import torch

        torch.set_num_threads(settings.num_threads)


def run_ranking(request: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Rank ``request["backbones"]`` on ``request["dataset"]`` (a ``RankingRequest`` as JSON)."""
    settings = ctx.settings
    _setup(settings)
    from service.pipeline.cache import FeatureCache
    from service.pipeline.datasets import DatasetRef
    from service.pipeline.rank import rank_backbones

    backbones = list(request["backbones"])
    finished: set[str] = set()
    ctx.progress({"stage": "loading", "backbones_done": 0, "backbones_total": len(backbones)}, force=True)

    def on_event(event: Any) -> None:
        if event.stage in ("done", "cached"):
            finished.add(event.backbone)
        ctx.progress(
            {
                "stage": event.stage,
                "backbone": event.backbone,
                "done": event.done,
                "total": event.total,
                "backbones_done": len(finished),
                "backbones_total": len(backbones),
            },
            force=event.stage in ("done", "cached"),
        )

    result = rank_backbones(
        DatasetRef.from_dict(dict(request["dataset"])),
        backbones,
        estimators=request.get("estimators") or None,
        roots=_roots(settings),
        max_per_class=request.get("max_per_class"),
        seed=int(request.get("seed") or 0),
        min_per_class=settings.min_samples_per_class,
        cache=FeatureCache(settings.cache_dir / "features", settings.feature_cache_max_bytes),
        weights_dirs=list(settings.weights_dirs),
        hf_cache_dir=settings.hf_cache_dir,
        allowlist=_allowlist(settings),
        device=settings.device,
        batch_size=settings.batch_size,
        progress=on_event,
        builtin_dir=settings.cache_dir / "builtin",
        calibration=settings.calibration,
        n_bootstrap=int(request.get("n_bootstrap") or 0),
    )
    ctx.progress({"stage": "done", "backbones_done": len(backbones), "backbones_total": len(backbones)}, force=True)
    return result


def ranking_counters(result: Mapping[str, Any]) -> dict[str, float]:
    """What a finished ranking adds to the ``/metrics`` counters (from its result, nothing estimated)."""
    rows = result.get("backbones") or []
    hits = sum(1 for row in rows if row.get("from_cache"))
    extract = sum(float((row.get("seconds") or {}).get("extract") or 0.0) for row in rows if not row.get("from_cache"))
    return {
        "feature_cache_hits": hits,
        "feature_cache_misses": len(rows) - hits,
        "extraction_seconds": extract,
    }


def run_finetune(request: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Fine-tune ``request["backbone"]`` on ``request["dataset"]`` (a ``FinetuneRequest`` as JSON, with the
    winner of ``ranking_id`` already filled in by the API); weights go to ``<finetunes_dir>/<job id>``."""
    settings = ctx.settings
    _setup(settings)
    from service.pipeline.datasets import DatasetRef
    from service.pipeline.finetune import finetune
    from service.pipeline.training import TrainingCancelled

    output_dir = Path(settings.finetunes_dir or settings.cache_dir / "finetunes") / ctx.job_id
    if output_dir.exists():
        shutil.rmtree(output_dir)  # a retried attempt starts over; the folder is ours (server-generated name)
    ctx.progress({"stage": "load"}, force=True)

    def on_event(event: Any) -> None:
        ctx.progress(dataclasses.asdict(event) if dataclasses.is_dataclass(event) else dict(event))

    def cancel() -> bool:
        return ctx.stop_reason() is not None

    try:
        result = finetune(
            DatasetRef.from_dict(dict(request["dataset"])),
            request["backbone"],
            strategy=request.get("strategy") or "full",
            epochs=request.get("epochs"),
            lr_grid=request.get("lr_grid"),
            seeds=tuple(request.get("seeds") or (0,)),
            batch_size=int(request.get("batch_size") or 128),
            max_per_class=request.get("max_per_class"),
            input_size=request.get("input_size"),
            roots=_roots(settings),
            builtin_dir=settings.cache_dir / "builtin",
            weights_dirs=list(settings.weights_dirs),
            hf_cache_dir=settings.hf_cache_dir,
            output_dir=output_dir,
            device=settings.device,
            progress=on_event,
            cancel=cancel,
            allowlist=_allowlist(settings),
        )
    except TrainingCancelled:
        raise JobInterrupted(ctx.stop_reason() or "cancel") from None
    if request.get("ranking_id"):
        result["ranking_id"] = request["ranking_id"]
    return result


#: kind -> (run function, counters of its result)
EXECUTORS: dict[str, tuple[Callable[[Mapping[str, Any], JobContext], dict[str, Any]], Callable[..., dict]]] = {
    "ranking": (run_ranking, ranking_counters),
    "finetune": (run_finetune, lambda result: {}),
}
