"""The size and ImageNet priors on a recorded benchmark: do they beat the estimators on our own ground truth?

    .venv/bin/python benchmarks/priors_on_recorded.py benchmarks/results/benchmark-default-<fingerprint>.json

A benchmark run today records the ``model_size`` and ``imagenet_top1`` baselines itself
(service/pipeline/benchmark). The recorded results predate them, and rerunning the default suite costs 72
minutes of fine-tuning that these two numbers do not need: both are facts of the backbone, not of the target.
So this adds them to a recorded result and recomputes its metrics with the benchmark's own ``summarize``
(same bootstrap seeds; the estimators' numbers must come out as recorded, which is checked):

- ``model_size``: parameters of ``timm.create_model(arch, num_classes=C)`` in millions, C the source task's
  classes (1000 for ImageNet, the built-in source dataset's classes for a zoo model), as a loaded backbone
  counts itself (classifier included);
- ``imagenet_top1``: timm's published top-1 (service/model_catalogue.py), or the suite's published ImageNet
  accuracy; none for backbones not trained on ImageNet.

Prints one markdown table (mean weighted Kendall τ over targets with its 95 % interval, top-1 regret; priors
marked) and writes ``priors-<stem>.json`` (the augmented result) into ``--out`` (default: beside the input).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PRIORS = ("model_size", "imagenet_top1")


def _source_classes(source: str | None) -> int | None:
    from service.builtin.datasets import BUILTIN_DATASETS

    if source == "imagenet-1k":
        return 1000
    info = BUILTIN_DATASETS.get(source or "")
    return info.n_classes if info is not None else None


def _params_m(arch: str, num_classes: int, cache: dict[tuple[str, int], float]) -> float:
    import timm

    key = (arch, num_classes)
    if key not in cache:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        cache[key] = sum(p.numel() for p in model.parameters()) / 1e6
    return cache[key]


def add_priors(result: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``result`` with the two prior baselines in every row and its metrics recomputed."""
    from service.model_catalogue import catalogue_info
    from service.pipeline.benchmark.benchmark import BASELINES
    from service.pipeline.benchmark.results import summarize

    out = copy.deepcopy(result)
    sizes: dict[tuple[str, int], float] = {}
    for target in out["targets"]:
        for row in target["backbones"]:
            classes = _source_classes(row.get("source"))
            row["scores"]["model_size"] = _params_m(row["arch"], classes, sizes) if classes else None
            entry = catalogue_info(row["id"])
            published = row.get("source_accuracy") if row.get("source") == "imagenet-1k" else None
            row["scores"]["imagenet_top1"] = (
                entry.imagenet_top1 if entry is not None else (100 * published if published is not None else None)
            )
    names = {b["name"] for b in out["baselines"]}
    out["baselines"] = [
        *out["baselines"],
        *(dict(b) for b in BASELINES if b["name"] in PRIORS and b["name"] not in names),
    ]
    summarize(out)
    for name, entry in result["summary"].items():  # the recorded methods must reproduce exactly
        again = out["summary"][name]
        if json.dumps(entry, sort_keys=True) != json.dumps(again, sort_keys=True):
            raise SystemExit(f"{name}: recomputed summary differs from the recorded one; not the same protocol")
    return out


def table(result: dict[str, Any]) -> list[str]:
    summary = result["summary"]

    def key(name: str) -> float:
        value = summary[name].get("weighted_tau", {}).get("mean")
        return -value if value is not None else 9.0

    lines = ["| method | mean τw [95 % CI] | top-1 regret | targets |", "|---|---|---|---|"]
    for name in sorted(summary, key=key):
        tau = summary[name].get("weighted_tau") or {}
        regret = summary[name].get("top1_regret") or {}
        label = (
            f"**{name}** (prior)" if name in PRIORS else name + (" (baseline)" if summary[name]["is_baseline"] else "")
        )
        if tau.get("mean") is None:
            lines.append(f"| {label} | – | – | 0 |")
            continue
        ci = f" [{tau['ci_low']:.2f}, {tau['ci_high']:.2f}]" if tau.get("ci_low") is not None else ""
        regret_text = f"{regret['mean']:.3f}" if regret.get("mean") is not None else "–"
        lines.append(f"| {label} | {tau['mean']:.3f}{ci} | {regret_text} | {tau['n_targets']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="recorded benchmark JSON files")
    parser.add_argument("--out", type=Path, default=None, help="where priors-<stem>.json goes (default: beside it)")
    args = parser.parse_args()
    for path in args.results:
        augmented = add_priors(json.loads(path.read_text(encoding="utf-8")))
        out = (args.out or path.parent) / f"priors-{path.stem}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(augmented, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        print(f"### {path.name}\n")
        print("\n".join(table(augmented)))
        print(f"\n(written: {out})\n")


if __name__ == "__main__":
    main()
