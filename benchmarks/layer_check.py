"""Is the advised freezing depth right? Fine-tune at every depth and compare with what the layer scores advise.

For each (target, backbone) asked for: the layer advice on the target's training split, as ``finetune
--strategy advised`` computes it (:mod:`service.pipeline.ranking.layers`; the default suite's input size for the
backbone), then ``partial`` fine-tunes with ``freeze_stages`` = the advised depth and its two neighbours
(``--all-depths``: 0, everything trains, .. n, every stage frozen), and the ``linear`` strategy (a new head on
frozen features), each with the default benchmark's protocol (its epochs, learning-rate grid, batch size, images
per class; ``--seeds`` seeds). The table says, per pair, the accuracy at each depth, the advised depth, and
whether the advice is the best of the depths tried or within one point of it.

Usage: python benchmarks/layer_check.py [--pair TARGET=BACKBONE ...] [--seeds 2]
Writes <cache dir>/benchmarks/layer_check-<fingerprint>.json (``--out DIR`` elsewhere) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _results_dir import default_out_dir

DEFAULT_PAIRS = (
    "glyphs-greek=zoo:latin-resnet10t",
    "natural-patches=zoo:latin-resnet10t",
    "textures-fine=zoo:textures-resnet10t",
    "digits=zoo:shapes-resnet10t",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", action="append", help="TARGET=BACKBONE of the default suite (repeatable)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per fine-tune (the suite uses 3)")
    parser.add_argument(
        "--all-depths", action="store_true", help="every depth 0..n, not only the advised one and its neighbours"
    )
    parser.add_argument("--out", type=Path, default=default_out_dir())
    args = parser.parse_args()

    from service import bootstrap
    from service.config import get_settings
    from service.pipeline.benchmark.results import environment_info
    from service.pipeline.benchmark.suites import get_suite
    from service.pipeline.finetune.finetune import finetune
    from service.pipeline.plugins import prepare_backbones

    bootstrap.start(get_settings())
    suite = get_suite("default")
    spec = suite.finetune
    targets = {t.name: t for t in suite.targets}
    backbones = {b.id: b for b in suite.backbones}
    pairs = [p.split("=", 1) for p in args.pair or DEFAULT_PAIRS]
    prepare_backbones(sorted({backbone for _, backbone in pairs}))
    rows = []
    for target_name, backbone_id in pairs:
        target, suite_backbone = targets[target_name], backbones[backbone_id]
        common: dict[str, Any] = {
            "epochs": spec.epochs,
            "lr_grid": spec.lr_grid,
            "seeds": tuple(range(args.seeds)),
            "batch_size": spec.batch_size,
            "max_per_class": spec.max_per_class,
            "input_size": suite_backbone.input_size,
            "device": "cpu",
        }
        started = time.perf_counter()
        # one epoch of the advised run gives the advice (and is discarded): the same code path as the product's
        advised_run = finetune(
            target.dataset, backbone_id, strategy="advised", **{**common, "epochs": 1, "seeds": (0,)}
        )
        advice, transfer = advised_run["advice"]["layers"], advised_run["advice"]["transfer"]
        by_depth: dict[str, float] = {}
        advised = advice["freeze_stages"]
        depths = range(advice["n_stages"] + 1) if args.all_depths else (advised - 1, advised, advised + 1)
        for depth in [d for d in depths if 0 <= d <= advice["n_stages"]]:
            result = finetune(target.dataset, backbone_id, strategy="partial", freeze_stages=depth, **common)
            by_depth[str(depth)] = result["test_accuracy"]["mean"]
            print(f"{target_name} {backbone_id} freeze {depth}: {by_depth[str(depth)]:.3f}", flush=True)
        linear = finetune(target.dataset, backbone_id, strategy="linear", **{**common, "epochs": None, "lr_grid": None})
        best_depth = max(by_depth, key=lambda d: by_depth[d])
        # what the transfer advice would run: linear, partial at its depth, or full (depth 0)
        runs = {
            "as_classifier": linear["test_accuracy"]["mean"],
            "linear": linear["test_accuracy"]["mean"],
            "partial": by_depth.get(str(transfer["freeze_stages"])),
            "full": by_depth.get("0"),
        }
        strategies = {"linear": linear["test_accuracy"]["mean"], **{f"freeze {d}": a for d, a in by_depth.items()}}
        best_strategy = max(strategies, key=lambda k: strategies[k])
        neighbours = {d: by_depth[str(d)] for d in (advised - 1, advised, advised + 1) if str(d) in by_depth}
        rows.append(
            {
                "target": target_name,
                "backbone": backbone_id,
                "layers": [
                    {"module": layer["module"], "ridge_probe": layer["scores"]["ridge_probe"]}
                    for layer in advice["layers"]
                ],
                "advised_freeze_stages": advised,
                "advice": advice["advice"],
                "accuracy_by_freeze_stages": by_depth,
                "linear_accuracy": linear["test_accuracy"]["mean"],
                "best_freeze_stages": int(best_depth),
                "advised_regret": by_depth[best_depth] - by_depth[str(advised)],
                "advised_within_1_point_of_best": by_depth[best_depth] - by_depth[str(advised)] <= 0.01,
                "advised_vs_neighbours": neighbours,
                "transfer_advice": transfer["advice"],
                "transfer_strategy": transfer["strategy"],
                "transfer_accuracy": runs[transfer["strategy"]],
                "best_strategy": best_strategy,
                "transfer_regret": None
                if runs[transfer["strategy"]] is None
                else strategies[best_strategy] - runs[transfer["strategy"]],
                "seconds": time.perf_counter() - started,
            }
        )
    env = environment_info("cpu")
    result = {"kind": "layer_check", "seeds": args.seeds, "environment": env, "pairs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"layer_check-{env['fingerprint']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(
        "| target | backbone | ridge LOO by layer | advised depth | accuracy by frozen stages (0 = full) | linear "
        "| transfer advice | its regret |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        layers = " · ".join(f"{x['module']} {x['ridge_probe']:.2f}" for x in row["layers"])
        depths = " · ".join(
            f"**{d}: {a:.3f}**" if int(d) == row["advised_freeze_stages"] else f"{d}: {a:.3f}"
            for d, a in row["accuracy_by_freeze_stages"].items()
        )
        print(
            f"| {row['target']} | {row['backbone']} | {layers} | {row['advised_freeze_stages']} | {depths} | "
            f"{row['linear_accuracy']:.3f} | {row['transfer_strategy']} | "
            + ("n/a" if row["transfer_regret"] is None else f"{row['transfer_regret']:.3f}")
            + " |"
        )
    print(f"written: {path}")


if __name__ == "__main__":
    main()
