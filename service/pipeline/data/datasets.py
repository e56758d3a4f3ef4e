"""Labelled image datasets: parse a reference, list it safely, open its images.

Four kinds of dataset reference (the request's ``DatasetSpec``, service/contract/requests.py):

* ``folder``   -- one sub-directory per class; ``train/``, ``val/`` (``valid/``, ``validation/``) and
  ``test/`` at the top make it a split layout, of which one split is loaded (``"train"`` by default).
* ``manifest`` -- a ``.csv`` (header with ``path`` and ``label``) or ``.jsonl`` (``{"path", "label"}``
  per line); relative paths resolve against the manifest's directory.
* ``hf``       -- a HuggingFace ``datasets`` dataset written with ``save_to_disk``.
* ``builtin``  -- a name in the built-in registry, materialized on first use into an ImageFolder.

Safety (research/reliability.md §2.5 and §2.7): the user's path is realpath'd and checked,
component-wise, against the realpath'd data roots *before* anything looks at whether it exists, so an
outside path always gives the same ``PathOutsideRoots``. Listing never follows a symlink out of the
roots, never opens anything but a regular file, identifies images by content against a format
allowlist and rejects pixel bombs from the header alone. Files that fail a check are skipped and
counted per reason in :attr:`Dataset.skipped`; they never abort the listing. Corrupt image *data*
shows only when decoding, so :meth:`Dataset.open_image` raises :class:`ImageDecodeError` and the
extraction skips and counts those images.

Skip reasons (keys of :attr:`Dataset.skipped`, and :attr:`ImageDecodeError.reason`):
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

import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import stat
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple, cast, get_args

import numpy as np
from PIL import Image, ImageFile

from service.errors import (
    DatasetNotFound,
    EmptyDataset,
    InvalidDataset,
    PathOutsideRoots,
    TooFewClasses,
    TooFewSamplesPerClass,
)

__all__ = [
    "ALLOWED_FORMATS",
    "Dataset",
    "DatasetRef",
    "ImageDecodeError",
    "ImageItem",
    "check_dataset_path",
    "list_builtin_datasets",
    "load_dataset",
    "parse_dataset_ref",
    "register_builtin_dataset",
]

_logger = logging.getLogger(__name__)

#: PIL format names we decode. Pillow sniffs by content, so this allowlist (passed as ``formats=``)
#: is what keeps EPS (Ghostscript), PDF, FITS & co. away from the decoders.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")

DatasetKind = Literal["folder", "manifest", "hf", "builtin"]
_KINDS: tuple[str, ...] = get_args(DatasetKind)
_MANIFEST_SUFFIXES = (".csv", ".jsonl")
#: Directory name (lower case) -> canonical split; "val", "valid" and "validation" are one split.
_SPLIT_ALIASES: dict[str, str] = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_DEFAULT_SPLIT = "train"
_MAX_MANIFEST_BYTES = 1 << 30
_BUILTIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: A split name of a saved DatasetDict: datasets joins it to the directory, so nothing path-like.
_HF_SPLIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HF_IMAGE_NAMES = ("image", "img")
_HF_LABEL_NAMES = ("label", "labels")
_HF_BATCH = 512
_FINGERPRINT_VERSION = 1
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
#: Everything Pillow's decoders are known to raise on hostile or broken data.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    ZeroDivisionError,
    MemoryError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


class ImageDecodeError(Exception):
    """An image could not be (safely) opened or decoded.

    Not a user-facing :class:`~service.errors.BackboneRankError`: feature extraction skips and counts
    such images. ``reason`` uses the same vocabulary as :attr:`Dataset.skipped`.
    """

    def __init__(self, message: str, *, reason: str = "corrupt_image", source: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.source = source


# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetRef:
    """Where a dataset lives; JSON round trip with :meth:`to_dict` / :meth:`from_dict`.

    Attributes:
        kind: ``"folder"``, ``"manifest"``, ``"hf"`` or ``"builtin"``.
        path: The folder, manifest file or saved HF dataset directory (not for ``builtin``).
        name: The built-in dataset's name (``builtin`` only).
        split: Which split of a split layout to load; ``None`` loads ``"train"`` when splits exist.
    """

    kind: DatasetKind
    path: str | None = None
    name: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidDataset(
                f"unknown dataset kind {self.kind!r}; use one of {', '.join(_KINDS)}", kind=str(self.kind)
            )
        if isinstance(self.path, os.PathLike):
            object.__setattr__(self, "path", os.fspath(self.path))
        for attr in ("path", "name", "split"):
            value = getattr(self, attr)
            if value is not None and not isinstance(value, str):
                raise InvalidDataset(f"dataset {attr} must be a string, got {type(value).__name__}")
            if value == "":
                raise InvalidDataset(f"dataset {attr} is empty; give a non-empty {attr} or leave it out")
        if self.kind == "builtin":
            if self.name is None:
                raise InvalidDataset("a builtin dataset reference needs a name, e.g. 'builtin:NAME'")
            if self.path is not None:
                raise InvalidDataset("a builtin dataset reference takes a name, not a path")
        else:
            if self.path is None:
                raise InvalidDataset(f"a {self.kind} dataset reference needs a path")
            if self.name is not None:
                raise InvalidDataset(f"a {self.kind} dataset reference takes a path, not a name")

    def to_dict(self) -> dict[str, str]:
        """``{"kind", "path" | "name", ["split"]}``; fields that are ``None`` are left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetRef:
        """Inverse of :meth:`to_dict`; unknown keys or a missing ``kind`` are an ``InvalidDataset``."""
        if not isinstance(d, dict):
            raise InvalidDataset(f"a dataset reference must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InvalidDataset(f"unknown dataset reference field(s) {unknown}; allowed: kind, path, name, split")
        if "kind" not in d:
            raise InvalidDataset(f"a dataset reference needs a 'kind' ({', '.join(_KINDS)})")
        return cls(**d)


def parse_dataset_ref(text: str) -> DatasetRef:
    """Parse the text form of a dataset reference.

    ``hf:PATH`` is a saved HF dataset, ``builtin:NAME`` a built-in one, a path ending in ``.csv`` or
    ``.jsonl`` a manifest and anything else a folder. A ``#split`` suffix selects a split
    (``/data/pets#val``); the last ``#`` counts, and only when no ``/`` follows it, so directory
    names containing ``#`` still work.

    Raises:
        InvalidDataset: empty text, an empty name/path or an empty split.
    """
    if not isinstance(text, str) or not text:
        raise InvalidDataset("empty dataset reference; give a folder, a .csv/.jsonl manifest, hf:PATH or builtin:NAME")
    body, split = text, None
    head, sep, tail = text.rpartition("#")
    if sep and "/" not in tail and os.sep not in tail:
        if not tail:
            raise InvalidDataset(f"dataset reference {text!r} ends in '#' but names no split; e.g. '{head}#val'")
        body, split = head, tail
    if body.startswith("hf:"):
        return DatasetRef(kind="hf", path=body[3:] or None, split=split)
    if body.startswith("builtin:"):
        return DatasetRef(kind="builtin", name=body[8:] or None, split=split)
    kind: DatasetKind = "manifest" if body.lower().endswith(_MANIFEST_SUFFIXES) else "folder"
    return DatasetRef(kind=kind, path=body, split=split)


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageItem:
    """One labelled image: ``source`` is the file's absolute real path, or ``"hf:<row>"``."""

    source: str
    label: int


@dataclass(frozen=True)
class _HFSource:
    """Where :meth:`Dataset.open_image` finds the rows of an ``hf`` dataset."""

    directory: str  # real path of the (split's) saved Dataset directory
    image_column: str


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
    _hf: _HFSource | None = field(default=None, repr=False, compare=False)
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
        _warn_if_truncated_images_allowed()
        if self._hf is not None:
            data = self._hf_image_bytes(item)
            return _decode(io.BytesIO(data), item.source, self._max_image_pixels)
        with _open_regular_file(item.source, self._roots or (), self._max_image_bytes) as (fh, _):
            return _decode(fh, item.source, self._max_image_pixels)

    def _hf_image_bytes(self, item: ImageItem) -> bytes:
        assert self._hf is not None
        roots = self._roots or ()
        if self._hf_table is None:
            self._hf_table, _ = _load_hf_split(self._hf.directory, roots, self.ref.path or "")
        row = int(item.source.removeprefix("hf:"))
        value = self._hf_table[row : row + 1].column(self._hf.image_column).to_pylist()[0]
        data, path = _hf_image_value(value)
        if data is None and path is not None:
            full = _hf_image_path(path, self._hf.directory, roots)
            with _open_regular_file(full, roots, self._max_image_bytes) as (fh, _):
                data = fh.read()
        if data is None:
            raise ImageDecodeError(f"row {row} has no image", reason="missing_image", source=item.source)
        if len(data) > self._max_image_bytes:
            raise ImageDecodeError("image larger than the byte cap", reason="too_large_file", source=item.source)
        return data


# --------------------------------------------------------------------------------------------------
# Built-in datasets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Builtin:
    name: str
    materialize: Callable[[Path], Path]
    description: str


_BUILTINS: dict[str, _Builtin] = {}


def register_builtin_dataset(name: str, materialize: Callable[[Path], Path], description: str = "") -> None:
    """Register a built-in dataset.

    Args:
        name: ``[A-Za-z0-9][A-Za-z0-9_.-]*``; re-registering a name replaces it.
        materialize: ``materialize(builtin_dir)`` creates (once, idempotently; it runs under a file lock)
            an ImageFolder directory and returns its path. It must not reach the network.
        description: One line for :func:`list_builtin_datasets`.
    """
    if not isinstance(name, str) or not _BUILTIN_NAME.fullmatch(name):
        raise ValueError(f"built-in dataset name {name!r} must match {_BUILTIN_NAME.pattern}")
    if not callable(materialize):
        raise TypeError("materialize must be callable")
    if name in _BUILTINS:
        _logger.info("re-registering built-in dataset %s", name)
    _BUILTINS[name] = _Builtin(name, materialize, description)


def list_builtin_datasets() -> list[dict[str, str]]:
    """``[{"name", "description"}]`` of the registered built-in datasets, sorted by name."""
    return [{"name": b.name, "description": b.description} for b in sorted(_BUILTINS.values(), key=lambda b: b.name)]


# --------------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------------


class _Entry(NamedTuple):
    """A usable image found while listing."""

    source: str
    label: int
    rel: str  # path relative to the dataset root (or "hf:<row>"), for the fingerprint
    size: int | None
    mtime_ns: int | None


@dataclass
class _Listing:
    """What a lister found: every class (empty ones too) and the usable images with their stats."""

    classes: list[str]
    entries: list[_Entry]
    skipped: dict[str, int]
    splits: list[str] = field(default_factory=list)
    split: str | None = None
    extra_fingerprint: Any = None
    empty_dirs: list[str] = field(default_factory=list)
    hf: _HFSource | None = None


@dataclass(frozen=True)
class _Limits:
    max_image_pixels: int
    max_image_bytes: int


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
        builtin_dir: Where built-in datasets are materialized (default: ``<cache_dir>/datasets``).

    Returns:
        The :class:`Dataset`, items sorted by ``(label, source)``.

    Raises:
        InvalidDataset: NUL byte, wrong kind of path, unreadable manifest or HF dataset, unknown split.
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
        ref = DatasetRef("manifest" if path.lower().endswith(_MANIFEST_SUFFIXES) else "folder", path=path)
    elif not isinstance(ref, DatasetRef):
        raise TypeError(f"ref must be a DatasetRef or a string, got {type(ref).__name__}")
    limits = _Limits(max_image_pixels, max_image_bytes)

    if ref.kind == "builtin":
        root = _materialize_builtin(ref, builtin_dir)
        user = f"builtin:{ref.name}"
        listing_roots: tuple[str, ...] = (root,)
        listing = _list_folder(root, listing_roots, ref.split, user, limits)
    else:
        user = cast(str, ref.path)
        real = _resolve_user_path(user, roots)
        root = os.path.dirname(real) if ref.kind == "manifest" else real
        # CLI mode: the dataset's own directory is the only root.
        listing_roots = _realpath_roots(roots) if roots is not None else (root,)
        if ref.kind == "manifest":
            listing = _list_manifest(real, ref, listing_roots, user, limits)
        elif ref.kind == "folder":
            listing = _list_folder(root, listing_roots, ref.split, user, limits)
        else:
            listing = _list_hf(root, listing_roots, ref.split, user, limits)

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
        # §2.7: hostile-image events (bombs, unidentified formats) are worth an operator's attention.
        _logger.warning("dataset %s: skipped %s", user, _describe_skipped(dataset.skipped))
    _logger.info("dataset %s: %d images, %d classes", user, len(dataset), len(dataset.classes))
    return dataset


# --------------------------------------------------------------------------------------------------
# Paths and roots
# --------------------------------------------------------------------------------------------------


def _realpath_roots(roots: Sequence[str | Path]) -> tuple[str, ...]:
    if isinstance(roots, str | os.PathLike):
        roots = [roots]  # one root given bare; iterating a string would yield single characters
    return tuple(os.path.realpath(os.fspath(r)) for r in roots)


def _inside(real: str, roots: Sequence[str]) -> bool:
    """Component-wise containment (``/data2`` is not inside ``/data``; CVE-2023-29159)."""
    path = Path(real)
    return any(path.is_relative_to(root) for root in roots)


def _resolve_user_path(user: str, roots: Sequence[str | Path] | None) -> str:
    """NUL check, realpath, containment -- in that order, and all before any existence check."""
    if "\x00" in user:
        raise InvalidDataset(f"dataset path {user!r} contains a NUL byte; remove it", path=user)
    real = os.path.realpath(user)
    allowed = _realpath_roots(roots) if roots is not None else None
    if allowed is not None and not _inside(real, allowed):
        if not allowed:
            detail = "no data roots are configured, so the service accepts no dataset path"
        else:
            detail = "it resolves outside the configured data roots"
        raise PathOutsideRoots(
            f"dataset path {user!r} is not allowed: {detail}; put the dataset under one of the data roots "
            "(BACKBONE_RANK_DATA_ROOTS) and pass its path there",
            path=user,
        )
    return real


def _stat_user_path(real: str, user: str) -> os.stat_result:
    try:
        return os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetNotFound(f"dataset path {user!r} does not exist; check the path", path=user) from None
    except OSError as err:
        raise InvalidDataset(
            f"dataset path {user!r} cannot be read ({type(err).__name__}); check its permissions", path=user
        ) from None


def _require_dir(real: str, user: str, what: str) -> None:
    st = _stat_user_path(real, user)
    if not stat.S_ISDIR(st.st_mode):
        hint = " (a manifest must end in .csv or .jsonl)" if what == "folder" else ""
        raise InvalidDataset(
            f"dataset path {user!r} is not a directory; a {what} dataset is a directory{hint}", path=user
        )


def check_dataset_path(ref: DatasetRef, roots: Sequence[str | Path]) -> None:
    """The cheap checks :func:`load_dataset` starts with, without listing anything: for a caller (the web
    API) that must refuse a bad path at once and leave the listing to a worker.

    ``builtin`` refs are not checked here. Raises what ``load_dataset`` raises for the same path:
    :class:`InvalidDataset` (NUL byte, a manifest that is no ``.csv``/``.jsonl`` file, a folder or hf
    path that is no directory), :class:`PathOutsideRoots`, :class:`DatasetNotFound`.
    """
    if ref.kind == "builtin":
        return
    user = cast(str, ref.path)
    real = _resolve_user_path(user, roots)
    if ref.kind != "manifest":
        _require_dir(real, user, ref.kind)
        return
    if not user.lower().endswith(_MANIFEST_SUFFIXES):
        raise InvalidDataset(f"manifest {user!r} must end in .csv or .jsonl", path=user)
    if not stat.S_ISREG(_stat_user_path(real, user).st_mode):
        raise InvalidDataset(f"manifest {user!r} is not a regular file", path=user)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


@contextmanager
def _open_regular_file(path: str, roots: Sequence[str], max_bytes: int) -> Iterator[tuple[IO[bytes], str]]:
    """Open ``path`` for reading only if it is a regular file inside ``roots`` and not too large.

    Yields ``(file, real path)``; raises :class:`ImageDecodeError` with a skip reason otherwise.
    ``O_NOFOLLOW`` and a post-open ``fstat`` narrow the window in which the file could be swapped for
    a symlink or a FIFO; ``O_NONBLOCK`` makes sure even a swapped-in FIFO cannot hang the open.
    """
    real = os.path.realpath(path)
    if not _inside(real, roots):
        raise ImageDecodeError("resolves outside the data roots", reason="symlink_outside_root", source=path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ImageDecodeError("file not found", reason="missing_file", source=path) from None
    except OSError as err:
        raise ImageDecodeError(f"cannot stat: {err}", reason="unreadable_file", source=path) from None
    _check_stat(st, max_bytes, path)
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as err:
        raise ImageDecodeError(f"cannot open: {err}", reason="unreadable_file", source=path) from None
    with os.fdopen(fd, "rb") as fh:
        after = os.fstat(fd)
        if (after.st_dev, after.st_ino) != (st.st_dev, st.st_ino):
            raise ImageDecodeError("file replaced while opening", reason="unreadable_file", source=path)
        _check_stat(after, max_bytes, path)
        yield fh, real


_truncated_warning_given = False


def _warn_if_truncated_images_allowed() -> None:
    """Someone switched ``LOAD_TRUNCATED_IMAGES`` on, so truncated files would decode silently padded
    instead of raising. We never set it, and do not reset a global someone else set: say so, once."""
    global _truncated_warning_given
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _truncated_warning_given:
        _truncated_warning_given = True
        _logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images are not detected")


def _check_stat(st: os.stat_result, max_bytes: int, source: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ImageDecodeError("not a regular file", reason="not_regular_file", source=source)
    if st.st_size > max_bytes:
        raise ImageDecodeError(f"{st.st_size} bytes > {max_bytes}", reason="too_large_file", source=source)


def _open_header(fh: IO[bytes], source: str, max_pixels: int) -> Image.Image:
    """``Image.open`` restricted to the allowlist, pixel cap checked from the header (nothing decoded).

    While listing it runs inside ``warnings.catch_warnings()`` with DecompressionBombWarning as an
    error; when decoding, the cap is clamped to Pillow's bomb threshold instead (thread-safe).
    """
    try:
        im = Image.open(fh, formats=ALLOWED_FORMATS)
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(
            "not an image in an allowed format", reason="unsupported_format", source=source
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError("decompression bomb", reason="too_many_pixels", source=source) from None
    except _DECODE_ERRORS as err:
        raise ImageDecodeError(f"unreadable image header: {err}", reason="corrupt_image", source=source) from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise ImageDecodeError(f"{width}x{height} pixels > {max_pixels}", reason="too_many_pixels", source=source)
    if width <= 0 or height <= 0:
        im.close()
        raise ImageDecodeError(f"empty image {width}x{height}", reason="corrupt_image", source=source)
    return im


def _probe(fh: IO[bytes], source: str, max_pixels: int) -> None:
    """Header-only check used while listing."""
    with warnings.catch_warnings():
        # Local, not process-wide: Pillow's MAX_IMAGE_PIXELS only warns below 2x the cap.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        _open_header(fh, source, max_pixels).close()


def _decode(fh: IO[bytes], source: str, max_pixels: int) -> Image.Image:
    """Fully decode (first frame) and convert to RGB; any decoder failure is an ImageDecodeError.

    No ``warnings.catch_warnings()`` here: it is not thread-safe and extraction decodes in a
    background thread. Listing already skipped files above Pillow's bomb threshold (the cap is
    clamped to it), and the header check below refuses a file that grew since.
    """
    im = _open_header(fh, source, min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels))
    try:
        with im:
            im.load()
            if im.mode == "P" and "transparency" in im.info:
                # Straight P -> RGB warns about byte transparency; going through RGBA is equivalent.
                return im.convert("RGBA").convert("RGB")
            return im.convert("RGB")
    except _DECODE_ERRORS as err:
        raise ImageDecodeError(f"cannot decode: {err}", reason="corrupt_image", source=source) from err


# --------------------------------------------------------------------------------------------------
# folder
# --------------------------------------------------------------------------------------------------


def _scan_file(
    path: str, roots: Sequence[str], limits: _Limits, skipped: dict[str, int]
) -> tuple[str, int, int] | None:
    """Checks one listed file; returns ``(real path, size, mtime_ns)`` or counts why it was skipped."""
    try:
        with _open_regular_file(path, roots, limits.max_image_bytes) as (fh, real):
            st = os.fstat(fh.fileno())
            _probe(fh, path, limits.max_image_pixels)
    except ImageDecodeError as err:
        _logger.debug("skipping %s: %s (%s)", path, err.reason, err)
        _count(skipped, err.reason)
        return None
    return real, st.st_size, st.st_mtime_ns


def _count(skipped: dict[str, int], reason: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1


def _visible_entries(directory: str, user: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as err:
        raise InvalidDataset(
            f"dataset path {user!r} cannot be listed ({type(err).__name__}); check its permissions", path=user
        ) from None


def _dir_target(entry: os.DirEntry[str], roots: Sequence[str], skipped: dict[str, int]) -> str | None:
    """The real directory a top-level entry stands for, or ``None`` (not a directory, or escaping)."""
    try:
        if not entry.is_dir(follow_symlinks=True):
            return None
    except OSError:
        return None
    real = os.path.realpath(entry.path)
    if entry.is_symlink() and not _inside(real, roots):
        _count(skipped, "symlink_outside_root")
        return None
    return real


def _list_folder(root: str, roots: Sequence[str], split: str | None, user: str, limits: _Limits) -> _Listing:
    _require_dir(root, user, "folder")
    skipped: dict[str, int] = {}
    entries = _visible_entries(root, user)
    split_dirs = [e for e in entries if e.name.lower() in _SPLIT_ALIASES and _is_dir(e)]
    splits: list[str] = []
    chosen: str | None = None
    base = root
    if split_dirs:
        others = [e.name for e in entries if _is_dir(e) and e not in split_dirs]
        if others:
            raise InvalidDataset(
                f"dataset {user!r} mixes split directories ({', '.join(e.name for e in split_dirs)}) with other "
                f"directories ({', '.join(_natural_sorted(others)[:10])}); point at one split directory "
                f"(e.g. {os.path.join(user, split_dirs[0].name)!r}) or move the other directories out",
                path=user,
            )
        splits = [e.name for e in split_dirs]
        chosen = _select_split(splits, split, user)
        target = _dir_target(next(e for e in split_dirs if e.name == chosen), roots, skipped)
        if target is None:
            raise InvalidDataset(f"split {chosen!r} of dataset {user!r} leaves the data roots", path=user)
        base = target
        entries = _visible_entries(base, user)
    elif split is not None:
        raise InvalidDataset(
            f"dataset {user!r} has no splits (no train/val/test directories), so '#{split}' cannot be selected; "
            "drop the '#split' suffix",
            path=user,
        )

    class_dirs: dict[str, str] = {}
    for entry in entries:
        target = _dir_target(entry, roots, skipped)
        if target is not None:
            class_dirs[entry.name] = target
        elif not _is_dir(entry):
            # Files next to the class directories (README, labels.txt) belong to no class.
            _count(skipped, "not_in_class_dir")
    classes = _natural_sorted(class_dirs)
    found: list[_Entry] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        seen: set[str] = set()
        for real, size, mtime in _walk_class_dir(class_dirs[name], roots, limits, skipped):
            if real in seen:  # a symlink to a file of the same class: one image, listed once
                _count(skipped, "duplicate_entry")
                continue
            seen.add(real)
            found.append(_Entry(real, label, os.path.relpath(real, root), size, mtime))
        if not seen and not _has_visible_files(class_dirs[name]):
            empty.append(name)
    return _Listing(classes, found, skipped, splits=splits, split=chosen, empty_dirs=empty)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _has_visible_files(directory: str) -> bool:
    for _, dirnames, filenames in os.walk(directory, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(not f.startswith(".") for f in filenames):
            return True
    return False


def _walk_class_dir(
    top: str, roots: Sequence[str], limits: _Limits, skipped: dict[str, int]
) -> Iterator[tuple[str, int, int]]:
    def on_error(err: OSError) -> None:
        _logger.debug("cannot list %s: %s", err.filename, err)
        _count(skipped, "unreadable_dir")

    for dirpath, dirnames, filenames in os.walk(top, onerror=on_error, followlinks=False):
        kept = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                # Not followed (cycles, escapes); say so in the counts rather than dropping silently.
                inside = _inside(os.path.realpath(full), roots)
                _count(skipped, "symlink_dir_not_followed" if inside else "symlink_outside_root")
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            result = _scan_file(os.path.join(dirpath, name), roots, limits, skipped)
            if result is not None:
                yield result


def _select_split(available: list[str], requested: str | None, user: str) -> str:
    """The split to load: exact name, else the same canonical split (``val`` finds ``validation/``)."""
    wanted = requested if requested is not None else _DEFAULT_SPLIT
    if wanted in available:
        return wanted
    canonical = _SPLIT_ALIASES.get(wanted.lower())
    for name in available:
        if canonical is not None and _SPLIT_ALIASES.get(name.lower()) == canonical:
            return name
    names = ", ".join(available)
    if requested is None:
        detail = f"has splits ({names}) but no {wanted!r} split; select one by appending '#{available[0]}' to the path"
    else:
        detail = f"has no split {requested!r}; available splits: {names}; append one of them as '#<split>'"
    raise InvalidDataset(f"dataset {user!r} {detail}", path=user, splits=list(available))


# --------------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------------


def _list_manifest(real: str, ref: DatasetRef, roots: Sequence[str], user: str, limits: _Limits) -> _Listing:
    suffix = next((s for s in _MANIFEST_SUFFIXES if user.lower().endswith(s)), None)
    if suffix is None:
        raise InvalidDataset(f"manifest {user!r} must end in .csv or .jsonl", path=user)
    st = _stat_user_path(real, user)
    if stat.S_ISDIR(st.st_mode):
        raise InvalidDataset(
            f"manifest {user!r} is a directory; give the .csv/.jsonl file, or pass the directory as a folder dataset "
            "(without the .csv/.jsonl ending)",
            path=user,
        )
    if not stat.S_ISREG(st.st_mode):
        raise InvalidDataset(f"manifest {user!r} is not a regular file", path=user)
    if st.st_size > _MAX_MANIFEST_BYTES:
        raise InvalidDataset(f"manifest {user!r} is larger than {_MAX_MANIFEST_BYTES} bytes; split it", path=user)
    if ref.split is not None:
        raise InvalidDataset(
            f"manifest {user!r} has no splits; drop the '#{ref.split}' suffix and write one manifest per split",
            path=user,
        )
    try:
        with _open_regular_file(real, (os.path.dirname(real),), _MAX_MANIFEST_BYTES) as (fh, _):
            raw = fh.read()
    except ImageDecodeError as err:
        raise InvalidDataset(f"manifest {user!r} cannot be read ({err.reason})", path=user) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InvalidDataset(
            f"manifest {user!r} line {line}: not valid UTF-8; save it as UTF-8", path=user, line=line
        ) from None
    rows = _csv_rows(text, user) if suffix == ".csv" else _jsonl_rows(text, user)

    mdir = os.path.dirname(real)
    skipped: dict[str, int] = {}
    seen: dict[str, tuple[str, int]] = {}
    pending: list[tuple[str, str]] = []  # (real path, class name)
    labels: set[str] = set()
    for line, path, label in rows:
        if "\x00" in path:
            raise InvalidDataset(f"manifest {user!r} line {line}: the path contains a NUL byte", path=user, line=line)
        joined = os.path.join(mdir, path)
        image_real = os.path.realpath(joined)
        labels.add(label)
        if not _inside(image_real, roots):
            if _inside(os.path.normpath(joined), roots):
                _count(skipped, "symlink_outside_root")  # lexically inside: a symlink leads out
                continue
            raise PathOutsideRoots(
                f"manifest {user!r} line {line}: image path {path!r} resolves outside the allowed data roots; "
                "use paths under the data roots (in CLI mode: under the manifest's directory)",
                path=user,
                line=line,
            )
        if image_real in seen:
            first_label, first_line = seen[image_real]
            if first_label != label:
                raise InvalidDataset(
                    f"manifest {user!r} line {line}: {path!r} is labelled {label!r} but line {first_line} labels "
                    f"the same file {first_label!r}; give each image one label",
                    path=user,
                    line=line,
                )
            _count(skipped, "duplicate_entry")
            continue
        seen[image_real] = (label, line)
        pending.append((image_real, label))

    classes = _natural_sorted(labels)
    index = {name: i for i, name in enumerate(classes)}
    found: list[_Entry] = []
    for image_real, label in pending:
        if not os.path.lexists(image_real):
            _count(skipped, "missing_file")
            continue
        result = _scan_file(image_real, roots, limits, skipped)
        if result is not None:
            source, size, mtime = result
            found.append(_Entry(source, index[label], os.path.relpath(source, mdir), size, mtime))
    return _Listing(classes, found, skipped)


def _csv_rows(text: str, user: str) -> list[tuple[int, str, str]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise InvalidDataset(
                f"manifest {user!r} is empty; line 1 must be a header with 'path' and 'label'", path=user, line=1
            )
        names = [h.strip().lower() for h in header]
        missing = [c for c in ("path", "label") if c not in names]
        if missing:
            raise InvalidDataset(
                f"manifest {user!r} line 1: header {header} lacks column(s) {missing}; the first line must name "
                "the 'path' and 'label' columns",
                path=user,
                line=1,
            )
        ip, il = names.index("path"), names.index("label")
        rows = []
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise InvalidDataset(
                    f"manifest {user!r} line {line}: expected {len(header)} fields, got {len(row)}; quote fields "
                    "that contain commas",
                    path=user,
                    line=line,
                )
            path, label = row[ip].strip(), row[il].strip()
            _check_row(user, line, path, label)
            rows.append((line, path, label))
    except csv.Error as err:
        line = max(1, reader.line_num)
        raise InvalidDataset(f"manifest {user!r} line {line}: malformed CSV ({err})", path=user, line=line) from None
    return rows


def _jsonl_rows(text: str, user: str) -> list[tuple[int, str, str]]:
    rows = []
    # split("\n"), not splitlines(): JSON strings may legally contain U+2028 and friends.
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InvalidDataset(
                f"manifest {user!r} line {line}: invalid JSON ({err.msg})", path=user, line=line
            ) from None
        if not isinstance(obj, dict) or "path" not in obj or "label" not in obj:
            raise InvalidDataset(
                f"manifest {user!r} line {line}: expected an object with 'path' and 'label', e.g. "
                '{"path": "cat/1.jpg", "label": "cat"}',
                path=user,
                line=line,
            )
        path, label = obj["path"], obj["label"]
        if isinstance(label, int) and not isinstance(label, bool):
            label = str(label)
        if not isinstance(path, str) or not isinstance(label, str):
            raise InvalidDataset(
                f"manifest {user!r} line {line}: 'path' must be a string and 'label' a string or integer",
                path=user,
                line=line,
            )
        path, label = path.strip(), label.strip()
        _check_row(user, line, path, label)
        rows.append((line, path, label))
    return rows


def _check_row(user: str, line: int, path: str, label: str) -> None:
    if not path:
        raise InvalidDataset(f"manifest {user!r} line {line}: empty path", path=user, line=line)
    if not label:
        raise InvalidDataset(
            f"manifest {user!r} line {line}: empty label; give every image a class name", path=user, line=line
        )


# --------------------------------------------------------------------------------------------------
# hf
# --------------------------------------------------------------------------------------------------


def _read_json_file(path: str, roots: Sequence[str], user: str) -> Any:
    try:
        with _open_regular_file(path, roots, 64 * 2**20) as (fh, _):
            return json.loads(fh.read().decode("utf-8"))
    except (ImageDecodeError, ValueError) as err:
        raise InvalidDataset(
            f"{user!r} is not a dataset saved with datasets' save_to_disk: {os.path.basename(path)} is unreadable "
            f"({getattr(err, 'reason', type(err).__name__)})",
            path=user,
        ) from None


def _check_hf_dataset_dir(directory: str, roots: Sequence[str], user: str) -> list[tuple[str, int, int]]:
    """Validate a saved ``Dataset`` directory before ``datasets`` reads it.

    ``datasets`` joins the file names of ``state.json`` to the directory as they are, so a crafted
    ``state.json`` could make it read any file; every data file must be a plain name inside the roots.
    Returns ``(name, size, mtime_ns)`` of its files, for the fingerprint.
    """
    state_path = os.path.join(directory, "state.json")
    if not os.path.isfile(state_path) or not os.path.isfile(os.path.join(directory, "dataset_info.json")):
        raise InvalidDataset(
            f"{user!r} is not a dataset saved with datasets' save_to_disk (no state.json/dataset_info.json); "
            "save it with Dataset.save_to_disk or DatasetDict.save_to_disk",
            path=user,
        )
    state = _read_json_file(state_path, roots, user)
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list) or not files:
        raise InvalidDataset(f"{user!r}: state.json lists no data files; save the dataset again", path=user)
    stats = []
    for entry in [{"filename": "state.json"}, {"filename": "dataset_info.json"}, *files]:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or name != os.path.basename(name) or name.startswith("."):
            raise InvalidDataset(f"{user!r}: state.json names a data file outside the dataset directory", path=user)
        full = os.path.join(directory, name)
        real = os.path.realpath(full)
        try:
            st = os.stat(real)
        except OSError:
            raise InvalidDataset(
                f"{user!r}: data file {name!r} is missing; save the dataset again", path=user
            ) from None
        if not _inside(real, roots) or not stat.S_ISREG(st.st_mode):
            raise InvalidDataset(f"{user!r}: data file {name!r} is not a regular file inside the data roots", path=user)
        stats.append((os.path.relpath(full, directory), st.st_size, st.st_mtime_ns))
    return stats


def _hf_split_dirs(root: str, roots: Sequence[str], user: str) -> dict[str, str]:
    """Split name -> directory for a saved DatasetDict; ``{}`` for a single saved Dataset."""
    dict_json = os.path.join(root, "dataset_dict.json")
    if os.path.isfile(os.path.join(root, "state.json")) or not os.path.isfile(dict_json):
        return {}
    meta = _read_json_file(dict_json, roots, user)
    names = meta.get("splits") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names:
        raise InvalidDataset(f"{user!r}: dataset_dict.json lists no splits; save the dataset again", path=user)
    for name in names:
        if not isinstance(name, str) or not _HF_SPLIT_NAME.fullmatch(name) or name in (".", ".."):
            raise InvalidDataset(f"{user!r}: dataset_dict.json has an invalid split name {name!r}", path=user)
    return {name: os.path.join(root, name) for name in names}


def _import_hf() -> Any:
    try:
        import datasets  # optional dependency and a heavy import: only when an hf dataset is loaded
    except ImportError:
        raise InvalidDataset("hf datasets need the 'datasets' package; install backbone-rank[hf]") from None
    return datasets


def _load_hf_split(directory: str, roots: Sequence[str], user: str) -> tuple[Any, list[tuple[str, int, int]]]:
    """The split's rows as a ``datasets.Dataset`` in arrow format (slicing gives pyarrow tables), and
    its files' ``(name, size, mtime_ns)``."""
    file_stats = _check_hf_dataset_dir(directory, roots, user)
    hf = _import_hf()
    try:
        ds = hf.load_from_disk(directory)
    except Exception as err:  # any failure here means "not a readable saved dataset"
        # The exception text carries real paths; log it, do not echo it.
        _logger.warning("load_from_disk failed for %s: %r", user, err)
        raise InvalidDataset(
            f"{user!r} could not be read as a dataset saved with save_to_disk ({type(err).__name__}); save it again",
            path=user,
        ) from None
    if not isinstance(ds, hf.Dataset):
        raise InvalidDataset(f"{user!r}: expected a saved Dataset, found {type(ds).__name__}", path=user)
    return ds.with_format("arrow"), file_stats


def _list_hf(root: str, roots: Sequence[str], split: str | None, user: str, limits: _Limits) -> _Listing:
    _require_dir(root, user, "hf")
    if "::" in root:
        # fsspec (used by load_from_disk) would read "a::b" as a chained URL.
        raise InvalidDataset(f"hf dataset path {user!r} must not contain '::'", path=user)
    split_dirs = _hf_split_dirs(root, roots, user)
    splits = list(split_dirs)
    chosen: str | None = None
    directory = root
    if splits:
        chosen = _select_split(splits, split, user)
        directory = split_dirs[chosen]
    elif split is not None:
        raise InvalidDataset(
            f"hf dataset {user!r} is a single saved Dataset without splits; drop the '#{split}' suffix", path=user
        )
    real_dir = os.path.realpath(directory)
    if not _inside(real_dir, roots):
        raise InvalidDataset(f"split {chosen!r} of hf dataset {user!r} leaves the data roots", path=user)
    ds, file_stats = _load_hf_split(real_dir, roots, user)
    hf = _import_hf()
    features = ds.features
    image_col = next((c for c, f in features.items() if isinstance(f, hf.Image)), None)
    image_col = image_col or next((c for c in _HF_IMAGE_NAMES if c in features), None)
    label_col = next((c for c in _HF_LABEL_NAMES if isinstance(features.get(c), hf.ClassLabel)), None)
    label_col = label_col or next((c for c, f in features.items() if isinstance(f, hf.ClassLabel)), None)
    label_col = label_col or next((c for c in _HF_LABEL_NAMES if c in features), None)
    if image_col is None or label_col is None:
        raise InvalidDataset(
            f"hf dataset {user!r} needs an image column (an Image feature, or one named 'image'/'img') and a label "
            f"column (a ClassLabel, or one named 'label'/'labels'); its columns are {list(features)}",
            path=user,
        )
    class_label = features[label_col] if isinstance(features[label_col], hf.ClassLabel) else None

    skipped: dict[str, int] = {}
    rows: list[tuple[str, Any, tuple[int, int | None]]] = []  # (source, raw label, (n bytes, mtime_ns))
    for start in range(0, len(ds), _HF_BATCH):
        table = ds[start : start + _HF_BATCH]
        images = table.column(image_col).to_pylist()
        raw_labels = table.column(label_col).to_pylist()
        for offset, (value, label) in enumerate(zip(images, raw_labels, strict=True)):
            row = start + offset
            source = f"hf:{row}"
            if label is None or (class_label is not None and label == -1):
                _count(skipped, "missing_label")
                continue
            stats = _probe_hf_value(value, real_dir, roots, limits, skipped, source)
            if stats is not None:
                rows.append((source, label, stats))

    if class_label is not None:
        classes = list(class_label.names)  # the dataset's own order, not re-sorted
        bad = next((lab for _, lab, _ in rows if not isinstance(lab, int) or not 0 <= lab < len(classes)), None)
        if bad is not None:
            raise InvalidDataset(f"hf dataset {user!r}: label {bad!r} is outside its ClassLabel range", path=user)
        found = [_Entry(src, int(lab), src, *stats) for src, lab, stats in rows]
    else:
        names = []
        for _, lab, _ in rows:
            if isinstance(lab, bool) or not isinstance(lab, int | str):
                raise InvalidDataset(
                    f"hf dataset {user!r}: column {label_col!r} holds {type(lab).__name__} values; labels must be "
                    "strings, integers or a ClassLabel",
                    path=user,
                )
            names.append(str(lab))
        classes = _natural_sorted(set(names))
        index = {name: i for i, name in enumerate(classes)}
        found = [_Entry(src, index[name], src, *stats) for (src, _, stats), name in zip(rows, names, strict=True)]
    extra = {"files": file_stats, "hf_fingerprint": getattr(ds, "_fingerprint", None)}
    return _Listing(
        classes,
        found,
        skipped,
        splits=splits,
        split=chosen,
        extra_fingerprint=extra,
        hf=_HFSource(directory=real_dir, image_column=image_col),
    )


def _hf_image_value(value: Any) -> tuple[bytes | None, str | None]:
    """(bytes, path) of an image cell: an Image struct, raw bytes or a path string."""
    if isinstance(value, dict):
        return value.get("bytes"), value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value), None
    if isinstance(value, str):
        return None, value
    return None, None


def _hf_image_path(path: str, directory: str, roots: Sequence[str]) -> str:
    """An image cell's file path, anchored to the dataset directory (relative paths are not portable).

    Raises ImageDecodeError ``path_outside_root`` for a path that leaves the roots without any
    symlink's help (a symlink that leads out is caught later as ``symlink_outside_root``).
    """
    if "\x00" in path:
        raise ImageDecodeError("NUL byte in the image path", reason="unreadable_file", source=path)
    joined = os.path.join(directory, path)
    if not _inside(os.path.normpath(joined), roots):
        raise ImageDecodeError("image path outside the data roots", reason="path_outside_root", source=path)
    return joined


def _probe_hf_value(
    value: Any, directory: str, roots: Sequence[str], limits: _Limits, skipped: dict[str, int], source: str
) -> tuple[int, int | None] | None:
    """Header check of one image cell; ``(n bytes, mtime_ns or None)`` or ``None`` (counted as skipped)."""
    data, path = _hf_image_value(value)
    if data is None and path is not None:
        try:
            full = _hf_image_path(path, directory, roots)
        except ImageDecodeError as err:
            _count(skipped, err.reason)
            return None
        result = _scan_file(full, roots, limits, skipped)
        return None if result is None else (result[1], result[2])
    if data is None:
        _count(skipped, "missing_image")
        return None
    if len(data) > limits.max_image_bytes:
        _count(skipped, "too_large_file")
        return None
    try:
        _probe(io.BytesIO(data), source, limits.max_image_pixels)
    except ImageDecodeError as err:
        _count(skipped, err.reason)
        return None
    return len(data), None


# --------------------------------------------------------------------------------------------------
# builtin
# --------------------------------------------------------------------------------------------------


def _materialize_builtin(ref: DatasetRef, builtin_dir: str | Path | None) -> str:
    name = cast(str, ref.name)
    entry = _BUILTINS.get(name)
    if entry is None:
        known = ", ".join(sorted(_BUILTINS)) or "none registered"
        raise DatasetNotFound(f"unknown built-in dataset {name!r}; known: {known}", name=name)
    if builtin_dir is None:
        from service.config import get_settings

        builtin_dir = get_settings().cache_dir / "builtin"  # where `rank` and `datasets` look too
    directory = Path(builtin_dir)
    directory.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    # Two jobs asking for the same built-in dataset must not materialize it into each other.
    with FileLock(str(directory / f".{name}.lock")):
        try:
            out = entry.materialize(directory)
        except Exception as err:  # whatever the factory raises, the dataset is unavailable
            _logger.exception("materializing built-in dataset %s failed", name)
            raise DatasetNotFound(
                f"built-in dataset {name!r} could not be prepared ({type(err).__name__}); see the server log",
                name=name,
            ) from err
    real = os.path.realpath(os.fspath(out))
    if not os.path.isdir(real):
        raise InvalidDataset(f"built-in dataset {name!r} did not produce a directory", name=name)
    return real


# --------------------------------------------------------------------------------------------------
# Class order, subsampling, checks, fingerprint
# --------------------------------------------------------------------------------------------------

_DIGITS = re.compile(r"([0-9]+)")


def _natural_key(name: str) -> tuple[list[str | int], str]:
    """``class2 < class10``; case-insensitive first, then case-sensitive as the tiebreak."""
    parts: list[str | int] = [int(p) if i % 2 else p.casefold() for i, p in enumerate(_DIGITS.split(name))]
    return parts, name


def _natural_sorted(names: Any) -> list[str]:
    return sorted(names, key=_natural_key)


def _subsample(
    entries: list[_Entry],
    classes: list[str],
    max_per_class: int | None,
    seed: int,
) -> list[_Entry]:
    """Seeded per-class subsample, without replacement, from the sorted items.

    Each class draws from its own generator seeded by ``(seed, sha256(class name))``, so the sample of
    one class does not change when another class gains or loses images.
    """
    if max_per_class is None:
        return list(entries)
    by_class: list[list[_Entry]] = [[] for _ in classes]
    for entry in entries:
        by_class[entry.label].append(entry)
    kept = []
    for label, members in enumerate(by_class):
        members.sort(key=lambda e: e.source)
        if len(members) > max_per_class:
            name_key = int.from_bytes(hashlib.sha256(classes[label].encode("utf-8", "surrogatepass")).digest()[:8])
            rng = np.random.default_rng([seed, name_key])
            chosen = np.sort(rng.choice(len(members), size=max_per_class, replace=False))
            members = [members[i] for i in chosen]
        kept.extend(members)
    return kept


def _check_sizes(
    listing: _Listing,
    entries: list[_Entry],
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
    listing: _Listing,
    entries: list[_Entry],
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
