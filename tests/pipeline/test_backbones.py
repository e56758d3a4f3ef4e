"""Backbone ids, offline weight resolution and loading, with real (tiny) timm models.

``test_resnet`` / ``test_vit`` / ``test_efficientnet`` build offline with random init; every "pretrained"
file here is one of them, perturbed and saved by the test, so a load that silently skipped the file (or
the classifier) would give different outputs. conftest.py sets HF_HUB_OFFLINE=1 before timm is imported.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import timm
import timm.models
import torch

from service.errors import UnknownBackbone, UnsafeCheckpointFormat, WeightsUnavailable
from service.pipeline.models.backbones import LoadedBackbone, load_backbone
from service.pipeline.models.providers import (
    list_weights_providers,
    register_weights_provider,
    unregister_weights_provider,
    weights_provider,
)
from service.pipeline.models.resolve import file_sha256, resolve_weights
from service.pipeline.models.spec import BackboneSpec, parse_backbone_spec

TIMM_TAG = "r160_in1k"  # the one pretrained tag timm registers for its test_* models


# ------------------------------------------------------------------------------------------------ helpers


def _perturbed(arch: str, seed: int = 0, **kwargs: Any) -> torch.nn.Module:
    """A model whose every parameter and BN statistic differs from any fresh init."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model.eval()


def _save(model: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(model.state_dict(), str(path))
    return path


def _input(batch: int = 2, size: int = 160) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _assert_same_model(loaded: LoadedBackbone, original: torch.nn.Module, size: int = 160) -> None:
    x = _input(size=size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), original(x))


class _MarkerPickle:
    """Unpickling this creates ``path``: a stand-in for a malicious checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _write_malicious_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _MarkerPickle(marker)}, f)
    return path


# Files the code under test must never open. An audit hook (installed once; it cannot be removed) sees every
# Python-level open(), which is how pickle/torch.load would read a file.
_WATCHED: set[str] = set()
_OPENED: list[str] = []
_HOOK_INSTALLED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _WATCHED and isinstance(args[0], str | bytes):
        path = os.fsdecode(args[0])
        if path in _WATCHED or os.path.realpath(path) in _WATCHED:
            _OPENED.append(path)


@pytest.fixture
def never_opened() -> Iterator[set[str]]:
    """Add paths to the yielded set; the test fails if anything opens them."""
    global _HOOK_INSTALLED
    if not _HOOK_INSTALLED:
        sys.addaudithook(_audit)
        _HOOK_INSTALLED = True
    _OPENED.clear()
    try:
        yield _WATCHED
        assert not _OPENED, f"opened: {_OPENED}"
    finally:
        _WATCHED.clear()
        _OPENED.clear()


@pytest.fixture(autouse=True)
def _clean_providers() -> Iterator[None]:
    """No test leaks a registered provider into another."""
    before = list_weights_providers()
    yield
    for name in list_weights_providers():
        if name not in before:
            unregister_weights_provider(name)


def _hf_cache(root: Path, repo: str, files: dict[str, Path]) -> Path:
    """A hub cache laid out as huggingface_hub writes it: refs/main -> commit, snapshot links -> blobs."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)  # no trailing newline: the hub reads it verbatim
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for name, src in files.items():
        blob = repo_dir / "blobs" / file_sha256(src)
        shutil.copyfile(src, blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return root


# -------------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("test_resnet", BackboneSpec(id=f"test_resnet.{TIMM_TAG}", arch="test_resnet")),
        (f"test_resnet.{TIMM_TAG}", BackboneSpec(id=f"test_resnet.{TIMM_TAG}", arch="test_resnet")),
        ("  resnet50.a1_in1k ", BackboneSpec(id="resnet50.a1_in1k", arch="resnet50")),
        ("random:test_vit", BackboneSpec(id="random:test_vit", arch="test_vit", pretrained=False)),
        ("zoo:glyph-r10", BackboneSpec(id="zoo:glyph-r10", arch="")),
        ("local-dir:/models/m", BackboneSpec(id="local-dir:/models/m", arch="")),
        (
            "test_resnet@/w/x.safetensors",
            BackboneSpec(
                id=f"test_resnet.{TIMM_TAG}@/w/x.safetensors", arch="test_resnet", weights_file="/w/x.safetensors"
            ),
        ),
        # deprecated timm names map to their replacement, so both spellings share one id
        ("convnext_tiny_in22ft1k", BackboneSpec(id="convnext_tiny.fb_in22k_ft_in1k", arch="convnext_tiny")),
    ],
)
def test_parse_canonical_ids(text: str, expected: BackboneSpec) -> None:
    spec = parse_backbone_spec(text)
    assert spec == expected
    assert parse_backbone_spec(spec.id) == spec
    assert BackboneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_parse_makes_paths_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_backbone_spec("local-dir:m").id == f"local-dir:{tmp_path / 'm'}"
    assert parse_backbone_spec("test_vit@w.safetensors").weights_file == str(tmp_path / "w.safetensors")


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("", UnknownBackbone, "empty"),
        ("hf-hub:resnet50.a1_in1k", UnknownBackbone, "hf-hub:ORG/NAME[@REVISION]"),
        ("hf-hub:timm/resnet50.a1_in1k@", UnknownBackbone, "hf-hub:ORG/NAME[@REVISION]"),
        ("https://example.com/w.safetensors", UnknownBackbone, "unsupported backbone source 'https'"),
        ("resnet50.a1_in1k@", UnknownBackbone, "nothing after '@'"),
        ("timm/resnet50.a1_in1k", UnknownBackbone, "did you mean 'resnet50.a1_in1k'"),
        ("resnet50.nonexistent", UnknownBackbone, "a1_in1k"),
        ("zoo:", UnknownBackbone, "zoo:<name>"),
        ("zoo:../etc", UnknownBackbone, "zoo:<name>"),
        ("random:test_vit@/w.safetensors", UnknownBackbone, "no weights file"),
        ("@/w.safetensors", UnknownBackbone, "'@' follows the architecture"),
        ("@popular", UnknownBackbone, "named candidate set"),
        ("test_resnet@/w/x.pth", UnsafeCheckpointFormat, "pickles and are never loaded"),
        ("test_resnet@/w/x.bin", UnsafeCheckpointFormat, "convert"),
    ],
)
def test_parse_rejects(text: str, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as info:
        parse_backbone_spec(text)
    assert fragment in str(info.value)


def test_unknown_arch_suggests_close_names() -> None:
    with pytest.raises(UnknownBackbone) as info:
        load_backbone("resnet5O")
    assert "resnet50" in info.value.context["suggestions"]
    assert "did you mean resnet50" in str(info.value)
    assert info.value.to_dict()["code"] == "unknown_backbone"


# ------------------------------------------------------------------------------------------ explicit files


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit", "test_efficientnet"])
def test_explicit_file_loads_exactly_that_model(arch: str, tmp_path: Path) -> None:
    original = _perturbed(arch)
    path = _save(original, tmp_path / "w.safetensors")

    loaded = load_backbone(f"{arch}@{path}")

    _assert_same_model(loaded, original)
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.spec == BackboneSpec(id=f"{arch}.{TIMM_TAG}@{path}", arch=arch, weights_file=str(path))
    assert loaded.weights_source == f"file:{path}"
    assert loaded.weights_sha256 == file_sha256(path)
    assert loaded.num_source_classes == original.get_classifier().out_features == 1000

    x = _input(batch=3)
    pre, logits = loaded.forward(x)
    assert pre.shape == (3, loaded.num_features)
    assert logits is not None and logits.shape == (3, 1000)
    with torch.no_grad():
        torch.testing.assert_close(pre, original.forward_head(original.forward_features(x), pre_logits=True))
        torch.testing.assert_close(logits, loaded.model.get_classifier()(pre))
        torch.testing.assert_close(logits, original(x))

    # preprocessing is the pretrained cfg's, and everything reported is JSON
    cfg = timm.models.get_pretrained_cfg(f"{arch}.{TIMM_TAG}")
    assert loaded.data_config["input_size"] == cfg.input_size == (3, 160, 160)
    assert loaded.data_config["mean"] == cfg.mean and loaded.data_config["interpolation"] == cfg.interpolation
    described = json.loads(json.dumps(loaded.describe()))
    assert described == {
        "id": loaded.spec.id,
        "arch": arch,
        "weights_source": loaded.weights_source,
        "weights_sha256": loaded.weights_sha256,
        "num_features": loaded.num_features,
        "num_source_classes": 1000,
        "revision": None,
        "params_m": sum(p.numel() for p in original.parameters()) / 1e6,
        "data_config": json.loads(json.dumps(loaded.data_config)),
    }


def test_file_with_other_class_count_keeps_its_head(tmp_path: Path) -> None:
    # timm alone would drop this head: create_model(num_classes=7) loads with strict=False, new random fc.
    original = _perturbed("test_resnet", num_classes=7)
    path = _save(original, tmp_path / "seven.safetensors")

    loaded = load_backbone(f"test_resnet@{path}")

    assert loaded.num_source_classes == 7
    torch.testing.assert_close(loaded.model.get_classifier().weight, original.get_classifier().weight)
    pre, logits = loaded.forward(_input())
    assert logits is not None and logits.shape == (2, 7)
    _assert_same_model(loaded, original)


def test_headless_file_gives_features_only(tmp_path: Path) -> None:
    original = _perturbed("test_vit", num_classes=0)
    path = _save(original, tmp_path / "headless.safetensors")

    loaded = load_backbone(f"test_vit@{path}")

    assert loaded.num_source_classes == 0
    pre, logits = loaded.forward(_input())
    assert logits is None
    assert pre.shape == (2, loaded.num_features)
    _assert_same_model(loaded, original)


def test_weights_of_another_arch_are_refused(tmp_path: Path) -> None:
    path = _save(_perturbed("test_vit"), tmp_path / "vit.safetensors")
    with pytest.raises(WeightsUnavailable, match="do not fit architecture 'test_resnet'"):
        load_backbone(f"test_resnet@{path}")


def test_missing_file_is_weights_unavailable(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="does not exist") as info:
        load_backbone(f"test_resnet@{tmp_path / 'nope.safetensors'}")
    assert "random:<arch>" in str(info.value)


def test_pickle_file_is_refused_and_never_opened(tmp_path: Path, never_opened: set[str]) -> None:
    marker = tmp_path / "pwned"
    # positive control: this pickle really does run code when loaded
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_MarkerPickle(control))).close()
    assert control.exists()

    path = _write_malicious_pickle(tmp_path / "w.pth", marker)
    never_opened.add(str(path))
    with pytest.raises(UnsafeCheckpointFormat, match=r"\.pt/\.pth/\.bin/\.ckpt are pickles"):
        load_backbone(f"test_resnet@{path}")
    # the spec built by hand (no parser) is refused the same way
    with pytest.raises(UnsafeCheckpointFormat):
        resolve_weights(BackboneSpec(id=f"test_resnet.{TIMM_TAG}@{path}", arch="test_resnet", weights_file=str(path)))
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_is_not_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _write_malicious_pickle(tmp_path / "w.safetensors", marker)
    with pytest.raises(UnsafeCheckpointFormat, match="not a valid safetensors file"):
        load_backbone(f"test_resnet@{path}")
    assert not marker.exists()


# --------------------------------------------------------------------------- weights dirs, HF cache, providers


def test_hf_cache_layout(tmp_path: Path) -> None:
    repo = timm.models.get_pretrained_cfg(f"test_resnet.{TIMM_TAG}").hf_hub_id
    assert repo == f"timm/test_resnet.{TIMM_TAG}"
    original = _perturbed("test_resnet")
    weights = _save(original, tmp_path / "src" / "model.safetensors")
    config = tmp_path / "src" / "config.json"
    config.write_text(json.dumps({"architecture": "test_resnet", "num_classes": 1000}))
    cache = _hf_cache(tmp_path / "hub", repo, {"model.safetensors": weights, "config.json": config})

    loaded = load_backbone("test_resnet.r160_in1k", hf_cache_dir=cache)

    assert loaded.weights_source == f"hf-cache:{repo}"
    assert loaded.weights_sha256 == file_sha256(weights)
    _assert_same_model(loaded, original)
    assert resolve_weights("test_resnet", hf_cache_dir=cache)[0] == f"hf-cache:{repo}"


def test_empty_hf_cache_fails_fast_naming_places(tmp_path: Path) -> None:
    (tmp_path / "hub").mkdir()
    started = time.monotonic()
    with pytest.raises(WeightsUnavailable) as info:
        load_backbone(f"test_resnet.{TIMM_TAG}", weights_dirs=[tmp_path / "w"], hf_cache_dir=tmp_path / "hub")
    assert time.monotonic() - started < 10, "a miss must never wait on the network"
    message = str(info.value)
    assert str(tmp_path / "w" / f"test_resnet.{TIMM_TAG}.safetensors") in message
    assert f"HF cache {tmp_path / 'hub'}" in message and f"timm/test_resnet.{TIMM_TAG}" in message
    assert "weights providers" in message and "random:<arch>" in message
    assert len(info.value.context["searched"]) == 5  # <id>.safetensors, <arch>.safetensors, cache, providers, hub
    assert "downloads are off" in message and "not --offline" in message
    assert info.value.to_dict()["code"] == "weights_unavailable"


def test_hf_cache_never_uses_pickle_weights(tmp_path: Path, never_opened: set[str]) -> None:
    marker = tmp_path / "pwned"
    bin_file = _write_malicious_pickle(tmp_path / "src" / "pytorch_model.bin", marker)
    cache = _hf_cache(tmp_path / "hub", f"timm/test_resnet.{TIMM_TAG}", {"pytorch_model.bin": bin_file})
    never_opened.update(str(p) for p in cache.rglob("pytorch_model.bin"))
    never_opened.update(str(p) for p in cache.rglob("blobs/*"))
    with pytest.raises(WeightsUnavailable, match="not cached"):
        load_backbone("test_resnet", hf_cache_dir=cache)
    assert not marker.exists()


def test_weights_dirs_in_order_and_before_hf_cache(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    in_second = _perturbed("test_resnet", seed=1)
    _save(in_second, second / f"test_resnet.{TIMM_TAG}.safetensors")
    in_cache = _save(_perturbed("test_resnet", seed=2), tmp_path / "src" / "model.safetensors")
    cache = _hf_cache(tmp_path / "hub", f"timm/test_resnet.{TIMM_TAG}", {"model.safetensors": in_cache})

    loaded = load_backbone("test_resnet", weights_dirs=[first, second], hf_cache_dir=cache)

    assert loaded.weights_source == f"weights-dir:{second / f'test_resnet.{TIMM_TAG}.safetensors'}"
    _assert_same_model(loaded, in_second)

    # the bare arch name stands for the arch's default tag
    in_first = _perturbed("test_resnet", seed=3)
    _save(in_first, first / "test_resnet.safetensors")
    loaded = load_backbone(f"test_resnet.{TIMM_TAG}", weights_dirs=[first, second], hf_cache_dir=cache)
    assert loaded.weights_source == f"weights-dir:{first / 'test_resnet.safetensors'}"
    _assert_same_model(loaded, in_first)


def test_registered_provider_is_used_last_and_removed(tmp_path: Path) -> None:
    original = _perturbed("test_efficientnet")
    path = _save(original, tmp_path / "pkg" / "effnet.safetensors")
    asked: list[str] = []

    def provide(model_id: str) -> Path | None:
        asked.append(model_id)
        return path if model_id == f"test_efficientnet.{TIMM_TAG}" else None

    with weights_provider("pip-test", provide, "weights shipped in a test wheel"):
        assert "pip-test" in list_weights_providers()
        loaded = load_backbone("test_efficientnet", hf_cache_dir=tmp_path / "hub")
        assert loaded.weights_source == "provider:pip-test"
        assert loaded.weights_sha256 == file_sha256(path)
        _assert_same_model(loaded, original)
        with pytest.raises(WeightsUnavailable, match="provider 'pip-test': no weights for test_vit"):
            load_backbone("test_vit", hf_cache_dir=tmp_path / "hub")
    assert asked == [f"test_efficientnet.{TIMM_TAG}", f"test_vit.{TIMM_TAG}"]
    assert "pip-test" not in list_weights_providers()
    with pytest.raises(WeightsUnavailable, match="weights providers: none registered"):
        load_backbone("test_efficientnet", hf_cache_dir=tmp_path / "hub")


def test_provider_registry_rules(tmp_path: Path) -> None:
    def none(model_id: str) -> None:
        return None

    register_weights_provider("p1", none)
    register_weights_provider("p1", none)  # same callable again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_weights_provider("p1", lambda model_id: None)
    with pytest.raises(ValueError, match="invalid provider name"):
        register_weights_provider("bad name", none)
    assert list_weights_providers().count("p1") == 1
    unregister_weights_provider("p1")
    unregister_weights_provider("p1")  # absent: fine
    assert "p1" not in list_weights_providers()


def test_provider_returning_a_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = _write_malicious_pickle(tmp_path / "w.pth", marker)
    register_weights_provider("bad", lambda model_id: bad)
    with pytest.raises(UnsafeCheckpointFormat, match="weights provider 'bad' returned"):
        load_backbone("test_resnet", hf_cache_dir=tmp_path / "hub")
    assert not marker.exists()


def test_zoo_ids_resolve_only_through_the_zoo_provider(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="no zoo provider registered"):
        load_backbone("zoo:missing")
    other = _save(_perturbed("test_resnet"), tmp_path / "other.safetensors")
    register_weights_provider("other", lambda model_id: other)  # never asked for zoo ids
    register_weights_provider("zoo", lambda model_id: None)
    with pytest.raises(WeightsUnavailable, match="provider 'zoo': no weights for zoo:missing") as info:
        load_backbone("zoo:missing")
    assert "other" not in str(info.value)


def test_zoo_model_from_a_local_dir_layout(tmp_path: Path) -> None:
    original = _perturbed("test_resnet", num_classes=40)
    folder = tmp_path / "zoo" / "glyph-r10"
    timm.models.save_for_hf(original, folder, safe_serialization=True, data_config={"input_size": (3, 64, 64)})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    register_weights_provider("zoo", lambda model_id: folder if model_id == "zoo:glyph-r10" else None)

    loaded = load_backbone("zoo:glyph-r10")

    assert loaded.spec == BackboneSpec(id="zoo:glyph-r10", arch="test_resnet")
    assert loaded.weights_source == "provider:zoo"
    assert loaded.weights_sha256 == file_sha256(folder / "model.safetensors")
    assert loaded.num_source_classes == 40
    assert loaded.data_config["input_size"] == (3, 64, 64)  # the zoo card's preprocessing, not timm's 160
    _assert_same_model(loaded, original, size=64)
    # the provider may also name the weights file inside the folder
    unregister_weights_provider("zoo")
    register_weights_provider("zoo", lambda model_id: folder / "model.safetensors")
    assert load_backbone("zoo:glyph-r10").weights_sha256 == loaded.weights_sha256


# ----------------------------------------------------------------------------------- local-dir, random, misc


def test_local_dir(tmp_path: Path) -> None:
    original = _perturbed("test_vit", num_classes=5)
    folder = tmp_path / "mirror"
    timm.models.save_for_hf(original, folder, safe_serialization=True)

    loaded = load_backbone(f"local-dir:{folder}")

    assert loaded.spec.arch == "test_vit"
    assert loaded.weights_source == f"local-dir:{folder}"
    assert loaded.weights_sha256 == file_sha256(folder / "model.safetensors")
    assert loaded.num_source_classes == 5
    assert loaded.data_config["input_size"] == (3, 160, 160)
    _assert_same_model(loaded, original)


def test_local_dir_with_only_pickle_weights_is_refused(tmp_path: Path, never_opened: set[str]) -> None:
    folder = tmp_path / "mirror"
    timm.models.save_for_hf(_perturbed("test_resnet"), folder, safe_serialization=True)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    never_opened.add(str(_write_malicious_pickle(folder / "pytorch_model.bin", marker)))
    with pytest.raises(UnsafeCheckpointFormat, match="only has pickle weights"):
        load_backbone(f"local-dir:{folder}")
    assert not marker.exists()


def test_local_dir_without_config_or_folder(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="not a directory"):
        load_backbone(f"local-dir:{tmp_path / 'absent'}")
    _save(_perturbed("test_resnet"), tmp_path / "bare" / "model.safetensors")
    with pytest.raises(WeightsUnavailable, match="no config.json"):
        load_backbone(f"local-dir:{tmp_path / 'bare'}")


def test_random_init_is_explicit_and_reproducible() -> None:
    first = load_backbone("random:test_vit")
    second = load_backbone(BackboneSpec(id="random:test_vit", arch="test_vit", pretrained=False))
    assert first.weights_source == "random-init"
    assert first.weights_sha256 is None
    assert first.spec.pretrained is False
    assert first.data_config["input_size"] == (3, 160, 160)
    # the feature cache keys random-init backbones by id alone, so one id must mean one set of weights
    _assert_same_model(first, second.model)


def test_allowlist_refusal(tmp_path: Path) -> None:
    path = _save(_perturbed("test_resnet"), tmp_path / "w.safetensors")
    seen: list[str] = []

    def allow(backbone_id: str) -> bool:
        seen.append(backbone_id)
        return backbone_id.startswith("random:")

    with pytest.raises(UnknownBackbone, match="not allowed by this service's allowlist"):
        load_backbone(f"test_resnet@{path}", allowlist=allow)
    assert load_backbone("random:test_resnet", allowlist=allow).weights_source == "random-init"
    assert seen == [f"test_resnet.{TIMM_TAG}@{path}", "random:test_resnet"]


def test_spec_objects_are_checked_against_their_id() -> None:
    with pytest.raises(ValueError, match="inconsistent BackboneSpec"):
        load_backbone(BackboneSpec(id="random:test_vit", arch="test_vit", pretrained=True))
    with pytest.raises(ValueError, match="unknown BackboneSpec field"):
        BackboneSpec.from_dict({"id": "test_vit", "arch": "test_vit", "tag": "x"})


def test_file_sha256_streams_and_caches(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert file_sha256(str(path)) == file_sha256(path)
    path.write_bytes(b"b" * 3_000_001)  # a new size (and mtime) invalidates the cached digest
    assert file_sha256(path) == hashlib.sha256(b"b" * 3_000_001).hexdigest()
