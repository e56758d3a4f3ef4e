"""Swapping a finished build directory into place, shared by the built-in datasets and the zoo."""

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
