"""One (learning rate, seed) run of a strategy: :class:`_Trainer` trains and evaluates it into a :class:`_Run`.

The trainer decides once per fine-tuning what trains (every parameter, the ``partial`` blocks, or the head,
on extracted features when it is a plain linear layer) and then drives
:func:`~service.pipeline.finetune.training.train_classifier` and
:func:`~service.pipeline.finetune.training.evaluate` for each run. Apart from the learning-rate and seed
search (``service/pipeline/finetune/finetune.py``), which only compares the runs it returns.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from service.pipeline.finetune.arguments import _Plan
from service.pipeline.finetune.models import (
    _EVAL_BATCH,
    _check_cancel,
    _extract,
    _FeatureHead,
    _Features,
    _fold_standardisation,
    _fresh_model,
    _head_parameter_names,
    _plain_linear_head,
    partial_trainable_parameters,
    stage_trainable_parameters,
)
from service.pipeline.finetune.progress import _Reporter
from service.pipeline.finetune.training import EvalResult, TensorSplit, TrainHistory, evaluate, train_classifier
from service.pipeline.models._timm import timm_api

_logger = logging.getLogger(__name__)


@dataclass
class _Run:
    lr: float
    seed: int
    model: torch.nn.Module
    history: TrainHistory
    val: EvalResult
    test: EvalResult | None = None


class _Trainer:
    """Trains one (lr, seed) run of the plan's strategy and evaluates it."""

    def __init__(
        self,
        plan: _Plan,
        base: torch.nn.Module,
        n_classes: int,
        tensors: Mapping[str, TensorSplit],
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
        report: _Reporter,
        cancel: Callable[[], bool] | None,
    ) -> None:
        self.plan, self.base, self.n_classes, self.tensors = plan, base, n_classes, tensors
        self.mean, self.std, self.device, self.report, self.cancel = mean, std, device, report, cancel
        self.train_seconds = self.eval_seconds = 0.0
        self.images_trained = 0
        self.partial_info: dict[str, Any] | None = None
        self.trainable_parameters = 0
        probe = _fresh_model(base, n_classes, 0)
        self.total_parameters = sum(p.numel() for p in probe.parameters())
        self.trainable: set[str] | None = None
        self.head_names = _head_parameter_names(probe)
        if plan.strategy == "partial" and plan.freeze_stages is not None:
            self.trainable, self.partial_info = stage_trainable_parameters(probe, plan.freeze_stages)
        elif plan.strategy == "partial":
            self.trainable, self.partial_info = partial_trainable_parameters(
                probe, plan.defaults.trained_block_fraction
            )
        elif plan.strategy == "linear":
            self.trainable = self.head_names
        self.trainable_parameters = sum(
            p.numel() for name, p in probe.named_parameters() if self.trainable is None or name in self.trainable
        )
        self.on_features = plan.strategy == "linear" and _plain_linear_head(
            probe.eval(), tensors["train"].images[:2].float()
        )
        self.features: dict[str, _Features] = {}
        self._center = self._scale = torch.zeros(0)

    def _ensure_features(self) -> None:
        """Extract train/val features once (linear strategy); their time counts as training."""
        if self.features:
            return
        began = time.perf_counter()
        for role in ("train", "val"):
            raw = _extract(self.base, self.tensors[role], self.mean, self.std, self.device, self.cancel)
            self.features[role] = _Features(raw, self.tensors[role])
        train = self.features["train"].raw.double()
        center, spread = train.mean(0), train.std(0, correction=0)
        # constant features (dead units) are only centred: dividing by ~0 would blow up val/test values
        scale = torch.where(spread > 1e-6 * max(float(spread.max()), 1e-12), spread, torch.ones_like(spread))
        self._center, self._scale = center.float(), scale.float()
        self.train_seconds += time.perf_counter() - began

    def run(self, lr: float, seed: int) -> _Run:
        self.report.start_run()
        model = _fresh_model(self.base, self.n_classes, seed)
        on_batch = self.report.train(lr, seed)
        if self.on_features:
            self._ensure_features()
            head = timm_api(model).get_classifier()
            wrapper = _FeatureHead(head)
            features = self.features["train"].as_split(self._center, self._scale)
            history = train_classifier(
                wrapper,
                features,
                self.plan.train_config(lr, seed),
                mean=[0.0] * features.images.shape[1],  # features are standardised already: identity normalisation
                std=[1.0 / 255.0] * features.images.shape[1],
                device=self.device,
                progress=on_batch,
                cancel=self.cancel,
            )
            _fold_standardisation(head, self._center, self._scale)
        else:
            trainable = self.trainable
            history = train_classifier(
                model,
                self.tensors["train"],
                self.plan.train_config(lr, seed, backbone_frozen=self.plan.strategy == "linear"),
                mean=self.mean,
                std=self.std,
                head_parameter_names=self.head_names,
                trainable=None if trainable is None else trainable.__contains__,
                device=self.device,
                progress=on_batch,
                cancel=self.cancel,
            )
        self.train_seconds += history.seconds
        self.images_trained += len(self.tensors["train"]) * len(history.epoch_loss)
        run = _Run(lr, seed, model, history, val=self.evaluate(model, "val", None, lr=lr, seed=seed))
        _logger.info("lr %g seed %d: val accuracy %.4f (loss %.4f)", lr, seed, run.val.accuracy, run.val.loss)
        return run

    def evaluate(
        self, model: torch.nn.Module, role: str, run: _Run | None, *, lr: float = 0.0, seed: int = 0
    ) -> EvalResult:
        if run is not None:
            lr, seed = run.lr, run.seed
        self.report.eval(lr, seed)
        _check_cancel(self.cancel)
        began = time.perf_counter()
        if self.on_features and role in self.features:
            # the folded head on raw features computes what the whole model computes on the images
            features = self.features[role]
            split = dataclasses.replace(features.split, images=features.raw[:, :, None, None].contiguous())
            head = _FeatureHead(timm_api(model).get_classifier()).to(self.device)
            dims = split.images.shape[1]
            result = evaluate(head, split, mean=[0.0] * dims, std=[1.0 / 255.0] * dims, device=self.device)
        else:
            model.to(self.device)
            result = evaluate(
                model, self.tensors[role], mean=self.mean, std=self.std, batch_size=_EVAL_BATCH, device=self.device
            )
        self.eval_seconds += time.perf_counter() - began
        return result
