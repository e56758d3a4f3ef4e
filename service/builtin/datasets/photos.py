"""The ``natural-patches`` dataset: random crops of scikit-image's sample photographs, class = photograph,
with tiles assigned to splits so that no test patch overlaps a training patch.

Separate because it is the one generator that loads photographs (and tolerates those that do not load).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

import numpy as np
from PIL import Image

from .info import _NATURAL_IMAGES, SPLITS
from .render import Renderer, _ClassDef, _finish, _Plan, _rng

_logger = logging.getLogger(__name__)


#: Each photograph is cut into a 4x4 grid of tiles, assigned to splits once, so that a test patch never
#: overlaps a training patch.
_TILE_GRID = 4
_TILES_PER_SPLIT = {"train": 10, "val": 3, "test": 3}


@functools.lru_cache(maxsize=1)
def _natural_images() -> tuple[tuple[str, Image.Image], ...]:
    """The sample photographs that load offline, as RGB images, in :data:`_NATURAL_IMAGES` order."""
    try:
        import skimage.data as skdata
    except ImportError as err:
        raise RuntimeError("natural-patches needs scikit-image (pip install backbone-rank[ml])") from err
    loaded = []
    for name in _NATURAL_IMAGES:
        try:
            array = np.asarray(getattr(skdata, name)())
        except Exception as err:  # noqa: BLE001 - e.g. "needs pooch to download": skip that image
            _logger.warning("skipping scikit-image sample %s: %s: %s", name, type(err).__name__, err)
            continue
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or min(array.shape[:2]) < 64:
            _logger.warning("skipping scikit-image sample %s: unexpected %s %s", name, array.dtype, array.shape)
            continue
        image = Image.fromarray(array[..., :3] if array.ndim == 3 else array)
        loaded.append((name, image.convert("RGB")))
    return tuple(loaded)


def _tiles(
    seed: int, dataset: str, photo: str, grid: int = _TILE_GRID, per_split: Mapping[str, int] = _TILES_PER_SPLIT
) -> dict[str, list[tuple[int, int]]]:
    """The photograph's ``grid`` x ``grid`` tiles per split (disjoint), drawn once per photograph."""
    order = _rng(seed, dataset, "tiles", photo).permutation(grid * grid)
    tiles: dict[str, list[tuple[int, int]]] = {}
    start = 0
    for split in SPLITS:
        chosen = sorted(int(t) for t in order[start : start + per_split[split]])
        tiles[split] = [(t % grid, t // grid) for t in chosen]
        start += per_split[split]
    return tiles


def _natural_renderer(image: Image.Image, tiles: Mapping[str, list[tuple[int, int]]], size: int) -> Renderer:
    width, height = image.size
    tile_w, tile_h = width / _TILE_GRID, height / _TILE_GRID

    def render(rng: np.random.Generator, split: str, index: int) -> np.ndarray:
        col, row = tiles[split][int(rng.integers(len(tiles[split])))]
        side = min(tile_w, tile_h) * rng.uniform(0.5, 1.0)
        x0 = col * tile_w + rng.uniform(0, tile_w - side)
        y0 = row * tile_h + rng.uniform(0, tile_h - side)
        patch = image.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
        img = np.asarray(patch, dtype=np.float64) / 255.0
        if rng.uniform() < 0.5:
            img = img[:, ::-1]
        # Colour jitter: brightness, contrast, saturation.
        img = img * rng.uniform(0.8, 1.2)
        mean = img.mean()
        img = (img - mean) * rng.uniform(0.8, 1.2) + mean
        grey = (img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114)[..., None]
        img = grey + (img - grey) * rng.uniform(0.7, 1.3)
        return _finish(np.clip(img, 0.0, 1.0), rng, 0.03)

    return render


def _plan_natural(size: int, seed: int) -> _Plan:
    images = _natural_images()
    classes = []
    for name, image in images:
        class_name = name.replace("_", "-")
        tiles = _tiles(seed, "natural-patches", class_name)
        meta = {"skimage_data": name, "source_size": list(image.size)}
        classes.append(_ClassDef(class_name, _natural_renderer(image, tiles, size), meta))
    missing = [n for n in _NATURAL_IMAGES if n not in {name for name, _ in images}]
    classes.sort(key=lambda c: c.name)
    return _Plan(classes, {"source_data": "skimage.data", "unavailable_images": missing, "tile_grid": _TILE_GRID})
