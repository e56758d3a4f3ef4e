"""Loading backbones: a resolved weights file into a timm model ready for feature extraction.

The id grammar is :mod:`service.pipeline.models.spec`'s, where the weights are is
:mod:`service.pipeline.models.resolve`'s (and :mod:`service.pipeline.models.providers`' for what the host plugs
in); this module builds the model and checks that it holds what the file holds.

Loading goes through ``timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=...))``
so timm applies the arch's checkpoint filter and keeps its pretrained cfg (hence the preprocessing).
timm only ever sees a ``.safetensors`` path here, which its ``load_state_dict`` reads with
``safetensors.torch.load_file``; this module never calls ``torch.load``.

Pitfall handled here: timm *silently drops* the classifier (``strict=False``, random new head) when the
model's ``num_classes`` differs from the pretrained cfg's. A file whose head has another class count
(a zoo model with 40 source classes) is therefore loaded with ``num_classes`` set both as a model kwarg
*and* in the cfg overlay, so the head is kept, and the loaded head is checked against the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import timm
import timm.data
import timm.models
import torch

# Private in timm, but it is exactly the parser timm's own ``local-dir:`` loader uses (timm >= 1.0.16),
# so the arch and cfg we inspect before loading are the ones timm will build.
from timm.models._hub import load_model_config_from_path

from service.errors import UnknownBackbone, UnsafeCheckpointFormat, WeightsUnavailable
from service.pipeline.models._timm import timm_api
from service.pipeline.models.hub import DownloadProgress, HubAccess
from service.pipeline.models.resolve import ResolvedWeights, file_sha256, find_weights, stat_key
from service.pipeline.models.spec import BackboneSpec, coerce_spec

__all__ = ["LoadedBackbone", "feature_info_modules", "load_backbone", "pool_map"]

_logger = logging.getLogger(__name__)


def feature_info_modules(model: torch.nn.Module) -> list[str]:
    """The modules whose outputs are the model's stages (timm's ``feature_info``, in forward order): what
    ``rank --layer-scores`` scores and ``finetune --freeze-stages`` counts. Empty when the model does not describe
    them, or describes one without its module."""
    info = getattr(model, "feature_info", None) or []
    if not all(isinstance(entry, dict) and "module" in entry for entry in info):
        return []
    return [str(entry["module"]) for entry in info]


def pool_map(feature_map: torch.Tensor) -> torch.Tensor:
    """A stage's output averaged over space: ``(B, C, H, W)`` or tokens ``(B, L, C)`` -> ``(B, C)``."""
    return feature_map.mean(dim=(2, 3)) if feature_map.ndim == 4 else feature_map.mean(dim=1)


@dataclass
class LoadedBackbone:
    """A timm model ready for feature extraction, plus where its weights came from.

    Attributes
    ----------
    spec : BackboneSpec
        The spec, with ``arch`` filled for zoo/local-dir ids.
    model : torch.nn.Module
        timm model in eval mode, on CPU, float32.
    data_config : dict
        ``timm.data.resolve_model_data_config(model)``: input_size, interpolation, mean, std, crop_pct,
        crop_mode (the pretrained cfg's preprocessing).
    weights_source : str
        ``"file:<path>"``, ``"local-dir:<path>"``, ``"weights-dir:<path>"``, ``"hf-cache:<repo>"``,
        ``"provider:<name>"`` or ``"random-init"``.
    weights_sha256 : str or None
        sha256 of the weights file loaded (None for random init); part of the feature-cache key.
    num_features : int
        Dimension of the pooled pre-logit features.
    num_source_classes : int
        Classes of the source classifier; 0 when the model has none.
    revision : str or None
        The hub commit of weights from the HF cache or a download.
    """

    spec: BackboneSpec
    model: torch.nn.Module
    data_config: dict[str, Any]
    weights_source: str
    weights_sha256: str | None
    num_features: int
    num_source_classes: int
    revision: str | None = None

    @property
    def params_m(self) -> float:
        """Parameters, in millions (the source classifier included), as timm's tables count them."""
        return sum(p.numel() for p in self.model.parameters()) / 1e6

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One backbone pass: ``(pre_logits (B, num_features), source logits (B, C_s) or None)``.

        ``forward_features`` runs once; the head runs twice (with and without ``pre_logits``), which costs
        a pooling and a linear layer. Logits are ``forward_head(feats)`` rather than
        ``get_classifier()(pre_logits)``: the two agree for plain heads, but only the former is right for
        distilled models (two classifiers, averaged) and conv classifiers (which want 4-D input).
        Runs without autograd; train through ``self.model`` instead.
        """
        model = timm_api(self.model)
        with torch.no_grad():
            feats = model.forward_features(x)
            pre = model.forward_head(feats, pre_logits=True)
            logits = model.forward_head(feats) if self.num_source_classes else None
        return pre, logits

    def stage_modules(self) -> list[str]:
        """The module after which each stage's feature map is taken (timm's ``feature_info``, in forward order).

        Empty when the model does not describe its stages or cannot return them (no ``forward_intermediates``).
        """
        if not callable(getattr(self.model, "forward_intermediates", None)):
            return []
        return feature_info_modules(self.model)

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """:meth:`forward` plus every stage's spatially averaged feature map, from one pass.

        ``forward_intermediates`` runs the same modules as ``forward_features`` (timm returns that output
        alongside the maps), so the pre-logits and logits equal :meth:`forward`'s.

        Returns
        -------
        pre_logits : (B, num_features); logits : (B, C_s) or None; stages : list of (B, D_i), one per
        :meth:`stage_modules` entry.
        """
        model = timm_api(self.model)
        with torch.no_grad():
            feats, maps = model.forward_intermediates(x, indices=len(self.stage_modules()))
            pre = model.forward_head(feats, pre_logits=True)
            logits = model.forward_head(feats) if self.num_source_classes else None
        return pre, logits, [pool_map(m) for m in maps]

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for results and the API."""
        return {
            "id": self.spec.id,
            "arch": self.spec.arch,
            "weights_source": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "num_features": self.num_features,
            "num_source_classes": self.num_source_classes,
            "revision": self.revision,
            "params_m": self.params_m,
            "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()},
        }


def load_backbone(
    spec: BackboneSpec | str,
    *,
    weights_dirs: Sequence[Path] = (),
    hf_cache_dir: Path | None = None,
    allowlist: Callable[[str], bool] | None = None,
    hub: HubAccess | None = None,
    progress: DownloadProgress | None = None,
) -> LoadedBackbone:
    """Resolve (see :mod:`service.pipeline.models.resolve`) and load one backbone.

    ``allowlist(spec.id)`` is asked before anything touches the filesystem; False refuses the id. With ``hub``,
    weights found in no local place are downloaded as it allows (``progress(bytes, total)`` meanwhile).

    Raises
    ------
    UnknownBackbone
        Bad id, unknown arch/tag (with close matches), or refused by the allowlist.
    WeightsUnavailable
        No weights found (every place searched is named), or the file does not fit the architecture.
    UnsafeCheckpointFormat
        Pickle weights, or a file that is not valid safetensors.
    HubError
        A download that was refused, could not reach the hub or failed (:mod:`service.pipeline.models.hub`).
    """
    spec = coerce_spec(spec)
    if allowlist is not None and not allowlist(spec.id):
        raise UnknownBackbone(
            f"backbone {spec.id!r} is not allowed by this service's allowlist; ask the operator, or pick one "
            "from the backbone catalog",
            backbone=spec.id,
        )
    resolved = find_weights(spec, weights_dirs, hf_cache_dir, hub, progress)
    if resolved.weights is None:
        model = _create_random(spec)
        sha256 = None
    else:
        before = stat_key(resolved.weights)
        sha256 = file_sha256(resolved.weights)
        model, arch = _create_pretrained(spec, resolved)
        if stat_key(resolved.weights) != before:
            # the hash must describe the bytes loaded: it keys the feature cache
            raise WeightsUnavailable(
                f"weights file {resolved.weights} changed while {spec.id} was loading; try again",
                backbone=spec.id,
            )
        if arch != spec.arch:
            spec = dataclasses.replace(spec, arch=arch)
    model = model.to(device="cpu", dtype=torch.float32).eval()
    data_config = dict(timm.data.resolve_model_data_config(model))
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    num_features = int(getattr(model, "head_hidden_size", None) or timm_api(model).num_features)
    _logger.info(
        "backbone %s: weights from %s%s (%d features, %d source classes)",
        spec.id,
        resolved.source,
        f" (sha256 {sha256[:12]})" if sha256 else "",
        num_features,
        num_classes,
    )
    return LoadedBackbone(
        spec=spec,
        model=model,
        data_config=data_config,
        weights_source=resolved.source,
        weights_sha256=sha256,
        num_features=num_features,
        num_source_classes=num_classes,
        revision=resolved.revision,
    )


def _create_random(spec: BackboneSpec) -> torch.nn.Module:
    """Untrained model, seeded from the id: the feature cache keys a random-init backbone by its id (no
    weights hash), so the same id must give the same weights in every process."""
    seed = int.from_bytes(hashlib.sha256(spec.id.encode()).digest()[:8], "little")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(spec.timm_name, pretrained=False)


def _create_pretrained(spec: BackboneSpec, resolved: ResolvedWeights) -> tuple[torch.nn.Module, str]:
    """Build the model with ``resolved.weights`` through timm's pretrained path; return ``(model, arch)``."""
    weights = resolved.weights
    assert weights is not None
    if resolved.model_dir is not None:
        try:
            cfg, arch, _ = load_model_config_from_path(resolved.model_dir)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WeightsUnavailable(
                f"{spec.id}: cannot read {resolved.model_dir / 'config.json'} ({type(e).__name__}: {e}); it must be "
                "timm's config.json (save_for_hf / hub layout)",
                backbone=spec.id,
            ) from e
        if not timm.models.is_model(arch):
            close = difflib.get_close_matches(str(arch), timm.list_models(), n=5, cutoff=0.6)
            raise UnknownBackbone(
                f"{spec.id}: config.json names architecture {arch!r}, which this timm {timm.__version__} does not "
                f"know{'; close: ' + ', '.join(close) if close else ''}",
                backbone=spec.id,
            )
        if spec.kind == "timm" and arch != spec.arch:
            raise WeightsUnavailable(
                f"{spec.id}: the provider's folder {resolved.model_dir} holds a {arch!r} model, not {spec.arch!r}",
                backbone=spec.id,
            )
        name = f"local-dir:{resolved.model_dir}"
        # source=None + file: timm loads exactly this safetensors file, never the folder's other files
        # (its local-dir loader would fall back to pytorch_model.bin if model.safetensors vanished).
        overlay: dict[str, Any] = {"source": None, "file": str(weights)}
    else:
        arch = spec.arch
        name = spec.timm_name
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
        cfg = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
        overlay = {"file": str(weights)}

    kwargs: dict[str, Any] = {}
    head = _file_head(weights, cfg, spec.id)
    if head is not None:
        file_classes, offset_ok = head
        if not offset_ok:
            # Keep the file's head: timm drops the classifier (strict=False, random head) whenever the model's
            # num_classes differs from the cfg's, so both must say the file's class count.
            kwargs["num_classes"] = file_classes
            overlay.update(num_classes=file_classes, label_offset=None)
            if file_classes != cfg.get("num_classes"):
                overlay.update(label_names=None, label_descriptions=None)
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except Exception as e:  # shape/key mismatches surface as RuntimeError; any failure here is the file's
        raise WeightsUnavailable(
            f"weights {weights} do not fit architecture {arch!r} ({type(e).__name__}: {_shorten(str(e))}); "
            "check that the file was saved from this architecture",
            backbone=spec.id,
        ) from e
    _check_head_loaded(model, weights, cfg, spec.id)
    return model, arch


def _classifier_names(cfg: Mapping[str, Any]) -> list[str]:
    classifier = cfg.get("classifier")
    if not classifier:
        return []
    return [classifier] if isinstance(classifier, str) else list(classifier)


def _file_head(weights: Path, cfg: Mapping[str, Any], backbone: str) -> tuple[int, bool] | None:
    """``(classes in the file's head, whether the cfg's num_classes already fits it)``; None if unknown.

    Reads only the safetensors header. A file without the cfg's classifier tensor is headless (0 classes).
    """
    names = _classifier_names(cfg)
    try:
        with safetensors.safe_open(str(weights), framework="pt") as f:
            keys = set(f.keys())
            shapes = {n: f.get_slice(f"{n}.weight").get_shape() for n in names if f"{n}.weight" in keys}
    except Exception as e:  # SafetensorError for a pickle renamed .safetensors, a truncated file, ...
        raise UnsafeCheckpointFormat(
            f"{weights} is not a valid safetensors file ({type(e).__name__}: {_shorten(str(e))}); only safetensors "
            "weights are loaded: convert the checkpoint with safetensors.torch.save_file",
            backbone=backbone,
            path=str(weights),
        ) from e
    if not names:
        return None  # the cfg does not say which tensor is the classifier: keep the arch's default
    if not shapes:
        return 0, cfg.get("num_classes") == 0
    rows = int(shapes[names[0]][0]) if shapes.get(names[0]) else int(next(iter(shapes.values()))[0])
    offset = int(cfg.get("label_offset") or 0)
    # timm slices `label_offset` rows (e.g. a background class) off the file's head before loading
    return rows, rows - offset == cfg.get("num_classes")


def _check_head_loaded(model: torch.nn.Module, weights: Path, cfg: Mapping[str, Any], backbone: str) -> None:
    """Guard the invariant LEEP/NCE rely on: the classifier in the model is the file's, not a fresh one."""
    names = _classifier_names(cfg)
    if not names or not getattr(model, "num_classes", 0):
        return
    key = f"{names[0]}.weight"
    state = model.state_dict()
    with safetensors.safe_open(str(weights), framework="pt") as f:
        if key not in set(f.keys()) or key not in state:
            return
        expected = f.get_tensor(key)
    offset = int(cfg.get("label_offset") or 0)
    if offset and expected.shape[0] - offset == state[key].shape[0]:
        expected = expected[offset:]
    if expected.shape == state[key].shape and not torch.equal(expected.to(state[key].dtype), state[key]):
        raise WeightsUnavailable(
            f"{backbone}: timm did not load the classifier {names[0]!r} from {weights} (its source logits would be "
            "random); please report this with the timm version",
            backbone=backbone,
        )


def _shorten(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
