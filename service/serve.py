"""``backbone-rank serve``: uvicorn in this process, worker processes as supervised children.

The web process imports no torch; each worker is a separate ``python -m service.jobs.worker`` process
(so a crash or an out-of-memory kill of a worker never takes the API down). A worker that exits
unexpectedly is restarted (with a growing pause if it keeps dying at start-up); its job is reclaimed
within a second or two, its process being provably dead (service/jobs/liveness.py). On SIGTERM/SIGINT
uvicorn drains, then the workers get SIGTERM (each releases its running job to the queue) and, after a
grace period, SIGKILL. Workers also exit on their own when this process dies (``--exit-with-parent
--parent-pid <this pid>``, checked five times a second), so a ``kill -9`` of the server leaves no orphans.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from service.config import Settings

__all__ = ["WorkerSupervisor", "run_server"]

_logger = logging.getLogger(__name__)

_STOP_GRACE_S = 20.0
_MAX_BACKOFF_S = 30.0


#: How a worker process is started (``serve`` adds the arguments that tie it to this process).
WORKER_COMMAND = (sys.executable, "-m", "service.jobs.worker")


class WorkerSupervisor:
    """Keeps ``n`` worker processes running until :meth:`stop`; ``command`` starts one (default
    :data:`WORKER_COMMAND`; tests start stand-in workers)."""

    def __init__(self, n: int, command: Sequence[str] = WORKER_COMMAND) -> None:
        self.n = n
        self.command = list(command)
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * n
        self._started_at = [0.0] * n
        self._backoff = [0.0] * n
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*self.command, "--exit-with-parent", "--parent-pid", str(os.getpid())])

    def start(self) -> None:
        for i in range(self.n):
            process = self._spawn()
            self.processes[i] = process
            self._started_at[i] = time.monotonic()
            _logger.info("started worker process %d", process.pid)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for i, proc in enumerate(self.processes):
                if proc is None or proc.poll() is None:
                    continue
                lived = time.monotonic() - self._started_at[i]
                # Dying right after start (bad config, broken install) backs off; a long-lived worker restarts at once.
                self._backoff[i] = 0.0 if lived > 60 else min(_MAX_BACKOFF_S, max(1.0, 2 * self._backoff[i]))
                _logger.warning(
                    "worker process %d exited with %s after %.0f s; restarting in %.0f s",
                    proc.pid,
                    proc.returncode,
                    lived,
                    self._backoff[i],
                )
                if self._stopping.wait(self._backoff[i]):
                    return
                self.processes[i] = self._spawn()
                self._started_at[i] = time.monotonic()

    def stop(self) -> None:
        """SIGTERM every worker, wait for them (they release their jobs), SIGKILL stragglers."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        live = [p for p in self.processes if p is not None and p.poll() is None]
        for proc in live:
            proc.terminate()
        deadline = time.monotonic() + _STOP_GRACE_S
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _logger.warning("worker process %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait()


def run_server(settings: Settings, *, host: str | None = None, port: int | None = None, workers: int = 1) -> None:
    """Serve the API on ``host:port`` (default: the settings', 127.0.0.1:8000) with ``workers`` workers.

    Raises
    ------
    StoreCorrupt
        The job store cannot be used; checked before any worker starts, so nothing runs on a broken store.
    """
    import uvicorn

    from service.jobs.store import JobStore
    from service.logs import configure_logging
    from service.main import create_app

    configure_logging()
    JobStore(settings.database_path or settings.cache_dir / "jobs.sqlite3").initialize().close()
    host = host or settings.host
    port = port or settings.port
    # uvicorn re-raises the signal that stopped it once it is done; a no-op handler lets us stop the
    # workers afterwards instead of dying on the spot (SIGTERM's default action).
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    supervisor = WorkerSupervisor(workers)
    supervisor.start()
    try:
        config = uvicorn.Config(create_app(settings), host=host, port=port, log_config=None, access_log=True)
        uvicorn.Server(config).run()
    finally:
        supervisor.stop()
        _logger.info("server stopped")
