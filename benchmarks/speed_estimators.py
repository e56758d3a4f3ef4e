"""Speed and peak memory of the estimators, as ratios to a floor measured in the same run.

Floor: convert F to float64, form FᵀF and ``numpy.linalg.eigh`` it — the least any exact
eigendecomposition-based score must do. Everything runs on one BLAS thread (the numbers are
then comparable across machines with different core counts).

``--backend torch`` runs the estimators on the torch backend (float64, ``--device``, CPU by
default; one torch thread); ``--backend both`` measures numpy and torch in the same
interleaved rounds and adds a torch / numpy column. The floor is always numpy.

Usage: python benchmarks/speed_estimators.py [--n 20000 --d 2048 --c 100] [--backend numpy|torch|both] [--quick]
Writes <cache dir>/benchmarks/speed_estimators-<fingerprint>.json (``--out DIR``
elsewhere; ``--out benchmarks/results`` records the run) and prints a markdown table.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _results_dir import default_out_dir  # noqa: E402
from _synthetic import SUITE, make_features  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from estimators import Statistics, score, use_backend  # noqa: E402


def measure(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best wall time over ``repeats`` and the peak traced allocation (MiB) of one run."""
    best = float("inf")
    peak = 0.0
    for _ in range(repeats):
        gc.collect()
        tracemalloc.start()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    return best, peak


def floor(features: np.ndarray) -> None:
    f64 = features.astype(np.float64)
    np.linalg.eigh(f64.T @ f64)


def thuml_default_logme(features: np.ndarray, labels: np.ndarray) -> float:
    """The algorithm of thuml/LogME's default ``_fit_fixed_point`` (N > D), as a speed reference.

    Written from its description: SVD of FᵀF, then U = F V / s (an extra N x D x D product),
    then per class the fixed-point iteration. Only its cost matters here.
    """
    f = features.astype(np.float64)
    n, d = f.shape
    _, s, vh = np.linalg.svd(f.T @ f)
    s = np.sqrt(s)
    k = int(np.sum(s > 1e-10))
    u = (f @ vh.T)[:, :k] / s[:k]
    sigma = s[:k] ** 2
    evidences = []
    for c in range(int(labels.max()) + 1):
        y = (labels == c).astype(np.float64)
        x2 = (u.T @ y) ** 2
        res_x2 = y @ y - x2.sum()
        alpha = beta = 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = np.sum(sigma / (sigma + t))
            m2 = np.sum(sigma * x2 / (t + sigma) ** 2)
            res2 = np.sum(x2 / (1 + sigma / t) ** 2) + res_x2
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        evidences.append(
            (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
             - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)) / n
        )
    return float(np.mean(evidences))


def fingerprint() -> str:
    blas = next((i for i in threadpool_info() if i["user_api"] == "blas"), {})
    cpu = platform.processor() or platform.machine()
    return f"np{np.__version__.replace('.', '')}-{blas.get('internal_api', 'blas')}-{cpu}".replace(" ", "_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--c", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="N=4000, D=512, C=20, one repeat")
    parser.add_argument("--backend", choices=("numpy", "torch", "both"), default="numpy")
    parser.add_argument("--device", default="cpu", help="torch device for --backend torch/both")
    parser.add_argument("--suite-only", action="store_true", help="time only the floor and the shared-Statistics suite")
    parser.add_argument(
        "--out", type=Path, default=default_out_dir(),
        help="results folder (default: <cache dir>/benchmarks; --out benchmarks/results records the run)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.n, args.d, args.c, args.repeats = 4000, 512, 20, 1
    features, labels = make_features(args.n, args.d, args.c)
    backends = ["numpy", "torch"] if args.backend == "both" else [args.backend]
    if "torch" in backends:
        import torch

        torch.set_num_threads(1)

    def on(backend: str, task: Callable[[], object]) -> Callable[[], object]:
        device = args.device if backend == "torch" else None
        return lambda: _run_on(backend, device, task)

    def suite() -> None:
        stats = Statistics(features, labels)
        for name in SUITE:
            score(name, stats=stats)

    tasks: dict[str, Callable[[], object]] = {"floor (FᵀF + eigh)": lambda: floor(features)}
    for backend in backends:
        tag = "" if backends == ["numpy"] else f" [{backend}]"
        if not args.suite_only:
            tasks.update({name + tag: on(backend, lambda name=name: score(name, features, labels)) for name in SUITE})
        tasks["suite of 8, one shared Statistics" + tag] = on(backend, suite)
    rows: dict[str, dict[str, float]] = {}
    with threadpool_limits(limits=1):
        # Rounds interleave all tasks, so slow phases of a shared machine hit every row alike.
        for _ in range(args.repeats):
            for name, task in tasks.items():
                seconds, peak = measure(task, 1)
                row = rows.setdefault(name, {"seconds": float("inf"), "peak_mib": 0.0})
                row["seconds"] = min(row["seconds"], seconds)
                row["peak_mib"] = max(row["peak_mib"], peak)
        if not args.suite_only:
            seconds, peak = measure(lambda: thuml_default_logme(features, labels), 1)
            rows["thuml/LogME default algorithm (reference)"] = {"seconds": seconds, "peak_mib": peak}
    floor_s = rows["floor (FᵀF + eigh)"]["seconds"]
    for row in rows.values():
        row["x_floor"] = row["seconds"] / floor_s
    result = {
        "benchmark": "speed_estimators",
        "n": args.n, "d": args.d, "c": args.c, "repeats": args.repeats,
        "blas_threads": 1, "fingerprint": fingerprint(), "input_mib": features.nbytes / 2**20,
        "backends": backends, "device": args.device if "torch" in backends else "cpu",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if backends == ["numpy"] else f"-{args.backend}-{args.device.replace(':', '')}"
    suffix += "-suite" if args.suite_only else ""
    path = args.out / f"speed_estimators-n{args.n}-d{args.d}-c{args.c}-{result['fingerprint']}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"N={args.n}, D={args.d}, C={args.c}, float32 input ({result['input_mib']:.0f} MiB), 1 BLAS thread\n")
    print("| what | seconds | x floor | peak traced MiB |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {row['seconds']:.2f} | {row['x_floor']:.2f} | {row['peak_mib']:.0f} |")
    if args.backend == "both":
        print("\n| what | numpy s | torch s | torch / numpy |")
        print("|---|---:|---:|---:|")
        for name in [*([] if args.suite_only else SUITE), "suite of 8, one shared Statistics"]:
            a, b = rows[f"{name} [numpy]"]["seconds"], rows[f"{name} [torch]"]["seconds"]
            print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    print(f"\nwritten to {path}")


def _run_on(backend: str, device: str | None, task: Callable[[], object]) -> object:
    with use_backend(backend, device):
        return task()


if __name__ == "__main__":
    main()
