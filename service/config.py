"""Settings from the environment (prefix ``BACKBONE_RANK_``); no module-level instance."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
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

    model_config = SettingsConfigDict(env_prefix="BACKBONE_RANK_", env_ignore_empty=True, extra="ignore")

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
    max_image_pixels: int = Field(50_000_000, description="Images with more pixels are skipped, never decoded.")
    max_image_bytes: int = Field(100 * 2**20, description="Image files larger than this are skipped.")
    min_samples_per_class: int = Field(2, ge=2, description="Classes with fewer usable images are an error.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    batch_size: int = Field(64, ge=1)
    num_threads: int | None = Field(None, description="torch CPU threads (default: torch's choice).")


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
