"""Labelled image datasets: the public entry point, :func:`load_dataset`, and the :class:`Dataset` it returns.

The kinds of dataset reference (the request's ``DatasetSpec``, service/contract/requests.py; the grammar is
in service/pipeline/data/refs.py):

* ``folder``   -- one sub-directory per class; ``train/``, ``val/`` (``valid/``, ``validation/``) and
  ``test/`` at the top make it a split layout, of which one split is loaded (``"train"`` by default).
* ``manifest`` -- a ``.csv`` (header with ``path`` and ``label``) or ``.jsonl`` (``{"path", "label"}``
  per line); relative paths resolve against the manifest's directory.
* ``hf``       -- a HuggingFace ``datasets`` dataset written with ``save_to_disk``.
* ``builtin``  -- a name in the built-in registry, materialized on first use into an ImageFolder.
* ``hub``      -- a dataset repo on the Hugging Face hub, sampled into a manifest (hub_dataset.py).
* ``upload``   -- an archive uploaded to the service, stored as a folder or manifest dataset (upload.py).

Each kind is listed by its own module in this package (folder.py, manifest.py, hf_disk.py; builtin.py
materializes a built-in dataset for the folder lister), all returning the same ``Listing``
(listing.py); this module subsamples, checks and fingerprints that listing whatever made it.

Safety: the user's path is confined to the data roots before anything looks at whether it exists (paths.py).
Listing never follows a symlink out of the roots, never opens anything but a regular file, identifies images
by content against a format allowlist and rejects pixel bombs from the header alone (decode.py). Files that
fail a check are skipped and counted per reason in :attr:`Dataset.skipped`; they never abort the listing.
Corrupt image *data* shows only when decoding, so :meth:`Dataset.open_image` raises
:class:`~service.pipeline.data.decode.ImageDecodeError` and the extraction skips and counts those images.

Skip reasons (keys of :attr:`Dataset.skipped`, and ``ImageDecodeError.reason``):
``unsupported_format`` (not JPEG/PNG/BMP/GIF/TIFF/WEBP by content), ``too_many_pixels`` (header over
the cap, or a Pillow decompression bomb), ``corrupt_image`` (unreadable header; from ``open_image``:
undecodable data), ``too_large_file``, ``not_regular_file`` (FIFO, socket, device),
``symlink_outside_root``, ``symlink_dir_not_followed``, ``not_in_class_dir`` (a file beside the class
directories), ``missing_file``, ``unreadable_file``, ``unreadable_dir``, ``duplicate_entry``; for hf
datasets also ``missing_image``, ``missing_label`` and ``path_outside_root`` (an image path cell).

Errors a user can cause are the typed errors of :mod:`service.errors`; their messages say how to fix
the input and echo the user's path, never the resolved real path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from service.errors import EmptyDataset, InvalidDataset, TooFewClasses, TooFewSamplesPerClass
from service.pipeline.data.builtin import materialize_builtin
from service.pipeline.data.decode import ALLOWED_FORMATS, decode_image, warn_if_truncated_images_allowed
from service.pipeline.data.folder import list_folder
from service.pipeline.data.hf_disk import list_hf, open_hf_table, read_hf_image
from service.pipeline.data.hub_dataset import HubDatasets, HubSample, materialize_hub_dataset
from service.pipeline.data.listing import Entry, HFSource, Limits, Lister, Listing, class_sample
from service.pipeline.data.manifest import list_manifest
from service.pipeline.data.paths import open_regular_file, realpath_roots, resolve_user_path
from service.pipeline.data.refs import HUB_PREFIX, MANIFEST_SUFFIXES, UPLOAD_PREFIX, DatasetRef, parse_dataset_ref
from service.pipeline.data.upload import locate_upload

__all__ = ["Dataset", "ImageItem", "load_dataset"]

_logger = logging.getLogger(__name__)

_FINGERPRINT_VERSION = 1
#: The lister of each kind of reference that names a path (``builtin`` is listed as a folder).
_LISTERS: dict[str, Lister] = {"folder": list_folder, "manifest": list_manifest, "hf": list_hf}


@dataclass(frozen=True)
class ImageItem:
    """One labelled image: ``source`` is the file's absolute real path, or ``"hf:<row>"``."""

    source: str
    label: int


@dataclass
class Dataset:
    """A listed, checked, labelled image dataset.

    Attributes:
        ref: The reference it was loaded from (``split`` filled in when a split layout was used).
        root: Real path of the dataset directory (a manifest's directory; the HF dataset directory).
        classes: Class index -> class name (natural sort; an HF ``ClassLabel`` keeps its own order).
        items: The images, sorted by ``(label, source)``.
        skipped: Reason -> number of files skipped while listing.
        splits: The splits found (``["train", "val"]``), ``[]`` for a flat layout.
        fingerprint: sha256 hex of the exact content (files, sizes, mtimes, labels, split, subsample).
    """

    ref: DatasetRef
    root: str
    classes: list[str]
    items: list[ImageItem]
    skipped: dict[str, int] = field(default_factory=dict)
    splits: list[str] = field(default_factory=list)
    fingerprint: str = ""
    # What open_image re-checks each file against; not part of the dataset's identity.
    _roots: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    _max_image_pixels: int = field(default=50_000_000, repr=False, compare=False)
    _max_image_bytes: int = field(default=100 * 2**20, repr=False, compare=False)
    _hf: HFSource | None = field(default=None, repr=False, compare=False)
    _hf_table: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._roots is None:
            self._roots = (os.path.realpath(self.root),)

    def __getstate__(self) -> dict[str, Any]:
        # The memory-mapped HF table is re-opened lazily in the receiving process (DataLoader workers).
        state = self.__dict__.copy()
        state["_hf_table"] = None
        return state

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        """``(N,)`` int64 class indices, aligned with :attr:`items`."""
        return np.fromiter((item.label for item in self.items), dtype=np.int64, count=len(self.items))

    def class_counts(self) -> dict[str, int]:
        """Class name -> number of images, in class order."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(counts[i]) for i, name in enumerate(self.classes)}

    def class_map(self) -> dict[str, int]:
        """Class name -> class index."""
        return {name: i for i, name in enumerate(self.classes)}

    def summary(self) -> dict[str, Any]:
        """JSON-able description; no real paths, so it can go into API results."""
        return {
            "ref": self.ref.to_dict(),
            "n_images": len(self.items),
            "n_classes": len(self.classes),
            "classes": list(self.classes),
            "class_counts": self.class_counts(),
            "skipped": dict(self.skipped),
            "splits": list(self.splits),
            "fingerprint": self.fingerprint,
        }

    def open_image(self, index: int) -> Image.Image:
        """Decode image ``index`` and convert it to RGB (GIF/WEBP/TIFF: the first frame).

        Every check of the listing runs again (roots, regular file, size, format, pixel cap), since the
        file may have changed since.

        Raises:
            ImageDecodeError: corrupt or truncated data, a format outside :data:`ALLOWED_FORMATS`, more
                pixels than the cap, or a file that fails the safety checks.
            IndexError: ``index`` out of range.
        """
        item = self.items[index]
        warn_if_truncated_images_allowed()
        if self._hf is not None:
            data = self._hf_image_bytes(item)
            return decode_image(io.BytesIO(data), item.source, self._max_image_pixels)
        with open_regular_file(item.source, self._roots or (), self._max_image_bytes) as (fh, _):
            return decode_image(fh, item.source, self._max_image_pixels)

    def _hf_image_bytes(self, item: ImageItem) -> bytes:
        assert self._hf is not None
        roots = self._roots or ()
        if self._hf_table is None:
            self._hf_table = open_hf_table(self._hf.directory, roots, self.ref.path or "")
        return read_hf_image(self._hf_table, self._hf, item.source, roots, self._max_image_bytes)


def load_dataset(
    ref: DatasetRef | str | os.PathLike[str],
    *,
    roots: Sequence[str | Path] | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    min_per_class: int = 2,
    max_image_pixels: int = 50_000_000,
    max_image_bytes: int = 100 * 2**20,
    builtin_dir: str | Path | None = None,
    hub_datasets: HubDatasets | None = None,
    uploads_dir: str | Path | None = None,
) -> Dataset:
    """List and check a dataset.

    Args:
        ref: A :class:`DatasetRef` or its text form (:func:`parse_dataset_ref`); a ``Path`` is taken
            literally as a folder or (``.csv``/``.jsonl``) a manifest.
        roots: Directories the dataset must resolve under. ``None`` (CLI mode): the dataset's own real
            directory is the only root. ``[]`` refuses every path (a service with no roots configured).
            Built-in datasets are trusted and skip this check.
        max_per_class: Keep at most this many images per class (a seeded subsample), so a huge dataset
            can be ranked on a sample.
        seed: Seed of that subsample.
        min_per_class: Classes with fewer usable images are an error.
        max_image_pixels: Images whose header declares more pixels are skipped without decoding.
            Pillow's own cap (``Image.MAX_IMAGE_PIXELS``) still applies above this.
        max_image_bytes: Larger files are skipped.
        builtin_dir: Where built-in datasets are materialized (default: ``<cache_dir>/builtin``).
        hub_datasets: How hub datasets (``hf://datasets/ORG/NAME``) are fetched and where their samples are
            materialised; without it a hub reference is an error. The returned ref records the commit.
        uploads_dir: Where the service stores uploaded datasets (``upload:<id>``); without it an upload reference
            is an error.

    Returns:
        The :class:`Dataset`, items sorted by ``(label, source)``.

    Raises:
        InvalidDataset: NUL byte (in the path or a class name), wrong kind of path, unreadable manifest or HF
            dataset, unknown split.
        PathOutsideRoots: the path resolves outside ``roots`` (whether or not it exists).
        DatasetNotFound: the path (inside the roots) does not exist; unknown built-in name.
        EmptyDataset: no usable image.
        TooFewClasses: fewer than two classes.
        TooFewSamplesPerClass: a class with fewer than ``min_per_class`` usable images.
    """
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}")
    if min_per_class < 1:
        raise ValueError(f"min_per_class must be >= 1, got {min_per_class}")
    if max_image_pixels < 1 or max_image_bytes < 1:
        raise ValueError("max_image_pixels and max_image_bytes must be >= 1")
    if isinstance(ref, str):
        ref = parse_dataset_ref(ref)
    elif isinstance(ref, os.PathLike):
        # A Path is a path, never "hf:"/"#split" text: only its ending picks folder or manifest.
        path = os.fspath(ref)
        ref = DatasetRef("manifest" if path.lower().endswith(MANIFEST_SUFFIXES) else "folder", path=path)
    elif not isinstance(ref, DatasetRef):
        raise TypeError(f"ref must be a DatasetRef or a string, got {type(ref).__name__}")
    limits = Limits(max_image_pixels, max_image_bytes)

    if ref.kind == "builtin":
        root = materialize_builtin(ref, builtin_dir)
        user = f"builtin:{ref.name}"
        listing_roots: tuple[str, ...] = (root,)
        listing = list_folder(root, listing_roots, ref.split, user, limits)
    elif ref.kind == "hub":
        # Trusted like a built-in: our own cache, filled within the hub allowlist (the roots are for user paths).
        sample = _hub_sample(ref, hub_datasets, max_per_class, seed)
        user = f"{HUB_PREFIX}{ref.name}"
        root = os.path.realpath(sample.manifest.parent)
        listing_roots = (root,)
        listing = list_manifest(os.path.realpath(sample.manifest), listing_roots, None, user, limits)
        listing = dataclasses.replace(listing, split=sample.split, splits=sample.splits)
        listing.skipped.update(sample.skipped)
        ref = dataclasses.replace(ref, revision=sample.commit)
    elif ref.kind == "upload":
        # Trusted like a built-in (the service extracted and checked it), but listed confined to its own folder.
        stored = locate_upload(cast(str, ref.name), uploads_dir)
        user = f"{UPLOAD_PREFIX}{ref.name}"
        listing_roots = (stored.directory,)
        if stored.manifest is not None:
            root = os.path.dirname(stored.manifest)
            listing = list_manifest(stored.manifest, listing_roots, ref.split, user, limits)
        else:
            root = stored.root
            listing = list_folder(root, listing_roots, ref.split, user, limits)
    else:
        user = cast(str, ref.path)
        real = resolve_user_path(user, roots)
        root = os.path.dirname(real) if ref.kind == "manifest" else real
        # CLI mode: the dataset's own directory is the only root.
        listing_roots = realpath_roots(roots) if roots is not None else (root,)
        listing = _LISTERS[ref.kind](real, listing_roots, ref.split, user, limits)

    # Class names reach tables and HTML reports; a NUL byte there is refused like one in a path.
    bad = next((name for name in listing.classes if "\x00" in name), None)
    if bad is not None:
        raise InvalidDataset(f"dataset {user!r}: class name {bad!r} contains a NUL byte; remove it", path=user)
    entries = _subsample(listing.entries, listing.classes, max_per_class, seed)
    _check_sizes(listing, entries, user, min_per_class, max_per_class)
    entries.sort(key=lambda e: (e.label, e.source))
    if listing.split is not None:
        ref = dataclasses.replace(ref, split=listing.split)
    fingerprint = _fingerprint(ref, listing, entries, max_per_class, seed)
    dataset = Dataset(
        ref=ref,
        root=root,
        classes=listing.classes,
        items=[ImageItem(source=e.source, label=e.label) for e in entries],
        skipped=dict(sorted(listing.skipped.items())),
        splits=listing.splits,
        fingerprint=fingerprint,
        _roots=listing_roots,
        _max_image_pixels=max_image_pixels,
        _max_image_bytes=max_image_bytes,
        _hf=listing.hf,
    )
    if dataset.skipped:
        # Hostile-image events (bombs, unidentified formats) are worth an operator's attention.
        _logger.warning("dataset %s: skipped %s", user, _describe_skipped(dataset.skipped))
    _logger.info("dataset %s: %d images, %d classes", user, len(dataset), len(dataset.classes))
    return dataset


def _hub_sample(ref: DatasetRef, hub_datasets: HubDatasets | None, max_per_class: int | None, seed: int) -> HubSample:
    if hub_datasets is None:
        raise InvalidDataset(f"{HUB_PREFIX}{ref.name}: hub datasets need hub access (the engine passes its runtime's)")
    return materialize_hub_dataset(
        cast(str, ref.name),
        hub_datasets.access,
        hub_datasets.directory,
        revision=ref.revision,
        split=ref.split,
        image_column=ref.image_column,
        label_column=ref.label_column,
        max_per_class=max_per_class,
        seed=seed,
    )


def _subsample(
    entries: list[Entry],
    classes: list[str],
    max_per_class: int | None,
    seed: int,
) -> list[Entry]:
    """Seeded per-class subsample (:func:`~service.pipeline.data.listing.class_sample`), without replacement, from
    the items sorted by source."""
    if max_per_class is None:
        return list(entries)
    by_class: list[list[Entry]] = [[] for _ in classes]
    for entry in entries:
        by_class[entry.label].append(entry)
    kept: list[Entry] = []
    for label, members in enumerate(by_class):
        members.sort(key=lambda e: e.source)
        kept.extend(members[i] for i in class_sample(len(members), classes[label], max_per_class, seed))
    return kept


def _check_sizes(
    listing: Listing,
    entries: list[Entry],
    user: str,
    min_per_class: int,
    max_per_class: int | None,
) -> None:
    skipped = f" (skipped: {_describe_skipped(listing.skipped)})" if listing.skipped else ""
    if not entries:
        raise EmptyDataset(
            f"dataset {user!r} has no usable images{skipped}; add images in an allowed format "
            f"({', '.join(ALLOWED_FORMATS)}), one sub-directory (or manifest label) per class",
            path=user,
            skipped=dict(listing.skipped),
        )
    if len(listing.classes) < 2:
        raise TooFewClasses(
            f"dataset {user!r} has {len(listing.classes)} class(es) ({', '.join(listing.classes)}); ranking needs "
            "at least 2 classes -- add another class directory (or label)",
            path=user,
            classes=list(listing.classes),
        )
    counts = np.bincount(np.fromiter((e.label for e in entries), dtype=np.int64), minlength=len(listing.classes))
    small = {listing.classes[i]: int(n) for i, n in enumerate(counts) if n < min_per_class}
    if small:
        shown = ", ".join(
            f"{name!r}: {n}" + (" (empty directory)" if name in listing.empty_dirs else "")
            for name, n in list(small.items())[:20]
        )
        more = f" and {len(small) - 20} more" if len(small) > 20 else ""
        notes = []
        if any(name in listing.empty_dirs for name in small):
            notes.append("empty class directories count as classes: add images or remove them")
        if max_per_class is not None and max_per_class < min_per_class:
            notes.append(f"max_per_class={max_per_class} is below the minimum; raise it")
        note = "; ".join(notes) + "; " if notes else ""
        raise TooFewSamplesPerClass(
            f"dataset {user!r}: class(es) with fewer than {min_per_class} usable images: {shown}{more}{skipped}; "
            f"{note}add images to these classes or remove them",
            path=user,
            classes=small,
        )


def _describe_skipped(skipped: dict[str, int]) -> str:
    return ", ".join(f"{reason}={n}" for reason, n in sorted(skipped.items()))


def _fingerprint(
    ref: DatasetRef,
    listing: Listing,
    entries: list[Entry],
    max_per_class: int | None,
    seed: int,
) -> str:
    """sha256 of a canonical JSON: kind, split, classes, (path, label, size, mtime_ns) per item, subsample.

    Paths are relative to the dataset root so a moved dataset keeps its fingerprint (and its cache).
    """
    doc = {
        "v": _FINGERPRINT_VERSION,
        "kind": ref.kind,
        "split": listing.split,
        "classes": listing.classes,
        "items": [[e.rel, e.label, e.size, e.mtime_ns] for e in entries],
        "max_per_class": max_per_class,
        "seed": seed if max_per_class is not None else None,
        "extra": listing.extra_fingerprint,
    }
    # ensure_ascii escapes lone surrogates (undecodable file names), which UTF-8 cannot encode.
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()
