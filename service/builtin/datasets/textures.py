"""Texture datasets (``textures`` and ``textures-fine``): procedural grey-level patterns with random
parameters, coloured; the fine-grained target makes classes of close parameter values.

Separate because the pattern fields are many and concern only these two datasets.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .info import _FINE_TEXTURE_CLASSES, _TEXTURE_CLASSES
from .render import (
    Renderer,
    _blend,
    _ClassDef,
    _colour_pair,
    _downsample,
    _finish,
    _grid,
    _Plan,
    _value_noise,
)


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates rotated by ``angle`` about the image centre."""
    c, s = math.cos(angle), math.sin(angle)
    xc, yc = x - 0.5, y - 0.5
    return xc * c + yc * s, -xc * s + yc * c


def _wave(phase: np.ndarray, sharpness: float) -> np.ndarray:
    """Periodic profile in [0, 1]: a sinusoid (sharpness 1) up to a nearly square wave."""
    return 0.5 + 0.5 * np.tanh(sharpness * np.sin(phase)) / math.tanh(sharpness)


def _stripes(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, angle: float, freq: float) -> np.ndarray:
    """Stripes whose normal points along ``angle``, ``freq`` cycles per image, random phase and profile."""
    u = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)
    return _wave(2 * math.pi * freq * u + rng.uniform(0, 2 * math.pi), rng.uniform(1.0, 4.0))


def _checker(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, freq: float, angle: float) -> np.ndarray:
    u, v = _rotate(x, y, angle)
    phase = rng.uniform(0, 2 * math.pi, 2)
    product = np.sin(2 * math.pi * freq * u + phase[0]) * np.sin(2 * math.pi * freq * v + phase[1])
    return 0.5 + 0.5 * np.tanh(8.0 * product)


def _dot_grid(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, freq: float, radius: float) -> np.ndarray:
    """A lattice of discs, ``radius`` in lattice periods, slightly rotated and shifted."""
    u, v = _rotate(x, y, rng.uniform(-0.2, 0.2))
    u = u * freq + rng.uniform(0, 1)
    v = v * freq + rng.uniform(0, 1)
    du, dv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
    return np.clip((radius - np.sqrt(du * du + dv * dv)) * freq * x.shape[0] / 2 + 0.5, 0, 1)


def _rings(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, freq: float) -> np.ndarray:
    cx, cy = rng.uniform(0.2, 0.8, 2)
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    return _wave(2 * math.pi * freq * r + rng.uniform(0, 2 * math.pi), rng.uniform(1.0, 3.0))


def _waves(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, freq: float, amplitude: float) -> np.ndarray:
    u, v = _rotate(x, y, rng.uniform(0, 2 * math.pi))
    bend = amplitude * np.sin(2 * math.pi * rng.uniform(1.0, 2.5) * u + rng.uniform(0, 2 * math.pi))
    return _wave(2 * math.pi * freq * v + bend + rng.uniform(0, 2 * math.pi), rng.uniform(1.0, 3.0))


def _bricks(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, rows: float, ratio: float) -> np.ndarray:
    """Running-bond bricks: ``rows`` courses per image, bricks ``ratio`` times as long as high."""
    u, v = _rotate(x, y, rng.uniform(-0.15, 0.15))
    v = v * rows + rng.uniform(0, 1)
    course = np.floor(v)
    u = u * rows / ratio + rng.uniform(0, 1) + 0.5 * (course % 2)
    fv, fu = v - course, u - np.floor(u)
    mortar = rng.uniform(0.08, 0.16)
    edge = np.minimum(np.minimum(fv, 1 - fv), np.minimum(fu, 1 - fu) * ratio)
    return np.clip((edge - mortar) * rows * x.shape[0] / 2, 0, 1)


def _voronoi(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """Cell borders of a random Voronoi diagram (distances wrap around, so cells tile seamlessly)."""
    seeds = rng.uniform(0, 1, (n, 2))
    dx = np.abs(x[..., None] - seeds[:, 0])
    dy = np.abs(y[..., None] - seeds[:, 1])
    dx = np.minimum(dx, 1 - dx)
    dy = np.minimum(dy, 1 - dy)
    nearest = np.partition(dx * dx + dy * dy, 1, axis=-1)
    return np.clip((np.sqrt(nearest[..., 1]) - np.sqrt(nearest[..., 0])) * x.shape[0] / 3, 0, 1)


def _fractal(rng: np.random.Generator, size: int) -> np.ndarray:
    total = np.zeros((size, size))
    weight = 0.0
    for octave in range(4):
        amp = 0.5**octave
        total += amp * _value_noise(rng, size, 2 * 2**octave)
        weight += amp
    field_ = total / weight
    lo, hi = field_.min(), field_.max()
    return (field_ - lo) / max(hi - lo, 1e-9)


def _texture_field(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """The grey-level pattern (values in [0, 1]) of texture class ``kind`` with random parameters."""
    x, y = _grid(size)
    pi = math.pi
    jitter = math.radians(8)
    if kind.startswith(("stripes-horizontal", "stripes-vertical")):
        angle = (pi / 2 if "horizontal" in kind else 0.0) + rng.uniform(-jitter, jitter)
        freq = rng.uniform(2.0, 4.0) if kind.endswith("coarse") else rng.uniform(6.0, 9.0)
        return _stripes(rng, x, y, angle, freq)
    if kind in ("stripes-diagonal", "stripes-antidiagonal"):
        angle = (pi / 4 if kind == "stripes-diagonal" else 3 * pi / 4) + rng.uniform(-jitter, jitter)
        return _stripes(rng, x, y, angle, rng.uniform(3.0, 8.0))
    if kind == "checkerboard":
        return _checker(rng, x, y, rng.uniform(1.5, 4.0), rng.uniform(-0.2, 0.2))
    if kind == "dots-grid":
        return _dot_grid(rng, x, y, rng.uniform(3.0, 7.0), rng.uniform(0.18, 0.32))
    if kind == "dots-random":
        n = int(rng.integers(8, 31))
        centres, radii = rng.uniform(0, 1, (n, 2)), rng.uniform(0.025, 0.06, n)
        d = np.sqrt((x[..., None] - centres[:, 0]) ** 2 + (y[..., None] - centres[:, 1]) ** 2) - radii
        return np.clip(0.5 - d.min(axis=-1) * size / 2, 0, 1)
    if kind == "waves":
        return _waves(rng, x, y, rng.uniform(3.0, 6.0), rng.uniform(1.5, 3.0))
    if kind == "concentric-rings":
        return _rings(rng, x, y, rng.uniform(3.0, 8.0))
    if kind == "gradient-linear":
        u, _ = _rotate(x, y, rng.uniform(0, 2 * pi))
        return np.clip(u / 1.42 + 0.5, 0, 1)
    if kind == "gradient-radial":
        cx, cy = rng.uniform(0.1, 0.9, 2)
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        return r / r.max()
    if kind == "noise-white":
        # Drawn at the output resolution and repeated 2x2, so the downsampling keeps it white.
        cells = rng.uniform(0, 1, (size // 2, size // 2))
        return np.repeat(np.repeat(cells, 2, axis=0), 2, axis=1)
    if kind == "noise-smooth":
        return _value_noise(rng, size, int(rng.integers(3, 7)))
    if kind == "noise-fractal":
        return _fractal(rng, size)
    if kind == "bricks":
        return _bricks(rng, x, y, rng.uniform(4.0, 7.0), rng.uniform(1.8, 3.0))
    if kind == "crosshatch":
        angle, freq = rng.uniform(0, pi), rng.uniform(3.0, 7.0)
        a = _stripes(rng, x, y, angle, freq) ** 4
        b = _stripes(rng, x, y, angle + pi / 2, freq) ** 4
        return np.maximum(a, b)
    if kind == "zigzag":
        u, v = _rotate(x, y, rng.uniform(0, 2 * pi))
        period = 1 / rng.uniform(2.0, 4.0)
        tri = np.abs((u / period) % 1.0 - 0.5) * 2 - 0.5  # triangle wave in [-0.5, 0.5]
        shifted = v + tri * period * rng.uniform(0.6, 1.2)
        return _wave(2 * pi * rng.uniform(3.0, 6.0) * shifted, rng.uniform(1.5, 4.0))
    if kind == "voronoi-cells":
        return _voronoi(rng, x, y, int(rng.integers(6, 17)))
    raise KeyError(kind)


#: textures-fine: (base kind, nominal parameter, jitter). Pairs differ by more than twice the jitter.
_FINE_PARAMS: dict[str, tuple[str, float, float]] = {
    "stripes-upright": ("stripes-angle", 0.0, 4.0),  # degrees from vertical stripes
    "stripes-tilted": ("stripes-angle", 16.0, 4.0),
    "stripes-sparse": ("stripes-freq", 4.0, 0.3),  # cycles per image
    "stripes-dense": ("stripes-freq", 5.6, 0.3),
    "checker-coarse": ("checker-freq", 2.5, 0.2),
    "checker-fine": ("checker-freq", 3.4, 0.2),
    "dots-small": ("dots-radius", 0.18, 0.025),  # radius in lattice periods
    "dots-large": ("dots-radius", 0.30, 0.025),
    "blotches-large": ("noise-cells", 3.0, 0.0),  # value-noise lattice cells per image
    "blotches-small": ("noise-cells", 5.0, 0.0),
    "waves-gentle": ("waves-amplitude", 0.8, 0.2),  # radians of bend
    "waves-strong": ("waves-amplitude", 2.0, 0.2),
    "bricks-short": ("bricks-ratio", 1.6, 0.15),  # length / height
    "bricks-long": ("bricks-ratio", 2.6, 0.15),
    "rings-wide": ("rings-freq", 3.5, 0.3),
    "rings-narrow": ("rings-freq", 5.0, 0.3),
}


def _fine_texture_field(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    base, nominal, jitter = _FINE_PARAMS[kind]
    value = nominal + rng.uniform(-jitter, jitter)
    x, y = _grid(size)
    if base == "stripes-angle":
        sign = 1.0 if rng.uniform() < 0.5 else -1.0  # tilt either way: the class is the amount
        return _stripes(rng, x, y, math.radians(sign * value), rng.uniform(4.0, 6.0))
    if base == "stripes-freq":
        return _stripes(rng, x, y, rng.uniform(0, math.pi), value)
    if base == "checker-freq":
        return _checker(rng, x, y, value, rng.uniform(-0.4, 0.4))
    if base == "dots-radius":
        return _dot_grid(rng, x, y, rng.uniform(4.0, 5.0), value)
    if base == "noise-cells":
        return _value_noise(rng, size, int(value))
    if base == "waves-amplitude":
        return _waves(rng, x, y, rng.uniform(3.5, 4.5), value)
    if base == "bricks-ratio":
        return _bricks(rng, x, y, rng.uniform(4.5, 5.5), value)
    if base == "rings-freq":
        return _rings(rng, x, y, value)
    raise KeyError(kind)


def _texture_renderer(
    kind: str, size: int, field_fn: Callable[[str, np.random.Generator, int], np.ndarray]
) -> Renderer:
    size2 = 2 * size

    def render(rng: np.random.Generator, split: str, index: int) -> np.ndarray:
        # The grey-level pattern is drawn at twice the size and averaged (anti-aliasing), then coloured.
        pattern = _downsample(field_fn(kind, rng, size2))
        c0, c1 = _colour_pair(rng, 0.2)
        return _finish(_blend(np.broadcast_to(c0, (size, size, 3)), c1, pattern), rng, 0.05)

    return render


def _plan_textures(size: int, seed: int) -> _Plan:
    return _Plan([_ClassDef(k, _texture_renderer(k, size, _texture_field)) for k in sorted(_TEXTURE_CLASSES)])


def _plan_fine_textures(size: int, seed: int) -> _Plan:
    classes = []
    for kind in sorted(_FINE_TEXTURE_CLASSES):
        base, nominal, jitter = _FINE_PARAMS[kind]
        meta = {"parameter": base, "nominal": nominal, "jitter": jitter}
        classes.append(_ClassDef(kind, _texture_renderer(kind, size, _fine_texture_field), meta))
    return _Plan(classes)
