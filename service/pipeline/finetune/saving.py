"""The output folder of a fine-tuning: the best seed's model, timm's ``config.json``, ``card.json``, ``README.md``.

The folder is written beside the target and renamed into place with
:func:`service.atomic.replace_dir`; what it holds is described in the docstring of
``service/pipeline/finetune/finetune.py``. Apart from the run because it only turns a finished result
into files.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from service.atomic import replace_dir
from service.errors import InvalidFinetuneConfig
from service.pipeline.finetune.result import _nan_to_none
from service.pipeline.finetune.runs import _Run
from service.pipeline.finetune.splits import _Splits
from service.pipeline.models.resolve import file_sha256

_logger = logging.getLogger(__name__)

CARD_VERSION = 1


def _versions() -> dict[str, str]:
    import timm

    try:
        own = metadata.version("backbone-rank")
    except metadata.PackageNotFoundError:
        own = "unknown"
    return {
        "backbone_rank": own,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _card(result: Mapping[str, Any], run: _Run, splits: _Splits) -> dict[str, Any]:
    """What ``card.json`` says about the saved model (the best seed)."""
    assert run.test is not None
    classes = splits.train.classes
    backbone = result["backbone"]
    return {
        "card_version": CARD_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_backbone": {
            "id": backbone["id"],
            "arch": backbone["arch"],
            "weights_source": backbone["weights_source"],
            "weights_sha256": backbone["weights_sha256"],
        },
        "dataset": {
            "ref": result["dataset"]["ref"],
            "fingerprint": result["dataset"]["fingerprint"],
            "split_fingerprints": {role: s["fingerprint"] for role, s in result["dataset"]["splits"].items()},
            "carved": result["dataset"]["carved"],
        },
        "classes": list(classes),
        "strategy": result["strategy"],
        "lr": run.lr,
        "epochs": result["config"]["epochs"],
        "seed": run.seed,
        "config": {k: v for k, v in result["config"].items() if k not in ("device",)},
        "val_accuracy": run.val.accuracy,
        "test_accuracy": run.test.accuracy,
        "test_images": int(run.test.confusion.sum()),
        "per_class_accuracy": dict(zip(classes, _nan_to_none(run.test.per_class_accuracy.tolist()), strict=True)),
        "versions": _versions(),
    }


def _readme(card: Mapping[str, Any], sha256: str) -> str:
    base = card["base_backbone"]
    per_class = card["per_class_accuracy"]
    worst = sorted(((v, k) for k, v in per_class.items() if v is not None))[:10]
    lines = [
        f"# {base['arch']} fine-tuned ({card['strategy']}) on {_ref_text(card['dataset']['ref'])}",
        "",
        f"Test accuracy **{card['test_accuracy']:.4f}** on {card['test_images']} images "
        f"({len(card['classes'])} classes); validation accuracy {card['val_accuracy']:.4f}.",
        "",
        "| | |",
        "|---|---|",
        f"| base backbone | `{base['id']}` |",
        f"| base weights | {base['weights_source']} (sha256 `{base['weights_sha256']}`) |",
        f"| weights | `model.safetensors` (sha256 `{sha256}`) |",
        f"| dataset fingerprint | `{card['dataset']['fingerprint']}` |",
        f"| carved splits | {', '.join(card['dataset']['carved']) or 'none'} |",
        f"| strategy | {card['strategy']} |",
        f"| learning rate (head) | {card['lr']:g} (backbone x {card['config']['backbone_lr_scale']:g}) |",
        f"| epochs | {card['epochs']} |",
        f"| seed | {card['seed']} |",
        f"| input size | {card['config']['input_size']} |",
        f"| versions | {', '.join(f'{k} {v}' for k, v in card['versions'].items())} |",
        "",
        "Load it with `backbone-rank` as the backbone `local-dir:<this folder>`, or with timm:",
        "`timm.create_model('local-dir:<this folder>', pretrained=True)`.",
        "",
        "Lowest per-class test accuracies: "
        + (", ".join(f"{name} {value:.2f}" for value, name in worst) if worst else "-"),
        "",
    ]
    return "\n".join(lines)


def _ref_text(ref: Mapping[str, Any]) -> str:
    if ref.get("kind") == "builtin":
        return f"builtin:{ref.get('name')}"
    return str(ref.get("path"))


def _save(
    model: torch.nn.Module,
    out_dir: Path,
    *,
    data_config: Mapping[str, Any],
    classes: Sequence[str],
    card: dict[str, Any],
) -> dict[str, Any]:
    """Write the model folder next to ``out_dir`` and rename it into place."""
    from timm.models._hub import save_config_for_hf

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)
        model = model.to("cpu").eval()
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_config_for_hf(
            model, str(tmp / "config.json"), model_config={"label_names": list(classes)}, data_config=dict(data_config)
        )
        sha256 = file_sha256(tmp / "model.safetensors")
        card["weights_sha256"] = sha256
        (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_readme(card, sha256), encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info("fine-tuned model saved to %s", out_dir)
    return {"path": str(out_dir), "backbone_id": f"local-dir:{out_dir}", "sha256": sha256, "card": card}


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an empty or earlier-output ``target`` is replaced."""
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / "card.json").is_file())):
        raise InvalidFinetuneConfig(f"output folder {str(target)!r} appeared during training and is not ours")
    replace_dir(new, target, target.name)
