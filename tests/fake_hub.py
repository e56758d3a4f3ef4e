"""A stand-in for the Hugging Face hub on 127.0.0.1: the part of its HTTP API that huggingface_hub uses to
describe a repo and download its files, over repos the test writes in memory.

Served (``repo_type`` is ``models`` or ``datasets``; a model repo's paths have no prefix):

    GET  /api/{models|datasets}/{org}/{name}[/revision/{rev}]    repo info: sha, siblings (size, lfs sha256)
    HEAD/GET [/datasets]/{org}/{name}/resolve/{rev}/{file}        the file, with X-Repo-Commit and ETag headers

A revision is ``main``, a branch the test added, or a commit sha. ``faults`` make one file misbehave:
``"truncate"`` (the body stops half-way while Content-Length promises all of it), ``"corrupt"`` (the right
length, other bytes), ``"hang"`` (answers nothing for ``hang_s`` seconds). Every request is logged in
``requests`` so a test can show that an offline run asked nothing.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.pipeline.models.hub import HubAccess

__all__ = ["FakeHub", "Repo", "access_to", "running_hub"]


@dataclass
class Repo:
    """One repo at one commit (``sha``); ``branches`` maps other revisions to the same files."""

    repo_id: str
    files: dict[str, bytes]
    repo_type: str = "models"
    sha: str = ""
    branches: tuple[str, ...] = ("main",)
    gated: bool = False

    def __post_init__(self) -> None:
        if not self.sha:
            digest = hashlib.sha1(self.repo_id.encode())
            for name in sorted(self.files):
                digest.update(name.encode() + hashlib.sha256(self.files[name]).digest())
            self.sha = digest.hexdigest()


@dataclass
class FakeHub:
    repos: list[Repo] = field(default_factory=list)
    faults: dict[tuple[str, str], str] = field(default_factory=dict)
    hang_s: float = 30.0
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def add(self, repo: Repo) -> Repo:
        self.repos.append(repo)
        return repo

    def find(self, repo_type: str, repo_id: str, revision: str) -> Repo | None:
        for repo in self.repos:
            if repo.repo_type == repo_type and repo.repo_id == repo_id:
                if revision in repo.branches or revision == repo.sha:
                    return repo
        return None

    def known(self, repo_type: str, repo_id: str) -> bool:
        return any(r.repo_type == repo_type and r.repo_id == repo_id for r in self.repos)


def _siblings(repo: Repo) -> list[dict[str, Any]]:
    return [
        {
            "rfilename": name,
            "size": len(data),
            "blobId": hashlib.sha1(data).hexdigest(),
            "lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130},
        }
        for name, data in sorted(repo.files.items())
    ]


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the test output is the log
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _json(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _missing(self, what: str, code: str) -> None:
            self._json(404, {"error": f"{what} not found"}, {"X-Error-Code": code, "X-Error-Message": what})

        def _serve(self, body: bool) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(parsed.path)
            hub.requests.append((self.command, path))
            parts = [p for p in path.split("/") if p]
            if parts[:1] == ["api"] and len(parts) >= 4 and parts[1] in ("models", "datasets"):
                self._api(parts[1], parts[2:])
                return
            repo_type = "models"
            if parts[:1] == ["datasets"]:
                repo_type, parts = "datasets", parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                self._file(repo_type, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), body)
                return
            self._missing(path, "EntryNotFound")

        def _api(self, repo_type: str, rest: list[str]) -> None:
            repo_id, tail = "/".join(rest[:2]), rest[2:]
            if not hub.known(repo_type, repo_id):
                self._missing(f"repository {repo_id}", "RepoNotFound")
                return
            revision = "main"
            if tail[:1] == ["revision"] and len(tail) >= 2:
                revision = urllib.parse.unquote(tail[1])
            repo = hub.find(repo_type, repo_id, revision)
            if repo is None:
                self._missing(f"revision {revision}", "RevisionNotFound")
                return
            if repo.gated:
                self._json(401, {"error": "gated"}, {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"})
                return
            self._json(200, {"id": repo.repo_id, "sha": repo.sha, "private": False, "siblings": _siblings(repo)})

        def _file(self, repo_type: str, repo_id: str, revision: str, name: str, body: bool) -> None:
            repo = hub.find(repo_type, repo_id, urllib.parse.unquote(revision))
            if repo is None:
                code = "RevisionNotFound" if hub.known(repo_type, repo_id) else "RepoNotFound"
                self._missing(f"{repo_id}@{revision}", code)
                return
            if name not in repo.files:
                self._missing(f"{repo_id}/{name}", "EntryNotFound")
                return
            data = repo.files[name]
            fault = hub.faults.get((repo_id, name))
            if fault == "hang":
                time.sleep(hub.hang_s)
            etag = hashlib.sha256(data).hexdigest()
            start = 0
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes=") and body:
                start = int(ranged[6:].split("-")[0] or 0)
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if not body:
                return
            payload = data[start:]
            if fault == "truncate":
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            if fault == "corrupt":
                payload = bytes(b ^ 0x5A for b in payload)
            self.wfile.write(payload)

    return Handler


@contextmanager
def running_hub(hub: FakeHub | None = None) -> Iterator[FakeHub]:
    """Serve ``hub`` on 127.0.0.1 (a free port) in a thread; ``hub.url`` is its endpoint while it runs."""
    hub = hub or FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-hub", daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def access_to(hub: FakeHub, cache: Path, **overrides: Any) -> HubAccess:
    """Downloads on, from ``hub``, into the HF cache ``cache``, with a short timeout (``overrides`` replace fields).

    No free-space floor unless a test asks for one: the files are kilobytes, and a test machine's temporary disk may
    have less free than the product's 1 GiB default (CI's had 165 MiB).
    """
    from service.pipeline.models.hub import HubAccess

    access = HubAccess(enabled=True, endpoint=hub.url, cache_dir=cache, timeout_s=3.0, min_free_bytes=0)
    return replace(access, **overrides)
