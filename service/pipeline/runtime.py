"""What the engine needs from its host besides the request: where things are and what is allowed.

A :class:`Runtime` is built once from the settings by the composition root (:mod:`service.bootstrap`),
for the CLI or for a service worker, and handed to every engine call (:mod:`service.pipeline.engine`).
It holds no torch objects, so building it is cheap. :class:`RayOptions` is where the executor ``ray``
(service/pipeline/scaleout/) runs, and how each of its actors builds the same runtime in its own process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from service.pipeline.data.hub_dataset import HubDatasets
from service.pipeline.features.cache import FeatureCache
from service.pipeline.models.hub import HubAccess

__all__ = ["RayOptions", "Runtime"]


@dataclass(frozen=True)
class RayOptions:
    """The Ray cluster of the executor ``ray`` and the actors it runs there (``BACKBONE_RANK_RAY_*`` settings).

    Attributes
    ----------
    address : str
        ``ray.init``'s address: ``"auto"``, ``"ray://HOST:PORT"``, ``"HOST:PORT"``; empty: a local cluster on
        127.0.0.1, started for one extraction and shut down after it. Never taken from a request.
    actors : int
        Actors extracting at once (fewer when there are fewer shards or the cluster holds fewer).
    cpus_per_actor, gpus_per_actor
        Resources Ray reserves for each actor; ``gpus_per_actor`` None: 1 when the cluster has GPUs, else 0.
    shard_images : int
        Images per shard, rounded up to whole batches.
    actor_runtime : callable or None
        Builds this runtime in an actor's process (filling that process's registries first): picklable plain data
        and a function, made by :mod:`service.bootstrap` from the settings. None: the runtime was not built from
        settings, and the executor ``ray`` is refused.
    """

    address: str = ""
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None
    shard_images: int = 2048
    actor_runtime: Callable[[], Runtime] | None = None


@dataclass(frozen=True)
class Runtime:
    """The host's side of a run.

    Attributes
    ----------
    roots : sequence of Path or None
        Directories datasets must resolve under; None (the CLI without configured roots) allows the
        dataset's own directory, an empty list (a service without roots) allows no path at all.
    cache_dir, feature_cache_max_bytes
        The feature cache (``<cache_dir>/features``, LRU-bounded).
    builtin_dir : Path
        Where built-in datasets are materialised.
    uploads_dir : Path or None
        Where the service stores uploaded datasets (``upload:<id>``); None: such references are an error.
    weights_dirs
        Where weights are searched (besides the providers registered at start-up and the HF cache).
    hub : HubAccess
        The HF cache (``hub.cache_dir``: :attr:`hf_cache_dir`), and whether weights missing from every local place
        are downloaded from the hub, from where, which repos.
    allowlist : callable or None
        A service's backbone allowlist; None allows every id.
    calibration : Path or "default" or None
        Predicted accuracy and the fused order (``"default"``: the packaged file).
    min_per_class : int
        Classes with fewer usable images are an error.
    device, batch_size
        Defaults for requests that leave them unset.
    accepts_local_paths : bool
        False on a service: a request naming directories of the caller's machine is refused.
    executor : {"local", "ray"}
        Where rankings extract features when the request leaves it unset.
    ray : RayOptions
        The cluster and actors of the executor ``ray``.
    """

    cache_dir: Path
    builtin_dir: Path
    roots: Sequence[Path] | None = None
    feature_cache_max_bytes: int = 20 * 2**30
    weights_dirs: Sequence[Path] = ()
    hub: HubAccess = field(default_factory=HubAccess)
    allowlist: Callable[[str], bool] | None = None
    calibration: Path | str | None = "default"
    min_per_class: int = 2
    device: str = "auto"
    batch_size: int = 64
    accepts_local_paths: bool = True
    uploads_dir: Path | None = None
    executor: Literal["local", "ray"] = "local"
    ray: RayOptions = field(default_factory=RayOptions)

    @property
    def hf_cache_dir(self) -> Path | None:
        """The HF hub cache weights are looked up in and downloaded to (None: huggingface_hub's default)."""
        return self.hub.cache_dir

    def feature_cache(self) -> FeatureCache:
        return FeatureCache(self.cache_dir / "features", self.feature_cache_max_bytes)

    def hub_datasets(self) -> HubDatasets:
        """Hub datasets fetched with :attr:`hub`, their samples kept under ``<cache_dir>/hub-datasets``."""
        return HubDatasets(self.hub, self.cache_dir / "hub-datasets")
