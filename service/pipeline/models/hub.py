"""Download on demand: model and dataset files from the Hugging Face hub into its standard cache, safely
(torch-free).

Weights resolution (:mod:`service.pipeline.models.resolve`, its last step) calls :func:`fetch_repo_files` for an
id whose weights are in no local place, and hub datasets (``hf://datasets/...``) call :func:`list_repo` then
:func:`download_files`, when this process may download (:class:`HubAccess`, built once from the settings by
``service.bootstrap``). What it guarantees:

- **allowlist first**: a repo outside ``HubAccess.allowed_repos`` / ``allowed_datasets`` (fnmatch patterns on
  ``org/name``; a service allows the models ``timm/*`` and no dataset by default) is refused before any request
  (:class:`~service.errors.DownloadNotAllowed`);
- **safetensors only**: the repo's file list is read before any download; a repo that ships only pickle
  checkpoints (``pytorch_model.bin``, ``*.pth``) is refused (:class:`~service.errors.UnsafeCheckpointFormat`);
- **pinned and recorded**: the revision (a branch, a tag or a commit; ``main`` by default) is resolved to its
  commit once, every file must arrive at that commit, and the caller records it in the result; the cache keeps
  the name -> commit ref, so a later offline run finds the same files;
- **room checked**: the bytes still missing are compared with ``max_download_bytes`` and with the free space of
  the cache's disk (less ``min_free_bytes``) before the first byte is fetched;
- **verified, nothing half-written**: every file's sha256 is checked against the hub's LFS checksum (its size
  where the hub gives none); a truncated or corrupted download is removed from the cache (blob, snapshot link,
  ``.incomplete`` file) and reported as :class:`~service.errors.DownloadFailed`;
- **fails in seconds**: every request has ``HubAccess.timeout_s``; an unreachable hub is
  :class:`~service.errors.HubUnreachable` naming the endpoint and how to work offline.

``HF_TOKEN`` (and the token ``hf auth login`` saved) is read by huggingface_hub itself; the endpoint and cache
folder come from :class:`HubAccess` (``HF_ENDPOINT``/``HF_HOME`` through the settings), because
huggingface_hub reads its environment once, at import.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service.errors import (
    BackboneRankError,
    DatasetNotFound,
    DownloadFailed,
    DownloadNotAllowed,
    DownloadTooLarge,
    HubUnreachable,
    InsufficientDisk,
    UnknownBackbone,
    UnsafeCheckpointFormat,
    WeightsUnavailable,
)
from service.pipeline.models.backbone_ids import PICKLE_SUFFIXES

__all__ = [
    "COMMIT_RE",
    "HubAccess",
    "HubFiles",
    "RepoListing",
    "cached_listing",
    "check_allowed",
    "download_files",
    "fetch_repo_files",
    "hf_hub_cache",
    "list_repo",
    "repo_allowed",
]

_logger = logging.getLogger(__name__)

#: A full git commit id: a revision that never moves, so the cache alone can answer for it.
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_READ_CHUNK = 1 << 20

#: ``progress(done_bytes, total_bytes)`` as the download of a repo's files advances.
DownloadProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class HubAccess:
    """Whether and how this process may download from the hub.

    Attributes
    ----------
    enabled : bool
        False offline (``HF_HUB_OFFLINE=1``, ``BACKBONE_RANK_OFFLINE=1``, ``--offline``): only the cache is read.
    endpoint : str or None
        The hub's URL (``HF_ENDPOINT``); None: huggingface_hub's default.
    allowed_repos, allowed_datasets : tuple of str
        fnmatch patterns of the model / dataset repo ids this process may download (``("*",)``: any).
    timeout_s : float
        Seconds to wait for the hub's answer to any one request.
    cache_dir : Path or None
        The HF hub cache (``HF_HOME``/``HF_HUB_CACHE`` or the setting); None: huggingface_hub's default.
    max_download_bytes : int
        One repo's files larger than this together are refused.
    min_free_bytes : int
        Free space the cache's disk must keep after the download.
    """

    enabled: bool = False
    endpoint: str | None = None
    allowed_repos: tuple[str, ...] = ("*",)
    allowed_datasets: tuple[str, ...] = ("*",)
    timeout_s: float = 10.0
    cache_dir: Path | None = None
    max_download_bytes: int = 8 * 2**30
    min_free_bytes: int = 2**30

    def hub_cache(self) -> Path:
        return hf_hub_cache(self.cache_dir)

    def where(self) -> str:
        return self.endpoint or "https://huggingface.co"


def hf_hub_cache(cache_dir: Path | str | None) -> Path:
    """The HF hub cache: ``cache_dir`` (the setting), else huggingface_hub's (``HF_HOME``/``HF_HUB_CACHE``)."""
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants  # plain constants, no torch

    return Path(constants.HF_HUB_CACHE)


def repo_allowed(repo_id: str, patterns: Sequence[str]) -> bool:
    """Whether ``repo_id`` (``org/name``) matches one of the fnmatch ``patterns`` (case-sensitive, like the hub)."""
    return any(fnmatch.fnmatchcase(repo_id, pattern) for pattern in patterns)


@dataclass(frozen=True)
class HubFiles:
    """Files of one repo at one commit, in the HF cache."""

    repo_id: str
    commit: str
    paths: dict[str, Path]

    @property
    def folder(self) -> Path:
        """The snapshot folder (``.../snapshots/<commit>``) holding the files."""
        name, path = next(iter(self.paths.items()))
        return _snapshot_of(path, name)


def _snapshot_of(path: Path, name: str) -> Path:
    """The snapshot folder of the cached file ``path`` of repo file ``name`` (which may lie in sub-folders)."""
    return path.parents[len(Path(name).parts) - 1]


@dataclass(frozen=True)
class RepoListing:
    """A repo's files at one commit, as the hub describes them (sizes, LFS sha256 where it gives one)."""

    repo_id: str
    repo_type: Literal["model", "dataset"]
    revision: str
    commit: str
    sizes: dict[str, int]
    checksums: dict[str, str]
    #: Read from the HF cache offline: only the files downloaded before, and no checksums.
    from_cache: bool = False


_NOT_FOUND: dict[str, type[BackboneRankError]] = {"model": UnknownBackbone, "dataset": DatasetNotFound}
_UNAVAILABLE: dict[str, type[BackboneRankError]] = {"model": WeightsUnavailable, "dataset": DatasetNotFound}
_SETTING = {"model": "BACKBONE_RANK_HUB_ALLOWED_REPOS", "dataset": "BACKBONE_RANK_HUB_ALLOWED_DATASETS"}


def check_allowed(
    repo_id: str, patterns: Sequence[str], *, repo_type: Literal["model", "dataset"] = "model", what: str = ""
) -> None:
    """Refuse a repo outside the allowlist ``patterns`` (also what a service checks on submission)."""
    if not repo_allowed(repo_id, patterns):
        raise DownloadNotAllowed(
            f"{what or repo_id}: this process downloads {repo_type}s only from repos matching "
            f"{', '.join(patterns) or 'nothing'}; {repo_id!r} is not one (the operator sets {_SETTING[repo_type]})",
            repo=repo_id,
        )


def list_repo(
    repo_id: str,
    access: HubAccess,
    *,
    repo_type: Literal["model", "dataset"] = "model",
    revision: str | None = None,
    what: str = "",
) -> RepoListing:
    """Ask the hub for the files of ``repo_id`` at ``revision`` (``main``), after the allowlist and offline checks.

    Raises
    ------
    DownloadNotAllowed, HubUnreachable; offline: WeightsUnavailable (model) / DatasetNotFound (dataset);
    UnknownBackbone / DatasetNotFound for a missing repo or revision; WeightsUnavailable / DatasetNotFound for a
    gated repo without a token.
    """
    what = what or repo_id
    patterns = access.allowed_repos if repo_type == "model" else access.allowed_datasets
    check_allowed(repo_id, patterns, repo_type=repo_type, what=what)
    if not access.enabled:
        raise _UNAVAILABLE[repo_type](
            f"{what}: {repo_id} is not in the HF cache ({access.hub_cache()}) and downloads are off (offline: "
            "HF_HUB_OFFLINE / BACKBONE_RANK_OFFLINE / --offline); run once with the hub reachable, or "
            f"`hf download {'--repo-type dataset ' if repo_type == 'dataset' else ''}{repo_id}`",
        )
    info = _repo_info(repo_id, repo_type, revision, access, what)
    sizes, checksums = _file_table(info)
    return RepoListing(repo_id, repo_type, revision or "main", str(info.sha), sizes, checksums)


def cached_listing(
    repo_id: str,
    access: HubAccess,
    *,
    repo_type: Literal["model", "dataset"] = "model",
    revision: str | None = None,
) -> RepoListing | None:
    """What the HF cache holds of ``repo_id`` at ``revision`` (a commit, or a name whose commit an earlier download
    recorded), without the network; None when it holds nothing."""
    repo_dir = access.hub_cache() / f"{repo_type}s--{repo_id.replace('/', '--')}"
    name = revision or "main"
    commit = name
    if not COMMIT_RE.fullmatch(name):
        try:
            commit = (repo_dir / "refs" / name).read_text(encoding="utf-8").strip()
        except OSError:
            return None
    snapshot = repo_dir / "snapshots" / commit
    if not COMMIT_RE.fullmatch(commit) or not snapshot.is_dir():
        return None
    sizes = {
        path.relative_to(snapshot).as_posix(): path.stat().st_size
        for path in sorted(snapshot.rglob("*"))
        if path.is_file()
    }
    return RepoListing(repo_id, repo_type, name, commit, sizes, {}, from_cache=True) if sizes else None


def download_files(
    listing: RepoListing,
    filenames: Sequence[str],
    access: HubAccess,
    *,
    what: str = "",
    progress: DownloadProgress | None = None,
) -> HubFiles:
    """Download ``filenames`` of a listed repo into the HF cache at the listed commit (those already there are not
    fetched again), after the size and free-disk checks; each file is verified, and a bad one leaves nothing.

    Raises
    ------
    DownloadTooLarge, InsufficientDisk, HubUnreachable, DownloadFailed (also when the revision moved to another
    commit while downloading).
    """
    what = what or listing.repo_id
    missing = [name for name in filenames if name not in listing.sizes]
    if missing:
        raise _UNAVAILABLE[listing.repo_type](f"{what}: the hub repo {listing.repo_id} has no {', '.join(missing)}")
    cached = _cached_paths(listing, filenames, access)
    to_fetch = [name for name in filenames if name not in cached]
    if to_fetch:  # all cached: nothing is written, so the disk's free space is no reason to refuse
        _check_room(sum(listing.sizes[name] for name in to_fetch), access, what)
    paths = dict(cached)
    total = sum(listing.sizes[name] for name in filenames)
    done = sum(listing.sizes[name] for name in cached)
    for name in to_fetch:
        paths[name] = _download(listing, name, access, what, done, total, progress)
        done += listing.sizes[name]
    if progress is not None:
        progress(total, total)
    _logger.info(
        "%s: %s@%s in the HF cache (%d file(s) downloaded)", what, listing.repo_id, listing.commit[:12], len(to_fetch)
    )
    return HubFiles(repo_id=listing.repo_id, commit=listing.commit, paths={name: paths[name] for name in filenames})


def fetch_repo_files(
    repo_id: str,
    filenames: Sequence[str],
    access: HubAccess,
    *,
    revision: str | None = None,
    what: str = "",
    progress: DownloadProgress | None = None,
) -> HubFiles:
    """Download ``filenames`` (the first must be the ``.safetensors`` weights) of the model repo ``repo_id``.

    ``what`` names the request in errors (the backbone id).

    Raises
    ------
    What :func:`list_repo` and :func:`download_files` raise, and UnsafeCheckpointFormat for a repo that has
    pickle checkpoints but no ``filenames[0]``.
    """
    what = what or repo_id
    listing = list_repo(repo_id, access, revision=revision, what=what)
    _check_safetensors_only(repo_id, filenames[0], listing.sizes, what)
    return download_files(listing, filenames, access, what=what, progress=progress)


def _repo_info(repo_id: str, repo_type: str, revision: str | None, access: HubAccess, what: str) -> Any:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(endpoint=access.endpoint)
    info = api.model_info if repo_type == "model" else api.dataset_info
    try:
        with _network_errors(access, what):
            return info(repo_id, revision=revision, files_metadata=True, timeout=access.timeout_s)
    except GatedRepoError as e:
        raise _UNAVAILABLE[repo_type](
            f"{what}: {repo_id} is gated: accept its terms on the hub and set HF_TOKEN"
        ) from e
    except RevisionNotFoundError as e:
        raise _NOT_FOUND[repo_type](f"{what}: {repo_id} has no revision {revision!r}") from e
    except RepositoryNotFoundError as e:
        raise _NOT_FOUND[repo_type](
            f"{what}: the hub ({access.where()}) has no {repo_type} repo {repo_id!r} (a private one needs HF_TOKEN)"
        ) from e


def _file_table(info: Any) -> tuple[dict[str, int], dict[str, str]]:
    sizes: dict[str, int] = {}
    checksums: dict[str, str] = {}
    for sibling in info.siblings or ():
        sizes[sibling.rfilename] = int(sibling.size or 0)
        if sibling.lfs is not None and getattr(sibling.lfs, "sha256", None):
            checksums[sibling.rfilename] = str(sibling.lfs.sha256)
    return sizes, checksums


def _check_safetensors_only(repo_id: str, weights: str, sizes: dict[str, int], what: str) -> None:
    if weights in sizes:
        return
    pickles = sorted(name for name in sizes if name.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UnsafeCheckpointFormat(
            f"{what}: the hub repo {repo_id} ships its weights only as pickle checkpoints ({', '.join(pickles[:3])}), "
            "which can run code when loaded; backbone-rank loads safetensors only: convert them "
            "(safetensors.torch.save_file) into a weights dir, or pick a repo with model.safetensors",
            backbone=what,
        )
    raise WeightsUnavailable(f"{what}: the hub repo {repo_id} has no {weights}", backbone=what)


def _cached_paths(listing: RepoListing, filenames: Sequence[str], access: HubAccess) -> dict[str, Path]:
    from huggingface_hub import try_to_load_from_cache

    found = {}
    for name in filenames:
        hit = try_to_load_from_cache(
            listing.repo_id, name, cache_dir=access.hub_cache(), revision=listing.commit, repo_type=listing.repo_type
        )
        if isinstance(hit, str):
            found[name] = Path(hit)
    return found


def _existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(os.sep)


def _check_room(needed: int, access: HubAccess, what: str) -> None:
    if needed > access.max_download_bytes:
        raise DownloadTooLarge(
            f"{what}: {needed / 2**20:.0f} MiB to download, over this process's limit of "
            f"{access.max_download_bytes / 2**20:.0f} MiB (BACKBONE_RANK_MAX_DOWNLOAD_BYTES)",
        )
    cache = access.hub_cache()
    free = shutil.disk_usage(_existing_parent(cache)).free
    if needed + access.min_free_bytes > free:
        raise InsufficientDisk(
            f"{what}: {needed / 2**20:.0f} MiB to download but {cache} has {free / 2**20:.0f} MiB free "
            f"(and {access.min_free_bytes / 2**20:.0f} MiB must stay free); free some space or point HF_HOME "
            "elsewhere",
        )


def _download(
    listing: RepoListing,
    name: str,
    access: HubAccess,
    what: str,
    done: int,
    total: int,
    progress: DownloadProgress | None,
) -> Path:
    from huggingface_hub import hf_hub_download

    cache = access.hub_cache()
    try:
        with _network_errors(access, what):
            # By the revision's name, not its commit: huggingface_hub then records the name -> commit ref in the
            # cache, which is what a later offline run resolves the name with.
            path = Path(
                str(
                    hf_hub_download(
                        listing.repo_id,
                        name,
                        repo_type=listing.repo_type,
                        revision=listing.revision,
                        cache_dir=cache,
                        endpoint=access.endpoint,
                        etag_timeout=access.timeout_s,
                        tqdm_class=_bar_class(progress, done, total),
                    )
                )
            )
    except HubUnreachable:
        _discard(cache, listing, name)
        raise
    except Exception as e:  # huggingface_hub raises httpx and OS errors as they come; none may leave bytes behind
        _discard(cache, listing, name)
        raise DownloadFailed(f"{what}: downloading {listing.repo_id}/{name} failed: {_shorten(e)}") from e
    problem = _verify(path, listing.sizes[name], listing.checksums.get(name))
    arrived = _snapshot_of(path, name).name
    if arrived != listing.commit:
        problem = f"at commit {arrived[:12]} while the rest is at {listing.commit[:12]} (the revision moved)"
    if problem:
        _discard(cache, listing, name)
        raise DownloadFailed(
            f"{what}: {listing.repo_id}/{name} arrived {problem}; it was removed from the cache, try again"
        )
    return path


def _verify(path: Path, size: int, sha256: str | None) -> str | None:
    actual = path.stat().st_size
    if size and actual != size:
        return f"with {actual} of {size} bytes"
    if sha256:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(_READ_CHUNK), b""):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            return f"corrupted (sha256 {digest.hexdigest()[:12]}…, the hub says {sha256[:12]}…)"
    return None


def _discard(cache: Path, listing: RepoListing, name: str) -> None:
    """Remove what a failed download of ``name`` left: its snapshot links, the blob they point to, partial files."""
    repo_dir = cache / f"{listing.repo_type}s--{listing.repo_id.replace('/', '--')}"
    links = list((repo_dir / "snapshots").glob(f"*/{name}"))
    targets = [Path(os.path.realpath(link)) for link in links if link.is_symlink()] + links
    targets.extend((repo_dir / "blobs").glob("*.incomplete"))
    for target in targets:
        try:
            target.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            _logger.warning("could not remove %s after a failed download: %s", target, e)


@contextmanager
def _network_errors(access: HubAccess, what: str) -> Iterator[None]:
    """Translate "the hub did not answer" (whatever the transport raises) into :class:`HubUnreachable`."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    unanswered: tuple[type[BaseException], ...] = (*_transport_errors(), OfflineModeIsEnabled, LocalEntryNotFoundError)
    try:
        yield
    except unanswered as e:
        raise HubUnreachable(
            f"{what}: the hub ({access.where()}) did not answer within {access.timeout_s:g} s ({_shorten(e)}); check "
            "the network or HF_ENDPOINT, or work offline (--offline / HF_HUB_OFFLINE=1) with weights already in the "
            "HF cache",
        ) from e


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The "no answer" errors of the HTTP client huggingface_hub uses (httpx, or httpx2 from huggingface_hub 2.x)."""
    errors: list[type[BaseException]] = []
    for name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        errors += [module.ConnectError, module.TimeoutException]
    return tuple(errors)


def _shorten(error: BaseException, limit: int = 240) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bar_class(progress: DownloadProgress | None, done: int, total: int) -> Any:
    """A silent tqdm class for huggingface_hub that reports bytes to ``progress`` (the CLI draws its own bars from
    these events, the service sends them to its clients)."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    start = done

    class _Reporting(hub_tqdm):
        seen = 0  # a disabled tqdm counts nothing itself

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            self.seen += int(n or 0)
            if progress is not None:
                progress(min(start + self.seen, total), total)
            return super().update(n)

    return _Reporting
