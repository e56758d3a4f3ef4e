"""Fixtures for the whole suite."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

_BACKBONES = "service.pipeline.backbones"
_PACKAGED = "packaged"


def _providers() -> list[str]:
    module = sys.modules.get(_BACKBONES)  # never imported here: estimator tests stay free of torch
    return module.list_weights_providers() if module is not None else []


@pytest.fixture(autouse=True)
def _no_leaked_packaged_provider() -> Iterator[None]:
    """``rank_backbones`` registers the ``packaged`` weights provider as a side effect; a test that ranks must
    not leave it registered for the next one (tests of weight resolution count the places searched)."""
    before = _PACKAGED in _providers()
    yield
    if not before and _PACKAGED in _providers():
        sys.modules[_BACKBONES].unregister_weights_provider(_PACKAGED)
