"""The browser page served at ``/``: one static HTML file, its script and its stylesheet (``static/``).

Apart from the routers because these are files, not code: package data (``pyproject.toml``'s
``[tool.setuptools.package-data]``) read once and served as they are, with no template engine and no front-end
build step. The page talks to the service only through the public API (``README.md``'s endpoint table), the
same typed requests as the CLI and the client. Its paths are open without an API key
(:data:`service.middleware.ALWAYS_OPEN`) so that it can ask for one; every call it makes sends the key.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["ASSETS", "PAGE_PATHS", "asset"]

#: URL path -> (file under static/, media type).
ASSETS: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page/page.css": ("page.css", "text/css; charset=utf-8"),
}
PAGE_PATHS = frozenset(ASSETS)


@cache
def asset(path: str) -> tuple[bytes, str]:
    """The bytes and media type of the page's file at URL ``path`` (one of :data:`ASSETS`)."""
    name, media_type = ASSETS[path]
    return resources.files(__package__).joinpath("static", name).read_bytes(), media_type
