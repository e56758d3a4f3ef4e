"""Backbones: parse ids, resolve weights offline (safetensors only), load timm models.

A backbone id names a timm model and where its weights come from (service/ARCHITECTURE.md, "Backbone
ids and the web process"):

    resnet50                      timm arch; canonicalised to its default tag -> "resnet50.a1_in1k"
    resnet50.a1_in1k              timm arch.tag; weights searched in weights dirs, HF cache, providers
    resnet50.a1_in1k@/w/x.safetensors   an explicit local weights file for that arch (and tag's preprocessing)
    local-dir:/models/my-model    timm's local-dir layout: config.json + model.safetensors
    zoo:glyph-r10                 the built-in zoo, resolved only by the weights provider named "zoo"
    random:resnet18[.tag]         untrained baseline (the tag only picks the preprocessing config)

Weights resolve in this order, never over the network and never through pickle:

1. the explicit ``@file`` (must be ``.safetensors``; nothing else is tried);
2. ``local-dir:`` (``config.json`` + ``model.safetensors``; a folder with only pickles is refused);
3. ``<weights_dir>/<arch>.<tag>.safetensors`` for each configured weights dir (and ``<arch>.safetensors``
   when the tag is the arch's default);
4. the HuggingFace hub cache, read with ``try_to_load_from_cache`` (a pure filesystem lookup):
   ``model.safetensors`` of the pretrained cfg's ``hf_hub_id``; ``pytorch_model.bin`` is never used;
5. registered weights providers, in registration order (pip-packaged weights, the zoo).

A pretrained id that resolves nowhere is a :class:`~service.errors.WeightsUnavailable` naming every
place searched; it never silently falls back to random init.

Loading goes through ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=...))``
so timm applies the arch's checkpoint filter and keeps its pretrained cfg (hence the preprocessing).
timm only ever sees a ``.safetensors`` path here, which its ``load_state_dict`` reads with
``safetensors.torch.load_file``; this module never calls ``torch.load``.

Pitfall handled here: timm *silently drops* the classifier (``strict=False``, random new head) when the
model's ``num_classes`` differs from the pretrained cfg's. A file whose head has another class count
(a zoo model with 40 source classes) is therefore loaded with ``num_classes`` set both as a model kwarg
*and* in the cfg overlay, so the head is kept, and the loaded head is checked against the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import timm
import timm.data
import timm.models
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache

# Private in timm, but it is exactly the parser timm's own ``local-dir:`` loader uses (timm >= 1.0.16),
# so the arch and cfg we inspect before loading are the ones timm will build.
from timm.models._hub import load_model_config_from_path

from service.errors import UnknownBackbone, UnsafeCheckpointFormat, WeightsUnavailable
from service.pipeline.models._timm import timm_api
from service.pipeline.models.backbone_ids import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIX,
    SOURCE_PREFIX_RE,
    check_backbone_id,
    check_safetensors_suffix,
)

__all__ = [
    "BackboneSpec",
    "parse_backbone_spec",
    "LoadedBackbone",
    "load_backbone",
    "register_weights_provider",
    "unregister_weights_provider",
    "weights_provider",
    "list_weights_providers",
    "resolve_weights",
    "file_sha256",
]

_logger = logging.getLogger(__name__)

WeightsProvider = Callable[[str], Path | str | None]

_LOCAL_DIR_WEIGHTS = "model.safetensors"
_PROVIDER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
_RANDOM_HINT = "use random:<arch> for an untrained baseline"


# --------------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed backbone id. Build it with :func:`parse_backbone_spec`; ``parse_backbone_spec(spec.id)``
    gives back an equal spec (for zoo/local-dir ids, before ``arch`` is filled by loading).

    Attributes
    ----------
    id : str
        Canonical id: ``"resnet50.a1_in1k"``, ``"resnet50.a1_in1k@/abs/w.safetensors"``,
        ``"zoo:glyph-r10"``, ``"local-dir:/abs/path"``, ``"random:resnet18"``. The explicit weights file is
        part of the id so that two files for one arch never share an id in results.
    arch : str
        timm architecture name; ``""`` for zoo/local-dir ids until loaded (``LoadedBackbone.spec`` has it).
    weights_file : str or None
        Explicit local safetensors file (absolute path).
    pretrained : bool
        False only for ``random:<arch>`` ids.
    """

    id: str
    arch: str
    weights_file: str | None = None
    pretrained: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; :meth:`from_dict` reverses it."""
        return {"id": self.id, "arch": self.arch, "weights_file": self.weights_file, "pretrained": self.pretrained}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BackboneSpec:
        """Rebuild a spec from :meth:`to_dict` output (extra keys are an error, so typos surface)."""
        unknown = set(data) - {"id", "arch", "weights_file", "pretrained"}
        if unknown:
            raise ValueError(f"unknown BackboneSpec field(s) {sorted(unknown)}")
        spec = cls(
            id=data["id"],
            arch=data.get("arch", ""),
            weights_file=data.get("weights_file"),
            pretrained=data.get("pretrained", True),
        )
        if not isinstance(spec.id, str) or not isinstance(spec.arch, str) or not isinstance(spec.pretrained, bool):
            raise ValueError(f"malformed BackboneSpec {dict(data)!r}")
        if spec.weights_file is not None and not isinstance(spec.weights_file, str):
            raise ValueError(f"malformed BackboneSpec {dict(data)!r}: weights_file must be a string or null")
        return spec

    @property
    def kind(self) -> str:
        """``"random"``, ``"zoo"``, ``"local-dir"``, ``"file"`` (explicit weights file) or ``"timm"``."""
        if not self.pretrained:
            return "random"
        if self.id.startswith("zoo:"):
            return "zoo"
        if self.id.startswith("local-dir:"):
            return "local-dir"
        if self.weights_file is not None:
            return "file"
        return "timm"

    @property
    def timm_name(self) -> str:
        """The ``arch[.tag]`` timm is asked for (picks the pretrained cfg); ``""`` for zoo/local-dir."""
        if self.kind in ("zoo", "local-dir"):
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
        Malformed id, unknown source prefix (``hf-hub:``, URLs: never fetched), unknown arch or tag.
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
        # check_backbone_id lets no other source through
        return BackboneSpec(id=f"local-dir:{os.path.abspath(os.path.expanduser(rest))}", arch="")
    name, at, file = raw.partition("@")
    if at:
        file = os.path.abspath(os.path.expanduser(file))
    arch, tag = _canonical_timm_name(name, default_tag=True)
    canonical = _join(arch, tag)
    if at:
        return BackboneSpec(id=f"{canonical}@{file}", arch=arch, weights_file=file)
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
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        suggestion = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownBackbone(
            f"unknown timm architecture {arch!r}{suggestion} (timm.list_models() lists them all)",
            backbone=name,
            suggestions=close,
        )
    tags = [n.partition(".")[2] for n in timm.models.get_arch_pretrained_cfgs(arch) if "." in n]
    if tag:
        if tag not in tags:
            close = difflib.get_close_matches(tag, tags, n=5, cutoff=0.5) or tags[:5]
            raise UnknownBackbone(
                f"{arch!r} has no pretrained tag {tag!r}; known tags: {', '.join(close) or 'none'}"
                f"{' ...' if len(tags) > len(close) else ''} (timm.list_pretrained('{arch}.*'))",
                backbone=name,
                suggestions=[f"{arch}.{t}" for t in close],
            )
    elif default_tag:
        cfg = timm.models.get_pretrained_cfg(arch)
        tag = (cfg.tag or "") if cfg is not None else ""
    return arch, tag


def _coerce_spec(spec: BackboneSpec | str) -> BackboneSpec:
    """A string is parsed; a spec is re-validated from its id (the id is the source of truth)."""
    if isinstance(spec, str):
        return parse_backbone_spec(spec)
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"expected a BackboneSpec or a backbone id string, got {type(spec).__name__}")
    parsed = parse_backbone_spec(spec.id)
    same = parsed.weights_file == spec.weights_file and parsed.pretrained == spec.pretrained
    if not same or (parsed.arch and parsed.arch != spec.arch):
        raise ValueError(f"inconsistent BackboneSpec {spec!r}: its id parses to {parsed!r}")
    return dataclasses.replace(parsed, arch=spec.arch or parsed.arch)


# ----------------------------------------------------------------------------------------- hashing

_SHA_CACHE: OrderedDict[tuple[str, int, int, int, int], str] = OrderedDict()
_SHA_CACHE_MAX = 1024
_SHA_LOCK = threading.Lock()


def _stat_key(path: str | os.PathLike[str]) -> tuple[str, int, int, int, int]:
    real = os.path.realpath(os.fspath(path))
    st = os.stat(real)
    return real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, streamed; cached by (realpath, size, mtime_ns, inode) so that a big weights
    file is hashed once per process. A file that changes while being hashed is not cached."""
    key = _stat_key(path)
    with _SHA_LOCK:
        digest = _SHA_CACHE.get(key)
        if digest is not None:
            _SHA_CACHE.move_to_end(key)
            return digest
    with open(key[0], "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if _stat_key(path) == key:
        with _SHA_LOCK:
            _SHA_CACHE[key] = digest
            while len(_SHA_CACHE) > _SHA_CACHE_MAX:
                _SHA_CACHE.popitem(last=False)
    return digest


# -------------------------------------------------------------------------------------- providers


@dataclass(frozen=True)
class _Provider:
    name: str
    fn: WeightsProvider
    description: str


_PROVIDERS: dict[str, _Provider] = {}  # insertion order = registration order = lookup order
_PROVIDERS_LOCK = threading.Lock()


def register_weights_provider(name: str, provider: WeightsProvider, description: str = "") -> None:
    """Register ``provider(model_id) -> Path | None``, consulted after weights dirs and the HF cache.

    ``model_id`` is the canonical spec id (``"tf_efficientnet_lite0.in1k"``, ``"zoo:glyph-r10"``). The
    provider returns a local ``.safetensors`` file for that id, or a folder in timm's local-dir layout
    (``config.json`` + ``model.safetensors``), or None. ``zoo:`` ids are asked only of the provider named
    ``"zoo"``, and must get a folder (or the weights file inside one): the arch and preprocessing come
    from its ``config.json``. Registering the same callable twice under one name is a no-op; another
    callable under a taken name is a ``ValueError`` (unregister first).
    """
    if not isinstance(name, str) or not _PROVIDER_NAME_RE.fullmatch(name):
        raise ValueError(f"invalid provider name {name!r}: letters, digits, '.', '_' or '-'")
    if not callable(provider):
        raise TypeError("provider must be callable: provider(model_id) -> Path | None")
    with _PROVIDERS_LOCK:
        existing = _PROVIDERS.get(name)
        if existing is not None:
            if existing.fn is provider:
                return
            raise ValueError(f"a weights provider named {name!r} is already registered; unregister it first")
        _PROVIDERS[name] = _Provider(name, provider, description)
    _logger.debug("registered weights provider %r", name)


def unregister_weights_provider(name: str) -> None:
    """Remove a provider (no error when absent), e.g. at the end of a test."""
    with _PROVIDERS_LOCK:
        _PROVIDERS.pop(name, None)


@contextlib.contextmanager
def weights_provider(name: str, provider: WeightsProvider, description: str = "") -> Iterator[None]:
    """Register a provider for the duration of a ``with`` block (tests, one-off scripts)."""
    register_weights_provider(name, provider, description)
    try:
        yield
    finally:
        unregister_weights_provider(name)


def list_weights_providers() -> list[str]:
    """Names of the registered providers, in lookup order."""
    with _PROVIDERS_LOCK:
        return list(_PROVIDERS)


# ------------------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class _Resolved:
    source: str  # e.g. "file:/w.safetensors", "hf-cache:timm/resnet50.a1_in1k", "random-init"
    weights: Path | None  # the safetensors file to load; None for random init
    model_dir: Path | None = None  # a local-dir layout folder: arch + cfg come from its config.json


def resolve_weights(
    spec: BackboneSpec | str,
    *,
    weights_dirs: Sequence[Path] = (),
    hf_cache_dir: Path | None = None,
) -> tuple[str, Path | None]:
    """Find the weights of ``spec`` offline: ``(source description, safetensors path or None for random)``.

    Raises
    ------
    WeightsUnavailable
        Nothing found; the message (and ``context["searched"]``) names every place searched.
    UnsafeCheckpointFormat
        The only weights on offer are pickles (``.pth``, ``pytorch_model.bin``, ...).
    """
    resolved = _resolve(_coerce_spec(spec), weights_dirs, hf_cache_dir)
    return resolved.source, resolved.weights


def _resolve(spec: BackboneSpec, weights_dirs: Sequence[Path], hf_cache_dir: Path | None) -> _Resolved:
    kind = spec.kind
    if kind == "random":
        return _Resolved("random-init", None)
    if kind == "file":
        assert spec.weights_file is not None
        check_safetensors_suffix(spec.weights_file)
        path = Path(spec.weights_file)
        if not path.is_file():
            raise WeightsUnavailable(
                f"weights file {path} does not exist (or is not a regular file); check the path, or {_RANDOM_HINT}",
                backbone=spec.id,
                searched=[str(path)],
            )
        return _Resolved(f"file:{path}", path)
    if kind == "local-dir":
        folder = Path(spec.id.removeprefix("local-dir:"))
        return _Resolved(f"local-dir:{folder}", _local_dir_weights(folder, spec.id), folder)

    searched: list[str] = []
    if kind == "timm":
        found = _search_weights_dirs(spec, weights_dirs, searched) or _search_hf_cache(spec, hf_cache_dir, searched)
        if found is not None:
            return found
    found = _search_providers(spec, searched)
    if found is not None:
        return found

    if kind == "zoo":
        hint = "build the zoo (backbone-rank zoo build), or check the name against the zoo's list"
    else:
        cfg = timm.models.get_pretrained_cfg(spec.timm_name)
        repo = (cfg.hf_hub_id or "").partition("@")[0] if cfg is not None else ""
        download = (
            f"fill the HF cache on a machine with network (hf download {repo} model.safetensors), " if repo else ""
        )
        hint = (
            f"put {spec.id}.safetensors into a weights dir (BACKBONE_RANK_WEIGHTS_DIRS), {download}"
            f"give a file with {spec.arch}@/path/weights.safetensors"
        )
    raise WeightsUnavailable(
        f"no weights for {spec.id!r}; searched: " + "; ".join(searched) + f". To fix: {hint}, or {_RANDOM_HINT}.",
        backbone=spec.id,
        searched=searched,
    )


def _local_dir_weights(folder: Path, what: str) -> Path:
    """The safetensors file of a timm local-dir folder (refusing pickle-only folders)."""
    if not folder.is_dir():
        raise WeightsUnavailable(
            f"{what}: {folder} is not a directory; a local-dir holds config.json + model.safetensors "
            "(timm save_for_hf layout, or a mirrored hub repo)",
            backbone=what,
            searched=[str(folder)],
        )
    if not (folder / "config.json").is_file():
        raise WeightsUnavailable(
            f"{what}: {folder} has no config.json; a local-dir holds config.json + model.safetensors "
            "(timm save_for_hf layout, or a mirrored hub repo)",
            backbone=what,
            searched=[str(folder / "config.json")],
        )
    preferred = folder / _LOCAL_DIR_WEIGHTS
    if preferred.is_file():
        return preferred
    candidates = sorted(p for p in folder.glob(f"*{SAFETENSORS_SUFFIX}") if p.is_file())
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise WeightsUnavailable(
            f"{what}: {folder} holds several .safetensors files ({', '.join(p.name for p in candidates)}) and no "
            f"{_LOCAL_DIR_WEIGHTS}; rename the one to use to {_LOCAL_DIR_WEIGHTS}",
            backbone=what,
            searched=[str(p) for p in candidates],
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UnsafeCheckpointFormat(
            f"{what}: {folder} only has pickle weights ({', '.join(pickles)}); .pt/.pth/.bin/.ckpt are pickles "
            f"and are never loaded; convert them with safetensors to {folder / _LOCAL_DIR_WEIGHTS}",
            backbone=what,
            files=pickles,
        )
    raise WeightsUnavailable(
        f"{what}: {folder} has config.json but no {_LOCAL_DIR_WEIGHTS}",
        backbone=what,
        searched=[str(preferred)],
    )


def _search_weights_dirs(spec: BackboneSpec, weights_dirs: Sequence[Path], searched: list[str]) -> _Resolved | None:
    if not weights_dirs:
        searched.append("weights dirs: none configured")
        return None
    names = [f"{spec.id}{SAFETENSORS_SUFFIX}"]
    cfg = timm.models.get_pretrained_cfg(spec.arch)
    if spec.id != spec.arch and cfg is not None and spec.id == _join(spec.arch, cfg.tag or ""):
        # "<arch>.safetensors" means the arch's default weights, i.e. this (default) tag
        names.append(f"{spec.arch}{SAFETENSORS_SUFFIX}")
    for folder in weights_dirs:
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                return _Resolved(f"weights-dir:{path}", path)
            searched.append(f"weights dir {path} (missing)")
    return None


def _hf_safetensors_filename(filename: str | None) -> str | None:
    """The safetensors file to look for in a hub repo (timm's ``_get_safe_alternatives``, safe half only)."""
    if not filename:
        return "model.safetensors"
    if filename.endswith(SAFETENSORS_SUFFIX):
        return filename
    if filename == "pytorch_model.bin":
        return "model.safetensors"
    if filename == "open_clip_pytorch_model.bin":
        return "open_clip_model.safetensors"
    if filename.endswith(".bin"):
        return filename[: -len(".bin")] + SAFETENSORS_SUFFIX
    return None


def _search_hf_cache(spec: BackboneSpec, hf_cache_dir: Path | None, searched: list[str]) -> _Resolved | None:
    cache = str(hf_cache_dir) if hf_cache_dir is not None else hf_constants.HF_HUB_CACHE
    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    if cfg is None or not cfg.hf_hub_id:
        searched.append(f"HF cache {cache}: skipped, timm has no hub repo for {spec.id}")
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")
    filename = _hf_safetensors_filename(cfg.hf_hub_filename)
    if filename is None:
        searched.append(f"HF cache {cache}: skipped, {repo} ships {cfg.hf_hub_filename}, which is not safetensors")
        return None
    try:
        # A pure filesystem lookup (refs/<rev> -> snapshots/<commit>/<file>): never touches the network.
        hit = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision or None)
    except ValueError as e:  # malformed repo id / revision in a cfg: report, don't crash resolution
        searched.append(f"HF cache {cache}: {repo}/{filename} not looked up ({e})")
        return None
    if isinstance(hit, str):  # otherwise None, or the "cached as non-existent" sentinel
        return _Resolved(f"hf-cache:{repo}", Path(hit))
    searched.append(f"HF cache {cache}: {repo}/{filename} not cached")
    return None


def _search_providers(spec: BackboneSpec, searched: list[str]) -> _Resolved | None:
    with _PROVIDERS_LOCK:
        providers = list(_PROVIDERS.values())
    if spec.kind == "zoo":
        providers = [p for p in providers if p.name == "zoo"]
        if not providers:
            searched.append("zoo: no zoo provider registered (the zoo is not built or not installed)")
            return None
    elif not providers:
        searched.append("weights providers: none registered")
        return None
    for provider in providers:
        try:
            result = provider.fn(spec.id)
        except Exception as e:  # a broken provider must not hide the others, nor crash resolution
            _logger.warning("weights provider %r failed for %s: %r", provider.name, spec.id, e)
            searched.append(f"provider {provider.name!r}: failed ({type(e).__name__}: {e})")
            continue
        if result is None:
            searched.append(f"provider {provider.name!r}: no weights for {spec.id}")
            continue
        if not isinstance(result, str | os.PathLike):
            searched.append(f"provider {provider.name!r}: returned {type(result).__name__}, not a path")
            continue
        path = Path(result)
        source = f"provider:{provider.name}"
        if path.is_dir():
            return _Resolved(source, _local_dir_weights(path, spec.id), path)
        check_safetensors_suffix(path, what=f"weights provider {provider.name!r} returned")
        if not path.is_file():
            searched.append(f"provider {provider.name!r}: returned {path}, which does not exist")
            continue
        if spec.kind == "zoo":
            # a zoo model is more than a state dict: its arch, classes and preprocessing are in config.json
            if not (path.parent / "config.json").is_file():
                raise WeightsUnavailable(
                    f"zoo provider returned {path} without a config.json beside it; a zoo entry is a folder with "
                    "config.json + model.safetensors (rebuild the zoo: backbone-rank zoo build)",
                    backbone=spec.id,
                    searched=[str(path.parent / "config.json")],
                )
            return _Resolved(source, path, path.parent)
        return _Resolved(source, path)
    return None


# ---------------------------------------------------------------------------------------- loading


@dataclass
class LoadedBackbone:
    """A timm model ready for feature extraction, plus where its weights came from.

    Attributes
    ----------
    spec : BackboneSpec
        The spec, with ``arch`` filled for zoo/local-dir ids.
    model : torch.nn.Module
        timm model in eval mode, on CPU, float32.
    data_config : dict
        ``timm.data.resolve_model_data_config(model)``: input_size, interpolation, mean, std, crop_pct,
        crop_mode (the pretrained cfg's preprocessing).
    weights_source : str
        ``"file:<path>"``, ``"local-dir:<path>"``, ``"weights-dir:<path>"``, ``"hf-cache:<repo>"``,
        ``"provider:<name>"`` or ``"random-init"``.
    weights_sha256 : str or None
        sha256 of the weights file loaded (None for random init); part of the feature-cache key.
    num_features : int
        Dimension of the pooled pre-logit features.
    num_source_classes : int
        Classes of the source classifier; 0 when the model has none.
    """

    spec: BackboneSpec
    model: torch.nn.Module
    data_config: dict[str, Any]
    weights_source: str
    weights_sha256: str | None
    num_features: int
    num_source_classes: int

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One backbone pass: ``(pre_logits (B, num_features), source logits (B, C_s) or None)``.

        ``forward_features`` runs once; the head runs twice (with and without ``pre_logits``), which costs
        a pooling and a linear layer. Logits are ``forward_head(feats)`` rather than
        ``get_classifier()(pre_logits)``: the two agree for plain heads, but only the former is right for
        distilled models (two classifiers, averaged) and conv classifiers (which want 4-D input).
        Runs without autograd; train through ``self.model`` instead.
        """
        model = timm_api(self.model)
        with torch.no_grad():
            feats = model.forward_features(x)
            pre = model.forward_head(feats, pre_logits=True)
            logits = model.forward_head(feats) if self.num_source_classes else None
        return pre, logits

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for results and the API."""
        return {
            "id": self.spec.id,
            "arch": self.spec.arch,
            "weights_source": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "num_features": self.num_features,
            "num_source_classes": self.num_source_classes,
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()},
        }


def load_backbone(
    spec: BackboneSpec | str,
    *,
    weights_dirs: Sequence[Path] = (),
    hf_cache_dir: Path | None = None,
    allowlist: Callable[[str], bool] | None = None,
) -> LoadedBackbone:
    """Resolve (see :func:`resolve_weights`) and load one backbone.

    ``allowlist(spec.id)`` is asked before anything touches the filesystem; False refuses the id.

    Raises
    ------
    UnknownBackbone
        Bad id, unknown arch/tag (with close matches), or refused by the allowlist.
    WeightsUnavailable
        No weights found (every place searched is named), or the file does not fit the architecture.
    UnsafeCheckpointFormat
        Pickle weights, or a file that is not valid safetensors.
    """
    spec = _coerce_spec(spec)
    if allowlist is not None and not allowlist(spec.id):
        raise UnknownBackbone(
            f"backbone {spec.id!r} is not allowed by this service's allowlist; ask the operator, or pick one "
            "from the backbone catalog",
            backbone=spec.id,
        )
    resolved = _resolve(spec, weights_dirs, hf_cache_dir)
    if resolved.weights is None:
        model = _create_random(spec)
        sha256 = None
    else:
        before = _stat_key(resolved.weights)
        sha256 = file_sha256(resolved.weights)
        model, arch = _create_pretrained(spec, resolved)
        if _stat_key(resolved.weights) != before:
            # the hash must describe the bytes loaded: it keys the feature cache
            raise WeightsUnavailable(
                f"weights file {resolved.weights} changed while {spec.id} was loading; try again",
                backbone=spec.id,
            )
        if arch != spec.arch:
            spec = dataclasses.replace(spec, arch=arch)
    model = model.to(device="cpu", dtype=torch.float32).eval()
    data_config = dict(timm.data.resolve_model_data_config(model))
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    num_features = int(getattr(model, "head_hidden_size", None) or timm_api(model).num_features)
    _logger.info(
        "backbone %s: weights from %s%s (%d features, %d source classes)",
        spec.id,
        resolved.source,
        f" (sha256 {sha256[:12]})" if sha256 else "",
        num_features,
        num_classes,
    )
    return LoadedBackbone(
        spec=spec,
        model=model,
        data_config=data_config,
        weights_source=resolved.source,
        weights_sha256=sha256,
        num_features=num_features,
        num_source_classes=num_classes,
    )


def _create_random(spec: BackboneSpec) -> torch.nn.Module:
    """Untrained model, seeded from the id: the feature cache keys a random-init backbone by its id (no
    weights hash), so the same id must give the same weights in every process."""
    seed = int.from_bytes(hashlib.sha256(spec.id.encode()).digest()[:8], "little")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(spec.timm_name, pretrained=False)


def _create_pretrained(spec: BackboneSpec, resolved: _Resolved) -> tuple[torch.nn.Module, str]:
    """Build the model with ``resolved.weights`` through timm's pretrained path; return ``(model, arch)``."""
    weights = resolved.weights
    assert weights is not None
    if resolved.model_dir is not None:
        try:
            cfg, arch, _ = load_model_config_from_path(resolved.model_dir)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WeightsUnavailable(
                f"{spec.id}: cannot read {resolved.model_dir / 'config.json'} ({type(e).__name__}: {e}); it must be "
                "timm's config.json (save_for_hf / hub layout)",
                backbone=spec.id,
            ) from e
        if not timm.models.is_model(arch):
            close = difflib.get_close_matches(str(arch), timm.list_models(), n=5, cutoff=0.6)
            raise UnknownBackbone(
                f"{spec.id}: config.json names architecture {arch!r}, which this timm {timm.__version__} does not "
                f"know{'; close: ' + ', '.join(close) if close else ''}",
                backbone=spec.id,
            )
        if spec.kind == "timm" and arch != spec.arch:
            raise WeightsUnavailable(
                f"{spec.id}: the provider's folder {resolved.model_dir} holds a {arch!r} model, not {spec.arch!r}",
                backbone=spec.id,
            )
        name = f"local-dir:{resolved.model_dir}"
        # source=None + file: timm loads exactly this safetensors file, never the folder's other files
        # (its local-dir loader would fall back to pytorch_model.bin if model.safetensors vanished).
        overlay: dict[str, Any] = {"source": None, "file": str(weights)}
    else:
        arch = spec.arch
        name = spec.timm_name
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
        cfg = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
        overlay = {"file": str(weights)}

    kwargs: dict[str, Any] = {}
    head = _file_head(weights, cfg, spec.id)
    if head is not None:
        file_classes, offset_ok = head
        if not offset_ok:
            # Keep the file's head: timm drops the classifier (strict=False, random head) whenever the model's
            # num_classes differs from the cfg's, so both must say the file's class count.
            kwargs["num_classes"] = file_classes
            overlay.update(num_classes=file_classes, label_offset=None)
            if file_classes != cfg.get("num_classes"):
                overlay.update(label_names=None, label_descriptions=None)
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as e:  # shape/key mismatches surface as RuntimeError; any failure here is the file's
        raise WeightsUnavailable(
            f"weights {weights} do not fit architecture {arch!r} ({type(e).__name__}: {_shorten(str(e))}); "
            "check that the file was saved from this architecture",
            backbone=spec.id,
        ) from e
    _check_head_loaded(model, weights, cfg, spec.id)
    return model, arch


def _classifier_names(cfg: Mapping[str, Any]) -> list[str]:
    classifier = cfg.get("classifier")
    if not classifier:
        return []
    return [classifier] if isinstance(classifier, str) else list(classifier)


def _file_head(weights: Path, cfg: Mapping[str, Any], backbone: str) -> tuple[int, bool] | None:
    """``(classes in the file's head, whether the cfg's num_classes already fits it)``; None if unknown.

    Reads only the safetensors header. A file without the cfg's classifier tensor is headless (0 classes).
    """
    names = _classifier_names(cfg)
    try:
        with safetensors.safe_open(str(weights), framework="pt") as f:
            keys = set(f.keys())
            shapes = {n: f.get_slice(f"{n}.weight").get_shape() for n in names if f"{n}.weight" in keys}
    except Exception as e:  # SafetensorError for a pickle renamed .safetensors, a truncated file, ...
        raise UnsafeCheckpointFormat(
            f"{weights} is not a valid safetensors file ({type(e).__name__}: {_shorten(str(e))}); only safetensors "
            "weights are loaded: convert the checkpoint with safetensors.torch.save_file",
            backbone=backbone,
            path=str(weights),
        ) from e
    if not names:
        return None  # the cfg does not say which tensor is the classifier: keep the arch's default
    if not shapes:
        return 0, cfg.get("num_classes") == 0
    rows = int(shapes[names[0]][0]) if shapes.get(names[0]) else int(next(iter(shapes.values()))[0])
    offset = int(cfg.get("label_offset") or 0)
    # timm slices `label_offset` rows (e.g. a background class) off the file's head before loading
    return rows, rows - offset == cfg.get("num_classes")


def _check_head_loaded(model: torch.nn.Module, weights: Path, cfg: Mapping[str, Any], backbone: str) -> None:
    """Guard the invariant LEEP/NCE rely on: the classifier in the model is the file's, not a fresh one."""
    names = _classifier_names(cfg)
    if not names or not getattr(model, "num_classes", 0):
        return
    key = f"{names[0]}.weight"
    state = model.state_dict()
    with safetensors.safe_open(str(weights), framework="pt") as f:
        if key not in set(f.keys()) or key not in state:
            return
        expected = f.get_tensor(key)
    offset = int(cfg.get("label_offset") or 0)
    if offset and expected.shape[0] - offset == state[key].shape[0]:
        expected = expected[offset:]
    if expected.shape == state[key].shape and not torch.equal(expected.to(state[key].dtype), state[key]):
        raise WeightsUnavailable(
            f"{backbone}: timm did not load the classifier {names[0]!r} from {weights} (its source logits would be "
            "random); please report this with the timm version",
            backbone=backbone,
        )


def _shorten(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
