"""Fine-tune a backbone on a labelled dataset: the ground truth the training-free scores predict.

Three strategies, as the transferability literature uses them (Kornblith et al., "Do Better ImageNet
Models Transfer Better?", CVPR 2019; You et al., LogME, ICML 2021; Lee et al., "Surgical
Fine-Tuning", ICLR 2023). Their defaults are one table, :data:`STRATEGY_DEFAULTS`:

==========  ============================================  ===============  ======  ==========  =======
strategy    what trains                                   head lr grid     epochs  backbone lr augment
==========  ============================================  ===============  ======  ==========  =======
``linear``  a new linear head on frozen features           0.1, 0.3         30      (frozen)    no
``partial`` the last ~25% of the blocks, then the head     0.01, 0.03       10      lr x 0.1    yes
``full``    every parameter                               0.01, 0.03       10      lr x 0.1    yes
==========  ============================================  ===============  ======  ==========  =======

All three use :func:`service.pipeline.finetune.training.train_classifier`: SGD with Nesterov momentum 0.9,
weight decay 5e-4 (not on biases and norms), batch 128, cosine decay stepped per batch (``partial`` and
``full`` after one warmup epoch), random-translation augmentation, no flips.

* ``linear`` extracts the backbone's pre-logit features once (eval mode, no augmentation, as in the
  linear-evaluation protocol), standardises them with the training split's mean and standard deviation,
  and trains the new head on them with the same mini-batch SGD recipe (not L-BFGS, so ``lr`` means the
  same thing in every strategy; 30 epochs cost little on cached features). The standardisation is then
  folded into the head's weights (``W' = W / s``, ``b' = b - W' m``), so the saved model is the plain
  backbone plus its head. A model whose classifier is not a plain linear layer on the pre-logit features
  (distilled or convolutional heads) trains its head through the frozen backbone instead.
* ``partial`` groups the parameters with timm's ``model.group_matcher(coarse=False)`` (stem, blocks in
  order, then everything after the last block: final norm and head), trains the last
  ``ceil(0.25 * blocks)`` blocks (at least one) and everything after them, and freezes the rest:
  ``requires_grad`` off and their BatchNorm layers in eval mode, so those blocks are bit-identical after
  training (weights and running statistics).
* ``full`` trains everything; the backbone at ``lr * backbone_lr_scale`` (0.1: the pretrained weights
  move less than the new head). An untrained ``random:<arch>`` backbone has nothing to preserve and
  gets 1.0 unless ``backbone_lr_scale`` is given (also for ``partial``). With a scale of 0.1 its
  BatchNorm layers train on batch statistics that its running statistics do not match, and it
  predicts one class in eval mode.

The new head is ``model.reset_classifier(n_classes)``, initialised under ``torch.manual_seed(seed)``.
Preprocessing is the backbone's timm data config (eval geometry, then its mean/std); ``input_size``
overrides its input resolution, e.g. 32 to train on small images quickly on a CPU (models with a fixed
input size, such as ViTs, are resized with timm's ``set_input_size``).

Splits: the dataset's ``train`` split trains, ``val`` (``valid``, ``validation``) picks the learning
rate and the best seed, ``test`` gives the reported accuracy. A missing ``val`` or ``test`` split is
carved from ``train``: per class, the images are ordered by the sha256 of their decoded pixels (content,
not listing order, so renaming or re-listing files does not move them), ``test`` takes the first
``round(0.2 n)`` and ``val`` the next ``round(0.2 n)`` (at least one each from classes of 3 or more
images); the result says which splits were carved. Classes are mapped by name: a ``val``/``test`` class
that has no ``train`` images is an error; ``max_per_class`` caps every split (a seeded sample, seed 0),
before any carving. A ``#train`` suffix on the dataset is accepted; ``#val`` and ``#test`` are not (the
splits are chosen here).

Learning rate and seeds: every learning rate of the grid is trained with ``seeds[0]`` and scored on
``val``; the best (highest val accuracy, then lowest val loss, then grid order) is kept, the other seeds
train at it, and each seed's model is evaluated on ``test``. ``seed`` seeds the head's initialisation,
the shuffling and the augmentation; the same seed gives the same result on the CPU.

Result schema (``schema_version`` 1: :func:`finetune`'s own document; the engine,
:func:`service.pipeline.engine.finetune`, adds ``kind``, ``request`` and ``environment`` and validates it
into :class:`service.contract.FinetuneResult`, schema_version 2)::

    {
      "schema_version": 1,
      "dataset": {"ref", "n_classes", "classes",
                  "splits": {"train" | "val" | "test": {"n_images", "n_failed", "source": "split" | "carved",
                                                        "fingerprint"}},   # train: "carved" if it lost images
                  "carved": ["val", "test"],      # the splits carved from train ([] when all exist)
                  "fingerprint"},                 # of the train split as listed (before carving)
      "class_map": {class name: index},
      "backbone": LoadedBackbone.describe() of the base backbone,
      "strategy": "linear" | "partial" | "full",
      "config": {"epochs", "batch_size", "optimizer", "momentum", "weight_decay", "warmup_epochs",
                 "label_smoothing", "augment", "backbone_lr_scale", "input_size": [3, H, W],
                 "data_config", "max_per_class", "device", "linear_on_features": bool,
                 "trainable_parameters", "total_parameters",
                 "partial": {"blocks", "trained_blocks", "first_trained"} | null},
      "lr_grid": [float],
      "val_accuracy_by_lr": {"0.01": float, ...},  # seeds[0]; keys are the lrs formatted with "g"
      "chosen_lr": float,
      "seeds": [int],
      "test_accuracy": {"mean", "std", "per_seed": [float]},   # std: population std over the seeds
      "val_accuracy": {"mean", "std", "per_seed": [float]},    # at the chosen lr
      "best_seed": int,                                        # best val accuracy; its model is saved
      "per_class_accuracy": {class: float | null},             # test, mean over seeds; null: not in test
      "confusion_matrix": [[int]],                             # test, summed over seeds; rows = true class
      "chance_accuracy": float,                                # test share of its most frequent class
      "weights": {"path", "backbone_id", "sha256", "card"} | null,  # null without output_dir
      "seconds": {"load", "train", "eval", "total"},
      "images_per_second": float                               # training images (x epochs) per second
    }

Output folder (``output_dir``): the best seed's model as ``model.safetensors`` + timm's ``config.json``
(architecture, ``num_classes`` = the target classes, ``label_names``, ``model_args`` and a
``pretrained_cfg`` holding the input size, mean and std used), plus ``card.json`` and ``README.md``
(base backbone and its weights, dataset reference and fingerprints, strategy, lr, epochs, seed, test
accuracy, per-class accuracy, versions). The folder is written next to the target and renamed into
place; an existing folder is replaced only if it holds an earlier fine-tuning (a ``card.json``).
``load_backbone("local-dir:<output_dir>")`` loads it and reproduces the reported test accuracy of
that seed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import save_file

from service.atomic import replace_dir
from service.errors import InvalidDataset, InvalidFinetuneConfig, TooFewSamplesPerClass
from service.pipeline.data.datasets import (
    _SPLIT_ALIASES,
    Dataset,
    DatasetRef,
    ImageDecodeError,
    ImageItem,
    load_dataset,
    parse_dataset_ref,
)
from service.pipeline.features.extract import select_device
from service.pipeline.finetune.training import (
    EvalResult,
    TensorSplit,
    TrainConfig,
    TrainHistory,
    TrainingCancelled,
    TrainProgress,
    evaluate,
    load_split_tensors,
    train_classifier,
)
from service.pipeline.models._timm import timm_api
from service.pipeline.models.backbones import LoadedBackbone, load_backbone
from service.pipeline.models.resolve import file_sha256
from service.pipeline.models.spec import BackboneSpec

__all__ = [
    "SCHEMA_VERSION",
    "STRATEGY_DEFAULTS",
    "FinetuneProgress",
    "StrategyDefaults",
    "finetune",
    "partial_trainable_parameters",
]

_logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CARD_VERSION = 1
#: Share of a class carved into each missing split.
CARVE_FRACTION = 0.2
_MIN_INPUT_SIZE = 8
_EVAL_BATCH = 256


@dataclass(frozen=True)
class StrategyDefaults:
    """The recipe of one strategy (see the table in the module docstring).

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
class FinetuneProgress:
    """Progress of :func:`finetune`, for bars in the CLI and events in the service.

    ``stage`` is ``"load"`` (listing, loading the backbone, decoding a split: ``step``/``steps`` count
    the splits), ``"train"`` (after every batch of run ``run`` of ``runs``) or ``"eval"``. ``lr``,
    ``seed``, ``epoch`` and ``loss`` are ``None`` outside training.
    """

    stage: Literal["load", "train", "eval"]
    lr: float | None
    seed: int | None
    epoch: int | None
    epochs: int
    step: int
    steps: int
    loss: float | None
    run: int
    runs: int


ProgressCallback = Callable[[FinetuneProgress], None]


# ------------------------------------------------------------------------------------------- arguments


@dataclass(frozen=True)
class _Plan:
    """Validated arguments of one :func:`finetune` call."""

    strategy: str
    defaults: StrategyDefaults
    epochs: int
    lr_grid: tuple[float, ...]
    seeds: tuple[int, ...]
    batch_size: int
    backbone_lr_scale: float
    input_size: tuple[int, int] | None

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
) -> _Plan:
    """Everything a caller can get wrong, checked before any data or weights are touched."""
    if strategy not in STRATEGY_DEFAULTS:
        raise InvalidFinetuneConfig(
            f"unknown fine-tuning strategy {strategy!r}; use one of {', '.join(STRATEGY_DEFAULTS)} "
            "(linear: frozen backbone + new head; partial: last ~25% of the blocks + head; full: everything)",
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
    return _Plan(strategy, defaults, int(epochs), grid, unique_seeds, int(batch_size), scale, size)


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


# ----------------------------------------------------------------------------------------------- splits


@dataclass
class _Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    carved: list[str]
    listed_train_fingerprint: str


def _canonical_split(name: str | None) -> str | None:
    return None if name is None else _SPLIT_ALIASES.get(name.lower())


def _load_splits(
    ref: DatasetRef,
    *,
    roots: Sequence[str | Path] | None,
    max_per_class: int | None,
    builtin_dir: str | Path | None,
) -> _Splits:
    """Load train (and val/test when the dataset has them), carve what is missing, align the class maps."""
    if ref.split is not None and _canonical_split(ref.split) in ("val", "test"):
        raise InvalidDataset(
            f"fine-tuning trains on the train split and picks val/test itself; drop '#{ref.split}' from the dataset",
            split=ref.split,
        )
    load = functools.partial(
        load_dataset, roots=roots, max_per_class=max_per_class, seed=0, min_per_class=1, builtin_dir=builtin_dir
    )
    train = load(ref)
    train_split = train.ref.split
    present = {_canonical_split(s): s for s in train.splits if s != train_split}
    others: dict[str, Dataset] = {}
    for role in ("val", "test"):
        if role in present:
            others[role] = _align_classes(load(dataclasses.replace(ref, split=present[role])), train.classes, role)
    listed_fingerprint = train.fingerprint
    carved = [role for role in ("val", "test") if role not in others]
    if carved:
        parts = _carve(train, carved)
        train = parts.pop("train")
        others.update(parts)
    return _Splits(train, others["val"], others["test"], carved, listed_fingerprint)


def _align_classes(split: Dataset, classes: list[str], role: str) -> Dataset:
    """Relabel ``split`` to the train split's class indices (by name)."""
    if split.classes == classes:
        return split
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in split.classes if name not in index]
    if unknown:
        raise InvalidDataset(
            f"the {role} split has class(es) {unknown[:10]} that the train split does not have; every class needs "
            "train images: add them to train or remove the class from the other splits",
            classes=unknown,
        )
    items = sorted(
        (ImageItem(source=item.source, label=index[split.classes[item.label]]) for item in split.items),
        key=lambda item: (item.label, item.source),
    )
    return dataclasses.replace(split, classes=list(classes), items=items)


def _content_key(dataset: Dataset, index: int) -> str:
    """sha256 of the decoded pixels (size and mode included); undecodable images sort last, by source."""
    try:
        image = dataset.open_image(index)
    except ImageDecodeError:
        return "~" + dataset.items[index].source
    digest = hashlib.sha256(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _carve(train: Dataset, roles: Sequence[str]) -> dict[str, Dataset]:
    """Deterministic stratified split of ``train`` into train + ``roles`` (``test`` first, then ``val``)."""
    by_class: dict[int, list[tuple[str, str, int]]] = {}
    for i, item in enumerate(train.items):
        by_class.setdefault(item.label, []).append((_content_key(train, i), item.source, i))
    chosen: dict[str, list[int]] = {role: [] for role in ("train", *roles)}
    order = [role for role in ("test", "val") if role in roles]
    for label in sorted(by_class):
        members = sorted(by_class[label])
        n = len(members)
        k = int(math.floor(CARVE_FRACTION * n + 0.5))
        if k == 0 and n >= len(order) + 1:
            k = 1  # every class of 3+ images appears in each carved split
        k = min(k, (n - 1) // len(order))  # at least one training image per class
        start = 0
        for role in order:
            chosen[role].extend(i for _, _, i in members[start : start + k])
            start += k
        chosen["train"].extend(i for _, _, i in members[start:])
    parts: dict[str, Dataset] = {}
    for role, indices in chosen.items():
        if not indices:
            raise TooFewSamplesPerClass(
                f"cannot carve a {role} split from the train split: its classes are too small ({len(train)} images, "
                f"{len(train.classes)} classes); add images (3+ per class) or provide {role}/ in the dataset",
                split=role,
            )
        items = sorted((train.items[i] for i in indices), key=lambda item: (item.label, item.source))
        fingerprint = hashlib.sha256(f"{train.fingerprint}:carved:{role}:{CARVE_FRACTION}".encode()).hexdigest()
        parts[role] = dataclasses.replace(train, items=items, fingerprint=fingerprint)
    return parts


# ----------------------------------------------------------------------------------------------- models


def _prepare_data_config(loaded: LoadedBackbone, input_size: tuple[int, int] | None) -> dict[str, Any]:
    """The backbone's data config with ``input_size`` applied; resizes fixed-size models (ViTs) to match."""
    config = dict(loaded.data_config)
    if input_size is None:
        return config
    config["input_size"] = (3, *input_size)
    model = loaded.model
    fixed = bool(getattr(model, "pretrained_cfg", {}).get("fixed_input_size", False))
    if fixed and tuple(loaded.data_config["input_size"][1:]) != input_size:
        set_input_size = getattr(model, "set_input_size", None)
        if set_input_size is None:
            raise InvalidFinetuneConfig(
                f"{loaded.spec.id} has a fixed input size {tuple(loaded.data_config['input_size'][1:])} and cannot "
                "be resized; leave input_size out",
            )
        set_input_size(img_size=input_size)
    return config


def _fresh_model(base: torch.nn.Module, n_classes: int, seed: int) -> torch.nn.Module:
    """A copy of the backbone with a new head of ``n_classes`` outputs, initialised from ``seed``."""
    model = copy.deepcopy(base)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        timm_api(model).reset_classifier(n_classes)
    return model.eval()


def _head_parameter_names(model: torch.nn.Module) -> set[str]:
    """Parameters of ``model.get_classifier()`` (a tuple of heads for distilled models)."""
    classifier = timm_api(model).get_classifier()
    heads = classifier if isinstance(classifier, tuple | list) else (classifier,)
    ids = {id(p) for head in heads if isinstance(head, torch.nn.Module) for p in head.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def partial_trainable_parameters(model: torch.nn.Module, fraction: float = 0.25) -> tuple[set[str], dict[str, Any]]:
    """Parameter names the ``partial`` strategy trains: the last ``ceil(fraction * blocks)`` blocks onward.

    timm's ``group_matcher(coarse=False)`` orders the parameters as stem, blocks, then everything after
    the last block (final norm, head); the first group is the stem, the last one the head's.

    Returns
    -------
    names, info
        ``info``: ``{"blocks", "trained_blocks", "first_trained"}`` for the result.

    Raises
    ------
    InvalidFinetuneConfig
        The model has no ``group_matcher`` or fewer than one block.
    """
    from timm.models import group_parameters

    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        raise InvalidFinetuneConfig(
            f"{type(model).__name__} does not describe its blocks (no group_matcher); use strategy full or linear"
        )
    groups = group_parameters(model, matcher(coarse=False))
    ordinals = sorted(groups)
    blocks = ordinals[1:-1]
    if not blocks:
        raise InvalidFinetuneConfig(
            f"{type(model).__name__}: timm groups its parameters into {len(ordinals)} group(s), no blocks between "
            "stem and head; use strategy full or linear"
        )
    k = min(len(blocks), max(1, math.ceil(fraction * len(blocks))))
    trained = blocks[-k:] + [ordinals[-1]]
    names = {name for group in trained for name in groups[group]} | _head_parameter_names(model)
    info = {"blocks": len(blocks), "trained_blocks": k, "first_trained": groups[blocks[-k]][0]}
    return names, info


def _plain_linear_head(model: torch.nn.Module, sample: torch.Tensor) -> bool:
    """Whether logits are ``get_classifier()(pre_logits)``, so the head can train on extracted features."""
    timm_model = timm_api(model)
    head = timm_model.get_classifier()
    if type(head) is not torch.nn.Linear or head.bias is None:
        return False
    with torch.inference_mode():
        feats = timm_model.forward_features(sample)
        expected = timm_model.forward_head(feats)
        got = head(timm_model.forward_head(feats, pre_logits=True))
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


class _FeatureHead(torch.nn.Module):
    """The head alone, on features stored as ``(N, D, 1, 1)`` so :func:`train_classifier` can batch them."""

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.head = head
        self.num_classes = head.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))

    def get_classifier(self) -> torch.nn.Module:
        return self.head


@dataclass
class _Features:
    """Pre-logit features of one split, and the split they came from."""

    raw: torch.Tensor  # (N, D) float32
    split: TensorSplit

    def as_split(self, center: torch.Tensor, scale: torch.Tensor) -> TensorSplit:
        z = (self.raw - center) / scale
        return dataclasses.replace(self.split, images=z[:, :, None, None].contiguous(), n_failed=0)


def _extract(
    model: torch.nn.Module,
    split: TensorSplit,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    cancel: Callable[[], bool] | None,
) -> torch.Tensor:
    """Pre-logit features ``(N, D)`` in eval mode, normalised exactly as training normalises."""
    mean_t = torch.tensor([m * 255.0 for m in mean], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor([s * 255.0 for s in std], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    model.to(device).eval()
    timm_model = timm_api(model)
    out = []
    with torch.inference_mode():
        for start in range(0, len(split), _EVAL_BATCH):
            _check_cancel(cancel)
            x = (split.images[start : start + _EVAL_BATCH].to(device, torch.float32) - mean_t) / std_t
            out.append(timm_model.forward_head(timm_model.forward_features(x), pre_logits=True).float().cpu())
    model.to("cpu")  # the base model stays on the CPU; each run copies it
    return torch.cat(out) if out else torch.zeros((0, 0))


def _fold_standardisation(head: torch.nn.Linear, center: torch.Tensor, scale: torch.Tensor) -> None:
    """Make ``head(x)`` equal ``trained_head((x - center) / scale)``: ``W' = W / s``, ``b' = b - W' center``."""
    assert head.bias is not None  # _plain_linear_head checked it
    with torch.no_grad():
        device = head.weight.device
        weight = head.weight.double() / scale.to(device, torch.float64)[None, :]
        bias = head.bias.double() - weight @ center.to(device, torch.float64)
        head.weight.copy_(weight.to(head.weight.dtype))
        head.bias.copy_(bias.to(head.bias.dtype))


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise TrainingCancelled("fine-tuning cancelled")


# -------------------------------------------------------------------------------------------- finetune


@dataclass
class _Run:
    lr: float
    seed: int
    model: torch.nn.Module
    history: TrainHistory
    val: EvalResult
    test: EvalResult | None = None


def finetune(
    dataset: DatasetRef | str | os.PathLike[str],
    backbone: BackboneSpec | str,
    *,
    strategy: str = "full",
    epochs: int | None = None,
    lr_grid: Sequence[float] | None = None,
    seeds: Sequence[int] = (0,),
    batch_size: int = 128,
    max_per_class: int | None = None,
    roots: Sequence[str | Path] | None = None,
    builtin_dir: str | Path | None = None,
    weights_dirs: Sequence[Path] = (),
    hf_cache_dir: Path | None = None,
    output_dir: str | Path | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    input_size: int | Sequence[int] | None = None,
    backbone_lr_scale: float | None = None,
    allowlist: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``backbone`` on ``dataset`` and report its test accuracy (schema: module docstring).

    Parameters
    ----------
    dataset : DatasetRef, str or Path
        ``builtin:NAME``, a folder (``train/``, ``val/``, ``test/`` splits or flat), a manifest or
        ``hf:PATH``; missing val/test splits are carved from train.
    backbone : BackboneSpec or str
        Any id :func:`~service.pipeline.models.backbones.load_backbone` accepts.
    strategy : {"linear", "partial", "full"}
    epochs : int, optional
        Default: the strategy's (:data:`STRATEGY_DEFAULTS`).
    lr_grid : sequence of float, optional
        Head learning rates tried on the validation split with ``seeds[0]``; default: the strategy's.
    seeds : sequence of int
        One run per seed at the chosen learning rate; the test accuracy is their mean and std.
    batch_size : int
    max_per_class : int, optional
        Cap every split at this many images per class (seeded sample) for a quick run.
    roots, builtin_dir
        As :func:`~service.pipeline.data.datasets.load_dataset`.
    weights_dirs, hf_cache_dir, allowlist
        As :func:`~service.pipeline.models.backbones.load_backbone`.
    output_dir : str or Path, optional
        Save the best seed's model there (loadable as ``local-dir:<output_dir>``).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` ...
    progress : callable, optional
        Receives :class:`FinetuneProgress` events.
    cancel : callable, optional
        Checked before every batch; True raises :class:`~service.pipeline.finetune.training.TrainingCancelled`.
    input_size : int or (int, int), optional
        Train and test at this resolution instead of the backbone's (smaller is faster on a CPU).
    backbone_lr_scale : float, optional
        ``partial``/``full``: the backbone's learning rate relative to the head's (default 0.1; 1.0 for
        an untrained ``random:<arch>`` backbone).

    Raises
    ------
    InvalidFinetuneConfig
        Unknown strategy, empty or non-positive learning-rate grid, non-positive epochs, no seed, an
        output folder that would overwrite something else.
    DatasetError, BackboneError
        From loading the dataset splits and the backbone.
    TrainingCancelled
        ``cancel()`` returned True.
    """
    started = time.perf_counter()
    plan = _check_arguments(strategy, epochs, lr_grid, seeds, batch_size, input_size, backbone_lr_scale, max_per_class)
    out_dir = _check_output_dir(output_dir)
    torch_device = select_device(device)
    report = _Reporter(progress, plan)

    ref = _as_ref(dataset)
    report.load(0)
    splits = _load_splits(ref, roots=roots, max_per_class=max_per_class, builtin_dir=builtin_dir)
    report.load(1)
    loaded = load_backbone(backbone, weights_dirs=weights_dirs, hf_cache_dir=hf_cache_dir, allowlist=allowlist)
    if backbone_lr_scale is None and loaded.spec.kind == "random" and plan.backbone_lr_scale > 0:
        # an untrained backbone has nothing to preserve: it learns at the head's rate
        plan = dataclasses.replace(plan, backbone_lr_scale=1.0)
    data_config = _prepare_data_config(loaded, plan.input_size)
    tensors: dict[str, TensorSplit] = {}
    for step, role in enumerate(("train", "val", "test"), start=2):
        report.load(step)
        tensors[role] = load_split_tensors(getattr(splits, role), data_config)
    _check_decoded(tensors, splits.train.classes)
    load_seconds = time.perf_counter() - started

    classes = splits.train.classes
    mean, std = data_config["mean"], data_config["std"]
    trainer = _Trainer(plan, loaded.model, len(classes), tensors, mean, std, torch_device, report, cancel)

    # learning rate: seeds[0] on every lr of the grid, scored on val
    best: _Run | None = None
    val_by_lr: dict[float, float] = {}
    for lr in plan.lr_grid:
        run = trainer.run(lr, plan.seeds[0])
        val_by_lr[lr] = run.val.accuracy
        if best is None or _better(run, best):
            best = run
        del run
    assert best is not None
    chosen_lr = best.lr

    # seeds: the first is already trained at the chosen lr; evaluate every seed on test
    runs: list[_Run] = []
    best_seed_run: _Run | None = None
    for seed in plan.seeds:
        run = best if seed == plan.seeds[0] else trainer.run(chosen_lr, seed)
        run.test = trainer.evaluate(run.model, "test", run)
        if best_seed_run is None or _better(run, best_seed_run):
            if best_seed_run is not None:
                best_seed_run.model = None  # type: ignore[assignment]  # free it: only the best seed is saved
            best_seed_run = run
        else:
            run.model = None  # type: ignore[assignment]  # free it: only the best seed is saved
        runs.append(run)
    assert best_seed_run is not None

    result = _result(
        plan=plan,
        splits=splits,
        tensors=tensors,
        loaded=loaded,
        data_config=data_config,
        trainer=trainer,
        val_by_lr=val_by_lr,
        chosen_lr=chosen_lr,
        runs=runs,
        best_seed=best_seed_run.seed,
        max_per_class=max_per_class,
        device=torch_device,
    )
    result["weights"] = None
    if out_dir is not None:
        card = _card(result, best_seed_run, splits)
        result["weights"] = _save(best_seed_run.model, out_dir, data_config=data_config, classes=classes, card=card)
    total = time.perf_counter() - started
    result["seconds"] = {
        "load": load_seconds,
        "train": trainer.train_seconds,
        "eval": trainer.eval_seconds,
        "total": total,
    }
    return result


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


def _better(run: _Run, other: _Run) -> bool:
    """Higher val accuracy, then lower val loss; a tie keeps ``other`` (the earlier lr or seed)."""
    return (run.val.accuracy, -run.val.loss) > (other.val.accuracy, -other.val.loss)


def _check_decoded(tensors: Mapping[str, TensorSplit], classes: Sequence[str]) -> None:
    counts = torch.bincount(tensors["train"].labels, minlength=len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise TooFewSamplesPerClass(
            f"class(es) {empty[:10]} have no decodable train image ({tensors['train'].n_failed} undecodable); "
            "replace the corrupt files or add images",
            classes=empty,
        )
    for role in ("val", "test"):
        if len(tensors[role]) == 0:
            raise TooFewSamplesPerClass(f"the {role} split has no decodable image; add images to it", split=role)


class _Reporter:
    """Turns training progress into :class:`FinetuneProgress` events."""

    def __init__(self, callback: ProgressCallback | None, plan: _Plan) -> None:
        self.callback = callback
        self.plan = plan
        self.run = 0

    def load(self, step: int) -> None:
        if self.callback is not None:
            self.callback(
                FinetuneProgress("load", None, None, None, self.plan.epochs, step, 5, None, 0, self.plan.runs)
            )

    def start_run(self) -> None:
        self.run += 1

    def train(self, lr: float, seed: int) -> Callable[[TrainProgress], None] | None:
        if self.callback is None:
            return None
        callback, run, runs = self.callback, self.run, self.plan.runs

        def on_batch(p: TrainProgress) -> None:
            callback(FinetuneProgress("train", lr, seed, p.epoch, p.epochs, p.step, p.steps, p.loss, run, runs))

        return on_batch

    def eval(self, lr: float, seed: int) -> None:
        if self.callback is not None:
            epochs = self.plan.epochs
            self.callback(FinetuneProgress("eval", lr, seed, None, epochs, 0, 0, None, self.run, self.plan.runs))


class _Trainer:
    """Trains one (lr, seed) run of the plan's strategy and evaluates it."""

    def __init__(
        self,
        plan: _Plan,
        base: torch.nn.Module,
        n_classes: int,
        tensors: Mapping[str, TensorSplit],
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        report: _Reporter,
        cancel: Callable[[], bool] | None,
    ) -> None:
        self.plan, self.base, self.n_classes, self.tensors = plan, base, n_classes, tensors
        self.mean, self.std, self.device, self.report, self.cancel = mean, std, device, report, cancel
        self.train_seconds = self.eval_seconds = 0.0
        self.images_trained = 0
        self.partial_info: dict[str, Any] | None = None
        self.trainable_parameters = 0
        probe = _fresh_model(base, n_classes, 0)
        self.total_parameters = sum(p.numel() for p in probe.parameters())
        self.trainable: set[str] | None = None
        self.head_names = _head_parameter_names(probe)
        if plan.strategy == "partial":
            self.trainable, self.partial_info = partial_trainable_parameters(
                probe, plan.defaults.trained_block_fraction
            )
        elif plan.strategy == "linear":
            self.trainable = self.head_names
        self.trainable_parameters = sum(
            p.numel() for name, p in probe.named_parameters() if self.trainable is None or name in self.trainable
        )
        self.on_features = plan.strategy == "linear" and _plain_linear_head(
            probe.eval(), tensors["train"].images[:2].float()
        )
        self.features: dict[str, _Features] = {}
        self._center = self._scale = torch.zeros(0)

    def _ensure_features(self) -> None:
        """Extract train/val features once (linear strategy); their time counts as training."""
        if self.features:
            return
        began = time.perf_counter()
        for role in ("train", "val"):
            raw = _extract(self.base, self.tensors[role], self.mean, self.std, self.device, self.cancel)
            self.features[role] = _Features(raw, self.tensors[role])
        train = self.features["train"].raw.double()
        center, spread = train.mean(0), train.std(0, correction=0)
        # constant features (dead units) are only centred: dividing by ~0 would blow up val/test values
        scale = torch.where(spread > 1e-6 * max(float(spread.max()), 1e-12), spread, torch.ones_like(spread))
        self._center, self._scale = center.float(), scale.float()
        self.train_seconds += time.perf_counter() - began

    def run(self, lr: float, seed: int) -> _Run:
        self.report.start_run()
        model = _fresh_model(self.base, self.n_classes, seed)
        on_batch = self.report.train(lr, seed)
        if self.on_features:
            self._ensure_features()
            head = timm_api(model).get_classifier()
            wrapper = _FeatureHead(head)
            features = self.features["train"].as_split(self._center, self._scale)
            history = train_classifier(
                wrapper,
                features,
                self.plan.train_config(lr, seed),
                mean=[0.0] * features.images.shape[1],  # features are standardised already: identity normalisation
                std=[1.0 / 255.0] * features.images.shape[1],
                device=self.device,
                progress=on_batch,
                cancel=self.cancel,
            )
            _fold_standardisation(head, self._center, self._scale)
        else:
            trainable = self.trainable
            history = train_classifier(
                model,
                self.tensors["train"],
                self.plan.train_config(lr, seed, backbone_frozen=self.plan.strategy == "linear"),
                mean=self.mean,
                std=self.std,
                head_parameter_names=self.head_names,
                trainable=None if trainable is None else trainable.__contains__,
                device=self.device,
                progress=on_batch,
                cancel=self.cancel,
            )
        self.train_seconds += history.seconds
        self.images_trained += len(self.tensors["train"]) * len(history.epoch_loss)
        run = _Run(lr, seed, model, history, val=self.evaluate(model, "val", None, lr=lr, seed=seed))
        _logger.info("lr %g seed %d: val accuracy %.4f (loss %.4f)", lr, seed, run.val.accuracy, run.val.loss)
        return run

    def evaluate(
        self, model: torch.nn.Module, role: str, run: _Run | None, *, lr: float = 0.0, seed: int = 0
    ) -> EvalResult:
        if run is not None:
            lr, seed = run.lr, run.seed
        self.report.eval(lr, seed)
        _check_cancel(self.cancel)
        began = time.perf_counter()
        if self.on_features and role in self.features:
            # the folded head on raw features computes what the whole model computes on the images
            features = self.features[role]
            split = dataclasses.replace(features.split, images=features.raw[:, :, None, None].contiguous())
            head = _FeatureHead(timm_api(model).get_classifier()).to(self.device)
            dims = split.images.shape[1]
            result = evaluate(head, split, mean=[0.0] * dims, std=[1.0 / 255.0] * dims, device=self.device)
        else:
            model.to(self.device)
            result = evaluate(
                model, self.tensors[role], mean=self.mean, std=self.std, batch_size=_EVAL_BATCH, device=self.device
            )
        self.eval_seconds += time.perf_counter() - began
        return result


# ---------------------------------------------------------------------------------------------- result


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


# ------------------------------------------------------------------------------------------------ saving


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
