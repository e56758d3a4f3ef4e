"""What every lister returns, and the pieces the listers share.

A lister (``list_folder`` in folder.py, ``list_manifest`` in manifest.py, ``list_hf`` in hf_disk.py, all in
service/pipeline/data/) has the shape :data:`Lister`: it takes the real path of the user's reference, the data
roots, the requested split, the user's path (for messages) and the :class:`Limits`, and returns a
:class:`Listing`. :func:`~service.pipeline.data.datasets.load_dataset` subsamples, checks and fingerprints
that listing the same way whichever lister made it. Separate from datasets.py so the listers do not import the
module that imports them.

Files that fail a check are skipped and counted per reason (:func:`count_skip`); they never abort the
listing. Symlinks are never followed out of the roots, and only regular files are opened.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from service.errors import InvalidDataset
from service.pipeline.data.decode import ImageDecodeError, probe_image
from service.pipeline.data.paths import open_regular_file

__all__ = [
    "class_sample",
    "SPLIT_ALIASES",
    "Entry",
    "HFSource",
    "Limits",
    "Lister",
    "Listing",
    "count_skip",
    "natural_sorted",
    "scan_file",
    "select_split",
]

_logger = logging.getLogger(__name__)

#: Directory name (lower case) -> canonical split; "val", "valid" and "validation" are one split.
SPLIT_ALIASES: dict[str, str] = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_DEFAULT_SPLIT = "train"


@dataclass(frozen=True)
class HFSource:
    """Where :meth:`Dataset.open_image` finds the rows of an ``hf`` dataset."""

    directory: str  # real path of the (split's) saved Dataset directory
    image_column: str


class Entry(NamedTuple):
    """A usable image found while listing."""

    source: str
    label: int
    rel: str  # path relative to the dataset root (or "hf:<row>"), for the fingerprint
    size: int | None
    mtime_ns: int | None


@dataclass
class Listing:
    """What a lister found: every class (empty ones too) and the usable images with their stats."""

    classes: list[str]
    entries: list[Entry]
    skipped: dict[str, int]
    splits: list[str] = field(default_factory=list)
    split: str | None = None
    extra_fingerprint: Any = None
    empty_dirs: list[str] = field(default_factory=list)
    hf: HFSource | None = None


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int
    max_image_bytes: int


#: ``lister(real path, data roots, requested split, user's path, limits)``.
Lister = Callable[[str, Sequence[str], str | None, str, Limits], Listing]


def scan_file(path: str, roots: Sequence[str], limits: Limits, skipped: dict[str, int]) -> tuple[str, int, int] | None:
    """Checks one listed file; returns ``(real path, size, mtime_ns)`` or counts why it was skipped."""
    try:
        with open_regular_file(path, roots, limits.max_image_bytes) as (fh, real):
            st = os.fstat(fh.fileno())
            probe_image(fh, path, limits.max_image_pixels)
    except ImageDecodeError as err:
        _logger.debug("skipping %s: %s (%s)", path, err.reason, err)
        count_skip(skipped, err.reason)
        return None
    return real, st.st_size, st.st_mtime_ns


def count_skip(skipped: dict[str, int], reason: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1


def select_split(available: list[str], requested: str | None, user: str) -> str:
    """The split to load: exact name, else the same canonical split (``val`` finds ``validation/``)."""
    wanted = requested if requested is not None else _DEFAULT_SPLIT
    if wanted in available:
        return wanted
    canonical = SPLIT_ALIASES.get(wanted.lower())
    for name in available:
        if canonical is not None and SPLIT_ALIASES.get(name.lower()) == canonical:
            return name
    names = ", ".join(available)
    if requested is None:
        detail = f"has splits ({names}) but no {wanted!r} split; select one by appending '#{available[0]}' to the path"
    else:
        detail = f"has no split {requested!r}; available splits: {names}; append one of them as '#<split>'"
    raise InvalidDataset(f"dataset {user!r} {detail}", path=user, splits=list(available))


_DIGITS = re.compile(r"([0-9]+)")


def _natural_key(name: str) -> tuple[list[str | int], str]:
    """``class2 < class10``; case-insensitive first, then case-sensitive as the tiebreak."""
    parts: list[str | int] = [int(p) if i % 2 else p.casefold() for i, p in enumerate(_DIGITS.split(name))]
    return parts, name


def natural_sorted(names: Any) -> list[str]:
    return sorted(names, key=_natural_key)


def class_sample(n_members: int, class_name: str, max_per_class: int, seed: int) -> list[int]:
    """Which of a class's ``n_members`` (in their listing order) a seeded sample of ``max_per_class`` keeps,
    ascending. Each class draws from its own generator seeded by ``(seed, sha256(class name))``, so the sample of
    one class does not change when another class gains or loses images (folders, manifests and hub datasets alike).
    """
    if n_members <= max_per_class:
        return list(range(n_members))
    name_key = int.from_bytes(hashlib.sha256(class_name.encode("utf-8", "surrogatepass")).digest()[:8])
    rng = np.random.default_rng([seed, name_key])
    return [int(i) for i in np.sort(rng.choice(n_members, size=max_per_class, replace=False))]
