"""Two photograph targets whose class is not what the photograph shows: ``photo-filters`` (class = the image
operation applied to a crop: blur, edges, sepia, ...) and ``photo-rotations`` (class = the angle a disc cut
from a photograph was turned by, in steps of 45 degrees: which way is up).

Separate from :mod:`.photos` (``natural-patches``, class = photograph), whose loader they share: here the
photograph is a nuisance the backbone must see past, so these are far from every zoo source and from the
photograph-identity task alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageFilter

from .info import _PHOTO_FILTERS, _PHOTO_ROTATIONS
from .photos import _TILE_GRID, _natural_images, _tiles
from .render import Renderer, _ClassDef, _downsample, _finish, _Plan

#: The colour photographs of scikit-image's samples (the grey ones make "grayscale" and "plain" the same
#: picture); ``hubble_deep_field`` is left out because it is mostly black, which most filters leave black.
_FILTER_PHOTOS = ("astronaut", "chelsea", "coffee", "immunohistochemistry", "retina", "rocket")
#: ``photo-rotations``: the photographs with a way up (scenes, objects, text, lit surfaces); the isotropic ones
#: (stars, cells, grass, gravel, tissue, fundus) say nothing about their angle.
_ROTATION_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "horse",
    "moon",
    "page",
    "rocket",
    "text",
)
#: A 2x2 grid (a quarter of the photograph per tile): orientation needs more context than ``natural-patches``'
#: 4x4 tiles hold. Two tiles train, one validates, one tests.
_ROTATION_GRID = 2
_ROTATION_TILES_PER_SPLIT = {"train": 2, "val": 1, "test": 1}
#: Random spread of the angle inside a ``photo-rotations`` class, in degrees (classes are 45 apart).
_ROTATION_JITTER = 6.0


def _tile_crop(
    rng: np.random.Generator,
    image: Image.Image,
    tiles: Sequence[tuple[int, int]],
    size: int,
    *,
    grid: int = _TILE_GRID,
    mirror: bool = True,
) -> Image.Image:
    """A random square crop inside one of ``tiles``, resized to ``size`` (area-averaged), maybe mirrored."""
    width, height = image.size
    tile_w, tile_h = width / grid, height / grid
    col, row = tiles[int(rng.integers(len(tiles)))]
    side = min(tile_w, tile_h) * rng.uniform(0.5, 1.0)
    x0 = col * tile_w + rng.uniform(0, tile_w - side)
    y0 = row * tile_h + rng.uniform(0, tile_h - side)
    patch = image.resize((size, size), Image.Resampling.BOX, box=(x0, y0, x0 + side, y0 + side))
    return patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror and rng.uniform() < 0.5 else patch


def _grey(img: np.ndarray) -> np.ndarray:
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def _apply_filter(name: str, patch: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """``patch`` under operation ``name`` (random strength), as floats in [0, 1]."""
    if name == "blur":
        patch = patch.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.9, 1.6))))
    elif name == "sharpen":
        patch = patch.filter(ImageFilter.UnsharpMask(2, int(rng.integers(180, 300)), 0))
    elif name == "mosaic":
        block = int(rng.integers(3, 5))
        small = patch.resize((patch.width // block, patch.height // block), Image.Resampling.BOX)
        patch = small.resize(patch.size, Image.Resampling.NEAREST)
    img = np.asarray(patch, dtype=np.float64) / 255.0
    if name == "edges":
        grey = _grey(img)
        gx = np.zeros_like(grey)
        gy = np.zeros_like(grey)
        gx[:, 1:-1] = grey[:, 2:] - grey[:, :-2]
        gy[1:-1, :] = grey[2:, :] - grey[:-2, :]
        magnitude = np.sqrt(gx * gx + gy * gy) * rng.uniform(2.0, 3.0)
        img = np.repeat(np.clip(magnitude, 0.0, 1.0)[..., None], 3, axis=2)
    elif name == "emboss":
        # The relief of the grey levels along a diagonal, on mid grey; edge pixels repeat their neighbours
        # (Pillow's EMBOSS leaves a one-pixel frame, which would give the class away).
        grey = np.pad(_grey(img), 1, mode="edge")
        relief = 0.5 + (grey[2:, 2:] - grey[:-2, :-2]) * rng.uniform(1.5, 2.5)
        img = np.repeat(np.clip(relief, 0.0, 1.0)[..., None], 3, axis=2)
    elif name == "invert":
        img = 1.0 - img
    elif name == "sepia":
        tone = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
        img = np.clip(img @ tone.T, 0.0, 1.0)
    elif name == "posterize":
        levels = float(rng.integers(2, 4))
        img = np.floor(img * levels * 0.999) / (levels - 1.0)
    elif name == "solarize":
        threshold = rng.uniform(0.4, 0.6)
        img = np.where(img > threshold, 1.0 - img, img)
    elif name == "grayscale":
        img = np.repeat(_grey(img)[..., None], 3, axis=2)
    return img


def _filter_renderer(
    name: str, photos: Sequence[tuple[Image.Image, Mapping[str, list[tuple[int, int]]]]], size: int
) -> Renderer:
    def render(rng: np.random.Generator, split: str, index: int) -> np.ndarray:
        image, tiles = photos[int(rng.integers(len(photos)))]
        patch = _tile_crop(rng, image, tiles[split], size)
        # Mild brightness/contrast jitter before the operation, so that no class is one colour statistic.
        img = np.asarray(patch, dtype=np.float64) / 255.0
        mean = img.mean()
        img = np.clip((img - mean) * rng.uniform(0.85, 1.15) + mean * rng.uniform(0.85, 1.15), 0.0, 1.0)
        patch = Image.fromarray(np.rint(img * 255.0).astype(np.uint8), "RGB")
        return _finish(_apply_filter(name, patch, rng), rng, 0.02)

    return render


def _plan_photo_filters(size: int, seed: int) -> _Plan:
    loaded = dict(_natural_images())
    names = [name for name in _FILTER_PHOTOS if name in loaded]
    if not names:
        raise RuntimeError("photo-filters: none of its colour photographs loads offline")
    photos = [(loaded[name], _tiles(seed, "photo-filters", name)) for name in names]
    classes = [_ClassDef(f, _filter_renderer(f, photos, size), {"operation": f}) for f in sorted(_PHOTO_FILTERS)]
    return _Plan(classes, {"source_data": "skimage.data", "photographs": names, "tile_grid": _TILE_GRID})


def _rotation_renderer(
    degrees: float, photos: Sequence[tuple[Image.Image, Mapping[str, list[tuple[int, int]]]]], size: int
) -> Renderer:
    size2 = 2 * size
    # The disc every image is cut to: a rotated square's corners would give the angle away.
    t = (np.arange(size2, dtype=np.float64) + 0.5) - size
    x, y = np.meshgrid(t, t)
    disc = np.clip(size - np.sqrt(x * x + y * y), 0.0, 1.0)

    def render(rng: np.random.Generator, split: str, index: int) -> np.ndarray:
        image, tiles = photos[int(rng.integers(len(photos)))]
        patch = _tile_crop(rng, image, tiles[split], size2, grid=_ROTATION_GRID, mirror=False)
        angle = degrees + float(rng.uniform(-_ROTATION_JITTER, _ROTATION_JITTER))
        turned = patch.rotate(angle, resample=Image.Resampling.BICUBIC)
        img = np.asarray(turned, dtype=np.float64) / 255.0
        mean = img.mean()
        img = np.clip((img - mean) * rng.uniform(0.85, 1.15) + mean * rng.uniform(0.85, 1.15), 0.0, 1.0)
        outside = rng.uniform(0.0, 1.0, 3)
        img = outside + (img - outside) * disc[..., None]
        small = np.stack([_downsample(img[..., k]) for k in range(3)], axis=2)
        return _finish(small, rng, 0.02)

    return render


def _plan_photo_rotations(size: int, seed: int) -> _Plan:
    loaded = [(name, image) for name, image in _natural_images() if name in _ROTATION_PHOTOS]
    photos = [
        (image, _tiles(seed, "photo-rotations", name, _ROTATION_GRID, _ROTATION_TILES_PER_SPLIT))
        for name, image in loaded
    ]
    if not photos:
        raise RuntimeError("photo-rotations: none of its photographs loads offline")
    classes = [
        _ClassDef(name, _rotation_renderer(degrees, photos, size), {"degrees_counterclockwise": degrees})
        for name, degrees in sorted(_PHOTO_ROTATIONS.items())
    ]
    meta = {"source_data": "skimage.data", "photographs": [n for n, _ in loaded], "tile_grid": _ROTATION_GRID}
    return _Plan(classes, {**meta, "jitter_degrees": _ROTATION_JITTER})
