"""Number and name formatting shared by the report pages; every helper maps a missing value to "n/a"."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from service.contract import DatasetSpec

__all__ = [
    "NA",
    "as_float",
    "dataset_ref_label",
    "fmt_ci",
    "fmt_fixed",
    "fmt_int",
    "fmt_number",
    "fmt_percent",
    "fmt_rank",
    "fmt_seconds",
    "ranks_of",
    "short_names",
    "slug",
]

#: How every missing, null or non-finite value is shown.
NA = "n/a"
_MAX_SHORT = 22


def as_float(value: Any) -> float | None:
    """``value`` as a finite float, or None (null, a non-number, NaN and ±inf all count as missing)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fmt_number(value: Any, digits: int = 4) -> str:
    """``digits`` significant digits (``1.235``, ``-2.1``, ``1.2e+04``) or "n/a"."""
    number = as_float(value)
    if number is None:
        return NA
    if number == 0:
        return "0"
    return f"{number:.{digits}g}"


def _fixed(number: float, decimals: int) -> str:
    text = f"{number:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


def fmt_fixed(value: Any, decimals: int = 3) -> str:
    """Fixed decimals (correlations: ``0.612``) or "n/a"."""
    number = as_float(value)
    return NA if number is None else _fixed(number, decimals)


def fmt_percent(value: Any, decimals: int = 1) -> str:
    """A 0-1 fraction as percent without the sign (``0.7123`` -> ``71.2``) or "n/a"."""
    number = as_float(value)
    return NA if number is None else _fixed(100 * number, decimals)


def fmt_ci(low: Any, high: Any, scale: float = 1.0, decimals: int = 3) -> str:
    """``[0.301, 0.850]``; "" when either bound is missing (the value alone is then shown)."""
    lo, hi = as_float(low), as_float(high)
    if lo is None or hi is None:
        return ""
    return f"[{_fixed(lo * scale, decimals)}, {_fixed(hi * scale, decimals)}]"


def fmt_seconds(value: Any) -> str:
    """``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min`` or "n/a"."""
    seconds = as_float(value)
    if seconds is None:
        return NA
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def dataset_ref_label(ref: DatasetSpec) -> str:
    """A dataset reference as the user typed it: ``builtin:glyphs-greek#train``, ``/data/cats#val``, ``hf:PATH``."""
    base = ref.name or ref.path or NA
    if ref.kind in ("builtin", "hf", "upload"):
        base = f"{ref.kind}:{base}"
    return f"{base}#{ref.split}" if ref.split else base


def _shorten(backbone_id: str) -> str:
    name = backbone_id.split("@", 1)[0]  # arch.tag@/path/weights.safetensors
    prefix = ""
    if ":" in name:
        scheme, rest = name.split(":", 1)
        if scheme == "random":
            prefix = "rand:"  # the untrained control must stay recognisable
        name = rest.rstrip("/").rsplit("/", 1)[-1] if scheme in ("local-dir", "hf-hub") else rest
    if "." in name and not name.endswith("."):
        name = name.split(".", 1)[0]  # drop the pretrained tag: resnet50.a1_in1k -> resnet50
    name = prefix + name
    return name if len(name) <= _MAX_SHORT else name[: _MAX_SHORT - 1] + "…"


def short_names(ids: Sequence[str]) -> dict[str, str]:
    """Figure labels: ids without weight paths, hub prefixes and pretrained tags, unique per figure.

    When shortening makes two ids collide (``resnet50.a1_in1k`` and ``resnet50.tv_in1k``), both keep
    their full id.
    """
    shortened = {backbone_id: _shorten(str(backbone_id)) for backbone_id in ids}
    counts: dict[str, int] = {}
    for name in shortened.values():
        counts[name] = counts.get(name, 0) + 1
    return {k: (v if counts[v] == 1 else str(k)) for k, v in shortened.items()}


def ranks_of(values: Sequence[Any], higher_is_better: bool = True) -> list[float | None]:
    """Ranks (1 = best, ties share their average rank); a missing value gets None and no rank."""
    present = [(i, v) for i, v in ((i, as_float(v)) for i, v in enumerate(values)) if v is not None]
    ordered = sorted(present, key=lambda item: -item[1] if higher_is_better else item[1])
    ranks: list[float | None] = [None] * len(values)
    start = 0
    while start < len(ordered):
        end = start
        while end + 1 < len(ordered) and ordered[end + 1][1] == ordered[start][1]:
            end += 1
        for position in range(start, end + 1):
            ranks[ordered[position][0]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def fmt_rank(value: Any) -> str:
    """``3`` or ``2.5`` (tied) or "n/a"."""
    number = as_float(value)
    return NA if number is None else f"{number:g}"


def slug(text: str) -> str:
    """An HTML id from free text (section anchors)."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "section"


def fmt_int(value: Any) -> str:
    """``1,360`` (counts, dimensions) or "n/a"."""
    number = as_float(value)
    if number is None:
        return NA
    return f"{number:,.0f}" if number == int(number) else f"{number:,g}"
