"""FastAPI dependencies: the app's settings and job store, and the API-key check (``Annotated`` aliases)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.config import Settings
from service.errors import Unauthorized
from service.jobs.store import JobStore

__all__ = ["SettingsDep", "StoreDep", "require_api_key", "api_key_header"]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Required when keys are configured.")


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> JobStore:
    return request.app.state.store


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]


def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)] = None) -> None:
    """No keys configured: open (bind to loopback). Otherwise ``X-API-Key`` must equal one of them."""
    if not settings.api_keys:
        return
    if key is not None:
        given = key.encode()
        # compare_digest against every key: the time taken does not tell which key nearly matched.
        matches = [secrets.compare_digest(given, k.get_secret_value().encode()) for k in settings.api_keys]
        if any(matches):
            return
    raise Unauthorized("missing or wrong API key; send it in the X-API-Key header")
