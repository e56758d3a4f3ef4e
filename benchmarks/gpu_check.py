"""The GPU path in one prepared run: raw forward vs the pipeline's extraction, and the estimators on torch vs numpy.

Run it whenever a machine with a CUDA GPU is at hand, with this repository on PYTHONPATH and that machine's own
torch and timm (nothing is downloaded: random weights, images written here):

    PYTHONPATH=. python benchmarks/gpu_check.py --out "$OUT"          # < 8 minutes on one H100

It measures, and writes to one JSON (``gpu_check-<device name>-<torch>.json``):

1. **Raw forward** img/s of ResNet-50 and ViT-B/16 at 224 px under autocast (bf16 where supported), a batch of
   random tensors already on the device: the ceiling.
2. **Pipeline** img/s of the same models through ``extract_features`` (JPEG decode, resize, crop, normalise,
   channels-last, the same autocast) on a folder of 256 px JPEGs written for the run: what a ranking gets.
   The ratio pipeline / raw says whether decoding or the GPU is the bottleneck.
3. **Estimators**: the eight moment-based estimators on one shared ``Statistics`` at N = 20,000, D = 2,048,
   C = 100 on the torch backend on the device vs numpy on the CPU (all its cores), and the largest relative
   difference of the values (the torch backend promises 1e-6).

``--device cpu`` with small ``--models``/``--images``/``--estimator-size`` runs the same code without a GPU
(the project's test does, with timm's test models) — its numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _synthetic import SUITE, make_features

from estimators import Statistics, score

DEFAULT_MODELS = ("resnet50", "vit_base_patch16_224")


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def raw_forward(arch: str, device: str, batch_size: int, size: int, seconds: float) -> dict[str, Any]:
    """Images per second of the bare model on random input already on the device (autocast on CUDA)."""
    import timm
    import torch

    model = timm.create_model(arch, pretrained=False, num_classes=0).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    batch = torch.randn(batch_size, 3, size, size, device=device).to(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float16
    on_cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda", dtype=dtype) if on_cuda else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast:
        for _ in range(3):  # warm-up: cuDNN autotuning, lazy initialisation
            model(batch)
        _synchronize(device)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(batch)
            done += batch_size
        _synchronize(device)
        elapsed = time.perf_counter() - started
    return {"images_per_s": done / elapsed, "images": done, "seconds": elapsed, "batch_size": batch_size}


def write_images(root: Path, n_images: int, n_classes: int = 10, size: int = 256) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n_images):
        folder = root / f"class{i % n_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def pipeline(arch: str, folder: Path, device: str, batch_size: int, size: int) -> dict[str, Any]:
    """Images per second of ``extract_features`` (decode to features) for ``random:<arch>`` at ``size`` px."""
    from dataclasses import replace

    from service.pipeline.data.datasets import load_dataset
    from service.pipeline.features.extract import extract_features
    from service.pipeline.models.backbones import load_backbone

    dataset = load_dataset(str(folder))
    backbone = load_backbone(f"random:{arch}")
    backbone = replace(backbone, data_config={**backbone.data_config, "input_size": (3, size, size)})
    extract_features(dataset, [backbone], device=device, batch_size=batch_size)  # warm-up
    started = time.perf_counter()
    [features] = extract_features(dataset, [backbone], device=device, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    return {
        "images_per_s": len(features.labels) / elapsed,
        "images": int(len(features.labels)),
        "seconds": elapsed,
        "batch_size": batch_size,
        "feature_dim": features.dim,
    }


def estimators_on(device: str, n: int, d: int, c: int) -> dict[str, Any]:
    """The shared-Statistics suite on numpy (CPU) and on torch (``device``), seconds and agreement."""
    features, labels = make_features(n, d, c)
    results: dict[str, Any] = {}
    values: dict[str, dict[str, float]] = {}
    for backend in ("numpy", "torch"):
        kwargs: dict[str, Any] = {"backend": "torch", "device": device} if backend == "torch" else {}
        started = time.perf_counter()
        stats = Statistics(features, labels, **kwargs)
        values[backend] = {name: float(score(name, stats=stats)) for name in SUITE}
        _synchronize(device if backend == "torch" else "cpu")
        results[backend] = {"seconds": time.perf_counter() - started}
    worst = max(
        abs(values["torch"][k] - values["numpy"][k]) / max(abs(values["numpy"][k]), 1e-12) for k in values["numpy"]
    )
    return {
        "n": n, "d": d, "c": c, "estimators": list(SUITE),
        "numpy_seconds": results["numpy"]["seconds"], "torch_seconds": results["torch"]["seconds"],
        "speedup": results["numpy"]["seconds"] / results["torch"]["seconds"],
        "max_relative_difference": worst, "values": values,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="timm architectures, comma-separated")
    parser.add_argument("--size", type=int, default=224, help="input size in pixels")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", type=int, default=4096, help="JPEGs the pipeline extracts per model")
    parser.add_argument("--raw-seconds", type=float, default=10.0, help="how long each raw forward is timed")
    parser.add_argument("--estimator-size", default="20000,2048,100", help="N,D,C of the estimator problem")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)

    import timm
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: run it on a GPU machine, or pass --device cpu for a smoke run")
    n, d, c = (int(v) for v in args.estimator_size.split(","))
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "gpu_check",
        "device": args.device,
        "device_name": (
            torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor()
        ),
        "torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__,
        "size": args.size, "models": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp) / "images"
        write_images(folder, args.images)
        for arch in args.models.split(","):
            raw = raw_forward(arch, args.device, args.batch_size, args.size, args.raw_seconds)
            piped = pipeline(arch, folder, args.device, args.batch_size, args.size)
            ratio = piped["images_per_s"] / raw["images_per_s"]
            report["models"][arch] = {"raw": raw, "pipeline": piped, "pipeline_over_raw": ratio}
    report["estimators"] = estimators_on(args.device, n, d, c)
    report["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    name = str(report["device_name"] or args.device).replace(" ", "-").replace("/", "-")
    path = args.out / f"gpu_check-{name}-torch{torch.__version__.split('+')[0]}.json"
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    for arch, row in report["models"].items():
        raw_rate, piped_rate = row["raw"]["images_per_s"], row["pipeline"]["images_per_s"]
        print(f"{arch}: raw {raw_rate:.0f} img/s, pipeline {piped_rate:.0f} img/s ({row['pipeline_over_raw']:.2f})")
    est = report["estimators"]
    print(
        f"estimators N={n} D={d} C={c}: numpy {est['numpy_seconds']:.2f} s, torch {est['torch_seconds']:.2f} s "
        f"({est['speedup']:.1f}x), max rel diff {est['max_relative_difference']:.1e}"
    )
    print(f"written: {path} ({report['seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
