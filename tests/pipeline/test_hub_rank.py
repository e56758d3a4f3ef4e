"""`backbone-rank rank` with backbones fetched from a stand-in hub on 127.0.0.1 (HF_ENDPOINT): download, the
pinned revision in the result, a second run with the hub gone, a pickle-only repo, an unreachable hub, and
candidates whose weights cannot be had left out."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.fake_hub import FakeHub, Repo, running_hub

ROOT = Path(__file__).resolve().parents[2]
TAG = "r160_in1k"


def _repo_files(arch: str, tmp: Path) -> dict[str, bytes]:
    """A timm hub repo as timm writes one (config.json + model.safetensors), for a tiny test model."""
    import timm
    from timm.models._hub import save_for_hf

    model = timm.create_model(f"{arch}.{TAG}", pretrained=False)
    folder = tmp / arch
    save_for_hf(model, str(folder), safe_serialization="both")  # both: the repo also ships the pickle file
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    tmp = tmp_path_factory.mktemp("repos")
    fake = FakeHub()
    files = _repo_files("test_resnet", tmp)
    fake.add(Repo(f"timm/test_resnet.{TAG}", files, branches=("main", "v1")))
    pickles = {name: data for name, data in _repo_files("test_efficientnet", tmp).items() if "safetensors" not in name}
    fake.add(Repo(f"timm/test_efficientnet.{TAG}", pickles))
    with running_hub(fake) as running:
        yield running


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "blue")):
        (root / name).mkdir()
        for i in range(4):
            pixels = np.clip(np.full((32, 32, 3), 60 + 120 * k) + rng.normal(0, 30, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def _rank(args: list[str], endpoint: str, home: Path, timeout_s: float = 3.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "BACKBONE_RANK_OFFLINE")}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home / "hf"),
        BACKBONE_RANK_CACHE_DIR=str(home / "cache"),
        BACKBONE_RANK_HUB_TIMEOUT_S=str(timeout_s),
        BACKBONE_RANK_DEVICE="cpu",
    )
    command = [sys.executable, "-m", "service.cli", "rank", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def _rows(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert proc.returncode == 0, proc.stderr
    return {row["id"]: row for row in json.loads(proc.stdout)["backbones"]}


def test_download_rank_then_rank_again_with_the_hub_gone(hub: FakeHub, images: Path, tmp_path: Path) -> None:
    repo = hub.repos[0]
    args = [str(images), "-b", f"test_resnet.{TAG}@v1", "-b", "random:test_resnet", "--json"]
    first = _rows(_rank(args, hub.url, tmp_path))
    row = first[f"test_resnet.{TAG}@v1"]
    assert row["revision"] == repo.sha and row["weights_source"] == f"hub:timm/test_resnet.{TAG}"
    assert row["params_m"] == pytest.approx(0.47, abs=0.01) and row["num_source_classes"] == 1000
    assert [path for method, path in hub.requests if method == "GET" and "/resolve/" in path] == [
        f"/timm/test_resnet.{TAG}/resolve/v1/model.safetensors"
    ]
    # the same ranking with nothing listening at the endpoint: the HF cache answers, nothing is asked
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    gone = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    again = _rows(_rank(args, gone, tmp_path))
    assert again[f"test_resnet.{TAG}@v1"]["revision"] == repo.sha
    assert again[f"test_resnet.{TAG}@v1"]["weights_source"] == f"hf-cache:timm/test_resnet.{TAG}"
    assert again[f"test_resnet.{TAG}@v1"]["weights_sha256"] == row["weights_sha256"]
    # hf-hub: ids read the repo's own config.json (fetched now; the weights are cached); then --offline
    hub.requests.clear()
    hub_args = [str(images), "-b", f"hf-hub:timm/test_resnet.{TAG}", "--json"]
    hub_id = _rows(_rank(hub_args, hub.url, tmp_path))[f"hf-hub:timm/test_resnet.{TAG}"]
    assert hub_id["weights_sha256"] == row["weights_sha256"] and hub_id["revision"] == repo.sha
    assert [path for method, path in hub.requests if method == "GET" and "/resolve/" in path] == [
        f"/timm/test_resnet.{TAG}/resolve/main/config.json"
    ]
    offline = _rows(_rank([*hub_args, "--offline"], gone, tmp_path))[f"hf-hub:timm/test_resnet.{TAG}"]
    assert offline["weights_source"] == f"hf-cache:timm/test_resnet.{TAG}" and offline["revision"] == repo.sha


def test_refusals_are_clear_and_fast(hub: FakeHub, images: Path, tmp_path: Path) -> None:
    pickled = _rank([str(images), "-b", f"test_efficientnet.{TAG}"], hub.url, tmp_path)
    assert pickled.returncode == 2 and "error [unsafe_checkpoint_format]" in pickled.stderr
    assert "pytorch_model.bin" in " ".join(pickled.stderr.split())
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts, never answers
    try:
        began = time.monotonic()
        unreachable = _rank([str(images), "-b", f"test_vit.{TAG}"], f"http://127.0.0.1:{silent.getsockname()[1]}",
                            tmp_path, timeout_s=1.0)  # fmt: skip
        elapsed = time.monotonic() - began
    finally:
        silent.close()
    assert unreachable.returncode == 2 and "error [hub_unreachable]" in unreachable.stderr
    assert elapsed < 60  # the CLI's own start (torch, timm) included; the hub's share is the 1 s timeout
    offline = _rank([str(images), "-b", f"test_vit.{TAG}", "--offline"], hub.url, tmp_path)
    assert offline.returncode == 2 and "error [weights_unavailable]" in offline.stderr
    assert "not --offline" in " ".join(offline.stderr.split())


def test_candidates_whose_weights_cannot_be_had_are_left_out_and_named(
    hub: FakeHub, images: Path, tmp_path: Path
) -> None:
    args = [str(images), "-b", f"test_resnet.{TAG}", "-b", f"test_vit.{TAG}", "-b", f"test_efficientnet.{TAG}",
            "-b", "random:test_resnet", "--skip-unavailable", "--json"]  # fmt: skip
    proc = _rank(args, hub.url, tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {row["id"] for row in result["backbones"]} == {f"test_resnet.{TAG}", "random:test_resnet"}
    left_out = {item["id"]: item["code"] for item in result["unavailable"]}
    assert left_out == {f"test_vit.{TAG}": "unknown_backbone", f"test_efficientnet.{TAG}": "unsafe_checkpoint_format"}
    assert result["request"]["skip_unavailable"] is True
    # the table run says it in one line per reason
    table = _rank([arg for arg in args if arg != "--json"], hub.url, tmp_path)
    assert table.returncode == 0, table.stderr
    said = " ".join(table.stderr.split())
    assert f"left out 1 [unsafe_checkpoint_format]: test_efficientnet.{TAG}. To get them:" in said
    assert f"left out 1 [unknown_backbone]: test_vit.{TAG}." in said
