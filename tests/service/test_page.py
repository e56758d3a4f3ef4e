"""The page at ``/`` (service/page/): served whole with nothing from other hosts, open without a key; then driven
in the system Chromium by Playwright against a real ``backbone-rank serve`` (uvicorn on 127.0.0.1 and a worker):
upload an archive, rank, follow the progress, fine-tune the winner, download its weights; and with API keys on,
the key prompt instead of any data.

Screenshots go to the test's tmp dir (the path is printed: ``pytest -s`` shows it).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load_file

from service.config import Settings
from service.main import create_app
from service.page import ASSETS

from .conftest import ServerProcess, server_env, write_image_folder

BACKBONES = ["random:test_resnet", "random:test_vit"]
KEY = "page-test-key"


# ------------------------------------------------------------------------------------------------ no browser


def test_page_is_served_whole_with_no_outside_urls(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        bodies = {}
        for path, (_, media_type) in ASSETS.items():
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"] == media_type
            bodies[path] = answer.text
        page = bodies["/"]
        assert "default-src 'self'" in client.get("/").headers["content-security-policy"]
        openapi = client.get("/openapi.json").json()
    # Nothing fetched from another host: no CDN, works offline.
    for path, body in bodies.items():
        assert not re.search(r"https?://", body), path
        assert not re.search(r"""(src|href)\s*=\s*["']//""", body), path
    assert '<script src="/page/page.js"' in page and 'href="/page/page.css"' in page
    assert "/" not in openapi["paths"]  # the page is no API operation
    # Every API path the script calls is one the API documents.
    script = bodies["/page/page.js"]
    called = set(re.findall(r"""[`"'](/v1/[a-z]+(?:/[a-z]+)?)""", script))
    assert {"/v1/datasets", "/v1/rankings", "/v1/finetunes", "/v1/backbones", "/v1/models"} <= called
    assert called <= set(openapi["paths"]), called - set(openapi["paths"])


def test_page_needs_no_key_but_the_data_does(tmp_path: Path, data_root: Path) -> None:
    settings = Settings(cache_dir=tmp_path / "c", data_roots=[data_root], api_keys=[KEY])
    with TestClient(create_app(settings)) as client:
        for path in ASSETS:
            assert client.get(path).status_code == 200, path
        for path in ("/v1/rankings", "/v1/finetunes", "/v1/backbones", "/reports/benchmarks", "/page/other.js"):
            assert client.get(path).status_code == 401, path
        assert client.get("/v1/rankings", headers={"X-API-Key": KEY}).status_code == 200


# ------------------------------------------------------------------------------------------------ in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    from tests.reports.chromium import chromium_path

    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _archive(tmp: Path) -> Path:
    """pets.zip: pets/{cat,dog,fox}/*.png, 6 each."""
    folder = write_image_folder(tmp / "pets", {"cat": 6, "dog": 6, "fox": 6}, size=16)
    archive = tmp / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for png in sorted(folder.rglob("*.png")):
            zf.write(png, png.relative_to(tmp).as_posix())
    return archive


def _newest(server: ServerProcess, kind: str) -> dict[str, Any]:
    """The newest job of ``kind``, whole (a list may give summaries; one job's GET gives its result)."""
    newest = httpx.get(f"{server.url}/v1/{kind}s?limit=1").json()[0]
    return httpx.get(f"{server.url}/v1/{kind}s/{newest['id']}").json()


def _shots(tmp: Path) -> Path:
    shots = tmp / "screenshots"
    shots.mkdir(exist_ok=True)
    print(f"\npage screenshots: {shots}")
    return shots


_WATCH_PROGRESS = """() => {
  window.seen = [];
  const status = document.getElementById("job-status");
  new MutationObserver(() => window.seen.push({
    text: status.textContent, value: document.getElementById("job-progress").value,
  })).observe(status, {childList: true, characterData: true, subtree: true});
}"""


def test_upload_rank_and_finetune_the_winner_in_the_browser(
    browser: Any, tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    archive = _archive(tmp_path)
    shots = _shots(tmp_path)
    # Each progress event waits a little, so that the page can be seen following a ranking of tiny models.
    extra = {"BACKBONE_RANK_BATCH_SIZE": "4", "BACKBONE_RANK_FAULT_PROGRESS_DELAY_S": "0.1"}
    server = ServerProcess(server_env(tmp_path, data, **extra), tmp_path)
    server_factory.append(server)
    server.start()

    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server.url + "/")
    page.wait_for_selector("#main:not([hidden])")
    assert page.is_hidden("#key-section")

    # 1. The images: an archive of three class folders.
    page.set_input_files("#archive-input", str(archive))
    page.wait_for_selector("#upload-status .ok", timeout=60_000)
    assert "18 images in 3 classes: cat (6), dog (6), fox (6)" in page.inner_text("#upload-status")
    # 2. The candidates, named one by one.
    page.get_by_label("Pick them one by one").check()
    page.get_by_label("Other network ids").fill("\n".join(BACKBONES))
    page.screenshot(path=str(shots / "1-form.png"), full_page=True)

    page.evaluate(_WATCH_PROGRESS)
    page.get_by_role("button", name="Rank the networks").click()
    page.wait_for_selector("#results:not([hidden])", timeout=240_000)
    seen = page.evaluate("window.seen")
    texts = [s["text"] for s in seen]
    assert any("reading the images" in t for t in texts), texts
    assert len({s["value"] for s in seen}) >= 2, seen  # the bar moved
    assert page.inner_text("#job-status").startswith("Done: 2 networks ranked")

    rows = page.locator("#ranking-table tbody tr")
    assert rows.count() == 2
    ranking = _newest(server, "ranking")
    result = ranking["result"]
    for i, row in enumerate(result["backbones"]):
        cells = rows.nth(i).locator("td, th").all_inner_texts()
        assert cells[0] == str(row["rank"]) and cells[1] == row["id"]
        guess = row["predicted_accuracy"]["finetune"]
        expected = (
            f"about {round(guess['value'] * 100)} % (likely between {round(guess['low'] * 100)} % and "
            f"{round(guess['high'] * 100)} %)"
        )
        assert cells[2] == expected
        assert cells[3] == f"{round(row['p_best'] * 100)} %"
        assert cells[4] == row["transfer"]["advice"]  # how to transfer it, in words
    notes = page.inner_text("#notes")
    assert "18 images in 3 classes" in notes and result["fusion"]["note"] in notes
    report = page.get_attribute("#ranking-report", "href")
    assert report == f"/reports/rankings/{ranking['id']}"
    page.screenshot(path=str(shots / "2-ranked.png"), full_page=True)

    # Readable on a phone: nothing wider than the window.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(shots / "3-ranked-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1200, "height": 900})

    # 3. The winner's fine-tune, one click away (a quick one: a linear head, two epochs, small images).
    winner = result["backbones"][0]["id"]
    button = page.get_by_role("button", name=f"Fine-tune the winner ({winner})")
    page.get_by_label("How to train it").select_option("linear")
    page.locator("#finetune summary").click()
    page.get_by_label("Epochs").fill("2")
    page.get_by_label("Image size in pixels").fill("16")
    button.click()
    page.wait_for_selector("#finetune-links:not([hidden])", timeout=240_000)
    accuracy = page.inner_text("#finetune-accuracy")
    finetune = _newest(server, "finetune")
    measured = round(finetune["result"]["test_accuracy"]["mean"] * 100)
    assert accuracy.startswith(f"Measured accuracy on images kept aside for testing: {measured} %"), accuracy
    assert "the ranking expected about" in accuracy
    assert finetune["result"]["backbone"]["id"] == winner and finetune["request"]["ranking_id"] == ranking["id"]
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the fine-tuned weights").click()
    weights = tmp_path / "weights.safetensors"
    download.value.save_as(weights)
    assert load_file(weights)
    page.screenshot(path=str(shots / "4-finetuned.png"), full_page=True)

    # Earlier jobs: both listed, with their reports.
    page.get_by_role("button", name="Refresh").click()
    page.wait_for_function("document.querySelectorAll('#finetune-list a').length >= 2")
    assert "done" in page.inner_text("#ranking-list") and winner in page.inner_text("#ranking-list")
    assert page.locator(f'#ranking-list a[href="{report}"]').count() == 1
    assert not errors, errors
    context.close()


def test_with_api_keys_the_page_asks_for_the_key_first(
    browser: Any, tmp_path: Path, server_factory: list[ServerProcess]
) -> None:
    data = write_image_folder(tmp_path / "data" / "pets", {"cat": 3, "dog": 3}, size=16).parent
    keys = {"BACKBONE_RANK_API_KEYS": json.dumps([KEY]), "BACKBONE_RANK_PUBLIC_PATHS": json.dumps(["/readyz"])}
    server = ServerProcess(server_env(tmp_path, data, **keys), tmp_path)
    server_factory.append(server)
    server.start()
    body = {"dataset": {"kind": "folder", "path": str(data / "pets")}, "backbones": ["random:test_resnet"]}
    job = httpx.post(f"{server.url}/v1/rankings", json=body, headers={"X-API-Key": KEY}).json()
    httpx.delete(f"{server.url}/v1/rankings/{job['id']}", headers={"X-API-Key": KEY})
    shots = _shots(tmp_path)

    context = browser.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    page.goto(server.url + "/", wait_until="networkidle")  # the page has settled: its content can be read
    page.wait_for_selector("#key-section:not([hidden])")
    assert page.is_hidden("#main")
    assert job["id"] not in page.content() and page.locator("#ranking-list li").count() == 0
    page.screenshot(path=str(shots / "key-prompt.png"), full_page=True)

    page.get_by_label("API key", exact=True).fill("not-the-key")
    page.get_by_role("button", name="Continue").click()
    page.wait_for_selector("#key-error:has-text('not accepted')")
    assert page.is_hidden("#main")

    page.get_by_label("API key", exact=True).fill(KEY)
    page.get_by_role("button", name="Continue").click()
    page.wait_for_selector("#main:not([hidden])")
    page.wait_for_selector("#ranking-list li .summary")
    assert "pets" in page.inner_text("#ranking-list")
    assert page.evaluate("sessionStorage.getItem('backbone-rank-api-key')") == KEY
    # A folder, zipped in the browser and sent with the key; zipped the same way twice, it is the same upload.
    folder = write_image_folder(tmp_path / "birds", {"crow": 3, "owl": 3, "wren": 2}, size=12)
    uploaded = []
    for _ in range(2):
        page.set_input_files("#folder-input", str(folder))
        page.wait_for_selector("#upload-status .ok")
        assert "8 images in 3 classes: crow (3), owl (3), wren (2)" in page.inner_text("#upload-status")
        uploaded.append(page.evaluate("state.upload"))
    assert uploaded[0]["id"] == uploaded[1]["id"] and uploaded[0]["format"] == "zip"
    assert uploaded[0]["name"] == "birds" and not uploaded[0]["skipped"]
    # A protected page opened from a link: fetched with the key, shown from a blob.
    with context.expect_page() as opened:
        page.get_by_role("link", name="Benchmark reports").click()
    report = opened.value
    # the tab opens blank, then goes to the blob once the report is fetched: wait for that navigation to end
    report.wait_for_url(re.compile(r"^blob:"))
    report.wait_for_load_state()
    assert "benchmark" in report.content().lower() and "unauthorized" not in report.content()
    page.screenshot(path=str(shots / "key-accepted.png"), full_page=True)
    # A reload in the same tab keeps the key (sessionStorage): no prompt again.
    page.reload()
    page.wait_for_selector("#main:not([hidden])")
    assert page.is_hidden("#key-section")
    context.close()
