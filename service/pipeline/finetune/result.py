"""The result document of a fine-tuning (schema version :data:`SCHEMA_VERSION`).

Its schema is in the docstring of ``service/pipeline/finetune/finetune.py``. Apart from the run so that
both the run and the model card (``service/pipeline/finetune/saving.py``) can build on it without
importing each other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from service.pipeline.finetune.arguments import _Plan
from service.pipeline.finetune.runs import _Run, _Trainer
from service.pipeline.finetune.splits import _Splits
from service.pipeline.finetune.training import TensorSplit
from service.pipeline.models.backbones import LoadedBackbone

__all__ = ["SCHEMA_VERSION"]

SCHEMA_VERSION = 1


def _nan_to_none(values: Sequence[float]) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in values]


def _stats(values: Sequence[float]) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std()), "per_seed": [float(v) for v in array]}


def _result(
    *,
    plan: _Plan,
    splits: _Splits,
    tensors: Mapping[str, TensorSplit],
    loaded: LoadedBackbone,
    data_config: Mapping[str, Any],
    trainer: _Trainer,
    val_by_lr: Mapping[float, float],
    chosen_lr: float,
    runs: Sequence[_Run],
    best_seed: int,
    max_per_class: int | None,
    device: torch.device,
) -> dict[str, Any]:
    classes = splits.train.classes
    tests = [run.test for run in runs if run.test is not None]
    per_class = _nanmean_rows(np.stack([t.per_class_accuracy for t in tests]))
    confusion = np.sum([t.confusion for t in tests], axis=0)
    test_counts = np.bincount(tensors["test"].labels.numpy(), minlength=len(classes))
    config = plan.train_config(chosen_lr, plan.seeds[0])
    describe_config = {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}
    summary_splits = {}
    for role in ("train", "val", "test"):
        ds = getattr(splits, role)
        summary_splits[role] = {
            "n_images": len(tensors[role]),
            "n_failed": tensors[role].n_failed,
            "source": "carved" if role in splits.carved or (role == "train" and splits.carved) else "split",
            "fingerprint": ds.fingerprint,
        }
    ref = splits.train.ref.to_dict()
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": {
            "ref": ref,
            "n_classes": len(classes),
            "classes": list(classes),
            "splits": summary_splits,
            "carved": list(splits.carved),
            "fingerprint": splits.listed_train_fingerprint,
        },
        "class_map": {name: i for i, name in enumerate(classes)},
        "backbone": loaded.describe(),
        "strategy": plan.strategy,
        "config": {
            "epochs": plan.epochs,
            "batch_size": plan.batch_size,
            "optimizer": config.optimizer,
            "momentum": config.momentum,
            "weight_decay": config.weight_decay,
            "warmup_epochs": config.warmup_epochs,
            "label_smoothing": config.label_smoothing,
            "augment": config.augment,
            "backbone_lr_scale": plan.backbone_lr_scale,
            "input_size": list(data_config["input_size"]),
            "data_config": describe_config,
            "max_per_class": max_per_class,
            "device": str(device),
            "linear_on_features": trainer.on_features,
            "trainable_parameters": trainer.trainable_parameters,
            "total_parameters": trainer.total_parameters,
            "partial": trainer.partial_info,
        },
        "lr_grid": list(plan.lr_grid),
        "val_accuracy_by_lr": {format(lr, "g"): acc for lr, acc in val_by_lr.items()},
        "chosen_lr": chosen_lr,
        "seeds": list(plan.seeds),
        "test_accuracy": _stats([t.accuracy for t in tests]),
        "val_accuracy": _stats([run.val.accuracy for run in runs]),
        "best_seed": best_seed,
        "per_class_accuracy": dict(zip(classes, _nan_to_none(per_class.tolist()), strict=True)),
        "confusion_matrix": confusion.astype(np.int64).tolist(),
        "chance_accuracy": float(test_counts.max() / max(1, test_counts.sum())),
        "images_per_second": trainer.images_trained / trainer.train_seconds if trainer.train_seconds > 0 else 0.0,
    }


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN; NaN where a column is all NaN (a class absent from test), without the
    RuntimeWarning ``np.nanmean`` gives for those."""
    valid = ~np.isnan(values)
    counts = valid.sum(axis=0)
    sums = np.where(valid, values, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
