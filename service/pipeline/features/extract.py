"""Batched feature extraction: one forward pass gives pooled features and source logits.

Images are decoded once per distinct preprocessing: backbones that share a data config
(input size, interpolation, mean/std, crop) are fed the same decoded batch. Features already
in the cache are never recomputed. Decode failures (corrupt or truncated files) are skipped
and reported; they are the same for every backbone of a preprocessing group.

With ``stages=True`` the same pass also keeps every stage's spatially averaged feature map (timm's
``forward_intermediates``): the layer scores of :mod:`service.pipeline.ranking.layers` need one forward
pass, not one per layer. Each stage is cached under its own layer key, the key a single-layer extraction
(``layer=i``) uses, so either fills the cache for the other.

With ``streaming=True`` the features are never held: each batch is added to an
:class:`estimators.StreamingStatistics` and dropped, so memory does not grow with the number of
images (only the labels and item indices are kept, 16 bytes per image).

Where the forward passes run is a :class:`GroupExtractor`: :func:`extract_here` in this process, or the executor
``ray`` (service/pipeline/scaleout/extraction.py), whose actors run :func:`run_group` on contiguous item ranges and
whose driver builds the same FeatureSets with :func:`assemble_feature_set`. The cache is read and filled here,
whichever extractor ran.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from timm.data import create_transform
from torchvision.transforms import Compose, Normalize

from estimators import Statistics, StreamingStatistics
from service.pipeline.data.datasets import Dataset
from service.pipeline.data.decode import ImageDecodeError
from service.pipeline.models._timm import timm_api
from service.pipeline.models.backbones import pool_map

if TYPE_CHECKING:
    from service.pipeline.features.cache import FeatureCache
    from service.pipeline.models.backbones import LoadedBackbone

__all__ = [
    "ExtractionOptions",
    "FeatureSet",
    "GroupExtractor",
    "GroupPass",
    "ProgressEvent",
    "StageFeatures",
    "assemble_feature_set",
    "extract_features",
    "extract_here",
    "run_group",
    "select_device",
    "transform_key",
]

_logger = logging.getLogger(__name__)

#: Bump when the extraction semantics change, so cached features are not reused.
EXTRACTION_VERSION = 1
#: Streaming keeps each class's D x D scatter matrix (TransRate, GBC's PCA) while C·D² floats fit in this.
STREAMING_CLASS_SCATTER_BYTES = 512 * 2**20


@dataclass
class StageFeatures:
    """One stage's output averaged over space, for every row of its :class:`FeatureSet`."""

    index: int  # forward_intermediates index (0 = the first stage)
    module: str  # the module whose output it is (timm's feature_info), e.g. "layer2" or "blocks.5"
    features: NDArray[np.float32]  # (N, D_i)


@dataclass
class FeatureSet:
    """Features of one backbone on one dataset (rows = the images that decoded).

    Streamed (``extract_features(..., streaming=True)``): ``features`` and ``source_probs`` are
    None and ``stats`` holds the accumulated :class:`estimators.Statistics` (None only when too
    few images decoded to form one: fewer than two classes or a class with one image).
    """

    backbone: dict[str, Any]
    features: NDArray[np.float32] | None  # (N, D); None when streamed
    labels: NDArray[np.int64]  # (N,) class indices of the dataset
    indices: NDArray[np.int64]  # (N,) dataset item indices of the rows
    source_probs: NDArray[np.float32] | None  # (N, C_s) softmax of the source head
    failed: list[int] = field(default_factory=list)  # items that could not be decoded
    from_cache: bool = False
    seconds: float = 0.0
    layer: int | None = None
    stats: Statistics | None = None  # streamed statistics (features is None then)
    #: With ``stages=True``: every stage, in forward order ([] when the model cannot return its stages).
    stages: list[StageFeatures] | None = None

    @property
    def dim(self) -> int:
        if self.features is None:
            return int(self.stats.n_features) if self.stats is not None else 0
        return int(self.features.shape[1])

    @property
    def n_images(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ProgressEvent:
    """Progress of an extraction, for bars in the CLI and events in the service."""

    #: Before the extraction, :func:`~service.pipeline.ranking.rank.rank_backbones` sends "download" (bytes of a
    #: backbone's weights fetched from the hub: ``done``/``total`` in bytes).
    #: "extract" (a batch done), "cached" (served from the cache), "done" (one backbone finished); after the
    #: extraction, :func:`~service.pipeline.ranking.rank.rank_feature_sets` adds "score" (one backbone's estimators
    #: computed; ``backbone`` is its id) and "p_best" (one half-sample replicate; ``backbone`` is ``"*"``).
    stage: str
    backbone: str
    done: int
    total: int


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class ExtractionOptions:
    """How the forward passes run, whoever runs them (plain data: the executor ``ray`` sends it to its actors).
    The fields are :func:`extract_features`' arguments of the same names."""

    device: str = "auto"
    batch_size: int = 64
    layer: int | None = None
    precision: str = "auto"
    streaming: bool = False
    stages: bool = False


class GroupExtractor(Protocol):
    """Runs the forward passes of the backbones the cache did not serve, grouped by preprocessing.

    Yields one list of FeatureSets per group, in the order of ``groups`` (each list in the group's order, rows in
    dataset order), as each is done; sends the "extract" and "done" progress events. :func:`extract_here` runs them
    in this process; the executor ``ray`` (service/pipeline/scaleout/extraction.py) on a Ray cluster.
    """

    def __call__(
        self,
        dataset: Dataset,
        groups: Sequence[Sequence[LoadedBackbone]],
        options: ExtractionOptions,
        progress: ProgressCallback | None,
    ) -> Iterator[list[FeatureSet]]: ...


def select_device(requested: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when one is present, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but no CUDA device is available; use --device cpu")
    return device


def transform_key(data_config: dict[str, Any]) -> str:
    """Canonical text of the preprocessing, identical for equal configs."""
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in sorted(data_config.items())})


def _cache_key(backbone: LoadedBackbone, dataset: Dataset, layer: int | None) -> str:
    from service.pipeline.features.cache_key import feature_cache_key

    return feature_cache_key(
        backbone_id=backbone.spec.id,
        weights_sha256=backbone.weights_sha256,
        data_config=backbone.data_config,
        dataset_fingerprint=dataset.fingerprint,
        layer=None if layer is None else str(layer),
        extra={"extraction_version": EXTRACTION_VERSION},
    )


class _Runner:
    """Runs one backbone on batches: device placement, autocast, channels_last, OOM back-off."""

    def __init__(
        self,
        backbone: LoadedBackbone,
        device: torch.device,
        layer: int | None,
        precision: str,
        n_classes: int | None = None,
        stages: bool = False,
    ) -> None:
        self.backbone = backbone
        self.device = device
        self.layer = layer
        self.stage_modules = backbone.stage_modules() if stages else []
        self.stage_chunks: list[list[NDArray[np.float32]]] = [[] for _ in self.stage_modules]
        # channels_last is the main speed lever for CNNs on CPU as well as GPU (1.5-3x here).
        self.model = backbone.model.to(device).to(memory_format=torch.channels_last)
        self.autocast_dtype: torch.dtype | None = None
        if device.type == "cuda" and precision == "auto":
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.max_chunk: int | None = None
        self.features: list[NDArray[np.float32]] = []
        self.probs: list[NDArray[np.float32]] = []
        # streaming: n_classes is set; batches go into ``stream`` (created at the first, when D is known)
        self.n_classes = n_classes
        self.stream: StreamingStatistics | None = None
        self.dim: int | None = None

    def run(self, batch: torch.Tensor, labels: NDArray[np.int64] | None = None) -> None:
        chunk = self.max_chunk or batch.shape[0]
        for start in range(0, batch.shape[0], chunk):
            self._run_chunk(batch[start : start + chunk], None if labels is None else labels[start : start + chunk])

    def _run_chunk(self, x: torch.Tensor, labels: NDArray[np.int64] | None = None) -> None:
        try:
            pre, logits, stages = self._forward(x)
        except torch.cuda.OutOfMemoryError:
            if x.shape[0] == 1:
                raise
            torch.cuda.empty_cache()
            half = max(1, x.shape[0] // 2)
            self.max_chunk = half
            _logger.warning("out of GPU memory on %s; retrying with batches of %d", self.backbone.spec.id, half)
            self._run_chunk(x[:half], None if labels is None else labels[:half])
            self._run_chunk(x[half:], None if labels is None else labels[half:])
            return
        features = pre.float().cpu().numpy()
        probs = None if logits is None else torch.softmax(logits.float(), dim=1).cpu().numpy()
        for chunks, stage in zip(self.stage_chunks, stages, strict=True):
            chunks.append(stage.float().cpu().numpy())
        if self.n_classes is None:
            self.features.append(features)
            if probs is not None:
                self.probs.append(probs)
            return
        if self.stream is None:
            self.dim = int(features.shape[1])
            scatter_bytes = self.n_classes * self.dim**2 * 8
            self.stream = StreamingStatistics(
                self.n_classes, class_scatter=scatter_bytes <= STREAMING_CLASS_SCATTER_BYTES
            )
        assert labels is not None  # streaming (n_classes set): _extract_group passes every batch's labels
        self.stream.update(features, labels, probs)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            if self.stage_modules:
                return self.backbone.forward_stages(x)
            if self.layer is None:
                return (*self.backbone.forward(x), [])
            (maps,) = timm_api(self.model).forward_intermediates(x, indices=[self.layer], intermediates_only=True)
            return pool_map(maps), None, []

    def stage_features(self) -> list[StageFeatures]:
        return [
            StageFeatures(index, module, np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32))
            for index, (module, chunks) in enumerate(zip(self.stage_modules, self.stage_chunks, strict=True))
            if chunks
        ]


def extract_features(
    dataset: Dataset,
    backbones: Sequence[LoadedBackbone],
    *,
    device: str = "auto",
    batch_size: int = 64,
    cache: FeatureCache | None = None,
    progress: ProgressCallback | None = None,
    layer: int | None = None,
    precision: str = "auto",
    num_threads: int | None = None,
    streaming: bool = False,
    stages: bool = False,
    extractor: GroupExtractor | None = None,
) -> list[FeatureSet]:
    """Extract pooled pre-logit features (and source-head softmax) of every backbone.

    Parameters
    ----------
    dataset : Dataset
    backbones : sequence of LoadedBackbone
    device : str, default="auto"
        "auto" picks CUDA when present (bf16/fp16 autocast, channels_last), else the CPU.
    batch_size : int, default=64
        Images per batch; halved automatically on CUDA out-of-memory.
    cache : FeatureCache, optional
        Features found there are returned without a forward pass; new ones are stored.
    progress : callable, optional
        Receives a :class:`ProgressEvent` after every batch and when a backbone is done.
    layer : int, optional
        Take an intermediate layer (timm ``forward_intermediates`` index, spatially averaged)
        instead of the pooled pre-logits; no source head output then.
    precision : {"auto", "fp32"}, default="auto"
        "fp32" disables autocast on CUDA.
    num_threads : int, optional
        torch CPU threads.
    streaming : bool, default=False
        Accumulate each backbone's :class:`estimators.Statistics` batch by batch instead of
        keeping the features (memory independent of the number of images). The FeatureSets
        then carry ``stats`` and no ``features``/``source_probs``; the cache is neither read nor
        written (there are no features to store). Only the moment-based estimators can score
        them (see :class:`estimators.StreamingStatistics`).
    stages : bool, default=False
        Also keep every stage's spatially averaged output (``FeatureSet.stages``) from the same forward
        pass; a backbone whose model cannot return its stages gets ``stages=[]``. Not with ``layer`` or
        ``streaming``.
    extractor : GroupExtractor, optional
        Where the forward passes run; default :func:`extract_here` (this process). Either way the FeatureSets
        have the same rows in the same order, and the cache is read and filled here with the same keys.

    Returns
    -------
    list of FeatureSet, in the order of ``backbones``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if stages and (layer is not None or streaming):
        raise ValueError(
            "stages=True extracts every stage and the pre-logits; it cannot be combined with layer or streaming"
        )
    if num_threads:
        torch.set_num_threads(num_threads)
    if extractor is None:
        select_device(device)  # a device this machine lacks is an error even when every backbone is cached
        extractor = extract_here
    if streaming and cache is not None:
        _logger.info("streaming extraction keeps no features: the feature cache is neither read nor written")
        cache = None
    results: dict[int, FeatureSet] = {}
    pending: dict[str, list[int]] = {}
    for position, backbone in enumerate(backbones):
        cached = cache.get(_cache_key(backbone, dataset, layer)) if cache is not None else None
        cached_stages: list[StageFeatures] | None = []
        if stages and cache is not None and cached is not None:
            cached_stages = _cached_stages(cache, backbone, dataset)
        if cached is not None and cached_stages is not None:
            arrays = cached.arrays
            results[position] = FeatureSet(
                backbone=backbone.describe(),
                features=arrays["features"],
                labels=arrays["labels"],
                indices=arrays["indices"],
                source_probs=arrays.get("source_probs"),
                failed=[int(i) for i in cached.metadata.get("failed", [])],
                from_cache=True,
                layer=layer,
                stages=cached_stages if stages else None,
            )
            if progress:
                progress(ProgressEvent("cached", backbone.spec.id, len(dataset), len(dataset)))
            continue
        pending.setdefault(transform_key(backbone.data_config), []).append(position)

    groups = [[backbones[p] for p in positions] for positions in pending.values()]
    options = ExtractionOptions(device, batch_size, layer, precision, streaming, stages)
    for positions, feature_sets in zip(pending.values(), extractor(dataset, groups, options, progress), strict=True):
        for position, feature_set in zip(positions, feature_sets, strict=True):
            results[position] = feature_set
            if cache is not None:
                assert feature_set.features is not None  # in memory: streaming turned the cache off above
                arrays = {
                    "features": feature_set.features,
                    "labels": feature_set.labels,
                    "indices": feature_set.indices,
                }
                if feature_set.source_probs is not None:
                    arrays["source_probs"] = feature_set.source_probs
                metadata = {
                    "failed": feature_set.failed,
                    "backbone": feature_set.backbone,
                    "seconds": feature_set.seconds,
                }
                cache.put(_cache_key(backbones[position], dataset, layer), arrays, metadata)
                for stage in feature_set.stages or []:
                    stage_arrays: dict[str, NDArray[Any]] = {
                        "features": stage.features,
                        "labels": feature_set.labels,
                        "indices": feature_set.indices,
                    }
                    cache.put(_cache_key(backbones[position], dataset, stage.index), stage_arrays, metadata)
    return [results[p] for p in range(len(backbones))]


def _cached_stages(cache: FeatureCache, backbone: LoadedBackbone, dataset: Dataset) -> list[StageFeatures] | None:
    """Every stage of ``backbone`` from the cache, or None when one is missing (the pass then runs again)."""
    found = []
    for index, module in enumerate(backbone.stage_modules()):
        entry = cache.get(_cache_key(backbone, dataset, index))
        if entry is None:
            return None
        found.append(StageFeatures(index, module, entry.arrays["features"]))
    return found


def _split_transform(
    transform: Callable[[Any], Any],
) -> tuple[Callable[[Any], Any], Callable[[NDArray[np.uint8]], torch.Tensor] | None]:
    """Split timm's eval transform into its PIL part and a batched ToTensor + Normalize.

    ``normalize(batch)`` takes uint8 (B, H, W, 3) and returns the same float32 values as
    ToTensor + Normalize image by image, already in channels_last layout. Transforms of another
    shape are applied whole, per image (``normalize`` is None then).
    """
    steps = getattr(transform, "transforms", None)
    if not steps or len(steps) < 3 or type(steps[-2]).__name__ not in ("ToTensor", "MaybeToTensor"):
        return transform, None
    if not isinstance(steps[-1], Normalize):
        return transform, None
    mean = torch.as_tensor(steps[-1].mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(steps[-1].std, dtype=torch.float32).view(1, -1, 1, 1)

    def normalize(batch: NDArray[np.uint8]) -> torch.Tensor:
        x = torch.from_numpy(batch if batch.flags.writeable else batch.copy()).permute(0, 3, 1, 2).float().div_(255)
        return x.sub_(mean).div_(std)

    return Compose(steps[:-2]), normalize


def extract_here(
    dataset: Dataset,
    groups: Sequence[Sequence[LoadedBackbone]],
    options: ExtractionOptions,
    progress: ProgressCallback | None,
) -> Iterator[list[FeatureSet]]:
    """The :class:`GroupExtractor` of this process: each group in turn, over the whole dataset."""
    device = select_device(options.device)
    for group in groups:
        yield _extract_group(dataset, group, device, options, progress)


@dataclass
class GroupPass:
    """What one pass of a preprocessing group over some items left: each backbone's output in its runner (features
    and source softmax per batch, or the streaming accumulator), the items decoded and not, and each backbone's
    forward seconds."""

    runners: list[_Runner]
    kept: list[int]
    failed: list[int]
    elapsed: list[float]


def _extract_group(
    dataset: Dataset,
    group: Sequence[LoadedBackbone],
    device: torch.device,
    options: ExtractionOptions,
    progress: ProgressCallback | None,
) -> list[FeatureSet]:
    """Decode every image once, transform it once, and run each backbone of the group on it."""
    done = run_group(dataset, group, device, options, progress)
    indices = np.asarray(done.kept, dtype=np.int64)
    labels = dataset.labels[indices].astype(np.int64) if indices.size else np.zeros(0, dtype=np.int64)
    results = []
    for runner, backbone, seconds in zip(done.runners, group, done.elapsed, strict=True):
        stages = runner.stage_features() if options.stages else None
        feature_set = assemble_feature_set(
            backbone, options, labels, indices, done.failed, seconds, runner.features, runner.probs, runner.stream,
            stages,
        )  # fmt: skip
        results.append(feature_set)
        if progress:
            progress(ProgressEvent("done", backbone.spec.id, len(dataset), len(dataset)))
    return results


def run_group(
    dataset: Dataset,
    group: Sequence[LoadedBackbone],
    device: torch.device,
    options: ExtractionOptions,
    progress: ProgressCallback | None = None,
    items: Sequence[int] | None = None,
) -> GroupPass:
    """Decode ``items`` (default: every item; a Ray actor's shard is a range) once, transform each once, and run
    every backbone of the group on the batches on ``device``; "extract" progress counts the items of this pass."""
    if items is None:
        items = range(len(dataset))
    batch_size = options.batch_size
    pil_transform, normalize = _split_transform(create_transform(**group[0].data_config, is_training=False))
    n_classes = len(dataset.classes) if options.streaming else None
    all_labels = dataset.labels if options.streaming else None
    runners = [
        _Runner(backbone, device, options.layer, options.precision, n_classes, options.stages) for backbone in group
    ]
    elapsed = [0.0] * len(group)
    kept: list[int] = []
    failed: list[int] = []
    total = len(items)

    def prepare(start: int) -> tuple[int, Any, list[int], list[int]]:
        ok, bad, images = [], [], []
        for index in items[start : min(start + batch_size, total)]:
            try:
                image = dataset.open_image(index)
            except ImageDecodeError as err:
                _logger.info("skipping undecodable image %s: %s", dataset.items[index].source, err)
                bad.append(index)
                continue
            images.append(pil_transform(image))
            ok.append(index)
        if not images:
            return start, None, ok, bad
        if normalize is None:
            return start, torch.stack(images), ok, bad
        return start, np.stack([np.asarray(image, dtype=np.uint8) for image in images]), ok, bad

    # Decode, resize and crop the next batch in a background thread while the models run on the
    # current one (Pillow releases the GIL). The torch part of the preprocessing runs here, batched:
    # torch ops from a second thread would compete with the forward pass for torch's thread pool.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        upcoming = pool.submit(prepare, 0) if total else None
        while upcoming is not None:
            start, prepared, ok, bad = upcoming.result()
            next_start = start + batch_size
            upcoming = pool.submit(prepare, next_start) if next_start < total else None
            kept.extend(ok)
            failed.extend(bad)
            if prepared is not None:
                batch = prepared if normalize is None else normalize(prepared)
                batch_labels = all_labels[np.asarray(ok, dtype=np.int64)] if all_labels is not None else None
                for i, runner in enumerate(runners):
                    began = time.perf_counter()
                    runner.run(batch, batch_labels)
                    elapsed[i] += time.perf_counter() - began
            if progress:
                for backbone in group:
                    progress(ProgressEvent("extract", backbone.spec.id, min(next_start, total), total))
    for backbone in group:
        backbone.model.to("cpu")
    return GroupPass(runners, kept, failed, elapsed)


def assemble_feature_set(
    backbone: LoadedBackbone,
    options: ExtractionOptions,
    labels: NDArray[np.int64],
    indices: NDArray[np.int64],
    failed: list[int],
    seconds: float,
    features: Sequence[NDArray[np.float32]],
    probs: Sequence[NDArray[np.float32]],
    stream: StreamingStatistics | None,
    stages: list[StageFeatures] | None = None,
) -> FeatureSet:
    """One backbone's FeatureSet over ``indices`` (in order, with their ``labels``) from its output in row blocks
    (batches, or a Ray executor's shards): the features and source softmax (and, with ``options.stages``, its
    ``stages``, whole), or with ``options.streaming`` the accumulated statistics (finalized here)."""
    if options.streaming:
        return FeatureSet(
            backbone=backbone.describe(),
            features=None,
            labels=labels,
            indices=indices,
            source_probs=None,
            failed=failed,
            seconds=seconds,
            layer=options.layer,
            stats=_finalize(stream, backbone),
        )
    dim = backbone.num_features
    stacked = np.concatenate(features) if features else np.zeros((0, dim), np.float32)
    return FeatureSet(
        backbone=backbone.describe(),
        features=np.ascontiguousarray(stacked, dtype=np.float32),
        labels=labels,
        indices=indices,
        source_probs=np.concatenate(probs) if probs else None,
        failed=failed,
        seconds=seconds,
        layer=options.layer,
        stages=stages,
    )


def _finalize(stream: StreamingStatistics | None, backbone: LoadedBackbone) -> Statistics | None:
    """The streamed statistics, or None when too few images decoded (the ranking step reports which class)."""
    if stream is None:
        return None
    try:
        return stream.finalize()
    except ValueError as err:
        _logger.info("no statistics for %s: %s", backbone.spec.id, err)
        return None
