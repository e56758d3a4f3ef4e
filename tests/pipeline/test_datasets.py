"""Tests for ``service.pipeline.data``: layouts, safety checks, hostile images, fingerprints.

Everything is real: images are written with PIL into ``tmp_path``, HF datasets are saved with
``save_to_disk``, FIFOs and symlinks are made with ``os``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from service.errors import (
    BackboneRankError,
    DatasetNotFound,
    EmptyDataset,
    InvalidDataset,
    PathOutsideRoots,
    TooFewClasses,
    TooFewSamplesPerClass,
)
from service.pipeline.data import builtin as builtin_module
from service.pipeline.data.builtin import list_builtin_datasets, register_builtin_dataset
from service.pipeline.data.datasets import Dataset, ImageItem, load_dataset
from service.pipeline.data.decode import ALLOWED_FORMATS, ImageDecodeError
from service.pipeline.data.refs import DatasetRef, parse_dataset_ref

from .conftest import MakeImageFolder, WriteImage


@contextlib.contextmanager
def raises_error(cls: type[BackboneRankError], code: str, *keywords: str) -> Iterator[pytest.ExceptionInfo]:
    """``pytest.raises`` that also checks the stable ``code`` and that the message has each keyword."""
    with pytest.raises(cls) as info:
        yield info
    assert type(info.value) is cls
    assert info.value.code == code
    message = str(info.value).lower()
    for keyword in keywords:
        assert keyword.lower() in message, f"{keyword!r} not in {str(info.value)!r}"


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height``: valid signature, CRCs, minimal IDAT/IEND."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/data/pets", DatasetRef("folder", path="/data/pets")),
        ("/data/pets#val", DatasetRef("folder", path="/data/pets", split="val")),
        ("rel/dir", DatasetRef("folder", path="rel/dir")),
        ("/data/list.csv", DatasetRef("manifest", path="/data/list.csv")),
        ("/data/LIST.JSONL#x", DatasetRef("manifest", path="/data/LIST.JSONL", split="x")),
        ("hf:/data/saved", DatasetRef("hf", path="/data/saved")),
        ("hf:/data/saved#validation", DatasetRef("hf", path="/data/saved", split="validation")),
        ("builtin:toy", DatasetRef("builtin", name="toy")),
        ("builtin:toy#test", DatasetRef("builtin", name="toy", split="test")),
        ("/data/a#b/pets", DatasetRef("folder", path="/data/a#b/pets")),  # '#' inside a directory name
    ],
)
def test_parse_dataset_ref(text: str, expected: DatasetRef) -> None:
    ref = parse_dataset_ref(text)
    assert ref == expected
    assert DatasetRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref


def test_ref_to_dict_leaves_out_none() -> None:
    assert DatasetRef("folder", path="/d").to_dict() == {"kind": "folder", "path": "/d"}
    assert DatasetRef("builtin", name="toy", split="val").to_dict() == {
        "kind": "builtin",
        "name": "toy",
        "split": "val",
    }


@pytest.mark.parametrize(
    ("build", "keyword"),
    [
        (lambda: parse_dataset_ref(""), "empty"),
        (lambda: parse_dataset_ref("/data/pets#"), "split"),
        (lambda: parse_dataset_ref("hf:"), "path"),
        (lambda: parse_dataset_ref("builtin:"), "name"),
        (lambda: DatasetRef.from_dict({"kind": "s3", "path": "x"}), "kind"),
        (lambda: DatasetRef.from_dict({"path": "x"}), "kind"),
        (lambda: DatasetRef.from_dict({"kind": "folder", "path": "x", "url": "http://x"}), "unknown"),
        (lambda: DatasetRef.from_dict({"kind": "folder", "path": 3}), "string"),
        (lambda: DatasetRef.from_dict({"kind": "builtin", "path": "/x"}), "name"),
        (lambda: DatasetRef.from_dict(["folder"]), "object"),  # type: ignore[arg-type]
    ],
)
def test_bad_refs(build, keyword: str) -> None:
    with raises_error(InvalidDataset, "invalid_dataset", keyword):
        build()


# --------------------------------------------------------------------------------------------------
# folder
# --------------------------------------------------------------------------------------------------


def test_folder_flat(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "pets", {"dog": 3, "cat": 2})
    (root / "README.txt").write_text("not in a class")
    ds = load_dataset(str(root))
    assert isinstance(ds, Dataset)
    assert ds.classes == ["cat", "dog"]
    assert ds.class_map() == {"cat": 0, "dog": 1}
    assert ds.class_counts() == {"cat": 2, "dog": 3}
    assert len(ds) == 5
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 1, 1, 1]
    assert ds.items == sorted(ds.items, key=lambda it: (it.label, it.source))
    assert all(isinstance(it, ImageItem) and os.path.isabs(it.source) for it in ds.items)
    assert ds.items[0].source == os.path.realpath(root / "cat" / "img0.png")
    assert ds.root == os.path.realpath(root)
    assert ds.splits == []
    assert ds.skipped == {"not_in_class_dir": 1}
    assert len(ds.fingerprint) == 64
    image = ds.open_image(0)
    assert image.mode == "RGB" and image.size == (16, 16)
    summary = json.loads(json.dumps(ds.summary()))
    assert summary == {
        "ref": {"kind": "folder", "path": str(root)},
        "n_images": 5,
        "n_classes": 2,
        "classes": ["cat", "dog"],
        "class_counts": {"cat": 2, "dog": 3},
        "skipped": {"not_in_class_dir": 1},
        "splits": [],
        "fingerprint": ds.fingerprint,
    }


def test_natural_sort_of_classes(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    names = ["class10", "class2", "Class3", "class1", "b", "B", "a01"]
    root = make_image_folder(tmp_path / "d", dict.fromkeys(names, 2))
    ds = load_dataset(root)
    assert ds.classes == ["a01", "B", "b", "class1", "class2", "Class3", "class10"]
    # The label of each image is the index of the directory it is in.
    for item in ds.items:
        assert Path(item.source).parent.name == ds.classes[item.label]


def test_nested_dirs_and_hidden_entries(tmp_path: Path, make_image_folder: MakeImageFolder, write_image) -> None:
    root = make_image_folder(tmp_path / "d", {"cat": 1, "dog": 2})
    write_image(root / "cat" / "deep" / "deeper" / "x.png")
    write_image(root / "cat" / ".thumbs" / "hidden.png")  # hidden directory: ignored
    write_image(root / "cat" / ".hidden.png")  # hidden file: ignored
    (root / "dog" / ".DS_Store").write_bytes(b"\x00\x01junk")
    write_image(root / ".trash" / "t.png")  # hidden top-level directory: not a class
    ds = load_dataset(root)
    assert ds.classes == ["cat", "dog"]
    assert ds.class_counts() == {"cat": 2, "dog": 2}
    assert ds.skipped == {}  # hidden entries are ignored silently
    assert any(item.source.endswith(os.path.join("deep", "deeper", "x.png")) for item in ds.items)


def test_split_layout(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = tmp_path / "pets"
    make_image_folder(root / "train", {"cat": 3, "dog": 3})
    make_image_folder(root / "val", {"cat": 2, "dog": 2})
    ds = load_dataset(root)
    assert ds.splits == ["train", "val"]
    assert ds.ref == DatasetRef("folder", path=str(root), split="train")
    assert len(ds) == 6
    assert all(f"{os.sep}train{os.sep}" in it.source for it in ds.items)
    assert ds.root == os.path.realpath(root)

    val = load_dataset(f"{root}#val")
    assert val.ref.split == "val" and len(val) == 4
    assert all(f"{os.sep}val{os.sep}" in it.source for it in val.items)
    assert val.fingerprint != ds.fingerprint

    with raises_error(InvalidDataset, "invalid_dataset", "'test'", "train, val", str(root)) as info:
        load_dataset(f"{root}#test")
    assert info.value.context["splits"] == ["train", "val"]


def test_split_aliases_and_missing_train(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = tmp_path / "d"
    make_image_folder(root / "validation", {"a": 2, "b": 2})
    make_image_folder(root / "test", {"a": 2, "b": 2})
    assert load_dataset(f"{root}#val").ref.split == "validation"  # "val" finds validation/
    with raises_error(InvalidDataset, "invalid_dataset", "no 'train' split", "#test"):
        load_dataset(root)


def test_split_layout_mixed_with_class_dirs(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"train": 2, "cat": 2})
    with raises_error(InvalidDataset, "invalid_dataset", "mixes split directories", "cat"):
        load_dataset(root)


def test_split_requested_on_flat_layout(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    with raises_error(InvalidDataset, "invalid_dataset", "no splits"):
        load_dataset(f"{root}#val")


# --------------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------------


def test_manifest_csv(tmp_path: Path, write_image: WriteImage) -> None:
    base = tmp_path / "data"
    write_image(base / "imgs" / "a.png")
    write_image(base / "imgs" / "b, with comma.png")
    write_image(base / "imgs" / "c.jpg")
    abs_img = write_image(base / "other" / "d.png")
    write_image(base / "imgs" / "e.png")
    manifest = base / "list.csv"
    manifest.write_text(
        "id,path,label\n"
        "1,imgs/a.png,class10\n"
        '2,"imgs/b, with comma.png",class2\n'
        "\n"  # blank lines are fine
        f"3,{abs_img},class2\n"
        "4,imgs/c.jpg,class10\n"
        "5,imgs/missing.png,class10\n"
        "6,imgs/e.png,class2\n"
        "7,imgs/e.png,class2\n",  # the same file twice with the same label: counted once
        encoding="utf-8",
    )
    ds = load_dataset(manifest)
    assert ds.ref == DatasetRef("manifest", path=str(manifest))
    assert ds.root == os.path.realpath(base)
    assert ds.classes == ["class2", "class10"]
    assert ds.class_counts() == {"class2": 3, "class10": 2}
    assert ds.skipped == {"duplicate_entry": 1, "missing_file": 1}
    assert {Path(it.source).name for it in ds.items} == {"a.png", "b, with comma.png", "c.jpg", "d.png", "e.png"}
    assert ds.open_image(0).mode == "RGB"


def test_manifest_jsonl(tmp_path: Path, write_image: WriteImage) -> None:
    for i in range(4):
        write_image(tmp_path / "m" / f"{i}.png")
    manifest = tmp_path / "m" / "list.jsonl"
    rows = [{"path": f"{i}.png", "label": label} for i, label in enumerate([10, 2, 10, 2])]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_dataset(str(manifest))
    assert ds.classes == ["2", "10"]
    assert ds.class_counts() == {"2": 2, "10": 2}
    assert ds.skipped == {}


@pytest.mark.parametrize(
    ("name", "content", "line", "keyword"),
    [
        ("m.csv", "path,label\na.png,x\nb.png\n", 3, "expected 2 fields"),
        ("m.csv", "path,klass\na.png,x\n", 1, "label"),
        ("m.csv", "", 1, "empty"),
        ("m.csv", "path,label\na.png,x\nb.png, \n", 3, "empty label"),
        ("m.csv", 'path,label\na.png,x\n"b.png,y\n', 3, "malformed"),
        ("m.csv", "path,label\na.png,x\nb\xff.png,y\n".encode("latin-1"), 3, "utf-8"),
        ("m.jsonl", '{"path": "a.png", "label": "x"}\n{"path": "b.png", "label": \n', 2, "invalid json"),
        ("m.jsonl", '{"path": "a.png", "label": "x"}\n\n{"path": "b.png"}\n', 3, "'label'"),
        ("m.jsonl", '["a.png", "x"]\n', 1, "object"),
        ("m.jsonl", '{"path": "a.png", "label": ["x"]}\n', 1, "string"),
        ("m.jsonl", '{"path": "a\\u0000.png", "label": "x"}\n', 1, "nul"),
    ],
)
def test_malformed_manifest(
    tmp_path: Path, write_image: WriteImage, name: str, content: str | bytes, line: int, keyword: str
) -> None:
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    manifest = tmp_path / name
    if isinstance(content, bytes):
        manifest.write_bytes(content)
    else:
        manifest.write_text(content)
    with raises_error(InvalidDataset, "invalid_dataset", f"line {line}", keyword, str(manifest)) as info:
        load_dataset(str(manifest))
    assert info.value.context["line"] == line


def test_manifest_conflicting_labels(tmp_path: Path, write_image: WriteImage) -> None:
    write_image(tmp_path / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png,x\n./a.png,y\n")
    with raises_error(InvalidDataset, "invalid_dataset", "line 3", "line 2", "one label"):
        load_dataset(manifest)


def test_manifest_row_outside_roots(tmp_path: Path, write_image: WriteImage) -> None:
    outside = write_image(tmp_path / "outside" / "x.png")
    manifest = tmp_path / "data" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"path,label\n../outside/x.png,a\n{outside},b\n")
    with raises_error(PathOutsideRoots, "path_outside_roots", "line 2", "../outside/x.png"):
        load_dataset(manifest)  # CLI mode: only the manifest's directory is allowed


def test_manifest_symlink_row_escaping(tmp_path: Path, write_image: WriteImage) -> None:
    outside = write_image(tmp_path / "outside" / "x.png")
    data = tmp_path / "data"
    for name in ("a1", "a2", "b1", "b2"):
        write_image(data / f"{name}.png")
    (data / "link.png").symlink_to(outside)
    manifest = data / "m.csv"
    manifest.write_text("path,label\na1.png,a\na2.png,a\nb1.png,b\nb2.png,b\nlink.png,b\n")
    ds = load_dataset(manifest, roots=[data])
    assert len(ds) == 4
    assert ds.skipped == {"symlink_outside_root": 1}


def test_manifest_kind_mismatch(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    folder_named_csv = make_image_folder(tmp_path / "looks.csv", {"a": 2, "b": 2})
    with raises_error(InvalidDataset, "invalid_dataset", "is a directory", str(folder_named_csv)):
        load_dataset(str(folder_named_csv))
    with raises_error(InvalidDataset, "invalid_dataset", "no splits"):
        (tmp_path / "m.csv").write_text("path,label\n")
        load_dataset(f"{tmp_path / 'm.csv'}#val")


# --------------------------------------------------------------------------------------------------
# hf
# --------------------------------------------------------------------------------------------------


def _save_hf(path: Path, images: list[bytes | None], labels: list, class_names: list[str] | None, split_dict=False):
    hf = pytest.importorskip("datasets")
    label_feature = hf.ClassLabel(names=class_names) if class_names is not None else hf.Value("string")
    features = hf.Features({"img": hf.Image(), "label": label_feature, "note": hf.Value("string")})
    rows = {
        "img": [None if b is None else {"bytes": b, "path": None} for b in images],
        "label": labels,
        "note": ["x"] * len(images),
    }
    dataset = hf.Dataset.from_dict(rows, features=features)
    if split_dict:
        half = hf.Dataset.from_dict({k: v[:4] for k, v in rows.items()}, features=features)
        hf.DatasetDict({"train": dataset, "validation": half}).save_to_disk(str(path))
    else:
        dataset.save_to_disk(str(path))
    return path


def test_hf_dataset_with_class_label(tmp_path: Path) -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9), (200, 100, 0), (1, 2, 3)]
    images: list[bytes | None] = [png_bytes(c) for c in colors]
    images.append(b"this is not an image")
    images.append(None)
    labels = [0, 1, 0, 1, 0, 1, 0, 1]
    saved = _save_hf(tmp_path / "saved", images, labels, ["zebra", "ant"])
    ds = load_dataset(f"hf:{saved}")
    assert ds.ref == DatasetRef("hf", path=str(saved))
    assert ds.classes == ["zebra", "ant"]  # ClassLabel order, not re-sorted
    assert ds.class_counts() == {"zebra": 3, "ant": 3}
    assert ds.skipped == {"missing_image": 1, "unsupported_format": 1}
    assert ds.items[0] == ImageItem(source="hf:0", label=0)
    assert [it.source for it in ds.items] == ["hf:0", "hf:2", "hf:4", "hf:1", "hf:3", "hf:5"]
    assert ds.splits == []
    for index, item in enumerate(ds.items):
        image = ds.open_image(index)
        assert image.mode == "RGB" and image.getpixel((0, 0)) == colors[int(item.source[3:])]
    # Picklable for DataLoader workers; the table re-opens lazily on the other side.
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.open_image(1).getpixel((0, 0)) == colors[2]
    assert load_dataset(f"hf:{saved}").fingerprint == ds.fingerprint


def test_hf_dataset_dict_and_string_labels(tmp_path: Path) -> None:
    images: list[bytes | None] = [png_bytes((i, i, i)) for i in range(8)]
    labels = ["class10", "class2"] * 4
    saved = _save_hf(tmp_path / "dd", images, labels, None, split_dict=True)
    train = load_dataset(DatasetRef("hf", path=str(saved)))
    assert train.splits == ["train", "validation"] and train.ref.split == "train"
    assert train.classes == ["class2", "class10"]  # natural sort for plain string labels
    assert len(train) == 8
    val = load_dataset(f"hf:{saved}#val")
    assert val.ref.split == "validation" and len(val) == 4
    assert val.open_image(0).getpixel((0, 0)) == (1, 1, 1)  # hf:1 is the first "class2" row
    with raises_error(InvalidDataset, "invalid_dataset", "'test'", "train, validation"):
        load_dataset(f"hf:{saved}#test")


def test_hf_rejects_state_json_escaping_the_directory(tmp_path: Path) -> None:
    images: list[bytes | None] = [png_bytes((i, 0, 0)) for i in range(4)]
    saved = _save_hf(tmp_path / "saved", images, [0, 1, 0, 1], ["a", "b"])
    state = json.loads((saved / "state.json").read_text())
    state["_data_files"] = [{"filename": "../../etc/passwd"}]
    (saved / "state.json").write_text(json.dumps(state))
    with raises_error(InvalidDataset, "invalid_dataset", "outside the dataset directory"):
        load_dataset(f"hf:{saved}")


def test_hf_image_paths_stay_inside_roots(tmp_path: Path, write_image: WriteImage) -> None:
    """A plain string column named "image" holds file paths: anchored to the dataset dir, checked like files."""
    hf = pytest.importorskip("datasets")
    data = tmp_path / "data"
    secret = write_image(tmp_path / "secret.png")
    paths = ["imgs/0.png", "imgs/1.png", "imgs/2.png", "imgs/3.png", str(secret), "imgs/link.png", "../../x.png", None]
    features = hf.Features({"image": hf.Value("string"), "label": hf.ClassLabel(names=["a", "b"])})
    saved = data / "saved"
    hf.Dataset.from_dict({"image": paths, "label": [0, 1] * 4}, features=features).save_to_disk(str(saved))
    for i in range(4):
        write_image(saved / "imgs" / f"{i}.png", color=(i, 0, 0))
    (saved / "imgs" / "link.png").symlink_to(secret)
    ds = load_dataset(f"hf:{saved}", roots=[data])
    assert len(ds) == 4
    assert ds.skipped == {"missing_image": 1, "path_outside_root": 2, "symlink_outside_root": 1}
    assert [ds.open_image(i).getpixel((0, 0)) for i in range(4)] == [(0, 0, 0), (2, 0, 0), (1, 0, 0), (3, 0, 0)]
    first = ds.fingerprint
    write_image(saved / "imgs" / "0.png", color=(9, 9, 9))  # same size, new content and mtime
    os.utime(saved / "imgs" / "0.png", ns=(0, 10**18))
    assert load_dataset(f"hf:{saved}", roots=[data]).fingerprint != first


def test_hf_not_a_saved_dataset(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "plain", {"a": 2, "b": 2})
    with raises_error(InvalidDataset, "invalid_dataset", "save_to_disk", str(root)):
        load_dataset(f"hf:{root}")


# --------------------------------------------------------------------------------------------------
# builtin
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may register built-ins freely: the registry is restored afterwards."""
    monkeypatch.setattr(builtin_module, "_BUILTINS", dict(builtin_module._BUILTINS))


@pytest.mark.usefixtures("clean_registry")
def test_builtin_dataset(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    calls: list[Path] = []

    def materialize(builtin_dir: Path) -> Path:
        calls.append(builtin_dir)
        target = builtin_dir / "toy"
        if not target.exists():
            make_image_folder(target / "train", {"b": 2, "a": 3})
            make_image_folder(target / "val", {"b": 2, "a": 2})
        return target

    register_builtin_dataset("toy", materialize, "two tiny classes")
    assert {"name": "toy", "description": "two tiny classes"} in list_builtin_datasets()
    # roots=[] refuses every user path, but a built-in dataset is trusted.
    ds = load_dataset("builtin:toy", roots=[], builtin_dir=tmp_path / "builtin")
    assert ds.ref == DatasetRef("builtin", name="toy", split="train")
    assert ds.classes == ["a", "b"] and len(ds) == 5 and ds.splits == ["train", "val"]
    again = load_dataset(DatasetRef("builtin", name="toy", split="val"), builtin_dir=tmp_path / "builtin")
    assert len(again) == 4
    assert calls == [tmp_path / "builtin"] * 2
    assert load_dataset("builtin:toy", builtin_dir=tmp_path / "builtin").fingerprint == ds.fingerprint


@pytest.mark.usefixtures("clean_registry")
def test_builtin_unknown_and_failing(tmp_path: Path) -> None:
    register_builtin_dataset("known", lambda d: d)
    with raises_error(DatasetNotFound, "dataset_not_found", "'nope'", "known"):
        load_dataset("builtin:nope", builtin_dir=tmp_path)

    def broken(builtin_dir: Path) -> Path:
        raise RuntimeError("no network")

    register_builtin_dataset("broken", broken)
    with raises_error(DatasetNotFound, "dataset_not_found", "could not be prepared"):
        load_dataset("builtin:broken", builtin_dir=tmp_path)
    with pytest.raises(ValueError, match="must match"):
        register_builtin_dataset("../evil", broken)


def test_registry_cleanup_restored() -> None:
    # Runs after the tests above in file order: their registrations are gone.
    assert not {"toy", "known", "broken"} & {d["name"] for d in list_builtin_datasets()}


# --------------------------------------------------------------------------------------------------
# Subsampling and fingerprints
# --------------------------------------------------------------------------------------------------


def test_subsample_is_seeded(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 10, "b": 10, "c": 3})
    full = load_dataset(root)
    s0 = load_dataset(root, max_per_class=4, seed=0)
    s0_again = load_dataset(root, max_per_class=4, seed=0)
    s1 = load_dataset(root, max_per_class=4, seed=1)
    assert s0.class_counts() == {"a": 4, "b": 4, "c": 3}
    assert s0.items == s0_again.items and s0.fingerprint == s0_again.fingerprint
    assert s0.items != s1.items and s0.fingerprint != s1.fingerprint
    assert set(s0.items) <= set(full.items)
    assert s0.items == sorted(s0.items, key=lambda it: (it.label, it.source))
    assert len({s0.fingerprint, s1.fingerprint, full.fingerprint}) == 3
    # Subsampling a class does not depend on the other classes.
    make_image_folder(root, {"c": 9})
    grown = load_dataset(root, max_per_class=4, seed=0)
    assert [it for it in grown.items if it.label == 0] == [it for it in s0.items if it.label == 0]


def test_fingerprint_tracks_content(tmp_path: Path, make_image_folder: MakeImageFolder, write_image) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    first = load_dataset(root).fingerprint
    assert load_dataset(root).fingerprint == first
    # A moved dataset keeps its fingerprint: paths are relative to the root.
    moved = tmp_path / "moved"
    os.rename(root, moved)
    assert load_dataset(moved).fingerprint == first

    # Rewriting a file (same size, new mtime) changes it.
    target = moved / "a" / "img0.png"
    stat_before = target.stat()
    write_image(target, color=(1, 2, 3))
    os.utime(target, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns + 10**9))
    second = load_dataset(moved).fingerprint
    assert second != first
    # Renaming a class changes it.
    os.rename(moved / "b", moved / "c")
    assert load_dataset(moved).fingerprint not in {first, second}


# --------------------------------------------------------------------------------------------------
# Bad inputs: paths
# --------------------------------------------------------------------------------------------------


def test_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with raises_error(DatasetNotFound, "dataset_not_found", "does not exist", str(missing)) as info:
        load_dataset(str(missing), roots=[tmp_path])
    assert info.value.to_dict()["path"] == str(missing)
    with raises_error(DatasetNotFound, "dataset_not_found", "does not exist"):
        load_dataset(str(tmp_path / "nope.csv"))


def test_outside_roots_no_existence_oracle(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    roots = [tmp_path / "data"]
    (tmp_path / "data").mkdir()
    existing = make_image_folder(tmp_path / "secret", {"a": 2, "b": 2})
    missing = tmp_path / "does-not-exist"
    errors = []
    for path in (existing, missing, existing / "a.csv", f"hf:{existing}"):
        with raises_error(PathOutsideRoots, "path_outside_roots", "data roots") as info:
            load_dataset(str(path), roots=roots)
        errors.append((info.value, str(path).removeprefix("hf:")))
    # Same error, same wording: only the echoed user path differs.
    texts = {str(err).replace(repr(path), "<P>") for err, path in errors}
    assert len(texts) == 1
    assert {err.status for err, _ in errors} == {403}


@pytest.mark.parametrize(
    "relative", ["data/../secret", "data/pets/../../secret", "data2", "data/../data2/pets", "/etc", "../../.."]
)
def test_traversal_is_outside(tmp_path: Path, make_image_folder: MakeImageFolder, relative: str) -> None:
    make_image_folder(tmp_path / "data" / "pets", {"a": 2, "b": 2})
    make_image_folder(tmp_path / "secret", {"a": 2, "b": 2})
    make_image_folder(tmp_path / "data2" / "pets", {"a": 2, "b": 2})  # string prefix of the root: still outside
    path = relative if relative.startswith("/") else f"{tmp_path}/{relative}"
    with raises_error(PathOutsideRoots, "path_outside_roots", path):
        load_dataset(path, roots=[tmp_path / "data"])
    assert len(load_dataset(f"{tmp_path}/data/x/../pets", roots=[tmp_path / "data"])) == 4


def test_symlinked_root_escaping(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    secret = make_image_folder(tmp_path / "secret", {"a": 2, "b": 2})
    data = tmp_path / "data"
    data.mkdir()
    (data / "pets").symlink_to(secret, target_is_directory=True)
    user_path = str(data / "pets")
    with raises_error(PathOutsideRoots, "path_outside_roots", user_path) as info:
        load_dataset(user_path, roots=[data])
    assert str(secret) not in str(info.value)  # echoes the user's path, never the resolved one


def test_no_roots_configured_refuses_everything(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    with raises_error(PathOutsideRoots, "path_outside_roots", "no data roots"):
        load_dataset(root, roots=[])


def test_roots_given_as_single_path(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    assert len(load_dataset(root, roots=str(tmp_path))) == 4  # type: ignore[arg-type]


def test_nul_byte_in_path(tmp_path: Path) -> None:
    with raises_error(InvalidDataset, "invalid_dataset", "NUL"):
        load_dataset(f"{tmp_path}/da\x00ta", roots=[tmp_path])
    with raises_error(InvalidDataset, "invalid_dataset", "NUL"):
        load_dataset(DatasetRef("manifest", path=f"{tmp_path}/a\x00.csv"))


def test_nul_byte_in_a_class_name(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    lines = ["path,label", "d/a/img0.png,c\x00t", "d/a/img1.png,c\x00t", "d/b/img0.png,b", "d/b/img1.png,b"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    with raises_error(InvalidDataset, "invalid_dataset", "class name", "NUL"):
        load_dataset(tmp_path / "m.csv")


def test_file_where_folder_expected(tmp_path: Path, write_image: WriteImage) -> None:
    image = write_image(tmp_path / "x.png")
    with raises_error(InvalidDataset, "invalid_dataset", "not a directory", str(image)):
        load_dataset(image)
    with raises_error(InvalidDataset, "invalid_dataset", "not a directory"):
        load_dataset(f"hf:{image}")


def test_symlinked_file_escaping_is_skipped(tmp_path: Path, make_image_folder: MakeImageFolder, write_image) -> None:
    secret = write_image(tmp_path / "secret" / "s.png")
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "a" / "evil.png").symlink_to(secret)
    (root / "b" / "inside.png").symlink_to(root / "a" / "img0.png")  # stays inside: kept
    (root / "b" / "again.png").symlink_to(root / "b" / "img0.png")  # same class, same file: listed once
    (root / "b" / "dangling.png").symlink_to(tmp_path / "d" / "gone.png")
    ds = load_dataset(root)
    assert ds.skipped == {"symlink_outside_root": 1, "missing_file": 1, "duplicate_entry": 1}
    assert ds.class_counts() == {"a": 2, "b": 3}
    assert all(os.path.realpath(secret) != it.source for it in ds.items)


def test_symlinked_class_dir_escaping_is_skipped(
    tmp_path: Path, make_image_folder: MakeImageFolder, write_image
) -> None:
    secret = make_image_folder(tmp_path / "secret", {"stolen": 3})
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "evil").symlink_to(secret / "stolen", target_is_directory=True)
    (root / "a" / "nested_evil").symlink_to(secret / "stolen", target_is_directory=True)
    ds = load_dataset(root)
    assert ds.classes == ["a", "b"]
    assert ds.skipped == {"symlink_outside_root": 2}
    assert not any(it.source.startswith(os.path.realpath(secret)) for it in ds.items)


@pytest.mark.timeout(10)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_skipped_without_hanging(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    os.mkfifo(root / "a" / "pipe.png")
    ds = load_dataset(root)
    assert ds.skipped == {"not_regular_file": 1}
    assert len(ds) == 4


# --------------------------------------------------------------------------------------------------
# Bad inputs: class sizes
# --------------------------------------------------------------------------------------------------


def test_empty_dataset(tmp_path: Path, write_image: WriteImage) -> None:
    (tmp_path / "empty").mkdir()
    with raises_error(EmptyDataset, "empty_dataset", "no usable images", str(tmp_path / "empty")):
        load_dataset(tmp_path / "empty")
    # Images directly in the root belong to no class.
    write_image(tmp_path / "flat" / "a.png")
    with raises_error(EmptyDataset, "empty_dataset", "not_in_class_dir=1"):
        load_dataset(tmp_path / "flat")


def test_single_class(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"only": 5})
    with raises_error(TooFewClasses, "too_few_classes", "at least 2 classes", "only"):
        load_dataset(root)


def test_class_with_one_image(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 3, "b": 1, "c": 0})
    with raises_error(TooFewSamplesPerClass, "too_few_samples_per_class", "'b': 1", "'c': 0", "empty") as info:
        load_dataset(root)
    assert info.value.context["classes"] == {"b": 1, "c": 0}
    (root / "c").rmdir()
    assert load_dataset(root, min_per_class=1).class_counts() == {"a": 3, "b": 1}
    with raises_error(TooFewSamplesPerClass, "too_few_samples_per_class", "max_per_class=1"):
        load_dataset(make_image_folder(tmp_path / "e", {"a": 3, "b": 3}), max_per_class=1)


# --------------------------------------------------------------------------------------------------
# Bad inputs: hostile images
# --------------------------------------------------------------------------------------------------


def test_unsupported_formats_are_skipped(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    (root / "a" / "fake.jpg").write_text("just text, despite the extension")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
    (root / "a" / "doc.eps").write_bytes(eps)
    (root / "b" / "doc.png").write_bytes(eps)  # EPS content behind an image extension
    (root / "b" / "empty.png").write_bytes(b"")
    # Without the allowlist Pillow would happily identify the EPS (and run Ghostscript on load).
    with Image.open(io.BytesIO(eps)) as sniffed:
        assert sniffed.format == "EPS" and "EPS" not in ALLOWED_FORMATS
    ds = load_dataset(root)
    assert ds.skipped == {"unsupported_format": 4}
    assert len(ds) == 4


def test_pixel_bomb_header_is_skipped_without_decoding(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    # 100 MP: Pillow's default would only warn (below 2x MAX_IMAGE_PIXELS); we treat that as an error.
    (root / "a" / "bomb.png").write_bytes(png_header_only(10_000, 10_000))
    # 9 MP: below Pillow's cap, above ours.
    (root / "b" / "big.png").write_bytes(png_header_only(3_000, 3_000))
    max_pixels_before = Image.MAX_IMAGE_PIXELS
    ds = load_dataset(root, max_image_pixels=1_000_000)
    assert ds.skipped == {"too_many_pixels": 2}
    assert len(ds) == 4
    assert Image.MAX_IMAGE_PIXELS == max_pixels_before  # the global cap is left alone
    # With a cap above 100 MP, Pillow's own bomb check still stops the 10000x10000 header -- even where
    # the caller ignores warnings (pytest's "error" filter must not be what makes this pass).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(root, max_image_pixels=500_000_000)
    assert ds.skipped == {"too_many_pixels": 1}


def test_too_large_file_is_skipped(tmp_path: Path, make_image_folder: MakeImageFolder, write_image) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    write_image(root / "a" / "huge.bmp", size=(200, 200))
    ds = load_dataset(root, max_image_bytes=10_000)
    assert ds.skipped == {"too_large_file": 1}


def test_truncated_jpeg_fails_only_when_decoded(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    (root / "a" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    ds = load_dataset(root)
    assert ds.skipped == {}
    index = next(i for i, it in enumerate(ds.items) if it.source.endswith("truncated.jpg"))
    with pytest.raises(ImageDecodeError) as info:
        ds.open_image(index)
    assert info.value.reason == "corrupt_image"
    assert not isinstance(info.value, BackboneRankError)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert ds.open_image((index + 1) % len(ds)).mode == "RGB"  # the others still decode


def test_open_image_rechecks_the_file(tmp_path: Path, make_image_folder: MakeImageFolder) -> None:
    root = make_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    ds = load_dataset(root, max_image_pixels=1_000_000)
    Path(ds.items[0].source).write_bytes(png_header_only(3_000, 3_000))  # swapped after listing
    with pytest.raises(ImageDecodeError) as info:
        ds.open_image(0)
    assert info.value.reason == "too_many_pixels"
    os.unlink(ds.items[1].source)
    os.mkfifo(ds.items[1].source)
    with pytest.raises(ImageDecodeError) as info:
        ds.open_image(1)
    assert info.value.reason == "not_regular_file"


def test_palette_image_with_transparency_converts_without_warning(tmp_path: Path, write_image) -> None:
    root = tmp_path / "d"
    for cls in ("a", "b"):
        for i in range(2):
            image = Image.new("P", (4, 4), 1)
            image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
            (root / cls).mkdir(parents=True, exist_ok=True)
            image.save(root / cls / f"{i}.png", transparency=b"\x00\xff")
    ds = load_dataset(root)
    assert ds.open_image(0).getpixel((0, 0)) == (255, 0, 0)
