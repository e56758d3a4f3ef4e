"""FastAPI dependencies: the app's settings, job store and uploads, the caller's API key (``Annotated`` aliases).

They are ``async def`` because they only read the app's state: FastAPI runs a plain ``def`` dependency in its
thread pool, one thread hop per dependency and request, which under load cost more than the request itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.config import Settings
from service.jobs.store import JobStore
from service.uploads.store import UploadStore

__all__ = ["ApiKeyIdDep", "SettingsDep", "StoreDep", "UploadsDep", "api_key_scheme", "api_key_header"]

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="Required when the service has API keys configured (BACKBONE_RANK_API_KEYS).",
)


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_uploads(request: Request) -> UploadStore:
    return request.app.state.uploads


async def get_api_key_id(request: Request) -> str | None:
    """The digest of the caller's API key (``service.middleware.key_id``), None when keys are off."""
    return getattr(request.state, "api_key_id", None)


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
ApiKeyIdDep = Annotated[str | None, Depends(get_api_key_id)]
UploadsDep = Annotated[UploadStore, Depends(get_uploads)]


async def api_key_scheme(key: Annotated[str | None, Security(api_key_header)] = None) -> None:
    """Declares the ``X-API-Key`` scheme on a router's operations in OpenAPI. The key is checked earlier, by
    :class:`service.middleware.ApiKeyMiddleware`, before the body is read (a dependency runs after it is parsed)."""
