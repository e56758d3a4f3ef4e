"""Peak memory and time of streamed statistics: N = 1,000,000 samples, D = 2048, fed in batches.

The batches are generated on the fly (ReLU-like float32 features with a class structure and
source-head probabilities), added to a :class:`estimators.StreamingStatistics` and dropped;
then the moment-based estimators are scored. Peak memory is reported two ways: the largest
traced allocation (tracemalloc, numpy buffers included) and the process's peak resident set
size (``resource.getrusage(...).ru_maxrss``: interpreter, libraries and BLAS buffers included).
One BLAS thread.

Usage: python benchmarks/memory_streaming.py [--n 1000000 --d 2048 --c 100 --batch-size 4096] [--quick]
Writes <cache dir>/benchmarks/memory_streaming.json (``--out DIR``
elsewhere; ``--out benchmarks/results`` records the run) and prints a markdown table.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _results_dir import default_out_dir  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from estimators import SamplesRequiredError, StreamingStatistics, score  # noqa: E402

_logger = logging.getLogger("memory_streaming")

#: Moment-based estimators (with class_scatter=False: GBC without PCA; TransRate needs C·D² floats).
SCORED = (("logme", {}), ("h_score", {}), ("shrinkage_h_score", {}), ("gbc", {"pca_dim": None}), ("nce", {}))


def batches(n: int, d: int, c: int, n_source: int, batch_size: int, seed: int = 0) -> Iterator[tuple[np.ndarray, ...]]:
    """ReLU-like float32 features, labels and source softmax outputs, ``batch_size`` rows at a time."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d), dtype=np.float32)
    head = rng.standard_normal((c, n_source), dtype=np.float32)
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        labels = rng.integers(0, c, rows)
        features = rng.standard_normal((rows, d), dtype=np.float32)
        features += 0.7 * centers[labels]
        np.maximum(features, 0.0, out=features)
        logits = head[labels] + rng.standard_normal((rows, n_source), dtype=np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits, dtype=np.float64)
        probs /= probs.sum(axis=1, keepdims=True)
        yield features, labels, probs


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--c", type=int, default=100)
    parser.add_argument("--source-classes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--quick", action="store_true", help="N=20,000, D=256: a smoke run")
    parser.add_argument(
        "--out", type=Path, default=default_out_dir(),
        help="results folder (default: <cache dir>/benchmarks; --out benchmarks/results records the run)",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.n, args.d = 20_000, 256
    rss_before = _maxrss_mib()
    with threadpool_limits(limits=1):
        tracemalloc.start()
        began = time.perf_counter()
        stream = StreamingStatistics(n_classes=args.c)
        for i, batch in enumerate(batches(args.n, args.d, args.c, args.source_classes, args.batch_size)):
            stream.update(*batch)
            if i % 50 == 0:
                _logger.info("%d / %d rows, %.0f s", stream.n_samples, args.n, time.perf_counter() - began)
        accumulated = time.perf_counter()
        stats = stream.finalize()
        scores: dict[str, float | None] = {}
        for name, params in SCORED:
            try:
                scores[name] = score(name, stats=stats, **params)
            except SamplesRequiredError:
                scores[name] = None
        finished = time.perf_counter()
        traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    result = {
        "benchmark": "memory_streaming",
        "n": args.n, "d": args.d, "c": args.c, "source_classes": args.source_classes, "batch_size": args.batch_size,
        "blas_threads": 1, "machine": platform.machine(), "numpy": np.__version__,
        "seconds_accumulate": accumulated - began,
        "seconds_finalize_and_score": finished - accumulated,
        "seconds_total": finished - began,
        "peak_traced_mib": traced_peak,
        "peak_rss_mib": _maxrss_mib(),
        "rss_before_mib": rss_before,
        "in_memory_float32_features_mib": args.n * args.d * 4 / 2**20,
        "in_memory_float64_features_mib": args.n * args.d * 8 / 2**20,
        "scores": scores,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    name = "memory_streaming.json" if not args.quick else "memory_streaming-quick.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"N={args.n:,}, D={args.d}, C={args.c}, batches of {args.batch_size}, 1 BLAS thread\n")
    print("| what | value |")
    print("|---|---:|")
    print(f"| accumulate (generate + update) | {result['seconds_accumulate']:.0f} s |")
    print(f"| finalize + score {len(SCORED)} estimators | {result['seconds_finalize_and_score']:.1f} s |")
    print(f"| peak traced allocation (tracemalloc) | {traced_peak:.0f} MiB |")
    print(f"| peak RSS of the process (ru_maxrss) | {result['peak_rss_mib']:.0f} MiB |")
    print(f"| the float32 features, if held | {result['in_memory_float32_features_mib']:,.0f} MiB |")
    print("\nscores: " + ", ".join(f"{k}={v:.6g}" if v is not None else f"{k}=n/a" for k, v in scores.items()))
    print(f"written to {args.out / name}")


if __name__ == "__main__":
    main()
