"""The fine-tune report page: test accuracy, validation accuracy per learning rate, per-class accuracy, confusion.

Read from a fine-tune result (``backbone-rank finetune --json``, the service's fine-tune jobs); kept apart from
the other pages, which share none of its helpers (class names, the learning-rate table).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from . import figures
from ._format import NA, as_float, dataset_ref_label, fmt_int, fmt_number, fmt_percent, fmt_seconds
from ._page import _malformed_is_invalid, _mapping, _mean_std_percent, _render, _sequence

__all__ = ["render_finetune_report"]


def _class_names(result: Mapping[str, Any], n: int) -> list[str]:
    class_map = _mapping(result.get("class_map"))
    names = [str(name) for name, _ in sorted(class_map.items(), key=lambda kv: as_float(kv[1]) or 0.0)]
    return names if len(names) == n or n == 0 else [*names, *(str(i) for i in range(len(names), n))][:n]


def _lr_rows(value: Any, chosen: Any) -> list[dict[str, Any]]:
    """``{lr: acc}``, ``[{"lr", "accuracy"}]`` or ``[[lr, acc]]`` -> rows; the chosen lr is flagged."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = []
        for item in _sequence(value):
            if isinstance(item, Mapping):
                pairs.append((item.get("lr"), item.get("accuracy", item.get("val_accuracy"))))
            elif isinstance(item, list | tuple) and len(item) == 2:
                pairs.append((item[0], item[1]))
    chosen_lr = as_float(chosen)
    rows = []
    for lr, accuracy in pairs:
        if isinstance(accuracy, Mapping):  # {"mean", "std", ...} per lr
            accuracy = accuracy.get("mean")
        try:
            lr_value: float | None = float(lr)
        except (TypeError, ValueError):
            lr_value = None
        rows.append(
            {
                "lr": fmt_number(lr_value) if lr_value is not None else str(lr),
                "accuracy": fmt_percent(accuracy),
                "chosen": chosen_lr is not None and lr_value is not None and abs(lr_value - chosen_lr) <= 1e-12,
            }
        )
    return rows


@_malformed_is_invalid("fine-tune")
def render_finetune_report(result: Mapping[str, Any]) -> str:
    """The fine-tune page: test accuracy, validation accuracy per learning rate, per-class accuracy, confusion.

    Parameters
    ----------
    result : dict
        A fine-tune result (``service.pipeline.finetune.finetune.finetune``).

    Returns
    -------
    str
        One self-contained HTML document.
    """
    backbone = result.get("backbone")
    backbone_id = str(_mapping(backbone).get("id", NA)) if isinstance(backbone, Mapping) else str(backbone or NA)
    dataset = result.get("dataset")
    dataset_label = dataset_ref_label(_mapping(dataset).get("ref", dataset))
    test = _mapping(result.get("test_accuracy"))
    matrix = [list(row) for row in _sequence(result.get("confusion_matrix")) if isinstance(row, list | tuple)]
    n = len(matrix) if matrix and all(len(row) == len(matrix) for row in matrix) else 0
    per_class_value = result.get("per_class_accuracy")
    class_names = _class_names(result, n)
    if isinstance(per_class_value, Mapping):
        per_class_pairs = [(str(k), v) for k, v in per_class_value.items()]
    else:
        values = list(_sequence(per_class_value))
        names = _class_names(result, len(values))
        per_class_pairs = list(zip(names, values, strict=False))
    support = {class_names[i]: sum(as_float(v) or 0.0 for v in row) for i, row in enumerate(matrix)} if n else {}
    per_class = [
        {
            "name": name,
            "accuracy": fmt_percent(acc),
            "support": fmt_int(support.get(name)),
        }
        for name, acc in per_class_pairs
    ]
    heatmap = (
        figures.confusion_figure(
            [[as_float(v) or 0.0 for v in row] for row in matrix], class_names, title="confusion matrix (test split)"
        )
        if n
        else None
    )
    config = _mapping(result.get("config"))
    weights = _mapping(result.get("weights"))
    per_seed = ", ".join(fmt_percent(v) for v in _sequence(test.get("per_seed")))
    seconds = result.get("seconds")
    facts = [
        ("backbone", backbone_id),
        ("dataset", dataset_label),
        ("strategy", str(result.get("strategy") or NA)),
        ("chosen learning rate", fmt_number(result.get("chosen_lr"))),
        ("seeds", ", ".join(str(s) for s in _sequence(result.get("seeds"))) or NA),
        ("validation accuracy (%)", _mean_std_percent(result.get("val_accuracy"))),
        ("chance accuracy (%)", fmt_percent(result.get("chance_accuracy"))),
        ("time", fmt_seconds(_mapping(seconds).get("total") if isinstance(seconds, Mapping) else seconds)),
        ("training images / s", fmt_number(result.get("images_per_second"), 3)),
        ("weights", str(weights.get("path") or "not saved")),
        ("weights sha256", str(weights.get("sha256") or NA)),
    ]
    splits = [
        {
            "name": str(name),
            "images": fmt_int(_mapping(info).get("n_images")),
            "failed": fmt_int(_mapping(info).get("n_failed")),
            "source": str(_mapping(info).get("source") or NA),
        }
        for name, info in _mapping(_mapping(dataset).get("splits")).items()
    ]
    return _render(
        "finetune.html.j2",
        title=f"Fine-tune: {backbone_id} on {dataset_label}",
        backbone=backbone_id,
        dataset_label=dataset_label,
        test_accuracy=_mean_std_percent(test),
        splits=splits,
        per_seed=per_seed,
        facts=facts,
        cards=[
            fact
            for fact in facts
            if fact[0] in ("strategy", "chosen learning rate", "validation accuracy (%)", "chance accuracy (%)", "time")
        ],
        config=[(str(k), json.dumps(v, default=str) if not isinstance(v, str) else v) for k, v in config.items()],
        lr_rows=_lr_rows(result.get("val_accuracy_by_lr"), result.get("chosen_lr")),
        per_class=per_class,
        heatmap=heatmap,
    )
