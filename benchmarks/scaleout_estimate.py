"""Estimate, without running anything, the time to rank 50 timm models on ImageNet-sized data with 8 GPUs.

What: the wall time of one ranking (feature extraction + scoring) of 50 popular timm candidates on 1,281,167
images (ImageNet-1k train), 50,000 (its validation set) and 100,000 (100 per class, ``--max-per-class 100``), on
8 GPUs through the executor ``ray`` (service/pipeline/scaleout/). No GPU was lent to this project's sessions, so
every GPU figure is timm's published throughput, never a measurement of this pipeline.

How (the cluster and cost figures are arguments, see ``--help``; the measured constants are module constants; all
are written with the result):

- **Candidates**: the packaged model catalogue (``service/builtin/model_catalogue.csv`` via
  :func:`service.model_catalogue.load_model_catalogue`; its columns and family rules are in
  ``service/builtin/model_catalogue.SOURCE.md``, which names timm's results files as the origin; the raw copy's
  ``SOURCE.md`` beside ``benchmark-infer-amp-nchw-pt291-cu128-4090.csv`` in the shared timm data folder says the
  same). Rule: the models of the catalogue families ``resnet`` (with seresnet, ecaresnet, resnetv2, wide_resnet
  ...), ``convnext`` (with convnextv2), ``efficientnet`` (with tf_efficientnet*, efficientnetv2) and ``vit``
  that have a GPU throughput (``gpu_img_per_s``) and at most 100 M parameters, the highest ImageNet top-1 first
  (ties by id), at most 15 per family, the first 50. Several ids are tags of one architecture (the same cost).
- **GPU cost per image** = 1 / ``gpu_img_per_s``: RTX 4090, AMP, NCHW, PyTorch 2.9.1, timm's batch (mostly
  1024), at the model's evaluation size. An H100 is faster than a 4090; by how much for these models is not
  measured here, so the figures are for 4090-class GPUs. The pipeline's img/s against a raw forward on a GPU is
  unmeasured (``benchmarks/gpu_check.py`` measures it, never run yet; the pipeline's default batch is 64, not
  1024): ``--efficiency`` (default 0.8, an assumption) divides the published throughput. On CPU it was 72-106 %
  (benchmarks/README.md, "Extraction throughput").
- **Decode**: the pipeline decodes each image once per distinct data config (service/pipeline/features/
  extract.py: one decode + resize + crop per preprocessing group, normalisation batched afterwards; the group key
  is the *whole* config, mean/std included). The catalogue has no mean/std, so models are grouped by
  (img_size, crop_pct, interpolation): a lower bound on the groups (a sensitivity row gives every model its own).
  Per-image CPU cost: about 1 ms JPEG decode + 3 ms bicubic resize on one core, measured on 256 x 256 JPEGs
  (benchmarks/README.md, "Extraction throughput"); ImageNet's JPEGs average about 400 x 350 px (a commonly
  quoted figure, not measured here), so the decode part is scaled by the pixel count (x2.14): 5.14 ms
  (``--decode-ms``). The resize is kept at 3 ms, as measured (to 224 px; larger outputs, up to 672 px here, are
  not scaled); a sensitivity row scales it by the source pixels too. Each Ray actor decodes in one background
  thread (``run_group``), so the decode threads are ``--gpus`` x ``--actors-per-gpu`` (default 8 x 8 = 64: the
  settings ``ray_actors`` 64, ``ray_gpus_per_actor`` 0.125, service/config.py), at most ``--cpu-cores`` (64).
- **Time**: models are independent and every actor runs every group on its shards, so each GPU does 1/``--gpus`` of
  every model's images. A group's pass decodes the next batch while the GPU runs the current one: group time =
  max(GPU, decode), summed over groups (upper bound; the lower bound is max of the sums, were actors on different
  groups to overlap). GPU time also counts the group's weights moving to the GPU and back once per shard
  (``shard_images`` 2048, service/pipeline/runtime.py ``RayOptions``; fp32, ``--pcie-gb-s`` 16, an assumption).
- **Scoring**: the recorded numpy time of the 8 shared-``Statistics`` estimators at N = 20,000, D = 2,048,
  C = 100, one BLAS thread (benchmarks/results/speed_estimators-n20000-d2048-c100-np246-openblas-x86_64.json, the
  file benchmarks/README.md cites), scaled linearly in N: an upper bound, as the D x D eigendecomposition does
  not grow with N. Not covered: the other default estimators (ridge_probe, ncti, etran_energy, leep, nce,
  pactran_dirichlet; kNN too at N <= 20,000), C = 1,000 (ImageNet's classes), D other than 2,048. The driver
  scores the backbones one after another (service/pipeline/ranking/rank.py), with the BLAS library's threads at
  these sizes (service/pipeline/ranking/threads.py), whose gain beyond 2 cores is unmeasured (1.28x on 2 at
  10,000 x 2,048). So scoring is a range: every one of ``--cpu-cores`` busy (the models spread over the cores,
  or a BLAS that scales perfectly) to one core per backbone, in sequence.
- Not modelled: actor start and model loading (once per actor), storage bandwidth (every group reads the whole
  dataset). Written out, not modelled: what the driver holds before scoring (it keeps every backbone's features
  and source softmax: N x (2,048 + 1,000) x 4 bytes per model; ``streaming=True`` holds moments instead but
  leaves the sample-based estimators unscored).

Usage: python benchmarks/scaleout_estimate.py [--gpus 8] [--efficiency 0.8] [--decode-ms 5.14] [--cpu-cores 64]
Writes <cache dir>/benchmarks/scaleout_estimate-<n>m-<gpus>gpu-eff<efficiency>.json (``--out DIR`` elsewhere;
``--out benchmarks/results`` records it) and prints the candidates, the groups and the estimate as markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# This checkout's service, not whichever one the environment has installed.
sys.path.insert(0, str(REPO))

from service.model_catalogue import CatalogueEntry, filter_models, load_model_catalogue  # noqa: E402

FAMILIES = ("resnet", "convnext", "efficientnet", "vit")
MAX_PARAMS_M = 100.0
PER_FAMILY = 15
MODELS = 50
IMAGENET_TRAIN = 1_281_167
IMAGENET_VAL = 50_000
IMAGENET_CLASSES = 1_000
SAMPLE_PER_CLASS = 100

#: benchmarks/README.md, "Extraction throughput": per image, one core, 256 x 256 JPEGs resized to 224 px.
MEASURED_DECODE_MS = 1.0
MEASURED_RESIZE_MS = 3.0
MEASURED_PIXELS = 256 * 256
#: Average ImageNet JPEG, about 400 x 350 px (an often-quoted figure, not measured here).
IMAGENET_PIXELS = 400 * 350
PIXEL_SCALE = IMAGENET_PIXELS / MEASURED_PIXELS
DEFAULT_DECODE_MS = MEASURED_DECODE_MS * PIXEL_SCALE + MEASURED_RESIZE_MS
#: The same were the resize, too, to cost in proportion to the source pixels (a sensitivity case).
ALL_SCALED_DECODE_MS = (MEASURED_DECODE_MS + MEASURED_RESIZE_MS) * PIXEL_SCALE

SCORING_FILE = REPO / "benchmarks" / "results" / "speed_estimators-n20000-d2048-c100-np246-openblas-x86_64.json"
SCORING_ROW = "suite of 8, one shared Statistics"
#: Feature width and source classes for the size of what comes back to the driver (ResNet-50's width; ViT-B has
#: 768, ConvNeXt-B 1,024, EfficientNet-B7 2,560).
FEATURE_DIM = 2_048
SOURCE_CLASSES = 1_000


@dataclass(frozen=True)
class Assumptions:
    """The cluster and the per-image costs an estimate is made with (meanings in the module docstring)."""

    scoring_s_at_ref: float
    gpus: int = 8
    efficiency: float = 0.8
    decode_ms: float = DEFAULT_DECODE_MS
    cpu_cores: int = 64
    actors_per_gpu: int = 8
    shard_images: int = 2_048
    pcie_gb_s: float = 16.0
    scoring_ref_n: int = 20_000
    separate_mean_std: bool = False  # True: every model its own preprocessing (the upper bound on groups)

    @property
    def decode_threads(self) -> int:
        return min(self.gpus * self.actors_per_gpu, self.cpu_cores)


def choose_candidates(entries: Sequence[CatalogueEntry], count: int = MODELS) -> list[CatalogueEntry]:
    """The module docstring's rule: best ImageNet top-1 first (ties by id), at most PER_FAMILY per family."""
    eligible = [e for e in filter_models(entries, max_params_m=MAX_PARAMS_M, family=FAMILIES) if e.gpu_img_per_s]
    chosen: list[CatalogueEntry] = []
    per_family: Counter[str] = Counter()
    for entry in sorted(eligible, key=lambda e: (-e.imagenet_top1, e.id)):
        if per_family[entry.family] < PER_FAMILY:
            chosen.append(entry)
            per_family[entry.family] += 1
        if len(chosen) == count:
            return chosen
    raise ValueError(f"only {len(chosen)} catalogue models satisfy the rule, not {count}")


def preprocessing_key(entry: CatalogueEntry) -> str:
    return f"{entry.img_size} px, crop {entry.crop_pct:.3f}, {entry.interpolation}"


def preprocessing_groups(
    candidates: Sequence[CatalogueEntry], separate: bool = False
) -> dict[str, list[CatalogueEntry]]:
    """Candidates by decode group, in first-seen order; ``separate``: one group per model."""
    groups: dict[str, list[CatalogueEntry]] = {}
    for entry in candidates:
        groups.setdefault(entry.id if separate else preprocessing_key(entry), []).append(entry)
    return groups


def scoring_seconds_at_ref(path: Path = SCORING_FILE) -> float:
    """The recorded numpy seconds of the 8 shared-Statistics estimators (``[numpy]`` suffixed in a two-backend file)."""
    rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    row = rows.get(SCORING_ROW) or rows[f"{SCORING_ROW} [numpy]"]
    return float(row["seconds"])


def estimate(candidates: Sequence[CatalogueEntry], images: int, a: Assumptions) -> dict[str, Any]:
    """Seconds of one ranking of ``candidates`` on ``images`` images under ``a`` (see the module docstring)."""
    shards_per_gpu = math.ceil(images / a.shard_images) / a.gpus
    groups = []
    for key, members in preprocessing_groups(candidates, a.separate_mean_std).items():
        forward_s = sum(images / (e.gpu_img_per_s * a.efficiency) for e in members if e.gpu_img_per_s) / a.gpus
        weight_bytes = sum(e.params_m for e in members) * 1e6 * 4
        weights_s = shards_per_gpu * 2 * weight_bytes / (a.pcie_gb_s * 1e9)
        decode_s = images * a.decode_ms / 1000 / a.decode_threads
        gpu_s = forward_s + weights_s
        groups.append(
            {
                "group": key,
                "models": len(members),
                "gpu_s": gpu_s,
                "forward_s": forward_s,
                "weights_s": weights_s,
                "weights_gb": weight_bytes / 1e9,
                "decode_s": decode_s,
                "bound": "gpu" if gpu_s >= decode_s else "decode",
            }
        )
    gpu_s = sum(g["gpu_s"] for g in groups)
    decode_s = sum(g["decode_s"] for g in groups)
    extraction_s = sum(max(g["gpu_s"], g["decode_s"]) for g in groups)
    per_model_scoring_s = a.scoring_s_at_ref * images / a.scoring_ref_n
    scoring_sequential_s = len(candidates) * per_model_scoring_s
    scoring_all_cores_s = math.ceil(len(candidates) / a.cpu_cores) * per_model_scoring_s
    return {
        "images": images,
        "groups": groups,
        "gpu_s": gpu_s,
        "forward_s": sum(g["forward_s"] for g in groups),
        "weights_s": sum(g["weights_s"] for g in groups),
        "decode_s": decode_s,
        "extraction_s": extraction_s,
        "extraction_full_overlap_s": max(gpu_s, decode_s),
        "scoring_per_model_s": per_model_scoring_s,
        "scoring_sequential_s": scoring_sequential_s,
        "scoring_all_cores_s": scoring_all_cores_s,
        "total_s": extraction_s + scoring_sequential_s,
        "total_all_cores_s": extraction_s + scoring_all_cores_s,
        "driver_gb": len(candidates) * images * (FEATURE_DIM + SOURCE_CLASSES) * 4 / 1e9,
    }


def datasets(images: int) -> list[tuple[str, int]]:
    rows = [
        ("ImageNet-1k train" if images == IMAGENET_TRAIN else f"{images:,} images", images),
        ("ImageNet-1k val", IMAGENET_VAL),
        (f"{SAMPLE_PER_CLASS} per class (--max-per-class {SAMPLE_PER_CLASS})", SAMPLE_PER_CLASS * IMAGENET_CLASSES),
    ]
    return [row for i, row in enumerate(rows) if row[1] not in {n for _, n in rows[:i]}]


def sensitivity(candidates: Sequence[CatalogueEntry], images: int, a: Assumptions) -> list[dict[str, Any]]:
    """The headline total under one changed assumption at a time."""
    cases = [
        ("as assumed", a),
        (f"1 actor per GPU ({min(a.gpus, a.cpu_cores)} decode threads)", replace(a, actors_per_gpu=1)),
        ("resize also scaled by pixels", replace(a, decode_ms=a.decode_ms * ALL_SCALED_DECODE_MS / DEFAULT_DECODE_MS)),
        ("every model its own preprocessing (mean/std differ)", replace(a, separate_mean_std=True)),
        ("efficiency 1.0 (published img/s)", replace(a, efficiency=1.0)),
        ("efficiency 0.5", replace(a, efficiency=0.5)),
        (f"{a.gpus * 2} GPUs, {a.cpu_cores * 2} cores", replace(a, gpus=a.gpus * 2, cpu_cores=a.cpu_cores * 2)),
    ]
    rows = []
    for what, case in cases:
        result = estimate(candidates, images, case)
        rows.append(
            {
                "what": what,
                "decode_ms": case.decode_ms,
                "groups": len(result["groups"]),
                **{k: result[k] for k in ("gpu_s", "decode_s", "extraction_s", "total_all_cores_s", "total_s")},
            }
        )
    return rows


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _range(low: float, high: float) -> str:
    return _h(low) if _h(low) == _h(high) else f"{_h(low)} – {_h(high)}"


def markdown(
    candidates: Sequence[CatalogueEntry], results: list[dict[str, Any]], sens: list[dict[str, Any]], a: Assumptions
) -> str:
    lines = [
        "| # | model | family | params M | top-1 | px | crop | GPU img/s (4090, AMP) | GPU ms/img |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, e in enumerate(candidates, 1):
        thr = e.gpu_img_per_s or math.nan
        lines.append(
            f"| {i} | `{e.id}` | {e.family} | {e.params_m:.1f} | {e.imagenet_top1:.2f} | {e.img_size} | "
            f"{e.crop_pct:.3f} | {thr:,.0f} | {1000 / thr:.2f} |"
        )
    head = results[0]
    lines += [
        "",
        f"{len(head['groups'])} decode groups (img_size, crop_pct, interpolation), at {head['images']:,} images:",
        "",
        "| group | models | GPU | decode | bound |",
        "|---|---:|---:|---:|---|",
    ]
    for g in head["groups"]:
        lines.append(f"| {g['group']} | {g['models']} | {_h(g['gpu_s'])} | {_h(g['decode_s'])} | {g['bound']} |")
    lines += [
        "",
        f"{a.gpus} GPUs, efficiency {a.efficiency:g}, decode {a.decode_ms:.2f} ms/img on {a.decode_threads} threads, "
        f"scoring {a.scoring_s_at_ref:.2f} s per model at N = {a.scoring_ref_n:,} (linear in N), {a.cpu_cores} cores:",
        "",
        "| data | images | GPU-bound | decode-bound | extraction | scoring | total | driver GB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['data']} | {r['images']:,} | {_h(r['gpu_s'])} | {_h(r['decode_s'])} | "
            f"{_range(r['extraction_full_overlap_s'], r['extraction_s'])} | "
            f"{_range(r['scoring_all_cores_s'], r['scoring_sequential_s'])} | "
            f"**{_range(r['total_all_cores_s'], r['total_s'])}** | {r['driver_gb']:,.0f} |"
        )
    lines += [
        "",
        f"One assumption changed at a time ({head['images']:,} images):",
        "",
        "| case | decode ms | groups | GPU-bound | decode-bound | extraction | total (scoring: all cores – one) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in sens:
        lines.append(
            f"| {c['what']} | {c['decode_ms']:.2f} | {c['groups']} | {_h(c['gpu_s'])} | {_h(c['decode_s'])} | "
            f"{_h(c['extraction_s'])} | {_range(c['total_all_cores_s'], c['total_s'])} |"
        )
    return "\n".join(lines)


def prose(candidates: Sequence[CatalogueEntry], results: list[dict[str, Any]], a: Assumptions) -> str:
    """One paragraph on the headline dataset (the first) and the 100-per-class sample."""
    head = results[0]
    sample = next(r for r in results if r["images"] == SAMPLE_PER_CLASS * IMAGENET_CLASSES)
    slowest = sorted(candidates, key=lambda e: e.gpu_img_per_s or math.inf)[:3]
    slow_s = sum(head["images"] / ((e.gpu_img_per_s or math.inf) * a.efficiency) / a.gpus for e in slowest)
    bound = "GPU" if head["gpu_s"] >= head["decode_s"] else "decode"
    return (
        f"Ranking these {len(candidates)} models on {head['images']:,} images with {a.gpus} GPUs is estimated at "
        f"{_range(head['total_all_cores_s'], head['total_s'])}: {_h(head['extraction_s'])} of extraction, "
        f"{bound}-bound (GPU {_h(head['gpu_s'])}, decoding {_h(head['decode_s'])} on {a.decode_threads} threads), "
        f"then {_range(head['scoring_all_cores_s'], head['scoring_sequential_s'])} of scoring (all {a.cpu_cores} "
        "cores busy to one core per backbone in sequence; the driver scores one backbone after another with the "
        f"BLAS library's threads, whose scaling is unmeasured). The {len(slowest)} slowest models "
        f"({', '.join(e.id for e in slowest)}) take {slow_s / head['forward_s']:.0%} of the forward time. At that "
        f"size the driver would hold {head['driver_gb']:,.0f} GB of features and source softmax before scoring, "
        "so the full set is a compute figure, not a run one machine holds (streaming leaves the sample-based "
        f"estimators unscored). Sampled at {SAMPLE_PER_CLASS} per class ({sample['images']:,} images, "
        f"{sample['driver_gb']:,.0f} GB on the driver) it is {_range(sample['total_all_cores_s'], sample['total_s'])}. "
        f"Every GPU figure is timm's RTX 4090 AMP throughput times an assumed efficiency of {a.efficiency:g}; the "
        "decode cost is a CPU measurement scaled to ImageNet's image size; scoring is the 8 shared-Statistics "
        "estimators measured at N = 20,000 and scaled linearly in N."
    )


def _repo_relative(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def main(argv: Sequence[str] | None = None) -> None:
    # imported here so that tests can load this file as a module without benchmarks/ on sys.path
    from _results_dir import default_out_dir

    defaults = Assumptions(scoring_s_at_ref=math.nan)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=IMAGENET_TRAIN, help="dataset size (also: 50,000 and 100,000)")
    parser.add_argument("--gpus", type=int, default=defaults.gpus)
    parser.add_argument(
        "--efficiency",
        type=float,
        default=defaults.efficiency,
        help="pipeline img/s over timm's published img/s (assumption)",
    )
    parser.add_argument(
        "--decode-ms",
        type=float,
        default=DEFAULT_DECODE_MS,
        help="CPU ms per image: decode scaled to ~400x350 px + resize",
    )
    parser.add_argument("--cpu-cores", type=int, default=defaults.cpu_cores)
    parser.add_argument("--actors-per-gpu", type=int, default=defaults.actors_per_gpu)
    parser.add_argument("--shard-images", type=int, default=defaults.shard_images)
    parser.add_argument("--pcie-gb-s", type=float, default=defaults.pcie_gb_s)
    parser.add_argument("--scoring-file", type=Path, default=SCORING_FILE)
    parser.add_argument("--out", type=Path, default=default_out_dir())
    args = parser.parse_args(argv)

    options = ("gpus", "efficiency", "decode_ms", "cpu_cores", "actors_per_gpu", "shard_images", "pcie_gb_s")
    a = Assumptions(
        scoring_s_at_ref=scoring_seconds_at_ref(args.scoring_file), **{k: getattr(args, k) for k in options}
    )
    candidates = choose_candidates(load_model_catalogue())
    results = [{"data": name, **estimate(candidates, n, a)} for name, n in datasets(args.images)]
    sens = sensitivity(candidates, args.images, a)
    document = {
        "benchmark": "scaleout_estimate",
        "assumptions": {**asdict(a), "decode_threads": a.decode_threads, "pixel_scale": PIXEL_SCALE},
        "sources": {
            "catalogue": "service/builtin/model_catalogue.csv",
            "scoring": _repo_relative(args.scoring_file),
            "scoring_row": SCORING_ROW,
            "decode": "benchmarks/README.md, Extraction throughput",
        },
        "candidates": [{**asdict(e), "group": preprocessing_key(e)} for e in candidates],
        "estimates": results,
        "sensitivity": sens,
        "summary": prose(candidates, results, a),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scaleout_estimate-{len(candidates)}m-{a.gpus}gpu-eff{a.efficiency:g}.json"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(markdown(candidates, results, sens, a))
    print(f"\n{document['summary']}\n\nwritten to {path}")


if __name__ == "__main__":
    main()
