"""Fixtures of the service tests: real image folders, settings in tmp dirs, a real server process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.config import Settings

REPO = Path(__file__).resolve().parents[2]


def write_image_folder(root: Path, counts: Mapping[str, int], size: int = 32, seed: int = 0) -> Path:
    """An ImageFolder of PNGs: each class a different mean colour plus noise, so features separate them."""
    rng = np.random.default_rng(seed)
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        base = np.array([(k * 97) % 256, (k * 53 + 80) % 256, (k * 31 + 160) % 256], dtype=np.float64)
        for i in range(n):
            pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def settings(tmp_path: Path, data_root: Path) -> Settings:
    return Settings(
        cache_dir=tmp_path / "cache",
        data_roots=[data_root],
        job_lease_seconds=5,
        worker_poll_seconds=0.1,
        device="cpu",
        batch_size=16,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``backbone-rank serve`` in a subprocess (real uvicorn on 127.0.0.1, real worker processes)."""

    def __init__(self, env: Mapping[str, str], workdir: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env}
        self.workdir = workdir
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"server-{self.port}.log"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        command = [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)]
        command += ["--workers", str(self.workers)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout} s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def kill(self) -> None:
        """kill -9 of the server process (its workers notice and exit on their own)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_env(tmp: Path, data_root: Path, **extra: str) -> dict[str, str]:
    return {
        "BACKBONE_RANK_CACHE_DIR": str(tmp / "cache"),
        "BACKBONE_RANK_DATA_ROOTS": json.dumps([str(data_root)]),
        "BACKBONE_RANK_JOB_LEASE_SECONDS": "3",
        "BACKBONE_RANK_WORKER_POLL_SECONDS": "0.2",
        "BACKBONE_RANK_DEVICE": "cpu",
        "BACKBONE_RANK_NUM_THREADS": "1",
        **extra,
    }


def worker_pids(database: Path) -> dict[str, int]:
    """``worker id -> pid`` as registered in the store."""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return dict(conn.execute("SELECT id, pid FROM workers").fetchall())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Collects servers a test starts and stops them at the end."""
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        server.stop()
