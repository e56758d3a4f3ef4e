"""Two line-art targets: ``charts`` (class = the chart type: bars, pie, scatter, heatmap, ... of random data
in random colours) and ``waveforms`` (class = the signal family drawn as a trace: sine, square, chirp, ...).

Separate because both draw plots with Pillow (at twice the size, box-reduced like every mask here) and share
the frame (background, optional axes and grid); nothing else draws data. Pillow rather than matplotlib: a
thousand figures in about a second, and no font or backend in the bytes.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .info import _CHART_CLASSES, _WAVEFORM_CLASSES
from .render import Renderer, _ClassDef, _colour_pair, _finish, _gradient_background, _luminance, _Plan

_RGB = tuple[int, int, int]
#: (x0, y0, x1, y1) of the plot area on the 2x canvas.
_Box = tuple[float, float, float, float]


def _rgb(colour: np.ndarray) -> _RGB:
    r, g, b = (int(v) for v in np.clip(np.rint(colour * 255.0), 0, 255))
    return r, g, b


def _palette(rng: np.random.Generator, background: np.ndarray, n: int) -> list[_RGB]:
    """``n`` random colours that stand out from ``background`` (luminance distance >= 0.25)."""
    lum = _luminance(background)
    colours = []
    for _ in range(n):
        candidates = (rng.uniform(0.0, 1.0, 3) for _ in range(64))
        fg = next((c for c in candidates if abs(_luminance(c) - lum) >= 0.25), None)
        colours.append(_rgb(fg if fg is not None else np.zeros(3) if lum >= 0.5 else np.ones(3)))
    return colours


def _frame(rng: np.random.Generator, size: int) -> tuple[np.ndarray, Image.Image, ImageDraw.ImageDraw, _Box, _RGB]:
    """Background (size^2 floats), a transparent 2x RGBA layer to draw on, the plot box, the axis colour.

    The plot box has random margins; axes (an L or a full box) and grid lines are drawn or not at random.
    """
    bg, axis = _colour_pair(rng, 0.35)
    background = _gradient_background(rng, bg, size, 0.15)
    size2 = 2 * size
    layer = Image.new("RGBA", (size2, size2), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    left, bottom = rng.uniform(0.06, 0.2, 2) * size2
    right, top = rng.uniform(0.03, 0.1, 2) * size2
    box = (float(left), float(top), float(size2 - right), float(size2 - bottom))
    axis_rgb = _rgb(axis)
    if rng.uniform() < 0.4:
        grid = _rgb(bg * 0.7 + axis * 0.3)
        for k in range(1, int(rng.integers(3, 6))):
            y = box[1] + (box[3] - box[1]) * k / 5
            draw.line([(box[0], y), (box[2], y)], fill=grid, width=1)
    if rng.uniform() < 0.8:
        width = int(rng.integers(1, 3))
        draw.line([(box[0], box[1]), (box[0], box[3]), (box[2], box[3])], fill=axis_rgb, width=width)
        if rng.uniform() < 0.3:
            draw.line([(box[0], box[1]), (box[2], box[1]), (box[2], box[3])], fill=axis_rgb, width=width)
    return background, layer, draw, box, axis_rgb


def _composite(rng: np.random.Generator, background: np.ndarray, layer: Image.Image, max_noise: float) -> np.ndarray:
    """The 2x drawing box-reduced and laid over the background (straight alpha, linear in floats)."""
    small = np.asarray(layer.reduce(2), dtype=np.float64) * (1.0 / 255.0)
    alpha = small[..., 3:4]
    # reduce() averages each channel alone, transparent pixels counting as black: an edge pixel's colour is
    # the drawn colour times its coverage, so divide the coverage (alpha) back out before blending.
    colour = np.divide(small[..., :3], alpha, out=np.zeros_like(small[..., :3]), where=alpha > 0)
    img = background * (1.0 - alpha) + np.clip(colour, 0.0, 1.0) * alpha
    return _finish(img, rng, max_noise)


def _bars(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, box: _Box, colours: list[_RGB], horizontal: bool
) -> None:
    n = int(rng.integers(3, 9))
    heights = rng.uniform(0.15, 1.0, n)
    gap = rng.uniform(0.15, 0.5)
    x0, y0, x1, y1 = box
    span = (y1 - y0) if horizontal else (x1 - x0)
    step = span / n
    same = rng.uniform() < 0.5
    for i, h in enumerate(heights):
        fill = colours[0] if same else colours[i % len(colours)]
        a = step * i + step * gap / 2
        b = step * (i + 1) - step * gap / 2
        if horizontal:
            draw.rectangle([x0, y0 + a, x0 + (x1 - x0) * h, y0 + b], fill=fill)
        else:
            draw.rectangle([x0 + a, y1 - (y1 - y0) * h, x0 + b, y1], fill=fill)


def _series(rng: np.random.Generator, n: int) -> np.ndarray:
    """A smooth-ish random series in [0.1, 0.9]: a random walk with drift, rescaled."""
    steps = rng.normal(rng.uniform(-0.3, 0.3), 1.0, n)
    walk = np.cumsum(steps)
    low, high = float(walk.min()), float(walk.max())
    return 0.1 + 0.8 * (walk - low) / (high - low if high > low else 1.0)


def _points(box: _Box, xs: np.ndarray, ys: np.ndarray) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    return [(float(x0 + (x1 - x0) * x), float(y1 - (y1 - y0) * y)) for x, y in zip(xs, ys, strict=True)]


def _chart(kind: str, rng: np.random.Generator, draw: ImageDraw.ImageDraw, box: _Box, colours: list[_RGB]) -> None:
    x0, y0, x1, y1 = box
    width = int(rng.integers(2, 4))
    if kind in ("bar-vertical", "bar-horizontal"):
        _bars(rng, draw, box, colours, kind == "bar-horizontal")
    elif kind == "histogram":
        n = int(rng.integers(8, 16))
        centre, spread = rng.uniform(0.3, 0.7), rng.uniform(0.12, 0.3)
        edges = np.arange(n + 1) / n
        mids = (edges[:-1] + edges[1:]) / 2
        heights = np.exp(-0.5 * ((mids - centre) / spread) ** 2) * rng.uniform(0.8, 1.0, n)
        heights = 0.05 + 0.9 * heights / heights.max()
        for a, b, h in zip(edges[:-1], edges[1:], heights, strict=True):
            draw.rectangle([x0 + (x1 - x0) * a, y1 - (y1 - y0) * h, x0 + (x1 - x0) * b, y1], fill=colours[0],
                           outline=colours[1] if rng.uniform() < 0.5 else None)  # fmt: skip
    elif kind == "line":
        for k in range(int(rng.integers(1, 4))):
            n = int(rng.integers(10, 30))
            draw.line(_points(box, np.linspace(0, 1, n), _series(rng, n)), fill=colours[k], width=width)
    elif kind == "step":
        n = int(rng.integers(5, 12))
        ys = _series(rng, n)
        xs = np.linspace(0, 1, n + 1)
        stairs_x = np.repeat(xs, 2)[1:-1]
        stairs_y = np.repeat(ys, 2)
        draw.line(_points(box, stairs_x, stairs_y), fill=colours[0], width=width)
    elif kind == "area":
        n = int(rng.integers(8, 25))
        xs = np.linspace(0, 1, n)
        pts = _points(box, xs, _series(rng, n))
        draw.polygon([*pts, (x1, y1), (x0, y1)], fill=colours[0])
    elif kind == "scatter":
        n = int(rng.integers(15, 45))
        slope = rng.uniform(-1, 1)
        xs = rng.uniform(0.05, 0.95, n)
        ys = np.clip(0.5 + slope * (xs - 0.5) + rng.normal(0, rng.uniform(0.08, 0.25), n), 0.05, 0.95)
        r = float(rng.uniform(1.5, 3.0))
        for px, py in _points(box, xs, ys):
            draw.ellipse([px - r, py - r, px + r, py + r], fill=colours[0])
    elif kind == "pie":
        shares = rng.uniform(0.2, 1.0, int(rng.integers(3, 7)))
        angles = np.concatenate([[0.0], np.cumsum(shares / shares.sum() * 360.0)]) + rng.uniform(0, 360)
        r = min(x1 - x0, y1 - y0) / 2 * rng.uniform(0.8, 1.0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        for i in range(len(shares)):
            draw.pieslice([cx - r, cy - r, cx + r, cy + r], float(angles[i]), float(angles[i + 1]), fill=colours[i])
    elif kind == "boxplot":
        n = int(rng.integers(2, 6))
        step = (x1 - x0) / n
        for i in range(n):
            q = np.sort(rng.uniform(0.05, 0.95, 5))
            lo, q1, med, q3, hi = (y1 - (y1 - y0) * v for v in q)
            cx = x0 + step * (i + 0.5)
            half = step * rng.uniform(0.2, 0.35)
            draw.line([(cx, lo), (cx, hi)], fill=colours[0], width=max(1, width - 1))
            draw.line([(cx - half / 2, lo), (cx + half / 2, lo)], fill=colours[0], width=max(1, width - 1))
            draw.line([(cx - half / 2, hi), (cx + half / 2, hi)], fill=colours[0], width=max(1, width - 1))
            draw.rectangle([cx - half, q3, cx + half, q1], fill=colours[1], outline=colours[0], width=width - 1)
            draw.line([(cx - half, med), (cx + half, med)], fill=colours[0], width=width)
    elif kind == "heatmap":
        rows, cols = int(rng.integers(4, 9)), int(rng.integers(4, 9))
        values = rng.uniform(0, 1, (rows, cols))
        low, high = np.array(colours[0], dtype=np.float64), np.array(colours[1], dtype=np.float64)
        for r in range(rows):
            for c in range(cols):
                fill = tuple(int(v) for v in np.rint(low + (high - low) * values[r, c]))
                draw.rectangle(
                    [x0 + (x1 - x0) * c / cols, y0 + (y1 - y0) * r / rows,
                     x0 + (x1 - x0) * (c + 1) / cols, y0 + (y1 - y0) * (r + 1) / rows],
                    fill=fill,
                )  # fmt: skip
    else:
        raise KeyError(kind)


def _chart_renderer(kind: str, size: int) -> Renderer:
    def render(rng: np.random.Generator, split: str, index: int) -> np.ndarray:
        background, layer, draw, box, _ = _frame(rng, size)
        colours = _palette(rng, background[size // 2, size // 2], 8)
        _chart(kind, rng, draw, box, colours)
        return _composite(rng, background, layer, 0.04)

    return render


def _plan_charts(size: int, seed: int) -> _Plan:
    return _Plan([_ClassDef(k, _chart_renderer(k, size), {"chart": k}) for k in sorted(_CHART_CLASSES)])


# ------------------------------------------------------------------------------------------- waveforms


def _waveform(kind: str, rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Signal ``kind`` at times ``t`` in [0, 1], in about [-1, 1], random frequency and phase."""
    cycles = rng.uniform(1.5, 5.0)
    phase = rng.uniform(0, 1)
    u = cycles * t + phase
    frac = u - np.floor(u)
    if kind == "sine":
        return np.sin(2 * math.pi * u)
    if kind == "square":
        return np.where(frac < 0.5, 1.0, -1.0)
    if kind == "sawtooth":
        return 2.0 * frac - 1.0
    if kind == "triangle":
        return 1.0 - 4.0 * np.abs(frac - 0.5)
    if kind == "pulse-train":
        duty = rng.uniform(0.05, 0.15)
        return np.where(frac < duty, 1.0, -1.0)
    if kind == "chirp":
        start, end = rng.uniform(0.5, 2.0), rng.uniform(6.0, 10.0)
        return np.sin(2 * math.pi * (start * t + (end - start) * t * t / 2) + 2 * math.pi * phase)
    if kind == "damped":
        return np.exp(-t * rng.uniform(2.5, 5.0)) * np.sin(2 * math.pi * (cycles + 2.0) * t + 2 * math.pi * phase)
    if kind == "amplitude-modulated":
        carrier = np.sin(2 * math.pi * (cycles * 3.0) * t)
        return carrier * (0.55 + 0.45 * np.sin(2 * math.pi * rng.uniform(0.8, 1.6) * t + 2 * math.pi * phase))
    if kind == "random-walk":
        walk = np.cumsum(rng.normal(0, 1, t.shape[0]))
        walk = walk - walk.mean()
        return walk / max(float(np.abs(walk).max()), 1e-9)
    if kind == "noise":
        return np.clip(rng.normal(0, 0.45, t.shape[0]), -1.0, 1.0)
    raise KeyError(kind)


def _waveform_renderer(kind: str, size: int) -> Renderer:
    def render(rng: np.random.Generator, split: str, index: int) -> np.ndarray:
        background, layer, draw, box, _ = _frame(rng, size)
        colour = _palette(rng, background[size // 2, size // 2], 1)[0]
        n = 4 * size
        t = np.arange(n, dtype=np.float64) / (n - 1)
        amplitude = rng.uniform(0.25, 0.45)
        ys = 0.5 + amplitude * _waveform(kind, rng, t) + rng.normal(0, rng.uniform(0.0, 0.03), n)
        draw.line(_points(box, t, ys), fill=colour, width=int(rng.integers(2, 4)))
        return _composite(rng, background, layer, 0.04)

    return render


def _plan_waveforms(size: int, seed: int) -> _Plan:
    return _Plan([_ClassDef(k, _waveform_renderer(k, size), {"signal": k}) for k in sorted(_WAVEFORM_CLASSES)])
