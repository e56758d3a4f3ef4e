"""Registering the built-in datasets with the engine, reading their manifests, and materialising them:
the idempotent, atomic, locked build that runs a generator's plan and writes the ImageFolder and
``dataset.json`` (the layout and guarantees are in the package docstring, :mod:`service.builtin.datasets`).

Separate from the generators, which only say what to draw; this module is the only one that writes files.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.atomic import replace_dir

from .digits import _digit_scans, _plan_digits
from .dynamics import _boundary_points, _plan_automata, _plan_fractals
from .glyphs import _glyph_mask, _plan_glyphs
from .info import (
    _CYRILLIC,
    _GREEK,
    _LATIN,
    _MATH,
    BUILTIN_DATASETS,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SEED,
    GENERATOR_VERSION,
    SPLITS,
    BuiltinDatasetInfo,
    _info,
    default_counts,
)
from .photo_tasks import _plan_photo_filters, _plan_photo_rotations
from .photos import _natural_images, _plan_natural
from .plots import _plan_charts, _plan_waveforms
from .render import _Plan, _rng
from .shapes import _plan_shapes
from .textures import _plan_fine_textures, _plan_textures

_logger = logging.getLogger(__name__)

_MANIFEST = "dataset.json"
#: PNG options are fixed so that the bytes depend on the pixels only (no timestamps, no optimiser search).
_PNG_OPTIONS: dict[str, Any] = {"format": "PNG", "optimize": False, "compress_level": 6}
#: Class directory names: lower-case words joined by '-', so that plain, case-insensitive and the
#: loader's natural sort agree (class index = position in the sorted list) and case-insensitive file
#: systems cannot merge 'A' and 'a'.
_CLASS_NAME = re.compile(r"[a-z]+(?:-[a-z]+)*")


# --------------------------------------------------------------------------------------------------
# Registration and status
# --------------------------------------------------------------------------------------------------


def register_builtin_datasets() -> None:
    """Register every built-in dataset with :mod:`service.pipeline.data.builtin` (idempotent).

    Only names not registered yet are added, so calling this on every ``rank_backbones`` is cheap and
    does not override a dataset someone else registered under the same name on purpose.
    """
    from service.pipeline.data.builtin import list_builtin_datasets, register_builtin_dataset

    registered = {entry["name"] for entry in list_builtin_datasets()}
    for info in BUILTIN_DATASETS.values():
        if info.name not in registered:
            register_builtin_dataset(info.name, functools.partial(_materialize_default, info.name), info.description)


def _materialize_default(name: str, builtin_dir: Path) -> Path:
    """The registered factory: default sizes, image size and seed."""
    return materialize_builtin_dataset(name, builtin_dir)


def builtin_dataset_manifest(name: str, builtin_dir: str | Path) -> dict[str, Any] | None:
    """The ``dataset.json`` of a materialised dataset, or ``None`` if absent, unreadable or outdated."""
    manifest = _read_manifest(Path(builtin_dir) / name)
    if manifest is None or manifest.get("generator_version") != GENERATOR_VERSION:
        return None
    return manifest


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        with open(directory / _MANIFEST, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


# --------------------------------------------------------------------------------------------------
# Materialisation
# --------------------------------------------------------------------------------------------------


def materialize_builtin_dataset(
    name: str,
    builtin_dir: str | Path,
    *,
    counts: Mapping[str, int] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
) -> Path:
    """Generate dataset ``name`` into ``<builtin_dir>/<name>`` unless it is already there.

    Args:
        name: A key of :data:`BUILTIN_DATASETS`.
        builtin_dir: Directory holding the built-in datasets (created if missing).
        counts: Images per class for some or all splits (``{"train": 5, "test": 3}``); splits not given
            keep :func:`default_counts`. Tests pass small counts.
        image_size: Side of the square RGB images, 8-256.
        seed: Base seed; the same arguments always give byte-identical files.

    Returns:
        The dataset directory (``dataset.json`` and ``train``/``val``/``test`` split directories).

    An existing directory is returned without any work when its ``dataset.json`` has the current
    :data:`GENERATOR_VERSION` and the same counts, image size and seed; otherwise it is rebuilt and
    replaced.
    """
    info = _info(name)
    per_class = _resolve_counts(name, counts)
    if not isinstance(image_size, int) or not 8 <= image_size <= 256:
        raise ValueError(f"image_size must be an integer in [8, 256], got {image_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    root = Path(builtin_dir)
    target = root / name
    wanted = {"generator_version": GENERATOR_VERSION, "image_size": image_size, "seed": seed, "per_class": per_class}
    if _is_current(target, wanted, quiet=True):
        return target
    root.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    # Not the ".<name>.lock" that service.pipeline.data.builtin holds around this call: a second lock object
    # on that file in the same process would wait for itself.
    with FileLock(str(root / f".{name}.build.lock")):
        if _is_current(target, wanted):  # another process built it while we waited
            return target
        _remove_leftovers(root, name)
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            manifest = _build(info, tmp, per_class, image_size, seed)
            replace_dir(tmp, target, name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            _release_caches()
    _logger.info(
        "materialised built-in dataset %s: %d classes, %d images in %.1f s",
        name, len(manifest["classes"]), sum(manifest["counts"].values()), time.perf_counter() - started,
    )  # fmt: skip
    return target


def materialize_builtin_datasets(
    builtin_dir: str | Path,
    names: Sequence[str] | None = None,
    *,
    workers: int | None = None,
    counts: Mapping[str, int] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    seed: int = DEFAULT_SEED,
) -> dict[str, Path]:
    """Materialise several datasets (default: all), one per worker process.

    A single dataset builds in one process; building them all (``make demo``, the zoo) is where the
    cores pay off. ``workers`` defaults to the number of CPUs; ``1`` builds in this process. Arguments
    are those of :func:`materialize_builtin_dataset`, applied to every dataset. The file locks make it
    safe to run next to other builders.
    """
    chosen = list(BUILTIN_DATASETS) if names is None else list(dict.fromkeys(names))
    for name in chosen:
        _resolve_counts(name, counts)  # unknown names and bad counts fail here, before any process starts
    n_workers = min(len(chosen), workers if workers is not None else (os.cpu_count() or 1))
    if n_workers <= 1:
        return {
            name: materialize_builtin_dataset(name, builtin_dir, counts=counts, image_size=image_size, seed=seed)
            for name in chosen
        }
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Largest first, so that the longest build does not start last; "spawn" because forking a process that
    # may hold threads (torch, a server) is unsafe.
    def n_images(name: str) -> int:
        return BUILTIN_DATASETS[name].n_classes * sum(_resolve_counts(name, counts).values())

    with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            name: pool.submit(
                materialize_builtin_dataset,
                name,
                os.fspath(builtin_dir),
                counts=counts,
                image_size=image_size,
                seed=seed,
            )
            for name in sorted(chosen, key=lambda name: -n_images(name))
        }
        return {name: Path(futures[name].result()) for name in chosen}


def _release_caches() -> None:
    """Drop the rendered glyphs (tens of MB for a glyph set) and decoded photographs after a build: a
    server process materialises once and should not keep them for its lifetime."""
    _glyph_mask.cache_clear()
    _natural_images.cache_clear()
    _digit_scans.cache_clear()
    _boundary_points.cache_clear()


def _resolve_counts(name: str, counts: Mapping[str, int] | None) -> dict[str, int]:
    resolved = default_counts(name)
    for split, n in (counts or {}).items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} in counts; splits are {', '.join(SPLITS)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"counts[{split!r}] must be an integer >= 1, got {n!r}")
        resolved[split] = n
    return resolved


def _is_current(target: Path, wanted: Mapping[str, Any], *, quiet: bool = False) -> bool:
    manifest = _read_manifest(target)
    if manifest is None:
        return False
    if any(manifest.get(key) != value for key, value in wanted.items()):
        if not quiet:
            _logger.info("built-in dataset at %s was built with other parameters or generator; rebuilding", target)
        return False
    # A manifest is written last, so its presence means the build finished; still, check the splits exist.
    return all((target / split).is_dir() for split in SPLITS)


def _remove_leftovers(root: Path, name: str) -> None:
    """Temp and old directories of a crashed build (we hold the build lock, so nobody else is using them)."""
    for entry in sorted(root.glob(f".{name}.tmp-*")) + sorted(root.glob(f".{name}.old-*")):
        _logger.info("removing leftover %s", entry)
        shutil.rmtree(entry, ignore_errors=True)


def _build(info: BuiltinDatasetInfo, out: Path, per_class: Mapping[str, int], size: int, seed: int) -> dict[str, Any]:
    """Draw every image into ``out`` and write ``dataset.json``; returns the manifest."""
    plan = _PLANNERS[info.name](size, seed)
    names = [c.name for c in plan.classes]
    bad = [n for n in names if not _CLASS_NAME.fullmatch(n)]
    if bad or len(set(names)) != len(names) or names != sorted(names):
        raise AssertionError(f"{info.name}: class names must be sorted, unique and match {_CLASS_NAME.pattern}")
    if len(names) < 2:
        raise RuntimeError(f"built-in dataset {info.name} has {len(names)} usable class(es); it needs 2")
    digest = hashlib.sha256()
    for split in SPLITS:
        for cls in plan.classes:
            directory = out / split / cls.name
            directory.mkdir(parents=True)
            rng = _rng(seed, info.name, split, cls.name)
            for i in range(per_class[split]):
                pixels = cls.render(rng, split, i)
                if pixels.shape != (size, size, 3) or pixels.dtype != np.uint8:
                    raise AssertionError(f"{info.name}/{cls.name}: renderer gave {pixels.shape} {pixels.dtype}")
                buf = io.BytesIO()
                Image.fromarray(pixels, "RGB").save(buf, **_PNG_OPTIONS)
                data = buf.getvalue()
                rel = f"{split}/{cls.name}/{i}.png"
                digest.update(rel.encode("ascii") + b"\0" + len(data).to_bytes(8, "big") + data)
                (directory / f"{i}.png").write_bytes(data)
    import PIL

    manifest = {
        "name": info.name,
        "description": info.description,
        "role": info.role,
        "relation": info.relation,
        "related_source": info.related_source,
        "closeness": info.closeness,
        "format": "imagefolder",
        "splits": list(SPLITS),
        "classes": names,
        "class_info": {c.name: c.meta for c in plan.classes},
        "image_size": size,
        "channels": "RGB",
        "per_class": dict(per_class),
        "counts": {split: per_class[split] * len(names) for split in SPLITS},
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "content_sha256": digest.hexdigest(),
        # Bytes are stable for given versions of these (Pillow bundles FreeType and zlib).
        "library_versions": {"numpy": np.__version__, "pillow": PIL.__version__},
        **plan.meta,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (out / _MANIFEST).write_text(text, encoding="utf-8")
    return manifest


_PLANNERS: dict[str, Callable[[int, int], _Plan]] = {
    "glyphs-latin": lambda size, seed: _plan_glyphs(_LATIN, size),
    "textures": _plan_textures,
    "shapes": _plan_shapes,
    "glyphs-greek": lambda size, seed: _plan_glyphs(_GREEK, size),
    "glyphs-cyrillic": lambda size, seed: _plan_glyphs(_CYRILLIC, size),
    "math-symbols": lambda size, seed: _plan_glyphs(_MATH, size),
    "digits": _plan_digits,
    "textures-fine": _plan_fine_textures,
    "natural-patches": _plan_natural,
    "photo-filters": _plan_photo_filters,
    "photo-rotations": _plan_photo_rotations,
    "charts": _plan_charts,
    "waveforms": _plan_waveforms,
    "fractals": _plan_fractals,
    "cellular-automata": _plan_automata,
}
