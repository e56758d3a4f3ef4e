"""The train/val/test splits of a fine-tuning: loading, aligning the class maps, carving what is missing.

A ``val`` or ``test`` split the dataset lacks is carved from ``train`` per class, ordered by the sha256 of
the decoded pixels, so that renaming or re-listing files does not move an image between splits (the rules
are in the docstring of ``service/pipeline/finetune/finetune.py``). Apart from training because it is
dataset logic only: it decodes images to key them, but trains nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from service.errors import InvalidDataset, TooFewSamplesPerClass
from service.pipeline.data.datasets import Dataset, ImageItem, load_dataset
from service.pipeline.data.decode import ImageDecodeError
from service.pipeline.data.hub_dataset import HubDatasets
from service.pipeline.data.listing import SPLIT_ALIASES
from service.pipeline.data.refs import DatasetRef
from service.pipeline.finetune.training import TensorSplit

#: Share of a class carved into each missing split.
CARVE_FRACTION = 0.2


@dataclass
class _Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    carved: list[str]
    listed_train_fingerprint: str


def _canonical_split(name: str | None) -> str | None:
    return None if name is None else SPLIT_ALIASES.get(name.lower())


def _load_splits(
    ref: DatasetRef,
    *,
    roots: Sequence[str | Path] | None,
    max_per_class: int | None,
    builtin_dir: str | Path | None,
    hub_datasets: HubDatasets | None = None,
    uploads_dir: str | Path | None = None,
) -> _Splits:
    """Load train (and val/test when the dataset has them), carve what is missing, align the class maps."""
    if ref.split is not None and _canonical_split(ref.split) in ("val", "test"):
        raise InvalidDataset(
            f"fine-tuning trains on the train split and picks val/test itself; drop '#{ref.split}' from the dataset",
            split=ref.split,
        )
    load = functools.partial(
        load_dataset,
        roots=roots,
        max_per_class=max_per_class,
        seed=0,
        min_per_class=1,
        builtin_dir=builtin_dir,
        hub_datasets=hub_datasets,
        uploads_dir=uploads_dir,
    )
    train = load(ref)
    train_split = train.ref.split
    present = {_canonical_split(s): s for s in train.splits if s != train_split}
    others: dict[str, Dataset] = {}
    for role in ("val", "test"):
        if role in present:
            # train.ref: the reference as loaded (a hub dataset's commit pinned), so every split is of one version
            others[role] = _align_classes(
                load(dataclasses.replace(train.ref, split=present[role])), train.classes, role
            )
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
