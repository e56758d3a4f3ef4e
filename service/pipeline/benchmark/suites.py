"""Benchmark suites: which backbones on which targets, and where the ground truth comes from.

=============  ==============  =====================================================================
suite          ground truth    what
=============  ==============  =====================================================================
``standard``   published       the literature's 11 supervised ImageNet models x 11 targets with the
                               published fine-tuned accuracies (SFDA's ``tw_group1.py``), so only
                               feature extraction is paid; needs the datasets and weights locally
=============  ==============  =====================================================================

Other suites are registered by the host (:func:`service.pipeline.plugins.register_suite`): the built-in
``default`` and ``quick`` (``service/builtin/suites.py``) take another sample size (``get_suite(name,
per_class=N)``, CLI ``--per-class N``).

A suite may also be a TOML file (``--suite my_suite.toml``)::

    name = "mine"
    description = "two backbones on my data"
    ground_truth = "finetune"            # or "published" with a [published] table
    [[targets]]
    name = "plants"
    dataset = "/data/plants"             # any dataset reference rank accepts
    kind = "photos"                      # optional: groups targets for leave-one-kind-out
    [[backbones]]
    id = "zoo:latin-resnet10t"
    [[backbones]]
    id = "tf_efficientnet_lite0.in1k"
    input_size = 64                      # optional: override the input size (rank and fine-tune)
    [finetune]                           # optional; defaults as in FinetuneSpec
    epochs = 6
    seeds = [0, 1, 2]
    [published.plants]                   # with ground_truth = "published": accuracy in [0, 1]
    "zoo:latin-resnet10t" = 0.71
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from service.pipeline.plugins import registered_suites, suite_factory

__all__ = [
    "FinetuneSpec",
    "STANDARD_TARGET_FOLDERS",
    "Suite",
    "SuiteBackbone",
    "SuiteTarget",
    "get_suite",
    "load_suite_file",
    "missing_data_hint",
    "standard_ground_truth",
    "suite_names",
]


@dataclass(frozen=True)
class SuiteTarget:
    """One target task: a dataset reference (its train split is ranked, val picks the lr, test is reported).

    ``kind`` groups targets by what their images are (``"glyphs"``, ``"photos"``, ...): a leave-one-kind-out
    evaluation holds out every target of a kind at once. Empty when the suite does not say.
    """

    name: str
    dataset: str
    relation: str = ""
    kind: str = ""


@dataclass(frozen=True)
class SuiteBackbone:
    """One candidate. ``input_size`` overrides the model's input size for ranking and fine-tuning alike."""

    id: str
    input_size: int | None = None
    #: For published ground truth: the model's key in the published table (``"resnet50"``).
    published_name: str | None = None
    #: Accuracy of the backbone on its own source task (0-1), when the suite knows it (a baseline).
    source_accuracy: float | None = None


@dataclass(frozen=True)
class FinetuneSpec:
    """How the ground truth is fine-tuned (``service.pipeline.finetune.finetune``)."""

    strategy: str = "full"
    epochs: int = 8
    lr_grid: tuple[float, ...] = (0.01, 0.03)
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 64
    max_per_class: int | None = None
    #: Also record a linear-probe accuracy (frozen backbone, one seed): cheap, and a second ground truth.
    linear_probe: bool = True


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    targets: tuple[SuiteTarget, ...]
    backbones: tuple[SuiteBackbone, ...]
    ground_truth: Literal["finetune", "published"] = "finetune"
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    #: Images per class used for ranking (None: the whole train split).
    rank_max_per_class: int | None = None
    #: Estimators to score (None: every registered one).
    estimators: tuple[str, ...] | None = None
    #: ``{target name: {backbone id: accuracy in [0, 1]}}`` for ``ground_truth == "published"``.
    published: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["published"] = {t: dict(v) for t, v in self.published.items()}
        return data

    def fingerprint(self) -> str:
        """sha256 prefix of the definition: partial results of another definition are never resumed."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------ the standard suite

# Table GT-1: full fine-tuning top-1 accuracy (%; VOC2007: mAP), TencentARC/SFDA tw_group1.py.
_GT1 = """\
model,aircraft,caltech101,cars,cifar10,cifar100,dtd,flowers,food,pets,sun397,voc2007
resnet34,84.06,91.15,88.63,96.12,81.94,72.96,95.20,81.99,93.50,61.02,84.60
resnet50,84.64,91.98,89.09,96.28,82.80,74.72,96.26,84.45,93.88,63.54,85.80
resnet101,85.53,92.38,89.47,97.39,84.88,74.80,96.53,85.58,93.92,63.76,85.68
resnet152,86.29,93.10,89.88,97.53,85.66,76.44,96.86,86.28,94.42,64.82,86.32
densenet121,84.66,91.50,89.34,96.45,82.75,74.18,97.02,84.99,93.07,63.26,85.28
densenet169,84.19,92.51,89.02,96.77,84.26,74.72,97.32,85.84,93.62,64.10,85.77
densenet201,85.38,93.14,89.44,97.02,84.88,76.04,97.10,86.71,94.03,64.57,85.67
mnasnet1_0,66.48,89.34,72.58,92.59,72.04,70.12,95.39,71.35,91.08,56.56,81.06
mobilenet_v2,79.68,88.64,86.44,94.74,78.11,71.72,96.20,81.12,91.28,60.29,82.80
googlenet,80.32,90.85,87.76,95.54,79.84,72.53,95.76,79.30,91.38,59.89,82.58
inception_v3,80.15,92.75,87.74,96.18,81.49,72.85,95.73,81.76,92.14,59.98,83.84
"""

#: The standard models: published name -> (default timm id with the torchvision weights or None when timm
#: has no such weights, ImageNet top-1 of torchvision's documentation).
_STANDARD_MODELS: dict[str, tuple[str | None, float]] = {
    "resnet34": ("resnet34.tv_in1k", 0.7330),
    "resnet50": ("resnet50.tv_in1k", 0.7615),
    "resnet101": ("resnet101.tv_in1k", 0.7737),
    "resnet152": ("resnet152.tv_in1k", 0.7831),
    "densenet121": ("densenet121.tv_in1k", 0.7465),
    "densenet169": ("densenet169.tv_in1k", 0.7600),
    "densenet201": ("densenet201.tv_in1k", 0.7720),
    # timm's mnasnet_100 / mobilenetv2_100 weights are not torchvision's, and timm has no GoogLeNet: map these
    # to your converted torchvision weights (--backbone NAME=ARCH@file.safetensors) or they are skipped.
    "mnasnet1_0": (None, 0.7351),
    "mobilenet_v2": (None, 0.7188),
    "googlenet": (None, 0.6978),
    "inception_v3": ("inception_v3.tv_in1k", 0.7745),
}

#: Standard target name -> folder name expected under ``--data-dir`` (an ImageFolder with train/ [val/] test/).
STANDARD_TARGET_FOLDERS: dict[str, str] = {
    "aircraft": "aircraft", "caltech101": "caltech101", "cars": "cars", "cifar10": "cifar10",
    "cifar100": "cifar100", "dtd": "dtd", "flowers": "flowers", "food": "food", "pets": "pets",
    "sun397": "sun397", "voc2007": "voc2007",
}  # fmt: skip


#: Where the standard suite looks for its targets without ``data_dir`` (relative to the working directory).
_STANDARD_DEFAULT_DATA_DIR = "standard-data"


def missing_data_hint(suite: Suite) -> str:
    """How to provide a suite's target datasets, for the error raised when none of them can be loaded."""
    if suite.name == "standard" and suite.ground_truth == "published":
        return (
            "the standard suite reads one ImageFolder per target (train/ and test/ splits) from --data-dir DIR "
            f"(default: ./{_STANDARD_DEFAULT_DATA_DIR}): pass --data-dir with the folder that holds them"
        )
    return "check the dataset of each [[targets]] entry of the suite (or --target to run only some)"


def standard_ground_truth() -> dict[str, dict[str, float]]:
    """Table GT-1 as ``{target: {published model name: accuracy in [0, 1]}}``."""
    lines = _GT1.strip().splitlines()
    header = lines[0].split(",")[1:]
    table: dict[str, dict[str, float]] = {target: {} for target in header}
    for line in lines[1:]:
        model, *values = line.split(",")
        for target, value in zip(header, values, strict=True):
            table[target][model] = float(value) / 100.0
    return table


def _standard_suite(data_dir: Path | None = None, backbone_map: Mapping[str, str] | None = None) -> Suite:
    overrides = dict(backbone_map or {})
    unknown = sorted(set(overrides) - set(_STANDARD_MODELS))
    if unknown:
        raise ValueError(
            f"--backbone names {unknown} are not standard models; the standard models are {', '.join(_STANDARD_MODELS)}"
        )
    backbones = []
    for name, (default_id, top1) in _STANDARD_MODELS.items():
        model_id = overrides.get(name, default_id)
        if model_id is None:
            model_id = f"unavailable:{name}"  # resolved (and skipped with a reason) at run time
        backbones.append(SuiteBackbone(model_id, published_name=name, source_accuracy=top1))
    root = Path(data_dir) if data_dir is not None else Path(_STANDARD_DEFAULT_DATA_DIR)
    table = standard_ground_truth()
    targets = tuple(
        SuiteTarget(target, str(root / folder), "published (SFDA group 1)")
        for target, folder in STANDARD_TARGET_FOLDERS.items()
    )
    published = {
        target: {b.id: table[target][b.published_name] for b in backbones if b.published_name} for target in table
    }
    return Suite(
        name="standard",
        description=(
            "The literature's benchmark: 11 supervised ImageNet models x 11 targets, ground truth = the published "
            "full fine-tuning accuracies (TencentARC/SFDA tw_group1.py; VOC2007 = mAP). Features at the models' "
            "native preprocessing on each target's train split."
        ),
        targets=targets,
        backbones=tuple(backbones),
        ground_truth="published",
        finetune=FinetuneSpec(linear_probe=False),
        published=published,
    )


#: The engine's own suite (published ground truth); the built-in ones (``default``, ``quick``) are registered by
#: the host (:func:`service.pipeline.plugins.register_suite`, from ``service/builtin/suites.py``).
_STANDARD_DESCRIPTION = "11 ImageNet models x 11 targets with published ground truth (needs local data and weights)"


def suite_names() -> dict[str, str]:
    """Every suite name :func:`get_suite` knows, with its one-line description."""
    return {**registered_suites(), "standard": _STANDARD_DESCRIPTION}


def get_suite(
    name_or_path: str,
    *,
    data_dir: Path | None = None,
    backbone_map: Mapping[str, str] | None = None,
    per_class: int | None = None,
) -> Suite:
    """A registered suite by name (``default``, ``quick`` once the built-ins are registered), ``standard``, or a
    suite TOML file by path.

    ``data_dir`` and ``backbone_map`` (published name -> backbone id) only apply to ``standard``;
    ``per_class`` (images per class in every split, for ranking and fine-tuning alike) only to the registered
    suites: the calibration of predicted accuracy learns from several such settings.
    """
    factory = suite_factory(name_or_path)
    if per_class is not None and (per_class < 2 or factory is None):
        raise ValueError(
            f"per-class {per_class} applies to the built-in suites ({', '.join(registered_suites()) or 'none'}), "
            "with at least 2 images per class; a suite file sets rank_max_per_class and [finetune] max_per_class "
            "itself"
        )
    if factory is not None:
        return factory(per_class)
    if name_or_path == "standard":
        return _standard_suite(data_dir, backbone_map)
    path = Path(name_or_path)
    if path.suffix == ".toml":
        return load_suite_file(path)
    raise ValueError(f"unknown suite {name_or_path!r}; known suites: {', '.join(suite_names())}, or give a .toml file")


def load_suite_file(path: str | Path) -> Suite:
    """Read a suite TOML file (format in the module docstring); every mistake is a ValueError naming it."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"cannot read suite file {path}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"suite file {path} is not valid TOML: {e}") from e
    where = f"suite file {path}"
    name = data.get("name") or path.stem
    targets = _records(data, "targets", where, ("name", "dataset"), SuiteTarget)
    backbones = _records(data, "backbones", where, ("id",), SuiteBackbone)
    ground_truth = data.get("ground_truth", "finetune")
    if ground_truth not in ("finetune", "published"):
        raise ValueError(f"{where}: ground_truth must be 'finetune' or 'published', got {ground_truth!r}")
    spec = data.get("finetune", {})
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: [finetune] must be a table")
    finetune_fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    try:
        finetune = FinetuneSpec(**finetune_fields)
    except TypeError as e:
        known = ", ".join(FinetuneSpec.__dataclass_fields__)
        raise ValueError(f"{where}: bad [finetune] key ({e}); known: {known}") from e
    published = data.get("published", {})
    if ground_truth == "published":
        _check_published(published, targets, backbones, where)
    return Suite(
        name=str(name),
        description=str(data.get("description", "")),
        targets=targets,
        backbones=backbones,
        ground_truth=ground_truth,
        finetune=finetune,
        rank_max_per_class=data.get("rank_max_per_class"),
        estimators=tuple(data["estimators"]) if data.get("estimators") else None,
        published=published,
    )


def _records(data: Mapping[str, Any], key: str, where: str, required: Sequence[str], cls: type) -> tuple[Any, ...]:
    records = data.get(key)
    if not isinstance(records, list) or not records:
        raise ValueError(f"{where}: needs at least one [[{key}]] entry")
    out = []
    for i, record in enumerate(records, start=1):
        missing = [k for k in required if k not in record]
        if missing:
            raise ValueError(f"{where}: [[{key}]] entry {i} lacks {', '.join(missing)}")
        try:
            out.append(cls(**record))
        except TypeError as e:
            raise ValueError(f"{where}: [[{key}]] entry {i}: {e}") from e
    names = [getattr(r, "name", None) or r.id for r in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: duplicate [[{key}]] entries: {sorted({n for n in names if names.count(n) > 1})}")
    return tuple(out)


def _check_published(
    published: Any, targets: Sequence[SuiteTarget], backbones: Sequence[SuiteBackbone], where: str
) -> None:
    if not isinstance(published, dict):
        raise ValueError(f"{where}: ground_truth = 'published' needs a [published.<target>] table per target")
    for target in targets:
        table = published.get(target.name)
        if not isinstance(table, dict):
            raise ValueError(f"{where}: no [published.{target.name}] table")
        for backbone in backbones:
            value = table.get(backbone.id)
            if not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"{where}: [published.{target.name}] needs an accuracy in [0, 1] for {backbone.id!r}, got {value!r}"
                )
