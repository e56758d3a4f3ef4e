"""The torch-free backbone-id checks the web process uses agree with the pipeline's parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import UnknownBackbone, UnsafeCheckpointFormat
from service.pipeline.models.backbone_ids import (
    check_backbone_id,
    load_timm_registry,
    service_allows,
    write_timm_registry,
)

IDS = [
    "resnet10t",
    "resnet50.a1_in1k",
    "resnet50.a1_in1k@/w/r.safetensors",
    "resnet50@/w/r.pth",
    "resnet50@/w/r.bin",
    "resnet50@",
    "@/w/r.safetensors",
    "random:resnet10t",
    "random:resnet10t@/w.safetensors",
    "random:",
    "zoo:latin-resnet10t",
    "zoo:",
    "zoo:a/b",
    "local-dir:/models/m",
    "local-dir:",
    "hf-hub:timm/resnet50.a1_in1k",
    "https://example.com/m.pth",
    "timm/resnet50.a1_in1k",
    "res net",
    "../m",
    "",
    "   ",
    "C:/w/m.safetensors",
]


@pytest.mark.parametrize("backbone", IDS)
def test_syntax_check_agrees_with_parse_backbone_spec(backbone: str) -> None:
    from service.pipeline.models.spec import parse_backbone_spec

    def outcome(fn) -> type | None:  # type: ignore[no-untyped-def]
        try:
            fn(backbone)
        except (UnknownBackbone, UnsafeCheckpointFormat) as err:
            return type(err)
        return None

    # Without a registry snapshot the syntax check may only be more lenient on names timm does not know.
    assert outcome(check_backbone_id) == outcome(parse_backbone_spec)


def test_registry_snapshot_matches_timm(tmp_path: Path) -> None:
    import timm

    from service.pipeline.models.spec import parse_backbone_spec

    write_timm_registry(tmp_path)
    registry = load_timm_registry(tmp_path)
    assert registry is not None and registry.version == timm.__version__
    assert registry.archs == frozenset(timm.list_models())
    for name in ("resnet50", "resnet50.tv_in1k", "vit_small_patch16_224", "tf_efficientnet_lite0"):
        check_backbone_id(name, registry=registry)
        assert registry.canonical(name) == parse_backbone_spec(name).id
    for bad in ("resnet999", "resnet50.nope", "random:resnet999"):
        with pytest.raises(UnknownBackbone):
            check_backbone_id(bad, registry=registry)
        with pytest.raises(UnknownBackbone):
            parse_backbone_spec(bad)
    assert load_timm_registry(tmp_path / "elsewhere") is None


def test_service_allowlist(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "out").symlink_to(tmp_path, target_is_directory=True)
    dirs = [weights]
    assert service_allows("resnet50.a1_in1k")
    assert service_allows(f"resnet50@{weights}/m.safetensors", weights_dirs=dirs)
    assert service_allows(f"local-dir:{weights}/model", weights_dirs=dirs)
    assert not service_allows(f"local-dir:{weights}/out/x", weights_dirs=dirs)  # symlink out of the dir
    assert not service_allows(f"local-dir:{weights}/../x", weights_dirs=dirs)
    assert not service_allows("local-dir:/etc", weights_dirs=dirs)
    assert not service_allows("resnet50@/tmp/m.safetensors")  # no weights dirs: no local files
    assert service_allows("zoo:latin", patterns=["zoo:*"]) and not service_allows("resnet50", patterns=["zoo:*"])
