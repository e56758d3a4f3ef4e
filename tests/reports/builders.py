"""Builders of realistic result dicts for the report tests (and, later, the service's report tests).

``benchmark_result`` lays out backbones, accuracies and scores the way ``service.pipeline.benchmark.benchmark``
does and computes the per-target metrics with scipy (fixed-width intervals instead of the bootstrap, so
building one takes milliseconds and imports no torch); ``ranking_result`` runs a real (tiny) ranking on
images the test writes; ``finetune_result`` follows the schema of ``service.pipeline.finetune.finetune``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ESTIMATORS = ("logme", "leep", "nce", "sfda")
BASELINES = ("source_accuracy", "feature_dim", "random")
#: (id, arch, feature dim, source task, source accuracy, quality): quality drives the fake accuracies.
BACKBONES = (
    ("zoo:latin-resnet10t", "resnet10t", 512, "glyphs-latin", 0.934, 0.9),
    ("zoo:shapes-test_vit", "test_vit", 64, "shapes", 0.971, 0.45),
    ("zoo:textures-resnet10t", "resnet10t", 512, "textures", 0.882, 0.6),
    ("tf_efficientnet_lite0.in1k", "tf_efficientnet_lite0", 1280, "imagenet-1k", 0.753, 0.75),
    ("random:resnet10t", "resnet10t", 512, None, None, 0.1),
)
TARGETS = (
    ("glyphs-greek", "near glyphs-latin", 24),
    ("textures-fine", "near textures", 16),
    ("digits", "far from every source", 10),
)
#: Per-estimator noise on the quality signal: logme tracks accuracy best, nce worst.
_NOISE = {"logme": 0.15, "leep": 0.3, "nce": 1.2, "sfda": 0.5}
_REFERENCES = {
    "logme": "You et al., LogME, ICML 2021",
    "leep": "Nguyen et al., LEEP, ICML 2020",
    "nce": "Tran et al., NCE, ICCV 2019",
    "sfda": "Shao et al., SFDA, ECCV 2022",
}


def _environment() -> dict[str, Any]:
    return {
        "fingerprint": "cpu-torch2.14.1-timm1.0.31-3f2a9c",
        "device": "cpu",
        "torch": "2.14.1",
        "timm": "1.0.31",
        "numpy": "2.3.4",
        "python": "3.11.14",
        "platform": "Linux-6.1-x86_64",
        "cpu_count": 2,
        "threads": 2,
        "git_commit": None,
    }


def benchmark_rows(target_index: int, backbones: Sequence[tuple] = BACKBONES, seed: int = 0) -> list[dict[str, Any]]:
    """The ``backbones`` rows of one target: accuracy over 3 seeds, scores of estimators and baselines."""
    rng = np.random.default_rng(seed + 17 * target_index)
    rows = []
    for position, (backbone_id, arch, dim, source, source_accuracy, quality) in enumerate(backbones):
        accuracy = float(np.clip(0.15 + 0.75 * quality + rng.normal(0, 0.04), 0.05, 0.99))
        per_seed = [round(accuracy + float(d), 4) for d in rng.normal(0, 0.01, size=3)]
        scores: dict[str, float | None] = {
            name: round(float(quality * 2 - 1 + rng.normal(0, noise)), 5) for name, noise in _NOISE.items()
        }
        if source is None:  # an untrained control has no meaningful source head
            scores["leep"] = scores["nce"] = None
        scores["source_accuracy"] = source_accuracy
        scores["feature_dim"] = float(dim)
        scores["random"] = round(float(rng.random()), 4)
        rows.append(
            {
                "id": backbone_id,
                "arch": arch,
                "feature_dim": dim,
                "source": source,
                "source_accuracy": source_accuracy,
                "scores": scores,
                "accuracy": {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed)), "per_seed": per_seed},
                "linear_probe_accuracy": None if position == 1 else round(accuracy - 0.12, 4),
                "finetune": {"strategy": "full", "chosen_lr": 0.03, "epochs": 10, "input_size": 32},
                "seconds": {"rank": round(1.0 + 0.3 * position, 2), "finetune": round(45.0 + 9 * position, 1)},
            }
        )
    return rows


def _interval(value: float | None, half_width: float, low: float = -1.0, high: float = 1.0) -> dict[str, Any]:
    if value is None:
        return {"value": None, "ci_low": None, "ci_high": None}
    return {"value": value, "ci_low": max(low, value - half_width), "ci_high": min(high, value + half_width)}


def target_metrics(rows: Sequence[dict[str, Any]], name: str, higher_is_better: bool = True) -> dict[str, Any] | None:
    """The four metrics of one method on one target, as ``benchmark_metrics`` lays them out (fixed-width CIs)."""
    from scipy import stats

    usable = [r for r in rows if r["scores"].get(name) is not None]
    if len(usable) < 2:
        return None
    score = np.array([r["scores"][name] for r in usable], dtype=float) * (1 if higher_is_better else -1)
    accuracy = np.array([r["accuracy"]["mean"] for r in usable])
    constant = np.ptp(score) == 0 or np.ptp(accuracy) == 0
    weighted = None if constant else float(stats.weightedtau(accuracy, score)[0])
    kendall = None if constant else float(stats.kendalltau(accuracy, score)[0])
    pearson = None if constant else float(np.corrcoef(accuracy, score)[0, 1])
    picks = np.flatnonzero(score == score.max())
    regret = float(accuracy.max() - accuracy[picks].mean())
    return {
        "weighted_tau": _interval(weighted, 0.2),
        "kendall_tau": _interval(kendall, 0.25),
        "pearson": _interval(pearson, 0.2),
        "top1_regret": _interval(regret, 0.05, low=0.0, high=1.0),
    }


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Fill ``metrics``, ``summary`` and ``cost`` the way ``service.pipeline.benchmark.results.summarize`` does.

    Means over targets are exact; intervals are fixed-width stand-ins for the bootstrap (fast, deterministic).
    """
    methods = [(e["name"], e["higher_is_better"], False) for e in result["estimators"]]
    methods += [(b["name"], b["higher_is_better"], True) for b in result["baselines"]]
    per_method: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in methods}
    for target in result["targets"]:
        target["metrics"] = {}
        for name, higher, _ in methods:
            metrics = target_metrics(target["backbones"], name, higher)
            target["metrics"][name] = metrics
            if metrics:
                per_method[name].append(metrics)
    result["summary"] = {}
    for name, _, is_baseline in methods:
        entry: dict[str, Any] = {"is_baseline": is_baseline}
        for metric in ("weighted_tau", "kendall_tau", "pearson", "top1_regret"):
            values = [m[metric]["value"] for m in per_method[name] if m[metric]["value"] is not None]
            mean = float(np.mean(values)) if values else None
            ci = len(values) >= 2 and mean is not None
            low, high = (0.0, 1.0) if metric == "top1_regret" else (-1.0, 1.0)
            entry[metric] = {
                "mean": mean,
                "ci_low": max(low, mean - 0.1) if ci else None,
                "ci_high": min(high, mean + 0.1) if ci else None,
                "n_targets": len(values),
            }
        result["summary"][name] = entry
    rows = [r for t in result["targets"] for r in t["backbones"]]
    ranking = float(sum(r["seconds"]["rank"] for r in rows))
    tuning = float(sum(r["seconds"]["finetune"] for r in rows))
    per_backbone: dict[str, dict[str, float]] = {}
    for row in rows:
        entry = per_backbone.setdefault(row["id"], {"rank_seconds": 0.0, "finetune_seconds": 0.0})
        entry["rank_seconds"] += row["seconds"]["rank"]
        entry["finetune_seconds"] += row["seconds"]["finetune"]
    result["cost"] = {
        "ranking_seconds": ranking,
        "finetune_seconds": tuning,
        "ratio": tuning / ranking,
        "per_backbone": [{"id": k, **v} for k, v in per_backbone.items()],
    }
    return result


def benchmark_result(
    *,
    targets: Sequence[tuple[str, str, int]] = TARGETS,
    backbones: Sequence[tuple] = BACKBONES,
    estimators: Sequence[str] = ESTIMATORS,
    seed: int = 0,
) -> dict[str, Any]:
    """A complete benchmark result: 3 targets x 5 backbones x 4 estimators + 3 baselines, with nulls.

    Nulls: LEEP/NCE of the untrained control, its source accuracy, one linear probe per target, the
    git commit, and the CIs of any method measured on fewer than two targets.
    """
    result: dict[str, Any] = {
        "schema_version": 1,
        "kind": "benchmark",
        "suite": {
            "name": "default",
            "description": "Zoo backbones on near and far built-in targets; ground truth by fine-tuning with 3 seeds.",
            "ground_truth": "finetune",
            "fingerprint": "a1b2c3",
            "definition": {"targets": [t[0] for t in targets], "backbones": [b[0] for b in backbones]},
        },
        "created": "2026-11-23T12:00:00Z",
        "environment": _environment(),
        "estimators": [{"name": n, "higher_is_better": True, "reference": _REFERENCES[n]} for n in estimators],
        "baselines": [
            {"name": "source_accuracy", "higher_is_better": True, "description": "accuracy on the source task"},
            {"name": "feature_dim", "higher_is_better": True, "description": "dimension of the pooled features"},
            {"name": "random", "higher_is_better": True, "description": "a random ranking"},
        ],
        "targets": [
            {
                "name": name,
                "dataset": f"builtin:{name}",
                "relation": relation,
                "n_classes": n_classes,
                "n_rank_images": 40 * n_classes,
                "n_test_images": 40 * n_classes,
                "backbones": benchmark_rows(index, backbones, seed),
            }
            for index, (name, relation, n_classes) in enumerate(targets)
        ],
        "skipped": {"backbones": [], "targets": []},
    }
    summarize(result)
    result["seconds"] = {"total": 1234.5}
    return result


def edge_benchmark_result() -> dict[str, Any]:
    """Degenerate targets: one with a single backbone, one where every logme score is equal; a skipped backbone."""
    result = benchmark_result(targets=TARGETS[:2], estimators=("logme", "leep"))
    result["targets"][0]["name"] = "single-backbone"
    result["targets"][0]["backbones"] = result["targets"][0]["backbones"][:1]
    for row in result["targets"][1]["backbones"]:
        row["scores"]["logme"] = 0.5
    summarize(result)
    result["skipped"] = {
        "backbones": [{"backbone": "zoo:missing", "reason": "[weights_unavailable] not found"}],
        "targets": [],
    }
    return result


def write_manifest_dataset(root: Path, classes: Sequence[str], per_class: int = 8, seed: int = 0) -> Path:
    """Noise PNGs (class-dependent mean colour) and a ``labels.csv`` manifest; any label text is allowed."""
    import csv

    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for c, _ in enumerate(classes):
        for i in range(per_class):
            pixels = np.clip(rng.normal(40 + 60 * c, 30, size=(24, 24, 3)), 0, 255).astype(np.uint8)
            name = f"c{c}_{i}.png"
            Image.fromarray(pixels).save(root / name)
            lines.append((name, classes[c]))
    manifest = root / "labels.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(lines)
    return manifest


def ranking_result(root: Path, classes: Sequence[str] = ("cat", "dog", "bird")) -> dict[str, Any]:
    """A real ranking of two random-init timm test models on a manifest dataset written under ``root``."""
    from service.pipeline.models import providers
    from service.pipeline.ranking.rank import rank_backbones

    manifest = write_manifest_dataset(root, classes)
    registered = "packaged" in providers.list_weights_providers()
    try:
        return rank_backbones(str(manifest), ["random:test_resnet", "random:test_vit"], device="cpu", batch_size=32)
    finally:
        # rank_backbones registers the "packaged" provider; a fixture outliving one test must not leak it.
        if not registered and "packaged" in providers.list_weights_providers():
            providers.unregister_weights_provider("packaged")


def finetune_result(classes: Sequence[str] = ("alpha", "beta", "gamma", "delta")) -> dict[str, Any]:
    """A fine-tune result as ``service.pipeline.finetune.finetune.finetune`` returns it (2 seeds, 3 learning rates)."""
    n = len(classes)
    confusion = (np.eye(n, dtype=int) * 14 + np.roll(np.eye(n, dtype=int), 1, axis=1) * 3).tolist()
    confusion[-1] = [0] * n  # a class absent from the test split: its accuracy is null
    per_class = {name: confusion[i][i] / max(1, sum(confusion[i])) for i, name in enumerate(classes)}
    per_class[classes[-1]] = None
    return {
        "schema_version": 1,
        "dataset": {
            "ref": {"kind": "builtin", "name": "glyphs-greek"},
            "n_classes": n,
            "classes": list(classes),
            "splits": {
                "train": {"n_images": 160, "n_failed": 0, "source": "split", "fingerprint": "aa"},
                "val": {"n_images": 40, "n_failed": 0, "source": "carved", "fingerprint": "bb"},
                "test": {"n_images": 51, "n_failed": 1, "source": "split", "fingerprint": "cc"},
            },
            "carved": ["val"],
            "fingerprint": "aa",
        },
        "class_map": {name: i for i, name in enumerate(classes)},
        "backbone": {"id": "zoo:latin-resnet10t", "arch": "resnet10t", "weights_source": "zoo", "num_features": 512},
        "strategy": "full",
        "config": {
            "epochs": 10,
            "batch_size": 128,
            "optimizer": "sgd",
            "input_size": [3, 32, 32],
            "partial": None,
            "augment": True,
        },
        "lr_grid": [0.003, 0.01, 0.03],
        "val_accuracy_by_lr": {"0.003": 0.61, "0.01": 0.74, "0.03": 0.70},
        "chosen_lr": 0.01,
        "seeds": [0, 1],
        "test_accuracy": {"mean": 0.7125, "std": 0.0125, "per_seed": [0.7, 0.725]},
        "val_accuracy": {"mean": 0.74, "std": 0.01, "per_seed": [0.74, 0.73]},
        "best_seed": 0,
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion,
        "chance_accuracy": 0.3333,
        "weights": None,
        "seconds": {"load": 0.5, "train": 80.2, "eval": 1.1, "total": 81.8},
        "images_per_second": 212.4,
    }
