"""Scale-out: wall time of one ranking with its features extracted locally and on Ray (1 and 2 actors).

The same folder of photo-like JPEGs is ranked by the engine (``service.pipeline.engine.rank``, cache off) four ways:
locally with 1 and with 2 torch threads, and with the executor ``ray`` on 1 actor and on 2 actors of 1 CPU each
(service/pipeline/scaleout/), so each Ray run has a local run with as many cores beside it. Ray runs on a local
cluster bound to 127.0.0.1, started once before them (its start time is reported apart: with an empty
``BACKBONE_RANK_RAY_ADDRESS`` every ranking pays it); every Ray ranking pays its actors' start (a process each,
torch and timm imported, the backbones loaded) and the transfer of the features to the driver. The rankings must be
the same: the largest relative score difference to the first local run is reported.

Usage: python benchmarks/speed_scaleout.py [--images 400] [--batch-size 32] [--models random:resnet10t ...]
Writes <cache dir>/benchmarks/speed_scaleout-<images>-images-<fingerprint>.json (``--out DIR`` elsewhere) and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: loopback only

from _results_dir import default_out_dir  # noqa: E402
from speed_extraction import write_images  # noqa: E402

from service.bootstrap import cli_runtime, start  # noqa: E402
from service.config import Settings  # noqa: E402
from service.contract import RankingRequest, RankingResult  # noqa: E402
from service.pipeline.benchmark.results import environment_info  # noqa: E402
from service.pipeline.engine import rank  # noqa: E402

ESTIMATORS = ["logme", "h_score", "nce", "ridge_probe"]


def _max_relative_difference(got: RankingResult, reference: RankingResult) -> float:
    expected = {row.id: row.scores for row in reference.backbones}
    worst = 0.0
    for row in got.backbones:
        for name, value in row.scores.items():
            other = expected[row.id][name]
            if value is not None and other is not None:
                worst = max(worst, abs(value - other) / max(abs(other), 1e-300))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=["random:resnet10t", "random:mobilenetv3_small_100"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        write_images(folder, args.images, size=160)
        began = time.perf_counter()
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False
        )
        cluster_start = time.perf_counter() - began
        request = {
            "dataset": {"kind": "folder", "path": str(folder)},
            "backbones": args.models,
            "estimators": ESTIMATORS,
            "cache": False,
            "device": "cpu",
            "batch_size": args.batch_size,
        }
        modes = [
            ("local, 1 thread", "local", {"num_threads": 1}),
            ("ray, 1 actor x 1 CPU", "ray", {"ray_actors": 1}),
            ("local, 2 threads", "local", {"num_threads": 2}),
            ("ray, 2 actors x 1 CPU", "ray", {"ray_actors": 2}),
        ]
        rows, reference = [], None
        for name, executor, extra in modes:
            settings = Settings(cache_dir=Path(tmp) / "cache", ray_cpus_per_actor=1, **extra)
            start(settings)
            began = time.perf_counter()
            result = rank(RankingRequest(**request, executor=executor), cli_runtime(settings))
            seconds = time.perf_counter() - began
            reference = reference or result
            executor_info = (result.environment.executor if result.environment else None) or {}
            rows.append(
                {
                    "mode": name,
                    "seconds": seconds,
                    "extract_seconds": sum(row.seconds.extract for row in result.backbones),
                    "shards": executor_info.get("shards"),
                    "max_relative_score_difference": _max_relative_difference(result, reference),
                }
            )
            print(f"{name}: {seconds:.1f} s", flush=True)
        ray.shutdown()
    device = environment_info("cpu")
    document = {
        "images": args.images,
        "batch_size": args.batch_size,
        "models": args.models,
        "estimators": ESTIMATORS,
        "ray_cluster_start_seconds": cluster_start,
        "runs": rows,
        "environment": device,
        "load_average": os.getloadavg(),
    }
    out = args.out or default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"speed_scaleout-{args.images}-images-{device['fingerprint']}.json"
    path.write_text(json.dumps(document, indent=2))
    print(f"\n{args.images} images, batch {args.batch_size}, {', '.join(args.models)}; Ray cluster start "
          f"{cluster_start:.1f} s (not in the rows); load average {os.getloadavg()[0]:.1f}\n")
    print("| mode | wall s | forward s (summed) | shards | max rel. score diff |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['mode']} | {row['seconds']:.1f} | {row['extract_seconds']:.1f} | {row['shards'] or '-'} | "
              f"{row['max_relative_score_difference']:.1e} |")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
