"""Building zoo models: decoding the source splits once per build, creating the timm model, training and
evaluating it on its source, and saving it atomically with its card (the guarantees are in the package
docstring, :mod:`service.builtin.zoo`).

Separate from the recipes and the registry: this is the only module of the zoo that imports torch and timm
(function-locally, so that importing the zoo stays torch-free for the web process).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.atomic import replace_dir

from .cards import _CARD, _CONFIG, _README, _WEIGHTS, _is_built, _readme, _sha256, _timm_config, _write_json
from .entries import ZOO_ENTRIES, ZOO_VERSION, ZooEntry, learn_threshold

_logger = logging.getLogger(__name__)

_LOCK_TIMEOUT_S = 3600.0  # a whole model build may run while another process waits for it


def _default_builtin_dir() -> Path:
    from service.config import get_settings

    return get_settings().cache_dir / "builtin"  # where `rank` and `datasets` materialize too


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
            splits["train"], splits["val"], splits["test"], str(directory), (manifest or {}).get("content_sha256")
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
            f"{card['epochs']} epochs; fix its recipe (lr, epochs, input size) in service/builtin/zoo/entries.py",
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
