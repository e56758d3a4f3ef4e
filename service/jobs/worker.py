"""The worker process: claim a job, run it with heartbeats, write its outcome, repeat.

``backbone-rank worker`` (or ``python -m service.jobs.worker``) runs :meth:`Worker.run` until SIGTERM or
SIGINT. For each claimed job a heartbeat thread extends the lease every ``lease/3`` seconds and
learns from the store whether a cancel was asked for or the job was lost (reclaimed after an
expired lease); the job itself checks those flags at its progress events and stops.

Outcomes, always one transaction with the terminal state (:meth:`JobStore.finish`):

* the result -> ``succeeded``;
* a :class:`~service.errors.BackboneRankError` -> ``failed`` with its ``{code, detail}`` (the same codes
  the API gives for the checks it can make up front);
* a ``ValueError`` from the pipeline (a bad argument it caught) -> ``failed``, ``invalid_request``;
* CUDA out of memory -> ``failed``, ``gpu_out_of_memory``;
* anything else -> ``failed``, ``internal_error`` (traceback in the log, not in the API);
* a cancel -> ``cancelled``; a shutdown -> the job is released to the queue; a lost lease -> nothing
  is written (the job is someone else's now).

A worker started by ``backbone-rank serve`` exits with its parent (``exit_with_parent``, the parent's pid given
on the command line so that a parent dying during the worker's start-up is noticed too): a thread looks every
``PARENT_CHECK_S`` seconds, so after a ``kill -9`` of the server the orphan stops within a second (its job is
released to the queue at the job's next progress event), and exits regardless after ``ORPHAN_GRACE_S``.

Each claim records this process (:func:`service.jobs.liveness.current_process`), so when a worker is killed outright
its job is taken back within a second or two by whoever sweeps on the same host, not at the end of its lease.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from service.config import Settings, get_settings
from service.errors import BackboneRankError

from .executor import EXECUTORS, JobContext, JobInterrupted
from .liveness import ProcessIdentity, current_process
from .rows import Job
from .store import JobStore

__all__ = ["Worker", "main"]

# Named explicitly: run as ``python -m service.jobs.worker`` this module is "__main__".
_logger = logging.getLogger("service.jobs.worker")

RunFunction = Callable[[Mapping[str, Any], JobContext], dict[str, Any]]

#: How often a worker started by ``serve`` looks whether its parent is still alive.
PARENT_CHECK_S = 0.2
#: How long an orphaned worker may take to stop its job before it exits anyway (the job is then taken back as a dead
#: worker's: service/jobs/liveness.py).
ORPHAN_GRACE_S = 30.0


class _JobControl:
    """Heartbeat thread of one running job and the flags it raises."""

    def __init__(self, worker: Worker, job: Job) -> None:
        self.worker = worker
        self.job = job
        self.reason: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job.id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def stop_reason(self) -> str | None:
        if self.reason is None and self.worker.shutting_down.is_set():
            self.reason = "shutdown"
        return self.reason

    def apply(self, status: str) -> None:
        if status == "lost":
            self.reason = "lost"
        elif status == "cancel" and self.reason is None:
            self.reason = "cancel"

    def _beat(self) -> None:
        interval = max(0.2, self.worker.store.lease_seconds / 3)
        while not self._done.wait(interval):
            try:
                self.apply(self.worker.store.heartbeat(self.job.id, self.worker.worker_id))
                self.worker.store.worker_heartbeat(self.worker.worker_id, self.job.id)
            except Exception:  # a busy or briefly unwritable store: the next beat tries again
                _logger.warning("job %s: heartbeat failed", self.job.id, exc_info=True)


class Worker:
    """Claims and runs jobs from ``store`` until :attr:`shutting_down` is set.

    Parameters
    ----------
    settings : Settings, optional
        Default: :func:`~service.config.get_settings`.
    store : JobStore, optional
        Default: the store at ``settings.database_path``.
    executors : mapping, optional
        ``kind -> (run(request, ctx) -> result, counters(result) -> dict)``; default: rankings and
        fine-tunes (tests pass cheap stand-ins).
    exit_with_parent : bool
        Stop when the parent process dies (workers started by ``backbone-rank serve``), and exit the process
        ``ORPHAN_GRACE_S`` later if the running job has not stopped by then.
    parent_pid : int, optional
        The parent to outlive no longer (default: the parent now).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: JobStore | None = None,
        worker_id: str | None = None,
        executors: Mapping[str, tuple[RunFunction, Callable[..., dict[str, Any]] | None]] | None = None,
        exit_with_parent: bool = False,
        parent_pid: int | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.store = store or JobStore(
            self.settings.database_path or self.settings.cache_dir / "jobs.sqlite3",
            lease_seconds=self.settings.job_lease_seconds,
            max_attempts=self.settings.max_job_attempts,
        )
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.executors = dict(executors if executors is not None else EXECUTORS)
        self.shutting_down = threading.Event()
        # Set while no background thread is importing torch/timm: two threads importing timm at once can see each
        # other's half-initialised modules (ImportError "partially initialized module 'timm.data'"), so a job
        # waits for the registry thread's imports before it runs.
        self._imports_settled = threading.Event()
        self._imports_settled.set()
        self._parent = (parent_pid or os.getppid()) if exit_with_parent else None
        self._stopped = threading.Event()
        #: This process as its claims record it (set by :meth:`run`).
        self.process: ProcessIdentity | None = None

    def check_parent(self) -> bool:
        """Shut down when the parent that started us is gone (we were re-parented); True then."""
        if self._parent is None or os.getppid() == self._parent:
            return False
        if not self.shutting_down.is_set():
            _logger.warning("worker %s: parent process %d is gone; shutting down", self.worker_id, self._parent)
            self.shutting_down.set()
        return True

    def _watch_parent(self) -> None:
        while not self._stopped.wait(PARENT_CHECK_S):
            if self.check_parent():
                if not self._stopped.wait(ORPHAN_GRACE_S):
                    _logger.error(
                        "worker %s: its job did not stop %.0f s after the parent died; exiting",
                        self.worker_id,
                        ORPHAN_GRACE_S,
                    )
                    logging.shutdown()
                    os._exit(3)
                return

    def run(self, *, max_jobs: int | None = None, publish_registry: bool = True) -> int:
        """Loop until shut down (or ``max_jobs`` jobs ran); returns the number of jobs run."""
        self.store.initialize()
        self.process = current_process()
        self.store.register_worker(self.worker_id, pid=os.getpid(), host=socket.gethostname())
        if self._parent is not None:
            threading.Thread(target=self._watch_parent, name="parent-watch", daemon=True).start()
        _logger.info("worker %s started (store %s)", self.worker_id, self.store.path)
        if publish_registry:
            # In the background: importing timm (and torch) takes seconds, during which the worker can already
            # claim a job, and a shutdown must not wait for it.
            self._imports_settled.clear()
            threading.Thread(target=self._publish_timm_registry, name="timm-registry", daemon=True).start()
        ran = 0
        try:
            while not self.shutting_down.is_set() and (max_jobs is None or ran < max_jobs):
                if self.run_once():
                    ran += 1
                    continue
                self.store.worker_heartbeat(self.worker_id)
                self.shutting_down.wait(self.settings.worker_poll_seconds)
        finally:
            self._stopped.set()
            try:
                self.store.unregister_worker(self.worker_id)
            finally:
                self.store.close()
            _logger.info("worker %s stopped after %d job(s)", self.worker_id, ran)
        return ran

    def _publish_timm_registry(self) -> None:
        """Let the web process check timm names without importing timm (see backbone_ids)."""
        try:
            import timm.data  # noqa: F401  # the import a job would otherwise race (see _imports_settled)

            from service.pipeline.models.backbone_ids import write_timm_registry
        except Exception:  # the API then leaves unknown names to the job; never a reason not to work
            _logger.warning("could not import timm for the registry snapshot", exc_info=True)
            return
        finally:
            self._imports_settled.set()
        try:
            write_timm_registry(self.settings.cache_dir / "catalog")
        except Exception:
            _logger.warning("could not write the timm registry snapshot", exc_info=True)

    def run_once(self) -> bool:
        """Claim one job and run it to its outcome; False when none was queued."""
        job = self.store.claim(self.worker_id, self.process)
        if job is None:
            return False
        self.store.worker_heartbeat(self.worker_id, job.id)
        self._run(job)
        return True

    def _run(self, job: Job) -> None:
        log = {"job_id": job.id, "kind": job.kind, "attempt": job.attempts}
        _logger.info("job %s (%s) claimed, attempt %d", job.id, job.kind, job.attempts, extra=log)
        control = _JobControl(self, job)

        def write_progress(progress: dict[str, Any]) -> None:
            control.apply(self.store.set_progress(job.id, self.worker_id, progress))

        if "request" in job.unreadable:  # nothing to run; fail it rather than crash on it at every claim
            error = job.error or {}
            self._fail(job, str(error.get("code")), str(error.get("detail")))
            return
        ctx = JobContext(job.id, self.settings, write_progress, control.stop_reason)
        began = time.monotonic()
        control.start()
        try:
            run, counters_of = self.executors[job.kind]
            ctx.check()
            self._imports_settled.wait()
            result = run(job.request, ctx)
        except JobInterrupted as stop:
            self._interrupted(job, stop.reason)
        except BackboneRankError as err:
            self._fail(
                job, err.code, err.detail, {k: v for k, v in err.to_dict().items() if k not in ("code", "detail")}
            )
        except ValueError as err:
            self._fail(job, "invalid_request", str(err))
        except Exception as err:
            if _is_cuda_oom(err):
                self._fail(
                    job,
                    "gpu_out_of_memory",
                    "the GPU ran out of memory even at batch size 1; lower the image size or use a smaller backbone",
                )
            else:
                _logger.error("job %s failed with an unexpected error:\n%s", job.id, traceback.format_exc(), extra=log)
                self._fail(
                    job, "internal_error", f"unexpected {type(err).__name__} in the worker; see its log (job {job.id})"
                )
        else:
            try:
                counters = counters_of(result) if counters_of else {}
            except Exception:  # metrics are never a reason to lose a result
                _logger.warning("job %s: counters of the result failed", job.id, exc_info=True)
                counters = {}
            if control.stop_reason() == "lost":
                _logger.warning("job %s finished after its lease was lost; result dropped", job.id, extra=log)
            elif self.store.finish(job.id, self.worker_id, "succeeded", result=result, counters=counters):
                _logger.info("job %s succeeded in %.1f s", job.id, time.monotonic() - began, extra=log)
        finally:
            control.stop()

    def _interrupted(self, job: Job, reason: str) -> None:
        if reason == "cancel":
            self.store.finish(job.id, self.worker_id, "cancelled")
            _logger.info("job %s cancelled", job.id)
        elif reason == "shutdown":
            self.store.release(job.id, self.worker_id)
            _logger.info("job %s released to the queue (worker shutting down)", job.id)
        else:
            _logger.warning("job %s: lease lost to another worker; stopped without writing", job.id)

    def _fail(self, job: Job, code: str, detail: str, context: Mapping[str, Any] | None = None) -> None:
        error = {"code": code, "detail": detail, **(context or {})}
        if self.store.finish(job.id, self.worker_id, "failed", error=error):
            _logger.info("job %s failed: [%s] %s", job.id, code, detail, extra={"job_id": job.id})


def _is_cuda_oom(err: BaseException) -> bool:
    name = type(err).__name__
    return name == "OutOfMemoryError" and type(err).__module__.startswith("torch")


def main(
    *,
    exit_with_parent: bool = False,
    parent_pid: int | None = None,
    settings: Settings | None = None,
    executors: Mapping[str, tuple[RunFunction, Callable[..., dict[str, Any]] | None]] | None = None,
) -> None:
    """Run a worker in this process until SIGTERM/SIGINT (then the running job is released); ``executors`` as
    :class:`Worker`'s (tests run stand-ins in real worker processes)."""
    from service.logs import configure_logging

    configure_logging()
    worker = Worker(settings, exit_with_parent=exit_with_parent, parent_pid=parent_pid, executors=executors)

    def stop(signum: int, _frame: Any) -> None:
        _logger.info("worker %s: signal %d, shutting down", worker.worker_id, signum)
        worker.shutting_down.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run(publish_registry=executors is None)  # stand-ins use no timm
    # Everything durable is in the (closed) store. Skip the interpreter's teardown of torch, which takes
    # seconds (C-level destructors) and would hold up `serve`'s shutdown and the supervisor's restarts.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def command_line(argv: list[str]) -> dict[str, Any]:
    """:func:`main`'s arguments from a worker's command line: ``--exit-with-parent`` and ``--parent-pid N`` (what
    ``serve`` starts its workers with, service/serve.py)."""
    parent = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--parent-pid"]
    return {"exit_with_parent": "--exit-with-parent" in argv, "parent_pid": int(parent[0]) if parent else None}


if __name__ == "__main__":
    main(**command_line(sys.argv[1:]))
