"""Glyph datasets (``glyphs-latin``, ``glyphs-greek``, ``glyphs-cyrillic``, ``math-symbols``): characters
drawn in the DejaVu faces matplotlib bundles, with a check of which fonts really cover a character.

Separate because fonts, coverage and glyph caching are a concern of their own; the character sets are in
:mod:`.info`.
"""

from __future__ import annotations

import functools
import logging
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .render import Renderer, _ClassDef, _compose_object, _Plan, _random_affine

_logger = logging.getLogger(__name__)


#: The DejaVu faces matplotlib bundles: Sans, Serif and Mono, each regular, bold, oblique/italic, both.
GLYPH_FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
)  # fmt: skip
#: Glyphs are rendered once per (font, character, stroke) on this canvas at this font size, then warped.
_GLYPH_CANVAS = 96
_GLYPH_FONT_SIZE = 64
#: Stroke widths (canvas pixels) for weight variety beyond the bold faces.
_GLYPH_STROKES = (0, 0, 1, 3)
#: An unassigned code point: every font draws its "missing glyph" (.notdef) for it.
_UNASSIGNED = "\u0378"


def _fonts_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def glyph_fonts() -> list[Path]:
    """The bundled DejaVu faces found on this installation, in a fixed order."""
    directory = _fonts_dir()
    found = []
    for file_name in GLYPH_FONT_FILES:
        path = directory / file_name
        if path.is_file():
            found.append(path)
        else:
            _logger.warning("matplotlib font %s not found; glyph datasets use the other faces", path)
    if not found:
        raise RuntimeError(f"no DejaVu font found in {directory}; is matplotlib installed?")
    return found


@functools.lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: raqm (when present) could shape text differently and break byte-identical output.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


def _raw_glyph_mask(font_path: str, char: str) -> np.ndarray:
    """The character drawn at a fixed anchor, unaligned: two code points that fall back to the same
    missing-glyph box give identical masks."""
    canvas = Image.new("L", (_GLYPH_CANVAS, _GLYPH_CANVAS), 0)
    ImageDraw.Draw(canvas).text(
        (_GLYPH_CANVAS / 2, _GLYPH_CANVAS / 2), char, font=_font(font_path, _GLYPH_FONT_SIZE), fill=255, anchor="mm"
    )
    return np.asarray(canvas)


@functools.lru_cache(maxsize=4096)
def font_covers(font_path: str | Path, char: str) -> bool:
    """Whether the font really has a glyph for ``char``.

    A missing glyph renders silently as the font's ``.notdef`` box (or as nothing), so the rendered mask
    is compared with that of an unassigned code point (U+0378) and with an empty mask.
    """
    if len(char) != 1:
        raise ValueError(f"expected one character, got {char!r}")
    path = os.fspath(font_path)
    mask = _raw_glyph_mask(path, char)
    if not mask.any():
        return False
    return not np.array_equal(mask, _raw_glyph_mask(path, _UNASSIGNED))


def covering_fonts(char: str, fonts: Sequence[Path] | None = None) -> list[Path]:
    """The fonts (default: :func:`glyph_fonts`) that cover ``char``, in order."""
    return [f for f in (glyph_fonts() if fonts is None else fonts) if font_covers(os.fspath(f), char)]


def _class_name_for_char(char: str) -> str:
    """``A`` -> ``latin-capital-a``, ``∑`` -> ``n-ary-summation``: unique, ASCII, case-insensitive safe."""
    words = unicodedata.name(char).lower().replace(" letter ", " ").replace("-", " ").split()
    return "-".join(words)


@functools.lru_cache(maxsize=8192)
def _glyph_mask(font_path: str, char: str, stroke: int) -> Image.Image:
    """The glyph's ink centred on the canvas (centred by its ink box, so letters with descenders or
    accents do not sit off-centre); glyph sizes relative to each other are kept (``o`` vs ``O``)."""
    canvas = Image.new("L", (_GLYPH_CANVAS, _GLYPH_CANVAS), 0)
    ImageDraw.Draw(canvas).text(
        (_GLYPH_CANVAS / 2, _GLYPH_CANVAS / 2),
        char,
        font=_font(font_path, _GLYPH_FONT_SIZE),
        fill=255,
        anchor="mm",
        stroke_width=stroke,
        stroke_fill=255,
    )
    box = canvas.getbbox()
    if box is None:
        return canvas
    ink = canvas.crop(box)
    centred = Image.new("L", (_GLYPH_CANVAS, _GLYPH_CANVAS), 0)
    centred.paste(ink, ((_GLYPH_CANVAS - ink.size[0]) // 2, (_GLYPH_CANVAS - ink.size[1]) // 2))
    return centred


def _glyph_renderer(char: str, fonts: Sequence[str], size: int) -> Renderer:
    def render(rng: np.random.Generator, split: str, index: int) -> np.ndarray:
        font_path = fonts[int(rng.integers(len(fonts)))]
        stroke = _GLYPH_STROKES[int(rng.integers(len(_GLYPH_STROKES)))]
        alpha = _random_affine(rng, _glyph_mask(font_path, char, stroke), size, size / _GLYPH_CANVAS)
        return _compose_object(rng, alpha, min_contrast=0.3, gradient=0.2, max_lines=2, max_dots=6, max_noise=0.06)

    return render


def _plan_glyphs(chars: Sequence[str], size: int) -> _Plan:
    """One class per character that at least one font covers; uncovered characters are dropped (logged)."""
    fonts = glyph_fonts()
    classes: list[_ClassDef] = []
    dropped: list[str] = []
    gaps: dict[str, list[str]] = {}
    for char in chars:
        covering = covering_fonts(char, fonts)
        missing = [f.name for f in fonts if f not in covering]
        if not covering:
            dropped.append(char)
            _logger.warning(
                "dropping %r (U+%04X): none of the %d fonts has a glyph for it", char, ord(char), len(fonts)
            )
            continue
        if missing:
            gaps[char] = missing
            _logger.info("%r (U+%04X) is missing from %s; using the other fonts", char, ord(char), ", ".join(missing))
        classes.append(
            _ClassDef(
                _class_name_for_char(char),
                _glyph_renderer(char, [os.fspath(f) for f in covering], size),
                {"char": char, "codepoint": f"U+{ord(char):04X}", "fonts": [f.name for f in covering]},
            )
        )
    classes.sort(key=lambda c: c.name)
    meta = {
        "fonts": [f.name for f in fonts],
        "dropped_characters": [{"char": c, "codepoint": f"U+{ord(c):04X}"} for c in dropped],
        "font_gaps": {f"U+{ord(c):04X}": names for c, names in gaps.items()},
    }
    return _Plan(classes, meta)
