"""Checks the web process makes before it queues a job: cheap, and without torch.

What can be known from the request and the filesystem's top level is refused here with the
pipeline's own error codes (``path_outside_roots``, ``dataset_not_found``, ``unknown_backbone``,
``unknown_estimator``, ...). What needs the images or the weights (an empty dataset, one class,
corrupt files, weights that cannot be found) is found by the worker, and the job fails with the same
codes.
"""

from __future__ import annotations

from typing import Any

from service.config import Settings
from service.contract import DatasetSpec, FinetuneRequest, RankingRequest, local_only_fields
from service.errors import (
    DatasetNotFound,
    InvalidRequest,
    JobCorrupt,
    JobNotFound,
    JobNotSucceeded,
    LocalOnlyOption,
    UnknownBackbone,
    WeightsUnavailable,
)
from service.jobs.store import JobStore
from service.pipeline.data.paths import check_dataset_path
from service.pipeline.data.refs import DatasetRef
from service.pipeline.models.backbone_ids import check_backbone_id, load_timm_registry, service_allows
from service.pipeline.scaleout.check import require_executor

__all__ = ["check_dataset", "check_backbones", "check_estimator_names", "ranking_request", "finetune_request"]


def check_dataset(spec: DatasetSpec | dict[str, Any], settings: Settings) -> dict[str, str]:
    """The dataset reference as stored with the job (``DatasetRef.to_dict()``)."""
    data = spec.model_dump(exclude_none=True) if isinstance(spec, DatasetSpec) else dict(spec)
    ref = DatasetRef.from_dict(data)
    if ref.kind == "builtin":
        from service.builtin.datasets import BUILTIN_DATASETS

        if ref.name not in BUILTIN_DATASETS:
            raise DatasetNotFound(
                f"unknown built-in dataset {ref.name!r}; known: {', '.join(BUILTIN_DATASETS)} "
                "(GET /v1/datasets/builtin)",
                name=ref.name,
            )
    elif ref.kind == "hub":
        from service.pipeline.models.hub import check_allowed

        check_allowed(str(ref.name), settings.hub_patterns(service=True)[1], repo_type="dataset")
    elif ref.kind == "upload":
        from service.pipeline.data.upload import locate_upload

        locate_upload(str(ref.name), settings.uploads_dir)
    else:
        # The service never falls back to "the dataset's own folder": no data roots, no paths.
        check_dataset_path(ref, list(settings.data_roots))
    return ref.to_dict()


def check_backbones(ids: list[str], settings: Settings) -> list[str]:
    """Syntax, the service allowlist and (once a worker published timm's registry) the timm name."""
    registry = load_timm_registry(settings.cache_dir / "catalog")
    checked: list[str] = []
    for raw in ids:
        backbone = check_backbone_id(raw, registry=registry)
        if not service_allows(backbone, patterns=settings.allowed_backbones, weights_dirs=settings.weights_dirs):
            raise UnknownBackbone(
                f"backbone {backbone!r} is not allowed by this service (local-dir:/@file ids must lie under the "
                "server's weights dirs; other ids must match its allowlist); pick one from GET /v1/backbones",
                backbone=backbone,
            )
        if backbone.startswith("zoo:"):
            _check_zoo(backbone, settings)
        _check_download_allowed(backbone, settings)
        if backbone in checked:
            raise InvalidRequest(f"backbone {backbone!r} is listed twice; list each candidate once")
        checked.append(backbone)
    return checked


def _check_download_allowed(backbone: str, settings: Settings) -> None:
    """Refuse on submission an id the worker would have to download from a repo outside the service's allowlist
    (an ``hf-hub:`` repo, or ``timm/<arch.tag>``), unless its weights are in the HF cache already."""
    from service.catalog import hf_cache_has
    from service.pipeline.models.backbone_ids import SOURCE_PREFIX_RE, split_weights_suffix
    from service.pipeline.models.hub import check_allowed, repo_allowed

    prefix, sep, rest = backbone.partition(":")
    if sep and SOURCE_PREFIX_RE.fullmatch(prefix):
        if prefix.lower() != "hf-hub":
            return
        repo = rest.partition("@")[0]
    else:
        name, file, _ = split_weights_suffix(backbone)
        if file is not None or "." not in name:
            return  # a local file; or an arch whose default tag (hence repo) only the worker's timm knows
        repo = f"timm/{name}"
    patterns = settings.hub_patterns(service=True)[0]
    if not repo_allowed(repo, patterns) and not hf_cache_has(settings, repo):
        check_allowed(repo, patterns, what=backbone)


def _check_zoo(backbone: str, settings: Settings) -> None:
    from service.builtin.zoo import list_zoo  # reads model cards; no torch
    from service.catalog import zoo_dir

    rows = {row["id"]: row for row in list_zoo(zoo_dir(settings))}
    row = rows.get(backbone)
    if row is None:
        raise UnknownBackbone(
            f"no zoo model {backbone!r}; the zoo has {', '.join(rows) or 'no models'} (GET /v1/backbones)",
            backbone=backbone,
        )
    if not row["built"]:
        raise WeightsUnavailable(
            f"zoo model {backbone!r} is not built on this server; build it with `backbone-rank zoo build`",
            backbone=backbone,
        )


def check_estimator_names(names: list[str] | None) -> list[str] | None:
    if not names:
        return None
    from estimators import list_estimators  # numpy/scipy/sklearn: no torch
    from service.errors import UnknownEstimator

    known = [info.name for info in list_estimators()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UnknownEstimator(
            f"unknown estimator(s) {unknown}; known estimators: {', '.join(sorted(known))} (GET /v1/estimators)",
            estimators=unknown,
        )
    return list(dict.fromkeys(names))


def _refuse_local_paths(body: RankingRequest | FinetuneRequest) -> None:
    local = local_only_fields(body)
    if local:
        raise LocalOnlyOption.refusing(local)


def ranking_request(body: RankingRequest, settings: Settings) -> dict[str, Any]:
    """The validated request as stored with the job (the model's JSON, dataset/backbones/estimators checked, and the
    executor installed: ``ray`` on a server without Ray is ``executor_unavailable``)."""
    _refuse_local_paths(body)
    require_executor(body.executor or settings.executor)
    checked = body.model_copy(
        update={
            "dataset": DatasetSpec(**check_dataset(body.dataset, settings)),
            "backbones": check_backbones(body.backbones, settings),
            "estimators": check_estimator_names(body.estimators),
        }
    )
    return checked.model_dump(mode="json")


def finetune_request(body: FinetuneRequest, settings: Settings, store: JobStore) -> dict[str, Any]:
    """The validated request as stored with the job; ``ranking_id`` is resolved to its winner (a ``backbone``
    given with it must be that winner) and, without a ``dataset``, to the ranking's dataset, split dropped:
    fine-tuning picks train/val/test itself."""
    _refuse_local_paths(body)
    if body.ranking_id is not None:
        ranking = store.get(body.ranking_id)
        if ranking is None or ranking.kind != "ranking":
            raise JobNotFound(f"no ranking with id {body.ranking_id!r}", job_id=body.ranking_id)
        if ranking.state == "succeeded" and "result" in ranking.unreadable:
            raise JobCorrupt(f"the stored result of ranking {body.ranking_id} cannot be read; rank again")
        if ranking.state != "succeeded" or not ranking.result:
            raise JobNotSucceeded(
                f"ranking {body.ranking_id} is {ranking.state}; only a succeeded ranking has a winner to fine-tune",
                state=ranking.state,
            )
        try:
            winner = ranking.result["backbones"][0]["id"]
            ranked_on = dict(ranking.result["dataset"]["ref"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise JobCorrupt(f"the stored result of ranking {body.ranking_id} names no winner; rank again") from None
        if body.backbone is not None and body.backbone != winner:
            raise InvalidRequest(
                f"backbone {body.backbone!r} is not the winner of ranking {body.ranking_id} ({winner!r}); "
                "give only 'ranking_id', or only 'backbone' and 'dataset'"
            )
        backbone = check_backbones([winner], settings)[0]
        if body.dataset is not None:
            dataset = check_dataset(body.dataset, settings)
        else:
            dataset = {k: v for k, v in ranked_on.items() if k != "split"}
            dataset = check_dataset(dataset, settings)
    else:
        assert body.backbone is not None and body.dataset is not None  # the model's validator
        backbone = check_backbones([body.backbone], settings)[0]
        dataset = check_dataset(body.dataset, settings)
    checked = body.model_copy(update={"backbone": backbone, "dataset": DatasetSpec(**dataset)})
    return checked.model_dump(mode="json")
