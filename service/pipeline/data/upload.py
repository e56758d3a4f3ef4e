"""Uploaded datasets (``upload:<id>``): where the engine finds a dataset that the service stored.

The web process extracts and checks an uploaded archive and stores it under ``<uploads dir>/<id>/``
(service/uploads/store.py), the id being the sha256 of the archive. Its ``upload.json`` says where in that folder
the dataset is (``root``) and, for a manifest dataset, which file lists the images (``manifest``, relative to the
root). This module reads only those two fields, so that the engine needs nothing of the service's upload code (the
import contracts in pyproject.toml); the folder or manifest lister then lists the dataset like any other, confined
to the upload's folder. Separate from refs.py, which only parses references and opens no file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from service.errors import DatasetNotFound, InvalidDataset
from service.pipeline.data.paths import inside
from service.pipeline.data.refs import UPLOAD_ID, UPLOAD_PREFIX

__all__ = ["META_FILE", "StoredUpload", "locate_upload"]

#: The metadata (and summary) file of a stored upload, beside its dataset.
META_FILE = "upload.json"


@dataclass(frozen=True)
class StoredUpload:
    """Real paths of a stored upload: its folder (the listing's only root), the dataset root, the manifest if any."""

    directory: str
    root: str
    manifest: str | None


def _not_found(upload_id: str) -> DatasetNotFound:
    return DatasetNotFound(
        f"no uploaded dataset {UPLOAD_PREFIX}{upload_id} on this server (deleted, or removed after the retention "
        "period); upload the archive again (POST /v1/datasets) and use the reference it returns",
        name=upload_id,
    )


def locate_upload(upload_id: str, uploads_dir: str | os.PathLike[str] | None) -> StoredUpload:
    """The stored upload ``upload_id`` under ``uploads_dir``.

    Raises:
        InvalidDataset: not an upload id, or a process without an uploads directory.
        DatasetNotFound: no such upload (never uploaded, deleted or expired).
    """
    if not UPLOAD_ID.fullmatch(upload_id):
        raise InvalidDataset(f"not an upload id: {upload_id!r} (64 hex digits, as POST /v1/datasets returns)")
    if uploads_dir is None:
        raise InvalidDataset(f"{UPLOAD_PREFIX}{upload_id}: this process has no uploads directory")
    directory = os.path.realpath(os.path.join(os.fspath(uploads_dir), upload_id))
    try:
        meta = json.loads(Path(directory, META_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _not_found(upload_id) from None
    except (OSError, ValueError) as err:
        raise InvalidDataset(f"the stored upload {upload_id} cannot be read ({type(err).__name__})") from None
    root = _inside(directory, meta.get("root"), upload_id)
    manifest = meta.get("manifest")
    return StoredUpload(directory, root, None if manifest is None else _inside(root, manifest, upload_id))


def _inside(base: str, relative: object, upload_id: str) -> str:
    # Written by the service itself; checked anyway, so a damaged file cannot point a listing elsewhere.
    if not isinstance(relative, str) or os.path.isabs(relative):
        raise InvalidDataset(f"the stored upload {upload_id} is damaged; delete it and upload the archive again")
    real = os.path.realpath(os.path.join(base, relative))
    if not inside(real, (base,)):
        raise InvalidDataset(f"the stored upload {upload_id} is damaged; delete it and upload the archive again")
    return real
