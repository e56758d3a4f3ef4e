"""The model side of the strategies: a fresh head, which parameters train, a head on extracted features.

:func:`_fresh_model` copies the backbone and gives it a new head; :func:`partial_trainable_parameters`
picks the blocks the ``partial`` strategy trains, :func:`stage_trainable_parameters` the stages it trains when
it is told how many to freeze; :func:`_plain_linear_head`, :class:`_FeatureHead`,
:func:`_extract` and :func:`_fold_standardisation` let the ``linear`` strategy train its head on features
extracted once and fold their standardisation back into it (the strategies are described in the docstring
of ``service/pipeline/finetune/finetune.py``). Apart from the trainer (``service/pipeline/finetune/runs.py``)
because these are operations on timm models, with no notion of a run, a learning rate or a seed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from service.errors import InvalidFinetuneConfig
from service.pipeline.finetune.training import TensorSplit, TrainingCancelled
from service.pipeline.models._timm import timm_api
from service.pipeline.models.backbones import LoadedBackbone, feature_info_modules

__all__ = ["partial_trainable_parameters", "stage_trainable_parameters"]

_EVAL_BATCH = 256


def _prepare_data_config(loaded: LoadedBackbone, input_size: tuple[int, int] | None) -> dict[str, Any]:
    """The backbone's data config with ``input_size`` applied; resizes fixed-size models (ViTs) to match."""
    config = dict(loaded.data_config)
    if input_size is None:
        return config
    config["input_size"] = (3, *input_size)
    model = loaded.model
    fixed = bool(getattr(model, "pretrained_cfg", {}).get("fixed_input_size", False))
    if fixed and tuple(loaded.data_config["input_size"][1:]) != input_size:
        set_input_size = getattr(model, "set_input_size", None)
        if set_input_size is None:
            raise InvalidFinetuneConfig(
                f"{loaded.spec.id} has a fixed input size {tuple(loaded.data_config['input_size'][1:])} and cannot "
                "be resized; leave input_size out",
            )
        set_input_size(img_size=input_size)
    return config


def _fresh_model(base: torch.nn.Module, n_classes: int, seed: int) -> torch.nn.Module:
    """A copy of the backbone with a new head of ``n_classes`` outputs, initialised from ``seed``."""
    model = copy.deepcopy(base)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        timm_api(model).reset_classifier(n_classes)
    return model.eval()


def _head_parameter_names(model: torch.nn.Module) -> set[str]:
    """Parameters of ``model.get_classifier()`` (a tuple of heads for distilled models)."""
    classifier = timm_api(model).get_classifier()
    heads = classifier if isinstance(classifier, tuple | list) else (classifier,)
    ids = {id(p) for head in heads if isinstance(head, torch.nn.Module) for p in head.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def partial_trainable_parameters(model: torch.nn.Module, fraction: float = 0.25) -> tuple[set[str], dict[str, Any]]:
    """Parameter names the ``partial`` strategy trains: the last ``ceil(fraction * blocks)`` blocks onward.

    timm's ``group_matcher(coarse=False)`` orders the parameters as stem, blocks, then everything after
    the last block (final norm, head); the first group is the stem, the last one the head's.

    Returns
    -------
    names, info
        ``info``: ``{"blocks", "trained_blocks", "first_trained"}`` for the result.

    Raises
    ------
    InvalidFinetuneConfig
        The model has no ``group_matcher`` or fewer than one block.
    """
    from timm.models import group_parameters

    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        raise InvalidFinetuneConfig(
            f"{type(model).__name__} does not describe its blocks (no group_matcher); use strategy full or linear"
        )
    groups = group_parameters(model, matcher(coarse=False))
    ordinals = sorted(groups)
    blocks = ordinals[1:-1]
    if not blocks:
        raise InvalidFinetuneConfig(
            f"{type(model).__name__}: timm groups its parameters into {len(ordinals)} group(s), no blocks between "
            "stem and head; use strategy full or linear"
        )
    k = min(len(blocks), max(1, math.ceil(fraction * len(blocks))))
    trained = blocks[-k:] + [ordinals[-1]]
    names = {name for group in trained for name in groups[group]} | _head_parameter_names(model)
    info = {"blocks": len(blocks), "trained_blocks": k, "first_trained": groups[blocks[-k]][0]}
    return names, info


def stage_trainable_parameters(model: torch.nn.Module, freeze_stages: int) -> tuple[set[str], dict[str, Any]]:
    """Parameter names that train when the first ``freeze_stages`` stages are frozen.

    The stages are timm's ``feature_info`` entries, the layers that ``rank --layer-scores`` scores
    (:mod:`service.pipeline.ranking.layers`). Frozen: every parameter the forward pass uses up to the end of stage
    ``freeze_stages`` — the model's own parameters (position embeddings, class tokens), the stem, and every module
    registered before that stage's module, which included. Everything after trains, the head always.
    ``freeze_stages=0`` trains everything.

    Returns
    -------
    names, info
        ``info``: ``{"stages", "frozen_stages", "last_frozen", "first_trained"}`` (module names, parameter name).

    Raises
    ------
    InvalidFinetuneConfig
        The model does not describe its stages, or has fewer than ``freeze_stages``.
    """
    modules = feature_info_modules(model)
    if not modules:
        raise InvalidFinetuneConfig(
            f"{type(model).__name__} does not describe its stages (no timm feature_info); use strategy partial "
            "without freeze_stages, full or linear"
        )
    if freeze_stages > len(modules):
        raise InvalidFinetuneConfig(
            f"{type(model).__name__} has {len(modules)} stages ({', '.join(modules)}); freeze_stages must be at most "
            f"{len(modules)} ({len(modules)} freezes the whole backbone)"
        )
    frozen: set[str] = set()
    if freeze_stages:
        last = modules[freeze_stages - 1]
        # Pre-order walk: a module's own parameters, then its children's, in registration (= forward) order, so
        # everything met before the last frozen stage's module is computed before its output.
        for name, module in model.named_modules():
            if name == last:
                frozen |= {f"{name}.{p}" for p, _ in module.named_parameters()}
                break
            frozen |= {f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)}
    trained = {name for name, _ in model.named_parameters() if name not in frozen} | _head_parameter_names(model)
    first = next((name for name, _ in model.named_parameters() if name in trained), None)
    info = {
        "stages": len(modules),
        "frozen_stages": freeze_stages,
        "last_frozen": modules[freeze_stages - 1] if freeze_stages else None,
        "first_trained": first,
    }
    return trained, info


def _plain_linear_head(model: torch.nn.Module, sample: torch.Tensor) -> bool:
    """Whether logits are ``get_classifier()(pre_logits)``, so the head can train on extracted features."""
    timm_model = timm_api(model)
    head = timm_model.get_classifier()
    if type(head) is not torch.nn.Linear or head.bias is None:
        return False
    with torch.inference_mode():
        feats = timm_model.forward_features(sample)
        expected = timm_model.forward_head(feats)
        got = head(timm_model.forward_head(feats, pre_logits=True))
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


class _FeatureHead(torch.nn.Module):
    """The head alone, on features stored as ``(N, D, 1, 1)`` so :func:`train_classifier` can batch them."""

    def __init__(self, head: torch.nn.Linear) -> None:
        super().__init__()
        self.head = head
        self.num_classes = head.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))

    def get_classifier(self) -> torch.nn.Module:
        return self.head


@dataclass
class _Features:
    """Pre-logit features of one split, and the split they came from."""

    raw: torch.Tensor  # (N, D) float32
    split: TensorSplit

    def as_split(self, center: torch.Tensor, scale: torch.Tensor) -> TensorSplit:
        z = (self.raw - center) / scale
        return dataclasses.replace(self.split, images=z[:, :, None, None].contiguous(), n_failed=0)


def _extract(
    model: torch.nn.Module,
    split: TensorSplit,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    cancel: Callable[[], bool] | None,
) -> torch.Tensor:
    """Pre-logit features ``(N, D)`` in eval mode, normalised exactly as training normalises."""
    mean_t = torch.tensor([m * 255.0 for m in mean], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor([s * 255.0 for s in std], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    model.to(device).eval()
    timm_model = timm_api(model)
    out = []
    with torch.inference_mode():
        for start in range(0, len(split), _EVAL_BATCH):
            _check_cancel(cancel)
            x = (split.images[start : start + _EVAL_BATCH].to(device, torch.float32) - mean_t) / std_t
            out.append(timm_model.forward_head(timm_model.forward_features(x), pre_logits=True).float().cpu())
    model.to("cpu")  # the base model stays on the CPU; each run copies it
    return torch.cat(out) if out else torch.zeros((0, 0))


def _fold_standardisation(head: torch.nn.Linear, center: torch.Tensor, scale: torch.Tensor) -> None:
    """Make ``head(x)`` equal ``trained_head((x - center) / scale)``: ``W' = W / s``, ``b' = b - W' center``."""
    assert head.bias is not None  # _plain_linear_head checked it
    with torch.no_grad():
        device = head.weight.device
        weight = head.weight.double() / scale.to(device, torch.float64)[None, :]
        bias = head.bias.double() - weight @ center.to(device, torch.float64)
        head.weight.copy_(weight.to(head.weight.dtype))
        head.bias.copy_(bias.to(head.bias.dtype))


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise TrainingCancelled("fine-tuning cancelled")
