"""Hub datasets (``hf://datasets/ORG/NAME[@REV][#SPLIT]``): download a split, keep a seeded per-class sample, and
materialise it as a manifest the ordinary loader reads.

Two repo layouts are understood, the two the hub's own dataset viewer reads without a script:

- **parquet**: ``data/train-00000-of-00003.parquet``, ``train.parquet``, ``default/train/0000.parquet``; the image
  column is an HF ``Image`` (struct of ``bytes``/``path``) or binary, the label column an HF ``ClassLabel`` (its
  names are the class names), an integer or a string. Both are found from the ``huggingface`` features stored in
  the parquet schema, else by name (``image``/``img``; ``label``/``labels``/``fine_label``...), or given.
- **imagefolder**: ``[data/]SPLIT/CLASS/file.jpg`` (or ``CLASS/file.jpg``: one ``train`` split).

``max_per_class`` is applied before any image is decoded or copied: parquet labels are read alone, the sample
is drawn, and only the row groups holding sampled rows are read; an imagefolder's sample is drawn from the file
list, and only sampled files are downloaded. The sample's bytes are written once into
``<directory>/ORG--NAME/<commit>/<split>/<sample key>/`` (``images/`` + ``manifest.csv``), which
:func:`~service.pipeline.data.datasets.load_dataset` then lists with every check a local manifest gets; a later
run with the same commit, split and sample reads it there (offline too: the commit of a named revision is
remembered in the HF cache).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from service.atomic import replace_dir
from service.errors import DatasetNotFound, HubUnreachable, InvalidDataset
from service.pipeline.data.listing import class_sample
from service.pipeline.models.hub import HubAccess, RepoListing, cached_listing, download_files, list_repo

__all__ = ["DEFAULT_SPLIT", "HubDatasets", "HubSample", "materialize_hub_dataset"]

_logger = logging.getLogger(__name__)

DEFAULT_SPLIT = "train"
_FORMAT_VERSION = 1
_IMAGE_NAMES = ("image", "img", "picture", "photo", "pixel_values")
_LABEL_NAMES = ("label", "labels", "fine_label", "class", "category", "target", "coarse_label")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SHARDED = re.compile(r"(?P<split>[A-Za-z0-9_.]+?)-\d{5}-of-\d{5}\.parquet")
_NUMBERED = re.compile(r"\d+\.parquet")
#: magic bytes -> file suffix for the formats the loader decodes (service.pipeline.data.datasets.ALLOWED_FORMATS)
_MAGIC = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)

#: ``progress(done_bytes, total_bytes)`` while the split's files download.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class HubDatasets:
    """How a process fetches hub datasets (its :class:`HubAccess`) and where it materialises their samples."""

    access: HubAccess
    directory: Path


@dataclass(frozen=True)
class HubSample:
    """A materialised sample of one split of a hub dataset."""

    repo_id: str
    commit: str
    split: str
    splits: list[str]
    manifest: Path
    classes: list[str]
    skipped: dict[str, int]


def materialize_hub_dataset(
    repo_id: str,
    access: HubAccess,
    directory: Path,
    *,
    revision: str | None = None,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> HubSample:
    """Download (or find in the caches) a split of ``repo_id`` and write its per-class sample as a manifest.

    Raises
    ------
    DatasetNotFound
        No such repo, revision or split (the splits found are named); offline and not in the cache.
    InvalidDataset
        No image or no label column (the columns are named), no image files, an unknown column given.
    DownloadNotAllowed, DownloadTooLarge, InsufficientDisk, HubUnreachable, DownloadFailed
        As :mod:`service.pipeline.models.hub` raises them.
    """
    what = f"hf://datasets/{repo_id}"
    listing = _listing(repo_id, access, revision, what)
    layout = _layout(listing.sizes)
    chosen = _choose_split(layout, split, what)
    key = _sample_key(image_column, label_column, max_per_class, seed)
    out = Path(directory) / repo_id.replace("/", "--") / listing.commit / chosen / key
    manifest = out / "manifest.csv"
    meta_path = out / "sample.json"
    if manifest.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return HubSample(repo_id, listing.commit, chosen, sorted(layout), manifest, meta["classes"], meta["skipped"])
    files = layout[chosen]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=out.parent))
    try:
        if all(name.endswith(".parquet") for name in files):
            downloaded = download_files(listing, files, access, what=what, progress=progress)
            classes, skipped = _write_parquet_sample(
                [downloaded.paths[name] for name in files], staging, image_column, label_column, max_per_class, seed,
                what,
            )  # fmt: skip
        else:
            if listing.from_cache:
                raise DatasetNotFound(
                    f"{what}: offline, and this sample of the imagefolder split {chosen!r} was never downloaded; run "
                    "once with the hub reachable"
                )
            if image_column or label_column:
                raise InvalidDataset(f"{what}: an imagefolder repo has no columns; drop the image/label column options")
            classes, skipped = _write_folder_sample(
                listing, files, staging, access, max_per_class, seed, what, progress
            )
        (staging / "sample.json").write_text(json.dumps({"classes": classes, "skipped": skipped}), encoding="utf-8")
        replace_dir(staging, out, key)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return HubSample(repo_id, listing.commit, chosen, sorted(layout), manifest, classes, skipped)


# ----------------------------------------------------------------------------------------------- listing


def _listing(repo_id: str, access: HubAccess, revision: str | None, what: str) -> RepoListing:
    """The hub's listing when downloads are on; offline, or when the hub does not answer, what the HF cache holds
    of that revision."""
    if access.enabled:
        try:
            return list_repo(repo_id, access, repo_type="dataset", revision=revision, what=what)
        except HubUnreachable:
            cached = cached_listing(repo_id, access, repo_type="dataset", revision=revision)
            if cached is None:
                raise
            _logger.warning("%s: the hub did not answer; using what the HF cache holds (%s)", what, cached.commit[:12])
            return cached
    cached = cached_listing(repo_id, access, repo_type="dataset", revision=revision)
    if cached is None:
        list_repo(repo_id, access, repo_type="dataset", revision=revision, what=what)  # raises the offline error
        raise AssertionError("unreachable: list_repo refuses offline")
    return cached


def _layout(sizes: Mapping[str, int]) -> dict[str, list[str]]:
    """Split name -> its files (parquet shards, or image files), sorted."""
    parquet: dict[str, list[str]] = {}
    images: dict[str, list[str]] = {}
    for name in sorted(sizes):
        path = PurePosixPath(name)
        if any(part.startswith(".") for part in path.parts):
            continue
        if path.suffix == ".parquet":
            parquet.setdefault(_parquet_split(path), []).append(name)
        elif path.suffix.lower() in _IMAGE_SUFFIXES:
            parts = list(path.parts[:-1])
            if parts[:1] == ["data"]:
                parts = parts[1:]
            if len(parts) == 1:
                images.setdefault(DEFAULT_SPLIT, []).append(name)
            elif len(parts) == 2:
                images.setdefault(parts[0], []).append(name)
    return parquet or images


def _parquet_split(path: PurePosixPath) -> str:
    sharded = _SHARDED.fullmatch(path.name)
    if sharded:
        return sharded.group("split")
    if _NUMBERED.fullmatch(path.name) and len(path.parts) > 1:
        return path.parts[-2]
    return path.stem


def _choose_split(layout: Mapping[str, list[str]], split: str | None, what: str) -> str:
    if not layout:
        raise InvalidDataset(
            f"{what}: found neither parquet files nor an imagefolder layout ([data/]SPLIT/CLASS/image) in the repo"
        )
    if split is not None:
        if split not in layout:
            raise DatasetNotFound(f"{what} has no split {split!r}; its splits: {', '.join(sorted(layout))}")
        return split
    if DEFAULT_SPLIT in layout:
        return DEFAULT_SPLIT
    if len(layout) == 1:
        return next(iter(layout))
    raise DatasetNotFound(f"{what}: choose a split with #SPLIT; its splits: {', '.join(sorted(layout))}")


def _sample_key(image_column: str | None, label_column: str | None, max_per_class: int | None, seed: int) -> str:
    text = json.dumps([_FORMAT_VERSION, image_column, label_column, max_per_class, seed if max_per_class else None])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _per_class_choice(labels: Sequence[int], classes: Sequence[str], max_per_class: int | None, seed: int) -> list[int]:
    """Indices kept, ascending: at most ``max_per_class`` of each class, drawn as the local loader draws them
    (:func:`~service.pipeline.data.listing.class_sample`)."""
    by_class: list[list[int]] = [[] for _ in classes]
    for index, label in enumerate(labels):
        if label >= 0:
            by_class[label].append(index)
    kept: list[int] = []
    for label, members in enumerate(by_class):
        chosen = class_sample(len(members), classes[label], max_per_class, seed) if max_per_class else None
        kept.extend(members if chosen is None else [members[i] for i in chosen])
    return sorted(kept)


# ----------------------------------------------------------------------------------------------- parquet


def _write_parquet_sample(
    files: Sequence[Path],
    out: Path,
    image_column: str | None,
    label_column: str | None,
    max_per_class: int | None,
    seed: int,
    what: str,
) -> tuple[list[str], dict[str, int]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # the [hf] extra
        raise InvalidDataset(f"{what}: reading parquet needs pyarrow: pip install 'backbone-rank[hf]'") from e

    shards = [pq.ParquetFile(path) for path in files]
    schema = shards[0].schema_arrow
    features = _hf_features(schema.metadata or {})
    image = image_column or _find_column(schema, features, "Image", _IMAGE_NAMES)
    label = label_column or _find_column(schema, features, "ClassLabel", _LABEL_NAMES)
    for role, name, option in (("image", image, "--image-column"), ("label", label, "--label-column")):
        if name is None or name not in schema.names:
            given = f"no column {name!r}" if name else f"no {role} column found"
            raise InvalidDataset(f"{what}: {given}; its columns: {', '.join(schema.names)} (choose one with {option})")
    assert image is not None and label is not None
    raw = [value for shard in shards for value in shard.read(columns=[label]).column(label).to_pylist()]
    names = (features.get(label) or {}).get("names")
    classes, labels, skipped = _class_labels(raw, names)
    kept = _per_class_choice(labels, classes, max_per_class, seed)
    images = out / "images"
    images.mkdir()
    rows: list[tuple[str, str]] = []
    wanted = iter(kept)
    target = next(wanted, None)
    offset = 0
    for shard in shards:
        for group in range(shard.num_row_groups):
            size = shard.metadata.row_group(group).num_rows
            if target is None or target >= offset + size:
                offset += size
                continue
            values = shard.read_row_group(group, columns=[image]).column(image).to_pylist()
            while target is not None and target < offset + size:
                written = _write_image(values[target - offset], images, target, skipped)
                if written is not None:
                    rows.append((written, classes[labels[target]]))
                target = next(wanted, None)
            offset += size
    _write_manifest(out, rows)
    return classes, skipped


def _hf_features(metadata: Mapping[bytes, bytes]) -> dict[str, Any]:
    try:
        info = json.loads(metadata.get(b"huggingface", b"{}"))
        features = info.get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return {}
    return features if isinstance(features, dict) else {}


def _find_column(schema: Any, features: Mapping[str, Any], hf_type: str, names: Sequence[str]) -> str | None:
    typed = [
        name for name, feature in features.items() if isinstance(feature, dict) and feature.get("_type") == hf_type
    ]
    if len(typed) == 1:
        return typed[0]
    lowered = {name.lower(): name for name in schema.names}
    return next((lowered[name] for name in names if name in lowered), None)


def _class_labels(raw: Sequence[Any], names: Sequence[str] | None) -> tuple[list[str], list[int], dict[str, int]]:
    """Class names and each row's class index; rows without a label (None, -1) get -1 and are counted."""
    skipped: dict[str, int] = {}
    if names:
        classes = [str(name) for name in names]
        labels = [int(v) if isinstance(v, int) and 0 <= v < len(classes) else -1 for v in raw]
    else:
        present = sorted({str(v) for v in raw if v is not None and v != -1}, key=_natural)
        index = {name: i for i, name in enumerate(present)}
        classes = present
        labels = [index[str(v)] if v is not None and v != -1 else -1 for v in raw]
    unlabelled = sum(1 for label in labels if label < 0)
    if unlabelled:
        skipped["unlabelled"] = unlabelled
    if not classes or unlabelled == len(labels):
        raise InvalidDataset("the dataset's rows carry no label: a ranking needs labelled images")
    return classes, labels, skipped


def _natural(name: str) -> tuple[Any, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _write_image(value: Any, folder: Path, row: int, skipped: dict[str, int]) -> str | None:
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes | bytearray) or not data:
        skipped["no_image_bytes"] = skipped.get("no_image_bytes", 0) + 1
        return None
    suffix = _suffix(bytes(data[:16]))
    if suffix is None:
        skipped["unknown_format"] = skipped.get("unknown_format", 0) + 1
        return None
    name = f"{row:09d}{suffix}"
    (folder / name).write_bytes(data)
    return f"images/{name}"


def _suffix(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _MAGIC if head.startswith(magic)), None)


# ------------------------------------------------------------------------------------------- imagefolder


def _write_folder_sample(
    listing: RepoListing,
    files: Sequence[str],
    out: Path,
    access: HubAccess,
    max_per_class: int | None,
    seed: int,
    what: str,
    progress: Progress | None,
) -> tuple[list[str], dict[str, int]]:
    class_of = [PurePosixPath(name).parent.name for name in files]
    classes = sorted(set(class_of), key=_natural)
    index = {name: i for i, name in enumerate(classes)}
    kept = _per_class_choice([index[c] for c in class_of], classes, max_per_class, seed)
    chosen = [files[i] for i in kept]
    downloaded = download_files(listing, chosen, access, what=what, progress=progress)
    images = out / "images"
    images.mkdir()
    rows: list[tuple[str, str]] = []
    skipped: dict[str, int] = {}
    for row, name in zip(kept, chosen, strict=True):
        written = _write_image(downloaded.paths[name].read_bytes(), images, row, skipped)
        if written is not None:
            rows.append((written, class_of[row]))
    _write_manifest(out, rows)
    return classes, skipped


def _write_manifest(out: Path, rows: Sequence[tuple[str, str]]) -> None:
    if not rows:
        raise InvalidDataset("no image of the dataset could be read (see the skipped counts)")
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
