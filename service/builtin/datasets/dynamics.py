"""Two targets drawn by iterating a simple map: ``fractals`` (class = the Julia set's parameter ``c``, seen in
random views near the set's boundary, random palettes) and ``cellular-automata`` (class = the elementary
cellular automaton's rule, space-time diagrams from random initial rows).

Separate because neither draws a shape or a texture: the class is the rule that generated the picture, which
no zoo source has seen. The iterations use explicit real arithmetic (no complex numbers, no transcendental
functions), so every machine computes the same bits.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .info import _AUTOMATON_RULES, _JULIA_PARAMETERS
from .render import Renderer, _ClassDef, _colour_pair, _downsample, _finish, _Plan

#: Julia iterations per pixel; a point escapes once |z|^2 exceeds 16.
_JULIA_ITERATIONS = 48


def _escape_counts(cr: float, ci: float, x: np.ndarray, y: np.ndarray, iterations: int) -> np.ndarray:
    """Iterations before ``z -> z^2 + c`` leaves |z| <= 4, from ``z = x + iy`` (``iterations`` if never)."""
    counts = np.full(x.shape, iterations, dtype=np.int64)
    zx, zy = x.copy(), y.copy()
    for step in range(iterations):
        xx, yy = zx * zx, zy * zy
        escaped = (xx + yy > 16.0) & (counts == iterations)
        counts[escaped] = step
        zy = 2.0 * zx * zy + ci
        zx = xx - yy + cr
        # Escaped points would overflow to inf (then nan): pin them, they are counted already.
        done = counts < iterations
        zx[done] = 0.0
        zy[done] = 0.0
    return counts


@functools.lru_cache(maxsize=16)
def _boundary_points(cr: float, ci: float) -> np.ndarray:
    """Points of a 160x160 grid over [-1.8, 1.8]^2 that escape slowly: near the Julia set's boundary.

    Views are centred on these, so that every image shows the set and not empty plane.
    """
    t = (np.arange(160, dtype=np.float64) + 0.5) / 160 * 3.6 - 1.8
    x, y = np.meshgrid(t, t)
    counts = _escape_counts(cr, ci, x, y, _JULIA_ITERATIONS)
    near = (counts >= 6) & (counts < _JULIA_ITERATIONS)
    return np.stack([x[near], y[near]], axis=1)


def _palette_map(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB through a random piecewise-linear ramp of 3 colours (random gamma)."""
    stops = rng.uniform(0.0, 1.0, (3, 3))
    v = values ** rng.uniform(0.4, 1.2)
    low = np.clip(v * 2.0, 0.0, 1.0)[..., None]
    high = np.clip(v * 2.0 - 1.0, 0.0, 1.0)[..., None]
    return stops[0] + (stops[1] - stops[0]) * low + (stops[2] - stops[1]) * high


def _julia_renderer(cr: float, ci: float, size: int) -> Renderer:
    size2 = 2 * size

    def render(rng: np.random.Generator, split: str, index: int) -> np.ndarray:
        centres = _boundary_points(cr, ci)
        cx, cy = centres[int(rng.integers(len(centres)))]
        half = 1.6 / math.exp(rng.uniform(0.0, math.log(5.0)))  # zoom 1x-5x, log-uniform
        angle = rng.uniform(0, 2 * math.pi)
        t = ((np.arange(size2, dtype=np.float64) + 0.5) / size2 * 2.0 - 1.0) * half
        u, v = np.meshgrid(t, t)
        c, s = math.cos(angle), math.sin(angle)
        counts = _escape_counts(cr, ci, cx + u * c - v * s, cy + u * s + v * c, _JULIA_ITERATIONS)
        inside = counts == _JULIA_ITERATIONS
        img = _palette_map(rng, counts / _JULIA_ITERATIONS)
        img[inside] = rng.uniform(0.0, 1.0, 3)
        small = np.stack([_downsample(img[..., k]) for k in range(3)], axis=2)
        return _finish(np.clip(small, 0.0, 1.0), rng, 0.03)

    return render


def _plan_fractals(size: int, seed: int) -> _Plan:
    classes = [
        _ClassDef(name, _julia_renderer(cr, ci, size), {"c": [cr, ci]})
        for name, (cr, ci) in sorted(_JULIA_PARAMETERS.items())
    ]
    return _Plan(classes, {"iterations": _JULIA_ITERATIONS, "escape_radius": 4.0})


# ------------------------------------------------------------------------------------ cellular automata


def _automaton_renderer(rule: int, size: int) -> Renderer:
    table = np.array([(rule >> k) & 1 for k in range(8)], dtype=np.uint8)

    def render(rng: np.random.Generator, split: str, index: int) -> np.ndarray:
        cell = int(rng.integers(1, 3))  # 1 or 2 px per cell
        n = -(-size // cell)
        # The ring is wider than the picture and of odd width: on a ring of 2^k cells additive rules (90, 150)
        # die out within 2^k steps, and a visible edge would show the wrap-around.
        ring = 2 * n + 1
        state = (rng.uniform(0.0, 1.0, ring) < rng.uniform(0.15, 0.85)).astype(np.uint8)
        # A random number of steps first, so that an image is not always the initial row's neighbourhood.
        for _ in range(int(rng.integers(0, 2 * n))):
            state = table[4 * np.roll(state, 1) + 2 * state + np.roll(state, -1)]
        rows = []
        for _ in range(n):
            rows.append(state[:n])
            state = table[4 * np.roll(state, 1) + 2 * state + np.roll(state, -1)]
        grid = np.repeat(np.repeat(np.stack(rows), cell, axis=0), cell, axis=1)[:size, :size]
        bg, fg = _colour_pair(rng, 0.3)
        img = bg[None, None, :] + (fg - bg)[None, None, :] * grid[..., None].astype(np.float64)
        return _finish(img, rng, 0.04)

    return render


def _plan_automata(size: int, seed: int) -> _Plan:
    classes = [
        _ClassDef(name, _automaton_renderer(rule, size), {"rule": rule}) for name, rule in _AUTOMATON_RULES.items()
    ]
    classes.sort(key=lambda c: c.name)
    return _Plan(classes, {"boundary": "periodic"})
