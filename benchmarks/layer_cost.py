"""What scoring every layer costs next to scoring the last one: ``rank --layer-scores`` against ``rank``.

On the default benchmark's targets and backbones (the built-in targets, images per class as given), each target's
images go through every backbone twice in one process: once as ``rank`` extracts them (the pooled pre-logits and
the source head) and once with every stage kept from the same pass (``stages=True``), in alternating order so a
drift of the machine's speed does not favour one. No feature cache. Per (target, backbone) pair it times

- ``last``: :data:`~service.pipeline.ranking.layers.LAYER_ESTIMATORS` on the pre-logits (what one layer costs to
  score),
- ``layers``: the layer report, the same estimators on every stage and the pre-logits
  (:func:`~service.pipeline.ranking.layers.layer_report`),
- ``default``: the default estimator set on the pre-logits (what ``rank`` computes anyway).

Two ratios, each of totals measured in the same run: **layer scores** = (extraction with stages + ``layers``) /
(extraction + ``last``), the cost of scoring every layer against scoring the last one; **whole ranking** =
(extraction with stages + ``default`` + ``layers``) / (extraction + ``default``), what ``--layer-scores`` adds to a
ranking.

Usage: python benchmarks/layer_cost.py [--per-class 20] [--target NAME ...]
Writes <cache dir>/benchmarks/layer_cost-<per-class>-per-class-<fingerprint>.json (``--out DIR`` elsewhere;
``--out benchmarks/results`` records the run) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _results_dir import default_out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=20, help="images per class (the suite's 20, or 10)")
    parser.add_argument("--target", action="append", help="only these built-in targets (repeatable)")
    parser.add_argument("--out", type=Path, default=default_out_dir())
    args = parser.parse_args()

    from service import bootstrap
    from service.config import get_settings
    from service.pipeline.benchmark.benchmark import load_suite_backbones
    from service.pipeline.benchmark.results import environment_info
    from service.pipeline.benchmark.suites import get_suite
    from service.pipeline.data.datasets import load_dataset
    from service.pipeline.features.extract import extract_features
    from service.pipeline.plugins import prepare_backbones
    from service.pipeline.ranking.layers import layer_report, score_layer
    from service.pipeline.ranking.rank import rank_feature_sets

    bootstrap.start(get_settings())
    suite = get_suite("default")
    prepare_backbones([b.id for b in suite.backbones])
    loaded = [backbone for _, backbone in load_suite_backbones(suite, (), None)[0]]
    env = environment_info("cpu")
    rows: list[dict[str, Any]] = []
    targets = [t for t in suite.targets if args.target is None or t.name in args.target]
    # Warm-up: the first forward pass of a model (weights to channels_last, oneDNN's kernel choice) is slower.
    warmup = load_dataset(targets[0].dataset, max_per_class=2)
    for stages in (False, True):
        extract_features(warmup, loaded, device="cpu", stages=stages)
    for i, target in enumerate(targets):
        dataset = load_dataset(target.dataset, max_per_class=args.per_class)
        runs = {}
        for stages in (False, True) if i % 2 == 0 else (True, False):
            start = time.perf_counter()
            runs[stages] = (extract_features(dataset, loaded, device="cpu", stages=stages), time.perf_counter() - start)
        (plain, plain_seconds), (staged, staged_seconds) = runs[False], runs[True]
        start = time.perf_counter()
        ranked = rank_feature_sets(dataset, plain)
        default_seconds = time.perf_counter() - start
        per_backbone_default = {row["id"]: row["seconds"]["score"] for row in ranked["backbones"]}
        for backbone, last_set, all_set in zip(loaded, plain, staged, strict=True):
            start = time.perf_counter()
            score_layer(last_set.features, last_set.labels)
            last_seconds = time.perf_counter() - start
            start = time.perf_counter()
            report = layer_report(all_set)
            layers_seconds = time.perf_counter() - start
            rows.append(
                {
                    "target": target.name,
                    "backbone": backbone.spec.id,
                    "n_images": int(last_set.labels.shape[0]),
                    "n_stages": report["n_stages"] if report else 0,
                    "extract_seconds": last_set.seconds,
                    "extract_with_stages_seconds": all_set.seconds,
                    "last_seconds": last_seconds,
                    "layers_seconds": layers_seconds,
                    "default_seconds": per_backbone_default[backbone.spec.id],
                    "best_layer": report["best_layer"] if report else None,
                    "freeze_stages": report["freeze_stages"] if report else None,
                }
            )
        print(
            f"{target.name}: extraction {plain_seconds:.1f} s, with stages {staged_seconds:.1f} s; "
            f"default scoring {default_seconds:.1f} s",
            flush=True,
        )
    totals = {
        key: float(sum(row[key] for row in rows))
        for key in (
            "extract_seconds",
            "extract_with_stages_seconds",
            "last_seconds",
            "layers_seconds",
            "default_seconds",
        )
    }
    layer_ratio = (totals["extract_with_stages_seconds"] + totals["layers_seconds"]) / (
        totals["extract_seconds"] + totals["last_seconds"]
    )
    ranking_ratio = (totals["extract_with_stages_seconds"] + totals["default_seconds"] + totals["layers_seconds"]) / (
        totals["extract_seconds"] + totals["default_seconds"]
    )
    result = {
        "kind": "layer_cost",
        "per_class": args.per_class,
        "environment": env,
        "n_pairs": len(rows),
        "seconds": totals,
        "layer_scores_ratio": layer_ratio,
        "whole_ranking_ratio": ranking_ratio,
        "pairs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"layer_cost-{args.per_class}-per-class-{env['fingerprint']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(
        "| pairs | extract s | with stages s | last layer s | every layer s | default set s | layer-scores ratio "
        "| whole-ranking ratio |\n|---|---|---|---|---|---|---|---|"
    )
    print(
        f"| {len(rows)} | {totals['extract_seconds']:.1f} | {totals['extract_with_stages_seconds']:.1f} | "
        f"{totals['last_seconds']:.1f} | {totals['layers_seconds']:.1f} | {totals['default_seconds']:.1f} | "
        f"{layer_ratio:.2f} | {ranking_ratio:.2f} |"
    )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
