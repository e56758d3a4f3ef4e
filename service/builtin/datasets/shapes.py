"""The ``shapes`` dataset: filled geometric shapes at random size, position, colour and rotation on
cluttered backgrounds.

Separate because its outlines concern this dataset only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .info import _SHAPE_CLASSES
from .render import (
    Renderer,
    _blend,
    _ClassDef,
    _clutter,
    _colour_pair,
    _finish,
    _gradient_background,
    _mask_array,
    _Plan,
    _value_noise,
)


def _polygon(radii: Sequence[float] | np.ndarray, angles: Sequence[float] | np.ndarray) -> np.ndarray:
    r, a = np.asarray(radii, dtype=np.float64), np.asarray(angles, dtype=np.float64)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def _regular(n: int, rng: np.random.Generator) -> np.ndarray:
    angles = np.arange(n) * (2 * math.pi / n)
    return _polygon(1.0 + rng.uniform(-0.05, 0.05, n), angles)


def _circle_points(n: int = 48) -> np.ndarray:
    return _polygon(np.ones(n), np.arange(n) * (2 * math.pi / n))


def _shape_outline(kind: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """Polygons in unit coordinates (extent about 1) with fill values; later ones paint over earlier ones."""
    if kind == "circle":
        return [(_circle_points(), 255)]
    if kind == "ellipse":
        return [(_circle_points() * np.array([1.0, rng.uniform(0.45, 0.65)]), 255)]
    if kind == "ring":
        return [(_circle_points(), 255), (_circle_points() * rng.uniform(0.5, 0.7), 0)]
    if kind == "crescent":
        offset = np.array([rng.uniform(0.35, 0.6), 0.0])
        return [(_circle_points(), 255), (_circle_points() * rng.uniform(0.85, 1.0) + offset, 0)]
    if kind in ("triangle", "square", "pentagon", "hexagon"):
        return [(_regular({"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[kind], rng), 255)]
    if kind == "star":
        inner = rng.uniform(0.38, 0.5)
        return [(_polygon(np.tile([1.0, inner], 5), np.arange(10) * (math.pi / 5)), 255)]
    if kind == "cross":
        w = rng.uniform(0.25, 0.35)
        pts = [
            (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1), (w, -w), (1, -w), (1, w)
        ]  # fmt: skip
        return [(np.array(pts, dtype=np.float64), 255)]
    if kind == "heart":
        t = np.arange(48) * (2 * math.pi / 48)
        hx = 16 * np.sin(t) ** 3
        hy = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [(np.stack([hx, hy + 2.5], axis=1) / 16.5, 255)]
    if kind == "arrow":
        s, head = rng.uniform(0.15, 0.25), rng.uniform(0.4, 0.55)
        pts = [(-1, -s), (0.2, -s), (0.2, -head), (1, 0), (0.2, head), (0.2, s), (-1, s)]
        return [(np.array(pts, dtype=np.float64), 255)]
    raise KeyError(kind)


def _shape_renderer(kind: str, size: int) -> Renderer:
    size2 = 2 * size

    def render(rng: np.random.Generator, split: str, index: int) -> np.ndarray:
        radius = rng.uniform(0.22, 0.36) * size2
        centre = size2 / 2 + rng.uniform(-0.15, 0.15, 2) * size2
        angle = rng.uniform(0, 2 * math.pi)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        layer = Image.new("L", (size2, size2), 0)
        draw = ImageDraw.Draw(layer)
        for points, fill in _shape_outline(kind, rng):
            xy = points @ rotation.T * radius + centre
            draw.polygon([(float(px), float(py)) for px, py in xy], fill=fill)
        alpha = _mask_array(layer.reduce(2))
        # Cluttered background: gradient + a blotchy second colour + distractor lines and dots.
        bg, fg = _colour_pair(rng, 0.25)
        img = _gradient_background(rng, bg, size, 0.25)
        img = _blend(img, rng.uniform(0, 1, 3), _value_noise(rng, size, int(rng.integers(2, 6))) * rng.uniform(0, 0.5))
        img = _blend(img, rng.uniform(0, 1, 3), _clutter(rng, size, 4, 6) * rng.uniform(0.4, 1.0))
        img = _blend(img, fg, alpha)
        return _finish(img, rng, 0.06)

    return render


def _plan_shapes(size: int, seed: int) -> _Plan:
    return _Plan([_ClassDef(k, _shape_renderer(k, size)) for k in sorted(_SHAPE_CLASSES)])
