"""Root confinement: a user's dataset path, and every file a lister opens, must stay inside the data roots.

The user's path is realpath'd and checked, component-wise, against the realpath'd data roots *before*
anything looks at whether it exists, so an outside path always gives the same ``PathOutsideRoots``; error
messages echo the user's path, never the resolved real path. Files are opened only when they are regular
files inside the roots (:func:`open_regular_file`). Separate from the listers because all of them, the
manifest reader and :meth:`Dataset.open_image` (service/pipeline/data/datasets.py) share these checks, and the
web API runs :func:`check_dataset_path` without listing anything.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, cast

from service.errors import DatasetNotFound, InvalidDataset, PathOutsideRoots
from service.pipeline.data.decode import ImageDecodeError, check_stat
from service.pipeline.data.refs import MANIFEST_SUFFIXES, DatasetRef

__all__ = [
    "check_dataset_path",
    "inside",
    "open_regular_file",
    "realpath_roots",
    "require_dir",
    "resolve_user_path",
    "stat_user_path",
]

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def realpath_roots(roots: Sequence[str | Path]) -> tuple[str, ...]:
    if isinstance(roots, str | os.PathLike):
        roots = [roots]  # one root given bare; iterating a string would yield single characters
    return tuple(os.path.realpath(os.fspath(r)) for r in roots)


def inside(real: str, roots: Sequence[str]) -> bool:
    """Component-wise containment (``/data2`` is not inside ``/data``; CVE-2023-29159)."""
    path = Path(real)
    return any(path.is_relative_to(root) for root in roots)


def resolve_user_path(user: str, roots: Sequence[str | Path] | None) -> str:
    """NUL check, realpath, containment -- in that order, and all before any existence check."""
    if "\x00" in user:
        raise InvalidDataset(f"dataset path {user!r} contains a NUL byte; remove it", path=user)
    real = os.path.realpath(user)
    allowed = realpath_roots(roots) if roots is not None else None
    if allowed is not None and not inside(real, allowed):
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


def stat_user_path(real: str, user: str) -> os.stat_result:
    try:
        return os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        raise DatasetNotFound(f"dataset path {user!r} does not exist; check the path", path=user) from None
    except OSError as err:
        raise InvalidDataset(
            f"dataset path {user!r} cannot be read ({type(err).__name__}); check its permissions", path=user
        ) from None


def require_dir(real: str, user: str, what: str) -> None:
    st = stat_user_path(real, user)
    if not stat.S_ISDIR(st.st_mode):
        hint = " (a manifest must end in .csv or .jsonl)" if what == "folder" else ""
        raise InvalidDataset(
            f"dataset path {user!r} is not a directory; a {what} dataset is a directory{hint}", path=user
        )


def check_dataset_path(ref: DatasetRef, roots: Sequence[str | Path]) -> None:
    """The cheap checks :func:`load_dataset` starts with, without listing anything: for a caller (the web
    API) that must refuse a bad path at once and leave the listing to a worker.

    ``builtin``, ``hub`` and ``upload`` refs name no path and are not checked here. Raises what
    ``load_dataset`` raises for the same path: :class:`InvalidDataset` (NUL byte, a manifest that is no
    ``.csv``/``.jsonl`` file, a folder or hf path that is no directory), :class:`PathOutsideRoots`,
    :class:`DatasetNotFound`.
    """
    if ref.kind in ("builtin", "hub", "upload"):
        return
    user = cast(str, ref.path)
    real = resolve_user_path(user, roots)
    if ref.kind != "manifest":
        require_dir(real, user, ref.kind)
        return
    if not user.lower().endswith(MANIFEST_SUFFIXES):
        raise InvalidDataset(f"manifest {user!r} must end in .csv or .jsonl", path=user)
    if not stat.S_ISREG(stat_user_path(real, user).st_mode):
        raise InvalidDataset(f"manifest {user!r} is not a regular file", path=user)


@contextmanager
def open_regular_file(path: str, roots: Sequence[str], max_bytes: int) -> Iterator[tuple[IO[bytes], str]]:
    """Open ``path`` for reading only if it is a regular file inside ``roots`` and not too large.

    Yields ``(file, real path)``; raises :class:`ImageDecodeError` with a skip reason otherwise.
    ``O_NOFOLLOW`` and a post-open ``fstat`` narrow the window in which the file could be swapped for
    a symlink or a FIFO; ``O_NONBLOCK`` makes sure even a swapped-in FIFO cannot hang the open.
    """
    real = os.path.realpath(path)
    if not inside(real, roots):
        raise ImageDecodeError("resolves outside the data roots", reason="symlink_outside_root", source=path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ImageDecodeError("file not found", reason="missing_file", source=path) from None
    except OSError as err:
        raise ImageDecodeError(f"cannot stat: {err}", reason="unreadable_file", source=path) from None
    check_stat(st, max_bytes, path)
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as err:
        raise ImageDecodeError(f"cannot open: {err}", reason="unreadable_file", source=path) from None
    with os.fdopen(fd, "rb") as fh:
        after = os.fstat(fd)
        if (after.st_dev, after.st_ino) != (st.st_dev, st.st_ino):
            raise ImageDecodeError("file replaced while opening", reason="unreadable_file", source=path)
        check_stat(after, max_bytes, path)
        yield fh, real
