"""What a user asks for: one pydantic model per request kind, shared by the CLI, the REST API (the body IS
the model), the Python client and the job worker. Torch-free (the web process validates bodies with it).

A field that is ``None`` means "not set": the runtime fills it from the settings (device, batch size) or
from the method's own default (estimators, epochs, learning rates), and every result carries the
*effective* request, with those defaults filled in, under the same field names. Unknown fields are
refused (``extra="forbid"``), so a typo is an error rather than a silently ignored option. Numbers and switches
are strict (``StrictInt``, ``StrictFloat``, ``StrictBool``): ``true`` is no count and ``"5"`` no number, whoever
sends them (a float field still takes an integer).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, model_validator

__all__ = [
    "MAX_BACKBONES",
    "MAX_BOOTSTRAP",
    "BackboneId",
    "BenchmarkRequest",
    "DatasetSpec",
    "FinetuneRequest",
    "RankingRequest",
    "local_only_fields",
]

#: Candidates in one ranking; each costs a model load and a pass over the dataset.
MAX_BACKBONES = 64
#: Half-sample replicates for p_best; 200 puts the share's standard error under 0.035 and bounds the refits.
MAX_BOOTSTRAP = 200
_JOB_ID = r"^[0-9a-f]{32}$"
#: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``: what ``torch.device`` takes and the settings allow.
_DEVICE = r"^(auto|cpu|mps|cuda(:[0-9]{1,2})?)$"

BackboneId = Annotated[str, Field(min_length=1, max_length=1024)]
EstimatorName = Annotated[str, Field(min_length=1, max_length=64)]
LocalPath = Annotated[str, Field(min_length=1, max_length=4096)]
Device = Annotated[str, Field(pattern=_DEVICE, description="auto, cpu, cuda, cuda:N or mps (default: settings).")]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be finite")
    return value


LearningRate = Annotated[StrictFloat, Field(gt=0, le=10), AfterValidator(_finite)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Request):
    """Where the images are: ``{"kind": "folder", "path": "/data/pets"}``, ``{"kind": "builtin", "name":
    "glyphs-greek", "split": "test"}``, ``{"kind": "hub", "name": "ORG/NAME", "split": "train"}`` (downloaded
    within the server's allowlist), ``{"kind": "upload", "name": "<id>"}`` (an archive uploaded with POST
    /v1/datasets). On a server, paths must resolve under its data roots."""

    kind: Literal["folder", "manifest", "hf", "builtin", "hub", "upload"]
    path: str | None = Field(None, min_length=1, max_length=4096)
    name: str | None = Field(
        None, min_length=1, max_length=200, description="builtin: its name; hub: ORG/NAME; upload: its id."
    )
    split: str | None = Field(None, min_length=1, max_length=100)
    revision: str | None = Field(
        None, min_length=1, max_length=200, description="hub: a branch, tag or commit (a result records the commit)."
    )
    image_column: str | None = Field(None, min_length=1, max_length=200, description="hub: the image column.")
    label_column: str | None = Field(None, min_length=1, max_length=200, description="hub: the label column.")


class RankingRequest(_Request):
    """Rank ``backbones`` on ``dataset`` (``backbone-rank rank``, ``POST /v1/rankings``)."""

    dataset: DatasetSpec
    backbones: list[BackboneId] = Field(
        min_length=1,
        max_length=MAX_BACKBONES,
        description="timm ids (arch.tag[@revision]), hf-hub:ORG/NAME, zoo:NAME, random:ARCH, or a named set of the "
        "model catalogue (@popular, @mobile, @top:N, with filters: @top:20?max_params=30), which the request "
        "holds as its ids; local-dir:/@file only under the weights dirs.",
    )
    skip_unavailable: StrictBool | None = Field(
        None,
        description="Rank the candidates whose weights can be had and list the others (with how to get them) instead "
        "of failing; default: on when the list came from a named set, off for ids named one by one.",
    )
    estimators: list[EstimatorName] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Default: every estimator that applies (GET /v1/estimators); the result lists those computed.",
    )
    max_per_class: StrictInt | None = Field(None, ge=1, le=1_000_000, description="Rank on a seeded per-class sample.")
    seed: StrictInt = Field(
        0, ge=0, le=2**32 - 1, description="Seed of the per-class sample (and of the half-samples)."
    )
    layer: StrictInt | None = Field(
        None,
        ge=-64,
        le=64,
        description="Score an intermediate layer (timm forward_intermediates index) instead of the pooled "
        "pre-logits; the source-head estimators (LEEP, NCE, ...) then do not apply.",
    )
    streaming: StrictBool = Field(
        False,
        description="Accumulate sufficient statistics batch by batch instead of keeping the features (memory "
        "independent of the number of images); estimators that need the samples are then left unscored.",
    )
    layer_scores: StrictBool = Field(
        False,
        description="Also score every stage of each backbone (same forward pass) and give each row its layer "
        "advice: the best layer for feature extraction and how many stages to freeze. Not with layer or streaming.",
    )
    n_bootstrap: StrictInt = Field(
        0,
        ge=0,
        le=MAX_BOOTSTRAP,
        description="Half-sample replicates for each backbone's probability of being best (p_best; 0: none). "
        "Each replicate refits the fused ranking's members for every backbone (the packaged fusion, ridge probe + "
        "PARC + NCTI: ~0.1-0.5 s per backbone and replicate on a CPU).",
    )
    device: Device | None = None
    batch_size: StrictInt | None = Field(None, ge=1, le=4096, description="Images per batch (default: settings).")
    cache: StrictBool = Field(True, description="Reuse and store extracted features in the feature cache.")
    executor: Literal["local", "ray"] | None = Field(
        None,
        description="Where the features are extracted: 'local' (one process) or 'ray' (actors on the Ray cluster "
        "that the settings name; needs pip install 'backbone-rank[ray]'); default: the settings'. The same rows "
        "and scores either way.",
    )
    weights_dirs: list[LocalPath] = Field(
        default_factory=list,
        max_length=16,
        description="Local runs only: extra directories searched for <id>.safetensors files (a server searches "
        "its own weights dirs and refuses this field).",
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_candidate_sets(cls, data: Any) -> Any:
        # Every caller's request passes here (CLI, API body, client, stored job), so a named set becomes its ids
        # once and stored requests and results name concrete models. The catalogue is torch-free.
        backbones = data.get("backbones") if isinstance(data, dict) else None
        if not isinstance(backbones, list) or not any(
            isinstance(b, str) and b.strip().startswith("@") for b in backbones
        ):
            return data
        from service.model_catalogue import expand_backbone_ids

        expanded = {**data, "backbones": expand_backbone_ids([str(b) for b in backbones])}
        if expanded.get("skip_unavailable") is None:
            expanded["skip_unavailable"] = True
        return expanded

    @model_validator(mode="after")
    def _layer_scores_alone(self) -> RankingRequest:
        if self.layer_scores and self.layer is not None:
            raise ValueError("layer_scores scores every layer; leave 'layer' out (it picks one)")
        if self.layer_scores and self.streaming:
            raise ValueError("layer_scores needs the features of every layer; it cannot stream (set streaming false)")
        return self


class FinetuneRequest(_Request):
    """Fine-tune ``backbone``, or the winner of the succeeded ranking ``ranking_id`` (a service job; on that
    ranking's dataset unless ``dataset`` is given)."""

    dataset: DatasetSpec | None = None
    backbone: BackboneId | None = None
    ranking_id: str | None = Field(
        None, pattern=_JOB_ID, description="Service only: a succeeded ranking, whose winner is the backbone."
    )
    strategy: Literal["linear", "partial", "full", "advised"] = Field(
        "full",
        description="linear: a new head on frozen features; partial: the last quarter of the blocks (or what "
        "freeze_stages leaves) and the head; full: everything; advised: what the layer scores on the training "
        "split advise (linear, or partial with the stages they name frozen; the result's advice says which).",
    )
    freeze_stages: StrictInt | None = Field(
        None,
        ge=0,
        le=64,
        description="partial only: freeze the first N stages (timm's feature_info, as rank --layer-scores counts "
        "them) and train the rest.",
    )
    epochs: StrictInt | None = Field(None, ge=1, le=1000, description="Default: the strategy's.")
    lr_grid: list[LearningRate] | None = Field(
        None, min_length=1, max_length=16, description="Head learning rates tried on val (default: the strategy's)."
    )
    seeds: list[Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]] | None = Field(
        None, min_length=1, max_length=10, description="One run per seed at the chosen learning rate (default [0])."
    )
    batch_size: StrictInt | None = Field(None, ge=1, le=4096, description="Training batch size (default 128).")
    max_per_class: StrictInt | None = Field(None, ge=1, le=1_000_000, description="Cap every split (seeded sample).")
    input_size: StrictInt | None = Field(None, ge=8, le=1024, description="Train at this side length (e.g. 32).")
    device: Device | None = None
    weights_dirs: list[LocalPath] = Field(
        default_factory=list,
        max_length=16,
        description="Local runs only: extra directories searched for <id>.safetensors files.",
    )

    @model_validator(mode="after")
    def _which_backbone(self) -> FinetuneRequest:
        # With ranking_id the service fills in its winner (and dataset): the stored, effective request has both,
        # and a backbone given with a ranking_id must be that winner.
        if self.backbone is None and self.ranking_id is None:
            raise ValueError("give 'backbone' (with 'dataset') or 'ranking_id' (a ranking whose winner to fine-tune)")
        if self.ranking_id is None and self.dataset is None:
            raise ValueError("'dataset' is required with 'backbone' (it is optional only with 'ranking_id')")
        if self.freeze_stages is not None and self.strategy != "partial":
            raise ValueError(
                f"freeze_stages applies to strategy 'partial', not {self.strategy!r} (advised chooses it itself)"
            )
        return self


class BenchmarkRequest(_Request):
    """Score every (target, backbone) pair of a suite and compare with fine-tuned (or published) accuracy
    (``backbone-rank benchmark``)."""

    suite: str = Field("default", min_length=1, description="default, quick, standard, or a suite .toml file.")
    targets: list[str] | None = Field(None, min_length=1, description="Run only these targets of the suite.")
    per_class: StrictInt | None = Field(
        None, ge=1, le=100_000, description="default/quick suites: images per class in every split."
    )
    data_dir: LocalPath | None = Field(None, description="standard suite: folder holding the target ImageFolders.")
    backbone_map: dict[str, BackboneId] = Field(
        default_factory=dict, description="standard suite: NAME -> backbone id to use for a published model."
    )
    n_bootstrap: StrictInt = Field(500, ge=0, le=100_000, description="Bootstrap replicates per target for the CIs.")
    p_best: StrictInt = Field(
        0,
        ge=0,
        le=MAX_BOOTSTRAP,
        description="Half-sample replicates of the default order's p_best per target, to check how often the "
        "backbone given p_best >= 0.5 is the best (0: not checked). Each refits the fusion's members for every "
        "backbone, as `rank --bootstrap` does.",
    )
    device: Device | None = None
    reuse: list[LocalPath] = Field(
        default_factory=list,
        max_length=64,
        description="Earlier benchmark result files whose (target, backbone) pairs are taken as recorded when "
        "they were produced under the same protocol (environment, fine-tuning, sample size); pairs scored with "
        "other estimators keep their ground truth and are ranked again.",
    )


def local_only_fields(request: RankingRequest | FinetuneRequest) -> list[str]:
    """The fields set in ``request`` that only mean something on the caller's machine (a server refuses them)."""
    return ["weights_dirs"] if request.weights_dirs else []
