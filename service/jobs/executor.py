"""Run one job's request in the worker process: a ranking or a fine-tuning, with progress and cancel.

The functions here validate a stored request (the JSON the API accepted) into its model
(:mod:`service.contract.requests`) and hand it to the engine (:mod:`service.pipeline.engine`) with the
service's runtime (:func:`service.bootstrap.service_runtime`: data roots, caches, weights dirs, device,
allowlist); the stored result is the result model's JSON. The pipeline imports torch, so it is
imported inside the functions: importing this module stays cheap.

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


def run_ranking(request: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Rank as the stored :class:`~service.contract.RankingRequest` says; the :class:`RankingResult` as JSON."""
    from service.bootstrap import service_runtime, start
    from service.contract import RankingRequest
    from service.pipeline.engine import rank

    settings = ctx.settings
    start(settings)
    typed = RankingRequest.model_validate(dict(request))
    backbones = typed.backbones
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

    result = rank(typed, service_runtime(settings), progress=on_event)
    ctx.progress({"stage": "done", "backbones_done": len(backbones), "backbones_total": len(backbones)}, force=True)
    return result.model_dump(mode="json")


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
    """Fine-tune as the stored :class:`~service.contract.FinetuneRequest` says (the API already resolved a
    ``ranking_id`` to its winner); weights go to ``<finetunes_dir>/<job id>``."""
    from service.bootstrap import service_runtime, start
    from service.contract import FinetuneRequest
    from service.pipeline.engine import finetune
    from service.pipeline.finetune.training import TrainingCancelled

    settings = ctx.settings
    start(settings)
    typed = FinetuneRequest.model_validate(dict(request))
    output_dir = Path(settings.finetunes_dir or settings.cache_dir / "finetunes") / ctx.job_id
    if output_dir.exists():
        shutil.rmtree(output_dir)  # a retried attempt starts over; the folder is ours (server-generated name)
    ctx.progress({"stage": "load"}, force=True)

    def on_event(event: Any) -> None:
        is_event = dataclasses.is_dataclass(event) and not isinstance(event, type)
        ctx.progress(dataclasses.asdict(event) if is_event else dict(event))

    def cancel() -> bool:
        return ctx.stop_reason() is not None

    try:
        result = finetune(
            typed,
            service_runtime(settings),
            output_dir=output_dir,
            progress=on_event,
            cancel=cancel,
            job_id=ctx.job_id,
        )
    except TrainingCancelled:
        raise JobInterrupted(ctx.stop_reason() or "cancel") from None
    return result.model_dump(mode="json")


#: kind -> (run function, counters of its result)
EXECUTORS: dict[str, tuple[Callable[[Mapping[str, Any], JobContext], dict[str, Any]], Callable[..., dict]]] = {
    "ranking": (run_ranking, ranking_counters),
    "finetune": (run_finetune, lambda result: {}),
}
