"""The composition root: settings in, a configured process and the engine's :class:`Runtime` out.

Everything that turns :class:`~service.config.Settings` into engine arguments lives here, once: the CLI
(:func:`cli_runtime`) and the job worker (:func:`service_runtime`) differ only where a service must be
stricter (no "dataset's own folder" without data roots, the backbone allowlist, no client-side paths).
:func:`start` fills the process-wide registries (built-in datasets, packaged ImageNet weights, the zoo)
and sets torch's threads; it is idempotent. A :class:`RuntimeRecipe` repeats both steps in another process (each
Ray actor of the executor ``ray``, service/pipeline/scaleout/), from the settings values it carries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.catalog import packaged_weights_dir, zoo_dir
from service.config import Settings
from service.pipeline.models.backbone_ids import service_allows
from service.pipeline.models.hub import HubAccess
from service.pipeline.runtime import RayOptions, Runtime

__all__ = ["RuntimeRecipe", "cli_runtime", "hub_access", "register_builtins", "service_runtime", "start"]


def register_builtins(zoo_dir: Path, packaged_weights_dir: Path) -> None:
    """Plug the built-ins into the engine's registries (idempotent): the generated datasets (``builtin:NAME``),
    the packaged ImageNet weights (converted into ``packaged_weights_dir``), the zoo in ``zoo_dir`` (weights,
    source accuracies, builds) and the built-in benchmark suites. Calling again with other folders rebinds them."""
    from service.builtin.datasets import register_builtin_datasets
    from service.builtin.packaged_weights import register_packaged_weights
    from service.builtin.suites import register_builtin_suites
    from service.builtin.zoo import register_zoo

    register_builtin_datasets()
    register_packaged_weights(packaged_weights_dir)
    register_zoo(zoo_dir)
    register_builtin_suites()


def start(settings: Settings) -> None:
    """Fill this process's registries from the settings (:func:`register_builtins`); set torch's threads."""
    register_builtins(zoo_dir(settings), packaged_weights_dir(settings))
    if settings.num_threads:
        import torch

        torch.set_num_threads(settings.num_threads)


def hub_access(settings: Settings, *, service: bool) -> HubAccess:
    """Downloads as the settings allow (:meth:`Settings.hub_patterns`); none offline."""
    models, datasets = settings.hub_patterns(service=service)
    return HubAccess(
        enabled=not settings.offline,
        endpoint=settings.hub_endpoint,
        allowed_repos=tuple(models),
        allowed_datasets=tuple(datasets),
        timeout_s=settings.hub_timeout_s,
        cache_dir=settings.hf_cache_dir,
        max_download_bytes=settings.max_download_bytes,
        min_free_bytes=settings.min_free_disk_bytes,
    )


@dataclass(frozen=True)
class RuntimeRecipe:
    """How another process (a Ray actor) builds the runtime this one has: :func:`start`, then :func:`cli_runtime` or
    :func:`service_runtime`, from these settings.

    ``settings`` holds every field's value, so the other process reads nothing from its own environment (init values
    take precedence over environment variables); the API keys are left out, an actor serves no API.
    """

    settings: dict[str, Any] = field(repr=False)
    service: bool

    @classmethod
    def of(cls, settings: Settings, *, service: bool) -> RuntimeRecipe:
        values = settings.model_dump(exclude={"api_keys"})
        values["api_keys"] = []
        return cls(values, service)

    def __call__(self) -> Runtime:
        settings = Settings.model_validate(self.settings)
        start(settings)
        return service_runtime(settings) if self.service else cli_runtime(settings)


def _ray_options(settings: Settings, *, service: bool) -> RayOptions:
    return RayOptions(
        address=settings.ray_address,
        actors=settings.ray_actors,
        cpus_per_actor=settings.ray_cpus_per_actor,
        gpus_per_actor=settings.ray_gpus_per_actor,
        shard_images=settings.ray_shard_images,
        actor_runtime=RuntimeRecipe.of(settings, service=service),
    )


def _runtime(
    settings: Settings,
    *,
    roots: tuple[Path, ...] | None,
    hub: HubAccess,
    allowlist: Callable[[str], bool] | None = None,
    service: bool = False,
) -> Runtime:
    return Runtime(
        hub=hub,
        cache_dir=settings.cache_dir,
        builtin_dir=settings.cache_dir / "builtin",
        roots=roots,
        feature_cache_max_bytes=settings.feature_cache_max_bytes,
        weights_dirs=tuple(settings.weights_dirs),
        allowlist=allowlist,
        calibration=settings.calibration,
        min_per_class=settings.min_samples_per_class,
        device=settings.device,
        batch_size=settings.batch_size,
        accepts_local_paths=not service,
        uploads_dir=settings.uploads_dir,
        executor=settings.executor,
        ray=_ray_options(settings, service=service),
    )


def cli_runtime(settings: Settings) -> Runtime:
    """A local run: without configured data roots, the dataset's own folder is allowed; any hub repo unless the
    settings restrict them."""
    return _runtime(settings, roots=tuple(settings.data_roots) or None, hub=hub_access(settings, service=False))


def _allowlist(settings: Settings) -> Callable[[str], bool]:
    patterns, weights_dirs = list(settings.allowed_backbones), list(settings.weights_dirs)
    return lambda backbone_id: service_allows(backbone_id, patterns=patterns, weights_dirs=weights_dirs)


def service_runtime(settings: Settings) -> Runtime:
    """A worker's run: only paths under the data roots (none without roots), the allowlist, no client paths."""
    return _runtime(
        settings,
        roots=tuple(settings.data_roots),
        hub=hub_access(settings, service=True),
        allowlist=_allowlist(settings),
        service=True,
    )
