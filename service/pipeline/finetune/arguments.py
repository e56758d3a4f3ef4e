"""The strategies' defaults and the checks of a :func:`~service.pipeline.finetune.finetune.finetune` call.

Everything a caller can get wrong (strategy, epochs, learning-rate grid, seeds, batch size, input size,
backbone learning-rate scale, output folder, dataset reference) is checked here into a :class:`_Plan`
before any data or weights are touched; apart from the run itself (``service/pipeline/finetune/finetune.py``)
so that the table of defaults and the wording of every refusal are in one place.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from service.errors import InvalidFinetuneConfig
from service.pipeline.data.refs import DatasetRef, parse_dataset_ref
from service.pipeline.finetune.training import TrainConfig

__all__ = ["STRATEGY_DEFAULTS", "StrategyDefaults"]

_MIN_INPUT_SIZE = 8


@dataclass(frozen=True)
class StrategyDefaults:
    """The recipe of one strategy (see the table in the docstring of :mod:`service.pipeline.finetune.finetune`).

    Attributes
    ----------
    lr_grid : tuple of float
        Head learning rates tried, chosen on the validation split.
    epochs : int
    backbone_lr_scale : float
        Trained backbone parameters learn at ``lr * backbone_lr_scale``; 0 freezes the backbone. A
        ``random:<arch>`` backbone gets 1.0 instead of 0.1 unless the caller sets it.
    trained_block_fraction : float
        Share of the backbone's blocks that train (the last ones): 1 for ``full``, 0 for ``linear``.
    augment : bool
        Random translation during training (``linear`` trains on features extracted once, so never).
    warmup_epochs, optimizer, momentum, weight_decay, label_smoothing
        As :class:`~service.pipeline.finetune.training.TrainConfig`.
    """

    lr_grid: tuple[float, ...]
    epochs: int
    backbone_lr_scale: float
    trained_block_fraction: float
    augment: bool = True
    warmup_epochs: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0


#: One row per strategy; small grids and few epochs so a fine-tune of a small CNN takes seconds to minutes.
STRATEGY_DEFAULTS: Mapping[str, StrategyDefaults] = MappingProxyType(
    {
        "linear": StrategyDefaults(
            lr_grid=(0.1, 0.3), epochs=30, backbone_lr_scale=0.0, trained_block_fraction=0.0, augment=False
        ),
        "partial": StrategyDefaults(
            lr_grid=(0.01, 0.03), epochs=10, backbone_lr_scale=0.1, trained_block_fraction=0.25, warmup_epochs=1.0
        ),
        "full": StrategyDefaults(
            lr_grid=(0.01, 0.03), epochs=10, backbone_lr_scale=0.1, trained_block_fraction=1.0, warmup_epochs=1.0
        ),
    }
)


@dataclass(frozen=True)
class _Plan:
    """Validated arguments of one :func:`~service.pipeline.finetune.finetune.finetune` call."""

    strategy: str
    defaults: StrategyDefaults
    epochs: int
    lr_grid: tuple[float, ...]
    seeds: tuple[int, ...]
    batch_size: int
    backbone_lr_scale: float
    input_size: tuple[int, int] | None
    #: ``partial`` only: freeze the first N stages (timm's feature_info) instead of the default block fraction.
    freeze_stages: int | None = None

    @property
    def runs(self) -> int:
        return len(self.lr_grid) + len(self.seeds) - 1

    def train_config(self, lr: float, seed: int, *, backbone_frozen: bool = False) -> TrainConfig:
        d = self.defaults
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=lr,
            backbone_lr_scale=0.0 if backbone_frozen else self.backbone_lr_scale,
            weight_decay=d.weight_decay,
            momentum=d.momentum,
            optimizer=d.optimizer,
            warmup_epochs=min(d.warmup_epochs, self.epochs / 2),
            label_smoothing=d.label_smoothing,
            augment=d.augment,
            seed=seed,
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_arguments(
    strategy: str,
    epochs: int | None,
    lr_grid: Sequence[float] | None,
    seeds: Sequence[int],
    batch_size: int,
    input_size: int | Sequence[int] | None,
    backbone_lr_scale: float | None,
    max_per_class: int | None,
    freeze_stages: int | None = None,
) -> _Plan:
    """Everything a caller can get wrong, checked before any data or weights are touched."""
    if strategy not in STRATEGY_DEFAULTS:
        raise InvalidFinetuneConfig(
            f"unknown fine-tuning strategy {strategy!r}; use one of {', '.join(STRATEGY_DEFAULTS)}, advised "
            "(linear: frozen backbone + new head; partial: last ~25% of the blocks + head; full: everything; "
            "advised: what the layer scores advise)",
            strategy=str(strategy),
        )
    defaults = STRATEGY_DEFAULTS[strategy]
    if epochs is None:
        epochs = defaults.epochs
    if not _is_int(epochs) or epochs < 1:
        raise InvalidFinetuneConfig(f"epochs must be a positive integer, got {epochs!r}; e.g. --epochs 10")
    if lr_grid is None:
        grid = defaults.lr_grid
    else:
        if isinstance(lr_grid, str | bytes) or not isinstance(lr_grid, Sequence):
            raise InvalidFinetuneConfig(f"lr_grid must be a list of learning rates, got {lr_grid!r}")
        grid = tuple(dict.fromkeys(float(lr) for lr in lr_grid))  # duplicates would only repeat a run
        if not grid:
            raise InvalidFinetuneConfig(
                "the learning-rate grid is empty; give at least one learning rate (e.g. --lr 0.01 --lr 0.03), or "
                f"leave it out for the {strategy} default {list(defaults.lr_grid)}"
            )
        bad = [lr for lr in grid if not math.isfinite(lr) or lr <= 0]
        if bad:
            raise InvalidFinetuneConfig(f"learning rates must be positive and finite, got {bad}")
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence):
        raise InvalidFinetuneConfig(f"seeds must be a list of integers, got {seeds!r}")
    if not all(_is_int(s) for s in seeds):
        raise InvalidFinetuneConfig(f"seeds must be integers, got {list(seeds)!r}")
    unique_seeds = tuple(dict.fromkeys(int(s) for s in seeds))
    if not unique_seeds:
        raise InvalidFinetuneConfig("no seed given; pass at least one seed (e.g. --seed 0), or leave it out for 0")
    if not _is_int(batch_size) or batch_size < 1:
        raise InvalidFinetuneConfig(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_per_class is not None and (not _is_int(max_per_class) or max_per_class < 1):
        raise InvalidFinetuneConfig(f"max_per_class must be a positive integer or None, got {max_per_class!r}")
    size = _check_input_size(input_size)
    if backbone_lr_scale is None:
        scale = defaults.backbone_lr_scale
    else:
        scale = float(backbone_lr_scale)
        if not math.isfinite(scale) or scale < 0:
            raise InvalidFinetuneConfig(f"backbone_lr_scale must be >= 0 and finite, got {backbone_lr_scale!r}")
        if strategy == "linear" and scale != 0:
            raise InvalidFinetuneConfig(
                "the linear strategy freezes the backbone, so backbone_lr_scale does not apply; use partial or full"
            )
        if strategy != "linear" and scale == 0:
            raise InvalidFinetuneConfig(
                f"backbone_lr_scale=0 freezes the backbone; use strategy 'linear' for that, not {strategy!r}"
            )
    if freeze_stages is not None:
        if strategy != "partial":
            raise InvalidFinetuneConfig(
                f"freeze_stages says how much of the backbone the partial strategy freezes; use strategy partial, "
                f"not {strategy!r} (linear freezes everything, full nothing)"
            )
        if not _is_int(freeze_stages) or freeze_stages < 0:
            raise InvalidFinetuneConfig(f"freeze_stages must be a non-negative integer, got {freeze_stages!r}")
    return _Plan(
        strategy, defaults, int(epochs), grid, unique_seeds, int(batch_size), scale, size,
        None if freeze_stages is None else int(freeze_stages),
    )  # fmt: skip


def _check_input_size(input_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    size: tuple[Any, ...] = ()
    if _is_int(input_size):
        size = (input_size, input_size)
    elif isinstance(input_size, Sequence) and not isinstance(input_size, str | bytes):
        size = tuple(input_size)[1:] if len(input_size) == 3 and input_size[0] == 3 else tuple(input_size)
    if len(size) != 2 or not all(_is_int(v) for v in size) or min(size) < _MIN_INPUT_SIZE:
        raise InvalidFinetuneConfig(
            f"input_size must be a side length >= {_MIN_INPUT_SIZE} (or [height, width]), got {input_size!r}"
        )
    return int(size[0]), int(size[1])


def _check_output_dir(output_dir: str | Path | None) -> Path | None:
    """Fail before training, not after: an existing folder is replaced only if it is an earlier output."""
    if output_dir is None:
        return None
    out = Path(output_dir).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise InvalidFinetuneConfig(
                f"output path {str(output_dir)!r} exists and is not a directory; choose a folder"
            )
        if any(out.iterdir()) and not (out / "card.json").is_file():
            raise InvalidFinetuneConfig(
                f"output folder {str(output_dir)!r} is not empty and holds no earlier fine-tuning (card.json); "
                "choose a new or empty folder"
            )
    return out


def _as_ref(dataset: DatasetRef | str | os.PathLike[str]) -> DatasetRef:
    if isinstance(dataset, DatasetRef):
        return dataset
    if isinstance(dataset, str):
        return parse_dataset_ref(dataset)
    if isinstance(dataset, os.PathLike):
        # a Path is a path, never "builtin:"/"#split" text (as load_dataset treats it)
        path = os.fspath(dataset)
        return DatasetRef("manifest" if path.lower().endswith((".csv", ".jsonl")) else "folder", path=path)
    raise TypeError(f"dataset must be a DatasetRef, a string or a path, got {type(dataset).__name__}")
