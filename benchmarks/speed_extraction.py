"""Extraction throughput of the pipeline vs the raw forward pass, and decode counts.

For each model: images/s of ``extract_features`` (read + decode + preprocess + forward, the
next batch decoded in a background thread) against the same model's forward pass on tensors
decoded beforehand, same batch size, same threads, same run. Then four backbones sharing one
preprocessing are extracted together and the number of image decodes is counted (goal: one
per image, not one per image and backbone).

Usage: python benchmarks/speed_extraction.py [--images 128] [--batch-size 32] [--models resnet50 ...]
Writes <cache dir>/benchmarks/speed_extraction-<fingerprint>.json (``--out DIR``
elsewhere; ``--out benchmarks/results`` records the run) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _results_dir import default_out_dir  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from timm.data import create_transform  # noqa: E402

from service.pipeline.data.datasets import load_dataset  # noqa: E402
from service.pipeline.features.extract import extract_features  # noqa: E402
from service.pipeline.models.backbones import load_backbone  # noqa: E402


def write_images(root: Path, n_images: int, n_classes: int = 4, size: int = 256, seed: int = 0) -> None:
    """Photo-like JPEGs (smooth gradients, shapes, noise) so decoding costs what it costs on real data."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(n_images):
        label = i % n_classes
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.stack([np.sin(6 * xx + label), np.cos(4 * yy - label), xx * yy], axis=-1)
        image = 0.5 + 0.35 * base + 0.15 * rng.normal(size=(size, size, 3))
        Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def raw_throughput(backbone, tensors: list[torch.Tensor], repeats: int) -> float:
    """The model alone on ready tensors, in the same memory format the pipeline uses (channels_last)."""
    best = float("inf")
    backbone.model.to(memory_format=torch.channels_last)
    tensors = [t.contiguous(memory_format=torch.channels_last) for t in tensors]
    with torch.inference_mode():
        backbone.forward(tensors[0][:2])  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            for batch in tensors:
                backbone.forward(batch)
            best = min(best, time.perf_counter() - start)
    return sum(t.shape[0] for t in tensors) / best


def pipeline_throughput(dataset, backbone, batch_size: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        extract_features(dataset, [backbone], device="cpu", batch_size=batch_size)
        best = min(best, time.perf_counter() - start)
    return len(dataset) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet18", "mobilenetv3_small_100"])
    parser.add_argument(
        "--out", type=Path, default=default_out_dir(),
        help="results folder (default: <cache dir>/benchmarks; --out benchmarks/results records the run)",
    )  # fmt: skip
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        write_images(root, args.images)
        dataset = load_dataset(str(root))
        for model in args.models:
            backbone = load_backbone(f"random:{model}")
            transform = create_transform(**backbone.data_config, is_training=False)
            decoded = [transform(dataset.open_image(i)) for i in range(len(dataset))]
            tensors = [torch.stack(decoded[s : s + args.batch_size]) for s in range(0, len(decoded), args.batch_size)]
            raw = raw_throughput(backbone, tensors, args.repeats)
            pipe = pipeline_throughput(dataset, backbone, args.batch_size, args.repeats)
            rows[model] = {"raw_img_s": raw, "pipeline_img_s": pipe, "ratio": pipe / raw}

        # Four backbones with one preprocessing: count decodes.
        counted = load_dataset(str(root))
        calls = {"n": 0}
        open_image = counted.open_image

        def counting(index: int):
            calls["n"] += 1
            return open_image(index)

        counted.open_image = counting  # type: ignore[method-assign]
        weights = Path(tmp) / "resnet18-other.safetensors"
        other = load_backbone("random:resnet18").model
        torch.nn.init.normal_(other.fc.weight)
        save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(weights))
        group = [load_backbone(s) for s in ("random:resnet18", "random:resnet34", "random:resnet50",
                                             f"resnet18.a1_in1k@{weights}")]
        same = len({json.dumps(b.data_config, sort_keys=True, default=list) for b in group}) == 1
        start = time.perf_counter()
        extract_features(counted, group, device="cpu", batch_size=args.batch_size)
        decode = {"backbones": [b.spec.id for b in group], "one_preprocessing": same, "images": len(counted),
                  "decodes": calls["n"], "seconds": time.perf_counter() - start}

    result = {
        "benchmark": "speed_extraction",
        "images": args.images, "batch_size": args.batch_size, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "rows": rows, "decode_count": decode,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"pt{torch.__version__.split('+')[0].replace('.', '')}-cpu-{torch.get_num_threads()}t"
    path = args.out / f"speed_extraction-{tag}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.images} JPEG images 256x256 -> 224 px, batch {args.batch_size}, {torch.get_num_threads()} torch "
          "threads, CPU\n")
    print("| model | raw forward img/s | pipeline img/s | pipeline / raw |")
    print("|---|---:|---:|---:|")
    for model, row in rows.items():
        print(f"| {model} | {row['raw_img_s']:.1f} | {row['pipeline_img_s']:.1f} | {row['ratio']:.0%} |")
    print(f"\n4 backbones, one preprocessing ({same}): {decode['decodes']} decodes for {decode['images']} images "
          f"({decode['seconds']:.1f} s)\n\nwritten to {path}")


if __name__ == "__main__":
    main()
