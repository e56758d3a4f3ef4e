"""Latency of reading job status under load: 50 concurrent clients against a real ``backbone-rank serve``.

Starts ``backbone-rank serve`` on 127.0.0.1 (a free port, one worker, a fresh cache in a temporary folder, nothing
downloaded), runs one small real ranking and copies its stored row into ``--history`` finished rankings (so a list
of 50 is a list of 50 real results), then submits a longer ranking that runs during the measurement (the worker's
test hook ``fault_progress_delay_s`` keeps it running). ``--clients`` clients, each with its own connection, then
read the running job's status (GET ``/v1/rankings/{id}``) and the newest 50 rankings (GET ``/v1/rankings``) in
turn for ``--seconds``, each as fast as answers come (``--interval 0``, the worst case: the latency is then mostly
the wait behind the other clients' requests) or one request every ``--interval`` seconds (a client polling); one
more client times ``/healthz`` every 0.25 s; ``--streams`` SSE streams, all open before the clock starts, follow
the running job throughout (or, with ``--follow queued``, a second job that waits in the queue behind it: the
streams then get no events, as in the issue's probe). Every request is timed to its last byte; an error is any
non-200 answer or failed request.

Bounded: loopback only, at most 300 s and 200 clients; the server and its worker are stopped and the temporary
folder removed at the end, whatever happens.

Usage: python benchmarks/load_status.py [--clients 50] [--seconds 20] [--interval 0] [--history 50] [--streams 0]
                                        [--follow running|queued]
Writes <cache dir>/benchmarks/load_status-c<clients>-i<interval>-h<history>-s<streams>[-queued].json (``--out DIR``
elsewhere; ``--out benchmarks/results`` records the run) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _results_dir import default_out_dir
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # never anything else: this script loads a server it starts itself
BACKBONE = "random:test_resnet"


def write_images(root: Path, per_class: int, classes: int = 2, size: int = 16) -> Path:
    """An ImageFolder of small noise PNGs, one mean colour per class."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 80 * c, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(tmp: Path, data: Path) -> Iterator[tuple[str, Path, int]]:
    """``backbone-rank serve`` with one worker; ``(base url, job store path, pid of the web process)``."""
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "BACKBONE_RANK_CACHE_DIR": str(tmp / "cache"),
        "BACKBONE_RANK_DATA_ROOTS": json.dumps([str(data)]),
        "BACKBONE_RANK_DEVICE": "cpu",
        "BACKBONE_RANK_NUM_THREADS": "1",
        "BACKBONE_RANK_FAULT_PROGRESS_DELAY_S": "0.2",
        "BACKBONE_RANK_MAX_EVENT_STREAMS": "1000",
    }
    command = [sys.executable, "-m", "service.cli", "serve", "--host", HOST, "--port", str(port), "--workers", "1"]
    log = open(tmp / "server.log", "wb")  # closed in the finally below, after the server
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server was not ready within 180 s")
            time.sleep(0.2)
        yield url, tmp / "cache" / "jobs.sqlite3", proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def submit(url: str, dataset: Path, **extra: Any) -> str:
    body = {"dataset": {"kind": "folder", "path": str(dataset)}, "backbones": [BACKBONE], "estimators": ["logme"]}
    response = httpx.post(f"{url}/v1/rankings", json={**body, **extra}, timeout=30)
    response.raise_for_status()
    return str(response.json()["id"])


def wait_for(url: str, job_id: str, states: tuple[str, ...], timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/rankings/{job_id}", timeout=30).json()
        if job["state"] in states:
            return dict(job)
        time.sleep(0.5)
    raise RuntimeError(f"job {job_id} did not reach {states} within {timeout} s")


def copy_finished(database: Path, job_id: str, n: int) -> None:
    """``n`` copies of the finished job ``job_id``'s row (its real result), one second apart in the past."""
    now = time.time()
    with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn, conn:
        for i in range(n):
            conn.execute(
                "INSERT INTO jobs (id, kind, state, request, request_hash, progress, progress_seq, result, error, "
                "created_at, started_at, finished_at, attempts, max_attempts, cancel_requested) "
                "SELECT ?, kind, state, request, request_hash, progress, progress_seq, result, error, ?, ?, ?, "
                "attempts, max_attempts, cancel_requested FROM jobs WHERE id = ?",
                (uuid.uuid4().hex, now - 1000 - i, now - 999 - i, now - 998 - i, job_id),
            )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; its children, the worker, not counted)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(values) * 1000
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
    }


class Connection:
    """One keep-alive HTTP/1.1 connection that sends GETs and reads ``Content-Length`` answers, and nothing else:
    httpx spent about as much CPU per request as the server on this machine, and on a shared 2-core box the load
    generator's CPU is the server's loss; a 50-line client keeps what is measured the server's."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            lengths = [int(line[15:]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
            if not lengths:
                raise ValueError(f"an answer to GET {path} without Content-Length")
            return int(head.split(b" ", 2)[1]), await reader.readexactly(lengths[0])
        except BaseException:
            await self.close()  # a half-read answer: the next request starts on a new connection
            raise

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            with contextlib.suppress(OSError):
                await self.streams[1].wait_closed()
            self.streams = None


async def load(
    url: str, job_id: str, clients: int, seconds: float, interval: float, streams: int, followed: str
) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {"status": [], "list": [], "healthz": []}
    errors: dict[str, int] = {}
    sizes: dict[str, int] = {}
    paths = {"status": f"/v1/rankings/{job_id}", "list": "/v1/rankings?limit=50"}
    stop = 0.0

    async def timed(client: Connection, name: str, path: str) -> None:
        began = time.perf_counter()
        try:
            status, body = await client.get(path)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as err:
            errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
            return
        latencies[name].append(time.perf_counter() - began)
        sizes[name] = len(body)
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1

    async def reader(i: int, client: Connection) -> None:
        turn = i % 2  # half start with the job, half with the list
        if interval:
            await asyncio.sleep(interval * i / clients)  # spread the pollers over one interval
        while time.monotonic() < stop:
            began = time.monotonic()
            name = ("status", "list")[turn]
            await timed(client, name, paths[name])
            turn = 1 - turn
            if interval:
                await asyncio.sleep(max(0.0, began + interval - time.monotonic()))

    async def prober(client: Connection) -> None:
        while time.monotonic() < stop:
            await timed(client, "healthz", "/healthz")
            await asyncio.sleep(0.25)

    opened: list[asyncio.Event] = [asyncio.Event() for _ in range(streams)]

    async def follower(client: httpx.AsyncClient, open_: asyncio.Event) -> None:
        with contextlib.suppress(httpx.HTTPError, asyncio.CancelledError):
            async with client.stream("GET", f"/v1/rankings/{followed}/events") as response:
                if response.status_code != 200:
                    errors[f"stream {response.status_code}"] = errors.get(f"stream {response.status_code}", 0) + 1
                async for _ in response.aiter_lines():
                    open_.set()  # its first event (the job's state) arrived

    async with httpx.AsyncClient(base_url=url, timeout=None, limits=httpx.Limits(max_connections=None)) as sse:
        began = time.monotonic()
        followers = [asyncio.create_task(follower(sse, event)) for event in opened]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in opened)), timeout=120)
        streams_opened_s = time.monotonic() - began
        # Every client connected (and its first answer read) before the clock starts: what is measured is the
        # steady state, not the setup of 51 clients in this one process.
        readers = [Connection(url) for _ in range(clients + 1)]
        try:
            await asyncio.gather(*(client.get("/healthz") for client in readers))
            began = time.monotonic()
            stop = began + seconds
            await asyncio.gather(prober(readers[-1]), *(reader(i, client) for i, client in enumerate(readers[:-1])))
            elapsed = time.monotonic() - began
        finally:
            await asyncio.gather(*(client.close() for client in readers))
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    reads = latencies["status"] + latencies["list"]
    return {
        "requests": len(reads) + sum(errors.values()),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "throughput_rps": round(len(reads) / elapsed, 1),
        "latency": {
            "all reads": percentiles(reads),
            "status": percentiles(latencies["status"]),
            "list": percentiles(latencies["list"]),
            "healthz": percentiles(latencies["healthz"]),
        },
        "bytes": sizes,
        "streams_opened_seconds": round(streams_opened_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=0.0, help="seconds from one request of a client to its next")
    parser.add_argument("--history", type=int, default=50, help="finished rankings in the store (lists read 50)")
    parser.add_argument("--streams", type=int, default=0, help="SSE streams following a job")
    parser.add_argument("--follow", choices=("running", "queued"), default="running", help="the job the streams follow")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not (1 <= args.clients <= 200 and 1 <= args.seconds <= 300 and 0 <= args.streams <= 1000 and args.interval >= 0):
        parser.error("bounded: 1-200 clients, 1-300 seconds, 0-1000 streams, an interval >= 0")
    out_dir = args.out or default_out_dir()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="load-status-") as folder:
        tmp = Path(folder)
        small = write_images(tmp / "data" / "small", per_class=4)
        # Long enough to keep running through the measurement: one progress event (0.2 s) per image.
        large = write_images(tmp / "data" / "large", per_class=int(10 * args.seconds) + 50)
        with server(tmp, tmp / "data") as (url, database, pid):
            first = submit(url, small, batch_size=8)
            finished = wait_for(url, first, ("succeeded", "failed"))
            if finished["state"] != "succeeded":
                raise RuntimeError(f"the seed ranking failed: {finished['error']}")
            copy_finished(database, first, max(0, args.history - 1))
            running = submit(url, large, batch_size=1)
            wait_for(url, running, ("running",))
            # One worker, busy with the running job: this one stays queued.
            followed = submit(url, small, batch_size=8, seed=1) if args.follow == "queued" else running
            server_cpu, client_cpu = cpu_seconds(pid), time.process_time()
            result = asyncio.run(
                load(url, running, args.clients, args.seconds, args.interval, args.streams, followed)
            )
            server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, time.process_time() - client_cpu
            state_after = httpx.get(f"{url}/v1/rankings/{running}", timeout=30).json()["state"]
            httpx.delete(f"{url}/v1/rankings/{running}", timeout=30)
    report = {
        "clients": args.clients,
        "seconds": args.seconds,
        "interval": args.interval,
        "history": args.history,
        "streams": args.streams,
        "streams_follow": args.follow,
        "job_state_after": state_after,
        **result,
        # CPU the web process and this client spent during the measurement, and per answered request: the cost of a
        # request whatever else the machine was running.
        "cpu_seconds": {"server": round(server_cpu, 2), "client": round(client_cpu, 2)},
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, result["requests"]), 2),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    queued = "-queued" if args.follow == "queued" else ""
    path = out_dir / f"load_status-c{args.clients}-i{args.interval:g}-h{args.history}-s{args.streams}{queued}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print("\n| what | n | p50 ms | p90 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|")
    for name, row in report["latency"].items():
        print(f"| {name} | {row['n']} | {row['p50_ms']} | {row['p90_ms']} | {row['p99_ms']} | {row['max_ms']} |")
    print(
        f"\nerrors: {report['errors']} of {report['requests']}; {report['throughput_rps']} requests/s; server CPU "
        f"{report['server_cpu_ms_per_request']} ms/request; written to {path}"
    )


if __name__ == "__main__":
    main()
