"""Tests for ``service.builtin.datasets``: deterministic offline datasets materialised as ImageFolders.

Everything is real and small: datasets are generated with a few images per class into ``tmp_path``,
read back with PIL, loaded through ``service.pipeline.data.datasets`` and listed by the CLI.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.builtin.datasets import (
    BUILTIN_DATASETS,
    GENERATOR_VERSION,
    SPLITS,
    builtin_dataset_manifest,
    covering_fonts,
    default_counts,
    font_covers,
    glyph_fonts,
    glyphs,
    materialize,
    materialize_builtin_dataset,
    materialize_builtin_datasets,
    register_builtin_datasets,
)
from service.builtin.datasets.info import _TARGET_COUNTS
from service.pipeline.data.builtin import list_builtin_datasets
from service.pipeline.data.datasets import load_dataset
from service.pipeline.data.refs import DatasetRef

TINY = {"train": 3, "val": 2, "test": 2}


def _files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


#: The far targets drawn from photographs, plots and iterated maps (six new kinds of image for the zoo).
FAR_TARGETS = ("photo-filters", "photo-rotations", "charts", "waveforms", "fractals", "cellular-automata")


@pytest.mark.parametrize("name", ["glyphs-greek", "textures", "natural-patches", *FAR_TARGETS])
def test_two_builds_are_byte_identical_with_the_documented_layout(name: str, tmp_path: Path) -> None:
    first = materialize_builtin_dataset(name, tmp_path / "a", counts=TINY)
    second = materialize_builtin_dataset(name, tmp_path / "b", counts=TINY)
    assert first == tmp_path / "a" / name and second == tmp_path / "b" / name
    files = _files(first)
    assert files == _files(second)  # same paths, same bytes: no dependency on the directory or the process

    manifest = json.loads(files["dataset.json"])
    info = BUILTIN_DATASETS[name]
    assert manifest["name"] == name and manifest["role"] == info.role and manifest["relation"] == info.relation
    assert manifest["generator_version"] == GENERATOR_VERSION and manifest["seed"] == 0
    assert manifest["image_size"] == 32 and manifest["per_class"] == TINY
    classes = manifest["classes"]
    # A sample image that needs a download is dropped; the glyphs and textures are always all there.
    assert 2 <= len(classes) <= info.n_classes if name == "natural-patches" else len(classes) == info.n_classes
    assert classes == sorted(classes) and set(manifest["class_info"]) == set(classes)
    assert manifest["counts"] == {split: TINY[split] * len(classes) for split in SPLITS}

    # <name>/{train,val,test}/<class>/<i>.png and nothing else (besides dataset.json).
    expected = {"dataset.json"} | {
        f"{split}/{cls}/{i}.png" for split in SPLITS for cls in classes for i in range(TINY[split])
    }
    assert set(files) == expected
    for rel in expected - {"dataset.json"}:
        with Image.open(first / rel) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))


def test_images_vary_within_a_class_and_image_size_is_a_parameter(tmp_path: Path) -> None:
    root = materialize_builtin_dataset("shapes", tmp_path, counts={"train": 4, "val": 1, "test": 1}, image_size=24)
    images = [np.asarray(Image.open(root / "train" / "star" / f"{i}.png")) for i in range(4)]
    assert all(img.shape == (24, 24, 3) for img in images)
    assert len({img.tobytes() for img in images}) == 4
    assert json.loads((root / "dataset.json").read_text())["image_size"] == 24


def test_glyph_coverage_rejects_a_missing_character_and_keeps_a_covered_one(caplog) -> None:
    sans = next(f for f in glyph_fonts() if f.name == "DejaVuSans.ttf")
    assert font_covers(sans, "A")
    assert not font_covers(sans, "中")  # no CJK in DejaVu: it would render as the .notdef box
    assert covering_fonts("中") == []
    assert covering_fonts("A") == glyph_fonts()

    with caplog.at_level(logging.WARNING, logger="service.builtin.datasets.glyphs"):
        plan = glyphs._plan_glyphs(["A", "中"], 32)
    assert [c.name for c in plan.classes] == ["latin-capital-a"]
    assert plan.meta["dropped_characters"] == [{"char": "中", "codepoint": "U+4E2D"}]
    assert any("U+4E2D" in record.getMessage() for record in caplog.records)


def test_a_second_call_does_no_work_and_other_parameters_rebuild(tmp_path: Path, monkeypatch) -> None:
    root = materialize_builtin_dataset("textures-fine", tmp_path, counts=TINY)
    manifest_path, png = root / "dataset.json", root / "test" / "dots-large" / "1.png"
    stamps = (manifest_path.stat().st_mtime_ns, png.stat().st_mtime_ns, root.stat().st_ino)

    def no_build(*args, **kwargs):
        raise AssertionError("an up-to-date dataset was rebuilt")

    with monkeypatch.context() as patch:
        patch.setattr(materialize, "_build", no_build)
        assert materialize_builtin_dataset("textures-fine", tmp_path, counts=TINY) == root
    assert (manifest_path.stat().st_mtime_ns, png.stat().st_mtime_ns, root.stat().st_ino) == stamps

    # Other counts: rebuilt and swapped in atomically; no temp or old directories are left behind.
    materialize_builtin_dataset("textures-fine", tmp_path, counts={**TINY, "test": 3})
    assert json.loads(manifest_path.read_text())["per_class"]["test"] == 3
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["textures-fine"]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown built-in dataset"):
        materialize_builtin_dataset("glyphs-klingon", tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        materialize_builtin_dataset("shapes", tmp_path, counts={"holdout": 3})
    with pytest.raises(ValueError, match=">= 1"):
        materialize_builtin_dataset("shapes", tmp_path, counts={"train": 0})
    with pytest.raises(ValueError, match="image_size"):
        materialize_builtin_dataset("shapes", tmp_path, image_size=4)
    assert not (tmp_path / "shapes").exists()


def test_load_dataset_materialises_through_the_builtin_hook(tmp_path: Path, monkeypatch) -> None:
    # The registered factory uses the default sizes; shrink them so the test stays fast.
    for split, n in TINY.items():
        monkeypatch.setitem(_TARGET_COUNTS, split, n)
    register_builtin_datasets()
    register_builtin_datasets()  # idempotent
    names = [entry["name"] for entry in list_builtin_datasets()]
    assert set(BUILTIN_DATASETS) <= set(names) and len(names) == len(set(names))

    ds = load_dataset("builtin:glyphs-greek#train", builtin_dir=tmp_path)
    manifest = builtin_dataset_manifest("glyphs-greek", tmp_path)
    assert manifest is not None
    assert ds.ref == DatasetRef("builtin", name="glyphs-greek", split="train")
    assert ds.classes == manifest["classes"] and "greek-small-alpha" in ds.classes
    assert sorted(ds.splits) == ["test", "train", "val"]
    assert ds.class_counts() == dict.fromkeys(ds.classes, TINY["train"])
    assert not ds.skipped  # dataset.json beside the split directories is not an image of any class
    with ds.open_image(0) as image:
        assert image.size == (32, 32)
    test_split = load_dataset("builtin:glyphs-greek#test", builtin_dir=tmp_path)
    assert len(test_split) == TINY["test"] * len(ds.classes)


def test_cli_lists_the_datasets_and_whether_they_are_materialised(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from service.cli import app
    from service.config import get_settings

    materialize_builtin_dataset("digits", tmp_path / "builtin", counts=TINY)  # where `rank` materialises
    monkeypatch.setenv("BACKBONE_RANK_CACHE_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["datasets"], env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert set(BUILTIN_DATASETS) <= set(rows)
    assert "yes (70 images)" in rows["digits"] and " 10 " in rows["digits"]
    assert "no" in rows["glyphs-latin"].split() and "source" in rows["glyphs-latin"]
    assert "near glyphs-latin" in rows["glyphs-greek"]
    assert " glyphs " in rows["glyphs-greek"] and " dynamics " in rows["fractals"]


def test_parallel_build_matches_the_sequential_one(tmp_path: Path) -> None:
    names = ["shapes", "textures-fine"]
    parallel = materialize_builtin_datasets(tmp_path / "p", names, workers=2, counts=TINY)
    sequential = materialize_builtin_datasets(tmp_path / "s", names, workers=1, counts=TINY)
    assert list(parallel) == names
    for name in names:
        assert _files(parallel[name]) == _files(sequential[name])


def _pixels(root: Path, split: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Grey pixels made independent of the random colours: |grey - the image's median (its background)|,
    scaled per image. No learned features, just undoing the polarity that no linear model can."""
    x, y = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / split / name).glob("*.png"), key=lambda p: int(p.stem)):
            grey = np.asarray(Image.open(path), dtype=np.float64).mean(axis=2).ravel()
            dev = np.abs(grey - np.median(grey))
            x.append(dev / (dev.std() + 1e-6))
            y.append(label)
    return np.stack(x), np.array(y)


@pytest.mark.parametrize(
    ("name", "counts", "min_over_chance"),
    [("shapes", {"train": 40, "val": 1, "test": 20}, 2.0), ("glyphs-latin", {"train": 15, "val": 1, "test": 8}, 4.0)],
)
def test_tasks_are_learnable_but_not_trivial(name: str, counts: dict[str, int], min_over_chance: float, tmp_path):
    from sklearn.linear_model import LogisticRegression

    root = materialize_builtin_dataset(name, tmp_path, counts=counts)
    classes = json.loads((root / "dataset.json").read_text())["classes"]
    x_train, y_train = _pixels(root, "train", classes)
    x_test, y_test = _pixels(root, "test", classes)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    with warnings.catch_warnings():
        # A capped lbfgs need not converge; the accuracy is what is checked.
        warnings.simplefilter("ignore")
        model = LogisticRegression(C=0.01, max_iter=100).fit((x_train - mean) / std, y_train)
    accuracy = model.score((x_test - mean) / std, y_test)
    chance = 1 / len(classes)
    assert accuracy > min_over_chance * chance, f"{name}: {accuracy:.3f} vs chance {chance:.3f}"
    assert accuracy < 1.0, f"{name} is trivially separable from pixels"


def test_metadata_is_consistent() -> None:
    assert {info.role for info in BUILTIN_DATASETS.values()} == {"source", "target"}
    sources = {name for name, info in BUILTIN_DATASETS.items() if info.role == "source"}
    assert sources == {"glyphs-latin", "textures", "shapes"}
    for name, info in BUILTIN_DATASETS.items():
        assert info.name == name and info.description and info.relation and info.n_classes >= 8
        assert info.kind and info.to_dict()["kind"] == info.kind
        assert info.related_source is None or info.related_source in sources
        assert info.to_dict()["name"] == name
    for name in FAR_TARGETS:  # far from every zoo source, and few classes: cheap to fine-tune on
        info = BUILTIN_DATASETS[name]
        assert info.role == "target" and info.closeness == "far" and info.related_source is None
        assert 8 <= info.n_classes <= 12 and default_counts(name) == _TARGET_COUNTS
    assert {BUILTIN_DATASETS[n].kind for n in FAR_TARGETS} == {"photos", "graphics", "dynamics"}
    assert default_counts("shapes") == {"train": 120, "val": 20, "test": 20}
    assert default_counts("digits") == {"train": 40, "val": 20, "test": 40}
