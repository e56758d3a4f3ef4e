"""Atomic writes: a file or a directory appears whole or not at all (standard library only).

One place for the project's write-then-rename: feature cache entries, converted weights, fine-tuned
model folders, built-in datasets and the zoo, benchmark results, calibrations, the timm registry
snapshot and the client's downloads all use these.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "fsync_dir", "replace_dir", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: Path, *, fsync: bool = False, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the block to write; then rename it over ``path``.

    The temporary file lies in the target's directory (the rename is a same-filesystem atomic
    replace) and is named ``.<name>.<pid>.<random><suffix>``, so concurrent writers never share one
    and a cleaner can recognise leftovers by ``suffix``. It is created by the block with the process's
    umask (not ``mkstemp``'s 0600, which would hide files in a cache shared by several users). With
    ``fsync`` the data reaches the disk before the rename and the rename before returning. If the
    block raises, the temporary file is removed and nothing is replaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}{suffix}"
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def replace_dir(tmp: Path, target: Path, name: str) -> None:
    """Move the finished build ``tmp`` to ``target``.

    An existing ``target`` is moved aside first (``os.replace`` cannot replace a non-empty directory)
    into ``.<name>.old-*`` beside it and deleted afterwards, so a reader sees the old or the new build,
    never a mix; a crash in between leaves that ``.old-*`` directory for the next build to remove.
    """
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=target.parent))
        os.replace(target, old / "previous")
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_dir(directory: Path) -> None:
    """Persist a rename (best effort: not every platform/filesystem can fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
