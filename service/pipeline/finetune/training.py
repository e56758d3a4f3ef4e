"""Supervised training of a timm classifier on in-memory images: the shared core of the zoo and fine-tuning.

A split is decoded once into a uint8 tensor at the model's input size (:func:`load_split_tensors`, timm's
*eval* geometry), then :func:`train_classifier` runs plain mini-batch training over it (SGD with Nesterov
momentum or AdamW, linear warmup then cosine decay stepped per batch, optional random-translation
augmentation) and :func:`evaluate` measures accuracy, per-class accuracy and the confusion matrix.

Everything random in training (shuffling, augmentation, dropout) draws from generators seeded by
:attr:`TrainConfig.seed`, and the caller's global RNG state is left untouched, so the same model, data
and config give bit-identical weights on the CPU (with the same number of torch threads).

Frozen parameters (``backbone_lr_scale=0`` or ``trainable(name) -> False``) get ``requires_grad=False``
for the run; BatchNorm layers whose parameters are all frozen stay in eval mode, so their running
statistics do not move either and a frozen backbone is bit-identical after training.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import create_transform
from torchvision.transforms import Compose, Normalize

from service.pipeline.data.datasets import Dataset
from service.pipeline.data.decode import ImageDecodeError

__all__ = [
    "EvalResult",
    "TensorSplit",
    "TrainConfig",
    "TrainHistory",
    "TrainProgress",
    "TrainingCancelled",
    "evaluate",
    "load_split_tensors",
    "train_classifier",
]

_logger = logging.getLogger(__name__)

_OPTIMIZERS = ("sgd", "adamw")


class TrainingCancelled(Exception):
    """Raised by :func:`train_classifier` when its ``cancel`` callback returns True."""


# ------------------------------------------------------------------------------------------------ data


@dataclass
class TensorSplit:
    """Decoded images of one split, at the model's input size, in memory.

    Attributes
    ----------
    images : torch.Tensor
        ``(N, 3, H, W)`` uint8, contiguous.
    labels : torch.Tensor
        ``(N,)`` int64, indices into ``classes``.
    classes : list of str
        Class names, index = label.
    n_failed : int
        Images skipped because they could not be decoded.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    n_failed: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _eval_geometry(data_config: Mapping[str, Any]) -> Callable[[Any], Any]:
    """timm's eval transform for ``data_config`` without its ToTensor + Normalize tail (PIL in, PIL out)."""
    keys = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
    transform = create_transform(**{k: data_config[k] for k in keys if k in data_config}, is_training=False)
    steps = list(getattr(transform, "transforms", []))
    if (
        len(steps) < 2
        or not isinstance(steps[-1], Normalize)
        or type(steps[-2]).__name__ not in ("ToTensor", "MaybeToTensor")
    ):
        raise ValueError(f"unexpected timm eval transform for data config {dict(data_config)}: {transform}")
    return Compose(steps[:-2])


def load_split_tensors(dataset: Dataset, data_config: Mapping[str, Any]) -> TensorSplit:
    """Decode every image of ``dataset`` at the model's input size, as uint8.

    The geometry is exactly timm's eval transform for ``data_config`` (resize, then centre crop, per
    input_size / interpolation / crop_pct / crop_mode); normalisation is left to the training loop so the
    split stays compact (``N * 3 * H * W`` bytes).

    Parameters
    ----------
    dataset : Dataset
        The split to decode; labels come from ``dataset.labels``.
    data_config : mapping
        ``timm.data.resolve_model_data_config(model)`` (or :attr:`LoadedBackbone.data_config`).

    Returns
    -------
    TensorSplit
        Undecodable images (:class:`ImageDecodeError`) are skipped and counted in ``n_failed``.
    """
    geometry = _eval_geometry(data_config)
    _, height, width = (int(v) for v in data_config["input_size"])
    labels = dataset.labels
    kept: list[int] = []
    arrays: list[np.ndarray] = []
    failed = 0
    for index in range(len(dataset)):
        try:
            image = dataset.open_image(index)
        except ImageDecodeError as err:
            _logger.info("skipping undecodable image %s: %s", dataset.items[index].source, err)
            failed += 1
            continue
        array = np.asarray(geometry(image.convert("RGB")), dtype=np.uint8)
        if array.shape != (height, width, 3):  # the transform always ends in a centre crop of input_size
            raise ValueError(f"eval transform gave {array.shape}, expected {(height, width, 3)}")
        arrays.append(array)
        kept.append(index)
    if arrays:
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    else:
        images = torch.zeros((0, 3, height, width), dtype=torch.uint8)
    split_labels = torch.as_tensor(np.asarray(labels)[kept], dtype=torch.int64)
    if failed:
        _logger.warning("%d of %d images could not be decoded and were skipped", failed, len(dataset))
    return TensorSplit(images=images, labels=split_labels, classes=list(dataset.classes), n_failed=failed)


# -------------------------------------------------------------------------------------------- training


@dataclass
class TrainConfig:
    """Recipe of one training run.

    Attributes
    ----------
    epochs : int
        Passes over the training split.
    batch_size : int
    lr : float
        Learning rate of the head (the classifier); the peak of the schedule.
    backbone_lr_scale : float
        Backbone parameters get ``lr * backbone_lr_scale``; 0.0 freezes them.
    weight_decay : float
        Applied to weight matrices and kernels, not to biases and norm parameters (timm's habit).
    momentum : float
        SGD momentum (Nesterov); ignored by AdamW.
    optimizer : {"sgd", "adamw"}
    warmup_epochs : float
        Linear warmup from 0, then cosine decay to 0; stepped per batch.
    label_smoothing : float
    augment : bool
        Random translation: reflect-pad by ``side // 8`` and crop back at a random offset. No flips
        (glyphs and shapes are not mirror-symmetric).
    seed : int
        Seeds shuffling, augmentation and dropout (not the model's init).
    max_seconds : float or None
        Stop early, after the current epoch, once training has run this long.
    grad_clip : float or None
        Clip the global gradient norm to this value.
    channels_last : bool or None
        Run in channels_last memory format. ``None``: on CUDA only. On the CPU it was 1.1-7x *slower* for
        training at 32 px here (resnet10t, convnext_atto, vit; torch 2.14, 2 threads), only a little faster
        for the MobileNets.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    backbone_lr_scale: float = 1.0
    weight_decay: float = 5e-4
    momentum: float = 0.9
    optimizer: str = "sgd"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True
    seed: int = 0
    max_seconds: float | None = None
    grad_clip: float | None = None
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use one of {', '.join(_OPTIMIZERS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if self.lr < 0 or self.backbone_lr_scale < 0 or self.warmup_epochs < 0:
            raise ValueError("lr, backbone_lr_scale and warmup_epochs must be >= 0")


@dataclass
class TrainProgress:
    """Reported after every batch."""

    epoch: int  # 1-based
    epochs: int
    step: int  # batches done in total
    steps: int  # total batches
    loss: float  # running mean loss of the current epoch
    seconds: float


@dataclass
class TrainHistory:
    """What happened during :func:`train_classifier`."""

    epoch_loss: list[float] = field(default_factory=list)
    epoch_train_accuracy: list[float] = field(default_factory=list)  # on the augmented training batches
    seconds: float = 0.0
    images_per_second: float = 0.0
    stopped_early: bool = False


def _normalizer(
    mean: Sequence[float], std: Sequence[float], device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    mean_t = torch.as_tensor([float(m) * 255.0 for m in mean], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor([float(s) * 255.0 for s in std], dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def normalize(batch: torch.Tensor) -> torch.Tensor:
        # (x / 255 - mean) / std, folded into one subtraction and one division of the uint8 values
        return (batch.to(device=device, dtype=torch.float32) - mean_t) / std_t

    return normalize


def _translate(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation of a float batch: reflect-pad by side // 8, crop back at a random offset per image."""
    n, _, height, width = batch.shape
    pad = min(height, width) // 8
    if pad == 0:
        return batch
    padded = F.pad(batch, (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(batch.device)
    rows = offsets[0][:, None] + torch.arange(height, device=batch.device)  # (n, H)
    cols = offsets[1][:, None] + torch.arange(width, device=batch.device)  # (n, W)
    index = torch.arange(n, device=batch.device)[:, None, None]
    # advanced indexing puts the broadcast (n, H, W) dims first and the channel dim last
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _head_names(model: torch.nn.Module, head_parameter_names: Collection[str] | None) -> set[str]:
    names = dict(model.named_parameters())
    if head_parameter_names is not None:
        unknown = sorted(set(head_parameter_names) - set(names))
        if unknown:
            raise ValueError(f"head_parameter_names not in the model: {', '.join(unknown[:5])}")
        return set(head_parameter_names)
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return set()
    classifier = get_classifier()
    ids = {id(p) for p in classifier.parameters()} if isinstance(classifier, torch.nn.Module) else set()
    return {name for name, p in names.items() if id(p) in ids}


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _frozen_norms(model: torch.nn.Module, backbone_frozen: bool) -> list[torch.nn.Module]:
    """BatchNorm layers whose parameters are all frozen (parameter-less ones follow the backbone)."""
    frozen: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if (params and not any(p.requires_grad for p in params)) or (not params and backbone_frozen):
                frozen.append(module)
    return frozen


@contextmanager
def _training_state(model: torch.nn.Module, trainable: dict[str, bool], backbone_frozen: bool) -> Iterator[None]:
    """Set requires_grad and train mode for the run; restore requires_grad, eval mode and layout after."""
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(trainable[name])
        model.train()
        for module in _frozen_norms(model, backbone_frozen):
            module.eval()
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(before[name])
        model.to(memory_format=torch.contiguous_format)  # safetensors and state-dict users expect contiguous
        model.eval()


def train_classifier(
    model: torch.nn.Module,
    train: TensorSplit,
    config: TrainConfig,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    head_parameter_names: Collection[str] | None = None,
    trainable: Callable[[str], bool] | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[TrainProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> TrainHistory:
    """Train ``model`` (in place) to classify ``train``.

    Parameters
    ----------
    model : torch.nn.Module
        A timm model whose classifier has ``len(train.classes)`` outputs.
    train : TensorSplit
        Training images at the model's input size (:func:`load_split_tensors`).
    config : TrainConfig
    mean, std : sequence of float
        Normalisation (0-1 scale, as in timm's data config), applied on the fly to uint8 batches.
    head_parameter_names : collection of str, optional
        Parameters that get the full ``lr``; default: the parameters of ``model.get_classifier()``.
        All others are the backbone (``lr * backbone_lr_scale``).
    trainable : callable, optional
        ``trainable(name) -> bool`` for each parameter; False freezes it. Default: all trainable.
    device : torch.device or str
        The model is moved there and left there.
    progress : callable, optional
        Called with a :class:`TrainProgress` after every batch.
    cancel : callable, optional
        Checked before every batch; True raises :class:`TrainingCancelled` (the model is left half-trained).

    Returns
    -------
    TrainHistory
        The model is in eval mode, its parameters contiguous and their ``requires_grad`` as before.

    Raises
    ------
    ValueError
        Empty split, classifier size != number of classes, nothing trainable, bad head names.
    TrainingCancelled
        ``cancel()`` returned True.
    """
    n = len(train)
    if n == 0:
        raise ValueError("the training split has no images")
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and int(num_classes) != len(train.classes):
        raise ValueError(f"the model has {num_classes} outputs but the split has {len(train.classes)} classes")
    device = torch.device(device)
    head = _head_names(model, head_parameter_names)
    backbone_frozen = config.backbone_lr_scale == 0.0
    flags = {}
    for name, _ in model.named_parameters():
        allowed = trainable(name) if trainable is not None else True
        flags[name] = bool(allowed) and (name in head or not backbone_frozen)
    if not any(flags.values()):
        raise ValueError("no trainable parameters: every parameter is frozen")

    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if flags[name]:
            # no weight decay on biases and norm scales (1-D), as timm's param_groups_weight_decay
            groups.setdefault((name in head, p.ndim > 1), []).append(p)
    param_groups: list[dict[str, Any]] = [
        {
            "params": params,
            "lr": config.lr * (1.0 if is_head else config.backbone_lr_scale),
            "weight_decay": config.weight_decay if decay else 0.0,
        }
        for (is_head, decay), params in sorted(groups.items())
    ]
    for group in param_groups:
        group["base_lr"] = group["lr"]
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    else:
        optimizer = torch.optim.AdamW(param_groups, lr=config.lr)

    batch_size = min(config.batch_size, n)
    # a last batch of one image breaks BatchNorm in train mode: drop it (it is reshuffled next epoch)
    steps_per_epoch = n // batch_size + (1 if n % batch_size > 1 else 0)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    normalize = _normalizer(mean, std, device)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(config.seed)
    channels_last = config.channels_last if config.channels_last is not None else device.type == "cuda"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    history = TrainHistory()
    began = time.perf_counter()
    seen = 0
    step = 0
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), _training_state(model, flags, backbone_frozen):
        torch.manual_seed(config.seed)  # dropout and drop-path draw from the global generator
        for epoch in range(1, config.epochs + 1):
            order = torch.randperm(n, generator=generator)
            loss_sum, correct, count = 0.0, 0, 0
            for b in range(steps_per_epoch):
                if cancel is not None and cancel():
                    raise TrainingCancelled(f"training cancelled at epoch {epoch}, step {step}")
                index = order[b * batch_size : (b + 1) * batch_size]
                x = normalize(train.images[index])
                if config.augment:
                    x = _translate(x, generator)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = train.labels[index].to(device)
                factor = _lr_factor(step, total_steps, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                logits = model(x)
                loss = criterion(logits, y)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training diverged (loss {loss.item()}) at epoch {epoch}; lower lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in optimizer.param_groups for p in g["params"]], config.grad_clip
                    )
                optimizer.step()
                step += 1
                size = int(y.shape[0])
                seen += size
                loss_sum += float(loss.detach()) * size
                correct += int((logits.detach().argmax(1) == y).sum())
                count += size
                if progress is not None:
                    progress(TrainProgress(epoch, config.epochs, step, total_steps, loss_sum / count, _elapsed(began)))
            history.epoch_loss.append(loss_sum / count)
            history.epoch_train_accuracy.append(correct / count)
            _logger.debug("epoch %d/%d: loss %.4f, train accuracy %.3f", epoch, config.epochs, *_last(history))
            if config.max_seconds is not None and _elapsed(began) > config.max_seconds and epoch < config.epochs:
                history.stopped_early = True
                _logger.info("stopping after epoch %d: max_seconds=%s exceeded", epoch, config.max_seconds)
                break
    history.seconds = _elapsed(began)
    history.images_per_second = seen / history.seconds if history.seconds > 0 else 0.0
    return history


def _elapsed(began: float) -> float:
    return time.perf_counter() - began


def _last(history: TrainHistory) -> tuple[float, float]:
    return history.epoch_loss[-1], history.epoch_train_accuracy[-1]


# ------------------------------------------------------------------------------------------ evaluation


@dataclass
class EvalResult:
    """Accuracy of a classifier on one split.

    Attributes
    ----------
    accuracy : float
    per_class_accuracy : numpy.ndarray
        ``(C,)`` float; NaN for classes absent from the split.
    confusion : numpy.ndarray
        ``(C, C)`` int64; rows are the true class, columns the prediction.
    loss : float
        Mean cross-entropy.
    """

    accuracy: float
    per_class_accuracy: np.ndarray
    confusion: np.ndarray
    loss: float


def evaluate(
    model: torch.nn.Module,
    split: TensorSplit,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> EvalResult:
    """Classify ``split`` in eval mode without autograd; every module's train/eval mode is restored after
    (so it can run from a :func:`train_classifier` progress callback, frozen BatchNorm layers included).

    Raises
    ------
    ValueError
        Empty split, or the model's outputs do not match the split's classes.
    """
    n, num_classes = len(split), len(split.classes)
    if n == 0:
        raise ValueError("the split has no images")
    device = torch.device(device)
    normalize = _normalizer(mean, std, device)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    predictions, loss_sum = [], 0.0
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                x = normalize(split.images[start : start + batch_size])
                y = split.labels[start : start + batch_size].to(device)
                logits = model(x)
                if logits.ndim != 2 or logits.shape[1] != num_classes:
                    raise ValueError(
                        f"the model gives {tuple(logits.shape[1:])} outputs for a split of {num_classes} classes"
                    )
                loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                predictions.append(logits.argmax(1).cpu())
    finally:
        for module, training in modes:
            module.training = training
    predicted = torch.cat(predictions).numpy().astype(np.int64)
    true = split.labels.numpy().astype(np.int64)
    confusion = np.bincount(true * num_classes + predicted, minlength=num_classes * num_classes)
    confusion = confusion.reshape(num_classes, num_classes).astype(np.int64)
    support = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    return EvalResult(
        accuracy=float((predicted == true).mean()),
        per_class_accuracy=per_class.astype(np.float64),
        confusion=confusion,
        loss=loss_sum / n,
    )
