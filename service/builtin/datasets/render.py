"""What every generator shares: the plan of a dataset (its classes and how to draw an image of each), the
per-class random generator, and the drawing helpers (anti-aliased masks, colours, clutter, affine warps).

Separate from the generators (:mod:`.glyphs`, :mod:`.digits`, :mod:`.textures`, :mod:`.shapes`,
:mod:`.photos`), which all draw with these, and from :mod:`.materialize`, which runs the plans.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

#: ``render(rng, split, index) -> (size, size, 3) uint8``.
Renderer = Callable[[np.random.Generator, str, int], np.ndarray]


@dataclass
class _ClassDef:
    """One class of a plan: its directory name, what it shows and how to draw an image of it."""

    name: str
    render: Renderer
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Plan:
    """Everything needed to draw a dataset: its classes and what to record about how they were chosen."""

    classes: list[_ClassDef]
    meta: dict[str, Any] = field(default_factory=dict)


def _rng(seed: int, *names: str) -> np.random.Generator:
    """A generator for one (dataset, split, class): a sha256 of the names, not ``hash()``, which is salted
    per process; a class's images do not depend on which other classes or splits exist."""
    words = np.frombuffer(hashlib.sha256("\0".join(names).encode("utf-8")).digest(), dtype=">u4")
    return np.random.default_rng([seed, *(int(w) for w in words)])


# --------------------------------------------------------------------------------------------------
# Drawing helpers: masks and patterns are drawn at twice the output size and averaged 2x2 (cheap
# anti-aliasing); colours are composited at the output size.
# --------------------------------------------------------------------------------------------------


def _downsample(img: np.ndarray) -> np.ndarray:
    """2x2 box average of a grey-level field, summed in an explicit order so that no machine sums differently."""
    return (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2]) * 0.25


def _finish(img: np.ndarray, rng: np.random.Generator, max_noise: float) -> np.ndarray:
    """Float image in [0, 1] -> uint8, with Gaussian noise of a random strength up to ``max_noise``."""
    sigma = rng.uniform(0.0, max_noise)
    img = img + rng.normal(0.0, 1.0, img.shape) * sigma
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _luminance(colour: np.ndarray) -> float:
    return float(0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2])


def _colour_pair(rng: np.random.Generator, min_contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """Random background and foreground colours whose luminances differ by at least ``min_contrast``."""
    bg = rng.uniform(0.0, 1.0, 3)
    for _ in range(64):
        fg = rng.uniform(0.0, 1.0, 3)
        if abs(_luminance(fg) - _luminance(bg)) >= min_contrast:
            return bg, fg
    # Rare (mid-grey background): black or white always has enough contrast.
    return bg, np.zeros(3) if _luminance(bg) >= 0.5 else np.ones(3)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) in (0, 1), so patterns are defined per image, not per pixel.

    Cached (read-only) because every image needs them.
    """
    t = (np.arange(size, dtype=np.float64) + 0.5) / size
    x, y = np.meshgrid(t, t)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _gradient_background(rng: np.random.Generator, colour: np.ndarray, size: int, strength: float) -> np.ndarray:
    """A solid colour with a random linear gradient of up to ``strength`` per channel."""
    x, y = _grid(size)
    angle = rng.uniform(0.0, 2 * math.pi)
    ramp = (x * math.cos(angle) + y * math.sin(angle)) - 0.5
    amplitude = rng.uniform(-strength, strength, 3)
    return np.clip(colour[None, None, :] + ramp[:, :, None] * amplitude[None, None, :], 0.0, 1.0)


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a random ``(cells+1)^2`` lattice, smoothstep-interpolated."""
    lattice = rng.uniform(0.0, 1.0, (cells + 1, cells + 1))
    t = (np.arange(size, dtype=np.float64) + 0.5) / size * cells
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    s = f * f * (3.0 - 2.0 * f)
    top = lattice[i][:, i] * (1 - s)[None, :] + lattice[i][:, i + 1] * s[None, :]
    bottom = lattice[i + 1][:, i] * (1 - s)[None, :] + lattice[i + 1][:, i + 1] * s[None, :]
    return top * (1 - s)[:, None] + bottom * s[:, None]


def _blend(base: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``base`` with ``colour`` painted over it at per-pixel opacity ``alpha`` (H, W)."""
    return base + (colour[None, None, :] - base) * alpha[:, :, None]


def _clutter(rng: np.random.Generator, size: int, max_lines: int, max_dots: int) -> np.ndarray:
    """A mask (``size``^2, drawn at twice that and box-reduced) of random thin lines and dots: distractors."""
    size2 = 2 * size
    layer = Image.new("L", (size2, size2), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(0, max_lines + 1))):
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size2, 4))
        draw.line([(x0, y0), (x1, y1)], fill=255, width=int(rng.integers(1, max(2, size2 // 24) + 1)))
    for _ in range(int(rng.integers(0, max_dots + 1))):
        cx, cy = (float(v) for v in rng.uniform(0, size2, 2))
        r = float(rng.uniform(0.5, max(1.0, size2 / 32)))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    return _mask_array(layer.reduce(2))


def _mask_array(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask, dtype=np.float64) * (1.0 / 255.0)


def _affine_data(
    in_size: float, out_size: float, zoom: float, rotation: float, shear: float, tx: float, ty: float
) -> tuple[float, float, float, float, float, float]:
    """PIL AFFINE coefficients (output -> input) of: zoom, shear, rotate about the centres, translate."""
    c, s, t = math.cos(rotation), math.sin(rotation), math.tan(shear)
    # Forward linear part: zoom * R(rotation) @ [[1, tan(shear)], [0, 1]].
    a00, a01, a10, a11 = zoom * c, zoom * (c * t - s), zoom * s, zoom * (s * t + c)
    det = a00 * a11 - a01 * a10
    i00, i01, i10, i11 = a11 / det, -a01 / det, -a10 / det, a00 / det
    cx, cy, cin = out_size / 2 + tx, out_size / 2 + ty, in_size / 2
    return i00, i01, cin - (i00 * cx + i01 * cy), i10, i11, cin - (i10 * cx + i11 * cy)


def _random_affine(
    rng: np.random.Generator,
    mask: Image.Image,
    out_size: int,
    zoom: float,
    *,
    rotation_deg: float = 15.0,
    scale: tuple[float, float] = (0.7, 1.1),
    shear_deg: float = 10.0,
    translate: float = 0.1,
) -> np.ndarray:
    """``mask`` (square, "L") under a random affine transform, as floats in [0, 1] of ``out_size``^2.

    The warp samples at twice ``out_size`` and box-reduces: anti-aliasing at the cost of a 2x grid.
    """
    rotation = math.radians(float(rng.uniform(-rotation_deg, rotation_deg)))
    shear = math.radians(float(rng.uniform(-shear_deg, shear_deg)))
    factor = zoom * float(rng.uniform(*scale))
    size2 = 2 * out_size
    tx, ty = (float(v) * size2 for v in rng.uniform(-translate, translate, 2))
    data = _affine_data(mask.size[0], size2, factor * 2, rotation, shear, tx, ty)
    warped = mask.transform((size2, size2), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    return _mask_array(warped.reduce(2))


def _compose_object(
    rng: np.random.Generator,
    alpha: np.ndarray,
    *,
    min_contrast: float,
    gradient: float,
    max_lines: int,
    max_dots: int,
    max_noise: float,
) -> np.ndarray:
    """Object mask -> final uint8 image: coloured background, clutter, object, noise.

    Compositing is linear, so it runs at the output size on already anti-aliased masks (4x fewer pixels).
    """
    size = alpha.shape[0]
    bg, fg = _colour_pair(rng, min_contrast)
    img = _gradient_background(rng, bg, size, gradient)
    if max_lines or max_dots:
        clutter = _clutter(rng, size, max_lines, max_dots)
        img = _blend(img, rng.uniform(0.0, 1.0, 3), clutter * rng.uniform(0.4, 1.0))
    img = _blend(img, fg, alpha)
    return _finish(img, rng, max_noise)
