"""service.pipeline.finetune.finetune: strategies, lr selection, seeds, carved splits, the saved model, errors, the CLI.

The target is written by the tests: three classes of coloured shapes (a red square, a green disc, a blue
bar) at random places on a noisy grey background, 32 px PNGs in train/val/test folders. The backbones
are untrained timm models (``random:test_resnet``) at input 32, so every run takes a second or two.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from service.errors import InvalidDataset, InvalidFinetuneConfig, UnknownBackbone
from service.pipeline.data.datasets import load_dataset
from service.pipeline.finetune.arguments import STRATEGY_DEFAULTS
from service.pipeline.finetune.finetune import finetune
from service.pipeline.finetune.models import partial_trainable_parameters, stage_trainable_parameters
from service.pipeline.finetune.progress import FinetuneProgress
from service.pipeline.finetune.splits import _load_splits
from service.pipeline.finetune.training import TrainingCancelled, evaluate, load_split_tensors
from service.pipeline.models.backbones import load_backbone

BACKBONE = "random:test_resnet"
CLASSES = ("red_square", "green_disc", "blue_bar")
COUNTS = {"train": 12, "val": 6, "test": 8}
FAST = {"input_size": 32, "batch_size": 16}


def _shape_image(rng: np.random.Generator, cls: str, size: int = 32) -> Image.Image:
    image = Image.fromarray(rng.integers(90, 160, size=(size, size, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    side = int(rng.integers(10, 15))
    x, y = (int(v) for v in rng.integers(0, size - side, size=2))
    if cls == "red_square":
        draw.rectangle((x, y, x + side, y + side), fill=(220, 40, 40))
    elif cls == "green_disc":
        draw.ellipse((x, y, x + side, y + side), fill=(40, 200, 60))
    else:
        draw.rectangle((x, y, x + side, y + side // 3), fill=(50, 60, 230))
    return image


def _write_shapes(root: Path, counts: dict[str, int], seed: int = 0, classes: tuple[str, ...] = CLASSES) -> Path:
    """``root/<split>/<class>/<i>.png`` (or ``root/<class>/...`` for the split name ``""``)."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for cls in classes:
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _shape_image(rng, cls).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread: two OpenMP threads on a busy 2-core machine mostly wait for
    each other (measured 25x slower per batch here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_shapes(tmp_path_factory.mktemp("shapes"), COUNTS)


@pytest.fixture(scope="module")
def full_run(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """One full fine-tune with two learning rates and two seeds, saved to a folder."""
    out = tmp_path_factory.mktemp("full") / "model"
    result = finetune(
        str(shapes), BACKBONE, strategy="full", epochs=10, lr_grid=(0.03, 0.1), seeds=(0, 1), output_dir=out, **FAST
    )
    return result, out


@pytest.fixture(scope="module")
def linear_run(shapes: Path) -> dict[str, Any]:
    return finetune(str(shapes), BACKBONE, strategy="linear", lr_grid=(1e-5, 0.3), epochs=20, **FAST)


# ------------------------------------------------------------------------------------------- strategies


def test_full_finetune_beats_chance_and_reports_the_schema(full_run: tuple[dict[str, Any], Path]) -> None:
    result, _ = full_run
    assert result["chance_accuracy"] == pytest.approx(1 / 3)
    assert result["test_accuracy"]["mean"] >= 0.8
    assert json.loads(json.dumps(result)) == result  # JSON-able as is
    assert result["schema_version"] == 1 and result["strategy"] == "full"
    assert result["dataset"]["carved"] == []
    assert {k: v["n_images"] for k, v in result["dataset"]["splits"].items()} == {
        split: 3 * n for split, n in COUNTS.items()
    }
    assert result["dataset"]["classes"] == sorted(CLASSES) == list(result["class_map"])
    assert result["backbone"]["id"] == BACKBONE
    assert result["config"]["input_size"] == [3, 32, 32] and result["config"]["epochs"] == 10
    assert result["config"]["backbone_lr_scale"] == 1.0  # an untrained backbone learns at the head's rate
    assert result["config"]["trainable_parameters"] == result["config"]["total_parameters"]
    assert result["lr_grid"] == [0.03, 0.1]
    assert result["seeds"] == [0, 1] and len(result["test_accuracy"]["per_seed"]) == 2
    per_seed = result["test_accuracy"]["per_seed"]
    assert result["test_accuracy"]["mean"] == pytest.approx(np.mean(per_seed))
    assert result["test_accuracy"]["std"] == pytest.approx(np.std(per_seed))
    # the confusion matrix is summed over the seeds; its diagonal is the mean accuracy
    confusion = np.array(result["confusion_matrix"])
    assert confusion.shape == (3, 3) and confusion.sum() == 2 * 3 * COUNTS["test"]
    assert np.trace(confusion) / confusion.sum() == pytest.approx(result["test_accuracy"]["mean"])
    per_class = result["per_class_accuracy"]
    assert list(per_class) == result["dataset"]["classes"]
    assert np.mean(list(per_class.values())) == pytest.approx(result["test_accuracy"]["mean"])  # balanced test
    assert set(result["seconds"]) == {"load", "train", "eval", "total"}
    assert result["seconds"]["total"] >= result["seconds"]["train"] > 0 and result["images_per_second"] > 0


def test_lr_is_chosen_on_val_and_the_seeds_train_at_it(full_run: tuple[dict[str, Any], Path]) -> None:
    result, _ = full_run
    by_lr = {float(k): v for k, v in result["val_accuracy_by_lr"].items()}
    assert set(by_lr) == set(result["lr_grid"])
    assert by_lr[result["chosen_lr"]] == max(by_lr.values())
    assert result["val_accuracy"]["per_seed"][0] == by_lr[result["chosen_lr"]]  # seed 0 is the grid's run
    assert result["best_seed"] in (0, 1)
    assert result["weights"]["card"]["lr"] == result["chosen_lr"]


def test_linear_probe_beats_chance_and_the_grid_picks_by_val(linear_run: dict[str, Any]) -> None:
    result = linear_run
    assert result["config"]["linear_on_features"] is True
    assert result["config"]["backbone_lr_scale"] == 0.0 and result["config"]["augment"] is False
    assert result["config"]["trainable_parameters"] == 3 * 96 + 3  # test_resnet: 96 features -> 3 classes
    by_lr = result["val_accuracy_by_lr"]
    assert by_lr["0.3"] > by_lr["1e-05"] + 0.3  # 1e-5 leaves the head where it started
    assert result["chosen_lr"] == 0.3
    assert result["test_accuracy"]["mean"] >= 0.6 > result["chance_accuracy"] + 0.2  # random features, colours


def test_partial_keeps_the_early_blocks_bit_identical(
    shapes: Path, full_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    # start from the fully fine-tuned model (a trained backbone, loaded as local-dir:), as one would a zoo model
    source = f"local-dir:{full_run[1]}"
    base = load_backbone(source).model
    names, info = partial_trainable_parameters(base)
    assert info == {"blocks": 4, "trained_blocks": 1, "first_trained": "layer4.0.conv1.weight"}  # 25% of 4 blocks
    assert names == {n for n, _ in base.named_parameters() if n.startswith(("layer4.", "fc."))}

    out = tmp_path / "partial"
    result = finetune(str(shapes), source, strategy="partial", epochs=3, lr_grid=(0.03,), output_dir=out, **FAST)
    assert result["config"]["partial"] == info and result["config"]["backbone_lr_scale"] == 0.1
    assert result["config"]["trainable_parameters"] == sum(p.numel() for n, p in base.named_parameters() if n in names)
    assert result["test_accuracy"]["mean"] >= 0.8
    tuned = load_file(out / "model.safetensors")
    before = base.state_dict()
    frozen = [k for k in before if not k.startswith(("layer4.", "fc."))]
    assert any("running_mean" in k for k in frozen)  # BatchNorm statistics are compared too
    for key in frozen:
        assert torch.equal(tuned[key], before[key]), key
    assert not torch.equal(tuned["layer4.0.conv1.weight"], before["layer4.0.conv1.weight"])
    assert not torch.equal(tuned["layer4.0.bn1.running_mean"], before["layer4.0.bn1.running_mean"])


def test_freeze_stages_freezes_the_stem_and_the_named_stages_bit_identical(
    shapes: Path, full_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    source = f"local-dir:{full_run[1]}"
    base = load_backbone(source).model
    assert [entry["module"] for entry in base.feature_info] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    every = {n for n, _ in base.named_parameters()}
    names, info = stage_trainable_parameters(base, 2)  # the stem (conv1, bn1, act1) and layer1
    assert every - names == {n for n in every if n.startswith(("conv1.", "bn1.", "layer1."))}
    assert info == {"stages": 5, "frozen_stages": 2, "last_frozen": "layer1", "first_trained": "layer2.0.conv1.weight"}
    assert stage_trainable_parameters(base, 0)[0] == every
    assert every - stage_trainable_parameters(base, 5)[0] == {n for n in every if not n.startswith("fc.")}
    with pytest.raises(InvalidFinetuneConfig, match="has 5 stages .*at most 5"):
        stage_trainable_parameters(base, 6)

    out = tmp_path / "stages"
    result = finetune(
        str(shapes), source, strategy="partial", freeze_stages=2, epochs=2, lr_grid=(0.03,), output_dir=out, **FAST
    )
    assert result["config"]["partial"] == info and result["advice"] is None
    assert result["config"]["trainable_parameters"] == sum(p.numel() for n, p in base.named_parameters() if n in names)
    tuned, before = load_file(out / "model.safetensors"), base.state_dict()
    frozen = [k for k in before if k.startswith(("conv1.", "bn1.", "layer1."))]
    assert any("running_mean" in k for k in frozen)
    for key in frozen:
        assert torch.equal(tuned[key], before[key]), key
    assert not torch.equal(tuned["layer2.0.conv1.weight"], before["layer2.0.conv1.weight"])


def test_advised_runs_what_the_ranking_advises_and_freezes_exactly_that(
    shapes: Path, full_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    from service.contract import FinetuneResult

    # an untrained backbone has nothing to transfer: the advice is to train it from scratch, which runs full
    scratch = finetune(str(shapes), BACKBONE, strategy="advised", epochs=1, lr_grid=(0.03,), **FAST)
    assert scratch["advice"]["transfer"]["strategy"] == "scratch" and scratch["strategy"] == "full"
    assert scratch["advice"]["transfer"]["advice"].startswith("train it from scratch")

    # a model trained on these very classes: its head reads them off (as a classifier), which needs no training;
    # the advised run is the cheapest trained strategy, linear: every backbone parameter stays as it was
    source, out = f"local-dir:{full_run[1]}", tmp_path / "advised"
    result = finetune(str(shapes), source, strategy="advised", epochs=2, lr_grid=(0.03,), output_dir=out, **FAST)
    advice = result["advice"]
    layers, transfer = advice["layers"], advice["transfer"]
    assert layers["n_stages"] == 5 and len(layers["layers"]) == 6 and layers["layers"][-1]["module"] == "pre_logits"
    assert transfer["strategy"] == "as_classifier" and result["strategy"] == advice["runs"] == "linear"
    tuned, before = load_file(out / "model.safetensors"), load_backbone(source).model.state_dict()
    frozen = [key for key in before if not key.startswith("fc.")]
    assert any("running_mean" in key for key in frozen)
    for key in frozen:
        assert torch.equal(tuned[key], before[key]), key  # weights and BatchNorm statistics unchanged
    assert not torch.equal(tuned["fc.weight"], before["fc.weight"])
    assert FinetuneResult.model_validate({**result, "kind": "finetune"}).advice is not None


def test_a_model_ranked_on_its_own_classes_is_advised_as_a_classifier(
    shapes: Path, full_run: tuple[dict[str, Any], Path]
) -> None:
    from service.pipeline.ranking.rank import rank_backbones

    # the fine-tuned model's source classes are this dataset's classes: its head needs no training
    ranked = rank_backbones(str(shapes / "train"), [f"local-dir:{full_run[1]}", BACKBONE], device="cpu")
    by_id = {row["id"]: row["transfer"] for row in ranked["backbones"]}
    advice = by_id[f"local-dir:{full_run[1]}"]
    assert advice["strategy"] == "as_classifier", advice
    head = next(o for o in advice["options"] if o["strategy"] == "as_classifier")
    assert head["predicted"]["value"] >= 0.9 and head["note"] is None
    # an untrained network's ImageNet-sized random head maps nothing: it is advised to train
    assert by_id[BACKBONE]["strategy"] != "as_classifier"


# --------------------------------------------------------------------------------------- saved model


def test_saved_folder_reloads_and_reproduces_the_test_accuracy(
    shapes: Path, full_run: tuple[dict[str, Any], Path]
) -> None:
    result, out = full_run
    weights = result["weights"]
    assert weights["path"] == str(out) and weights["backbone_id"] == f"local-dir:{out}"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "card.json", "config.json", "model.safetensors"]
    assert weights["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left over

    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    assert config["label_names"] == result["dataset"]["classes"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["pretrained_cfg"]["mean"] == list(result["config"]["data_config"]["mean"])
    card = json.loads((out / "card.json").read_text())
    assert card == weights["card"]
    best = result["seeds"].index(result["best_seed"])
    assert card["seed"] == result["best_seed"] and card["strategy"] == "full"
    assert card["test_accuracy"] == result["test_accuracy"]["per_seed"][best]
    assert (
        card["base_backbone"]["id"] == BACKBONE and card["dataset"]["fingerprint"] == result["dataset"]["fingerprint"]
    )
    assert set(card["versions"]) >= {"torch", "timm", "backbone_rank"} and card["weights_sha256"] == weights["sha256"]
    assert f"{card['test_accuracy']:.4f}" in (out / "README.md").read_text()

    loaded = load_backbone(weights["backbone_id"])
    assert loaded.num_source_classes == 3 and tuple(loaded.data_config["input_size"]) == (3, 32, 32)
    test = load_split_tensors(load_dataset(f"{shapes}#test"), loaded.data_config)
    reproduced = evaluate(loaded.model, test, mean=loaded.data_config["mean"], std=loaded.data_config["std"])
    assert reproduced.accuracy == result["test_accuracy"]["per_seed"][best]


def test_linear_head_folded_into_the_saved_model_reproduces_its_accuracy(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "linear"
    result = finetune(str(shapes), BACKBONE, strategy="linear", lr_grid=(0.3,), epochs=10, output_dir=out, **FAST)
    loaded = load_backbone(f"local-dir:{out}")
    val = load_split_tensors(load_dataset(f"{shapes}#val"), loaded.data_config)
    test = load_split_tensors(load_dataset(f"{shapes}#test"), loaded.data_config)
    norm = {"mean": loaded.data_config["mean"], "std": loaded.data_config["std"]}
    # val was scored on standardised features, test through the whole model: both agree with the saved model
    assert evaluate(loaded.model, val, **norm).accuracy == result["val_accuracy_by_lr"]["0.3"]
    assert evaluate(loaded.model, test, **norm).accuracy == result["test_accuracy"]["mean"]
    base = load_backbone(BACKBONE).model.state_dict()
    tuned = load_file(out / "model.safetensors")
    assert all(torch.equal(tuned[k], v) for k, v in base.items() if not k.startswith("fc."))


def test_an_existing_output_folder_is_replaced_only_if_it_is_an_earlier_output(shapes: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InvalidFinetuneConfig, match="not empty"):
        finetune(str(shapes), BACKBONE, strategy="linear", output_dir=foreign, **FAST)
    assert (foreign / "notes.txt").read_text() == "mine"
    out = tmp_path / "again"
    for seed in (3, 4):
        result = finetune(str(shapes), BACKBONE, strategy="linear", epochs=2, seeds=(seed,), output_dir=out, **FAST)
        assert json.loads((out / "card.json").read_text())["seed"] == seed
    assert result["weights"]["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "foreign"]


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_the_same_model_and_numbers(shapes: Path, tmp_path: Path) -> None:
    runs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        options = {"epochs": 2, "lr_grid": (0.03,), "seeds": (seed,), "output_dir": tmp_path / name}
        runs.append(finetune(str(shapes), BACKBONE, strategy="full", **options, **FAST))
    a, b, c = runs
    assert a["weights"]["sha256"] == b["weights"]["sha256"] != c["weights"]["sha256"]
    for key in ("val_accuracy_by_lr", "test_accuracy", "per_class_accuracy", "confusion_matrix"):
        assert a[key] == b[key]


# ------------------------------------------------------------------------------------------------ splits


def _pixels(dataset: Any, index: int) -> bytes:
    return dataset.open_image(index).tobytes()


def test_missing_val_and_test_are_carved_deterministically_by_content(tmp_path: Path) -> None:
    flat = _write_shapes(tmp_path / "flat", {"": 10})
    splits = _load_splits(load_dataset(str(flat)).ref, roots=None, max_per_class=None, builtin_dir=None)
    assert splits.carved == ["val", "test"]
    sizes = {role: np.bincount(getattr(splits, role).labels).tolist() for role in ("train", "val", "test")}
    assert sizes == {"train": [6, 6, 6], "val": [2, 2, 2], "test": [2, 2, 2]}  # round(0.2 * 10) per class
    sources = {role: {item.source for item in getattr(splits, role).items} for role in ("train", "val", "test")}
    assert not sources["train"] & sources["val"] and not sources["train"] & sources["test"]
    assert not sources["val"] & sources["test"]
    assert len(set.union(*sources.values())) == 30
    assert len({getattr(splits, role).fingerprint for role in ("train", "val", "test")}) == 3

    # the same images under other names (so in another listing order) land in the same splits
    renamed = tmp_path / "renamed"
    shutil.copytree(flat, renamed)
    for cls in CLASSES:
        for path in sorted((renamed / cls).iterdir()):
            path.rename(path.with_name(f"z{999 - int(path.stem)}.png"))
    again = _load_splits(load_dataset(str(renamed)).ref, roots=None, max_per_class=None, builtin_dir=None)
    for role in ("train", "val", "test"):
        first, second = getattr(splits, role), getattr(again, role)
        assert {_pixels(first, i) for i in range(len(first))} == {_pixels(second, i) for i in range(len(second))}


def test_only_the_missing_split_is_carved_and_the_result_says_so(tmp_path: Path) -> None:
    root = _write_shapes(tmp_path / "tt", {"train": 10, "test": 4})
    result = finetune(str(root), BACKBONE, strategy="linear", epochs=3, **FAST)
    assert result["dataset"]["carved"] == ["val"]
    assert result["lr_grid"] == list(STRATEGY_DEFAULTS["linear"].lr_grid)  # the strategy's default grid
    splits = result["dataset"]["splits"]
    assert {k: (v["n_images"], v["source"]) for k, v in splits.items()} == {
        "train": (24, "carved"),
        "val": (6, "carved"),
        "test": (12, "split"),
    }


def test_classes_are_mapped_by_name_across_splits(tmp_path: Path) -> None:
    root = _write_shapes(tmp_path / "partial_classes", {"train": 6, "val": 3})
    _write_shapes(root, {"test": 3}, seed=1, classes=CLASSES[:2])  # test lacks one class: allowed
    splits = _load_splits(load_dataset(str(root)).ref, roots=None, max_per_class=None, builtin_dir=None)
    assert splits.test.classes == splits.train.classes == sorted(CLASSES)
    names = [splits.test.classes[label] for label in splits.test.labels]
    assert sorted(set(names)) == sorted(CLASSES[:2])
    assert all(Path(item.source).parent.name == splits.test.classes[item.label] for item in splits.test.items)

    _write_shapes(root, {"val": 2}, classes=("purple_star",))
    with pytest.raises(InvalidDataset, match="purple_star"):
        _load_splits(load_dataset(str(root)).ref, roots=None, max_per_class=None, builtin_dir=None)


# ------------------------------------------------------------------------------------- winner, progress


def test_finetune_winner_fine_tunes_the_top_ranked_backbone(shapes: Path, tmp_path: Path) -> None:
    from service.bootstrap import cli_runtime
    from service.config import Settings
    from service.contract import RankingResult, load_result
    from service.pipeline import engine

    # a ranking saved by `rank --json` before the request/result contract (schema_version 1), pointed at shapes
    saved = json.loads((Path(__file__).parents[1] / "contract" / "data" / "ranking-v1.json").read_text())
    saved["dataset"]["ref"] = {"kind": "folder", "path": str(shapes), "split": "train"}
    saved["backbones"][0].update(id=BACKBONE, mean_rank=1.2)
    ranking = load_result(saved)
    assert isinstance(ranking, RankingResult)
    request = engine.winner_request(ranking, strategy="linear", epochs=3, **FAST)
    assert request.backbone == BACKBONE and request.dataset is not None and request.dataset.split is None
    result = engine.finetune(request, cli_runtime(Settings(cache_dir=tmp_path / "cache")), winner_of=ranking)
    assert result.backbone.id == BACKBONE
    assert result.dataset.ref.model_dump(exclude_none=True) == saved["dataset"]["ref"]
    assert result.ranking is not None and result.ranking.model_dump() == {"rank": 1, "mean_rank": 1.2, "n_backbones": 2}
    with pytest.raises(ValueError, match="no backbone to fine-tune"):
        engine.winner_request(ranking.model_copy(update={"backbones": []}))


def test_progress_events_and_cancel(shapes: Path) -> None:
    events: list[FinetuneProgress] = []
    finetune(str(shapes), BACKBONE, strategy="full", epochs=2, seeds=(0, 1), progress=events.append, **FAST)
    stages = [e.stage for e in events]
    assert stages[0] == "load" and "train" in stages and stages[-1] == "eval"
    train = [e for e in events if e.stage == "train"]
    assert {e.runs for e in events} == {3}  # two lrs with seed 0, then seed 1
    assert [e.run for e in train] == sorted(e.run for e in train) and {e.run for e in train} == {1, 2, 3}
    assert {(e.lr, e.seed) for e in train if e.run == 3} == {(train[-1].lr, 1)}
    last = train[-1]
    assert (last.epoch, last.epochs, last.step) == (2, 2, last.steps) and math.isfinite(last.loss)

    calls = iter(range(1000))
    with pytest.raises(TrainingCancelled):
        finetune(str(shapes), BACKBONE, strategy="full", cancel=lambda: next(calls) >= 3, **FAST)


# -------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "surgical"}, "unknown fine-tuning strategy 'surgical'; use one of linear, partial, full, adv"),
        ({"strategy": "full", "freeze_stages": 2}, "freeze_stages says how much .* partial strategy freezes"),
        ({"strategy": "partial", "freeze_stages": -1}, "freeze_stages must be a non-negative integer"),
        ({"strategy": "advised", "freeze_stages": 1}, "strategy advised chooses the strategy"),
        ({"strategy": "advised", "backbone_lr_scale": 0.5}, "strategy advised chooses the strategy"),
        ({"lr_grid": []}, "learning-rate grid is empty"),
        ({"lr_grid": [0.01, -1.0]}, "positive and finite"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"seeds": []}, "no seed given"),
        ({"input_size": 2}, "input_size"),
        ({"strategy": "linear", "backbone_lr_scale": 0.5}, "freezes the backbone"),
    ],
)
def test_bad_arguments_are_actionable_errors(shapes: Path, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidFinetuneConfig, match=match) as info:
        finetune(str(shapes), BACKBONE, **kwargs)
    assert info.value.code == "invalid_finetune_config" and isinstance(info.value, ValueError)


def test_dataset_and_backbone_errors_propagate(shapes: Path) -> None:
    with pytest.raises(InvalidDataset, match="drop '#val'"):
        finetune(f"{shapes}#val", BACKBONE, **FAST)
    with pytest.raises(UnknownBackbone):
        finetune(str(shapes), "random:no_such_arch", **FAST)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_finetune_winner_as_json(shapes: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "BACKBONE_RANK_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    # a ranking saved by `rank --json` before the request/result contract (schema_version 1), pointed at shapes
    saved = json.loads((Path(__file__).parents[1] / "contract" / "data" / "ranking-v1.json").read_text())
    saved["dataset"]["ref"] = {"kind": "folder", "path": str(shapes), "split": "train"}
    saved["backbones"][0]["id"] = BACKBONE
    ranking = tmp_path / "ranking.json"
    ranking.write_text(json.dumps(saved))
    out = tmp_path / "cli-model"
    options = "--strategy linear --epochs 3 --lr 0.3 --seed 0 --seed 1 --input-size 32 --json".split()
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "finetune", "--winner", str(ranking), "--out", str(out), *options],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["backbone"]["id"] == BACKBONE and result["strategy"] == "linear"
    assert result["lr_grid"] == [0.3] and result["seeds"] == [0, 1] and result["ranking"]["rank"] == 1
    assert result["weights"]["path"] == str(out) and (out / "model.safetensors").is_file()


def test_cli_finetune_summary_and_errors(shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    monkeypatch.setenv("BACKBONE_RANK_CACHE_DIR", str(tmp_path / "cache"))
    runner = CliRunner()
    args = ["finetune", str(shapes), "-b", BACKBONE, "--strategy", "linear", "--epochs", "2", "--input-size", "32"]
    done = runner.invoke(app, [*args, "--lr", "0.1", "--lr", "0.3"])
    assert done.exit_code == 0, done.output
    text = " ".join(done.output.split())
    assert "random:test_resnet fine-tuned (linear, 2 epochs)" in text and "test accuracy" in text
    assert "worst classes:" in text and "weights: not saved" in text

    bad = runner.invoke(app, [*args, "--strategy", "surgical"])
    assert bad.exit_code == 2
    # refused by the request model, before anything loads
    expected = "error [invalid_request]: --strategy: Input should be 'linear', 'partial', 'full' or 'advised'"
    assert expected in " ".join(bad.output.split())
    neither = runner.invoke(app, ["finetune", str(shapes)])
    assert neither.exit_code == 2 and "--backbone" in neither.output
    missing = runner.invoke(app, ["finetune", "--winner", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "cannot read the ranking" in " ".join(missing.output.split())


# ----------------------------------------------------------------------------------------- built-in target


def test_full_finetune_beats_chance_on_a_builtin_target_quick(tmp_path: Path, builtins: None) -> None:
    # natural-patches: crops of 18 photographs, learnable from scratch in a few epochs (colour and texture)
    quick = {"epochs": 4, "max_per_class": 12, "lr_grid": (0.03,), "input_size": 32, "batch_size": 32}
    result = finetune("builtin:natural-patches", "random:resnet10t", builtin_dir=tmp_path / "builtin", **quick)
    assert result["dataset"]["n_classes"] == 18 and result["dataset"]["carved"] == []
    assert result["test_accuracy"]["mean"] > 3 * result["chance_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dataset", "backbone"),
    [
        ("builtin:natural-patches", "random:resnet10t"),
        # digits (coloured, noisy, affine handwriting, 40 per class) is not learnable from scratch in 10 epochs:
        # random:resnet10t stays at chance there; ImageNet features (the packaged weights) get well above it
        ("builtin:digits", "tf_efficientnet_lite0.in1k"),
    ],
)
def test_full_finetune_beats_chance_on_builtin_targets(
    dataset: str, backbone: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builtins: None
) -> None:
    monkeypatch.setenv("BACKBONE_RANK_CACHE_DIR", str(tmp_path / "cache"))
    from service.config import get_settings

    get_settings.cache_clear()
    try:
        result = finetune(dataset, backbone, strategy="full", input_size=32)  # the default recipe
    finally:
        get_settings.cache_clear()
    assert result["config"]["epochs"] == 10 and result["dataset"]["carved"] == []
    assert result["test_accuracy"]["mean"] > 2 * result["chance_accuracy"]
