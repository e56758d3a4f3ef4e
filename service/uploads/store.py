"""The service's uploaded datasets: receiving an archive as it streams, extracting and checking it, storing it by
content, and reading, listing, deleting and expiring what is stored.

Layout under ``Settings.uploads_dir``::

    <id>/upload.json       the summary; ``root`` and ``manifest`` tell the engine where the dataset is
                           (service/pipeline/data/upload.py)
    <id>/data/...          the extracted archive, files that are no usable image removed
    .staging/<random>/     one upload in progress: the archive as received, then its extraction

``<id>`` is the sha256 of the archive's bytes, so the same archive uploaded twice is one dataset. An upload
becomes visible with one rename of its finished folder (a reader sees all of it or none); on any failure its
staging folder is removed, so a refused upload leaves nothing behind. The body is written to disk in 1 MiB
pieces as it arrives and counted against ``max_upload_bytes`` while it streams: the web process never holds an
archive in memory. Retention (``upload_retention_days``, counted from the last upload of the same archive) is
applied when the service starts and whenever the uploads are listed; leftovers of a crashed process in
``.staging`` are removed then too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import IO, Any

import anyio

from service.atomic import write_text_atomic
from service.config import Settings
from service.errors import InvalidDataset, NoImages, TooFewClasses, UploadDiskFull, UploadTooLarge
from service.pipeline.data.decode import ALLOWED_FORMATS
from service.pipeline.data.folder import list_folder
from service.pipeline.data.listing import SPLIT_ALIASES, Limits, Listing, count_skip, natural_sorted, scan_file
from service.pipeline.data.manifest import list_manifest
from service.pipeline.data.refs import MANIFEST_SUFFIXES, UPLOAD_ID, UPLOAD_PREFIX
from service.pipeline.data.upload import META_FILE, locate_upload
from service.uploads.archive import Budget, extract_archive

__all__ = ["UploadStore"]

_META_VERSION = 1
_WRITE_BYTES = 1 << 20
#: Skipped files named one by one in a summary (the counts by reason are complete).
_SHOWN_SKIPPED = 100
#: A staging folder untouched this long belongs to a process that died mid-upload.
_STALE_STAGING_SECONDS = 24 * 3600


class UploadStore:
    """The uploads folder of ``settings`` and its budgets; stateless between calls (the folder is the state)."""

    def __init__(self, settings: Settings) -> None:
        self.directory = Path(settings.uploads_dir or settings.cache_dir / "uploads")
        self.staging = self.directory / ".staging"
        self.max_upload_bytes = settings.max_upload_bytes
        self.min_free_bytes = settings.min_free_disk_bytes
        self.budget = Budget(settings.max_upload_files, settings.max_upload_extracted_bytes, settings.max_upload_ratio)
        self.limits = Limits(settings.max_image_pixels, settings.max_image_bytes)
        days = settings.upload_retention_days
        self.retention_seconds = None if days is None else days * 86400.0

    # ------------------------------------------------------------------------------------------------ upload

    def too_large(self) -> UploadTooLarge:
        return UploadTooLarge(
            f"the upload is larger than {self.max_upload_bytes} bytes; upload fewer images (e.g. a sample of each "
            "class) or ask the operator to raise BACKBONE_RANK_MAX_UPLOAD_BYTES",
            limit=self.max_upload_bytes,
        )

    def no_room(self, needed: int, free: int, what: str) -> UploadDiskFull:
        return UploadDiskFull(
            f"{what} needs {needed / 2**20:.0f} MiB but the uploads folder's disk has {free / 2**20:.0f} MiB free "
            f"(and {self.min_free_bytes / 2**20:.0f} MiB must stay free); upload fewer images, or ask the operator to "
            "free space or move BACKBONE_RANK_UPLOADS_DIR",
            free_bytes=free,
            min_free_bytes=self.min_free_bytes,
        )

    def _room(self) -> int:
        """Bytes that may still be written to the uploads folder's disk (free space less the floor)."""
        return shutil.disk_usage(self.staging).free - self.min_free_bytes

    async def upload(
        self, chunks: AsyncIterator[bytes], *, declared_bytes: int | None, name: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Receive an archive from ``chunks``, then store it (or find it stored): ``(summary, created)``.

        Raises the :class:`~service.errors.UploadError` s, ``InvalidDataset`` (a layout the listers refuse) and
        ``TooFewClasses``; whatever happens, the staging folder is gone afterwards.
        """
        if declared_bytes is not None and declared_bytes > self.max_upload_bytes:
            raise self.too_large()
        workdir = Path(await anyio.to_thread.run_sync(self._new_staging))
        try:
            room = self._room()
            if (declared_bytes or 0) > room:  # before the first byte, when the client said how many come
                raise self.no_room(declared_bytes or 0, room + self.min_free_bytes, "the archive")
            archive = workdir / "archive"
            digest, size = await self._receive(chunks, archive, room)
            return await anyio.to_thread.run_sync(self._store, workdir, archive, digest, size, name)
        finally:
            # Also when the client went away or the request was cancelled: nothing of a failed upload stays.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(partial(shutil.rmtree, workdir, ignore_errors=True))

    def _new_staging(self) -> str:
        self.staging.mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix="upload-", dir=self.staging)

    async def _receive(self, chunks: AsyncIterator[bytes], target: Path, room: int) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = 0
        pending = bytearray()
        with open(target, "xb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_upload_bytes:
                    raise self.too_large()
                if size > room:  # a stream without (or with a false) Content-Length
                    raise self.no_room(size, room + self.min_free_bytes, "the archive")
                pending += chunk
                if len(pending) >= _WRITE_BYTES:
                    await anyio.to_thread.run_sync(_write, out, digest, bytes(pending))
                    pending.clear()
            if pending:
                await anyio.to_thread.run_sync(_write, out, digest, bytes(pending))
        return digest.hexdigest(), size

    def _store(
        self, workdir: Path, archive: Path, digest: str, size: int, name: str | None
    ) -> tuple[dict[str, Any], bool]:
        final = self.directory / digest
        if (final / META_FILE).is_file():
            os.utime(final / META_FILE)  # uploading it again restarts its retention period
            return self.view(digest), False
        tree = workdir / "upload"
        data = tree / "data"
        data.mkdir(parents=True)
        # Images do not compress: the extracted files take about the archive's size again (it is deleted after).
        room = self._room()
        if size > room:
            raise self.no_room(size, room + self.min_free_bytes, "extracting the archive")
        extracted = extract_archive(archive, data, self.budget)
        archive.unlink()  # its content is in data/ now; do not hold the disk twice
        meta = {
            "version": _META_VERSION,
            "id": digest,
            "sha256": digest,
            "name": name,
            "format": extracted.format,
            "n_entries": extracted.entries,
            "archive_bytes": size,
            "extracted_bytes": extracted.bytes,
            "created_at": time.time(),
            **self._summarize(tree, data, digest, extracted.skipped),
        }
        write_text_atomic(tree / META_FILE, json.dumps(meta, ensure_ascii=False, indent=1))
        try:
            # Not service.atomic.replace_dir: an upload already stored under this id (the same archive, uploaded at
            # the same time) must stay where it is for the jobs reading it.
            os.rename(tree, final)
        except OSError:
            if (final / META_FILE).is_file():
                return self.view(digest), False
            raise
        return self.view(digest), True

    def _summarize(self, tree: Path, data: Path, upload_id: str, skipped: dict[str, int]) -> dict[str, Any]:
        """Where the dataset is in ``data`` and what it holds; files that are no usable image are removed and
        reported. Refuses an archive without images (``no_images``) or with fewer than two classes."""
        tree, data = Path(os.path.realpath(tree)), Path(os.path.realpath(data))
        root = _dataset_root(data)
        manifest = _manifest(root)
        skipped = dict(skipped)
        skipped_files = self._remove_unusable(root, manifest, skipped)
        user = f"{UPLOAD_PREFIX}{upload_id}"
        roots = (str(tree),)
        listings: dict[str | None, Listing]
        if manifest is not None:
            listings = {None: list_manifest(str(manifest), roots, None, user, self.limits)}
        else:
            splits = sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name.lower() in SPLIT_ALIASES)
            splits_or_none: list[str | None] = [*splits] or [None]
            listings = {split: list_folder(str(root), roots, split, user, self.limits) for split in splits_or_none}
        per_split: dict[str, dict[str, int]] = {}
        totals: dict[str, int] = {}
        for split, listing in listings.items():
            counts = dict.fromkeys(listing.classes, 0)
            for entry in listing.entries:
                counts[listing.classes[entry.label]] += 1
            for reason, n in listing.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
            for cls, n in counts.items():
                totals[cls] = totals.get(cls, 0) + n
            if split is not None:
                per_split[split] = {cls: counts[cls] for cls in natural_sorted(counts)}
        classes = natural_sorted(totals)
        n_images = sum(totals.values())
        if n_images == 0:
            raise NoImages(
                f"the archive holds no usable image in an allowed format ({', '.join(ALLOWED_FORMATS)}); put the "
                "images in one folder per class (or list them in a .csv/.jsonl manifest with path and label)",
                skipped=skipped,
                skipped_files=skipped_files,
            )
        used = [cls for cls in classes if totals[cls]]
        if len(used) < 2:
            raise TooFewClasses(
                f"the archive has {len(used)} class with images ({', '.join(used)}); ranking needs at least 2 "
                "classes: one folder of images per class (or one label per class in a manifest)",
                classes=used,
            )
        return {
            "layout": "manifest" if manifest is not None else "folder",
            "root": os.path.relpath(root, tree),
            "manifest": None if manifest is None else os.path.relpath(manifest, root),
            "classes": classes,
            "class_counts": {cls: totals[cls] for cls in classes},
            "splits": per_split,
            "n_images": n_images,
            "skipped": dict(sorted(skipped.items())),
            "skipped_files": skipped_files,
        }

    def _remove_unusable(self, root: Path, manifest: Path | None, skipped: dict[str, int]) -> list[dict[str, str]]:
        """Remove every file that is not an image within the decoder's limits (decode.py, header only: format
        allowlist, pixel cap, file size), counting it by reason; the first ones are named in the summary."""
        named: list[dict[str, str]] = []
        real_root = (os.path.realpath(root),)
        for dirpath, _, filenames in os.walk(root):  # the extraction made no links to follow
            for filename in sorted(filenames):
                path = os.path.join(dirpath, filename)
                if manifest is not None and path == str(manifest):
                    continue
                reasons: dict[str, int] = {}
                if scan_file(path, real_root, self.limits, reasons) is None:
                    reason = next(iter(reasons), "unreadable_file")
                    count_skip(skipped, reason)
                    if len(named) < _SHOWN_SKIPPED:
                        named.append({"path": os.path.relpath(path, root), "reason": reason})
                    os.unlink(path)
        return named

    # ------------------------------------------------------------------------------------------------- reads

    def view(self, upload_id: str) -> dict[str, Any]:
        """The stored upload's summary as the API shows it (``DatasetNotFound`` when there is none)."""
        stored = locate_upload(upload_id, self.directory)
        meta_path = Path(stored.directory, META_FILE)
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        uploaded = meta_path.stat().st_mtime
        internal = ("version", "root", "manifest")
        return {
            **{k: v for k, v in meta.items() if k not in internal},
            "ref": f"{UPLOAD_PREFIX}{upload_id}",
            "dataset": {"kind": "upload", "name": upload_id},
            "manifest": meta.get("manifest"),
            "last_uploaded_at": uploaded,
            "expires_at": None if self.retention_seconds is None else uploaded + self.retention_seconds,
            "url": f"/v1/datasets/{upload_id}",
        }

    def list_uploads(self) -> list[dict[str, Any]]:
        """Every stored upload, newest first (expired ones are removed first)."""
        self.purge_expired()
        views = []
        for upload_id in self._ids():
            try:
                views.append(self.view(upload_id))
            except (InvalidDataset, OSError, ValueError):
                continue  # deleted meanwhile, or damaged: GET of that id says which
        return sorted(views, key=lambda v: v["created_at"], reverse=True)

    def delete(self, upload_id: str) -> dict[str, Any]:
        """Remove the upload; returns its summary. Jobs already queued on it will fail with ``dataset_not_found``."""
        view = self.view(upload_id)
        self._remove(self.directory / upload_id)
        return view

    def _ids(self) -> list[str]:
        try:
            return [e.name for e in os.scandir(self.directory) if UPLOAD_ID.fullmatch(e.name) and e.is_dir()]
        except FileNotFoundError:
            return []

    def _remove(self, folder: Path) -> None:
        # Moved into staging first, so the id disappears at once and a reader never sees a half-deleted dataset.
        self.staging.mkdir(parents=True, exist_ok=True)
        doomed = Path(tempfile.mkdtemp(prefix="deleted-", dir=self.staging))
        try:
            os.rename(folder, doomed / "upload")
        except FileNotFoundError:
            pass
        shutil.rmtree(doomed, ignore_errors=True)

    def purge_expired(self, now: float | None = None) -> list[str]:
        """Remove uploads not uploaded again within the retention period, and staging folders of dead uploads;
        returns the ids removed."""
        now = time.time() if now is None else now
        removed = []
        if self.retention_seconds is not None:
            for upload_id in self._ids():
                folder = self.directory / upload_id
                try:
                    age = now - (folder / META_FILE).stat().st_mtime
                except FileNotFoundError:
                    age = float("inf")  # a folder without its summary is no upload (never made by _store)
                if age > self.retention_seconds:
                    self._remove(folder)
                    removed.append(upload_id)
        try:
            leftovers = list(os.scandir(self.staging))
        except FileNotFoundError:
            leftovers = []
        for entry in leftovers:
            if now - _newest_mtime(Path(entry.path)) > _STALE_STAGING_SECONDS:
                shutil.rmtree(entry.path, ignore_errors=True)
        return removed


def _write(out: IO[bytes], digest: Any, data: bytes) -> None:
    digest.update(data)
    out.write(data)


def _newest_mtime(folder: Path) -> float:
    """The latest change in a staging folder: the folder itself or a file directly in it (the growing archive)."""
    times = [folder.lstat().st_mtime]
    try:
        times += [entry.stat(follow_symlinks=False).st_mtime for entry in os.scandir(folder)]
    except (NotADirectoryError, FileNotFoundError):
        pass
    return max(times)


def _visible(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return [e for e in entries if not e.name.startswith(".")]


def _dataset_root(data: Path) -> Path:
    """Where the classes (or splits, or the manifest) are: an archive made from a folder ``pets/`` holds
    ``pets/cat/...``, so a lone folder that itself holds folders or a manifest is entered (not a split folder, and
    not a lone class folder, which is a one-class dataset)."""
    root = data
    while True:
        entries = _visible(root)
        if len(entries) != 1 or not entries[0].is_dir() or entries[0].name.lower() in SPLIT_ALIASES:
            return root
        inner = _visible(Path(entries[0].path))
        if not any(e.is_dir() or e.name.lower().endswith(MANIFEST_SUFFIXES) for e in inner):
            return root
        root = Path(entries[0].path)


def _manifest(root: Path) -> Path | None:
    """The manifest at the dataset's top, if there is one; two are ambiguous."""
    found = sorted(e.name for e in _visible(root) if e.is_file() and e.name.lower().endswith(MANIFEST_SUFFIXES))
    if len(found) > 1:
        raise InvalidDataset(
            f"the archive has {len(found)} manifests at its top ({', '.join(found[:5])}); keep one .csv/.jsonl "
            "manifest (path,label) beside the images, or none and one folder per class"
        )
    return root / found[0] if found else None
