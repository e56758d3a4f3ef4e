"""The fine-tune report page: test accuracy, validation accuracy per learning rate, per-class accuracy, confusion.

Read from a fine-tune result (``backbone-rank finetune --json``, the service's fine-tune jobs) through its typed model
(:class:`service.contract.FinetuneResult`); kept apart from the other pages, which share none of its helpers (class
names, the learning-rate table).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from service.contract import FinetuneResult

from . import figures
from ._format import NA, as_float, dataset_ref_label, fmt_int, fmt_number, fmt_percent, fmt_seconds
from ._page import _mean_std_percent, _render, _typed_as

__all__ = ["render_finetune_report"]


def _class_names(class_map: Mapping[str, int], n: int) -> list[str]:
    names = [name for name, _ in sorted(class_map.items(), key=lambda kv: kv[1])]
    return names if len(names) == n or n == 0 else [*names, *(str(i) for i in range(len(names), n))][:n]


def _lr_rows(val_accuracy_by_lr: Mapping[str, float], chosen_lr: float) -> list[dict[str, Any]]:
    """``{lr: accuracy}`` -> rows; the chosen lr is flagged."""
    chosen = as_float(chosen_lr)
    rows = []
    for lr, accuracy in val_accuracy_by_lr.items():
        try:
            lr_value: float | None = float(lr)
        except ValueError:  # the keys are learning rates written as text; show one that is not a number as it is
            lr_value = None
        rows.append(
            {
                "lr": fmt_number(lr_value) if lr_value is not None else lr,
                "accuracy": fmt_percent(accuracy),
                "chosen": chosen is not None and lr_value is not None and abs(lr_value - chosen) <= 1e-12,
            }
        )
    return rows


def render_finetune_report(result: FinetuneResult | Mapping[str, Any]) -> str:
    """The fine-tune page: test accuracy, validation accuracy per learning rate, per-class accuracy, confusion.

    Parameters
    ----------
    result : FinetuneResult or dict
        A fine-tune result: its typed model, or its JSON document (any schema version), which is validated into the
        model first (:func:`service.reports._page.typed_result`); anything else, or a document that does not
        validate, is an :class:`~service.errors.InvalidResult`.

    Returns
    -------
    str
        One self-contained HTML document.
    """
    finetune = _typed_as(result, FinetuneResult, "fine-tune")
    backbone_id = finetune.backbone.id
    dataset = finetune.dataset
    dataset_label = dataset_ref_label(dataset.ref)
    test = finetune.test_accuracy
    matrix = finetune.confusion_matrix
    n = len(matrix) if matrix and all(len(row) == len(matrix) for row in matrix) else 0
    class_names = _class_names(finetune.class_map, n)
    support = {class_names[i]: sum(row) for i, row in enumerate(matrix)} if n else {}
    per_class = [
        {
            "name": name,
            "accuracy": fmt_percent(accuracy),
            "support": fmt_int(support.get(name)),
        }
        for name, accuracy in finetune.per_class_accuracy.items()
    ]
    heatmap = figures.confusion_figure(matrix, class_names, title="confusion matrix (test split)") if n else None
    weights = finetune.weights
    facts = [
        ("backbone", backbone_id),
        ("dataset", dataset_label),
        ("strategy", finetune.strategy),
        ("chosen learning rate", fmt_number(finetune.chosen_lr)),
        ("seeds", ", ".join(str(s) for s in finetune.seeds) or NA),
        ("validation accuracy (%)", _mean_std_percent(finetune.val_accuracy.mean, finetune.val_accuracy.std)),
        ("chance accuracy (%)", fmt_percent(finetune.chance_accuracy)),
        ("time", fmt_seconds(finetune.seconds.total)),
        ("training images / s", fmt_number(finetune.images_per_second, 3)),
        ("weights", (weights.path if weights is not None else None) or "not saved"),
        ("weights sha256", (weights.sha256 if weights is not None else None) or NA),
    ]
    splits = [
        {"name": name, "images": fmt_int(info.n_images), "failed": fmt_int(info.n_failed), "source": info.source}
        for name, info in dataset.splits.items()
    ]
    # The recipe's keys vary with the strategy (the model keeps the extra ones): listed as its JSON document.
    config = finetune.config.model_dump(mode="json")
    return _render(
        "finetune.html.j2",
        title=f"Fine-tune: {backbone_id} on {dataset_label}",
        backbone=backbone_id,
        dataset_label=dataset_label,
        test_accuracy=_mean_std_percent(test.mean, test.std),
        splits=splits,
        per_seed=", ".join(fmt_percent(v) for v in test.per_seed),
        facts=facts,
        cards=[
            fact
            for fact in facts
            if fact[0] in ("strategy", "chosen learning rate", "validation accuracy (%)", "chance accuracy (%)", "time")
        ],
        config=[(key, json.dumps(value) if not isinstance(value, str) else value) for key, value in config.items()],
        lr_rows=_lr_rows(finetune.val_accuracy_by_lr, finetune.chosen_lr),
        per_class=per_class,
        heatmap=heatmap,
    )
