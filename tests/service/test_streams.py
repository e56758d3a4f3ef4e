"""Event streams (SSE) under load: one poller per job however many streams follow it, the caps (429
``too_many_streams``), the lifetime bound (a final ``reconnect`` event, which the Python client follows).

Open streams need a real server (the TestClient buffers a response until it ends): uvicorn in a thread on
127.0.0.1, so the test can count the store's reads in the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from service.client import Client
from service.config import Settings
from service.main import create_app
from service.streams import POLL_SECONDS

from .conftest import free_port, write_image_folder


@contextlib.contextmanager
def live_server(settings: Settings) -> Iterator[tuple[FastAPI, str]]:
    """The app served by uvicorn in a thread on 127.0.0.1; ``(app, base url)``."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _settings(settings: Settings, **changes: Any) -> Settings:
    return Settings(**{**settings.model_dump(), **changes})


def _submit(url: str, data_root: Path, seed: int = 0, headers: dict[str, str] | None = None) -> str:
    dataset = write_image_folder(data_root / "pets", {"cat": 2, "dog": 2}, size=8)
    body = {"dataset": {"kind": "folder", "path": str(dataset)}, "backbones": ["random:resnet10t"], "seed": seed}
    response = httpx.post(f"{url}/v1/rankings", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    event = "message"
    async for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_streams_of_one_job_share_one_poller(settings: Settings, data_root: Path) -> None:
    n, window = 40, 2.0
    with live_server(_settings(settings, max_event_streams=n)) as (app, url):
        job_id = _submit(url, data_root)
        store, streams = app.state.store, app.state.streams
        reads: Counter[str] = Counter()
        read = store.get

        def counted(job: str) -> Any:
            reads[job] += 1
            return read(job)

        store.get = counted  # every reader of the job's row goes through the store's get

        async def follow() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client, contextlib.AsyncExitStack() as stack:
                responses = [
                    await stack.enter_async_context(client.stream("GET", f"/v1/rankings/{job_id}/events"))
                    for _ in range(n)
                ]
                assert [r.status_code for r in responses] == [200] * n
                followers = [_events(r.aiter_lines()) for r in responses]
                queued = ("state", {"id": job_id, "state": "queued", "attempts": 0})
                assert [await anext(f) for f in followers] == [queued] * n
                assert streams.open == n and streams.pollers == 1
                before = reads[job_id]
                await asyncio.sleep(window)
                polled = reads[job_id] - before
                # One poller: about window / POLL_SECONDS reads, where a poll per stream made n times as many.
                assert 0 < polled <= window / POLL_SECONDS + 3, polled
                # A change reaches every stream through that one poller.
                await asyncio.to_thread(store.claim, "w1")
                await asyncio.to_thread(store.set_progress, job_id, "w1", {"stage": "extract", "done": 1, "total": 2})
                for follower in followers:
                    assert await anext(follower) == ("state", {"id": job_id, "state": "running", "attempts": 1})
                    assert await anext(follower) == ("progress", {"stage": "extract", "done": 1, "total": 2})

        asyncio.run(follow())
        # The streams are gone: their slots are free and the job's poller stopped.
        _wait_for(lambda: streams.open == 0 and streams.pollers == 0)


def test_streams_beyond_the_caps_are_429_too_many_streams(settings: Settings, data_root: Path) -> None:
    limits = {"max_event_streams": 3, "max_event_streams_per_key": 2, "api_keys": ["key-a", "key-b"]}
    with live_server(_settings(settings, **limits)) as (app, url):
        a, b = {"X-API-Key": "key-a"}, {"X-API-Key": "key-b"}
        job_id = _submit(url, data_root, headers=a)
        events = f"/v1/rankings/{job_id}/events"

        async def follow() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client, contextlib.AsyncExitStack() as stack:

                async def open_stream(headers: dict[str, str]) -> httpx.Response:
                    return await stack.enter_async_context(client.stream("GET", events, headers=headers))

                assert [(await open_stream(a)).status_code for _ in range(2)] == [200, 200]
                per_key = await client.get(events, headers=a)  # a third of key a's
                assert per_key.status_code == 429 and per_key.json()["code"] == "too_many_streams"
                assert per_key.json()["limit"] == 2 and per_key.headers["retry-after"] == "5"
                assert (await open_stream(b)).status_code == 200  # another key still may
                overall = await client.get(events, headers=b)  # the service's third stream was the last
                assert overall.status_code == 429 and overall.json()["code"] == "too_many_streams"
                assert overall.json()["limit"] == 3
                assert app.state.streams.open == 3

        asyncio.run(follow())
        _wait_for(lambda: app.state.streams.open == 0)
        with httpx.stream("GET", f"{url}{events}", headers=a) as again:  # closed streams gave their slots back
            assert again.status_code == 200
        assert httpx.get(f"{url}/openapi.json", headers=a).json()["paths"]["/v1/rankings/{job_id}/events"]["get"][
            "responses"
        ]["429"]


def test_a_stream_ends_after_its_lifetime_with_reconnect_and_the_client_follows_on(
    settings: Settings, data_root: Path
) -> None:
    with live_server(_settings(settings, event_stream_max_seconds=0.5)) as (app, url):
        job_id = _submit(url, data_root)
        began = time.monotonic()
        with httpx.stream("GET", f"{url}/v1/rankings/{job_id}/events", timeout=30) as response:
            text = "".join(response.iter_text())
        assert 0.4 < time.monotonic() - began < 5
        blocks = [block for block in text.split("\n\n") if block.strip()]
        assert [next(line[7:] for line in b.splitlines() if line.startswith("event: ")) for b in blocks] == [
            "state",
            "reconnect",
        ]
        reconnect = json.loads(next(line[6:] for line in blocks[-1].splitlines() if line.startswith("data: ")))
        assert reconnect["id"] == job_id and reconnect["state"] == "queued"
        assert reconnect["url"] == f"/v1/rankings/{job_id}/events" and "retry: 1000" in blocks[-1]
        _wait_for(lambda: app.state.streams.open == 0)

        # The client reopens a stream that ended with reconnect, and still sees the job end.
        store = app.state.store

        def finish_later() -> None:
            time.sleep(1.6)
            store.claim("w1")
            store.finish(job_id, "w1", "failed", error={"code": "empty_dataset", "detail": "no images"})

        finisher = threading.Thread(target=finish_later)
        finisher.start()
        with Client(url) as client:
            final = client.wait("ranking", job_id, timeout=30)
            listed = client.list_rankings(limit=5)  # the client reads the list's summaries
        finisher.join()
        assert final["state"] == "failed" and final["error"]["code"] == "empty_dataset"
        assert [(job["id"], job["state"], job["summary"]["winner"]) for job in listed] == [(job_id, "failed", None)]
        metrics = httpx.get(f"{url}/metrics").text
        opened = [line for line in metrics.splitlines() if 'route="/v1/rankings/{job_id}/events",status="200"' in line]
        assert opened and float(opened[0].rsplit(" ", 1)[1]) >= 3  # the first stream, then at least two by the client


def test_poller_reads_no_row_once_nobody_follows(settings: Settings, data_root: Path) -> None:
    """Streams that end (here by their lifetime) stop their job's poller: nothing polls a job nobody follows."""
    with live_server(_settings(settings, event_stream_max_seconds=0.3)) as (app, url):
        job_id = _submit(url, data_root)
        for _ in range(3):
            with httpx.stream("GET", f"{url}/v1/rankings/{job_id}/events", timeout=30) as response:
                assert "event: reconnect" in "".join(response.iter_text())
        _wait_for(lambda: app.state.streams.open == 0 and app.state.streams.pollers == 0)
        reads: Counter[str] = Counter()
        read = app.state.store.get
        app.state.store.get = lambda job: reads.update([job]) or read(job)
        time.sleep(1.0)
        assert reads[job_id] == 0
