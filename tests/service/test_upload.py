"""Dataset uploads (``POST /v1/datasets``, service/uploads/): hostile archives, budgets, deduplication, the
``upload:<id>`` reference in requests and in the engine, the client and the CLI's ``--upload``.

Every refused upload must answer a specific 4xx with its code, write nothing outside the uploads folder (an audit
hook records every file opened for writing, folder made and rename) and leave nothing behind (no stored upload, an
empty staging folder). No worker and no torch: the ranking requests are only validated and queued here.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from service.config import Settings
from service.main import create_app
from service.pipeline.data.datasets import load_dataset
from service.uploads.archive import Budget, extract_archive

from .conftest import REPO, ServerProcess, free_port, server_env, write_image_folder

# ------------------------------------------------------------------------------------------------ write audit

_writes: list[tuple[str, str]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _writes is None:
        return
    if event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
        mode, flags = args[1], args[2]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        )
        if writing:
            _writes.append((event, os.fsdecode(args[0])))
    elif event in ("os.mkdir", "os.rename") and args:
        _writes.append((event, os.fsdecode(args[0])))
        if event == "os.rename":
            _writes.append((event, os.fsdecode(args[1])))


sys.addaudithook(_audit)  # cannot be removed; inert unless a test records


@contextlib.contextmanager
def recording_writes() -> Iterator[list[tuple[str, str]]]:
    """Every path written (opened for writing, made, renamed) while the block runs, in any thread."""
    global _writes
    _writes = []
    try:
        yield _writes
    finally:
        _writes = None


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def pets(tmp_path: Path) -> Path:
    """A local folder of 3 classes (not under the server's data roots) plus a file that is no image."""
    root = write_image_folder(tmp_path / "local" / "pets", {"cat": 3, "dog": 3, "bird": 2}, size=8)
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def zip_of(folder: Path, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, prefix + path.relative_to(folder).as_posix())
    return buffer.getvalue()


def zip_with(entries: dict[str, bytes], base: Path | None = None) -> bytes:
    """A zip of the pets images (if ``base``) plus ``entries`` (name -> bytes), names taken literally."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if base is not None:
            for path in sorted(base.rglob("*.png")):
                archive.write(path, path.relative_to(base).as_posix())
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def tar_with(members: list[tarfile.TarInfo], base: Path | None = None, mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        if base is not None:
            for path in sorted(base.rglob("*.png")):
                archive.add(path, path.relative_to(base).as_posix())
        for member in members:
            archive.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    return info


def post(client: TestClient, body: bytes, **headers: str) -> httpx.Response:
    return client.post("/v1/datasets", content=body, headers={"Content-Type": "application/zip", **headers})


def assert_refused(
    client: TestClient, settings: Settings, body: bytes, status: int, code: str, **headers: str
) -> dict[str, Any]:
    """The upload gets ``status``/``code``, writes only inside the uploads folder, and leaves nothing there."""
    uploads = Path(settings.uploads_dir or "")
    with recording_writes() as writes:
        response = post(client, body, **headers)
    assert (response.status_code, response.json()["code"]) == (status, code), response.json()
    outside = [(event, path) for event, path in writes if not Path(path).resolve().is_relative_to(uploads.resolve())]
    assert not outside, outside
    assert_nothing_left(settings)
    return response.json()


def assert_nothing_left(settings: Settings) -> None:
    uploads = Path(settings.uploads_dir or "")
    if not uploads.exists():  # refused before anything was staged
        return
    assert sorted(p.name for p in uploads.iterdir()) in ([], [".staging"]), list(uploads.iterdir())
    assert not any((uploads / ".staging").iterdir()) if (uploads / ".staging").exists() else True


# ----------------------------------------------------------------------------------------------- good uploads


def test_upload_summary_ranking_and_finetune_accept_it(client: TestClient, settings: Settings, pets: Path) -> None:
    with recording_writes() as writes:
        response = post(client, zip_of(pets, prefix="pets/"))
    assert response.status_code == 201, response.json()
    body = response.json()
    uploads = Path(settings.uploads_dir or "").resolve()
    assert writes and all(Path(path).resolve().is_relative_to(uploads) for _, path in writes), writes
    upload_id = body["id"]
    assert response.headers["location"] == f"/v1/datasets/{upload_id}" == body["url"]
    assert body["ref"] == f"upload:{upload_id}" and body["dataset"]["kind"] == "upload"
    assert body["classes"] == ["bird", "cat", "dog"]  # the lone top folder "pets/" was entered
    assert body["class_counts"] == {"bird": 2, "cat": 3, "dog": 3} and body["n_images"] == 8
    assert body["skipped"] == {"unsupported_format": 1}
    assert body["skipped_files"] == [{"path": "cat/notes.txt", "reason": "unsupported_format"}]
    assert body["format"] == "zip" and body["layout"] == "folder" and body["expires_at"] is not None
    assert not (uploads / upload_id / "data" / "pets" / "cat" / "notes.txt").exists()  # not kept
    assert_nothing_left_in_staging(settings)

    ranking = {"dataset": {"kind": "upload", "name": upload_id}, "backbones": ["random:resnet10t"]}
    queued = client.post("/v1/rankings", json=ranking)
    assert queued.status_code == 202, queued.json()
    stored = client.get(queued.json()["url"]).json()["request"]["dataset"]
    assert (stored["kind"], stored["name"]) == ("upload", upload_id)
    finetune = {"dataset": {"kind": "upload", "name": upload_id}, "backbone": "random:resnet10t"}
    assert client.post("/v1/finetunes", json=finetune).status_code == 202

    # GET one, list, and the built-in catalogue route beside them
    assert client.get(body["url"]).json()["class_counts"] == body["class_counts"]
    assert [d["id"] for d in client.get("/v1/datasets").json()] == [upload_id]
    assert client.get("/v1/datasets/builtin").status_code == 200


def assert_nothing_left_in_staging(settings: Settings) -> None:
    staging = Path(settings.uploads_dir or "") / ".staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_the_same_archive_twice_is_one_dataset(client: TestClient, settings: Settings, pets: Path) -> None:
    archive = zip_of(pets)
    first = post(client, archive)
    second = post(client, archive)
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert len(client.get("/v1/datasets").json()) == 1
    assert_nothing_left_in_staging(settings)


def test_engine_lists_an_upload_and_its_manifest_and_split_layouts(
    client: TestClient, settings: Settings, pets: Path, tmp_path: Path
) -> None:
    folder = post(client, zip_of(pets)).json()
    dataset = load_dataset(folder["ref"], uploads_dir=settings.uploads_dir)
    assert dataset.classes == ["bird", "cat", "dog"] and len(dataset) == 8
    assert dataset.ref.kind == "upload" and dataset.summary()["ref"] == {"kind": "upload", "name": folder["id"]}

    # a manifest with the images, as a tar.gz
    lines = [
        {"path": f"images/{p.relative_to(pets).as_posix()}", "label": p.parent.name.upper()}
        for p in pets.rglob("*.png")
    ]
    manifest = tmp_path / "labels.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(manifest, "labels.jsonl")
        for path in sorted(pets.rglob("*.png")):
            archive.add(path, "images/" + path.relative_to(pets).as_posix())
    listed = post(client, buffer.getvalue())
    assert listed.status_code == 201, listed.json()
    assert listed.json()["layout"] == "manifest" and listed.json()["format"] == "tar.gz"
    assert listed.json()["class_counts"] == {"BIRD": 2, "CAT": 3, "DOG": 3}
    assert load_dataset(listed.json()["ref"], uploads_dir=settings.uploads_dir).classes == ["BIRD", "CAT", "DOG"]

    # train/ and val/ folders
    split_root = tmp_path / "splits"
    write_image_folder(split_root / "train", {"a": 2, "b": 2}, size=8)
    write_image_folder(split_root / "val", {"a": 2, "b": 3}, size=8, seed=1)
    split = post(client, zip_of(split_root)).json()
    assert split["splits"] == {"train": {"a": 2, "b": 2}, "val": {"a": 2, "b": 3}}
    assert len(load_dataset(f"{split['ref']}#val", uploads_dir=settings.uploads_dir)) == 5


def test_unknown_deleted_and_expired_uploads(client: TestClient, settings: Settings, pets: Path) -> None:
    missing = "0" * 64
    assert client.get(f"/v1/datasets/{missing}").json()["code"] == "dataset_not_found"
    assert client.get("/v1/datasets/not-an-id").status_code == 422
    refused = client.post("/v1/rankings", json={"dataset": {"kind": "upload", "name": missing}, "backbones": ["x"]})
    assert (refused.status_code, refused.json()["code"]) == (404, "dataset_not_found")
    bad = client.post("/v1/rankings", json={"dataset": {"kind": "upload", "name": "../x"}, "backbones": ["x"]})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_dataset")

    upload_id = post(client, zip_of(pets)).json()["id"]
    deleted = client.delete(f"/v1/datasets/{upload_id}")
    assert deleted.status_code == 200 and deleted.json()["id"] == upload_id
    assert client.get(f"/v1/datasets/{upload_id}").status_code == 404
    assert client.delete(f"/v1/datasets/{upload_id}").status_code == 404
    assert_nothing_left(settings)

    # retention: counted from the last upload; expired ones go at start-up and on list
    upload_id = post(client, zip_of(pets)).json()["id"]
    store = client.app.state.uploads  # type: ignore[attr-defined]
    assert store.purge_expired(now=time.time() + 29 * 86400) == []
    assert store.purge_expired(now=time.time() + 31 * 86400) == [upload_id]
    assert client.get("/v1/datasets").json() == []
    assert_nothing_left(settings)


def test_api_keys_apply(settings: Settings, pets: Path) -> None:
    keyed = settings.model_copy(update={"api_keys": [SecretStr("s3cret")]})
    with TestClient(create_app(keyed)) as c:
        assert post(c, zip_of(pets)).status_code == 401
        assert c.get("/v1/datasets").status_code == 401
        assert post(c, zip_of(pets), **{"X-API-Key": "s3cret"}).status_code == 201
    assert_nothing_left_in_staging(settings)


def test_uploads_are_documented_in_openapi(client: TestClient) -> None:
    operations = client.get("/openapi.json").json()["paths"]["/v1/datasets"]
    upload = operations["post"]
    assert "application/zip" in upload["requestBody"]["content"]
    assert {"200", "201", "413", "415", "422"} <= set(upload["responses"])
    assert "archive_bomb" in upload["responses"]["413"]["description"]
    assert "unsafe_archive_entry" in upload["responses"]["422"]["description"]


# -------------------------------------------------------------------------------------------- hostile uploads


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_zip_slip_is_refused(client: TestClient, settings: Settings, pets: Path, tmp_path: Path, kind: str) -> None:
    name = "cat/../../../../evil.txt"
    archive = zip_with({name: b"owned"}, pets) if kind == "zip" else tar_with([member(name, size=5)], pets)
    body = assert_refused(client, settings, archive, 422, "unsafe_archive_entry")
    assert body["entry"] == name and "'..'" in body["detail"]
    assert not list(tmp_path.rglob("evil.txt"))


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_absolute_paths_are_refused(
    client: TestClient, settings: Settings, pets: Path, tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "outside" / "abs.png"
    body = zip_with({str(target): b"x"}, pets) if kind == "zip" else tar_with([member(str(target), size=1)], pets)
    assert assert_refused(client, settings, body, 422, "unsafe_archive_entry")["entry"] == str(target)
    assert not target.exists() and not target.parent.exists()


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (member("cat/link.png", tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
        (member("cat/inside.png", tarfile.SYMTYPE, linkname="000.png"), "symbolic link"),  # even inside
        (member("cat/hard.png", tarfile.LNKTYPE, linkname="cat/000.png"), "hard link"),
        (member("cat/zero", tarfile.CHRTYPE), "device"),
        (member("cat/disk", tarfile.BLKTYPE), "device"),
        (member("cat/pipe", tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_tar_links_devices_and_fifos_are_refused(
    client: TestClient, settings: Settings, pets: Path, entry: tarfile.TarInfo, why: str
) -> None:
    body = assert_refused(client, settings, tar_with([entry], pets), 422, "unsafe_archive_entry")
    assert body["entry"] == entry.name and why in body["detail"]


def test_zip_symlink_entries_are_refused(client: TestClient, settings: Settings, pets: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("cat/link.png")
        info.create_system = 3
        info.external_attr = 0o120777 << 16  # S_IFLNK: what zip -y stores for a link
        archive.writestr(info, "/etc/passwd")
    assert "symbolic link" in assert_refused(client, settings, buffer.getvalue(), 422, "unsafe_archive_entry")["detail"]


@pytest.mark.parametrize("name", ["cat\\..\\..\\evil.png", "C:/evil.png", "cat/\x00.png"])
def test_windows_and_nul_names_are_refused(client: TestClient, settings: Settings, pets: Path, name: str) -> None:
    assert_refused(client, settings, tar_with([member(name, size=1)], pets), 422, "unsafe_archive_entry")


def test_duplicate_entries_are_refused(client: TestClient, settings: Settings, pets: Path) -> None:
    body = tar_with([member("cat/000.png", size=3)], pets)  # the second cat/000.png would overwrite the first
    assert "twice" in assert_refused(client, settings, body, 422, "unsafe_archive_entry")["detail"]


def test_zip_bomb_by_ratio(client: TestClient, settings: Settings) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("cat/bomb.bmp", "w") as fh:
        for _ in range(70):
            fh.write(bytes(1 << 20))  # 70 MiB of zeros: ~70 KiB deflated
    body = assert_refused(client, settings, buffer.getvalue(), 413, "archive_bomb")
    assert "times the archive" in body["detail"]


def test_a_huge_tar_header_is_refused(client: TestClient, settings: Settings, pets: Path) -> None:
    """tarfile reads a pax header whole: 9 MiB of it (a few KiB gzipped) is refused, not allocated."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as archive:
        info = member("cat/x.png", size=1)
        info.pax_headers = {"comment": "a" * (9 << 20)}
        archive.addfile(info, io.BytesIO(b"x"))
    assert_refused(client, settings, buffer.getvalue(), 413, "archive_bomb")


def test_extracted_bytes_are_counted_and_headers_not_trusted(pets: Path, tmp_path: Path) -> None:
    from service.errors import ArchiveBomb, TruncatedArchive

    archive = zip_of(pets)
    path = tmp_path / "a.zip"
    path.write_bytes(archive)
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveBomb):
        extract_archive(path, tmp_path / "out", Budget(max_files=100, max_bytes=1000, max_ratio=100.0))

    # Understate one entry's size in both its headers: zipfile stops at the stated size and its CRC check fails.
    lying = bytearray(archive)
    for signature, header, name_at, size_at in ((b"PK\x03\x04", 30, 26, 22), (b"PK\x01\x02", 46, 28, 24)):
        at = -1
        while (at := lying.find(signature, at + 1)) >= 0:
            (name_len,) = struct.unpack("<H", lying[at + name_at : at + name_at + 2])
            if lying[at + header : at + header + name_len] == b"bird/000.png":
                lying[at + size_at : at + size_at + 4] = struct.pack("<L", 10)
    path.write_bytes(bytes(lying))
    (tmp_path / "out2").mkdir()
    with pytest.raises(TruncatedArchive):
        extract_archive(path, tmp_path / "out2", Budget(max_files=100, max_bytes=1 << 30, max_ratio=100.0))


def test_too_many_files(settings: Settings, pets: Path) -> None:
    few = settings.model_copy(update={"max_upload_files": 5})
    with TestClient(create_app(few)) as c:
        assert_refused(c, few, zip_of(pets), 413, "too_many_files")  # from the zip's end record
        assert_refused(c, few, tar_with([], pets), 413, "too_many_files")  # counted while reading


def test_upload_too_large(settings: Settings, pets: Path) -> None:
    small = settings.model_copy(update={"max_upload_bytes": 2048})
    with TestClient(create_app(small)) as c:
        body = assert_refused(c, small, zip_of(pets), 413, "upload_too_large")
        assert "2048" in body["detail"]


def test_an_upload_the_disk_cannot_hold_is_refused_before_the_first_byte(settings: Settings, pets: Path) -> None:
    full = settings.model_copy(update={"min_free_disk_bytes": 2**62})
    with TestClient(create_app(full)) as c:
        body = assert_refused(c, full, zip_of(pets), 507, "upload_disk_full")
        assert "MiB must stay free" in body["detail"] and body["min_free_bytes"] == 2**62


def test_a_chunked_upload_the_disk_cannot_hold_is_refused_while_it_streams(settings: Settings, pets: Path) -> None:
    full = settings.model_copy(update={"min_free_disk_bytes": 2**62})
    with TestClient(create_app(full)) as c:
        response = c.post("/v1/datasets", content=iter([zip_of(pets)]), headers={"Content-Type": "application/zip"})
    assert (response.status_code, response.json()["code"]) == (507, "upload_disk_full")
    assert_nothing_left(full)


def test_an_archive_the_disk_cannot_hold_extracted_is_refused_before_extracting(
    client: TestClient, settings: Settings, pets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.uploads import store

    archive = zip_of(pets)
    real = shutil.disk_usage
    answers = iter([len(archive) + 4096])  # room for the archive, then none for its files

    def disk_usage(path: Any) -> Any:
        free = next(answers, 0)
        return real(path)._replace(free=free)

    monkeypatch.setattr(store.shutil, "disk_usage", disk_usage)
    body = assert_refused(client, settings, archive, 507, "upload_disk_full")
    assert body["detail"].startswith("extracting the archive needs")


@pytest.mark.parametrize("kind", ["zip", "tar", "tar-at-header", "tar.gz"])
def test_truncated_archives(client: TestClient, settings: Settings, pets: Path, kind: str) -> None:
    if kind == "zip":
        archive = zip_of(pets)
        body = archive[: len(archive) // 2]
    elif kind == "tar.gz":
        archive = tar_with([], pets, mode="w:gz")
        body = archive[: len(archive) - 200]
    else:
        archive = tar_with([], pets)
        # mid-data of the second member, or exactly after the second member's data (a header boundary)
        first_size = (os.path.getsize(sorted(pets.rglob("*.png"))[0]) + 511) // 512 * 512
        body = archive[: 512 + first_size + (512 + 100 if kind == "tar" else 0)]
    assert_refused(client, settings, body, 422, "truncated_archive")


@pytest.mark.parametrize(
    "body",
    [b"hello, world", os.urandom(4096), gzip.compress(b"just some text, no tar inside" * 40), b""],
    ids=["text", "random", "gzip-not-tar", "empty"],
)
def test_not_an_archive(client: TestClient, settings: Settings, body: bytes) -> None:
    assert_refused(client, settings, body, 415, "not_an_archive")


def test_a_form_upload_is_told_to_send_the_archive(client: TestClient, settings: Settings, pets: Path) -> None:
    response = client.post("/v1/datasets", files={"file": ("pets.zip", zip_of(pets), "application/zip")})
    assert (response.status_code, response.json()["code"]) == (415, "not_an_archive")
    assert "request body" in response.json()["detail"]
    assert_nothing_left(settings)


def test_no_images_and_one_class(client: TestClient, settings: Settings, pets: Path) -> None:
    body = assert_refused(client, settings, zip_with({"a/readme.txt": b"text", "b/x.csv.bak": b"1"}), 422, "no_images")
    assert body["skipped"] == {"unsupported_format": 2}
    assert_refused(client, settings, zip_of(pets / "cat", prefix="cat/"), 422, "too_few_classes")


# ------------------------------------------------------------------------------------- streaming, client, CLI


@pytest.fixture
def serve() -> Iterator[Callable[[Settings], str]]:
    """Starts the app for some settings under a real uvicorn on 127.0.0.1 (in a thread): bodies arrive in chunks,
    as from a network. Returns its URL."""
    import uvicorn

    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(settings: Settings) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def live_server(serve: Callable[[Settings], str], settings: Settings) -> str:
    return serve(settings)


def chunked(data: bytes, size: int = 7919) -> Callable[[], Iterator[bytes]]:
    return lambda: (data[i : i + size] for i in range(0, len(data), size))


def test_streamed_chunked_upload_over_http(live_server: str, settings: Settings, pets: Path) -> None:
    archive = zip_of(pets)
    # chunked transfer encoding, no Content-Length: counted while it streams
    response = httpx.post(f"{live_server}/v1/datasets", content=chunked(archive)(), timeout=30)
    assert response.status_code == 201, response.text
    assert response.json()["n_images"] == 8
    assert_nothing_left_in_staging(settings)


def test_streamed_upload_over_the_limit_is_answered_midway(
    serve: Callable[[Settings], str], settings: Settings
) -> None:
    """A chunked body (no Content-Length) over the limit gets its 413 while the client is still sending."""
    small = settings.model_copy(update={"max_upload_bytes": 1 << 20})
    port = int(serve(small).rsplit(":", 1)[1])
    block = b"%x\r\n%s\r\n" % (1 << 16, bytes(1 << 16))
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/datasets HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        while not select.select([sock], [], [], 0)[0]:
            assert sent < 64 << 20, "no answer after 64 MiB"
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(block)
                sent += 1 << 16
        answer = b""
        with contextlib.suppress(ConnectionResetError):  # it closes the connection, with our body unread
            while chunk := sock.recv(65536):
                answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and '"code":"upload_too_large"' in answer, answer
    assert sent < 8 << 20  # refused soon after the first MiB, not after the client had sent everything
    assert_nothing_left(small)


def test_client_uploads_a_folder(live_server: str, settings: Settings, pets: Path, tmp_path: Path) -> None:
    from service.client import Client, ClientError

    archive = tmp_path / "pets.tar.gz"
    archive.write_bytes(tar_with([], pets, mode="w:gz"))
    os.symlink("/etc/passwd", pets / "cat" / "link.png")  # left out by the client's zip, not sent
    with Client(live_server) as client:
        uploaded = client.upload_dataset(pets)
        assert uploaded["class_counts"] == {"bird": 2, "cat": 3, "dog": 3} and uploaded["name"] == "pets"
        assert client.upload_dataset(pets)["id"] == uploaded["id"]  # zipped the same way: the same archive
        assert [d["id"] for d in client.uploaded_datasets()] == [uploaded["id"]]
        assert client.upload_dataset(archive)["format"] == "tar.gz"
        with pytest.raises(ClientError) as refused:
            client.upload_dataset(tmp_path / "local" / "missing")
        assert refused.value.code == "dataset_not_found"
        assert client.delete_dataset(uploaded["ref"])["id"] == uploaded["id"]
    assert_nothing_left_in_staging(settings)


def test_cli_rank_server_upload(live_server: str, settings: Settings, pets: Path, monkeypatch) -> None:
    """``rank --server URL --upload PATH`` uploads the folder, then submits the ranking with its upload:<id>
    (the submission itself is the usual --server path, replaced here: no worker runs)."""
    from service.cli import app
    from service.cli import rank as rank_module

    submitted: list[Any] = []

    def fake_on_server(server: str, request: Any, json_output: bool) -> Any:
        submitted.append((server, request))
        raise SystemExit(0)

    monkeypatch.setattr(rank_module, "_on_server", fake_on_server)
    runner = CliRunner()
    result = runner.invoke(app, ["rank", "--server", live_server, "--upload", str(pets), "-b", "random:resnet10t"])
    assert result.exit_code == 0, result.output
    ((server, request),) = submitted
    assert server == live_server and request.dataset.kind == "upload" and request.backbones == ["random:resnet10t"]
    assert httpx.get(f"{live_server}/v1/datasets/{request.dataset.name}").json()["n_images"] == 8
    assert f"upload:{request.dataset.name}" in result.output

    for args, message in [
        (["rank", "--upload", str(pets), "-b", "x"], "--server"),
        (["rank", str(pets), "--server", live_server, "--upload", str(pets), "-b", "x"], "not both"),
        (["rank", "-b", "x"], "DATASET"),
    ]:
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2 and message in refused.output, refused.output
    # A bad option is refused before anything is uploaded.
    refused = runner.invoke(app, ["rank", "--server", live_server, "--upload", str(pets), "-b", "x", "--seed", "-1"])
    assert refused.exit_code == 2


def test_cli_finetune_server_upload(live_server: str, pets: Path, monkeypatch) -> None:
    """``finetune --server URL --upload PATH`` uploads the folder and fine-tunes on its upload:<id>, also in place of
    a --winner ranking's dataset."""
    from service.cli import app
    from service.cli import finetune as finetune_module

    submitted: list[Any] = []

    def fake_on_server(server: str, request: Any, json_output: bool) -> Any:
        submitted.append((server, request))
        raise SystemExit(0)

    monkeypatch.setattr(finetune_module, "_on_server", fake_on_server)
    runner = CliRunner()
    args = ["finetune", "--server", live_server, "--upload", str(pets), "-b", "random:resnet10t", "--epochs", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ((server, request),) = submitted
    assert server == live_server and request.dataset.kind == "upload" and request.epochs == 2
    assert httpx.get(f"{live_server}/v1/datasets/{request.dataset.name}").json()["n_images"] == 8

    for args, message in [
        (["finetune", "--upload", str(pets), "-b", "x"], "--server"),
        (["finetune", str(pets), "--server", live_server, "--upload", str(pets), "-b", "x"], "not both"),
    ]:
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2 and message in refused.output, refused.output
    # a bad option is refused before anything is uploaded
    refused = runner.invoke(
        app, ["finetune", "--server", live_server, "--upload", str(pets), "-b", "x", "--epochs", "0"]
    )
    assert refused.exit_code == 2 and len(submitted) == 1


def test_cli_upload_error_is_one_line(live_server: str, tmp_path: Path) -> None:
    from service.cli import app

    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "x.txt").write_text("no image")
    result = CliRunner().invoke(app, ["rank", "--server", live_server, "--upload", str(empty), "-b", "x"])
    assert result.exit_code == 2 and "[no_images]" in result.output


@pytest.mark.slow
def test_cli_ranks_an_uploaded_folder_end_to_end(
    server_factory: list[ServerProcess], tmp_path: Path, pets: Path
) -> None:
    """``backbone-rank rank --server URL --upload PATH`` against ``serve`` with a real worker: the folder is not
    under the server's data roots, so only the upload lets the server see it; the worker ranks ``upload:<id>``."""
    data_root = tmp_path / "server-data"
    data_root.mkdir()
    server = ServerProcess(server_env(tmp_path, data_root), tmp_path).start()
    server_factory.append(server)
    command = [sys.executable, "-m", "service.cli", "rank", "--server", server.url, "--upload", str(pets)]
    command += ["-b", "random:test_resnet", "-b", "random:resnet10t", "--json"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:] + server.tail()
    result = json.loads(done.stdout)
    assert result["dataset"]["ref"]["kind"] == "upload" and result["dataset"]["n_classes"] == 3
    assert result["dataset"]["n_images"] == 8 and len(result["backbones"]) == 2
    assert "upload:" in done.stderr
