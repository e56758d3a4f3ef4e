"""Atomic replacements: a finished build directory (the built-in datasets, the zoo) or a text file (benchmark
results, calibrations) appears whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a per-process temp file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
