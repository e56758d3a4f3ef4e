"""Dataset references: what a request names (``DatasetSpec``, service/contract/requests.py) and its text form.

Separate from the listing so that processes that only check a reference (the CLI and the client building a
request, the web API) need neither the listers nor ``datasets``; it imports nothing but the typed errors.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from service.errors import InvalidDataset

__all__ = [
    "HUB_PREFIX",
    "MANIFEST_SUFFIXES",
    "UPLOAD_ID",
    "UPLOAD_PREFIX",
    "DatasetKind",
    "DatasetRef",
    "parse_dataset_ref",
]

DatasetKind = Literal["folder", "manifest", "hf", "builtin", "hub", "upload"]
_KINDS: tuple[str, ...] = get_args(DatasetKind)
#: A path with one of these endings is a manifest, any other path a folder.
MANIFEST_SUFFIXES = (".csv", ".jsonl")
#: huggingface_hub's URL form of a dataset repo (``hf://datasets/ORG/NAME``), optionally ``@REVISION``.
HUB_PREFIX = "hf://datasets/"
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
#: A dataset uploaded to the service (``POST /v1/datasets``): ``upload:<id>``, the id the sha256 of its archive.
UPLOAD_PREFIX = "upload:"
UPLOAD_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class DatasetRef:
    """Where a dataset lives; JSON round trip with :meth:`to_dict` / :meth:`from_dict`.

    Attributes:
        kind: ``"folder"``, ``"manifest"``, ``"hf"`` (saved on disk), ``"builtin"``, ``"hub"`` (a dataset repo
            on the Hugging Face hub, downloaded on demand: service/pipeline/data/hub_dataset.py) or ``"upload"`` (an
            archive uploaded to the service: service/pipeline/data/upload.py).
        path: The folder, manifest file or saved HF dataset directory (not for ``builtin``/``hub``/``upload``).
        name: The built-in dataset's name, the hub repo ``ORG/NAME``, or the upload's id.
        split: Which split of a split layout to load; ``None`` loads ``"train"`` when splits exist.
        revision: ``hub`` only: a branch, tag or commit (default ``main``); a result records the commit.
        image_column, label_column: ``hub`` only: the parquet columns to read (default: detected).
    """

    kind: DatasetKind
    path: str | None = None
    name: str | None = None
    split: str | None = None
    revision: str | None = None
    image_column: str | None = None
    label_column: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InvalidDataset(
                f"unknown dataset kind {self.kind!r}; use one of {', '.join(_KINDS)}", kind=str(self.kind)
            )
        if isinstance(self.path, os.PathLike):
            object.__setattr__(self, "path", os.fspath(self.path))
        for attr in ("path", "name", "split", "revision", "image_column", "label_column"):
            value = getattr(self, attr)
            if value is not None and not isinstance(value, str):
                raise InvalidDataset(f"dataset {attr} must be a string, got {type(value).__name__}")
            if value == "":
                raise InvalidDataset(f"dataset {attr} is empty; give a non-empty {attr} or leave it out")
        hub_only = [a for a in ("revision", "image_column", "label_column") if getattr(self, a) is not None]
        if hub_only and self.kind != "hub":
            raise InvalidDataset(f"{', '.join(hub_only)} applies to hub datasets (hf://datasets/ORG/NAME) only")
        if self.kind == "hub":
            if self.name is None or not _HUB_NAME.fullmatch(self.name):
                raise InvalidDataset(
                    f"a hub dataset reference needs the repo as ORG/NAME ('{HUB_PREFIX}ORG/NAME'), got {self.name!r}"
                )
            if self.path is not None:
                raise InvalidDataset("a hub dataset reference takes a repo name, not a path")
            if self.revision is not None and not _REVISION.fullmatch(self.revision):
                raise InvalidDataset(f"not a revision: {self.revision!r} (a branch, tag or commit)")
        elif self.kind == "builtin":
            if self.name is None:
                raise InvalidDataset("a builtin dataset reference needs a name, e.g. 'builtin:NAME'")
            if self.path is not None:
                raise InvalidDataset("a builtin dataset reference takes a name, not a path")
        elif self.kind == "upload":
            if self.name is None or not UPLOAD_ID.fullmatch(self.name):
                raise InvalidDataset(
                    f"an uploaded dataset is named by the id its upload returned ('{UPLOAD_PREFIX}<64 hex digits>'), "
                    f"got {self.name!r}; see GET /v1/datasets"
                )
            if self.path is not None:
                raise InvalidDataset("an uploaded dataset reference takes its id as the name, not a path")
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
            allowed = ", ".join(f.name for f in dataclasses.fields(cls))
            raise InvalidDataset(f"unknown dataset reference field(s) {unknown}; allowed: {allowed}")
        if "kind" not in d:
            raise InvalidDataset(f"a dataset reference needs a 'kind' ({', '.join(_KINDS)})")
        return cls(**d)


def parse_dataset_ref(text: str) -> DatasetRef:
    """Parse the text form of a dataset reference.

    ``hf://datasets/ORG/NAME[@REVISION]`` a dataset repo on the hub, ``hf:PATH`` a saved HF dataset,
    ``builtin:NAME`` a built-in one, ``upload:ID`` one uploaded to the service, a path ending in ``.csv`` or
    ``.jsonl`` a manifest and anything else a folder. A ``#split`` suffix selects a split (``/data/pets#val``);
    the last ``#`` counts, and only when no ``/`` follows it, so directory names containing ``#`` still work.

    Raises:
        InvalidDataset: empty text, an empty name/path or an empty split.
    """
    if not isinstance(text, str) or not text:
        raise InvalidDataset(
            "empty dataset reference; give a folder, a .csv/.jsonl manifest, hf://datasets/ORG/NAME, hf:PATH or "
            "builtin:NAME"
        )
    body, split = text, None
    head, sep, tail = text.rpartition("#")
    if sep and "/" not in tail and os.sep not in tail:
        if not tail:
            raise InvalidDataset(f"dataset reference {text!r} ends in '#' but names no split; e.g. '{head}#val'")
        body, split = head, tail
    if body.startswith(HUB_PREFIX):
        repo, at, revision = body[len(HUB_PREFIX) :].partition("@")
        return DatasetRef(kind="hub", name=repo or None, split=split, revision=revision if at else None)
    if body.startswith("hf:"):
        return DatasetRef(kind="hf", path=body[3:] or None, split=split)
    if body.startswith("builtin:"):
        return DatasetRef(kind="builtin", name=body[8:] or None, split=split)
    if body.startswith(UPLOAD_PREFIX):
        return DatasetRef(kind="upload", name=body[len(UPLOAD_PREFIX) :] or None, split=split)
    kind: DatasetKind = "manifest" if body.lower().endswith(MANIFEST_SUFFIXES) else "folder"
    return DatasetRef(kind=kind, path=body, split=split)
