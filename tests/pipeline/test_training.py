"""service.pipeline.finetune.training: decoding at timm's eval geometry, training, freezing, determinism, evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform

from service.pipeline.data.datasets import load_dataset
from service.pipeline.finetune.training import (
    TensorSplit,
    TrainConfig,
    TrainingCancelled,
    TrainProgress,
    evaluate,
    load_split_tensors,
    train_classifier,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 60, 230)}


def _square_image(rng: np.random.Generator, colour: tuple[int, int, int], size: int = 32) -> Image.Image:
    """A coloured square at a random place on a noisy grey background."""
    img = rng.integers(90, 150, size=(size, size, 3)).astype(np.uint8)
    side = int(rng.integers(8, 14))
    top, left = rng.integers(0, size - side, size=2)
    img[top : top + side, left : left + side] = colour
    return Image.fromarray(img)


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TensorSplit]:
    """Three classes of coloured squares written as PNGs (train 24 / test 12 per class), decoded at 32 px."""
    root = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 12)):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                _square_image(rng, colour).save(root / split / name / f"{i}.png")
    config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    return {split: load_split_tensors(load_dataset(f"{root}#{split}"), config) for split in ("train", "test")}


def _model(arch: str = "test_resnet", seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(arch, pretrained=False, num_classes=3)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "config",
    [
        {"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center"},
        {"input_size": (3, 24, 40), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash"},
        {"input_size": (3, 20, 20), "interpolation": "bicubic", "crop_pct": 0.9, "crop_mode": "border"},
    ],
)
def test_load_split_tensors_matches_timm_eval_transform(tmp_path: Path, config: dict) -> None:
    rng = np.random.default_rng(1)
    sizes = {"a": [(45, 30), (32, 32)], "b": [(17, 61), (64, 48)]}  # (width, height), landscape and portrait
    for name, shapes in sizes.items():
        (tmp_path / name).mkdir()
        for i, (w, h) in enumerate(shapes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    # a grey-scale PNG is converted to RGB like the extraction does
    Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), mode="L").save(tmp_path / "a" / "grey.png")
    dataset = load_dataset(tmp_path)
    full = {**config, "mean": MEAN, "std": STD}
    split = load_split_tensors(dataset, full)

    _, height, width = config["input_size"]
    assert split.images.shape == (5, 3, height, width)
    assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
    assert split.classes == ["a", "b"]
    assert split.labels.tolist() == dataset.labels.tolist()
    assert split.n_failed == 0
    reference = create_transform(**full, is_training=False)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    for i in range(len(dataset)):
        expected = reference(dataset.open_image(i).convert("RGB"))
        ours = (split.images[i].float() / 255 - mean) / std
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_load_split_tensors_skips_and_counts_undecodable_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    broken = tmp_path / "b" / "broken.jpg"
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(broken, quality=95)
    broken.write_bytes(broken.read_bytes()[: int(broken.stat().st_size * 0.6)])  # header intact, data cut
    config = {"input_size": (3, 16, 16), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    split = load_split_tensors(load_dataset(tmp_path), {**config, "mean": MEAN, "std": STD})
    assert split.n_failed == 1
    assert split.labels.tolist() == [0, 0, 1, 1]


# ---------------------------------------------------------------------------------------------- training


def test_train_classifier_learns_separable_squares(squares: dict[str, TensorSplit]) -> None:
    model = _model()
    before = evaluate(model, squares["test"], mean=MEAN, std=STD)
    events: list[TrainProgress] = []
    history = train_classifier(
        model,
        squares["train"],
        TrainConfig(epochs=4, batch_size=16, lr=0.05, channels_last=True),
        mean=MEAN,
        std=STD,
        progress=events.append,
    )
    after = evaluate(model, squares["test"], mean=MEAN, std=STD)
    assert after.accuracy >= 0.8, (before.accuracy, after.accuracy, history.epoch_loss)
    assert after.loss < before.loss
    assert len(history.epoch_loss) == 4 and history.epoch_loss[-1] < history.epoch_loss[0]
    assert not history.stopped_early and history.images_per_second > 0
    # 72 images in batches of 16: 4 full batches and one of 8 per epoch
    assert [e.step for e in events] == list(range(1, 21))
    assert {e.steps for e in events} == {20} and events[-1].epoch == 4
    assert not model.training
    assert all(p.is_contiguous() for p in model.parameters())  # channels_last is undone for saving


def test_frozen_backbone_is_bit_identical_and_head_moves(squares: dict[str, TensorSplit]) -> None:
    model = _model()
    before = _state(model)
    head = {name for name, _ in model.named_parameters() if name.startswith("fc.")}
    evaluations = []

    def evaluate_midway(progress: TrainProgress) -> None:  # must not put the frozen BatchNorms back in train mode
        evaluations.append(evaluate(model, squares["test"], mean=MEAN, std=STD).accuracy)

    train_classifier(
        model,
        squares["train"],
        TrainConfig(epochs=2, batch_size=24, backbone_lr_scale=0.0),
        mean=MEAN,
        std=STD,
        progress=evaluate_midway,
    )
    assert len(evaluations) == 6
    after = model.state_dict()
    backbone_keys = [k for k in before if not k.startswith("fc.")]
    assert any("running_mean" in k for k in backbone_keys)  # BatchNorm statistics are checked too
    for key in backbone_keys:
        assert torch.equal(before[key], after[key]), key
    assert all(not torch.equal(before[k], after[k]) for k in head)
    assert all(p.requires_grad for p in model.parameters())  # restored after the run


def test_trainable_callback_freezes_selected_parameters(squares: dict[str, TensorSplit]) -> None:
    model = _model()
    before = _state(model)
    train_classifier(
        model,
        squares["train"],
        TrainConfig(epochs=1, batch_size=24),
        mean=MEAN,
        std=STD,
        trainable=lambda name: not name.startswith("conv1"),
    )
    after = model.state_dict()
    assert torch.equal(before["conv1.0.weight"], after["conv1.0.weight"])
    assert not torch.equal(before["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])


def test_same_seed_gives_identical_weights(squares: dict[str, TensorSplit]) -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        model = _model("test_vit")  # dropout-free but exercises a non-CNN; shuffling/augmentation are seeded
        config = TrainConfig(epochs=1, batch_size=16, lr=0.01, optimizer="adamw", seed=seed, warmup_epochs=0.5)
        train_classifier(model, squares["train"], config, mean=MEAN, std=STD)
        return _state(model)

    first, second, other = run(0), run(0), run(1)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_training_leaves_the_global_rng_alone(squares: dict[str, TensorSplit]) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_classifier(_model(), squares["train"], TrainConfig(epochs=1, batch_size=36), mean=MEAN, std=STD)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_cancel_raises_and_restores_eval_mode(squares: dict[str, TensorSplit]) -> None:
    model = _model()
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(TrainingCancelled):
        train_classifier(
            model, squares["train"], TrainConfig(epochs=3, batch_size=16), mean=MEAN, std=STD, cancel=cancel
        )
    assert len(calls) == 3
    assert not model.training


def test_max_seconds_stops_after_the_first_epoch(squares: dict[str, TensorSplit]) -> None:
    history = train_classifier(
        _model(), squares["train"], TrainConfig(epochs=5, batch_size=36, max_seconds=0.0), mean=MEAN, std=STD
    )
    assert history.stopped_early and len(history.epoch_loss) == 1


def test_bad_inputs_are_refused(squares: dict[str, TensorSplit]) -> None:
    with pytest.raises(ValueError, match="4 outputs but the split has 3 classes"):
        model = timm.create_model("test_resnet", pretrained=False, num_classes=4)
        train_classifier(model, squares["train"], TrainConfig(epochs=1), mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="every parameter is frozen"):
        train_classifier(
            _model(), squares["train"], TrainConfig(epochs=1), mean=MEAN, std=STD, trainable=lambda name: False
        )


# -------------------------------------------------------------------------------------------- evaluation


class _PixelClassifier(torch.nn.Module):
    """Predicts class k for an image filled with the value 50 * k; logits are 10 * one-hot."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.round(x[:, 0, 0, 0] * 255 / 50).long()
        return 10.0 * torch.nn.functional.one_hot(k, self.num_classes).float()


def test_evaluate_hand_checked_case() -> None:
    true = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 2, 2]
    images = torch.stack([torch.full((3, 4, 4), 50 * k, dtype=torch.uint8) for k in predicted])
    split = TensorSplit(images=images, labels=torch.tensor(true), classes=["a", "b", "c", "d"])
    result = evaluate(_PixelClassifier(4), split, mean=(0, 0, 0), std=(1, 1, 1), batch_size=4)

    assert result.accuracy == pytest.approx(4 / 6)
    np.testing.assert_array_equal(result.confusion, [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert result.confusion.dtype == np.int64
    np.testing.assert_allclose(result.per_class_accuracy[:3], [2 / 3, 1 / 2, 1.0])
    assert math.isnan(result.per_class_accuracy[3])  # class "d" is absent from the split
    right = -math.log(math.exp(10) / (math.exp(10) + 3))
    wrong = -math.log(1 / (math.exp(10) + 3))
    assert result.loss == pytest.approx((4 * right + 2 * wrong) / 6, rel=1e-5)


def test_evaluate_refuses_a_head_of_the_wrong_size() -> None:
    split = TensorSplit(
        images=torch.zeros((2, 3, 4, 4), dtype=torch.uint8), labels=torch.tensor([0, 1]), classes=["a", "b"]
    )
    with pytest.raises(ValueError, match="outputs for a split of 2 classes"):
        evaluate(_PixelClassifier(3), split, mean=(0, 0, 0), std=(1, 1, 1))
