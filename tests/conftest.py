"""Fixtures for the whole suite."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

_PROVIDERS = "service.pipeline.models.providers"
_PACKAGED = "packaged"
_ZOO = "zoo"


def _providers() -> list[str]:
    module = sys.modules.get(_PROVIDERS)  # not imported here: a test that never used one has none to clean up
    return module.list_weights_providers() if module is not None else []


@pytest.fixture(autouse=True)
def _no_leaked_packaged_provider() -> Iterator[None]:
    """``rank_backbones`` registers the ``packaged`` and ``zoo`` weights providers as a side effect; a test that
    ranks must not leave them registered for the next one (tests of weight resolution count the places searched),
    nor leave the zoo pointed at its temporary directory."""
    before = {name for name in (_PACKAGED, _ZOO) if name in _providers()}
    yield
    for name in (_PACKAGED, _ZOO):
        if name not in before and name in _providers():
            sys.modules[_PROVIDERS].unregister_weights_provider(name)
    zoo = sys.modules.get("service.builtin.zoo")
    if zoo is not None:
        zoo.set_zoo_dir(None)


@pytest.fixture
def builtins() -> None:
    """The built-ins plugged into the engine, as ``service.bootstrap.start`` does at a process's start-up: the
    generated datasets, the packaged weights and the zoo (providers unregistered again after the test, above),
    and the built-in benchmark suites."""
    from service.bootstrap import register_builtins

    register_builtins()
