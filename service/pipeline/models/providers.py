"""The weights-provider registry: what the host plugs in to serve weights the engine cannot find by itself.

A provider answers ``provider(model_id) -> Path | None`` for canonical backbone ids; resolution
(:mod:`service.pipeline.models.resolve`) asks the registered ones last, in registration order. The engine
registers none: the composition root does, once per process (``service.bootstrap.register_builtins``: the
packaged ImageNet weights and the zoo, service/ARCHITECTURE.md, "Built-in datasets and weights").

Separate from resolution because it is the host's side of the boundary, and torch-free: the built-ins register
their providers without importing torch or timm.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RegisteredProvider",
    "WeightsProvider",
    "list_weights_providers",
    "register_weights_provider",
    "registered_providers",
    "unregister_weights_provider",
    "weights_provider",
]

_logger = logging.getLogger(__name__)

WeightsProvider = Callable[[str], Path | str | None]

_PROVIDER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")


@dataclass(frozen=True)
class RegisteredProvider:
    """A provider as registered: its name (in sources and errors: ``provider:<name>``), the callable, a line
    saying what it serves."""

    name: str
    fn: WeightsProvider
    description: str


_PROVIDERS: dict[str, RegisteredProvider] = {}  # insertion order = registration order = lookup order
_PROVIDERS_LOCK = threading.Lock()


def register_weights_provider(
    name: str, provider: WeightsProvider, description: str = "", *, replace: bool = False
) -> None:
    """Register ``provider(model_id) -> Path | None``, consulted after weights dirs and the HF cache.

    ``model_id`` is the canonical spec id (``"tf_efficientnet_lite0.in1k"``, ``"zoo:glyph-r10"``). The
    provider returns a local ``.safetensors`` file for that id, or a folder in timm's local-dir layout
    (``config.json`` + ``model.safetensors``), or None. ``zoo:`` ids are asked only of the provider named
    ``"zoo"``, and must get a folder (or the weights file inside one): the arch and preprocessing come
    from its ``config.json``. Registering the same callable twice under one name is a no-op; another
    callable under a taken name is a ``ValueError`` (unregister first), unless ``replace``: then it takes the
    place of the one registered, keeping its place in the lookup order (a built-in registered again with
    another directory).
    """
    if not isinstance(name, str) or not _PROVIDER_NAME_RE.fullmatch(name):
        raise ValueError(f"invalid provider name {name!r}: letters, digits, '.', '_' or '-'")
    if not callable(provider):
        raise TypeError("provider must be callable: provider(model_id) -> Path | None")
    with _PROVIDERS_LOCK:
        existing = _PROVIDERS.get(name)
        if existing is not None and not replace:
            if existing.fn is provider:
                return
            raise ValueError(f"a weights provider named {name!r} is already registered; unregister it first")
        _PROVIDERS[name] = RegisteredProvider(name, provider, description)
    _logger.debug("registered weights provider %r", name)


def unregister_weights_provider(name: str) -> None:
    """Remove a provider (no error when absent), e.g. at the end of a test."""
    with _PROVIDERS_LOCK:
        _PROVIDERS.pop(name, None)


@contextlib.contextmanager
def weights_provider(name: str, provider: WeightsProvider, description: str = "") -> Iterator[None]:
    """Register a provider for the duration of a ``with`` block (tests, one-off scripts)."""
    register_weights_provider(name, provider, description)
    try:
        yield
    finally:
        unregister_weights_provider(name)


def list_weights_providers() -> list[str]:
    """Names of the registered providers, in lookup order."""
    with _PROVIDERS_LOCK:
        return list(_PROVIDERS)


def registered_providers() -> list[RegisteredProvider]:
    """The registered providers, in lookup order (a copy: registering meanwhile does not change it)."""
    with _PROVIDERS_LOCK:
        return list(_PROVIDERS.values())
