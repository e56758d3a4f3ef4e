"""Report figures: matplotlib ``Figure`` objects drawn on the Agg canvas, returned as embeddable PNGs.

No pyplot: figures are created with :class:`matplotlib.figure.Figure` and attached to an explicit
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`, so nothing is registered in pyplot's global
figure manager, no GUI backend is ever selected, and concurrent requests of the web process cannot
leak state into one another. Styling is passed per artist instead of through the global ``rcParams``.
"""

from __future__ import annotations

import base64
import io
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ._format import as_float

__all__ = [
    "ESTIMATOR_COLOR",
    "BASELINE_COLOR",
    "EmbeddedFigure",
    "MethodInterval",
    "ScatterPanel",
    "BarPanel",
    "tau_interval_figure",
    "scatter_panels_figure",
    "score_bars_figure",
    "confusion_figure",
]

ESTIMATOR_COLOR = "#3b6ea8"
BASELINE_COLOR = "#d08838"
#: The product's own orders (the default ranking, predicted accuracy) in a benchmark's figures.
PRODUCT_COLOR = "#6b46c1"
HIGHLIGHT_COLOR = "#2f855a"
MUTED_COLOR = "#a9b8c9"
TEXT_COLOR = "#1f2933"
GRID_COLOR = "#e3e8ee"
#: Render at 1.5x the CSS pixel density (144 dpi vs 96): sharp on screens and in print.
_DPI = 144
_CSS_SCALE = 96 / _DPI


@dataclass(frozen=True)
class EmbeddedFigure:
    """A rendered figure: base64 PNG plus its size in CSS pixels (the PNG has 1.5x as many)."""

    png_base64: str
    width: int
    height: int
    alt: str

    @property
    def src(self) -> str:
        return f"data:image/png;base64,{self.png_base64}"


@dataclass(frozen=True)
class MethodInterval:
    """One bar of the τw figure: mean and 95 % interval (any may be None)."""

    name: str
    mean: float | None
    low: float | None
    high: float | None
    is_baseline: bool
    is_product: bool = False  # the product's own order (default, predicted accuracy)


@dataclass(frozen=True)
class ScatterPanel:
    """One small multiple: a method's scores (x) against the backbones' actual accuracy (y)."""

    title: str
    x: Sequence[float | None]
    y: Sequence[float | None]
    labels: Sequence[str]
    is_baseline: bool = False
    is_product: bool = False


@dataclass(frozen=True)
class BarPanel:
    """One estimator's score per backbone; ``best`` indexes the highlighted bar(s)."""

    title: str
    values: Sequence[float | None]
    labels: Sequence[str]
    best: Sequence[int] = ()


def _new_figure(width_in: float, height_in: float, *, constrained: bool = True) -> Figure:
    figure = Figure(
        figsize=(width_in, height_in), dpi=_DPI, layout="constrained" if constrained else None, facecolor="white"
    )
    FigureCanvasAgg(figure)  # explicit Agg canvas: no pyplot, no backend switch
    return figure


@dataclass(frozen=True)
class _Grid:
    """A grid of equal panels with margins and gaps in inches.

    Laid out by hand (``subplots_adjust``) rather than by the constrained layout engine, which costs
    about half of the drawing time of a multi-panel figure; the margins are known from the label lengths.
    """

    rows: int
    cols: int
    panel_w: float
    panel_h: float
    left: float
    right: float
    top: float
    bottom: float
    gap_w: float
    gap_h: float

    @property
    def size(self) -> tuple[float, float]:
        width = self.left + self.right + self.cols * self.panel_w + (self.cols - 1) * self.gap_w
        height = self.top + self.bottom + self.rows * self.panel_h + (self.rows - 1) * self.gap_h
        return width, height

    def figure(self) -> tuple[Figure, np.ndarray]:
        width, height = self.size
        figure = _new_figure(width, height, constrained=False)
        figure.subplots_adjust(
            left=self.left / width,
            right=1 - self.right / width,
            bottom=self.bottom / height,
            top=1 - self.top / height,
            wspace=self.gap_w / self.panel_w,
            hspace=self.gap_h / self.panel_h,
        )
        return figure, figure.subplots(self.rows, self.cols, squeeze=False).ravel()


def _label_inches(labels: Sequence[str], fontsize: float) -> float:
    """Rough width of the longest label (DejaVu Sans averages about 0.55 em per character)."""
    return 0.55 * fontsize / 72 * max((len(label) for label in labels), default=0)


def _embed(figure: Figure, alt: str) -> EmbeddedFigure:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, facecolor="white", metadata={"Software": None})
    figure.clear()
    data = buffer.getvalue()
    width_px, height_px = struct.unpack(">II", data[16:24])  # the PNG's IHDR chunk
    return EmbeddedFigure(
        png_base64=base64.b64encode(data).decode("ascii"),
        width=int(round(width_px * _CSS_SCALE)),
        height=int(round(height_px * _CSS_SCALE)),
        alt=alt,
    )


def _style_axes(ax: Axes, *, grid_axis: Literal["both", "x", "y"] = "both") -> None:
    ax.set_facecolor("white")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9aa5b1")
    ax.tick_params(colors=TEXT_COLOR, labelsize=8, length=3)
    ax.grid(True, axis=grid_axis, color=GRID_COLOR, linewidth=0.8)
    ax.set_axisbelow(True)


def _no_data(ax: Axes, message: str = "n/a") -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#7b8794", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _grid_shape(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols


#: Label positions tried around a point, in points: (dx, dy, horizontal alignment).
_LABEL_SLOTS = (
    (4, 3, "left"),
    (-4, 3, "right"),
    (4, -9, "left"),
    (-4, -9, "right"),
    (4, 10, "left"),
    (-4, 10, "right"),
    (4, -16, "left"),
    (-4, -16, "right"),
)


def _place_labels(ax: Axes, xs: np.ndarray, ys: np.ndarray, labels: Sequence[str], *, fontsize: float) -> None:
    """Label every point, choosing for each the slot that overlaps least with the labels and points placed so far
    and stays inside the panel (a greedy label "repel"; estimated text extents, no renderer round trip)."""
    ax.autoscale_view()
    to_pixels = ax.transData.transform
    box = ax.get_window_extent()
    scale = ax.figure.dpi / 72  # points -> pixels
    char_w, height = 0.55 * fontsize * scale, 0.95 * fontsize * scale
    anchors = to_pixels(np.column_stack([xs, ys]))
    obstacles = [(px - 3 * scale, py - 3 * scale, px + 3 * scale, py + 3 * scale) for px, py in anchors]

    def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    order = np.argsort(-anchors[:, 1], kind="stable")  # top to bottom
    for i in order:
        (px, py), label = anchors[i], labels[i]
        width = char_w * len(label)
        best: tuple[float, tuple[int, int, str], tuple[float, float, float, float]] | None = None
        for dx, dy, align in _LABEL_SLOTS:
            x0 = px + dx * scale - (width if align == "right" else 0.0)
            y0 = py + dy * scale
            rect = (x0, y0, x0 + width, y0 + height)
            outside = (max(0.0, box.x0 - rect[0]) + max(0.0, rect[2] - box.x1)) * height * 4
            outside += (max(0.0, box.y0 - rect[1]) + max(0.0, rect[3] - box.y1)) * width * 4
            cost = outside + sum(overlap(rect, other) for other in obstacles)
            if best is None or cost < best[0]:
                best = (cost, (dx, dy, align), rect)
        assert best is not None
        (dx, dy, align), rect = best[1], best[2]
        obstacles.append(rect)
        ax.annotate(
            label,
            (float(xs[i]), float(ys[i])),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=align,
            va="bottom",
            fontsize=fontsize,
            color="#3e4c59",
            clip_on=False,
        )


def _method_color(is_baseline: bool, is_product: bool) -> str:
    return PRODUCT_COLOR if is_product else BASELINE_COLOR if is_baseline else ESTIMATOR_COLOR


def tau_interval_figure(methods: Sequence[MethodInterval], *, title: str) -> EmbeddedFigure:
    """Horizontal bars of each method's mean τw with its 95 % interval; best at the top, zero line."""
    n = max(1, len(methods))
    left = 0.2 + _label_inches([m.name for m in methods], 8.5)
    grid = _Grid(
        1,
        1,
        panel_w=max(3.5, 7.4 - left),
        panel_h=0.3 * n + 0.2,
        left=left,
        right=0.2,
        top=0.4,
        bottom=0.5,
        gap_w=0,
        gap_h=0,
    )
    figure, (ax,) = grid.figure()
    _style_axes(ax, grid_axis="x")
    positions = np.arange(len(methods))[::-1]  # first method (best) at the top
    for y, method in zip(positions, methods, strict=True):
        color = _method_color(method.is_baseline, method.is_product)
        if method.mean is None:
            ax.text(0, y, "  n/a", va="center", ha="left", fontsize=8, color="#7b8794")
            continue
        ax.barh(y, method.mean, height=0.62, color=color, alpha=0.9, zorder=2)
        if method.low is not None and method.high is not None:
            ax.errorbar(
                method.mean,
                y,
                xerr=[[max(0.0, method.mean - method.low)], [max(0.0, method.high - method.mean)]],
                fmt="none",
                ecolor=TEXT_COLOR,
                elinewidth=1.1,
                capsize=3,
                zorder=3,
            )
    ax.axvline(0, color=TEXT_COLOR, linewidth=1.0, zorder=1)
    ax.set_yticks(positions, [m.name for m in methods], fontsize=8.5)
    for label, method in zip(ax.get_yticklabels(), methods, strict=True):
        label.set_color(BASELINE_COLOR if method.is_baseline else TEXT_COLOR)
        if method.is_baseline:
            label.set_fontstyle("italic")
        if method.is_product:
            label.set_fontweight("bold")
    bounds = [v for m in methods for v in (m.low, m.high, m.mean) if v is not None]
    low, high = min([*bounds, 0.0]), max([*bounds, 0.0])
    pad = 0.08 * max(high - low, 0.2)
    ax.set_xlim(min(low - pad, -0.05), max(high + pad, 0.05))
    ax.set_ylim(-0.6, len(methods) - 0.4)
    ax.set_xlabel("weighted Kendall τ (mean across targets, 95 % CI)", fontsize=8.5, color=TEXT_COLOR)
    ax.set_title(title, fontsize=10, color=TEXT_COLOR, loc="left")
    handles = [Patch(color=ESTIMATOR_COLOR, label="estimator"), Patch(color=BASELINE_COLOR, label="baseline")]
    if any(m.is_product for m in methods):
        handles.insert(0, Patch(color=PRODUCT_COLOR, label="product (default order)"))
    ax.legend(
        handles=handles,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncols=len(handles),
        fontsize=7.5,
        frameon=False,
        borderaxespad=0.2,
    )
    return _embed(figure, title)


def scatter_panels_figure(panels: Sequence[ScatterPanel], *, title: str, ylabel: str) -> EmbeddedFigure:
    """Small multiples, one per method: x = score, y = actual accuracy, each point labelled."""
    rows, cols = _grid_shape(max(1, len(panels)), 4)
    grid = _Grid(
        rows, cols, panel_w=2.05, panel_h=1.55, left=0.75, right=0.25, top=0.3, bottom=0.6, gap_w=0.5, gap_h=0.55
    )
    figure, axes = grid.figure()
    for ax, panel in zip(axes, panels, strict=False):
        _style_axes(ax)
        color = _method_color(panel.is_baseline, panel.is_product)
        ax.set_title(panel.title, fontsize=8.5, color=BASELINE_COLOR if panel.is_baseline else TEXT_COLOR)
        points = [
            (x, y, label)
            for x, y, label in zip(
                (as_float(v) for v in panel.x), (as_float(v) for v in panel.y), panel.labels, strict=True
            )
            if x is not None and y is not None
        ]
        if not points:
            _no_data(ax, "no scores")
            continue
        xs = np.array([p[0] for p in points])
        ys = np.array([p[1] for p in points])
        ax.scatter(xs, ys, s=22, color=color, edgecolor="white", linewidth=0.6, zorder=3)
        ax.margins(x=0.12, y=0.18)
        _place_labels(ax, xs, ys, [p[2] for p in points], fontsize=6.5)
        ax.xaxis.get_offset_text().set_fontsize(7)
        ax.tick_params(labelsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    width, height = grid.size
    figure.text(0.12 / width, 0.5, ylabel, rotation=90, ha="left", va="center", fontsize=8.5, color=TEXT_COLOR)
    figure.text(
        0.5,
        0.1 / height,
        "score (each method on its own scale)",
        ha="center",
        va="bottom",
        fontsize=8.5,
        color=TEXT_COLOR,
    )
    return _embed(figure, title)


def score_bars_figure(panels: Sequence[BarPanel], *, title: str) -> EmbeddedFigure:
    """One small bar chart per estimator: score per backbone (best highlighted), backbones in fused order."""
    rows, cols = _grid_shape(max(1, len(panels)), 4)
    n_bars = max([len(p.values) for p in panels] or [1])
    left = 0.2 + _label_inches([label for p in panels for label in p.labels], 7)
    grid = _Grid(
        rows,
        cols,
        panel_w=max(1.6, (8.6 - left - 0.2 - 0.35 * (cols - 1)) / cols),
        panel_h=0.2 * n_bars + 0.15,
        left=left,
        right=0.2,
        top=0.3,
        bottom=0.35,
        gap_w=0.35,
        gap_h=0.6,
    )
    figure, axes = grid.figure()
    for index, (ax, panel) in enumerate(zip(axes, panels, strict=False)):
        _style_axes(ax, grid_axis="x")
        ax.set_title(panel.title, fontsize=8.5, color=TEXT_COLOR)
        positions = np.arange(len(panel.values))[::-1]
        values = [as_float(v) for v in panel.values]
        for y, value, i in zip(positions, values, range(len(values)), strict=True):
            if value is None:
                ax.text(0, y, " n/a", va="center", ha="left", fontsize=6.5, color="#7b8794")
                continue
            ax.barh(y, value, height=0.66, color=HIGHLIGHT_COLOR if i in panel.best else MUTED_COLOR, zorder=2)
        ax.axvline(0, color="#7b8794", linewidth=0.8, zorder=1)
        ax.set_ylim(-0.6, len(panel.values) - 0.4)
        if index % cols == 0:
            ax.set_yticks(positions, list(panel.labels), fontsize=7)
        else:
            ax.set_yticks(positions, [""] * len(positions))
        ax.tick_params(axis="x", labelsize=6.5)
        ax.xaxis.get_offset_text().set_fontsize(6.5)
        if all(v is None for v in values):
            ax.set_xticks([])
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return _embed(figure, title)


def confusion_figure(matrix: Sequence[Sequence[float]], labels: Sequence[str], *, title: str) -> EmbeddedFigure:
    """Row-normalised confusion matrix heatmap (rows: true class, columns: predicted); counts annotated when small."""
    counts = np.asarray(matrix, dtype=float)
    n = counts.shape[0]
    side = float(np.clip(1.6 + 0.32 * n, 3.4, 8.5))
    figure = _new_figure(side + 1.2, side)
    ax = figure.add_subplot()
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    tick_size = 8 if n <= 12 else 6 if n <= 30 else 4.5
    shown = [label if len(label) <= 14 else label[:13] + "…" for label in labels]
    ax.set_xticks(range(n), shown, rotation=90, fontsize=tick_size)
    ax.set_yticks(range(n), shown, fontsize=tick_size)
    ax.set_xlabel("predicted class", fontsize=8.5)
    ax.set_ylabel("true class", fontsize=8.5)
    ax.tick_params(length=0)
    if n <= 15:
        for (row, col), value in np.ndenumerate(counts):
            if value:
                ax.text(
                    col,
                    row,
                    f"{value:g}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if normalised[row, col] > 0.6 else TEXT_COLOR,
                )
    colorbar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    colorbar.ax.tick_params(labelsize=7)
    colorbar.set_label("fraction of the true class", fontsize=7.5)
    ax.set_title(title, fontsize=10, loc="left", color=TEXT_COLOR)
    return _embed(figure, title)
