"""A catalogue of real timm candidates, without torch: size, cost and ImageNet accuracy per pretrained id.

The packaged table ``service/builtin/model_catalogue.csv`` is derived from timm's published results by
``benchmarks/build_model_catalogue.py``; its provenance and rules are in ``model_catalogue.SOURCE.md`` beside
it. It is separate from ``service.pipeline.models`` (which resolves and loads weights in workers) because the
web process reads it too, to list and filter models and to expand named candidate sets before queueing a job:
this module imports neither torch, timm nor ``service.pipeline`` (service/ARCHITECTURE.md, "Packages").

Named candidate sets, usable wherever a list of backbone ids is (:func:`expand_candidate_set`)::

    @popular                     the fixed list POPULAR_IDS
    @mobile                      <= 10 M parameters: the best ImageNet top-1 of each family, the best 16
    @top:N                       the N best by ImageNet top-1, 1 <= N <= 200
    @top:20?max_params=30&min_top1=80

Grammar: ``@NAME[:N][?KEY=VALUE(&KEY=VALUE)*]``. ``N`` only for ``top``. Keys (each at most once):
``max_params`` (millions), ``max_gmacs``, ``min_top1`` (percent), ``family`` and ``pretrain`` (one value or
several joined by ``,``). Filters narrow the catalogue *before* the set's rule applies, so ``@mobile?max_gmacs=0.3``
is the best model of each family under 0.3 GMACs. A model without a GMACs figure never passes ``max_gmacs``.
timm's CI models (family ``test``) are in the table but in no named set.
"""

from __future__ import annotations

import csv
import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import service
from service.errors import InvalidCandidateSet, UnknownCandidateSet

__all__ = [
    "COLUMNS",
    "DEFAULT_CATALOGUE_PATH",
    "CANDIDATE_SETS",
    "CANDIDATE_SET_FILTERS",
    "POPULAR_IDS",
    "MOBILE_MAX_PARAMS_M",
    "MOBILE_MAX_MODELS",
    "TOP_MAX",
    "CatalogueEntry",
    "load_model_catalogue",
    "filter_models",
    "parse_filters",
    "is_candidate_set",
    "expand_candidate_set",
    "expand_backbone_ids",
    "catalogue_info",
]

#: The table's columns, in order: the contract between the generator and this reader.
COLUMNS = (
    "id",
    "arch",
    "tag",
    "family",
    "params_m",
    "imagenet_top1",
    "imagenet_top5",
    "img_size",
    "crop_pct",
    "interpolation",
    "gmacs",
    "gpu_img_per_s",
    "cpu_img_per_s",
    "pretrain",
    "test_img_size",
    "imagenet_top1_test",
)
#: The packaged table: package data of ``service`` (a file, not an import of ``service.builtin``).
DEFAULT_CATALOGUE_PATH = Path(service.__file__).resolve().parent / "builtin" / "model_catalogue.csv"

CANDIDATE_SETS = ("@mobile", "@popular", "@top:N")
#: Filter keys of the candidate-set grammar and the :func:`filter_models` argument each sets.
CANDIDATE_SET_FILTERS: Mapping[str, str] = {
    "max_params": "max_params_m",
    "max_gmacs": "max_gmacs",
    "min_top1": "min_top1",
    "family": "family",
    "pretrain": "pretrain",
}
#: ``@popular``: the families users start from (ResNet, ConvNeXt, EfficientNet, ViT/DeiT, Swin, RegNet,
#: MobileNet), a small and a larger well-known architecture each, at timm's default tag (what
#: ``timm.create_model(arch, pretrained=True)`` loads, timm 1.0.31), so ``-b resnet50`` and ``@popular`` agree.
POPULAR_IDS = (
    "resnet18.a1_in1k",
    "resnet50.a1_in1k",
    "convnext_tiny.in12k_ft_in1k",
    "convnext_base.fb_in22k_ft_in1k",
    "efficientnet_b0.ra_in1k",
    "efficientnet_b3.ra2_in1k",
    "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "deit_small_patch16_224.fb_in1k",
    "swin_tiny_patch4_window7_224.ms_in1k",
    "swin_base_patch4_window7_224.ms_in22k_ft_in1k",
    "regnety_016.tv2_in1k",
    "regnety_040.ra3_in1k",
    "mobilenetv3_large_100.ra_in1k",
    "mobilenetv4_conv_medium.e500_r256_in1k",
)
MOBILE_MAX_PARAMS_M = 10.0
#: ``@mobile`` keeps at most this many families' best models (by ImageNet top-1): a ranking extracts
#: features with every candidate, and about 40 families have a model under 10 M parameters.
MOBILE_MAX_MODELS = 16
TOP_MAX = 200
#: Families in the table but in no named set: timm's tiny CI models.
_EXCLUDED_FAMILIES = frozenset({"test"})
_HF_HUB_TIMM = "hf-hub:timm/"
_SOURCE_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.\-_]+:")


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One pretrained timm model (a row of the table; meanings in ``model_catalogue.SOURCE.md``).

    ``None`` means timm publishes no such number for the model at ``img_size``.
    """

    id: str
    arch: str
    tag: str
    family: str
    params_m: float
    imagenet_top1: float
    imagenet_top5: float
    img_size: int
    crop_pct: float
    interpolation: str
    gmacs: float | None
    gpu_img_per_s: float | None
    cpu_img_per_s: float | None
    pretrain: str
    test_img_size: int | None
    imagenet_top1_test: float | None


def _float_or_none(value: str) -> float | None:
    return float(value) if value else None


def _int_or_none(value: str) -> int | None:
    return int(value) if value else None


def _entry(row: Mapping[str, str]) -> CatalogueEntry:
    return CatalogueEntry(
        id=row["id"],
        arch=row["arch"],
        tag=row["tag"],
        family=row["family"],
        params_m=float(row["params_m"]),
        imagenet_top1=float(row["imagenet_top1"]),
        imagenet_top5=float(row["imagenet_top5"]),
        img_size=int(row["img_size"]),
        crop_pct=float(row["crop_pct"]),
        interpolation=row["interpolation"],
        gmacs=_float_or_none(row["gmacs"]),
        gpu_img_per_s=_float_or_none(row["gpu_img_per_s"]),
        cpu_img_per_s=_float_or_none(row["cpu_img_per_s"]),
        pretrain=row["pretrain"],
        test_img_size=_int_or_none(row["test_img_size"]),
        imagenet_top1_test=_float_or_none(row["imagenet_top1_test"]),
    )


def load_model_catalogue(path: str | Path | None = None) -> tuple[CatalogueEntry, ...]:
    """The catalogue's entries, sorted by id (the packaged table unless ``path`` names another; read once per path).

    Raises ``ValueError`` for a file whose columns are not :data:`COLUMNS` or whose numbers do not parse.
    """
    return _load(str(Path(path or DEFAULT_CATALOGUE_PATH).resolve()))


@lru_cache(maxsize=4)
def _load(path: str) -> tuple[CatalogueEntry, ...]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: columns {reader.fieldnames} are not the catalogue's {list(COLUMNS)}")
        try:
            entries = [_entry(row) for row in reader]
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}, line {reader.line_num}: {err}") from err
    return tuple(sorted(entries, key=lambda e: e.id))


@lru_cache(maxsize=4)
def _index(path: str) -> dict[str, CatalogueEntry]:
    return {e.id: e for e in _load(path)}


def _as_set(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    values = value.split(",") if isinstance(value, str) else value
    return frozenset(v.strip().lower() for v in values if v.strip())


def _pretrain_names(pretrain: str) -> tuple[str, ...]:
    """The names a ``pretrain`` value answers to: itself and, without the metadata's refinements, its data sets
    (``in1k-dist`` -> ``in1k``): whole values, so ``in1k`` never matches ``in1k+in21k``."""
    coarse = "+".join(data.split("-", 1)[0] for data in pretrain.split("+"))
    return (pretrain, coarse) if pretrain else ()


def _query_matches(model_id: str, terms: Sequence[str]) -> bool:
    return all(
        fnmatch.fnmatchcase(model_id, term) if any(c in term for c in "*?[") else term in model_id for term in terms
    )


def filter_models(
    entries: Iterable[CatalogueEntry],
    *,
    max_params_m: float | None = None,
    max_gmacs: float | None = None,
    min_top1: float | None = None,
    family: str | Iterable[str] | None = None,
    pretrain: str | Iterable[str] | None = None,
    query: str | None = None,
) -> list[CatalogueEntry]:
    """The entries that satisfy every filter given, in their order.

    Args:
        max_params_m: at most this many million parameters.
        max_gmacs: at most this many GMACs; a model without a GMACs figure is left out.
        min_top1: at least this ImageNet-1k top-1 (percent).
        family: one family or several (a collection, or one string joined by ``,``), case-insensitive.
        pretrain: what the model saw before its ImageNet-1k fine-tune, as the table's whole value (``in1k``,
            ``in21k``, ``laion2b+in12k``, ...), one or several like ``family``; ``in1k`` also matches the
            metadata's refinements ``in1k-dist``, ``in1k-ap``, ... but not ``in1k+in21k``.
        query: whitespace-separated terms that must all occur in the id (case-insensitive); a term with
            ``*``, ``?`` or ``[`` is a glob over the whole id.
    """
    families = _as_set(family)
    pretrains = _as_set(pretrain)
    terms = query.lower().split() if query else []
    return [
        e
        for e in entries
        if (max_params_m is None or e.params_m <= max_params_m)
        and (max_gmacs is None or (e.gmacs is not None and e.gmacs <= max_gmacs))
        and (min_top1 is None or e.imagenet_top1 >= min_top1)
        and (families is None or e.family in families)
        and (pretrains is None or not pretrains.isdisjoint(_pretrain_names(e.pretrain)))
        and (not terms or _query_matches(e.id.lower(), terms))
    ]


# ------------------------------------------------------------------------------------- candidate sets


def is_candidate_set(text: str) -> bool:
    """Whether a backbone-list item names a candidate set (``@...``) rather than one backbone."""
    return text.strip().startswith("@")


def _refuse(text: str, why: str) -> InvalidCandidateSet:
    filters = ", ".join(CANDIDATE_SET_FILTERS)
    return InvalidCandidateSet(
        f"{text!r}: {why}; a candidate set is @NAME[:N][?KEY=VALUE&...] with filters {filters}, "
        "e.g. @top:20?max_params=30&min_top1=80",
        candidate_set=text,
        valid=list(CANDIDATE_SET_FILTERS),
    )


def _parse_number(text: str, key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise _refuse(text, f"{key}={value!r} is not a number >= 0")
    return number


def parse_filters(query: str, entries: Sequence[CatalogueEntry] | None = None, *, text: str = "") -> dict[str, Any]:
    """:func:`filter_models`'s keyword arguments for ``KEY=VALUE&...`` (what follows a set's ``?``; also
    ``backbone-rank models --filter`` and ``GET /v1/models?filter=``); ``text`` names the whole expression in errors.

    Raises:
        InvalidCandidateSet: an unknown or repeated key, a missing or bad value (the valid keys are listed).
    """
    text = text or query
    entries = load_model_catalogue() if entries is None else entries
    kwargs: dict[str, Any] = {}
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key not in CANDIDATE_SET_FILTERS:
            raise _refuse(text, f"unknown filter {key!r}")
        if not eq or not value:
            raise _refuse(text, f"filter {key!r} has no value")
        argument = CANDIDATE_SET_FILTERS[key]
        if argument in kwargs:
            raise _refuse(text, f"filter {key!r} is given twice")
        if key in ("family", "pretrain"):
            wanted = _as_set(value) or frozenset()
            known = {e.family for e in entries} if key == "family" else _known_pretrain(entries)
            unknown = sorted(wanted - known)
            if unknown:
                raise _refuse(text, f"unknown {key} {', '.join(unknown)} (known: {', '.join(sorted(known))})")
            kwargs[argument] = wanted
        else:
            kwargs[argument] = _parse_number(text, key, value)
    return kwargs


def _known_pretrain(entries: Iterable[CatalogueEntry]) -> set[str]:
    return {name for e in entries for name in _pretrain_names(e.pretrain)}


def _by_top1(entries: Iterable[CatalogueEntry]) -> list[CatalogueEntry]:
    return sorted(entries, key=lambda e: (-e.imagenet_top1, e.id))


def expand_candidate_set(text: str, entries: Sequence[CatalogueEntry] | None = None) -> list[str]:
    """The model ids a named candidate set stands for (grammar and rules in this module's docstring).

    ``@top:N`` and ``@mobile`` come best ImageNet top-1 first (ties by id); ``@popular`` in the order of
    :data:`POPULAR_IDS` (ids missing from ``entries`` are skipped). ``entries`` defaults to the packaged table.

    Raises:
        UnknownCandidateSet: the name is none of :data:`CANDIDATE_SETS` (listed in the error).
        InvalidCandidateSet: a bad count or filter (the valid filters are listed), or no model satisfies it.
    """
    catalogue = load_model_catalogue() if entries is None else entries
    raw = text.strip()
    if not raw.startswith("@"):
        raise UnknownCandidateSet(
            f"{raw!r} is not a candidate set: they start with '@' ({', '.join(CANDIDATE_SETS)})",
            candidate_set=raw,
            valid=list(CANDIDATE_SETS),
        )
    head, question, query = raw[1:].partition("?")
    name, colon, count_text = head.partition(":")
    name = name.strip().lower()
    if name not in ("mobile", "popular", "top"):
        raise UnknownCandidateSet(
            f"unknown candidate set {raw!r}; the sets are {', '.join(CANDIDATE_SETS)} "
            "(filters after '?', e.g. @top:20?max_params=30&min_top1=80)",
            candidate_set=raw,
            valid=list(CANDIDATE_SETS),
        )
    if name == "top":
        if not colon or not re.fullmatch(r"\d+", count_text.strip()) or not 1 <= int(count_text) <= TOP_MAX:
            raise _refuse(raw, f"@top needs a count, @top:N with 1 <= N <= {TOP_MAX}")
    elif colon:
        raise _refuse(raw, f"@{name} takes no count (only @top:N does)")
    if question and not query.strip():
        raise _refuse(raw, "nothing after '?'")
    kwargs = parse_filters(query, catalogue, text=raw) if query.strip() else {}
    pool = [e for e in filter_models(catalogue, **kwargs) if e.family not in _EXCLUDED_FAMILIES]

    if name == "top":
        chosen = _by_top1(pool)[: int(count_text)]
    elif name == "mobile":
        best: dict[str, CatalogueEntry] = {}
        for e in sorted(pool, key=lambda e: (-e.imagenet_top1, e.params_m, e.id)):
            if e.params_m <= MOBILE_MAX_PARAMS_M:
                best.setdefault(e.family, e)
        chosen = _by_top1(best.values())[:MOBILE_MAX_MODELS]
    else:
        by_id = {e.id: e for e in pool}
        chosen = [by_id[i] for i in POPULAR_IDS if i in by_id]
    if not chosen:
        raise _refuse(raw, "no model in the catalogue satisfies it")
    return [e.id for e in chosen]


def expand_backbone_ids(ids: Iterable[str], entries: Sequence[CatalogueEntry] | None = None) -> list[str]:
    """A backbone list with each ``@set`` replaced by its ids, other items kept as given, first occurrence kept."""
    out: list[str] = []
    for item in ids:
        for model_id in expand_candidate_set(item, entries) if is_candidate_set(item) else [item]:
            if model_id not in out:
                out.append(model_id)
    return out


# ------------------------------------------------------------------------------------- look-up by backbone id


def catalogue_info(
    backbone_id: str,
    entries: Sequence[CatalogueEntry] | None = None,
    *,
    default_tags: Mapping[str, str] | None = None,
) -> CatalogueEntry | None:
    """The catalogue entry a backbone id's weights are, or None when the catalogue cannot say.

    Accepted: ``arch.tag``; ``hf-hub:timm/arch.tag``; either with ``@REVISION`` (a pinned revision of the same
    weights). An id without a tag (``resnet50``) is the architecture's default tag from ``default_tags`` (pass
    ``TimmRegistry.default_tags``, the installed timm's own choice, which is what a worker loads); without it, only
    an architecture with exactly one tag in the catalogue resolves, since the results files do not say which tag
    timm picks by default. None for ``@/path/file.safetensors`` and ``local-dir:`` (the caller's own weights,
    which the published numbers do not describe), ``zoo:``, ``random:`` and other hubs' ids.
    """
    name = backbone_id.strip()
    if name.startswith(_HF_HUB_TIMM):
        name = name[len(_HF_HUB_TIMM) :]
    elif _SOURCE_PREFIX.match(name):
        return None
    name, at, revision = name.partition("@")
    if at and (not revision or "/" in revision or "\\" in revision or revision.lower().endswith(".safetensors")):
        return None
    if entries is None:
        by_id = _index(str(DEFAULT_CATALOGUE_PATH.resolve()))
    else:
        by_id = {e.id: e for e in entries}
    if "." in name:
        return by_id.get(name)
    if default_tags is not None:
        tag = default_tags.get(name)
        return by_id.get(f"{name}.{tag}") if tag else None
    tagged = [e for e in by_id.values() if e.arch == name]
    return tagged[0] if len(tagged) == 1 else None
