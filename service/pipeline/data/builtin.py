"""The built-in dataset registry: ``builtin:NAME`` references, materialized on first use into a class folder.

The engine holds only the registry; what is registered (generated datasets) lives in
service/builtin/datasets/ and is plugged in by service/bootstrap.py, so the engine never imports the
built-ins. Separate from the listers: a materialized built-in dataset is listed by the folder lister
(service/pipeline/data/folder.py).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from service.errors import DatasetNotFound, InvalidDataset
from service.pipeline.data.refs import DatasetRef

__all__ = ["list_builtin_datasets", "materialize_builtin", "register_builtin_dataset"]

_logger = logging.getLogger(__name__)

_BUILTIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class _Builtin:
    name: str
    materialize: Callable[[Path], Path]
    description: str


_BUILTINS: dict[str, _Builtin] = {}


def register_builtin_dataset(name: str, materialize: Callable[[Path], Path], description: str = "") -> None:
    """Register a built-in dataset.

    Args:
        name: ``[A-Za-z0-9][A-Za-z0-9_.-]*``; re-registering a name replaces it.
        materialize: ``materialize(builtin_dir)`` creates (once, idempotently; it runs under a file lock)
            an ImageFolder directory and returns its path. It must not reach the network.
        description: One line for :func:`list_builtin_datasets`.
    """
    if not isinstance(name, str) or not _BUILTIN_NAME.fullmatch(name):
        raise ValueError(f"built-in dataset name {name!r} must match {_BUILTIN_NAME.pattern}")
    if not callable(materialize):
        raise TypeError("materialize must be callable")
    if name in _BUILTINS:
        _logger.info("re-registering built-in dataset %s", name)
    _BUILTINS[name] = _Builtin(name, materialize, description)


def list_builtin_datasets() -> list[dict[str, str]]:
    """``[{"name", "description"}]`` of the registered built-in datasets, sorted by name."""
    return [{"name": b.name, "description": b.description} for b in sorted(_BUILTINS.values(), key=lambda b: b.name)]


def materialize_builtin(ref: DatasetRef, builtin_dir: str | Path | None) -> str:
    name = cast(str, ref.name)
    entry = _BUILTINS.get(name)
    if entry is None:
        known = ", ".join(sorted(_BUILTINS)) or "none registered"
        raise DatasetNotFound(f"unknown built-in dataset {name!r}; known: {known}", name=name)
    if builtin_dir is None:
        from service.config import get_settings

        builtin_dir = get_settings().cache_dir / "builtin"  # where `rank` and `datasets` look too
    directory = Path(builtin_dir)
    directory.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    # Two jobs asking for the same built-in dataset must not materialize it into each other.
    with FileLock(str(directory / f".{name}.lock")):
        try:
            out = entry.materialize(directory)
        except Exception as err:  # whatever the factory raises, the dataset is unavailable
            _logger.exception("materializing built-in dataset %s failed", name)
            raise DatasetNotFound(
                f"built-in dataset {name!r} could not be prepared ({type(err).__name__}); see the server log",
                name=name,
            ) from err
    real = os.path.realpath(os.fspath(out))
    if not os.path.isdir(real):
        raise InvalidDataset(f"built-in dataset {name!r} did not produce a directory", name=name)
    return real
