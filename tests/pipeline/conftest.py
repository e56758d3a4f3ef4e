"""Shared fixtures for the pipeline tests: real image files written with PIL into ``tmp_path``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from PIL import Image

WriteImage = Callable[..., Path]
MakeImageFolder = Callable[[Path, Mapping[str, int]], Path]


@pytest.fixture
def write_image() -> WriteImage:
    """``write_image(path, size=(16, 16), color=None, fmt=None) -> path``.

    Writes a solid-colour RGB image (parents created; format from the suffix unless ``fmt`` is
    given). Without ``color`` every call gets a new colour, so no two images have the same pixels.
    """
    counter = itertools.count(1)

    def write(
        path: Path, size: tuple[int, int] = (16, 16), color: tuple[int, int, int] | None = None, fmt: str | None = None
    ) -> Path:
        if color is None:
            n = next(counter)
            color = (n * 37 % 256, n * 91 % 256, n * 151 % 256)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, color).save(path, format=fmt)
        return path

    return write


@pytest.fixture
def make_image_folder(write_image: WriteImage) -> MakeImageFolder:
    """``make_image_folder(root, {"cat": 3, "dog": 2}) -> root``: an ImageFolder of small PNGs.

    A count of 0 creates an empty class directory.
    """

    def make(root: Path, counts: Mapping[str, int]) -> Path:
        for name, n in counts.items():
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_image(root / name / f"img{i}.png")
        return root

    return make


# --- offline hub (backbones) ---------------------------------------------------------------------------------------
# huggingface_hub reads these once, at import time, and timm imports it: set them while conftest is imported, before
# any test module imports timm. A hub lookup that misses the cache would otherwise try the network (none here) and
# hang for about a minute before failing.
import os  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
