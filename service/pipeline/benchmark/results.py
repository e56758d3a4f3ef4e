"""What a benchmark result adds up to and where it goes: the environment it records, the metrics and cost
summary (with the checks of :mod:`service.pipeline.benchmark.checks`), and the JSON/CSV files.

Separate from the run (:mod:`service.pipeline.benchmark.benchmark`) because none of it needs a dataset, a
backbone or a fine-tuning: ``summarize`` recomputes the summary of any result (tests build fake ones), and the
engine records :func:`environment_info` in ranking and fine-tune results too. The environment's ``fingerprint``
names the result files and the run's checkpoint, so runs of different setups never mix.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import service
from service.atomic import atomic_path, write_text_atomic
from service.contract.results import benchmark_score
from service.pipeline.benchmark.checks import ground_truth_flags, p_best_check
from service.pipeline.benchmark.metrics import (
    aggregate_over_targets,
    as_higher_is_better,
    random_baseline_metrics,
    target_metrics,
)

__all__ = ["environment_info", "summarize", "write_result_files", "write_results"]


# ------------------------------------------------------------------------------------------ environment


def environment_info(device: str = "cpu") -> dict[str, Any]:
    """Versions, device and machine; ``fingerprint`` names result files so runs of different setups never mix."""
    import scipy
    import timm
    import torch

    threads = torch.get_num_threads()
    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "git_commit": _git_commit(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    digest = hashlib.sha256(
        json.dumps(
            {k: info[k] for k in ("device", "torch", "timm", "numpy", "python", "machine", "cpu_count")}, sort_keys=True
        ).encode()
    ).hexdigest()[:8]
    kind = "gpu" if device.startswith("cuda") else "cpu"
    info["fingerprint"] = f"{kind}-torch{torch.__version__.split('+')[0]}-timm{timm.__version__}-{digest}"
    return info


#: The project name in a backbone-rank checkout's pyproject.toml.
_PROJECT_NAME = "backbone-rank"


def _git_commit(source_root: Path | None = None) -> str | None:
    """The commit of the backbone-rank checkout this code runs from, else None.

    ``source_root`` is the directory holding the ``service`` package (default: this module's). A commit is
    reported only when that directory is the top level of a git work tree whose ``pyproject.toml`` names the
    project ``backbone-rank``: a package installed into a virtualenv or site-packages that happens to lie
    inside another repository (a user's project) reports None, not that repository's commit.
    """
    import tomllib

    root = source_root if source_root is not None else Path(service.__file__).resolve().parent.parent
    try:
        with open(root / "pyproject.toml", "rb") as fh:
            project = tomllib.load(fh).get("project", {})
    except (OSError, ValueError):
        return None
    if not isinstance(project, dict) or project.get("name") != _PROJECT_NAME:
        return None
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=root,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split("\n") if out.returncode == 0 else []
    if len(lines) < 2 or not lines[1].strip():
        return None
    if os.path.realpath(lines[0]) != os.path.realpath(root):
        return None  # root lies inside another repository's work tree, not at a checkout's top
    return lines[1].strip()


# ---------------------------------------------------------------------------------------------- metrics


def summarize(result: dict[str, Any], *, n_bootstrap: int = 500) -> dict[str, Any]:
    """Fill ``metrics`` of every target, ``summary``, ``cost`` and the checks of a benchmark result (in place).

    Methods: the product's own orders first where the result records them (``default_order``, by
    :func:`service.pipeline.benchmark.default_order.add_default_order`), then the estimators and the baselines.
    Checks (:mod:`service.pipeline.benchmark.checks`): ``p_best_check`` (null unless p_best was run) and
    ``ground_truth_flags`` (backbones good under one ground truth and bad under the other).
    """
    methods = [
        _Method(c["name"], c["higher_is_better"], is_product=True)
        for c in (result.get("default_order") or {}).get("methods") or []
    ]
    methods += [_Method(e["name"], e["higher_is_better"]) for e in result["estimators"]]
    methods += [_Method(b["name"], b["higher_is_better"], is_baseline=True) for b in result["baselines"]]
    per_method: dict[str, list[dict[str, Any]]] = {m.name: [] for m in methods}
    for index, target in enumerate(result["targets"]):
        rows = target["backbones"]
        metrics: dict[str, Any] = {}
        for method in methods:
            name = method.name
            if name == "random":
                if len(rows) < 2:  # one backbone: nothing to rank
                    metrics[name] = None
                    continue
                metrics[name] = random_baseline_metrics([r["accuracy"]["per_seed"] for r in rows], seed=index)
            else:
                values = [(r, v) for r in rows if (v := benchmark_score(r, name)) is not None]
                if len(values) < 2:
                    metrics[name] = None
                    continue
                metrics[name] = target_metrics(
                    as_higher_is_better([v for _, v in values], method.higher_is_better),
                    [r["accuracy"]["per_seed"] for r, _ in values],
                    n_bootstrap=n_bootstrap,
                    seed=index,
                )
            per_method[name].append(metrics[name])
        target["metrics"] = metrics
    result["summary"] = {
        m.name: {
            "is_baseline": m.is_baseline,
            "is_product": m.is_product,
            **aggregate_over_targets([x for x in per_method[m.name] if x]),
        }
        for m in methods
    }
    result["p_best_check"] = p_best_check(result)
    result["ground_truth_flags"] = ground_truth_flags(result)
    rank_seconds = [r["seconds"]["rank"] for t in result["targets"] for r in t["backbones"]]
    tune_seconds = [r["seconds"]["finetune"] for t in result["targets"] for r in t["backbones"]]
    per_backbone: dict[str, dict[str, float]] = {}
    for target in result["targets"]:
        for row in target["backbones"]:
            entry = per_backbone.setdefault(row["id"], {"rank_seconds": 0.0, "finetune_seconds": 0.0})
            entry["rank_seconds"] += row["seconds"]["rank"] or 0.0
            entry["finetune_seconds"] += row["seconds"]["finetune"] or 0.0
    ranking = float(sum(s for s in rank_seconds if s is not None))
    tuning = float(sum(s for s in tune_seconds if s is not None)) if any(s is not None for s in tune_seconds) else None
    rows = [r for t in result["targets"] for r in t["backbones"]]
    extract = float(sum(r["seconds"].get("extract") or 0.0 for r in rows))
    per_estimator: dict[str, float] = {}
    for row in rows:
        for name, seconds in (row["seconds"].get("per_estimator") or {}).items():
            per_estimator[name] = per_estimator.get(name, 0.0) + seconds
    result["cost"] = {
        "ranking_seconds": ranking,
        "extract_seconds": extract,
        "estimator_seconds": per_estimator,
        "finetune_seconds": tuning,
        "ratio": tuning / ranking if tuning and ranking > 0 else None,
        # what ranking with one estimator alone costs next to fine-tuning: features + that score
        "ratio_per_estimator": {
            name: tuning / (extract + seconds)
            for name, seconds in per_estimator.items()
            if tuning and extract + seconds
        },
        "per_backbone": [{"id": k, **v} for k, v in per_backbone.items()],
    }
    return result


@dataclass(frozen=True)
class _Method:
    """A column of the summary: an estimator, a baseline, or one of the product's own orders."""

    name: str
    higher_is_better: bool
    is_baseline: bool = False
    is_product: bool = False


# ---------------------------------------------------------------------------------------------- writing


def write_results(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``benchmark-<suite>-<fingerprint>.json`` and ``.csv`` atomically; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"benchmark-{result['suite']['name']}-{result['environment']['fingerprint']}"
    return write_result_files(result, out_dir / f"{stem}.json")


def write_result_files(result: dict[str, Any], json_path: Path) -> dict[str, Path]:
    """Write the result to ``json_path`` and its table to the ``.csv`` beside it, atomically; return their paths.

    The CSV has one row per (target, backbone): the ground truth, the product's orders where recorded
    (``default``, ``predicted_accuracy``; ``p_best`` where it was run), then every estimator and baseline score.
    """
    csv_path = json_path.with_suffix(".csv")
    write_text_atomic(json_path, json.dumps(result, indent=1, allow_nan=False, default=_json_default) + "\n")
    rows = [(target, row) for target in result["targets"] for row in target["backbones"]]
    products = [c["name"] for c in (result.get("default_order") or {}).get("methods") or []]
    if any(row.get("p_best") is not None for _, row in rows):
        products.append("p_best")
    methods = [e["name"] for e in result["estimators"]]
    methods += [b["name"] for b in result["baselines"] if b["name"] != "random"]
    header = ["target", "backbone", "accuracy_mean", "accuracy_std", "n_seeds", "linear_probe_accuracy"]
    lines = []
    for target, row in rows:
        acc = row["accuracy"]
        lines.append(
            [
                target["name"],
                row["id"],
                acc["mean"],
                acc["std"],
                len(acc["per_seed"]),
                row.get("linear_probe_accuracy"),
                *(row.get("p_best") if name == "p_best" else benchmark_score(row, name) for name in products),
                *(row["scores"].get(m) for m in methods),
            ]
        )
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*header, *products, *methods])
        writer.writerows([["" if v is None else v for v in line] for line in lines])
    return {"json": json_path, "csv": csv_path}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")
