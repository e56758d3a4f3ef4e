"""What the host plugs into the engine besides datasets and weights (which have their own registries:
``register_builtin_dataset``, ``register_weights_provider``): facts about backbones (their source task and
the content hashes of what they were built from), a way to make missing backbones available, and named
benchmark suites.

The engine never imports the built-ins: :func:`service.bootstrap.start` registers them here once per
process (service/ARCHITECTURE.md, "Packages").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.pipeline.benchmark.suites import Suite

__all__ = [
    "SourceInfo",
    "prepare_backbones",
    "provenance",
    "register_backbone_preparer",
    "register_provenance",
    "register_source_info",
    "register_suite",
    "registered_suites",
    "source_info",
    "suite_factory",
    "unregister_backbone_preparer",
    "unregister_provenance",
    "unregister_source_info",
]

_logger = logging.getLogger(__name__)

#: ``(source task, accuracy on it)`` of a backbone, either part unknown.
SourceInfo = tuple[str | None, float | None]

_source_lookups: dict[str, Callable[[str], SourceInfo | None]] = {}
_provenance_lookups: dict[str, Callable[[str], dict[str, Any] | None]] = {}
_preparers: dict[str, Callable[[Sequence[str]], None]] = {}
_suites: dict[str, tuple[Callable[[int | None], Suite], str]] = {}


def register_source_info(name: str, lookup: Callable[[str], SourceInfo | None]) -> None:
    """``lookup(backbone_id)`` says what a backbone was trained on and how well (None: not one of its ids).
    Registering a name again replaces its lookup."""
    _source_lookups[name] = lookup


def unregister_source_info(name: str) -> None:
    """Remove a lookup (no error when absent), e.g. at the end of a test."""
    _source_lookups.pop(name, None)


def source_info(backbone_id: str) -> SourceInfo:
    """The first registered answer for ``backbone_id``, else ``(None, None)``."""
    for lookup in _source_lookups.values():
        found = lookup(backbone_id)
        if found is not None:
            return found
    return None, None


def register_provenance(name: str, lookup: Callable[[str], dict[str, Any] | None]) -> None:
    """``lookup(backbone_id)`` says what a backbone was built from, by content (JSON-able, e.g. the zoo's
    ``{"weights_sha256", "source", "source_dataset_sha256", ...}``; None: not one of its ids). A benchmark
    records it. Registering a name again replaces its lookup."""
    _provenance_lookups[name] = lookup


def unregister_provenance(name: str) -> None:
    """Remove a lookup (no error when absent), e.g. at the end of a test."""
    _provenance_lookups.pop(name, None)


def provenance(backbone_id: str) -> dict[str, Any] | None:
    """The first registered answer for ``backbone_id``, else None."""
    for lookup in _provenance_lookups.values():
        found = lookup(backbone_id)
        if found is not None:
            return found
    return None


def register_backbone_preparer(prefix: str, prepare: Callable[[Sequence[str]], None]) -> None:
    """``prepare(ids)`` makes the ids starting with ``prefix`` loadable (e.g. builds missing zoo models).
    Registering a prefix again replaces its preparer."""
    _preparers[prefix] = prepare


def unregister_backbone_preparer(prefix: str) -> None:
    """Remove a preparer (no error when absent), e.g. at the end of a test."""
    _preparers.pop(prefix, None)


def prepare_backbones(ids: Sequence[str]) -> None:
    """Ask each preparer to make its ids available (a no-op for ids no preparer claims)."""
    for prefix, prepare in _preparers.items():
        mine = [backbone for backbone in ids if backbone.startswith(prefix)]
        if mine:
            _logger.info("preparing backbones %s", ", ".join(mine))
            prepare(mine)


def register_suite(name: str, factory: Callable[[int | None], Suite], description: str) -> None:
    """A named benchmark suite: ``factory(per_class)`` builds it (``per_class`` None: its default sample size)."""
    _suites[name] = (factory, description)


def suite_factory(name: str) -> Callable[[int | None], Suite] | None:
    entry = _suites.get(name)
    return entry[0] if entry is not None else None


def registered_suites() -> dict[str, str]:
    """Registered suite names and their one-line descriptions."""
    return {name: description for name, (_, description) in _suites.items()}
