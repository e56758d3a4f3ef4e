"""The CLI's benchmark progress bar describes every event a benchmark emits (fine-tuning ones included)."""

from __future__ import annotations

import dataclasses

from service.cli.benchmark import _benchmark_progress
from service.pipeline.benchmark.benchmark import BenchmarkProgress
from service.pipeline.finetune.progress import FinetuneProgress


def test_benchmark_progress_takes_load_train_and_eval_events() -> None:
    load = FinetuneProgress("load", None, None, None, 6, 1, 5, None, 0, 4)
    train = dataclasses.replace(load, stage="train", lr=0.03, seed=1, epoch=2, step=3, steps=10, loss=0.7, run=2)
    evaluate = dataclasses.replace(load, stage="eval", step=1, steps=1)
    with _benchmark_progress() as on_progress:
        for detail in (None, load, train, evaluate):
            # a load event has epochs set but no lr: it must not be formatted as a training step
            on_progress(BenchmarkProgress("finetune", "digits", "zoo:latin-resnet10t", 3, 66, detail))
        on_progress(BenchmarkProgress("skip", "digits", None, 4, 66, "no images"))
