"""Listing a class-folder dataset: one sub-directory per class, optionally under split directories.

``train/``, ``val/`` (``valid/``, ``validation/``) and ``test/`` at the top make it a split layout, of which
one split is listed. Built-in datasets are materialized into this layout too
(service/pipeline/data/builtin.py). One of the listers that share the :class:`Listing` shape
(service/pipeline/data/listing.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

from service.errors import InvalidDataset
from service.pipeline.data.listing import (
    SPLIT_ALIASES,
    Entry,
    Limits,
    Listing,
    count_skip,
    natural_sorted,
    scan_file,
    select_split,
)
from service.pipeline.data.paths import inside, require_dir

__all__ = ["list_folder"]

_logger = logging.getLogger(__name__)


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
    if entry.is_symlink() and not inside(real, roots):
        count_skip(skipped, "symlink_outside_root")
        return None
    return real


def list_folder(root: str, roots: Sequence[str], split: str | None, user: str, limits: Limits) -> Listing:
    require_dir(root, user, "folder")
    skipped: dict[str, int] = {}
    entries = _visible_entries(root, user)
    split_dirs = [e for e in entries if e.name.lower() in SPLIT_ALIASES and _is_dir(e)]
    splits: list[str] = []
    chosen: str | None = None
    base = root
    if split_dirs:
        others = [e.name for e in entries if _is_dir(e) and e not in split_dirs]
        if others:
            raise InvalidDataset(
                f"dataset {user!r} mixes split directories ({', '.join(e.name for e in split_dirs)}) with other "
                f"directories ({', '.join(natural_sorted(others)[:10])}); point at one split directory "
                f"(e.g. {os.path.join(user, split_dirs[0].name)!r}) or move the other directories out",
                path=user,
            )
        splits = [e.name for e in split_dirs]
        chosen = select_split(splits, split, user)
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
            count_skip(skipped, "not_in_class_dir")
    classes = natural_sorted(class_dirs)
    found: list[Entry] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        seen: set[str] = set()
        for real, size, mtime in _walk_class_dir(class_dirs[name], roots, limits, skipped):
            if real in seen:  # a symlink to a file of the same class: one image, listed once
                count_skip(skipped, "duplicate_entry")
                continue
            seen.add(real)
            found.append(Entry(real, label, os.path.relpath(real, root), size, mtime))
        if not seen and not _has_visible_files(class_dirs[name]):
            empty.append(name)
    return Listing(classes, found, skipped, splits=splits, split=chosen, empty_dirs=empty)


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
    top: str, roots: Sequence[str], limits: Limits, skipped: dict[str, int]
) -> Iterator[tuple[str, int, int]]:
    def on_error(err: OSError) -> None:
        _logger.debug("cannot list %s: %s", err.filename, err)
        count_skip(skipped, "unreadable_dir")

    for dirpath, dirnames, filenames in os.walk(top, onerror=on_error, followlinks=False):
        kept = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                # Not followed (cycles, escapes); say so in the counts rather than dropping silently.
                in_roots = inside(os.path.realpath(full), roots)
                count_skip(skipped, "symlink_dir_not_followed" if in_roots else "symlink_outside_root")
                continue
            kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            result = scan_file(os.path.join(dirpath, name), roots, limits, skipped)
            if result is not None:
                yield result
