"""What a built zoo model folder holds: the file names, reading ``card.json`` (a folder without its config and
weights is not a build), timm's ``config.json``, the Markdown card, and the small writers the build uses.

Separate from the build because the provider and the listing (:mod:`.registry`) read cards without
building anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .entries import ZooEntry

_CARD = "card.json"
_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"
_README = "README.md"


def read_card(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``card.json`` of a built model folder, or None when the folder is not a complete build."""
    folder = Path(folder)
    if not ((folder / _CONFIG).is_file() and (folder / _WEIGHTS).is_file()):
        return None
    try:
        with open(folder / _CARD, encoding="utf-8") as fh:
            card = json.load(fh)
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def _timm_config(entry: ZooEntry, model: Any, data_config: Mapping[str, Any], classes: Sequence[str]) -> dict:
    """timm's HF ``config.json`` (what ``local-dir:`` and ``load_model_config_from_path`` read)."""
    default_cfg = dict(model.pretrained_cfg)
    pretrained_cfg: dict[str, Any] = {
        "input_size": list(data_config["input_size"]),
        "fixed_input_size": bool(default_cfg.get("fixed_input_size", False)),
        "interpolation": data_config["interpolation"],
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "crop_pct": data_config["crop_pct"],
        "crop_mode": data_config["crop_mode"],
        "num_classes": len(classes),
        "first_conv": default_cfg.get("first_conv"),
        "classifier": default_cfg.get("classifier"),
        "label_names": list(classes),
    }
    config: dict[str, Any] = {
        "architecture": entry.arch,
        "num_classes": len(classes),
        "num_features": int(model.num_features),
    }
    global_pool = getattr(model, "global_pool", None)
    global_pool = getattr(global_pool, "pool_type", global_pool)
    if isinstance(global_pool, str) and global_pool:
        config["global_pool"] = global_pool
    config["pretrained_cfg"] = pretrained_cfg
    config["model_args"] = dict(sorted(entry.model_args.items()))
    return config


def _is_built(folder: Path, recipe_hash: str) -> dict[str, Any] | None:
    card = read_card(folder)
    return card if card is not None and card.get("recipe_hash") == recipe_hash else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


def _readme(card: Mapping[str, Any]) -> str:
    """The model card for people (Markdown)."""
    trained = card["init"] == "pretrained"
    lines = [
        f"# {card['id']}",
        "",
        card["description"],
        "",
        f"Built-in zoo model of backbone-rank, trained offline on the built-in dataset `builtin:{card['source']}`."
        if trained
        else "Random-init control: seeded random weights and a random source head, never trained. Its source "
        "accuracy is at chance by design.",
        "",
        "| field | value |",
        "|---|---|",
        f"| architecture | `{card['arch']}` {json.dumps(card['model_args']) if card['model_args'] else ''} |",
        f"| init | {'trained on the source from random init' if trained else 'random (untrained control)'} |",
        f"| source task | `{card['source']}` ({card['source_classes']} classes, {card['train_images']} train images) |",
        f"| source accuracy (test) | {card['source_accuracy']:.3f} ({card['source_test_images']} images; chance "
        f"{card['chance']:.3f}) |",
        f"| source accuracy (val) | {card['source_val_accuracy']:.3f} |",
        f"| input size | {card['input_size'][1]}x{card['input_size'][2]}, {card['interpolation']} |",
        f"| mean / std | {card['mean']} / {card['std']} |",
    ]
    if trained:
        lines += [
            f"| epochs | {card['epochs']} |",
            f"| optimizer, lr, weight decay | {card['optimizer']}, {card['lr']}, {card['weight_decay']} |",
            f"| batch size | {card['batch_size']} |",
            f"| training | {card['training_seconds']:.1f} s, {card['images_per_second']:.0f} images/s "
            f"({card['torch_threads']} torch threads) |",
        ]
    lines += [
        f"| seed | {card['seed']} |",
        f"| parameters | {card['num_params']:,} ({card['num_features']} features) |",
        f"| timm / torch | {card['timm_version']} / {card['torch_version']} |",
        f"| weights sha256 | `{card['weights_sha256']}` |",
        f"| recipe hash | `{card['recipe_hash']}` |",
        "",
        f'Load it with `load_backbone("{card["id"]}")` or rank it with `backbone-rank rank DATA -b {card["id"]}`.',
        "",
    ]
    return "\n".join(lines)
