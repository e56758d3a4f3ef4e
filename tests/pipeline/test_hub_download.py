"""fetch_repo_files against a stand-in hub on 127.0.0.1: allowlist, safetensors only, pinned commits, room,
verification, nothing half-written, an unreachable hub fails in seconds."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from service.errors import (  # noqa: E402
    DownloadFailed,
    DownloadNotAllowed,
    DownloadTooLarge,
    HubUnreachable,
    InsufficientDisk,
    UnknownBackbone,
    UnsafeCheckpointFormat,
    WeightsUnavailable,
)
from service.pipeline.models.hub import HubAccess, fetch_repo_files  # noqa: E402
from tests.fake_hub import FakeHub, Repo, access_to, running_hub  # noqa: E402

WEIGHTS = bytes(range(256)) * 64
FILES = {"model.safetensors": WEIGHTS, "config.json": b'{"architecture": "test_resnet"}'}


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import (the suite runs with it set); these tests talk to
    # the loopback stand-in only.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    fake.add(Repo("timm/tiny.tag", dict(FILES), branches=("main", "v1")))
    fake.add(Repo("timm/pickled.tag", {"pytorch_model.bin": b"\x80\x04pickle", "config.json": b"{}"}))
    fake.add(Repo("other/tiny", dict(FILES)))
    fake.add(Repo("timm/gated.tag", dict(FILES), gated=True))
    with running_hub(fake) as running:
        yield running


def _access(hub: FakeHub, tmp_path: Path, **overrides: object) -> HubAccess:
    return access_to(hub, tmp_path / "hf", **overrides)


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".locks" not in p.parts)


def test_downloads_at_the_resolved_commit_and_reuses_the_cache(hub: FakeHub, tmp_path: Path) -> None:
    access = _access(hub, tmp_path)
    seen: list[tuple[int, int]] = []
    got = fetch_repo_files(
        "timm/tiny.tag", ["model.safetensors", "config.json"], access, progress=lambda d, t: seen.append((d, t))
    )
    repo = hub.repos[0]
    assert got.commit == repo.sha and got.folder.name == repo.sha
    assert got.paths["model.safetensors"].read_bytes() == WEIGHTS
    assert seen[-1] == (len(WEIGHTS) + len(FILES["config.json"]),) * 2
    downloads = [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert len(downloads) == 2
    # the cache maps the revision's name to the commit, as an offline run resolves it
    from huggingface_hub import try_to_load_from_cache

    assert try_to_load_from_cache("timm/tiny.tag", "model.safetensors", cache_dir=tmp_path / "hf") == str(
        got.paths["model.safetensors"]
    )
    # a second call asks the hub for the commit only, and downloads nothing
    hub.requests.clear()
    again = fetch_repo_files("timm/tiny.tag", ["model.safetensors"], access, revision="v1")
    assert again.paths["model.safetensors"] == got.paths["model.safetensors"]
    assert [r for r in hub.requests if "/resolve/" in r[1]] == []


def test_a_revision_that_moves_during_the_download_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    from service.pipeline.models.hub import download_files, list_repo

    access = _access(hub, tmp_path)
    listing = list_repo("timm/tiny.tag", access)
    hub.repos[0].branches = ("v1",)  # "main" now points to another commit
    hub.add(Repo("timm/tiny.tag", {**FILES, "model.safetensors": WEIGHTS[::-1]}))
    with pytest.raises(DownloadFailed, match="the revision moved"):
        download_files(listing, ["model.safetensors"], access)
    assert [f for f in _files_under(tmp_path / "hf") if "snapshots" in f] == []


def test_refuses_repos_outside_the_allowlist_without_asking_the_hub(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(DownloadNotAllowed, match="timm/\\*") as caught:
        fetch_repo_files("other/tiny", ["model.safetensors"], _access(hub, tmp_path, allowed_repos=("timm/*",)))
    assert caught.value.code == "download_not_allowed" and caught.value.status == 403
    assert hub.requests == []


def test_offline_reads_only_the_cache(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="downloads are off"):
        fetch_repo_files("timm/tiny.tag", ["model.safetensors"], _access(hub, tmp_path, enabled=False))
    assert hub.requests == []


def test_a_pickle_only_repo_is_refused_before_downloading(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(UnsafeCheckpointFormat, match="pytorch_model.bin"):
        fetch_repo_files("timm/pickled.tag", ["model.safetensors"], _access(hub, tmp_path))
    assert [r for r in hub.requests if "/resolve/" in r[1]] == []


def test_unknown_repo_and_revision_are_named(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(UnknownBackbone, match="no model repo 'timm/nope'"):
        fetch_repo_files("timm/nope", ["model.safetensors"], _access(hub, tmp_path))
    with pytest.raises(UnknownBackbone, match="no revision 'v9'"):
        fetch_repo_files("timm/tiny.tag", ["model.safetensors"], _access(hub, tmp_path), revision="v9")
    with pytest.raises(WeightsUnavailable, match="gated: accept its terms on the hub and set HF_TOKEN"):
        fetch_repo_files("timm/gated.tag", ["model.safetensors"], _access(hub, tmp_path))


@pytest.mark.parametrize("fault", ["truncate", "corrupt"])
def test_a_bad_download_leaves_nothing_in_the_cache(hub: FakeHub, tmp_path: Path, fault: str) -> None:
    hub.faults[("timm/tiny.tag", "model.safetensors")] = fault
    access = _access(hub, tmp_path)
    with pytest.raises(DownloadFailed) as caught:
        fetch_repo_files("timm/tiny.tag", ["model.safetensors"], access)
    assert caught.value.code == "download_failed" and "timm/tiny.tag/model.safetensors" in caught.value.detail
    assert [f for f in _files_under(tmp_path / "hf") if "blobs" in f or "snapshots" in f] == []
    # once the hub serves it right, the same call succeeds
    del hub.faults[("timm/tiny.tag", "model.safetensors")]
    assert (
        fetch_repo_files("timm/tiny.tag", ["model.safetensors"], access).paths["model.safetensors"].read_bytes()
        == WEIGHTS
    )


def test_room_is_checked_before_the_first_byte(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(DownloadTooLarge, match="MiB"):
        fetch_repo_files("timm/tiny.tag", ["model.safetensors"], _access(hub, tmp_path, max_download_bytes=100))
    with pytest.raises(InsufficientDisk, match="free"):
        fetch_repo_files("timm/tiny.tag", ["model.safetensors"], _access(hub, tmp_path, min_free_bytes=2**62))
    assert [r for r in hub.requests if "/resolve/" in r[1]] == []


def test_an_unreachable_hub_fails_within_seconds(tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: connection refused
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers: a timeout
    try:
        for endpoint in (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{silent.getsockname()[1]}"):
            access = HubAccess(enabled=True, endpoint=endpoint, cache_dir=tmp_path / "hf", timeout_s=1.0)
            began = time.monotonic()
            with pytest.raises(HubUnreachable, match="did not answer") as caught:
                fetch_repo_files("timm/tiny.tag", ["model.safetensors"], access)
            assert time.monotonic() - began < 8
            assert caught.value.code == "hub_unreachable" and endpoint in caught.value.detail
    finally:
        silent.close()


def test_files_already_cached_are_served_whatever_the_disk_has_free(hub: FakeHub, tmp_path: Path) -> None:
    fetch_repo_files("timm/tiny.tag", ["model.safetensors"], _access(hub, tmp_path))
    downloads = len([r for r in hub.requests if "/resolve/" in r[1]])
    got = fetch_repo_files("timm/tiny.tag", ["model.safetensors"], _access(hub, tmp_path, min_free_bytes=2**62))
    assert got.paths["model.safetensors"].read_bytes() == WEIGHTS
    assert len([r for r in hub.requests if "/resolve/" in r[1]]) == downloads
