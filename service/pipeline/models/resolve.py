"""Where a backbone's weights are: safetensors only, every place searched named when none is found.

Weights resolve in this order, never through pickle:

1. the explicit ``@file`` (must be ``.safetensors``; nothing else is tried);
2. ``local-dir:`` (``config.json`` + ``model.safetensors``; a folder with only pickles is refused);
3. ``<weights_dir>/<arch>.<tag>.safetensors`` for each configured weights dir (and ``<arch>.safetensors``
   when the tag is the arch's default);
4. the HuggingFace hub cache, read with ``try_to_load_from_cache`` (a pure filesystem lookup):
   ``model.safetensors`` of the pretrained cfg's ``hf_hub_id``; ``pytorch_model.bin`` is never used;
5. registered weights providers (:mod:`service.pipeline.models.providers`), in registration order
   (pip-packaged weights, the zoo);
6. a download from the hub into its cache, when the request's :class:`~service.pipeline.models.hub.HubAccess`
   allows it (:mod:`service.pipeline.models.hub`: allowlist, safetensors only, verified).

An id pinned to a revision (``arch.tag@REVISION``) is looked up only in the HF cache at that revision, then
downloaded: a weights dir or provider does not say which revision it holds. ``hf-hub:ORG/NAME`` ids are a
repo's ``config.json`` + ``model.safetensors`` (the cache, then a download), loaded like a local-dir.

Steps 3-6 are searches: :data:`_SEARCHES` lists them per kind of id, in order, each with one signature, so a
new place to look is one more function in that list. A pretrained id that resolves nowhere is a
:class:`~service.errors.WeightsUnavailable` naming every place searched; it never silently falls back to
random init.

Also :func:`file_sha256`, the hash of the resolved file that keys the feature cache. Separate from loading
(:mod:`service.pipeline.models.backbones`) because resolution reads only the filesystem, timm's pretrained
cfgs and the hub, never builds a model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm.models
from huggingface_hub import try_to_load_from_cache

from service.errors import UnsafeCheckpointFormat, WeightsUnavailable
from service.pipeline.models.backbone_ids import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, check_safetensors_suffix
from service.pipeline.models.hub import COMMIT_RE, DownloadProgress, HubAccess, fetch_repo_files, hf_hub_cache
from service.pipeline.models.providers import registered_providers
from service.pipeline.models.spec import BackboneSpec, coerce_spec

__all__ = ["ResolvedWeights", "file_sha256", "find_weights", "resolve_weights", "stat_key"]

_logger = logging.getLogger(__name__)

_LOCAL_DIR_WEIGHTS = "model.safetensors"
_RANDOM_HINT = "use random:<arch> for an untrained baseline"


# ----------------------------------------------------------------------------------------- hashing

_SHA_CACHE: OrderedDict[tuple[str, int, int, int, int], str] = OrderedDict()
_SHA_CACHE_MAX = 1024
_SHA_LOCK = threading.Lock()


def stat_key(path: str | os.PathLike[str]) -> tuple[str, int, int, int, int]:
    """``(realpath, size, mtime_ns, inode, device)``: what tells that a file changed (loading checks it too)."""
    real = os.path.realpath(os.fspath(path))
    st = os.stat(real)
    return real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, streamed; cached by (realpath, size, mtime_ns, inode) so that a big weights
    file is hashed once per process. A file that changes while being hashed is not cached."""
    key = stat_key(path)
    with _SHA_LOCK:
        digest = _SHA_CACHE.get(key)
        if digest is not None:
            _SHA_CACHE.move_to_end(key)
            return digest
    with open(key[0], "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if stat_key(path) == key:
        with _SHA_LOCK:
            _SHA_CACHE[key] = digest
            while len(_SHA_CACHE) > _SHA_CACHE_MAX:
                _SHA_CACHE.popitem(last=False)
    return digest


# ------------------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class ResolvedWeights:
    """Where the weights of one spec are."""

    source: str  # e.g. "file:/w.safetensors", "hf-cache:timm/resnet50.a1_in1k", "hub:timm/...", "random-init"
    weights: Path | None  # the safetensors file to load; None for random init
    model_dir: Path | None = None  # a local-dir layout folder: arch + cfg come from its config.json
    revision: str | None = None  # the hub commit, for weights from the HF cache or a download


@dataclass(frozen=True)
class _Places:
    """What a request lets the searches look at (a search that needs another setting gets a field here)."""

    weights_dirs: Sequence[Path]
    hf_cache_dir: Path | None
    hub: HubAccess | None = None
    progress: DownloadProgress | None = None

    def cache(self) -> str:
        return str(hf_hub_cache(self.hf_cache_dir or (self.hub.cache_dir if self.hub is not None else None)))


#: ``search(spec, places, searched)``: the weights, or None after appending to ``searched`` what it looked at.
_Search = Callable[[BackboneSpec, _Places, list[str]], ResolvedWeights | None]


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
    resolved = find_weights(coerce_spec(spec), weights_dirs, hf_cache_dir)
    return resolved.source, resolved.weights


def find_weights(
    spec: BackboneSpec,
    weights_dirs: Sequence[Path],
    hf_cache_dir: Path | None,
    hub: HubAccess | None = None,
    progress: DownloadProgress | None = None,
) -> ResolvedWeights:
    """:func:`resolve_weights` for a validated spec, keeping the local-dir folder that loading reads the arch from;
    with ``hub``, what no local place has is downloaded as it allows (``progress(bytes, total)``)."""
    kind = spec.kind
    if kind == "random":
        return ResolvedWeights("random-init", None)
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
        return ResolvedWeights(f"file:{path}", path)
    if kind == "local-dir":
        folder = Path(spec.id.removeprefix("local-dir:"))
        return ResolvedWeights(f"local-dir:{folder}", _local_dir_weights(folder, spec.id), folder)

    searched: list[str] = []
    places = _Places(weights_dirs, hf_cache_dir, hub, progress)
    for search in _SEARCHES["timm@revision" if kind == "timm" and spec.revision else kind]:
        found = search(spec, places, searched)
        if found is not None:
            return found

    if kind == "zoo":
        hint = "build the zoo (backbone-rank zoo build), or check the name against the zoo's list"
    else:
        repo = _hub_repo(spec)[0]
        download = (
            f"run with the hub reachable and downloads on (not --offline / HF_HUB_OFFLINE=1), or fill the HF cache "
            f"on a machine with network (hf download {repo}), "
            if repo
            else ""
        )
        local = (
            f"put {spec.timm_name}.safetensors into a weights dir (BACKBONE_RANK_WEIGHTS_DIRS), give a file with "
            f"{spec.arch}@/path/weights.safetensors"
            if kind == "timm"
            else "mirror the repo to a folder and use local-dir:/path"
        )
        hint = f"{download}{local}"
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


def _search_weights_dirs(spec: BackboneSpec, places: _Places, searched: list[str]) -> ResolvedWeights | None:
    weights_dirs = places.weights_dirs
    if not weights_dirs:
        searched.append("weights dirs: none configured")
        return None
    names = [f"{spec.id}{SAFETENSORS_SUFFIX}"]
    cfg = timm.models.get_pretrained_cfg(spec.arch)
    if cfg is not None and cfg.tag and spec.id == f"{spec.arch}.{cfg.tag}":
        # "<arch>.safetensors" means the arch's default weights, i.e. this (default) tag
        names.append(f"{spec.arch}{SAFETENSORS_SUFFIX}")
    for folder in weights_dirs:
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                return ResolvedWeights(f"weights-dir:{path}", path)
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


def _hub_repo(spec: BackboneSpec) -> tuple[str, str | None, str | None]:
    """``(repo, weights file, revision)`` on the hub for a timm or hf-hub id; ``("", None, None)`` when timm names
    no hub repo, and a None file when the repo ships no safetensors."""
    if spec.kind == "hub":
        return spec.hub_repo, "model.safetensors", spec.revision
    cfg = timm.models.get_pretrained_cfg(spec.timm_name) if spec.timm_name else None
    if cfg is None or not cfg.hf_hub_id:
        return "", None, None
    repo, _, cfg_revision = cfg.hf_hub_id.partition("@")
    return repo, _hf_safetensors_filename(cfg.hf_hub_filename), spec.revision or cfg_revision or None


def _commit_of(path: Path, filename: str) -> str | None:
    """The commit of a file in the HF cache's ``snapshots/<commit>/`` folder."""
    commit = path.parents[len(Path(filename).parts) - 1].name
    return commit if COMMIT_RE.fullmatch(commit) else None


def _search_hf_cache(spec: BackboneSpec, places: _Places, searched: list[str]) -> ResolvedWeights | None:
    cache = places.cache()
    repo, filename, revision = _hub_repo(spec)
    if not repo:
        searched.append(f"HF cache {cache}: skipped, timm has no hub repo for {spec.id}")
        return None
    if filename is None:
        searched.append(f"HF cache {cache}: skipped, {repo} ships no safetensors weights")
        return None
    names = [filename, "config.json"] if spec.kind == "hub" else [filename]
    hits: list[Path] = []
    for name in names:
        try:
            # A pure filesystem lookup (refs/<rev> -> snapshots/<commit>/<file>): never touches the network.
            hit = try_to_load_from_cache(repo, name, cache_dir=cache, revision=revision)
        except ValueError as e:  # malformed repo id / revision in a cfg: report, don't crash resolution
            searched.append(f"HF cache {cache}: {repo}/{name} not looked up ({e})")
            return None
        if not isinstance(hit, str):  # None, or the "cached as non-existent" sentinel
            searched.append(f"HF cache {cache}: {repo}/{name}{f'@{revision}' if revision else ''} not cached")
            return None
        hits.append(Path(hit))
    model_dir = hits[0].parent if spec.kind == "hub" else None
    return ResolvedWeights(f"hf-cache:{repo}", hits[0], model_dir, _commit_of(hits[0], filename))


def _search_hub(spec: BackboneSpec, places: _Places, searched: list[str]) -> ResolvedWeights | None:
    repo, filename, revision = _hub_repo(spec)
    if not repo or filename is None:
        return None  # _search_hf_cache said why
    if places.hub is None or not places.hub.enabled:
        searched.append(f"hub {repo}: not asked (downloads are off here)")
        return None
    names = [filename, "config.json"] if spec.kind == "hub" else [filename]
    got = fetch_repo_files(repo, names, places.hub, revision=revision, what=spec.id, progress=places.progress)
    weights = got.paths[filename]
    model_dir = weights.parent if spec.kind == "hub" else None
    return ResolvedWeights(f"hub:{repo}", weights, model_dir, got.commit)


def _search_providers(spec: BackboneSpec, places: _Places, searched: list[str]) -> ResolvedWeights | None:
    providers = registered_providers()
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
            return ResolvedWeights(source, _local_dir_weights(path, spec.id), path)
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
            return ResolvedWeights(source, path, path.parent)
        return ResolvedWeights(source, path)
    return None


#: Steps 3-6 of the module docstring, per kind of id ("random", "file" and "local-dir" ids are not searched).
_SEARCHES: dict[str, tuple[_Search, ...]] = {
    "timm": (_search_weights_dirs, _search_hf_cache, _search_providers, _search_hub),
    "timm@revision": (_search_hf_cache, _search_hub),
    "hub": (_search_hf_cache, _search_hub),
    "zoo": (_search_providers,),
}
