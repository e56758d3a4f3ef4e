"""``/`` and ``/page/...``: the browser page (service/page/), left out of the OpenAPI document (it is no API)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.page import ASSETS, asset

router = APIRouter(include_in_schema=False)

#: Revalidate every load: a restarted service with a newer page is picked up at once (the files are small).
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
#: The page loads nothing but its own files and talks only to this service (no CDN, works offline); the browser
#: enforces it. ``data:`` images: the blank favicon.
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def _route(path: str) -> None:
    def serve() -> Response:
        body, media_type = asset(path)
        headers = {**_HEADERS, "Content-Security-Policy": _CSP} if media_type.startswith("text/html") else _HEADERS
        return Response(body, media_type=media_type, headers=headers)

    router.add_api_route(path, serve, methods=["GET"], name=f"page:{ASSETS[path][0]}")


for _path in ASSETS:
    _route(_path)
