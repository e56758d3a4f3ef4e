"""Backbone ids with timm's registry: :class:`BackboneSpec` and :func:`parse_backbone_spec`.

A backbone id names a timm model and where its weights come from (service/ARCHITECTURE.md, "Backbone
ids and the web process"):

    resnet50                      timm arch; canonicalised to its default tag -> "resnet50.a1_in1k"
    resnet50.a1_in1k              timm arch.tag; weights searched in weights dirs, HF cache, providers, then
                                  downloaded from the hub (when this process may)
    resnet50.a1_in1k@v2           the same repo at a hub revision (branch, tag or commit)
    resnet50.a1_in1k@/w/x.safetensors   an explicit local weights file for that arch (and tag's preprocessing)
    hf-hub:timm/resnet50.a1_in1k[@REV]  a timm model repo on the hub (config.json + model.safetensors)
    local-dir:/models/my-model    timm's local-dir layout: config.json + model.safetensors
    zoo:glyph-r10                 the built-in zoo, resolved only by the weights provider named "zoo"
    random:resnet18[.tag]         untrained baseline (the tag only picks the preprocessing config)

The syntax rules are :func:`~service.pipeline.models.backbone_ids.check_backbone_id`'s, which the web process
runs without torch; this module adds what needs timm's live registry (architectures, tags, default tags,
deprecated names) and so imports torch. Where the weights are is
:mod:`service.pipeline.models.resolve`'s business; loading them is :mod:`service.pipeline.models.backbones`'.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import timm
import timm.models

from service.pipeline.models.backbone_ids import (
    SOURCE_PREFIX_RE,
    check_backbone_id,
    split_weights_suffix,
    unknown_architecture,
    unknown_tag,
)

__all__ = ["BackboneSpec", "coerce_spec", "parse_backbone_spec"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed backbone id. Build it with :func:`parse_backbone_spec`; ``parse_backbone_spec(spec.id)``
    gives back an equal spec (for zoo/local-dir ids, before ``arch`` is filled by loading).

    Attributes
    ----------
    id : str
        Canonical id: ``"resnet50.a1_in1k"``, ``"resnet50.a1_in1k@v2"``, ``"resnet50.a1_in1k@/abs/w.safetensors"``,
        ``"hf-hub:timm/resnet50.a1_in1k"``, ``"zoo:glyph-r10"``, ``"local-dir:/abs/path"``, ``"random:resnet18"``.
        The explicit weights file or revision is part of the id so that two weights never share an id in results.
    arch : str
        timm architecture name; ``""`` for zoo/local-dir/hub ids until loaded (``LoadedBackbone.spec`` has it).
    weights_file : str or None
        Explicit local safetensors file (absolute path).
    pretrained : bool
        False only for ``random:<arch>`` ids.
    revision : str or None
        The hub revision asked for (``@REVISION``); None: ``main``.
    """

    id: str
    arch: str
    weights_file: str | None = None
    pretrained: bool = True
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` reverses it."""
        return {
            "id": self.id,
            "arch": self.arch,
            "weights_file": self.weights_file,
            "pretrained": self.pretrained,
            "revision": self.revision,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneSpec:
        """Rebuild a spec from :meth:`to_dict` output (extra keys are an error, so typos surface)."""
        unknown = set(data) - {"id", "arch", "weights_file", "pretrained", "revision"}
        if unknown:
            raise ValueError(f"unknown BackboneSpec field(s) {sorted(unknown)}")
        spec = cls(
            id=data["id"],
            arch=data.get("arch", ""),
            weights_file=data.get("weights_file"),
            pretrained=data.get("pretrained", True),
            revision=data.get("revision"),
        )
        if not isinstance(spec.id, str) or not isinstance(spec.arch, str) or not isinstance(spec.pretrained, bool):
            raise ValueError(f"malformed BackboneSpec {dict(data)!r}")
        for name in ("weights_file", "revision"):
            if getattr(spec, name) is not None and not isinstance(getattr(spec, name), str):
                raise ValueError(f"malformed BackboneSpec {dict(data)!r}: {name} must be a string or null")
        return spec

    @property
    def kind(self) -> str:
        """``"random"``, ``"zoo"``, ``"local-dir"``, ``"hub"`` (an hf-hub: repo), ``"file"`` (explicit weights
        file) or ``"timm"``."""
        if not self.pretrained:
            return "random"
        if self.id.startswith("zoo:"):
            return "zoo"
        if self.id.startswith("local-dir:"):
            return "local-dir"
        if self.id.startswith("hf-hub:"):
            return "hub"
        if self.weights_file is not None:
            return "file"
        return "timm"

    @property
    def hub_repo(self) -> str:
        """``ORG/NAME`` of an ``hf-hub:`` id; ``""`` otherwise."""
        return self.id.removeprefix("hf-hub:").partition("@")[0] if self.kind == "hub" else ""

    @property
    def timm_name(self) -> str:
        """The ``arch[.tag]`` timm is asked for (picks the pretrained cfg); ``""`` for zoo/local-dir/hub."""
        if self.kind in ("zoo", "local-dir", "hub"):
            return ""
        name = self.id.removeprefix("random:")
        return name.partition("@")[0]


def parse_backbone_spec(text: str) -> BackboneSpec:
    """Parse and validate a backbone id (see the module docstring for the forms).

    Timm names are checked against timm's registry (unknown arch -> close matches; unknown tag -> the
    known tags), deprecated names are mapped to their replacement, and a bare arch gets its default
    tag so that ``resnet50`` and ``resnet50.a1_in1k`` share one id (and one feature-cache entry).
    The filesystem is not touched.

    Raises
    ------
    UnknownBackbone
        Malformed id, unknown source prefix (URLs are never fetched), unknown arch or tag.
    UnsafeCheckpointFormat
        An explicit weights file that is not ``.safetensors``.
    """
    raw = check_backbone_id(text)  # the syntax, shared with the torch-free web process
    prefix, sep, rest = raw.partition(":")
    if sep and SOURCE_PREFIX_RE.fullmatch(prefix):
        source = prefix.lower()
        if source == "random":
            arch, tag = _canonical_timm_name(rest, default_tag=False)
            return BackboneSpec(id=f"random:{_join(arch, tag)}", arch=arch, pretrained=False)
        if source == "zoo":
            return BackboneSpec(id=f"zoo:{rest}", arch="")
        if source == "hf-hub":
            revision = rest.partition("@")[2] or None
            return BackboneSpec(id=f"hf-hub:{rest}", arch="", revision=revision)
        # check_backbone_id lets no other source through
        return BackboneSpec(id=f"local-dir:{os.path.abspath(os.path.expanduser(rest))}", arch="")
    name, file, revision = split_weights_suffix(raw)
    arch, tag = _canonical_timm_name(name, default_tag=True)
    canonical = _join(arch, tag)
    if file is not None:
        file = os.path.abspath(os.path.expanduser(file))
        return BackboneSpec(id=f"{canonical}@{file}", arch=arch, weights_file=file)
    if revision is not None:
        return BackboneSpec(id=f"{canonical}@{revision}", arch=arch, revision=revision)
    return BackboneSpec(id=canonical, arch=arch)


def _join(arch: str, tag: str) -> str:
    return f"{arch}.{tag}" if tag else arch


def _canonical_timm_name(name: str, *, default_tag: bool) -> tuple[str, str]:
    """Validate ``arch[.tag]`` (its syntax checked by :func:`check_backbone_id`) against timm's registry;
    return ``(arch, tag)``."""
    replacement = timm.models.get_deprecated_models().get(name)
    if replacement:
        # timm would warn and redirect anyway; doing it here gives one canonical id for both names.
        _logger.info("timm name %r is deprecated; using %r", name, replacement)
        name = replacement
    arch, tag = timm.models.split_model_name_tag(name)
    if not timm.models.is_model(arch):
        raise unknown_architecture(name, arch, timm.list_models(), "timm.list_models() lists them all")
    tags = [n.partition(".")[2] for n in timm.models.get_arch_pretrained_cfgs(arch) if "." in n]
    if tag:
        if tag not in tags:
            raise unknown_tag(name, arch, tag, tags, f"timm.list_pretrained('{arch}.*')")
    elif default_tag:
        cfg = timm.models.get_pretrained_cfg(arch)
        tag = (cfg.tag or "") if cfg is not None else ""
    return arch, tag


def coerce_spec(spec: BackboneSpec | str) -> BackboneSpec:
    """A string is parsed; a spec is re-validated from its id (the id is the source of truth)."""
    if isinstance(spec, str):
        return parse_backbone_spec(spec)
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"expected a BackboneSpec or a backbone id string, got {type(spec).__name__}")
    parsed = parse_backbone_spec(spec.id)
    same = (parsed.weights_file, parsed.pretrained, parsed.revision) == (
        spec.weights_file,
        spec.pretrained,
        spec.revision,
    )
    if not same or (parsed.arch and parsed.arch != spec.arch):
        raise ValueError(f"inconsistent BackboneSpec {spec!r}: its id parses to {parsed!r}")
    return dataclasses.replace(parsed, arch=spec.arch or parsed.arch)
