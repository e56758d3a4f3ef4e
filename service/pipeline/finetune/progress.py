"""Progress events of a fine-tuning (:class:`FinetuneProgress`) and the reporter that emits them.

Apart from the run (``service/pipeline/finetune/finetune.py``) and the trainer
(``service/pipeline/finetune/runs.py``) because both emit these events: the run while it loads, the
trainer after every batch and evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from service.pipeline.finetune.arguments import _Plan
from service.pipeline.finetune.training import TrainProgress

__all__ = ["FinetuneProgress"]


@dataclass(frozen=True)
class FinetuneProgress:
    """Progress of :func:`~service.pipeline.finetune.finetune.finetune`, for bars in the CLI and events in the service.

    ``stage`` is ``"load"`` (listing, loading the backbone, decoding a split: ``step``/``steps`` count
    the splits), ``"train"`` (after every batch of run ``run`` of ``runs``) or ``"eval"``. ``lr``,
    ``seed``, ``epoch`` and ``loss`` are ``None`` outside training.
    """

    stage: Literal["load", "train", "eval"]
    lr: float | None
    seed: int | None
    epoch: int | None
    epochs: int
    step: int
    steps: int
    loss: float | None
    run: int
    runs: int


ProgressCallback = Callable[[FinetuneProgress], None]


class _Reporter:
    """Turns training progress into :class:`FinetuneProgress` events."""

    def __init__(self, callback: ProgressCallback | None, plan: _Plan) -> None:
        self.callback = callback
        self.plan = plan
        self.run = 0

    def load(self, step: int) -> None:
        if self.callback is not None:
            self.callback(
                FinetuneProgress("load", None, None, None, self.plan.epochs, step, 5, None, 0, self.plan.runs)
            )

    def start_run(self) -> None:
        self.run += 1

    def train(self, lr: float, seed: int) -> Callable[[TrainProgress], None] | None:
        if self.callback is None:
            return None
        callback, run, runs = self.callback, self.run, self.plan.runs

        def on_batch(p: TrainProgress) -> None:
            callback(FinetuneProgress("train", lr, seed, p.epoch, p.epochs, p.step, p.steps, p.loss, run, runs))

        return on_batch

    def eval(self, lr: float, seed: int) -> None:
        if self.callback is not None:
            epochs = self.plan.epochs
            self.callback(FinetuneProgress("eval", lr, seed, None, epochs, 0, 0, None, self.run, self.plan.runs))
