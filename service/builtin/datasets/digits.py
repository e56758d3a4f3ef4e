"""The ``digits`` dataset: scikit-learn's 8x8 handwritten digit scans, upscaled and augmented, each scan
kept to one split.

Separate from the glyphs (another source of characters, another domain) and small on purpose.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from .render import _ClassDef, _compose_object, _Plan, _random_affine, _rng

#: Share of each digit class's scans reserved for each split, so no scan appears in two splits.
_POOL_FRACTIONS = {"train": 0.6, "val": 0.15, "test": 0.25}
_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@functools.lru_cache(maxsize=1)
def _digit_scans() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.asarray(digits.images), np.asarray(digits.target)


def _split_pools(indices: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Disjoint, shuffled per-split pools in fixed proportions (independent of the requested counts)."""
    order = indices[rng.permutation(len(indices))]
    n_train = int(round(len(order) * _POOL_FRACTIONS["train"]))
    n_val = int(round(len(order) * _POOL_FRACTIONS["val"]))
    return {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}


def _plan_digits(size: int, seed: int) -> _Plan:
    images, targets = _digit_scans()
    classes = []
    for digit, word in enumerate(_DIGIT_NAMES):
        members = np.flatnonzero(targets == digit)
        pools = _split_pools(members, _rng(seed, "digits", "pools", word))
        # 0..16 ink levels -> 8-bit masks; bilinear upscaling keeps the blocky-blurry scan look.
        masks = {int(i): Image.fromarray(np.rint(images[i] * (255 / 16)).astype(np.uint8), "L") for i in members}

        def render(
            rng: np.random.Generator,
            split: str,
            index: int,
            pools: dict[str, np.ndarray] = pools,  # bound now: the loop variable changes
            masks: dict[int, Image.Image] = masks,
        ) -> np.ndarray:
            pool = pools[split]
            mask = masks[int(pool[index % len(pool)])]  # beyond the pool: same scan, new augmentation
            alpha = _random_affine(rng, mask, size, size / 8, scale=(0.65, 0.95))
            return _compose_object(rng, alpha, min_contrast=0.3, gradient=0.2, max_lines=0, max_dots=0, max_noise=0.06)

        classes.append(
            _ClassDef(f"digit-{word}", render, {"digit": digit, "scans": {k: len(v) for k, v in pools.items()}})
        )
    classes.sort(key=lambda c: c.name)
    return _Plan(classes, {"source_data": "sklearn.datasets.load_digits", "pool_fractions": _POOL_FRACTIONS})
