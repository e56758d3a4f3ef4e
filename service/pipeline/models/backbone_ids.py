"""Backbone ids without torch: syntax, the service's allowlist, and a snapshot of timm's registry.

:func:`service.pipeline.models.spec.parse_backbone_spec` is the authority on ids, but it asks timm's
registry and so imports torch. The web process must not (service/ARCHITECTURE.md, "Packages"), yet it
should refuse a bad id before queueing a job. So it checks here:

1. :func:`check_backbone_id` -- the same syntax rules as ``parse_backbone_spec`` (source prefixes,
   ``hf-hub:ORG/NAME[@REVISION]``, ``arch.tag@REVISION``, ``@file`` only ``.safetensors``, no paths in a timm
   name);
2. :func:`service_allows` -- the service's policy: ``allowed_backbones`` patterns, and ``local-dir:`` /
   ``@file`` ids only under the configured weights dirs (a client must not make the server read an
   arbitrary file as weights);
3. :class:`TimmRegistry` -- a JSON snapshot of timm's architectures and pretrained tags that a worker
   writes at start-up (:func:`write_timm_registry`, which imports timm) for the installed timm version.
   Without one, unknown architectures are left to the worker, whose job then fails with the same
   ``unknown_backbone`` code.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from service.atomic import write_text_atomic
from service.errors import UnknownBackbone, UnsafeCheckpointFormat

__all__ = [
    "TimmRegistry",
    "backbone_id_path",
    "check_backbone_id",
    "check_safetensors_suffix",
    "split_weights_suffix",
    "installed_timm_version",
    "load_timm_registry",
    "service_allows",
    "timm_registry_path",
    "unknown_architecture",
    "unknown_tag",
    "write_timm_registry",
]

_logger = logging.getLogger(__name__)

# The syntax authority for service.pipeline.models.spec too, which adds timm's registry on top.
# A source prefix needs 2+ chars so that a Windows drive ("C:") is never taken for one (as in timm).
SOURCE_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-_]+")
_ZOO_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
SAFETENSORS_SUFFIX = ".safetensors"
#: A hub repo id (``ORG/NAME``) and a revision (a branch, tag or commit) as ``hf-hub:`` ids and ``@REVISION`` take them.
HUB_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
#: Suffixes of torch/pickle checkpoints: named in errors, and what a local-dir is refused for.
PICKLE_SUFFIXES = (".pt", ".pth", ".pth.tar", ".tar", ".bin", ".ckpt", ".pkl", ".pickle")
_REGISTRY_FORMAT = 1


def check_backbone_id(text: Any, *, registry: TimmRegistry | None = None) -> str:
    """Check the syntax of a backbone id (and, given a ``registry``, its timm architecture and tag).

    Returns the stripped id. Raises what ``parse_backbone_spec`` raises for the same input:
    :class:`UnknownBackbone`, or :class:`UnsafeCheckpointFormat` for an ``@file`` that is not safetensors.
    """
    if not isinstance(text, str):
        raise UnknownBackbone(f"a backbone id must be a string, got {type(text).__name__}")
    raw = text.strip()
    if not raw:
        raise UnknownBackbone("empty backbone id; give a timm name such as 'resnet50.a1_in1k', or zoo:<name>")
    if re.match(r"@[A-Za-z]", raw):
        raise UnknownBackbone(
            f"{raw!r} is a named candidate set: sets stand for several backbones in a ranking's backbone list "
            "(rank -b @mobile); here give one backbone id (`backbone-rank models @mobile` lists its ids)",
            backbone=raw,
        )
    prefix, sep, rest = raw.partition(":")
    if sep and SOURCE_PREFIX_RE.fullmatch(prefix):
        source = prefix.lower()
        if source == "random":
            if "@" in rest:
                raise UnknownBackbone(
                    f"{raw!r}: random:<arch> builds an untrained model and takes no weights file", backbone=raw
                )
            _check_timm_name(rest, registry)
            return raw
        if source == "zoo":
            if not _ZOO_NAME_RE.fullmatch(rest):
                raise UnknownBackbone(
                    f"{raw!r}: a zoo id is zoo:<name> with letters, digits, '.', '_' or '-'", backbone=raw
                )
            return raw
        if source == "local-dir":
            if not rest:
                raise UnknownBackbone("local-dir: needs a folder path, e.g. local-dir:/models/my-model", backbone=raw)
            return raw
        if source == "hf-hub":
            repo, at, revision = rest.partition("@")
            if not HUB_REPO_RE.fullmatch(repo) or (at and not REVISION_RE.fullmatch(revision)):
                raise UnknownBackbone(
                    f"{raw!r}: a hub id is hf-hub:ORG/NAME[@REVISION] (a timm model repo with config.json and "
                    "model.safetensors, e.g. hf-hub:timm/resnet50.a1_in1k)",
                    backbone=raw,
                )
            return raw
        raise UnknownBackbone(
            f"unsupported backbone source {prefix!r} in {raw!r}: use a timm name ('resnet50.a1_in1k'), "
            "hf-hub:ORG/NAME, <arch>@/path/weights.safetensors, local-dir:/path, zoo:<name> or random:<arch>",
            backbone=raw,
        )
    name, file, pinned = split_weights_suffix(raw)
    if (file is not None or pinned is not None) and not name:
        raise UnknownBackbone(
            f"{raw!r}: '@' follows the architecture, e.g. resnet50.a1_in1k@{file or pinned}", backbone=raw
        )
    if raw.endswith("@"):
        raise UnknownBackbone(
            f"{raw!r}: nothing after '@'; give a .safetensors file or a hub revision (branch, tag, commit)",
            backbone=raw,
        )
    if file is not None:
        check_safetensors_suffix(file)
    _check_timm_name(name, registry)
    return raw


def split_weights_suffix(raw: str) -> tuple[str, str | None, str | None]:
    """``arch.tag@SUFFIX`` -> ``(arch.tag, file, revision)``: a suffix that looks like a file (a path separator, a
    leading ``.``/``~``, a checkpoint ending) is a weights file, any other a hub revision (branch, tag, commit)."""
    name, at, suffix = raw.partition("@")
    if not at or not suffix:
        return name, None, None
    lowered = suffix.lower()
    is_file = (
        "/" in suffix
        or os.sep in suffix
        or suffix.startswith((".", "~"))
        or lowered.endswith(SAFETENSORS_SUFFIX)
        or lowered.endswith(PICKLE_SUFFIXES)
        or not REVISION_RE.fullmatch(suffix)
    )
    return (name, suffix, None) if is_file else (name, None, suffix)


def _check_timm_name(name: str, registry: TimmRegistry | None) -> None:
    if not name or any(c in name for c in "/\\:") or any(c.isspace() for c in name):
        hint = f"; did you mean {name.removeprefix('timm/')!r}?" if name.startswith("timm/") else ""
        raise UnknownBackbone(
            f"{name!r} is not a timm model name (no paths, hub repo ids or spaces){hint} "
            "A local folder is local-dir:/path; a weights file is <arch>@/path/weights.safetensors.",
            backbone=name,
        )
    if registry is not None:
        registry.check(name)


def unknown_architecture(name: str, arch: str, known: Sequence[str], where: str) -> UnknownBackbone:
    """The error for an ``arch`` that is not in ``known``, with its close matches; ``where`` says where the list is.
    One wording for the registry snapshot here and timm's live registry (``parse_backbone_spec``)."""
    close = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
    suggestion = f"; did you mean {', '.join(close)}?" if close else ""
    return UnknownBackbone(
        f"unknown timm architecture {arch!r}{suggestion} ({where})",
        backbone=name,
        suggestions=close,
    )


def unknown_tag(name: str, arch: str, tag: str, tags: Sequence[str], where: str | None = None) -> UnknownBackbone:
    """The error for a ``tag`` that ``arch`` does not have among its pretrained ``tags`` (as for
    :func:`unknown_architecture`)."""
    close = difflib.get_close_matches(tag, tags, n=5, cutoff=0.5) or list(tags[:5])
    return UnknownBackbone(
        f"{arch!r} has no pretrained tag {tag!r}; known tags: {', '.join(close) or 'none'}"
        f"{' ...' if len(tags) > len(close) else ''}{f' ({where})' if where else ''}",
        backbone=name,
        suggestions=[f"{arch}.{t}" for t in close],
    )


def check_safetensors_suffix(path: str | os.PathLike[str], what: str = "weights file") -> None:
    """Refuse a weights path that is not ``.safetensors`` (pickles are never loaded), naming how to convert it."""
    name = os.fspath(path)
    if name.lower().endswith(SAFETENSORS_SUFFIX):
        return
    if name.lower().endswith(PICKLE_SUFFIXES):
        why = ".pt/.pth/.bin/.ckpt are pickles and are never loaded"
    else:
        why = "only .safetensors weights are loaded"
    raise UnsafeCheckpointFormat(
        f"{what} {name!r} is not a .safetensors file: {why}; convert it once, on a machine you trust, with "
        "safetensors (safetensors.torch.save_file(state_dict, 'weights.safetensors'))",
        path=name,
    )


def backbone_id_path(backbone_id: str) -> str | None:
    """The filesystem path a ``local-dir:`` or ``arch@file`` id names, or None for every other id."""
    prefix, sep, rest = backbone_id.partition(":")
    if sep and SOURCE_PREFIX_RE.fullmatch(prefix):
        return rest if prefix.lower() == "local-dir" else None
    return split_weights_suffix(backbone_id)[1]


def service_allows(backbone_id: str, *, patterns: Sequence[str] = (), weights_dirs: Sequence[Path] = ()) -> bool:
    """The service's allowlist, for the web process (raw ids) and the worker (canonical ids).

    A ``local-dir:`` or ``@file`` id is allowed only when its real path lies under a weights dir; any
    other id when no ``patterns`` are configured or one of them matches (``fnmatch``, e.g. ``zoo:*``).
    """
    path = backbone_id_path(backbone_id)
    if path is not None:
        if "\x00" in path:
            return False
        real = Path(os.path.realpath(os.path.expanduser(path)))
        if not any(real.is_relative_to(os.path.realpath(d)) for d in weights_dirs):
            return False
    return not patterns or any(fnmatch.fnmatchcase(backbone_id, p) for p in patterns)


# ------------------------------------------------------------------------------------- timm registry


def installed_timm_version() -> str | None:
    """timm's version from its distribution metadata (no import of timm)."""
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return None


def timm_registry_path(directory: str | os.PathLike[str], version: str) -> Path:
    return Path(directory) / f"timm-registry-{version}.json"


@dataclass(frozen=True)
class TimmRegistry:
    """timm's architectures, pretrained tags, default tags and deprecated names, as a worker saw them."""

    version: str
    archs: frozenset[str]
    tags: dict[str, list[str]] = field(default_factory=dict)
    default_tags: dict[str, str] = field(default_factory=dict)
    deprecated: dict[str, str] = field(default_factory=dict)

    def check(self, name: str) -> None:
        """Raise :class:`UnknownBackbone` (with close matches) as ``parse_backbone_spec`` would."""
        name = self.deprecated.get(name) or name
        arch, _, tag = name.partition(".")
        if arch not in self.archs:
            raise unknown_architecture(name, arch, sorted(self.archs), "GET /v1/backbones lists the ready ones")
        tags = self.tags.get(arch, [])
        if tag and tag not in tags:
            raise unknown_tag(name, arch, tag, tags)

    def canonical(self, name: str) -> str:
        """``arch.tag`` with the default tag filled in (what the feature cache and results use)."""
        name = self.deprecated.get(name) or name
        arch, _, tag = name.partition(".")
        tag = tag or self.default_tags.get(arch, "")
        return f"{arch}.{tag}" if tag else arch


def write_timm_registry(directory: str | os.PathLike[str]) -> Path:
    """Snapshot the installed timm's registry to ``directory`` (atomically); imports timm (workers only)."""
    import timm
    import timm.models

    tags: dict[str, list[str]] = {}
    for name in timm.list_pretrained():
        arch, _, tag = name.partition(".")
        if tag:
            tags.setdefault(arch, []).append(tag)
    default_tags = {}
    for arch in tags:
        cfg = timm.models.get_pretrained_cfg(arch)
        if cfg is not None and cfg.tag:
            default_tags[arch] = cfg.tag
    doc = {
        "format": _REGISTRY_FORMAT,
        "timm_version": timm.__version__,
        "archs": sorted(timm.list_models()),
        "tags": tags,
        "default_tags": default_tags,
        "deprecated": {k: v for k, v in timm.models.get_deprecated_models().items() if v},
    }
    target = timm_registry_path(directory, timm.__version__)
    write_text_atomic(target, json.dumps(doc))
    return target


def load_timm_registry(directory: str | os.PathLike[str]) -> TimmRegistry | None:
    """The snapshot for the installed timm version, or None when no worker has written one yet."""
    version = installed_timm_version()
    if version is None:
        return None
    path = timm_registry_path(directory, version)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    return _load_registry(str(path), mtime)


@lru_cache(maxsize=4)
def _load_registry(path: str, mtime_ns: int) -> TimmRegistry | None:
    try:
        with open(path) as fh:
            doc = json.load(fh)
        if doc.get("format") != _REGISTRY_FORMAT:
            return None
        return TimmRegistry(
            version=doc["timm_version"],
            archs=frozenset(doc["archs"]),
            tags={k: list(v) for k, v in doc["tags"].items()},
            default_tags=dict(doc["default_tags"]),
            deprecated=dict(doc["deprecated"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        _logger.warning("ignoring unreadable timm registry snapshot %s: %r", path, err)
        return None
