"""Settings from the environment (prefix ``BACKBONE_RANK_``); no module-level instance."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings", "default_cache_dir"]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/backbone-rank`` (``~/.cache/backbone-rank`` by default)."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "backbone-rank"


class Settings(BaseSettings):
    """Everything configurable. Lists are JSON in the environment, e.g.
    ``BACKBONE_RANK_DATA_ROOTS='["/data", "/mnt/images"]'``."""

    model_config = SettingsConfigDict(
        env_prefix="BACKBONE_RANK_", env_ignore_empty=True, extra="ignore", populate_by_name=True
    )

    data_roots: list[Path] = Field(
        default_factory=list,
        description="Directories datasets must resolve under (realpath). Empty: the CLI allows the "
        "dataset's own directory; the service refuses every path.",
    )
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Feature cache, built-in data, zoo.")
    feature_cache_max_bytes: int = Field(20 * 2**30, description="LRU bound of the feature cache.")
    weights_dirs: list[Path] = Field(
        default_factory=list, description="Extra directories searched for <arch>[.<tag>].safetensors weights."
    )
    hf_cache_dir: Path | None = Field(None, description="HuggingFace hub cache (default: huggingface_hub's).")
    zoo_dir: Path | None = Field(
        None, description="Where the built-in zoo is built and loaded from (default: <cache_dir>/zoo)."
    )
    offline: bool = Field(
        False,
        validation_alias=AliasChoices("BACKBONE_RANK_OFFLINE", "HF_HUB_OFFLINE"),
        description="Never download from the hub, only read the HF cache (also HF_HUB_OFFLINE=1, CLI --offline).",
    )
    hub_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("BACKBONE_RANK_HUB_ENDPOINT", "HF_ENDPOINT"),
        description="The Hugging Face hub's URL (also HF_ENDPOINT); default: huggingface_hub's.",
    )
    hub_allowed_repos: list[str] | None = Field(
        None,
        description="fnmatch patterns of the hub repos this process may download, e.g. '[\"timm/*\"]'; default: any "
        "for the CLI, timm/* for the service (a request cannot make a server fetch arbitrary repos).",
    )
    hub_allowed_datasets: list[str] | None = Field(
        None,
        description="fnmatch patterns of the hub dataset repos this process may download (hf://datasets/...); "
        "default: any for the CLI, none for the service (the operator opts in, within max_download_bytes).",
    )
    hub_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for any one answer of the hub.")
    max_download_bytes: int = Field(8 * 2**30, ge=1, description="Larger downloads are refused.")
    min_free_disk_bytes: int = Field(
        2**30, ge=0, description="Free space the disks of the HF cache and of the uploads folder must keep after a "
        "download or an upload."
    )
    max_image_pixels: int = Field(50_000_000, description="Images with more pixels are skipped, never decoded.")
    max_image_bytes: int = Field(100 * 2**20, description="Image files larger than this are skipped.")
    min_samples_per_class: int = Field(2, ge=2, description="Classes with fewer usable images are an error.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    batch_size: int = Field(64, ge=1)
    num_threads: int | None = Field(None, description="torch CPU threads (default: torch's choice).")

    # --- scale-out (executor "ray": pip install 'backbone-rank[ray]') ---
    executor: Literal["local", "ray"] = Field(
        "local",
        description="Where rankings extract features unless the request says: 'local' (this process) or 'ray' "
        "(actors on a Ray cluster, service/pipeline/scaleout/).",
    )
    ray_address: str = Field(
        "",
        max_length=2048,
        description="The Ray cluster of executor 'ray': 'auto' (the cluster this machine belongs to), "
        "'ray://HOST:PORT' (Ray client), 'HOST:PORT' (its GCS); empty: a local cluster bound to 127.0.0.1 is started "
        "for each ranking and shut down after it. A setting only: a request never names a cluster.",
    )
    ray_actors: int = Field(2, ge=1, le=1024, description="Ray actors extracting one ranking's shards at once.")
    ray_cpus_per_actor: float = Field(
        1.0, gt=0, description="CPUs Ray reserves for each actor (also its torch threads, at least one)."
    )
    ray_gpus_per_actor: float | None = Field(
        None, ge=0, description="GPUs Ray reserves for each actor; default: 1 when the cluster has GPUs, else 0."
    )
    ray_shard_images: int = Field(
        2048,
        ge=1,
        description="Images per shard (one actor call), rounded up to whole batches: smaller shards balance the "
        "actors better and lose less to a failed node; each shard costs one round trip.",
    )

    # --- service (HTTP API, job store, workers) ---
    host: str = Field("127.0.0.1", description="Bind address of `backbone-rank serve` (loopback by default).")
    port: int = Field(8000, ge=1, le=65535, description="Port of `backbone-rank serve`.")
    database_path: Path | None = Field(None, description="SQLite job store (default: <cache_dir>/jobs.sqlite3).")
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Accepted X-API-Key values; empty: no authentication (loopback use). With keys, every path but "
        "/healthz and public_paths needs one, checked before the body is read.",
    )
    public_paths: list[str] = Field(
        default_factory=list,
        description="Paths that answer without X-API-Key when api_keys are set (exact paths), e.g. "
        "'[\"/docs\", \"/openapi.json\", \"/readyz\", \"/metrics\"]'; default: none (/healthz is always open).",
    )
    max_queued_jobs: int = Field(100, ge=1, description="Queued jobs beyond this are refused with 429 queue_full.")
    max_active_jobs_per_key: int | None = Field(
        20,
        ge=1,
        description="Jobs one API key may have queued or running; beyond: 429 quota_exceeded (so one client cannot "
        "fill the queue for everyone). Applies when api_keys are set; None: no per-key limit.",
    )
    max_event_streams: int = Field(
        200,
        ge=1,
        description="Open event streams (GET /v1/.../{id}/events) the service holds at once; beyond: 429 "
        "too_many_streams (each stream is a connection and a task; all streams of one job share one poller).",
    )
    max_event_streams_per_key: int | None = Field(
        20,
        ge=1,
        description="Open event streams one API key may hold; beyond: 429 too_many_streams. Applies when api_keys "
        "are set; None: only max_event_streams.",
    )
    event_stream_max_seconds: float = Field(
        600.0,
        gt=0,
        description="An event stream ends after this long with a `reconnect` event (data: the job's id, state and "
        "events URL); clients open it again (the Python client does). Frees abandoned streams.",
    )
    max_request_bytes: int = Field(1 << 20, ge=1024, description="Request bodies beyond this are refused (413).")
    job_lease_seconds: float = Field(
        60.0, gt=0, description="A running job whose worker sent no heartbeat for this long is reclaimed."
    )
    max_job_attempts: int = Field(3, ge=1, description="Claims of one job before it fails with worker_lost.")
    worker_poll_seconds: float = Field(0.5, gt=0, description="How often an idle worker looks for queued jobs.")
    finetunes_dir: Path | None = Field(
        None, description="Where fine-tune jobs write their weights (default: <cache_dir>/finetunes/<job id>)."
    )
    calibration_path: Path | None = Field(
        None,
        description="Calibration JSON for predicted accuracy and the fused order (`backbone-rank calibrate`); "
        "default: the packaged service/builtin/calibration.json (mean-rank order when that is absent).",
    )
    benchmark_results_dir: Path | None = Field(
        None,
        description="Where `backbone-rank benchmark` writes its results (unless --out-dir) and whose JSON files are "
        "served under /reports/benchmarks (default: <cache_dir>/benchmarks).",
    )
    allowed_backbones: list[str] = Field(
        default_factory=list,
        description="Service allowlist of backbone ids (fnmatch patterns, e.g. 'zoo:*'); empty: any timm id, "
        "zoo:* and random:*. local-dir:/@file ids are accepted only under weights_dirs.",
    )
    uploads_dir: Path | None = Field(
        None,
        description="Uploaded datasets (POST /v1/datasets, used as upload:<id>), stored by the sha256 of their "
        "archive, with the staging area of uploads in progress (default: <cache_dir>/uploads).",
    )
    max_upload_bytes: int = Field(
        1 << 30,
        ge=1024,
        description="Archive uploads beyond this are refused while they stream (413 upload_too_large).",
    )
    max_upload_files: int = Field(
        50_000, ge=1, description="Entries (files and folders) one uploaded archive may hold (413 too_many_files)."
    )
    max_upload_extracted_bytes: int = Field(
        4 << 30, ge=1, description="What one uploaded archive may extract to (413 archive_bomb)."
    )
    max_upload_ratio: float = Field(
        100.0,
        gt=1,
        description="Extracted bytes per archive byte beyond which an upload is a zip bomb (413 archive_bomb); an "
        "archive that extracts to under 64 MiB is not held to it.",
    )
    upload_retention_days: float | None = Field(
        30.0,
        gt=0,
        description="Uploads not uploaded again for this long are removed (checked at start-up and whenever the "
        "uploads are listed); None: kept until deleted.",
    )
    fault_progress_delay_s: float = Field(
        0.0, ge=0, description="Test hook: the worker sleeps this long at every progress event (slow jobs)."
    )

    @field_validator("public_paths")
    @classmethod
    def _absolute_paths(cls, paths: list[str]) -> list[str]:
        bad = [p for p in paths if not p.startswith("/")]
        if bad:
            raise ValueError(f"public paths start with '/', e.g. /docs: {bad}")
        return paths

    @model_validator(mode="after")
    def _fill_service_paths(self) -> Settings:
        # Derived from cache_dir after it is known, so one BACKBONE_RANK_CACHE_DIR moves everything.
        if self.database_path is None:
            self.database_path = self.cache_dir / "jobs.sqlite3"
        if self.finetunes_dir is None:
            self.finetunes_dir = self.cache_dir / "finetunes"
        if self.benchmark_results_dir is None:
            self.benchmark_results_dir = self.cache_dir / "benchmarks"
        if self.uploads_dir is None:
            self.uploads_dir = self.cache_dir / "uploads"
        return self

    def hub_patterns(self, *, service: bool) -> tuple[list[str], list[str]]:
        """The (model, dataset) repo patterns this process may download: the settings', else any for the CLI and
        ``timm/*`` models and no dataset for the service (a request cannot make a server fetch arbitrary repos)."""
        models = self.hub_allowed_repos
        datasets = self.hub_allowed_datasets
        if models is None:
            models = ["timm/*"] if service else ["*"]
        if datasets is None:
            datasets = [] if service else ["*"]
        return list(models), list(datasets)

    @property
    def calibration(self) -> Path | str:
        """What rankings are calibrated with: ``calibration_path``, else ``"default"`` (the packaged file)."""
        return self.calibration_path or "default"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
