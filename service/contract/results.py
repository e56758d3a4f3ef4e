"""What the user gets back: one pydantic model per result kind (ranking, fine-tune, benchmark), torch-free.

The engine builds results as JSON documents and validates them into these models before anyone sees
them, so the CLI's ``--json``, the REST API (whose OpenAPI document carries these schemas), the Python
client and the HTML reports all read one documented shape. Every result names its ``kind`` and
``schema_version`` and carries the effective request that produced it (defaults filled in), so it can
be reproduced and audited.

Versions: ``schema_version`` 1 is what the project wrote before the request/result contract (no
``kind`` on rankings and fine-tunes, no ``request``, no ``environment``); such files still load
(:func:`load_result`), with ``request`` and ``environment`` left ``None``. Version 2 adds them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

from .requests import BenchmarkRequest, DatasetSpec, FinetuneRequest, RankingRequest

__all__ = [
    "PRODUCT_METHODS",
    "RESULT_SCHEMA_VERSION",
    "AnyResult",
    "BackboneRow",
    "BenchmarkResult",
    "Environment",
    "FinetuneResult",
    "RankingResult",
    "benchmark_score",
    "load_result",
    "result_kind",
]

#: The version written now; :func:`load_result` reads this and every earlier one.
RESULT_SCHEMA_VERSION = 2


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: a non-finite float (e.g. the mean rank of a backbone no estimator applied to) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


#: A float that serialises as strict JSON (non-finite values become null).
Number = Annotated[float | None, BeforeValidator(_finite_or_none)]


class _Model(BaseModel):
    # forbid: a field the engine adds without adding it here fails the tests, so the documented schema never drifts
    model_config = ConfigDict(extra="forbid")


class _Loose(BaseModel):
    """Descriptive blocks whose keys vary with the setup (versions, configurations): extra keys are kept."""

    model_config = ConfigDict(extra="allow")


class Environment(_Loose):
    """Where a result was computed: versions, device and machine."""

    backbone_rank: str | None = None
    device: str | None = None
    torch: str | None = None
    timm: str | None = None
    numpy: str | None = None
    scipy: str | None = None
    python: str | None = None
    platform: str | None = None
    machine: str | None = None
    cpu_count: int | None = None
    threads: int | None = None
    git_commit: str | None = None
    gpu: str | None = None
    fingerprint: str | None = None
    executor: dict[str, Any] | None = Field(
        None,
        description="Where a ranking's features were extracted: {'kind': 'local'}, or {'kind': 'ray', 'cluster', "
        "'actors', 'cpus_per_actor', 'gpus_per_actor', 'shards', 'retried_shards', 'nodes', 'devices', 'ray'} (the "
        "actors' torch devices; `device` is then the scoring process's).",
    )


# ------------------------------------------------------------------------------------------------ ranking


class EstimatorColumn(_Model):
    name: str
    higher_is_better: bool
    reference: str
    needs: list[str] = Field(default_factory=list)


class DatasetSummary(_Model):
    ref: DatasetSpec
    n_images: int
    n_classes: int
    classes: list[str]
    class_counts: dict[str, int]
    skipped: dict[str, int] = Field(description="Files skipped while listing, by reason.")
    splits: list[str]
    fingerprint: str


class Prediction(_Model):
    """A predicted accuracy with its interval (nominal 90 %, from leave-one-target-out residuals)."""

    value: float
    low: float
    high: float
    inputs: list[str] = Field(description="What the calibrated model predicted from.")


class PredictedAccuracy(_Model):
    finetune: Prediction | None = None
    linear_probe: Prediction | None = None


class RowSeconds(_Model):
    load: float
    extract: float
    score: float
    per_estimator: dict[str, float]
    layers: float | None = Field(None, description="Scoring every layer (layer_scores); null: not asked.")


class LayerScore(_Model):
    """One layer of a backbone scored on the target."""

    index: int | None = Field(description="timm forward_intermediates index (0 = first stage); null: the pre-logits.")
    module: str = Field(description="The module whose output it is (timm's feature_info), or 'pre_logits'.")
    dim: int
    scores: dict[str, Number]


class LayerAdvice(_Model):
    """What the layer scores say: the best layer for feature extraction and how many stages to freeze."""

    layers: list[LayerScore] = Field(description="Every stage in forward order, then the pre-logits.")
    decided_by: str = Field(description="The estimator the advice reads (an accuracy comparable across widths).")
    best_layer: str = Field(description="The module whose output scores best: the layer to extract features from.")
    n_stages: int
    freeze_stages: int | None = Field(
        description="Stages to freeze, counted from the input (the earliest layer within one standard error of "
        "the best and all before it); n_stages: train only a new head. Null: the model gives no stages."
    )
    advice: str | None = Field(description="The same in words.")
    note: str | None = None


class TransferCost(_Model):
    passes: float = Field(description="Passes over the training images (forward 1, a training step ~3).")
    gmacs: Number = Field(None, description="passes x GMACs per image x images (null: GMACs unknown).")


class TransferOption(_Model):
    strategy: Literal["as_classifier", "linear", "partial", "full", "scratch"]
    predicted: Prediction | None = Field(description="Expected accuracy (as_classifier: measured, leave-one-out).")
    cost: TransferCost
    note: str | None = None


class TransferAdvice(_Model):
    """How to transfer this backbone (service/pipeline/ranking/transfer.py has the rule)."""

    strategy: Literal["as_classifier", "linear", "partial", "full", "scratch"]
    freeze_stages: int | None = Field(description="partial: the stages to freeze, counted from the input.")
    options: list[TransferOption]
    advice: str = Field(description="The advice in words.")


class FinetuneAdvice(_Model):
    """What a fine-tune with ``strategy="advised"`` followed: the ranking's advice on the training split."""

    transfer: TransferAdvice
    layers: LayerAdvice | None
    runs: Literal["linear", "partial", "full"] = Field(
        description="The strategy run: the advised one (as_classifier needs no training and runs linear; scratch, "
        "advised to an untrained random: backbone, runs full)."
    )


class BackboneRow(_Model):
    """One candidate of a ranking."""

    id: str
    rank: int = Field(description="Position in the fused order, 1 = best.")
    mean_rank: Number = Field(description="Mean of the per-estimator ranks (null when no estimator applied).")
    scores: dict[str, Number] = Field(description="Per estimator; null: not applicable here (see unscored).")
    unscored: dict[str, str] = Field(description="Why each null score is null.")
    ranks: dict[str, Number] = Field(
        description="Per estimator, 1 = best; scores equal within a relative 1e-9 share their average rank."
    )
    fused_score: Number = None
    p_best: Number = None
    predicted_accuracy: PredictedAccuracy | None = None
    source_accuracy: Number = None
    params_m: Number = Field(None, description="Parameters of the loaded backbone, millions (classifier included).")
    gmacs: Number = Field(None, description="GMACs per image at its eval size (timm's published table; null: unknown).")
    imagenet_top1: Number = Field(
        None, description="ImageNet-1k top-1, percent (timm's published table; null: not a published timm model)."
    )
    revision: str | None = Field(None, description="The hub commit of weights downloaded from (or pinned on) the hub.")
    feature_dim: int
    num_source_classes: int
    weights_source: str | None
    weights_sha256: str | None
    data_config: dict[str, Any] | None
    n_images: int
    n_failed_images: int
    from_cache: bool
    seconds: RowSeconds
    layers: LayerAdvice | None = Field(None, description="Per-layer scores and advice (layer_scores); null: not asked.")
    transfer: TransferAdvice | None = Field(
        None, description="How to transfer it: the advised strategy, each option's expected accuracy and cost."
    )


class CalibrationHeadline(_Model):
    finetune_mae: Number = None
    finetune_coverage: Number = None
    linear_probe_mae: Number = None
    linear_probe_coverage: Number = None
    nominal_coverage: Number = None
    fused_mean_weighted_tau: Number = None
    best_single: str | None = None
    best_single_mean_weighted_tau: Number = None
    images_per_class: list[float] = Field(default_factory=list)


class CalibrationInfo(_Model):
    path: str | None
    created: str | None
    source: dict[str, Any]
    loto: CalibrationHeadline


class PBestInfo(_Model):
    n_bootstrap: int
    seed: int
    resampling: str
    seconds: float


class FusionInfo(_Model):
    """What the order rests on."""

    method: Literal["calibrated", "mean_rank"]
    members: list[str]
    weights: list[float] | None
    normalisation: str
    calibration: CalibrationInfo | None
    p_best: PBestInfo | None
    note: str


class UnavailableBackbone(_Model):
    """A candidate the ranking left out, and why (``code`` as in service.errors)."""

    id: str
    code: str
    detail: str


class TotalSeconds(_Model):
    total: float


class RankingResult(_Model):
    """A finished ranking: ``backbones`` best first."""

    schema_version: int = RESULT_SCHEMA_VERSION
    kind: Literal["ranking"] = "ranking"
    request: RankingRequest | None = Field(None, description="The effective request (null in version-1 files).")
    environment: Environment | None = None
    dataset: DatasetSummary
    class_map: dict[str, int]
    estimators: list[EstimatorColumn]
    backbones: list[BackboneRow]
    unavailable: list[UnavailableBackbone] = Field(
        default_factory=list,
        description="Candidates left out because their weights could not be had (skip_unavailable).",
    )
    fusion: FusionInfo
    failed_images: int = Field(description="Images that could not be decoded (skipped).")
    seconds: TotalSeconds


# ---------------------------------------------------------------------------------------------- fine-tune


class SplitSummary(_Model):
    n_images: int
    n_failed: int
    source: Literal["split", "carved"]
    fingerprint: str


class FinetuneDataset(_Model):
    ref: DatasetSpec
    n_classes: int
    classes: list[str]
    splits: dict[str, SplitSummary]
    carved: list[str]
    fingerprint: str


class BackboneDescription(_Model):
    id: str
    arch: str
    weights_source: str | None = None
    weights_sha256: str | None = None
    revision: str | None = Field(None, description="The hub commit of weights from the HF cache or a download.")
    params_m: Number = Field(None, description="Parameters of the loaded model, millions.")
    num_features: int
    num_source_classes: int = 0
    data_config: dict[str, Any] = Field(default_factory=dict)


class FinetuneConfig(_Loose):
    """The training recipe as run (optimizer settings, augmentation, what was trainable); keys vary by strategy."""

    epochs: int
    batch_size: int
    optimizer: str
    input_size: list[int]
    max_per_class: int | None = None
    device: str | None = None
    backbone_lr_scale: float | None = None
    linear_on_features: bool | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None


class AccuracyStats(_Model):
    mean: float
    std: float
    per_seed: list[float]


class SavedWeights(_Model):
    path: str
    backbone_id: str
    sha256: str
    card: dict[str, Any]


class WinnerInfo(_Model):
    rank: int
    mean_rank: Number
    n_backbones: int


class FinetuneSeconds(_Model):
    load: float
    train: float
    eval: float
    total: float


class FinetuneResult(_Model):
    """A finished fine-tuning: test accuracy over seeds, the learning-rate search, per-class accuracy."""

    schema_version: int = RESULT_SCHEMA_VERSION
    kind: Literal["finetune"] = "finetune"
    request: FinetuneRequest | None = Field(None, description="The effective request (null in version-1 files).")
    environment: Environment | None = None
    dataset: FinetuneDataset
    class_map: dict[str, int]
    backbone: BackboneDescription
    strategy: Literal["linear", "partial", "full"] = Field(description="What ran (advised runs linear or partial).")
    advice: FinetuneAdvice | None = Field(None, description="strategy advised: the advice it followed.")
    config: FinetuneConfig
    lr_grid: list[float]
    val_accuracy_by_lr: dict[str, float]
    chosen_lr: float
    seeds: list[int]
    test_accuracy: AccuracyStats
    val_accuracy: AccuracyStats
    best_seed: int
    per_class_accuracy: dict[str, Number]
    confusion_matrix: list[list[int]]
    chance_accuracy: float
    images_per_second: float
    weights: SavedWeights | None
    seconds: FinetuneSeconds
    ranking: WinnerInfo | None = Field(None, description="The winner's place when it came from a ranking.")
    ranking_id: str | None = Field(None, description="Service: the ranking job whose winner this is.")
    job_id: str | None = Field(None, description="Service: this fine-tune job (its weights: /v1/finetunes/{id}).")


# ---------------------------------------------------------------------------------------------- benchmark


class MetricSummary(_Model):
    mean: Number
    ci_low: Number = None
    ci_high: Number = None
    n_targets: int


class MethodSummary(_Model):
    is_baseline: bool
    is_product: bool = Field(
        False,
        description="One of the product's own orders (PRODUCT_METHODS): default, what `rank` returns with default "
        "settings, or predicted_accuracy.",
    )
    weighted_tau: MetricSummary
    kendall_tau: MetricSummary
    pearson: MetricSummary
    top1_regret: MetricSummary


class SuiteInfo(_Model):
    name: str
    description: str
    ground_truth: str
    fingerprint: str
    definition: dict[str, Any]


class TargetOrder(_Model):
    """How the default order was made on one target: the fusion as applied there (the ranking's ``fusion`` block
    less the calibration, which the result's ``default_order`` names once)."""

    method: Literal["calibrated", "mean_rank"]
    members: list[str]
    weights: list[float] | None
    normalisation: str
    note: str


#: The product's own orders a benchmark scores beside the estimators and baselines: ``default``, the order ``rank``
#: returns with default settings (a row's ``default``: the calibrated fused score, or minus the mean rank without a
#: usable calibration; higher = better), and ``predicted_accuracy`` (a row's predicted fine-tuned accuracy).
PRODUCT_METHODS = ("default", "predicted_accuracy")


def benchmark_score(row: Mapping[str, Any], method: str) -> float | None:
    """A benchmark row's value for ``method`` (None: none recorded): an estimator's or baseline's score, or one of
    :data:`PRODUCT_METHODS`, which a row keeps outside ``scores`` so that a calibration fitted on the result never
    takes the product's own order for an estimator."""
    if method == "default":
        value = row.get("default")
    elif method == "predicted_accuracy":
        predicted = row.get("predicted_accuracy")
        finetune = predicted.get("finetune") if isinstance(predicted, Mapping) else None
        value = finetune.get("value") if isinstance(finetune, Mapping) else None
    else:
        scores = row.get("scores")
        value = scores.get(method) if isinstance(scores, Mapping) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


class BenchmarkTarget(_Loose):
    name: str
    dataset: str
    relation: str
    kind: str = Field("", description="What the target's images are (glyphs, photos, ...); '' in older files.")
    n_classes: int
    n_rank_images: int
    n_test_images: int | None
    backbones: list[dict[str, Any]] = Field(
        description="Per backbone: scores, baselines, accuracy, seconds; default (the default order's score), "
        "predicted_accuracy and p_best where recorded."
    )
    default_order: TargetOrder | None = Field(None, description="How the default order was made here.")
    p_best: PBestInfo | None = Field(None, description="The p_best resampling, when the benchmark ran it.")
    metrics: dict[str, dict[str, dict[str, Number]] | None] = Field(
        default_factory=dict,
        description="Per method and metric: value with its bootstrap CI on this target (null: not computable).",
    )


class ZooModelProvenance(_Model):
    """What one zoo model of a benchmark was built from, by content."""

    weights_sha256: str | None = Field(description="sha256 of the weights file the run loaded.")
    source: str | None = Field(None, description="The built-in source dataset it was trained on.")
    source_dataset_sha256: str | None = Field(None, description="The source dataset's content hash (dataset.json).")
    source_dataset_sha256_from: Literal["card", "dataset manifest"] | None = Field(
        None,
        description='"card": recorded by the build; "dataset manifest": the card predates recording it, so it was '
        "read from the source dataset on disk, whose generator version and image counts are the card's.",
    )


class ZooProvenance(_Model):
    """The zoo models a benchmark used; a calibration fitted on it records their hashes, and a ranking with
    other weights says so."""

    models: dict[str, ZooModelProvenance] = Field(description="Per zoo backbone id.")
    note: str | None = Field(None, description="How the block was obtained when not by the run itself.")


class ProductColumn(_Model):
    name: str
    higher_is_better: bool
    description: str


class DefaultOrderInfo(_Model):
    """The calibration the default order applied (null: none, the mean-rank order) and the product's methods."""

    calibration: CalibrationInfo | None
    fusion: dict[str, Any] | None = Field(
        description="The calibration's fusion: members, weights, normalisation, higher_is_better (null: none)."
    )
    methods: list[ProductColumn]


class PBestTarget(_Model):
    target: str
    top: str = Field(description="The backbone with the highest p_best.")
    top_p_best: float
    best: list[str] = Field(description="The best backbone(s) by fine-tuned accuracy.")
    p_best_of_best: float = Field(description="The p_best of the best backbone(s), summed.")
    top_is_best: bool


class PBestCheck(_Model):
    """Over the targets with p_best: how often the backbone given p >= 0.5 is the best (by fine-tuned accuracy)."""

    n_bootstrap: int
    n_targets: int
    n_confident: int = Field(description="Targets where one backbone got p_best >= 0.5.")
    n_confident_best: int = Field(description="Of those, targets where that backbone is the best.")
    n_unconfident: int = Field(description="Targets where no backbone reached p_best 0.5.")
    n_top_best: int = Field(description="Targets where the backbone with the highest p_best is the best.")
    mean_top_p_best: Number = Field(description="Mean p_best of each target's most probable backbone.")
    mean_p_best_of_best: Number = Field(
        description="Mean p_best of each target's actual best (calibration: ~hit rate)."
    )
    seconds: float = Field(description="Resampling time, all targets.")
    per_target: list[PBestTarget]


class GroundTruthFlag(_Model):
    """A backbone whose standing differs between the linear-probe and the fine-tuned ground truth."""

    target: str
    backbone: str
    roles: list[str] = Field(description="Why it was checked: the default's pick, best by fine-tuning or probe.")
    n_backbones: int
    linear_probe: float
    finetune: float
    linear_probe_rank: float
    finetune_rank: float
    linear_probe_gap: float = Field(description="Best linear-probe accuracy minus this backbone's.")
    finetune_gap: float = Field(description="Best fine-tuned accuracy minus this backbone's.")
    strategy: str | None = Field(description="How the fine-tuned ground truth was trained (full, partial, linear).")
    message: str


class BenchmarkResult(_Model):
    """A benchmark run: every (target, backbone) pair scored and fine-tuned (or published), and how well each
    estimator's order matched the ground truth."""

    schema_version: int = RESULT_SCHEMA_VERSION
    kind: Literal["benchmark"] = "benchmark"
    request: BenchmarkRequest | None = Field(None, description="The effective request (null in version-1 files).")
    suite: SuiteInfo
    created: str
    environment: Environment
    zoo: ZooProvenance | None = Field(
        None, description="Content hashes of the zoo models used (null: none used, or recorded before hashes were)."
    )
    estimators: list[EstimatorColumn]
    baselines: list[dict[str, Any]]
    targets: list[BenchmarkTarget]
    skipped: dict[str, list[dict[str, Any]]]
    summary: dict[str, MethodSummary]
    default_order: DefaultOrderInfo | None = Field(
        None, description="The product's orders scored beside the estimators, and the calibration they applied."
    )
    p_best_check: PBestCheck | None = Field(None, description="Is the backbone given p_best >= 0.5 the best?")
    ground_truth_flags: list[GroundTruthFlag] | None = Field(
        None, description="Picks good under one ground truth and bad under the other (null: not checked)."
    )
    cost: dict[str, Any] | None = None
    seconds: TotalSeconds | None = None
    files: dict[str, str] | None = Field(None, description="Where the CLI wrote the JSON/CSV (and HTML).")
    reused: dict[str, Any] | None = Field(
        None,
        description="Pairs taken from earlier results (--reuse) instead of computed: 'pairs' lists each "
        "(target, backbone, file, and rescored: true where only the ground truth was reused and the ranking "
        "recomputed, because the recorded estimators differ); 'refused' each pair of those files not reused, "
        "with the protocol mismatch. Reused pieces keep their recorded seconds. Null when nothing was offered "
        "for reuse.",
    )


# ------------------------------------------------------------------------------------------------ loading


def result_kind(data: Any) -> str | None:
    """``"ranking"``, ``"finetune"`` or ``"benchmark"`` from a result document (``kind``, or the keys of a
    version-1 file that had none); None when it is no result of ours."""
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if kind in ("ranking", "finetune", "benchmark"):
        return str(kind)
    if kind is not None:
        return None
    if "backbones" in data and "fusion" in data or ("backbones" in data and "estimators" in data):
        return "ranking"
    if "test_accuracy" in data and "backbone" in data:
        return "finetune"
    if "suite" in data and "targets" in data:
        return "benchmark"
    return None


AnyResult = RankingResult | FinetuneResult | BenchmarkResult
_ANY: TypeAdapter[AnyResult] = TypeAdapter(
    Annotated[RankingResult | FinetuneResult | BenchmarkResult, Field(discriminator="kind")]
)


def load_result(data: Any) -> AnyResult:
    """A result document (parsed JSON, any schema version) as its typed model.

    Raises
    ------
    ValueError
        Not a backbone-rank result, a newer schema version than this code knows, or a malformed one
        (pydantic's ``ValidationError`` is a ``ValueError``).
    """
    kind = result_kind(data)
    if kind is None:
        keys = ", ".join(sorted(map(str, data))[:12]) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"not a backbone-rank result (a ranking, fine-tune or benchmark JSON); got keys: {keys}")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > RESULT_SCHEMA_VERSION:
        raise ValueError(
            f"{kind} result schema_version {version!r} is newer than this backbone-rank reads "
            f"(<= {RESULT_SCHEMA_VERSION}); upgrade backbone-rank"
        )
    return _ANY.validate_python({**data, "kind": kind})
