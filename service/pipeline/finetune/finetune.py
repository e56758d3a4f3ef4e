"""Fine-tune a backbone on a labelled dataset: the ground truth the training-free scores predict.

Three strategies, as the transferability literature uses them (Kornblith et al., "Do Better ImageNet
Models Transfer Better?", CVPR 2019; You et al., LogME, ICML 2021; Lee et al., "Surgical
Fine-Tuning", ICLR 2023). Their defaults are one table, :data:`~service.pipeline.finetune.arguments.STRATEGY_DEFAULTS`:

==========  ============================================  ===============  ======  ==========  =======
strategy    what trains                                   head lr grid     epochs  backbone lr augment
==========  ============================================  ===============  ======  ==========  =======
``linear``  a new linear head on frozen features           0.1, 0.3         30      (frozen)    no
``partial`` the last ~25% of the blocks, then the head     0.01, 0.03       10      lr x 0.1    yes
``full``    every parameter                               0.01, 0.03       10      lr x 0.1    yes
==========  ============================================  ===============  ======  ==========  =======

All three use :func:`service.pipeline.finetune.training.train_classifier`: SGD with Nesterov momentum 0.9,
weight decay 5e-4 (not on biases and norms), batch 128, cosine decay stepped per batch (``partial`` and
``full`` after one warmup epoch), random-translation augmentation, no flips.

* ``linear`` extracts the backbone's pre-logit features once (eval mode, no augmentation, as in the
  linear-evaluation protocol), standardises them with the training split's mean and standard deviation,
  and trains the new head on them with the same mini-batch SGD recipe (not L-BFGS, so ``lr`` means the
  same thing in every strategy; 30 epochs cost little on cached features). The standardisation is then
  folded into the head's weights (``W' = W / s``, ``b' = b - W' m``), so the saved model is the plain
  backbone plus its head. A model whose classifier is not a plain linear layer on the pre-logit features
  (distilled or convolutional heads) trains its head through the frozen backbone instead.
* ``partial`` groups the parameters with timm's ``model.group_matcher(coarse=False)`` (stem, blocks in
  order, then everything after the last block: final norm and head), trains the last
  ``ceil(0.25 * blocks)`` blocks (at least one) and everything after them, and freezes the rest:
  ``requires_grad`` off and their BatchNorm layers in eval mode, so those blocks are bit-identical after
  training (weights and running statistics).
* ``full`` trains everything; the backbone at ``lr * backbone_lr_scale`` (0.1: the pretrained weights
  move less than the new head). An untrained ``random:<arch>`` backbone has nothing to preserve and
  gets 1.0 unless ``backbone_lr_scale`` is given (also for ``partial``). With a scale of 0.1 its
  BatchNorm layers train on batch statistics that its running statistics do not match, and it
  predicts one class in eval mode.

The new head is ``model.reset_classifier(n_classes)``, initialised under ``torch.manual_seed(seed)``.
Preprocessing is the backbone's timm data config (eval geometry, then its mean/std); ``input_size``
overrides its input resolution, e.g. 32 to train on small images quickly on a CPU (models with a fixed
input size, such as ViTs, are resized with timm's ``set_input_size``).

Splits: the dataset's ``train`` split trains, ``val`` (``valid``, ``validation``) picks the learning
rate and the best seed, ``test`` gives the reported accuracy. A missing ``val`` or ``test`` split is
carved from ``train``: per class, the images are ordered by the sha256 of their decoded pixels (content,
not listing order, so renaming or re-listing files does not move them), ``test`` takes the first
``round(0.2 n)`` and ``val`` the next ``round(0.2 n)`` (at least one each from classes of 3 or more
images); the result says which splits were carved. Classes are mapped by name: a ``val``/``test`` class
that has no ``train`` images is an error; ``max_per_class`` caps every split (a seeded sample, seed 0),
before any carving. A ``#train`` suffix on the dataset is accepted; ``#val`` and ``#test`` are not (the
splits are chosen here).

Learning rate and seeds: every learning rate of the grid is trained with ``seeds[0]`` and scored on
``val``; the best (highest val accuracy, then lowest val loss, then grid order) is kept, the other seeds
train at it, and each seed's model is evaluated on ``test``. ``seed`` seeds the head's initialisation,
the shuffling and the augmentation; the same seed gives the same result on the CPU.

Result schema (``schema_version`` 1: :func:`finetune`'s own document; the engine,
:func:`service.pipeline.engine.finetune`, adds ``kind``, ``request`` and ``environment`` and validates it
into :class:`service.contract.FinetuneResult`, schema_version 2)::

    {
      "schema_version": 1,
      "dataset": {"ref", "n_classes", "classes",
                  "splits": {"train" | "val" | "test": {"n_images", "n_failed", "source": "split" | "carved",
                                                        "fingerprint"}},   # train: "carved" if it lost images
                  "carved": ["val", "test"],      # the splits carved from train ([] when all exist)
                  "fingerprint"},                 # of the train split as listed (before carving)
      "class_map": {class name: index},
      "backbone": LoadedBackbone.describe() of the base backbone,
      "strategy": "linear" | "partial" | "full",     # what ran ("advised" runs linear or partial)
      "advice": {"transfer": the ranking's transfer advice, "layers": its layer advice, "runs": strategy} | null,
      "config": {"epochs", "batch_size", "optimizer", "momentum", "weight_decay", "warmup_epochs",
                 "label_smoothing", "augment", "backbone_lr_scale", "input_size": [3, H, W],
                 "data_config", "max_per_class", "device", "linear_on_features": bool,
                 "trainable_parameters", "total_parameters",
                 "partial": {"blocks", "trained_blocks", "first_trained"}       # the default quarter of blocks
                            | {"stages", "frozen_stages", "last_frozen", "first_trained"}  # freeze_stages
                            | null},
      "lr_grid": [float],
      "val_accuracy_by_lr": {"0.01": float, ...},  # seeds[0]; keys are the lrs formatted with "g"
      "chosen_lr": float,
      "seeds": [int],
      "test_accuracy": {"mean", "std", "per_seed": [float]},   # std: population std over the seeds
      "val_accuracy": {"mean", "std", "per_seed": [float]},    # at the chosen lr
      "best_seed": int,                                        # best val accuracy; its model is saved
      "per_class_accuracy": {class: float | null},             # test, mean over seeds; null: not in test
      "confusion_matrix": [[int]],                             # test, summed over seeds; rows = true class
      "chance_accuracy": float,                                # test share of its most frequent class
      "weights": {"path", "backbone_id", "sha256", "card"} | null,  # null without output_dir
      "seconds": {"load", "train", "eval", "total"},
      "images_per_second": float                               # training images (x epochs) per second
    }

Output folder (``output_dir``): the best seed's model as ``model.safetensors`` + timm's ``config.json``
(architecture, ``num_classes`` = the target classes, ``label_names``, ``model_args`` and a
``pretrained_cfg`` holding the input size, mean and std used), plus ``card.json`` and ``README.md``
(base backbone and its weights, dataset reference and fingerprints, strategy, lr, epochs, seed, test
accuracy, per-class accuracy, versions). The folder is written next to the target and renamed into
place; an existing folder is replaced only if it holds an earlier fine-tuning (a ``card.json``).
``load_backbone("local-dir:<output_dir>")`` loads it and reproduces the reported test accuracy of
that seed.

This module holds the run itself (decode, pick the learning rate on ``seeds[0]``, train the other seeds,
evaluate, save); its parts are beside it in the package: ``arguments.py`` (the defaults and every check),
``splits.py`` (loading and carving the splits), ``models.py`` (new heads, the ``partial`` blocks or stages, the
``linear`` head on features), ``runs.py`` (one (lr, seed) run), ``progress.py`` (the progress events),
``result.py`` (the result document) and ``saving.py`` (the output folder); ``training.py`` is the
training loop they all use.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from service.errors import InvalidFinetuneConfig
from service.pipeline.calibration.model import Calibration, resolve_calibration
from service.pipeline.data.datasets import Dataset
from service.pipeline.data.hub_dataset import HubDatasets
from service.pipeline.data.refs import DatasetRef
from service.pipeline.features.extract import select_device
from service.pipeline.finetune.arguments import _as_ref, _check_arguments, _check_output_dir
from service.pipeline.finetune.models import _prepare_data_config
from service.pipeline.finetune.progress import ProgressCallback, _Reporter
from service.pipeline.finetune.result import _result
from service.pipeline.finetune.runs import _Run, _Trainer
from service.pipeline.finetune.saving import _card, _save
from service.pipeline.finetune.splits import _check_decoded, _load_splits
from service.pipeline.finetune.training import TensorSplit, load_split_tensors
from service.pipeline.models.backbones import LoadedBackbone, load_backbone
from service.pipeline.models.hub import HubAccess
from service.pipeline.models.spec import BackboneSpec

__all__ = ["finetune"]


def finetune(
    dataset: DatasetRef | str | os.PathLike[str],
    backbone: BackboneSpec | str,
    *,
    strategy: str = "full",
    epochs: int | None = None,
    lr_grid: Sequence[float] | None = None,
    seeds: Sequence[int] = (0,),
    batch_size: int = 128,
    max_per_class: int | None = None,
    roots: Sequence[str | Path] | None = None,
    builtin_dir: str | Path | None = None,
    weights_dirs: Sequence[Path] = (),
    hf_cache_dir: Path | None = None,
    output_dir: str | Path | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    input_size: int | Sequence[int] | None = None,
    backbone_lr_scale: float | None = None,
    allowlist: Callable[[str], bool] | None = None,
    hub: HubAccess | None = None,
    hub_datasets: HubDatasets | None = None,
    uploads_dir: str | Path | None = None,
    freeze_stages: int | None = None,
    calibration: Calibration | str | Path | None = "default",
) -> dict[str, Any]:
    """Fine-tune ``backbone`` on ``dataset`` and report its test accuracy (schema: module docstring).

    Parameters
    ----------
    dataset : DatasetRef, str or Path
        ``builtin:NAME``, a folder (``train/``, ``val/``, ``test/`` splits or flat), a manifest or
        ``hf:PATH``; missing val/test splits are carved from train.
    backbone : BackboneSpec or str
        Any id :func:`~service.pipeline.models.backbones.load_backbone` accepts.
    strategy : {"linear", "partial", "full", "advised"}
        ``advised``: rank the backbone on the training split first, every stage scored (one forward pass), and
        run the strategy the ranking advises (:mod:`service.pipeline.ranking.transfer`; ``as_classifier`` needs
        no training and runs ``linear``), ``partial`` with the advised stages frozen. The result's ``advice``
        holds the advice; ``strategy`` says what ran.
    epochs : int, optional
        Default: the strategy's (:data:`~service.pipeline.finetune.arguments.STRATEGY_DEFAULTS`).
    lr_grid : sequence of float, optional
        Head learning rates tried on the validation split with ``seeds[0]``; default: the strategy's.
    seeds : sequence of int
        One run per seed at the chosen learning rate; the test accuracy is their mean and std.
    batch_size : int
    max_per_class : int, optional
        Cap every split at this many images per class (seeded sample) for a quick run.
    roots, builtin_dir, uploads_dir
        As :func:`~service.pipeline.data.datasets.load_dataset`.
    weights_dirs, hf_cache_dir, allowlist, hub
        As :func:`~service.pipeline.models.backbones.load_backbone` (``hub``: download missing weights).
    hub_datasets : HubDatasets, optional
        How ``hf://datasets/...`` references are fetched (:func:`~service.pipeline.data.datasets.load_dataset`).
    output_dir : str or Path, optional
        Save the best seed's model there (loadable as ``local-dir:<output_dir>``).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` ...
    progress : callable, optional
        Receives :class:`~service.pipeline.finetune.progress.FinetuneProgress` events.
    cancel : callable, optional
        Checked before every batch; True raises :class:`~service.pipeline.finetune.training.TrainingCancelled`.
    input_size : int or (int, int), optional
        Train and test at this resolution instead of the backbone's (smaller is faster on a CPU).
    backbone_lr_scale : float, optional
        ``partial``/``full``: the backbone's learning rate relative to the head's (default 0.1; 1.0 for
        an untrained ``random:<arch>`` backbone).
    calibration : Calibration, str, Path or None, default="default"
        ``advised`` only: the calibration whose predictions the advice compares (as ``rank_backbones``).
    freeze_stages : int, optional
        ``partial`` only: freeze the first ``freeze_stages`` stages of timm's ``feature_info`` (the stem with
        them) and train the rest, instead of training the last quarter of the blocks
        (:func:`~service.pipeline.finetune.models.stage_trainable_parameters`).

    Raises
    ------
    InvalidFinetuneConfig
        Unknown strategy, empty or non-positive learning-rate grid, non-positive epochs, no seed, an
        output folder that would overwrite something else.
    DatasetError, BackboneError
        From loading the dataset splits and the backbone.
    TrainingCancelled
        ``cancel()`` returned True.
    """
    started = time.perf_counter()
    advised = strategy == "advised"
    if advised and (freeze_stages is not None or backbone_lr_scale is not None):
        raise InvalidFinetuneConfig(
            "strategy advised chooses the strategy and the frozen stages itself; leave freeze_stages and "
            "backbone_lr_scale out, or name a strategy (linear, partial, full)"
        )
    arguments = (epochs, lr_grid, seeds, batch_size, input_size, backbone_lr_scale, max_per_class)
    # advised: everything but the strategy is checked now, before any data or weights are touched
    plan = _check_arguments("partial" if advised else strategy, *arguments, freeze_stages)
    out_dir = _check_output_dir(output_dir)
    torch_device = select_device(device)
    report = _Reporter(progress, plan)

    ref = _as_ref(dataset)
    report.load(0)
    splits = _load_splits(
        ref,
        roots=roots,
        max_per_class=max_per_class,
        builtin_dir=builtin_dir,
        hub_datasets=hub_datasets,
        uploads_dir=uploads_dir,
    )
    report.load(1)
    loaded = load_backbone(backbone, weights_dirs=weights_dirs, hf_cache_dir=hf_cache_dir, allowlist=allowlist, hub=hub)
    data_config = _prepare_data_config(loaded, plan.input_size)
    advice = None
    if advised:
        advice = _advise(loaded, splits.train, data_config, torch_device, batch_size, calibration)
        plan = _check_arguments(advice["runs"], *arguments, advice["transfer"]["freeze_stages"])
    if backbone_lr_scale is None and loaded.spec.kind == "random" and plan.backbone_lr_scale > 0:
        # an untrained backbone has nothing to preserve: it learns at the head's rate
        plan = dataclasses.replace(plan, backbone_lr_scale=1.0)
    report.plan = plan
    tensors: dict[str, TensorSplit] = {}
    for step, role in enumerate(("train", "val", "test"), start=2):
        report.load(step)
        tensors[role] = load_split_tensors(getattr(splits, role), data_config)
    _check_decoded(tensors, splits.train.classes)
    load_seconds = time.perf_counter() - started

    classes = splits.train.classes
    mean, std = data_config["mean"], data_config["std"]
    trainer = _Trainer(plan, loaded.model, len(classes), tensors, mean, std, torch_device, report, cancel)

    # learning rate: seeds[0] on every lr of the grid, scored on val
    best: _Run | None = None
    val_by_lr: dict[float, float] = {}
    for lr in plan.lr_grid:
        run = trainer.run(lr, plan.seeds[0])
        val_by_lr[lr] = run.val.accuracy
        if best is None or _better(run, best):
            best = run
        del run
    assert best is not None
    chosen_lr = best.lr

    # seeds: the first is already trained at the chosen lr; evaluate every seed on test
    runs: list[_Run] = []
    best_seed_run: _Run | None = None
    for seed in plan.seeds:
        run = best if seed == plan.seeds[0] else trainer.run(chosen_lr, seed)
        run.test = trainer.evaluate(run.model, "test", run)
        if best_seed_run is None or _better(run, best_seed_run):
            if best_seed_run is not None:
                best_seed_run.model = None  # type: ignore[assignment]  # free it: only the best seed is saved
            best_seed_run = run
        else:
            run.model = None  # type: ignore[assignment]  # free it: only the best seed is saved
        runs.append(run)
    assert best_seed_run is not None

    result = _result(
        plan=plan,
        splits=splits,
        tensors=tensors,
        loaded=loaded,
        data_config=data_config,
        trainer=trainer,
        val_by_lr=val_by_lr,
        chosen_lr=chosen_lr,
        runs=runs,
        best_seed=best_seed_run.seed,
        max_per_class=max_per_class,
        device=torch_device,
    )
    result["advice"] = advice
    result["weights"] = None
    if out_dir is not None:
        card = _card(result, best_seed_run, splits)
        result["weights"] = _save(best_seed_run.model, out_dir, data_config=data_config, classes=classes, card=card)
    total = time.perf_counter() - started
    result["seconds"] = {
        "load": load_seconds,
        "train": trainer.train_seconds,
        "eval": trainer.eval_seconds,
        "total": total,
    }
    return result


def _advise(
    loaded: LoadedBackbone,
    train: Dataset,
    data_config: dict[str, Any],
    device: torch.device,
    batch_size: int,
    calibration: Calibration | str | Path | None,
) -> dict[str, Any]:
    """The ranking's transfer advice for this backbone on the training split, at the fine-tune's input size.

    The backbone is ranked alone, as ``rank --layer-scores`` ranks it (default estimators, ``calibration``, every
    stage scored), so a fine-tune told ``advised`` does what the ranking advised. Returns ``{"transfer": ...,
    "layers": ..., "runs": strategy}``: ``as_classifier`` needs no training, so it runs the cheapest trained
    strategy, ``linear``; ``scratch`` (advised to an untrained ``random:`` backbone) runs ``full``.
    """
    from service.pipeline.features.extract import extract_features
    from service.pipeline.ranking.rank import rank_feature_sets

    probe = dataclasses.replace(loaded, data_config=data_config)
    (feature_set,) = extract_features(train, [probe], device=str(device), batch_size=batch_size, stages=True)
    (row,) = rank_feature_sets(train, [feature_set], calibration=resolve_calibration(calibration))["backbones"]
    if row["transfer"] is None:
        raise InvalidFinetuneConfig(
            f"nothing to advise on for {loaded.spec.id}: no calibration, no source head that maps onto the classes and "
            "no stages to score (timm feature_info); name a strategy (linear, partial, full)"
        )
    strategy = row["transfer"]["strategy"]
    return {
        "transfer": row["transfer"],
        "layers": row["layers"],
        "runs": {"as_classifier": "linear", "scratch": "full"}.get(strategy, strategy),
    }


def _better(run: _Run, other: _Run) -> bool:
    """Higher val accuracy, then lower val loss; a tie keeps ``other`` (the earlier lr or seed)."""
    return (run.val.accuracy, -run.val.loss) > (other.val.accuracy, -other.val.loss)
