"""The built-in model zoo: small timm models trained here, offline, on the built-in source datasets.

No hub is reachable, so the product trains its own candidates. The default zoo varies architecture
(three CNN families and a ViT), source task (glyphs, textures, shapes) and training budget, and
adds untrained controls, so that transferability to the built-in targets genuinely differs between
entries and the ranking has something to find.

Each model is saved in timm's local-dir layout and resolves offline as ``zoo:<name>`` through the
weights provider ``"zoo"``, which :func:`register_zoo` binds to one zoo directory (the composition root passes
``service.catalog.zoo_dir(settings)``; every function here takes the directory from its caller)::

    <zoo_dir>/<name>/config.json        timm's HF config: architecture, num_classes, pretrained_cfg, model_args
    <zoo_dir>/<name>/model.safetensors  the state dict, including the source head (LEEP and NCE need it)
    <zoo_dir>/<name>/card.json          the model card: recipe, measured source accuracy, timings, versions
    <zoo_dir>/<name>/README.md          the same card for people

A model that does not learn its source task is a bug in its recipe: :func:`build_zoo_model` raises
:class:`~service.errors.ZooBuildFailed` unless the test accuracy on the source reaches
``max(3 x chance, chance + 0.15)`` (random-init controls are exempt: they are meant to be at chance).

Builds are deterministic on the CPU (seeded init, seeded shuffling and augmentation, fixed thread
count: the same recipe gives byte-identical ``model.safetensors``), atomic (a temp directory moved
into place with ``os.replace``), guarded by a file lock per model, and skipped when the model on disk
was built from the same recipe (``recipe_hash`` in ``card.json``).

Default zoo (``backbone-rank zoo build``), measured on the 2-core development CPU, 2 torch threads, load
average about 2 (one other light job): 11 min 27 s wall for all ten, data decoding and evaluation included
(the two controls were already built, by an earlier run of the same recipe; they take 3 s). Source accuracy
is on the source's test split (val in brackets); seconds are the whole build of the model; images/s is the
training throughput:

==========================  ======================  ============  ======  ==============  =======  ========
name                        arch                    source        epochs  source acc      seconds  images/s
==========================  ======================  ============  ======  ==============  =======  ========
latin-resnet10t             resnet10t               glyphs-latin       6  0.685 (0.673)     169.4       276
shapes-resnet10t            resnet10t               shapes            16  0.600 (0.588)     121.2       192
textures-resnet10t          resnet10t               textures           4  0.900 (0.855)      38.0       268
textures-resnet10t-short    resnet10t               textures           1  0.588 (0.590)      11.4       226
textures-resnet10t-seed1    resnet10t               textures           4  0.873 (0.890)      45.5       214
textures-regnetx-002        regnetx_002             textures          12  0.677 (0.662)      61.8       469
textures-mobilenetv3-small  mobilenetv3_small_050   textures          20  0.422 (0.435)     167.1       288
textures-vit-tiny           vit_tiny_patch16_224    textures           6  0.627 (0.600)      65.2       234
random-resnet10t            resnet10t               glyphs-latin       0  0.015 (0.021)       2.4         -
random-convnext-atto        convnext_atto           textures           0  0.040 (0.052)       0.8         -
==========================  ======================  ============  ======  ==============  =======  ========

Chance is 1/62, 1/12 and 1/20; the bar is 0.166, 0.25 and 0.20. Ranked on ``glyphs-greek`` (20 images per
class), LEEP, NCE and LogME all put ``latin-resnet10t`` first; LEEP and NCE put ``random-resnet10t`` last.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from service.atomic import replace_dir

__all__ = [
    "PROVIDER_NAME",
    "ZOO_ENTRIES",
    "ZOO_VERSION",
    "ZooEntry",
    "ZooProgress",
    "build_zoo",
    "build_zoo_model",
    "learn_threshold",
    "list_zoo",
    "read_card",
    "register_zoo",
    "unregister_zoo",
    "zoo_provider",
    "zoo_source_info",
]

_logger = logging.getLogger(__name__)

#: Bump when a change alters what a recipe produces (training loop, file layout): built models are rebuilt.
ZOO_VERSION = 1
PROVIDER_NAME = "zoo"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_CARD = "card.json"
_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"
_README = "README.md"
_LOCK_TIMEOUT_S = 3600.0  # a whole model build may run while another process waits for it

Init = Literal["pretrained", "random"]


# -------------------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class ZooEntry:
    """Recipe of one zoo model.

    Attributes
    ----------
    name : str
        The zoo name (``zoo:<name>``): lower-case letters, digits and ``-``.
    arch : str
        timm architecture (no tag); built with ``pretrained=False`` and ``model_args``.
    source : str
        Built-in source dataset it is trained on (``glyphs-latin``, ``textures``, ``shapes``); also gives
        the head's classes for random-init controls.
    description : str
        One line for the card and ``zoo list``.
    input_size : int
        Square input side; the 32-px source images are resized to it (timm's eval geometry).
    model_args : mapping
        Extra ``timm.create_model`` kwargs, saved in ``config.json`` (e.g. a ViT's img_size / patch_size).
    init : {"pretrained", "random"}
        ``"pretrained"``: trained on the source here. ``"random"``: a seeded random-init control, saved untrained.
    epochs, lr, optimizer, weight_decay, warmup_epochs, batch_size, label_smoothing, augment, grad_clip
        The :class:`~service.pipeline.finetune.training.TrainConfig` of the run.
    seed : int
        Seeds the init and the training randomness.
    """

    name: str
    arch: str
    source: str
    description: str
    input_size: int = 32
    model_args: Mapping[str, Any] = field(default_factory=dict)
    init: Init = "pretrained"
    epochs: int = 5
    lr: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    batch_size: int = 128
    label_smoothing: float = 0.0
    augment: bool = True
    grad_clip: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"zoo name {self.name!r}: use lower-case letters, digits and '-'")
        if self.init not in ("pretrained", "random"):
            raise ValueError(f"init must be 'pretrained' or 'random', got {self.init!r}")
        if self.input_size < 8:
            raise ValueError(f"input_size must be >= 8, got {self.input_size}")

    @property
    def id(self) -> str:
        return f"zoo:{self.name}"

    def scaled_epochs(self, scale: float = 1.0) -> int:
        """Epochs at ``scale`` (at least one; 0 for a random-init control)."""
        return 0 if self.init == "random" else max(1, round(self.epochs * scale))

    def recipe(self, scale: float = 1.0) -> dict[str, Any]:
        """Everything that determines the weights, as JSON-able data (hashed into :meth:`recipe_hash`)."""
        from service.builtin.datasets import GENERATOR_VERSION

        recipe = {k: v for k, v in dataclasses.asdict(self).items() if k != "description"}
        recipe["model_args"] = dict(sorted(self.model_args.items()))
        recipe.update(scale=scale, zoo_version=ZOO_VERSION, dataset_generator_version=GENERATOR_VERSION)
        if self.init == "random":  # training settings do not matter for an untrained control
            for key in ("epochs", "lr", "optimizer", "weight_decay", "warmup_epochs", "batch_size",
                        "label_smoothing", "augment", "grad_clip"):  # fmt: skip
                recipe.pop(key)
        return recipe

    def recipe_hash(self, scale: float = 1.0) -> str:
        blob = json.dumps(self.recipe(scale), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def train_config(self, scale: float = 1.0) -> Any:
        """The :class:`~service.pipeline.finetune.training.TrainConfig` of this entry at ``scale``."""
        from service.pipeline.finetune.training import TrainConfig

        return TrainConfig(
            epochs=max(1, self.scaled_epochs(scale)),
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            warmup_epochs=self.warmup_epochs,
            label_smoothing=self.label_smoothing,
            augment=self.augment,
            grad_clip=self.grad_clip,
            seed=self.seed,
        )


_VIT_ARGS = {"img_size": 32, "patch_size": 8, "depth": 6}  # 16 tokens of 8x8 px, 6 of ViT-Tiny's 12 blocks
_ADAMW: dict[str, Any] = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 0.3}
_SGD: dict[str, Any] = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0.3}

#: The default zoo, name -> recipe. Tuned on the 2-core development CPU: every model trained from scratch here
#: sits on a plateau near chance for its first ~300-500 optimizer steps and then takes off, so the budgets are
#: counted in steps (small batches on the small sources), not epochs. Measured source accuracies are in the
#: module docstring. Tried and dropped: convnext_atto (still at chance after 900 steps on textures, AdamW or SGD,
#: patch 4 or 2), lcnet_050/lcnet_100 (0.12/0.16 on textures after 12 epochs), regnetx_002 on glyphs-latin (at
#: chance after 8 epochs), resnet10t on glyphs-latin for 4 epochs (0.11: before the take-off).
ZOO_ENTRIES: Mapping[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry(
            "latin-resnet10t", "resnet10t", "glyphs-latin",
            "ResNet-10-T trained on Latin letters and digits (62 classes)",
            epochs=6, batch_size=64, **_ADAMW,
        ),
        ZooEntry(
            "shapes-resnet10t", "resnet10t", "shapes",
            "ResNet-10-T trained on geometric shapes (12 classes)",
            epochs=16, batch_size=32, **_ADAMW,
        ),
        ZooEntry(
            "textures-resnet10t", "resnet10t", "textures",
            "ResNet-10-T trained on procedural textures (20 classes)",
            epochs=4, batch_size=32, **_SGD,
        ),
        ZooEntry(
            "textures-resnet10t-short", "resnet10t", "textures",
            "ResNet-10-T, one epoch on procedural textures (the same recipe with a quarter of the budget)",
            epochs=1, batch_size=32, **{**_SGD, "warmup_epochs": 0.2},
        ),
        ZooEntry(
            "textures-resnet10t-seed1", "resnet10t", "textures",
            "ResNet-10-T, textures-resnet10t's recipe with another seed (init and data order): the noise floor",
            epochs=4, batch_size=32, seed=1, **_SGD,
        ),
        ZooEntry(
            "textures-regnetx-002", "regnetx_002", "textures",
            "RegNetX-200MF trained on procedural textures",
            epochs=12, batch_size=32, **_SGD,
        ),
        ZooEntry(
            "textures-mobilenetv3-small", "mobilenetv3_small_050", "textures",
            "MobileNetV3-Small 0.5x trained on procedural textures",
            epochs=20, batch_size=32, **_ADAMW,
        ),
        ZooEntry(
            "textures-vit-tiny", "vit_tiny_patch16_224", "textures",
            "ViT-Tiny (6 blocks, 8-px patches on 32-px images) trained on procedural textures",
            model_args=_VIT_ARGS, epochs=6, batch_size=32, optimizer="adamw", lr=1e-3, weight_decay=0.05,
            warmup_epochs=0.5, grad_clip=1.0,
        ),
        ZooEntry(
            "random-resnet10t", "resnet10t", "glyphs-latin",
            "control: ResNet-10-T with seeded random init and a random 62-class Latin head (untrained)",
            init="random",
        ),
        ZooEntry(
            "random-convnext-atto", "convnext_atto", "textures",
            "control: ConvNeXt-Atto with seeded random init and a random 20-class textures head (untrained)",
            init="random",
        ),
    )
}  # fmt: skip


def learn_threshold(num_classes: int) -> float:
    """Least source test accuracy a trained zoo model must reach: ``max(3 x chance, chance + 0.15)``."""
    chance = 1.0 / num_classes
    return max(3.0 * chance, chance + 0.15)


# --------------------------------------------------------------------------------------------- paths


def _default_builtin_dir() -> Path:
    from service.config import get_settings

    return get_settings().cache_dir / "builtin"  # where `rank` and `datasets` materialize too


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


# ------------------------------------------------------------------------------------------ provider


def zoo_provider(zoo_dir: str | os.PathLike[str], model_id: str) -> Path | None:
    """Weights provider ``"zoo"`` once bound to ``zoo_dir`` (:func:`register_zoo`): the built folder of
    ``zoo:<name>`` in ``zoo_dir``, else None.

    Any built folder is served, not only the default entries (a zoo built from custom recipes works too).
    """
    if not model_id.startswith("zoo:"):
        return None
    name = model_id.removeprefix("zoo:")
    if not _NAME.fullmatch(name):  # also keeps the name a single path component
        return None
    folder = Path(zoo_dir) / name
    return folder if read_card(folder) is not None else None


def zoo_source_info(zoo_dir: str | os.PathLike[str], backbone_id: str) -> tuple[str | None, float | None] | None:
    """``(source task, accuracy on its test split)`` from the card of a model built in ``zoo_dir``; None for
    ids that are not ``zoo:``."""
    if not backbone_id.startswith("zoo:"):
        return None
    folder = zoo_provider(zoo_dir, backbone_id)
    card = (read_card(folder) if folder is not None else None) or {}
    accuracy = card.get("source_accuracy")
    if isinstance(accuracy, int | float) and math.isfinite(accuracy):
        return card.get("source"), float(accuracy)
    return card.get("source"), None


def build_missing(zoo_dir: str | os.PathLike[str], ids: Sequence[str]) -> None:
    """Build, in ``zoo_dir``, the zoo models among ``ids`` (``zoo:NAME``) not built with the current recipe."""
    wanted = [backbone.removeprefix("zoo:") for backbone in ids if backbone.startswith("zoo:")]
    built = {entry["name"] for entry in list_zoo(zoo_dir) if entry.get("current")}
    missing = [name for name in wanted if name in ZOO_ENTRIES and name not in built]
    if missing:
        _logger.info("building missing zoo models: %s", ", ".join(missing))
        build_zoo(zoo_dir, names=missing)


def register_zoo(zoo_dir: str | os.PathLike[str]) -> None:
    """Plug the zoo in ``zoo_dir`` into the engine: weights provider ``"zoo"`` (:func:`zoo_provider`), its cards'
    source accuracies (:func:`zoo_source_info`) and the builder of missing models (:func:`build_missing`), each
    bound to ``zoo_dir``. Registering again (with this or another directory) replaces all three."""
    from service.pipeline.models.providers import register_weights_provider
    from service.pipeline.plugins import register_backbone_preparer, register_source_info

    folder = Path(zoo_dir)
    register_weights_provider(
        PROVIDER_NAME,
        functools.partial(zoo_provider, folder),
        f"the built-in zoo in {folder} (backbone-rank zoo build)",
        replace=True,
    )
    register_source_info(PROVIDER_NAME, functools.partial(zoo_source_info, folder))
    register_backbone_preparer("zoo:", functools.partial(build_missing, folder))


def unregister_zoo() -> None:
    """Undo :func:`register_zoo` (no error when not registered), e.g. at the end of a test."""
    from service.pipeline.models.providers import unregister_weights_provider
    from service.pipeline.plugins import unregister_backbone_preparer, unregister_source_info

    unregister_weights_provider(PROVIDER_NAME)
    unregister_source_info(PROVIDER_NAME)
    unregister_backbone_preparer("zoo:")


# --------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class ZooProgress:
    """Progress of a zoo build, for the CLI.

    ``stage``: ``"data"`` (decoding the source), ``"train"`` (after each batch: epoch, step, loss),
    ``"eval"``, ``"done"`` (``card`` set) or ``"skipped"`` (already built with this recipe; ``card`` set).
    """

    name: str
    index: int  # 0-based position among the models of this build
    total: int
    stage: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float = float("nan")
    seconds: float = 0.0
    card: dict[str, Any] | None = None


ZooProgressCallback = Callable[[ZooProgress], None]


@dataclass
class _SourceData:
    """Decoded source splits, shared by the entries of one build with the same source and geometry."""

    train: Any  # TensorSplit
    val: Any
    test: Any
    directory: str
    manifest_sha256: str | None


class _SplitCache:
    def __init__(self, builtin_dir: Path, scale: float) -> None:
        self.builtin_dir = builtin_dir
        self.scale = scale
        self._cache: dict[tuple[str, str], _SourceData] = {}

    def get(self, source: str, data_config: Mapping[str, Any]) -> _SourceData:
        key = (source, json.dumps({k: data_config[k] for k in sorted(data_config)}, default=list))
        if key not in self._cache:
            self._cache[key] = self._load(source, data_config)
        return self._cache[key]

    def _load(self, source: str, data_config: Mapping[str, Any]) -> _SourceData:
        from service.builtin.datasets import (
            BUILTIN_DATASETS,
            builtin_dataset_manifest,
            default_counts,
            materialize_builtin_dataset,
            register_builtin_datasets,
        )
        from service.pipeline.data.datasets import load_dataset
        from service.pipeline.finetune.training import load_split_tensors

        info = BUILTIN_DATASETS.get(source)
        if info is None or info.role != "source":
            sources = [i.name for i in BUILTIN_DATASETS.values() if i.role == "source"]
            raise ValueError(f"zoo source {source!r} is not a built-in source dataset; use one of {sources}")
        if self.scale >= 1.0:
            register_builtin_datasets()
            refs = {split: f"builtin:{source}#{split}" for split in ("train", "val", "test")}
            datasets = {split: load_dataset(ref, builtin_dir=self.builtin_dir) for split, ref in refs.items()}
            directory = self.builtin_dir / source
        else:
            # a reduced copy for quick builds (tests): its own directory, so the full dataset is not replaced
            counts = {split: max(3, round(n * self.scale)) for split, n in default_counts(source).items()}
            root = self.builtin_dir / f".zoo-scale-{self.scale:g}"
            directory = materialize_builtin_dataset(source, root, counts=counts)
            datasets = {split: load_dataset(f"{directory}#{split}") for split in ("train", "val", "test")}
        manifest = builtin_dataset_manifest(source, directory.parent)
        splits = {split: load_split_tensors(ds, data_config) for split, ds in datasets.items()}
        return _SourceData(
            splits["train"], splits["val"], splits["test"], str(directory), (manifest or {}).get("sha256")
        )


def _create_model(entry: ZooEntry, num_classes: int) -> Any:
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(entry.seed)
        return timm.create_model(entry.arch, pretrained=False, num_classes=num_classes, **dict(entry.model_args))


def _data_config(entry: ZooEntry, model: Any) -> dict[str, Any]:
    """The arch's default mean/std and interpolation at the entry's input size, no crop."""
    import timm.data

    default = timm.data.resolve_model_data_config(model)
    return {
        "input_size": (3, entry.input_size, entry.input_size),
        "interpolation": default["interpolation"],
        "mean": tuple(float(v) for v in default["mean"]),
        "std": tuple(float(v) for v in default["std"]),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


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


def build_zoo_model(
    entry: ZooEntry,
    zoo_dir: str | os.PathLike[str],
    *,
    builtin_dir: str | os.PathLike[str] | None = None,
    scale: float = 1.0,
    progress: ZooProgressCallback | None = None,
    force: bool = False,
    index: int = 0,
    total: int = 1,
    _splits: _SplitCache | None = None,
) -> dict[str, Any]:
    """Train (or, for a control, initialise) one zoo model, evaluate it on its source and save it.

    Parameters
    ----------
    entry : ZooEntry
    zoo_dir : path
        The model goes to ``<zoo_dir>/<entry.name>``.
    builtin_dir : path, optional
        Where the source dataset is materialized (default ``<cache_dir>/builtin``).
    scale : float
        Multiplies the epochs and, below 1, the images per class (a reduced copy of the source): quick
        builds for tests. Recorded in the card and the recipe hash.
    progress : callable, optional
        Gets :class:`ZooProgress` events.
    force : bool
        Rebuild even when a build of the same recipe is on disk.
    index, total : int
        Position of this model in a multi-model build (progress events only).

    Returns
    -------
    dict
        The model card (also written to ``card.json``).

    Raises
    ------
    ZooBuildFailed
        A trained model's source test accuracy is below :func:`learn_threshold`; nothing is written.
    """
    from filelock import FileLock
    from filelock import Timeout as LockTimeout

    from service.errors import ZooBuildFailed

    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    root = Path(zoo_dir)
    folder = root / entry.name
    recipe_hash = entry.recipe_hash(scale)

    def report(stage: str, **kwargs: Any) -> None:
        if progress is not None:
            progress(ZooProgress(entry.name, index, total, stage, **kwargs))

    if not force and (card := _is_built(folder, recipe_hash)) is not None:
        report("skipped", card=card)
        return card
    root.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(root / f".{entry.name}.lock"), timeout=_LOCK_TIMEOUT_S):
            if not force and (card := _is_built(folder, recipe_hash)) is not None:  # built while we waited
                report("skipped", card=card)
                return card
            splits = _splits or _SplitCache(Path(builtin_dir) if builtin_dir else _default_builtin_dir(), scale)
            card = _build(entry, root, scale, recipe_hash, splits, report)
    except LockTimeout as e:
        raise ZooBuildFailed(
            f"zoo model {entry.name}: another process held {root / f'.{entry.name}.lock'} for "
            f"{_LOCK_TIMEOUT_S:.0f} s; try again",
            model=entry.name,
        ) from e
    if not card["learned"] and card["init"] == "pretrained":
        raise ZooBuildFailed(
            f"zoo model {entry.name} did not learn its source task {entry.source}: test accuracy "
            f"{card['source_accuracy']:.3f} < {card['learn_threshold']:.3f} (chance {card['chance']:.3f}) after "
            f"{card['epochs']} epochs; fix its recipe (lr, epochs, input size) in service/builtin/zoo.py",
            model=entry.name,
            source_accuracy=card["source_accuracy"],
        )
    return card


def _build(
    entry: ZooEntry,
    root: Path,
    scale: float,
    recipe_hash: str,
    splits: _SplitCache,
    report: Callable[..., None],
) -> dict[str, Any]:
    """Build into a temp dir and move it into place (only when the model learned); returns the card."""
    import safetensors.torch
    import timm
    import torch

    from service.config import get_settings
    from service.pipeline.finetune.training import evaluate, train_classifier

    settings = get_settings()
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    began = time.perf_counter()
    report("data")
    probe = _create_model(entry, 2)  # the data config does not depend on the head
    data_config = _data_config(entry, probe)
    del probe
    data = splits.get(entry.source, data_config)
    classes = list(data.train.classes)
    model = _create_model(entry, len(classes))
    mean, std = data_config["mean"], data_config["std"]

    history = None
    if entry.init == "pretrained":
        config = entry.train_config(scale)

        def on_train(p: Any) -> None:
            report("train", epoch=p.epoch, epochs=p.epochs, step=p.step, steps=p.steps, loss=p.loss, seconds=p.seconds)

        history = train_classifier(model, data.train, config, mean=mean, std=std, progress=on_train)
    report("eval")
    test = evaluate(model, data.test, mean=mean, std=std)
    val = evaluate(model, data.val, mean=mean, std=std)
    threshold = learn_threshold(len(classes))
    learned = test.accuracy >= threshold
    passed = learned or entry.init == "random"  # controls are meant to be at chance

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=root))
    try:
        weights = tmp / _WEIGHTS
        safetensors.torch.save_file(state, str(weights), metadata={"format": "pt"})
        sha256 = _sha256(weights)
        _write_json(tmp / _CONFIG, _timm_config(entry, model, data_config, classes))
        card = {
            "name": entry.name,
            "id": entry.id,
            "description": entry.description,
            "arch": entry.arch,
            "model_args": dict(entry.model_args),
            "init": entry.init,
            "source": entry.source,
            "source_classes": len(classes),
            "source_dir": data.directory,
            "source_dataset_sha256": data.manifest_sha256,
            "source_accuracy": test.accuracy,
            "source_val_accuracy": val.accuracy,
            "source_test_images": len(data.test),
            "chance": 1.0 / len(classes),
            "learn_threshold": threshold,
            "learned": learned,
            "input_size": list(data_config["input_size"]),
            "mean": list(mean),
            "std": list(std),
            "interpolation": data_config["interpolation"],
            "epochs": entry.scaled_epochs(scale),
            "lr": entry.lr if entry.init == "pretrained" else None,
            "optimizer": entry.optimizer if entry.init == "pretrained" else None,
            "weight_decay": entry.weight_decay if entry.init == "pretrained" else None,
            "batch_size": entry.batch_size if entry.init == "pretrained" else None,
            "train_images": len(data.train),
            "epoch_loss": history.epoch_loss if history else [],
            "epoch_train_accuracy": history.epoch_train_accuracy if history else [],
            "training_seconds": round(history.seconds, 2) if history else 0.0,
            "images_per_second": round(history.images_per_second, 1) if history else 0.0,
            "build_seconds": 0.0,
            "seed": entry.seed,
            "scale": scale,
            "num_params": int(sum(p.numel() for p in model.parameters())),
            "num_features": int(model.num_features),
            "weights_sha256": sha256,
            "recipe": entry.recipe(scale),
            "recipe_hash": recipe_hash,
            "zoo_version": ZOO_VERSION,
            "timm_version": timm.__version__,
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python_version": platform.python_version(),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        card["build_seconds"] = round(time.perf_counter() - began, 2)
        _write_json(tmp / _CARD, card)
        (tmp / _README).write_text(_readme(card), encoding="utf-8")
        if passed:
            replace_dir(tmp, root / entry.name, entry.name)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info(
        "zoo model %s: %s on %s, source test accuracy %.3f (val %.3f), %.1f s",
        entry.name, entry.arch, entry.source, test.accuracy, val.accuracy, card["build_seconds"],
    )  # fmt: skip
    report("done", seconds=card["build_seconds"], card=card)
    return card


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


def build_zoo(
    zoo_dir: str | os.PathLike[str],
    names: Iterable[str] | None = None,
    *,
    builtin_dir: str | os.PathLike[str] | None = None,
    scale: float = 1.0,
    progress: ZooProgressCallback | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Build the default zoo (or the entries ``names``) in ``zoo_dir``; models already built with the same recipe
    are skipped.

    Every model is attempted; if any fails (e.g. did not learn), :class:`~service.errors.ZooBuildFailed`
    is raised at the end naming all of them. Decoded source splits are shared between the entries.

    Raises
    ------
    UnknownBackbone
        A name that is not in :data:`ZOO_ENTRIES` (the message lists them).
    ZooBuildFailed
        One or more models failed.
    """
    from service.errors import UnknownBackbone, ZooBuildFailed

    chosen = list(ZOO_ENTRIES) if names is None else list(dict.fromkeys(names))
    unknown = [name for name in chosen if name not in ZOO_ENTRIES]
    if unknown:
        raise UnknownBackbone(
            f"unknown zoo model(s) {', '.join(unknown)}; the zoo has: {', '.join(ZOO_ENTRIES)}",
            backbone=unknown[0],
        )
    splits = _SplitCache(Path(builtin_dir) if builtin_dir else _default_builtin_dir(), scale)
    cards, failures = [], []
    for index, name in enumerate(chosen):
        try:
            cards.append(
                build_zoo_model(
                    ZOO_ENTRIES[name], zoo_dir, scale=scale, progress=progress, force=force, index=index,
                    total=len(chosen), _splits=splits,
                )
            )  # fmt: skip
        except ZooBuildFailed as err:
            _logger.error("%s", err.detail)
            failures.append(err)
    if failures:
        detail = "; ".join(err.detail for err in failures)
        raise ZooBuildFailed(
            f"{len(failures)} of {len(chosen)} zoo models failed: {detail}",
            models=[err.context.get("model") for err in failures],
        )
    return cards


def list_zoo(zoo_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every default entry plus any other model built in ``zoo_dir``: ``name``, ``id``, ``arch``, ``source``,
    ``input_size``, ``init``, ``description``, ``built`` (and ``current``: built from today's recipe) and
    ``card`` (None when not built)."""
    root = Path(zoo_dir)
    rows = []
    for entry in ZOO_ENTRIES.values():
        card = read_card(root / entry.name)
        rows.append(
            {
                "name": entry.name,
                "id": entry.id,
                "arch": entry.arch,
                "source": entry.source,
                "input_size": entry.input_size,
                "init": entry.init,
                "description": entry.description,
                "built": card is not None,
                "current": card is not None and card.get("recipe_hash") == entry.recipe_hash(card.get("scale", 1.0)),
                "card": card,
            }
        )
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.name in ZOO_ENTRIES or not _NAME.fullmatch(folder.name):
                continue
            card = read_card(folder)
            if card is None:
                continue
            rows.append(
                {
                    "name": folder.name,
                    "id": f"zoo:{folder.name}",
                    "arch": card.get("arch"),
                    "source": card.get("source"),
                    "input_size": (card.get("input_size") or [0, 0, 0])[-1],
                    "init": card.get("init"),
                    "description": card.get("description", ""),
                    "built": True,
                    "current": True,
                    "card": card,
                }
            )
    return rows
