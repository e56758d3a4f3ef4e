"""Server memory while it takes a large dataset upload (``POST /v1/datasets``): the body is streamed to disk, then
extracted and every image's header checked, so the web process's memory should not grow with the archive.

A zip of PNGs (noise, 256x256, a few distinct ones repeated under other names: the checks read each file
anyway) of about ``--size-mb`` is generated on disk; the app runs under uvicorn in a subprocess on 127.0.0.1 with
its cache in a temporary folder; the Python client uploads the file (streamed). The server's resident set size is
sampled from ``/proc/<pid>/status`` (``VmRSS`` every 20 ms, and ``VmHWM``, the peak) after a small warm-up upload
(imports, first-use allocations) and during the big one. Linux only.

Usage: python benchmarks/memory_upload.py [--size-mb 1024] [--image-size 256] [--quick]
Writes <cache dir>/benchmarks/memory_upload-<size>mb-<side>px.json (``--out DIR`` elsewhere;
``--out benchmarks/results`` records the run) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from _results_dir import default_out_dir
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.client import Client  # noqa: E402

_CLASSES = ("cat", "dog", "fox", "owl")
_DISTINCT = 8


def write_archive(path: Path, size_bytes: int, image_size: int = 256) -> int:
    """A stored (uncompressed) zip of PNGs in one folder per class, about ``size_bytes``; returns its image count."""
    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(_DISTINCT):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)).save(buffer, "PNG")
        pngs.append(buffer.getvalue())
    count = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        while path.stat().st_size < size_bytes:
            cls = _CLASSES[count % len(_CLASSES)]
            archive.writestr(f"{cls}/{count:06d}.png", pngs[count % _DISTINCT])
            count += 1
    return count


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RssSampler:
    """The largest ``VmRSS`` of a process seen while running (a thread samples it every ``every`` seconds)."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        self.pid, self.every, self.peak_kib = pid, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _status_kib(self.pid, "VmRSS"))
            time.sleep(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="archive size in MiB (default 1024)")
    parser.add_argument(
        "--image-size", type=int, default=256, help="image side in pixels (smaller: more files for the same size)"
    )
    parser.add_argument("--quick", action="store_true", help="a 50 MiB archive: a smoke run")
    parser.add_argument(
        "--out", type=Path, default=default_out_dir(),
        help="results folder (default: <cache dir>/benchmarks; --out benchmarks/results records the run)",
    )  # fmt: skip
    args = parser.parse_args()
    size_mb = 50 if args.quick else args.size_mb
    with tempfile.TemporaryDirectory(prefix="memory-upload-") as tmp:
        work = Path(tmp)
        archive = work / "big.zip"
        started = time.perf_counter()
        n_images = write_archive(archive, size_mb << 20, args.image_size)
        made = time.perf_counter() - started
        print(f"archive: {archive.stat().st_size / 2**20:.0f} MiB, {n_images} images ({made:.0f} s to write)")
        warmup = work / "warmup.zip"
        write_archive(warmup, 1 << 20)

        port = _free_port()
        env = {
            **os.environ,
            "BACKBONE_RANK_CACHE_DIR": str(work / "cache"),
            "BACKBONE_RANK_MAX_UPLOAD_BYTES": str(2 * archive.stat().st_size),
            "BACKBONE_RANK_MAX_UPLOAD_EXTRACTED_BYTES": str(4 * archive.stat().st_size),
            "HF_HUB_OFFLINE": "1",
        }
        command = [sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app", "--host", "127.0.0.1"]
        server = subprocess.Popen([*command, "--port", str(port), "--log-level", "warning"], env=env, cwd=REPO)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            with Client(url, timeout=60) as client:
                client.upload_dataset(warmup)
                baseline = _status_kib(server.pid, "VmRSS")
                hwm_before = _status_kib(server.pid, "VmHWM")
                with RssSampler(server.pid) as sampler:
                    began = time.perf_counter()
                    summary = client.upload_dataset(archive, timeout=3600)
                    seconds = time.perf_counter() - began
                hwm_after = _status_kib(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait(timeout=60)
    # VmHWM is the process's lifetime peak: it counts for this upload only if it rose during it
    peak = max(sampler.peak_kib, hwm_after) if hwm_after > hwm_before else sampler.peak_kib
    result = {
        "archive_mib": size_mb,
        "archive_bytes": summary["archive_bytes"],
        "n_images": summary["n_images"],
        "image_size": args.image_size,
        "upload_seconds": round(seconds, 1),
        "server_rss_baseline_mib": round(baseline / 1024, 1),
        "server_rss_peak_mib": round(peak / 1024, 1),
        "server_rss_growth_mib": round((peak - baseline) / 1024, 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"memory_upload-{size_mb}mb-{args.image_size}px.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| archive | images | upload s | server RSS before | peak | growth |\n|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {summary['archive_bytes'] / 2**20:.0f} MiB | {summary['n_images']} | {seconds:.1f} | "
        f"{baseline / 1024:.0f} MiB | {peak / 1024:.0f} MiB | **{(peak - baseline) / 1024:.1f} MiB** |"
    )
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
