"""Extracting an uploaded archive (zip, or tar: plain, .gz, .bz2, .xz) into a fresh directory, safely and within
budgets.

Separate from the upload store (service/uploads/store.py) because this is the code that reads hostile bytes; it
knows nothing of datasets or HTTP. The rules (/work/shared/research/reliability.md §2.8 is where they come from;
the repository's own record is service/errors.py and tests/service/test_upload.py):

* The format is recognised by content, never by name or Content-Type: a zip's local-header signature, a
  compressed stream's magic bytes (with a tar inside), or a tar header with a valid checksum.
* Every entry is checked before anything of it is written. Its name must be relative, without ``..``, a drive,
  a backslash or a NUL, and valid UTF-8; it must be a regular file or a folder (links, devices, FIFOs and sparse
  files are refused); tar members also pass ``tarfile.data_filter`` (what ``filter="data"`` applies). Any
  failure refuses the whole archive with ``unsafe_archive_entry`` naming the entry.
* Budgets: entries (``too_many_files``, a zip's count read from its end record before :mod:`zipfile` loads its
  directory), and extracted bytes against both ``max_bytes`` and ``max_ratio`` times the archive's size
  (``archive_bomb``): summed from the headers before extracting, and counted again while copying, so a header
  that lies does not help. A tar header (pax or GNU long name) larger than 8 MiB is refused (tarfile reads one
  whole).
* Files are created with ``O_EXCL | O_NOFOLLOW`` in folders this code made, so nothing can be written through a
  link or over an earlier entry. Hidden entries and macOS metadata (``.*``, ``__MACOSX/``) are not extracted.
* Reading errors (an early end, a bad checksum, a broken compressed stream) are ``truncated_archive``.

The caller owns ``dest`` and removes it on any error; this module never writes elsewhere.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from service.errors import ArchiveBomb, NotAnArchive, TooManyFiles, TruncatedArchive, UnsafeArchiveEntry

__all__ = ["Budget", "Extracted", "detect_format", "extract_archive"]

_CHUNK = 1 << 20
#: Largest single read tarfile may ask for: the longest pax or GNU long-name header accepted.
_MAX_HEADER_BYTES = 8 << 20
#: A zip's central directory entry is 46 bytes plus its name, extra field and comment; more than this per entry on
#: average (beyond the first MiB) is no dataset, and zipfile would read the whole directory into memory.
_MAX_DIRECTORY_BYTES_PER_ENTRY = 512
_MAX_DEPTH = 64
_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
#: Exceptions that mean the archive's bytes are cut short or damaged (not our disk: writes are outside these).
_READ_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    tarfile.ReadError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
    OSError,
    ValueError,
    struct.error,
)
#: tarfile's filter="data" as a function (PEP 706; Python 3.11.4 and later).
_DATA_FILTER: Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None] | None = getattr(tarfile, "data_filter", None)
#: What zipfile.ZipFile.open may raise besides: an unsupported method, an encrypted entry (both refused earlier).
_OPEN_ERRORS: tuple[type[BaseException], ...] = (*_READ_ERRORS, NotImplementedError, RuntimeError)
#: The decompressing reader of each compressed tar (typeshed does not type these file objects as IO[bytes]).
_COMPRESSED: dict[str, Callable[[IO[bytes]], Any]] = {
    "tar.gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    "tar.bz2": lambda raw: bz2.BZ2File(raw, mode="rb"),
    "tar.xz": lambda raw: lzma.LZMAFile(raw, mode="rb"),
}


@dataclass(frozen=True)
class Budget:
    """What one archive may hold.

    Attributes:
        max_files: Entries, files and folders together.
        max_bytes: Extracted bytes.
        max_ratio: Extracted bytes per archive byte (zip bombs); not applied below ``ratio_floor`` extracted bytes,
            where a few compressible files (BMP, TIFF) would otherwise trip it.
    """

    max_files: int
    max_bytes: int
    max_ratio: float
    ratio_floor: int = 64 << 20

    def limit(self, archive_bytes: int) -> tuple[int, str]:
        """The extracted-bytes limit for an archive of ``archive_bytes``, and which budget it is."""
        by_ratio = max(int(self.max_ratio * archive_bytes), self.ratio_floor)
        if by_ratio < self.max_bytes:
            return by_ratio, f"{self.max_ratio:g} times the archive's {archive_bytes} bytes"
        return self.max_bytes, f"the limit of {self.max_bytes} extracted bytes"


@dataclass
class Extracted:
    """What an extraction did: entries read, files written and their bytes, entries left out (by reason)."""

    format: str
    entries: int = 0
    files: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"zip"``, ``"tar"``, ``"tar.gz"``, ``"tar.bz2"`` or ``"tar.xz"``, from the first bytes.

    Raises:
        NotAnArchive: none of these (a compressed stream is checked for a tar inside when extracting).
        TruncatedArchive: the start of a tar header, cut short.
    """
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"BZh"):
        return "tar.bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar.xz"
    if _is_tar_header(head):
        return "tar"
    if len(head) < 512 and head[257:262] == b"ustar":
        raise TruncatedArchive("the tar archive ends inside its first header; upload the whole file")
    raise NotAnArchive(
        "the upload is not a zip or tar archive (plain, .gz, .bz2 or .xz); send one of those, holding one folder of "
        "images per class (or a .csv/.jsonl manifest with the images)"
    )


def _is_tar_header(block: bytes) -> bool:
    """A 512-byte block whose checksum field matches its bytes (what tarfile checks), or a ustar magic."""
    if len(block) < 512 or not block.strip(b"\0"):
        return False
    if block[257:262] == b"ustar":
        return True
    try:
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * 32 + sum(block[156:512])


def extract_archive(path: str | os.PathLike[str], dest: str | os.PathLike[str], budget: Budget) -> Extracted:
    """Extract the archive at ``path`` into the existing, empty directory ``dest``.

    Raises:
        NotAnArchive, TruncatedArchive, UnsafeArchiveEntry, TooManyFiles, ArchiveBomb: see the module docstring.
            ``dest`` may then hold part of the archive: the caller removes it.
    """
    fmt = detect_format(path)
    run = _Extraction(os.path.realpath(dest), budget, os.path.getsize(path), fmt)
    if fmt == "zip":
        _extract_zip(Path(path), run)
    else:
        _extract_tar(Path(path), fmt, run)
    return run.result


def _shown(name: str) -> str:
    """An entry's name for messages: control characters and undecodable bytes escaped, at most 300 characters."""
    text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= 300 else text[:300] + "..."


def _unsafe(name: str, why: str) -> UnsafeArchiveEntry:
    return UnsafeArchiveEntry(
        f"archive entry {_shown(name)!r} {why}; the archive is refused as a whole (nothing of it is kept): "
        "re-create it from the folder itself, with relative paths and plain files only",
        entry=_shown(name),
    )


def entry_parts(name: str) -> list[str]:
    """The path components of an entry's name, or :class:`UnsafeArchiveEntry` for a name that is not a plain
    relative path. ``.`` and empty components are dropped (``./cat//1.png`` is ``cat/1.png``)."""
    if "\x00" in name:
        raise _unsafe(name, "contains a NUL byte")
    if "\\" in name:
        raise _unsafe(name, "contains a backslash (a Windows path separator)")
    if name.startswith("/"):
        raise _unsafe(name, "is an absolute path")
    if _DRIVE.match(name):
        raise _unsafe(name, "names a drive")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _unsafe(name, "is not valid UTF-8") from None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(name, "leaves the archive's folder ('..')")
    if len(parts) > _MAX_DEPTH:
        raise _unsafe(name, f"is nested deeper than {_MAX_DEPTH} folders")
    if any(len(part.encode("utf-8")) > 255 for part in parts):
        raise _unsafe(name, "has a name longer than 255 bytes")
    return parts


def _hidden(parts: list[str]) -> bool:
    # macOS archives carry a __MACOSX/ tree of ._* resource forks, one per file: metadata, not images.
    return bool(parts) and (parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts))


class _Extraction:
    """The running counts of one extraction and the only code that writes: folders and exclusive new files."""

    def __init__(self, dest: str, budget: Budget, archive_bytes: int, fmt: str) -> None:
        self.dest = dest
        self.budget = budget
        self.limit, self.limit_name = budget.limit(archive_bytes)
        self.declared = 0
        self.result = Extracted(format=fmt)

    def count_entry(self) -> None:
        self.result.entries += 1
        if self.result.entries > self.budget.max_files:
            raise self.too_many()

    def too_many(self) -> TooManyFiles:
        return TooManyFiles(
            f"the archive holds more than {self.budget.max_files} entries (files and folders); upload fewer "
            "images, or a sample of each class",
            limit=self.budget.max_files,
        )

    def declare(self, size: int) -> None:
        """Add an entry's size as its header states it, before extracting it."""
        self.declared += max(size, 0)
        if self.declared > self.limit:
            raise self._bomb(self.declared)

    def _bomb(self, size: int) -> ArchiveBomb:
        return ArchiveBomb(
            f"the archive would extract to more than {size} bytes, over {self.limit_name}; upload fewer or smaller "
            "images (archives of already-compressed images hardly shrink)",
            limit=self.limit,
        )

    def skip(self, reason: str) -> None:
        self.result.skipped[reason] = self.result.skipped.get(reason, 0) + 1

    def make_dir(self, name: str, parts: list[str]) -> str:
        path = os.path.join(self.dest, *parts)
        try:
            os.makedirs(path, mode=0o755, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise _unsafe(name, "conflicts with an earlier entry (a file and a folder of the same name)") from None
        # We made every folder and no link, so this holds; checked anyway, cheaply, before writing through it.
        if not Path(os.path.realpath(path)).is_relative_to(self.dest):
            raise _unsafe(name, "resolves outside the archive's folder")
        return path

    def write_file(self, name: str, parts: list[str], read: Callable[[int], bytes]) -> None:
        parent = self.make_dir(name, parts[:-1])
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(os.path.join(parent, parts[-1]), flags, 0o644)
        except (FileExistsError, IsADirectoryError):
            raise _unsafe(name, "appears twice (or is also a folder)") from None
        self.result.files += 1
        with os.fdopen(fd, "wb") as out:
            while True:
                try:
                    chunk = read(_CHUNK)
                except _READ_ERRORS as err:
                    raise _damaged(err, name) from None
                if not chunk:
                    return
                self.result.bytes += len(chunk)
                if self.result.bytes > self.limit:
                    raise self._bomb(self.result.bytes)
                out.write(chunk)


def _damaged(err: BaseException, name: str | None = None) -> TruncatedArchive:
    where = f" at entry {_shown(name)!r}" if name is not None else ""
    return TruncatedArchive(
        f"the archive is truncated or damaged{where} ({type(err).__name__}: {str(err)[:200]}); upload the complete "
        "file again",
    )


# ----------------------------------------------------------------------------------------------------------- zip


def _zip_directory(path: Path) -> tuple[int, int]:
    """``(entries, directory bytes)`` from the zip's end record (zip64 too), read before :mod:`zipfile` loads the
    whole central directory into memory; :class:`TruncatedArchive` when there is no end record."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        tail_size = min(size, 22 + 0xFFFF)
        fh.seek(size - tail_size)
        tail = fh.read(tail_size)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise TruncatedArchive(
                "the zip archive has no end record (it was cut short, e.g. an interrupted download); upload the "
                "complete file again"
            )
        _, _, _, _, entries, directory_bytes, _, _ = struct.unpack("<4s4H2LH", tail[at : at + 22])
        end_at = size - tail_size + at
        if (entries == 0xFFFF or directory_bytes == 0xFFFFFFFF) and end_at >= 20:
            fh.seek(end_at - 20)
            locator = fh.read(20)
            if locator[:4] == b"PK\x06\x07":
                fh.seek(struct.unpack("<4sLQL", locator)[2])
                record = fh.read(56)
                if len(record) == 56 and record[:4] == b"PK\x06\x06":
                    fields = struct.unpack("<4sQ2H2L4Q", record)
                    entries, directory_bytes = fields[7], fields[8]
    return entries, directory_bytes


def _zip_kind(info: zipfile.ZipInfo, name: str) -> str:
    """``"dir"`` or ``"file"``; anything else (the unix file type in the external attributes) is unsafe."""
    if info.flag_bits & 0x1:
        raise NotAnArchive(f"archive entry {_shown(name)!r} is encrypted; upload an archive without a password")
    if info.compress_type not in _ZIP_METHODS:
        raise NotAnArchive(
            f"archive entry {_shown(name)!r} uses compression method {info.compress_type}, which this service does "
            "not read; re-create the archive with the usual deflate compression"
        )
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise _unsafe(name, "is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _unsafe(name, "is not a regular file or folder (a device, FIFO or socket)")
    return "dir" if info.is_dir() or kind == stat.S_IFDIR else "file"


def _extract_zip(path: Path, run: _Extraction) -> None:
    entries, directory_bytes = _zip_directory(path)
    if entries > run.budget.max_files:
        raise run.too_many()
    if directory_bytes > max(_MAX_DIRECTORY_BYTES_PER_ENTRY * entries, 1 << 20):
        raise ArchiveBomb(
            f"the zip's directory takes {directory_bytes} bytes for {entries} entries; re-create the archive"
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error) as err:
        raise _damaged(err) from None
    with archive:
        plan: list[tuple[zipfile.ZipInfo, str, list[str], str]] = []
        for info in archive.infolist():
            run.count_entry()
            name = info.orig_filename
            parts = entry_parts(name)
            kind = _zip_kind(info, name)
            run.declare(info.file_size)
            plan.append((info, name, parts, kind))
        for info, name, parts, kind in plan:
            if _hidden(parts):
                run.skip("hidden_file")
            elif kind == "dir" or not parts:
                if parts:
                    run.make_dir(name, parts)
            else:
                try:
                    source = archive.open(info)
                except _OPEN_ERRORS as err:
                    raise _damaged(err, name) from None
                with source:
                    run.write_file(name, parts, source.read)


# ----------------------------------------------------------------------------------------------------------- tar


class _CappedReads:
    """The (decompressed) stream tarfile reads, with every single read bounded: tarfile reads a pax or GNU
    long-name header whole, so a hostile size there would be an allocation as large as it says. Keeps the last
    block read, so the end marker can be checked without seeking a compressed stream back (which decompresses it
    again from the start)."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.fileobj = fileobj
        self.last: tuple[int, bytes] = (-1, b"")

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > _MAX_HEADER_BYTES:
            raise ArchiveBomb(f"the tar archive has a header of {size} bytes (more than {_MAX_HEADER_BYTES})")
        at = self.fileobj.tell()
        data = self.fileobj.read(size)
        if size == tarfile.BLOCKSIZE:
            self.last = (at, data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self.fileobj.seek(offset, whence)

    def tell(self) -> int:
        return self.fileobj.tell()


def _tar_kind(member: tarfile.TarInfo, dest: str) -> str:
    name = member.name
    if member.issym():
        raise _unsafe(name, "is a symbolic link")
    if member.islnk():
        raise _unsafe(name, "is a hard link")
    if member.ischr() or member.isblk():
        raise _unsafe(name, "is a device")
    if member.isfifo():
        raise _unsafe(name, "is a FIFO")
    if member.issparse():
        raise _unsafe(name, "is a sparse file")
    if not (member.isreg() or member.isdir()):
        raise _unsafe(name, "is not a regular file or folder")
    if _DATA_FILTER is None:  # Python before 3.11.4: our checks above refuse all the filter would
        return "dir" if member.isdir() else "file"
    try:
        _DATA_FILTER(member, dest)  # what filter="data" applies; our checks above already refuse more
    except tarfile.FilterError as err:
        raise _unsafe(name, f"is refused by tarfile's data filter ({type(err).__name__})") from None
    return "dir" if member.isdir() else "file"


def _extract_tar(path: Path, fmt: str, run: _Extraction) -> None:
    with open(path, "rb") as raw:
        stream: IO[bytes] = _COMPRESSED[fmt](raw) if fmt in _COMPRESSED else raw
        with stream:
            try:
                first = stream.read(512)
                stream.seek(0)
            except _READ_ERRORS as err:
                raise _damaged(err) from None
            if not _is_tar_header(first):
                if len(first) < 512 and first[257:262] == b"ustar":
                    raise TruncatedArchive("the tar archive ends inside its first header; upload the whole file")
                raise NotAnArchive(
                    f"the upload is a {fmt.removeprefix('tar.')}-compressed file without a tar archive inside; "
                    "send a .zip, .tar or .tar.gz of the dataset's folder"
                )
            capped = _CappedReads(stream)
            reader: Any = capped  # tarfile wants a file object; read, seek and tell are all it calls in "r:" mode
            try:
                tar = tarfile.open(fileobj=reader, mode="r:")
            except _READ_ERRORS as err:
                raise _damaged(err) from None
            with tar:
                _extract_members(tar, run)
                _check_end(capped, tar.offset)


def _extract_members(tar: tarfile.TarFile, run: _Extraction) -> None:
    while True:
        try:
            member = tar.next()
        except _READ_ERRORS as err:
            raise _damaged(err) from None
        if member is None:
            return
        run.count_entry()
        parts = entry_parts(member.name)
        kind = _tar_kind(member, run.dest)
        run.declare(member.size)
        if _hidden(parts):
            run.skip("hidden_file")
        elif kind == "dir" or not parts:
            if parts:
                run.make_dir(member.name, parts)
        else:
            source = tar.extractfile(member)
            if source is None:  # not reachable: only regular files get here
                raise _unsafe(member.name, "has no data")
            with source:
                run.write_file(member.name, parts, source.read)
        # tarfile keeps every member for getmembers(); each is read once here, so memory stays flat.
        tar.members.clear()  # type: ignore[attr-defined]  # typeshed leaves out TarFile.members (public, undocumented)


def _check_end(stream: _CappedReads, offset: int) -> None:
    """tarfile ends quietly at a header cut short or unreadable after the first; a complete tar has a zero block
    (its end marker) there."""
    at, block = stream.last
    if at != offset:
        try:
            stream.seek(offset)
            block = stream.read(tarfile.BLOCKSIZE)
        except _READ_ERRORS as err:
            raise _damaged(err) from None
    if len(block) < 512 or block.strip(b"\0"):
        raise TruncatedArchive(
            "the tar archive ends without its end marker (cut short, or damaged after the last complete entry); "
            "upload the complete file again"
        )
