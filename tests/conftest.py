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
def _no_free_disk_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads and uploads in tests are kilobytes; the test machine's free disk is not what they test (CI's /tmp
    has had 165 MiB free, under the product's 1 GiB floor). Tests of the floor set one explicitly."""
    monkeypatch.setenv("BACKBONE_RANK_MIN_FREE_DISK_BYTES", "0")


@pytest.fixture(autouse=True)
def _no_leaked_packaged_provider() -> Iterator[None]:
    """A test that registers the built-ins (the ``builtins`` fixture, a worker run in the test process) registers
    the ``packaged`` and ``zoo`` weights providers, bound to its (often temporary) directories; it must not leave
    them registered for the next one (tests of weight resolution count the places searched), nor the zoo's
    source accuracies and builder."""
    before = {name for name in (_PACKAGED, _ZOO) if name in _providers()}
    yield
    if _PACKAGED not in before and _PACKAGED in _providers():
        sys.modules[_PROVIDERS].unregister_weights_provider(_PACKAGED)
    if _ZOO not in before and _ZOO in _providers():
        zoo = sys.modules.get("service.builtin.zoo")  # absent when a test registered a "zoo" provider of its own
        if zoo is not None:
            zoo.unregister_zoo()
        else:
            sys.modules[_PROVIDERS].unregister_weights_provider(_ZOO)


@pytest.fixture
def builtins() -> None:
    """The built-ins plugged into the engine, as ``service.bootstrap.start`` does at a process's start-up with the
    settings' directories: the generated datasets, the packaged weights and the zoo (unregistered again after the
    test, above), and the built-in benchmark suites."""
    from service.bootstrap import register_builtins
    from service.catalog import packaged_weights_dir, zoo_dir
    from service.config import get_settings

    settings = get_settings()
    register_builtins(zoo_dir(settings), packaged_weights_dir(settings))
