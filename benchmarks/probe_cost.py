"""What the two linear probes cost on the default benchmark's real features: ``ridge_probe`` / ``linear_probe``.

The features are the ones ``backbone-rank benchmark --suite default`` ranks (the built-in targets, images per
class as given, the default suite's backbones at its input sizes); both probes score every (target, backbone)
pair in the same process, alternating which goes first, on one BLAS thread by default (as ``rank`` scores
matrices this small, :mod:`service.pipeline.ranking.threads`) or on the BLAS library's own thread count
(``--blas-threads 0``: how ``rank`` scored them before, where the logistic probe's many small L-BFGS steps
lose most). The ratio of the totals is the figure: it is measured in one run, so the machine's speed cancels.
How well each ranks is the benchmark's job (its ``weighted_tau`` summary), not this script's.

Usage: python benchmarks/probe_cost.py [--per-class 20] [--target NAME ...] [--repeats 1] [--blas-threads 1]
Writes <cache dir>/benchmarks/probe_cost-<per-class>-per-class-<threads>t-<fingerprint>.json (``--out DIR``
elsewhere; ``--out benchmarks/results`` records the run) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results_dir import default_out_dir
from threadpoolctl import threadpool_info, threadpool_limits

from estimators import Statistics, linear_probe, ridge_probe

PROBES = {"linear_probe": linear_probe, "ridge_probe": ridge_probe}


def _features(per_class: int, targets: list[str] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The default suite's features, one (target, backbone) pair at a time, and the run's environment."""
    from service import bootstrap
    from service.config import get_settings
    from service.pipeline.benchmark.benchmark import load_suite_backbones
    from service.pipeline.benchmark.results import environment_info
    from service.pipeline.benchmark.suites import get_suite
    from service.pipeline.data.datasets import load_dataset
    from service.pipeline.features.extract import extract_features
    from service.pipeline.plugins import prepare_backbones

    bootstrap.start(get_settings())
    suite = get_suite("default")
    prepare_backbones([b.id for b in suite.backbones])
    loaded = [backbone for _, backbone in load_suite_backbones(suite, (), None)[0]]
    pairs = []
    chosen = [t for t in suite.targets if targets is None or t.name in targets]
    for target in chosen:
        dataset = load_dataset(target.dataset, max_per_class=per_class)
        for backbone, feature_set in zip(loaded, extract_features(dataset, loaded, device="cpu"), strict=True):
            assert feature_set.features is not None
            pairs.append(
                {
                    "target": target.name,
                    "backbone": backbone.spec.id,
                    "features": np.asarray(feature_set.features, dtype=np.float64),
                    "labels": feature_set.labels,
                }
            )
    return environment_info("cpu"), pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=20, help="images per class ranked (the suite's 20, or 10)")
    parser.add_argument("--target", action="append", help="only these built-in targets (repeatable)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many timings per probe and pair")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads for the probes (0: the library's)")
    parser.add_argument("--out", type=Path, default=default_out_dir())
    args = parser.parse_args()
    env, pairs = _features(args.per_class, args.target)
    rows = []
    threads = args.blas_threads or max(int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas")
    with threadpool_limits(threads, user_api="blas"):
        for i, pair in enumerate(pairs):
            stats = Statistics(pair["features"], pair["labels"])
            order = list(PROBES) if i % 2 == 0 else list(reversed(PROBES))
            row: dict[str, Any] = {
                "target": pair["target"],
                "backbone": pair["backbone"],
                "shape": [int(v) for v in (*pair["features"].shape, stats.n_classes)],
            }
            for name in order:
                best = float("inf")
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    value = PROBES[name](stats=stats)
                    best = min(best, time.perf_counter() - start)
                row[name] = {"value": value, "seconds": best}
            rows.append(row)
    totals = {name: float(sum(r[name]["seconds"] for r in rows)) for name in PROBES}
    result = {
        "kind": "probe_cost",
        "per_class": args.per_class,
        "environment": env,
        "blas_threads": threads,
        "n_pairs": len(rows),
        "seconds": totals,
        "ratio": totals["ridge_probe"] / totals["linear_probe"],
        "pairs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"probe_cost-{args.per_class}-per-class-{threads}t-{env['fingerprint']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print("| pairs | BLAS threads | linear_probe s | ridge_probe s | ratio |\n|---|---|---|---|---|")
    seconds = f"{totals['linear_probe']:.1f} | {totals['ridge_probe']:.1f}"
    print(f"| {len(rows)} | {threads} | {seconds} | {result['ratio']:.3f} |")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
