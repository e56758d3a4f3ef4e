"""Hub datasets against a stand-in hub on 127.0.0.1: parquet (HF Image/ClassLabel features) and imagefolder
repos, split choice, column detection, the per-class sample before decoding, offline reuse."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from service.errors import DatasetNotFound, DownloadNotAllowed, InvalidDataset  # noqa: E402
from service.pipeline.data.hub_dataset import materialize_hub_dataset  # noqa: E402
from service.pipeline.models.hub import HubAccess  # noqa: E402
from tests.fake_hub import FakeHub, Repo, access_to, running_hub  # noqa: E402

CLASSES = ["cat", "dog", "fish"]


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _parquet(labels: list[int], *, start: int = 0, features: bool = True, label_name: str = "label") -> bytes:
    images = [{"bytes": _png((start + i) % 256), "path": None} for i in range(len(labels))]
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(images, type=image_type), label_name: pa.array(labels, type=pa.int64())})
    if features:
        hf = {
            "info": {"features": {"image": {"_type": "Image"}, label_name: {"_type": "ClassLabel", "names": CLASSES}}}
        }
        table = table.replace_schema_metadata({b"huggingface": json.dumps(hf).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=4)
    return buffer.getvalue()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    train_a = [0, 1, 2] * 4  # 12 rows
    train_b = [2, 1, 0, 0, 1, 2]  # 6 rows
    fake.add(
        Repo(
            "org/pets",
            {
                "README.md": b"# pets",
                "data/train-00000-of-00002.parquet": _parquet(train_a),
                "data/train-00001-of-00002.parquet": _parquet(train_b, start=100),
                "data/test-00000-of-00001.parquet": _parquet([0, 1, 2], start=200),
            },
            repo_type="datasets",
        )
    )
    fake.add(
        Repo(
            "org/unlabelled", {"train.parquet": _parquet([0, 1], features=False, label_name="y")}, repo_type="datasets"
        )
    )
    fake.add(
        Repo(
            "org/folder",
            {f"train/{c}/{i}.png": _png(10 * k + i) for k, c in enumerate(CLASSES) for i in range(5)},
            repo_type="datasets",
        )
    )
    with running_hub(fake) as running:
        yield running


def _access(hub: FakeHub, tmp_path: Path, **overrides: object) -> HubAccess:
    return access_to(hub, tmp_path / "hf", **overrides)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_parquet_split_with_hf_features_is_sampled_per_class_and_loads(hub: FakeHub, tmp_path: Path) -> None:
    from service.pipeline.data.datasets import load_dataset
    from service.pipeline.data.refs import parse_dataset_ref

    sample = materialize_hub_dataset("org/pets", _access(hub, tmp_path), tmp_path / "cache", max_per_class=3, seed=1)
    assert sample.split == "train" and sample.splits == ["test", "train"] and sample.classes == CLASSES
    assert sample.commit == hub.repos[0].sha
    rows = _rows(sample.manifest)
    assert sorted(r["label"] for r in rows) == sorted(CLASSES * 3)
    dataset = load_dataset(parse_dataset_ref(str(sample.manifest)), roots=[sample.manifest.parent])
    assert dataset.class_counts() == {"cat": 3, "dog": 3, "fish": 3}
    assert dataset.open_image(0).size == (8, 8)
    # the test split, every row; the same request again is served from the materialised sample
    test = materialize_hub_dataset("org/pets", _access(hub, tmp_path), tmp_path / "cache", split="test")
    assert [r["label"] for r in _rows(test.manifest)] == CLASSES
    hub.requests.clear()
    again = materialize_hub_dataset("org/pets", _access(hub, tmp_path), tmp_path / "cache", max_per_class=3, seed=1)
    assert again.manifest == sample.manifest and [r for r in hub.requests if "/resolve/" in r[1]] == []


def test_offline_reuses_what_was_downloaded(hub: FakeHub, tmp_path: Path) -> None:
    online = materialize_hub_dataset("org/pets", _access(hub, tmp_path), tmp_path / "cache", max_per_class=2)
    offline = _access(hub, tmp_path, enabled=False)
    hub.requests.clear()
    assert materialize_hub_dataset("org/pets", offline, tmp_path / "cache", max_per_class=2).manifest == online.manifest
    # another sample of the same split: the parquet shards are in the HF cache
    other = materialize_hub_dataset("org/pets", offline, tmp_path / "cache", max_per_class=1)
    assert len(_rows(other.manifest)) == 3 and hub.requests == []
    with pytest.raises(DatasetNotFound, match="downloads are off"):
        materialize_hub_dataset("org/folder", offline, tmp_path / "cache")
    # downloads on, but nothing answers at the endpoint: the cache still serves
    gone = _access(hub, tmp_path, endpoint="http://127.0.0.1:9", timeout_s=1.0)
    assert materialize_hub_dataset("org/pets", gone, tmp_path / "cache", max_per_class=2).manifest == online.manifest


def test_split_and_column_mistakes_name_what_exists(hub: FakeHub, tmp_path: Path) -> None:
    access = _access(hub, tmp_path)
    with pytest.raises(DatasetNotFound, match="no split 'val'; its splits: test, train"):
        materialize_hub_dataset("org/pets", access, tmp_path / "cache", split="val")
    with pytest.raises(InvalidDataset, match="no label column found; its columns: image, y .*--label-column"):
        materialize_hub_dataset("org/unlabelled", access, tmp_path / "cache")
    given = materialize_hub_dataset("org/unlabelled", access, tmp_path / "cache", label_column="y")
    assert given.classes == ["0", "1"]
    with pytest.raises(DatasetNotFound, match="no dataset repo 'org/nope'"):
        materialize_hub_dataset("org/nope", access, tmp_path / "cache")
    with pytest.raises(DownloadNotAllowed, match="BACKBONE_RANK_HUB_ALLOWED_DATASETS"):
        materialize_hub_dataset("org/pets", _access(hub, tmp_path, allowed_datasets=()), tmp_path / "cache")


def test_imagefolder_downloads_only_the_sampled_files(hub: FakeHub, tmp_path: Path) -> None:
    sample = materialize_hub_dataset("org/folder", _access(hub, tmp_path), tmp_path / "cache", max_per_class=2)
    assert sample.classes == CLASSES and len(_rows(sample.manifest)) == 6
    downloads = [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]
    assert len(downloads) == 6


def test_the_engine_ranks_and_fine_tunes_a_hub_dataset_pinned_to_its_commit(hub: FakeHub, tmp_path: Path) -> None:
    from service.contract import FinetuneRequest, RankingRequest
    from service.pipeline import engine
    from service.pipeline.runtime import Runtime

    runtime = Runtime(
        cache_dir=tmp_path / "cache", builtin_dir=tmp_path / "builtin", hub=_access(hub, tmp_path), device="cpu"
    )
    dataset = {"kind": "hub", "name": "org/pets"}
    ranking = engine.rank(
        RankingRequest(dataset=dataset, backbones=["random:test_resnet", "random:test_vit"], max_per_class=4), runtime
    )
    assert ranking.dataset.ref.revision == hub.repos[0].sha and ranking.dataset.ref.split == "train"
    assert ranking.dataset.n_images == 12 and ranking.dataset.classes == CLASSES
    request = FinetuneRequest(
        dataset=dataset, backbone="random:test_resnet", strategy="linear", epochs=1, lr_grid=[0.1], input_size=32
    )
    tuned = engine.finetune(request, runtime)
    # the repo's own test split is the test set; val is carved from train
    assert tuned.dataset.splits["test"].source == "split" and tuned.dataset.splits["test"].n_images == 3
    assert tuned.dataset.carved == ["val"] and tuned.dataset.ref.revision == hub.repos[0].sha
