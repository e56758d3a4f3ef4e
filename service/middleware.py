"""Pure ASGI middleware that answers before a request's body is read: the API-key check and the body limit.

* :class:`ApiKeyMiddleware`: with API keys configured, every path but ``/healthz``, the browser page's own files
  (``/`` and its script and stylesheet, which hold no data: the page asks for the key, service/page/) and the
  configured public paths needs a known ``X-API-Key``; a missing or wrong one is
  ``401 {"code": "unauthorized", ...}`` before the body is read or parsed (so a malformed body never tells an
  unauthenticated client more than 401). The matched key's digest (:func:`key_id`, never the key) is left in
  the request's state as ``api_key_id``, for the per-key job quota.
* :class:`BodyLimitMiddleware`: a declared ``Content-Length`` over the limit is refused before the body is
  read; a body without one (chunked) is counted while it streams and refused as soon as it passes the limit.
  Either way the answer is ``413 {"code": "request_too_large", ...}``. Routes that stream their body to disk
  under a budget of their own (dataset uploads, ``streamed_paths``) are left to enforce it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import SecretStr
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import Unauthorized
from service.page import PAGE_PATHS

__all__ = ["ALWAYS_OPEN", "ApiKeyMiddleware", "BodyLimitMiddleware", "BodyTooLarge", "key_id", "send_json"]

#: Liveness probes never need a key; nor does the page, which must load to ask for one.
ALWAYS_OPEN = frozenset({"/healthz"}) | PAGE_PATHS
_UNAUTHORIZED = Unauthorized("missing or wrong API key; send it in the X-API-Key header")


def key_id(key: str) -> str:
    """A stable, non-secret name of an API key (what the job store records as a job's owner)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Iterable[SecretStr], public_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.keys = [k.get_secret_value().encode() for k in keys]
        self.open = ALWAYS_OPEN | frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys:
            await self.app(scope, receive, send)
            return
        matched = self._match(_header(scope, b"x-api-key"))
        if matched is not None:
            scope.setdefault("state", {})["api_key_id"] = key_id(matched.decode())
        elif scope.get("path") not in self.open:
            # Connection: close, as the body this request may carry is never read.
            headers = {"WWW-Authenticate": "ApiKey", "Connection": "close"}
            await send_json(send, _UNAUTHORIZED.status, _UNAUTHORIZED.to_dict(), headers)
            return
        await self.app(scope, receive, send)

    def _match(self, given: bytes | None) -> bytes | None:
        if given is None:
            return None
        # compare_digest against every key: the time taken does not tell which key nearly matched.
        matches = [secrets.compare_digest(given, key) for key in self.keys]
        return self.keys[matches.index(True)] if any(matches) else None


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-stream; FastAPI re-raises HTTPExceptions from body parsing as they are, so
    the app's handler turns it into the JSON error."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes; send a smaller request")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, streamed_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = frozenset(streamed_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.streamed:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            detail = f"the request body is larger than {self.max_bytes} bytes; send a smaller request"
            await send_json(send, 413, {"code": "request_too_large", "detail": detail}, {"Connection": "close"})
            return
        total = 0

        async def limited_receive() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


async def send_json(send: Send, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
    """Answer with the JSON error ``body`` without calling the app (the request's body is never read)."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
