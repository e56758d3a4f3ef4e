"""End to end: image folder on disk -> timm backbones -> cached features -> ranked result, CLI included."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from service.errors import EstimatorNeedsSourceHead, TooFewSamplesPerClass, UnknownEstimator  # noqa: E402
from service.pipeline.data.datasets import Dataset, load_dataset  # noqa: E402
from service.pipeline.features import extract as extract_module  # noqa: E402
from service.pipeline.features.cache import FeatureCache  # noqa: E402
from service.pipeline.features.extract import extract_features, select_device  # noqa: E402
from service.pipeline.ranking.rank import rank_backbones  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("circle", "square", "stripes")


def _draw(kind: str, rng: np.random.Generator, size: int = 40) -> Image.Image:
    canvas = np.full((size, size, 3), rng.integers(0, 60, 3), dtype=np.uint8)
    colour = rng.integers(150, 256, 3)
    yy, xx = np.mgrid[:size, :size]
    cx, cy = rng.integers(12, size - 12, 2)
    if kind == "circle":
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 < rng.integers(40, 90)
    elif kind == "square":
        half = int(rng.integers(5, 9))
        mask = (abs(xx - cx) < half) & (abs(yy - cy) < half)
    else:
        mask = ((xx + int(rng.integers(0, 6))) // 3) % 2 == 0
    canvas[mask] = colour
    return Image.fromarray(canvas)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        (root / kind).mkdir()
        for i in range(8):
            _draw(kind, rng).save(root / kind / f"{kind}_{i}.png")
    return root


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' test_resnet: random weights saved by the test as safetensors."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_rank_returns_every_backbone_ranked_with_scores(image_folder, resnet_weights, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    result = rank_backbones(
        str(image_folder),
        [f"test_resnet@{resnet_weights}", "random:test_vit", "random:test_efficientnet"],
        cache=cache,
        device="cpu",
        batch_size=7,
    )
    assert result["schema_version"] == 1
    assert result["class_map"] == {name: i for i, name in enumerate(CLASSES)}
    assert result["dataset"]["n_images"] == 24
    rows = result["backbones"]
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert len({row["id"] for row in rows}) == 3
    if result["fusion"]["method"] == "mean_rank":  # no packaged calibration
        assert [row["mean_rank"] for row in rows] == sorted(row["mean_rank"] for row in rows)
    else:  # the calibrated fused order (tests/pipeline/test_rank_calibrated.py checks it in detail)
        fused = [row["fused_score"] for row in rows]
        assert fused == sorted(fused, reverse=True)
        assert result["fusion"]["p_best"] is None and all(row["p_best"] is None for row in rows)  # opt-in
    names = {e["name"] for e in result["estimators"]}
    assert {"logme", "sfda", "class_means", "leep", "nce", "knn"} <= names
    for row in rows:
        assert row["n_images"] == 24 and not row["from_cache"]
        assert row["feature_dim"] > 0 and row["num_source_classes"] > 0
        assert set(row["scores"]) == names and all(np.isfinite(v) for v in row["scores"].values())
        assert all(1 <= r <= 3 for r in row["ranks"].values())
    json.dumps(result)  # the result is plain JSON


def test_second_run_is_served_from_the_cache_without_a_forward_pass(
    image_folder, resnet_weights, tmp_path, monkeypatch
):
    cache = FeatureCache(tmp_path / "cache")
    specs = [f"test_resnet@{resnet_weights}", "random:test_vit"]
    first = rank_backbones(str(image_folder), specs, cache=cache, device="cpu")

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass ran although the features were cached")

    monkeypatch.setattr(extract_module._Runner, "run", no_forward)
    second = rank_backbones(str(image_folder), specs, cache=cache, device="cpu")
    assert all(row["from_cache"] for row in second["backbones"])
    first_scores = {row["id"]: row["scores"] for row in first["backbones"]}
    for row in second["backbones"]:
        for name, value in row["scores"].items():
            assert value == pytest.approx(first_scores[row["id"]][name], rel=1e-9, abs=1e-12)


def test_images_are_decoded_once_per_preprocessing(image_folder, resnet_weights, monkeypatch):
    from service.pipeline.models.backbones import load_backbone

    dataset = load_dataset(str(image_folder))
    calls = {"n": 0}
    original = Dataset.open_image

    def counting(self, index):
        calls["n"] += 1
        return original(self, index)

    monkeypatch.setattr(Dataset, "open_image", counting)
    # Same data config twice (test_resnet with two weight sources), a different one for test_vit.
    backbones = [
        load_backbone(f"test_resnet@{resnet_weights}"),
        load_backbone("random:test_resnet"),
        load_backbone("random:test_vit"),
    ]
    sets = extract_features(dataset, backbones, device="cpu", batch_size=5)
    groups = len({json.dumps(b.data_config, sort_keys=True, default=list) for b in backbones})
    assert calls["n"] == groups * len(dataset)
    # One pass gives pooled features and the source head's softmax.
    for backbone, feature_set in zip(backbones, sets, strict=True):
        assert feature_set.features.shape == (len(dataset), backbone.num_features)
        assert feature_set.features.dtype == np.float32
        assert feature_set.source_probs.shape == (len(dataset), backbone.num_source_classes)
        np.testing.assert_allclose(feature_set.source_probs.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(feature_set.labels, dataset.labels)


def test_features_equal_a_direct_forward_pass(image_folder, resnet_weights):
    import timm
    from timm.data import create_transform

    from service.pipeline.models.backbones import load_backbone

    dataset = load_dataset(str(image_folder))
    backbone = load_backbone(f"test_resnet@{resnet_weights}")
    (feature_set,) = extract_features(dataset, [backbone], device="cpu", batch_size=4)
    reference = timm.create_model("test_resnet", pretrained=False)
    from safetensors.torch import load_file

    reference.load_state_dict(load_file(str(resnet_weights)))
    reference.eval()
    transform = create_transform(**backbone.data_config, is_training=False)
    batch = torch.stack([transform(dataset.open_image(i)) for i in range(len(dataset))])
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(batch), pre_logits=True).numpy()
    np.testing.assert_allclose(feature_set.features, expected, rtol=1e-4, atol=1e-5)


def test_intermediate_layer_features_have_no_source_head(image_folder):
    from service.pipeline.models.backbones import load_backbone

    dataset = load_dataset(str(image_folder))
    (feature_set,) = extract_features(dataset, [load_backbone("random:test_resnet")], device="cpu", layer=1)
    assert feature_set.source_probs is None and feature_set.features.shape[0] == len(dataset)
    with pytest.raises(EstimatorNeedsSourceHead) as err:
        rank_backbones(str(image_folder), ["random:test_resnet"], estimators=["leep"], layer=1, device="cpu")
    assert err.value.code == "estimator_needs_source_head"


def test_unknown_estimator_is_refused_before_any_work(image_folder):
    with pytest.raises(UnknownEstimator) as err:
        rank_backbones(str(image_folder), ["random:test_resnet"], estimators=["logme", "lgome"])
    assert "lgome" in err.value.detail and "logme" in err.value.detail


def _copy_classes(source_root: Path, target_root: Path, per_class: int) -> Path:
    for kind in CLASSES:
        (target_root / kind).mkdir(parents=True)
        for source in sorted((source_root / kind).iterdir())[:per_class]:
            (target_root / kind / source.name).write_bytes(source.read_bytes())
    return target_root


def _write_truncated_jpeg(path: Path, seed: int) -> None:
    """A JPEG whose header is intact but whose entropy-coded data is cut: it fails only when decoded."""
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


def test_corrupt_image_is_skipped_and_counted(image_folder, tmp_path):
    folder = _copy_classes(image_folder, tmp_path / "data", per_class=4)
    _write_truncated_jpeg(folder / "circle" / "broken.jpg", seed=5)
    result = rank_backbones(str(folder), ["random:test_resnet"], estimators=["logme"], device="cpu")
    assert result["failed_images"] == 1
    assert result["backbones"][0]["n_images"] == 12


def test_class_left_too_small_by_corrupt_images_is_an_error(tmp_path, image_folder):
    folder = _copy_classes(image_folder, tmp_path / "data", per_class=3)
    for seed, name in enumerate(("a.jpg", "b.jpg")):
        _write_truncated_jpeg(folder / "square" / name, seed=seed)
    for source in sorted((folder / "square").glob("*.png"))[1:]:
        source.unlink()
    with pytest.raises(TooFewSamplesPerClass) as err:
        rank_backbones(str(folder), ["random:test_resnet"], estimators=["logme"], device="cpu")
    assert "square" in err.value.detail


def test_cuda_request_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert select_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="--device cpu"):
        select_device("cuda")


def _cli(*args: str, env_extra: dict[str, str] | None = None, cache_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", "BACKBONE_RANK_CACHE_DIR": str(cache_dir)}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def test_cli_rank_prints_a_table_and_json(image_folder, resnet_weights, tmp_path):
    text = _cli(
        "rank",
        str(image_folder),
        "-b",
        f"test_resnet@{resnet_weights}",
        "-b",
        "random:test_vit",
        "-e",
        "logme",
        "-e",
        "sfda",
        "-e",
        "leep",
        cache_dir=tmp_path,
    )
    assert text.returncode == 0, text.stderr
    assert "Ranking" in text.stdout and "random:test_vit" in text.stdout and "logme" in text.stdout
    as_json = _cli(
        "rank",
        str(image_folder),
        "-b",
        "random:test_vit",
        "-b",
        f"test_resnet@{resnet_weights}",
        "-e",
        "logme",
        "--json",
        cache_dir=tmp_path,
    )
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert [row["rank"] for row in result["backbones"]] == [1, 2]
    assert all(row["from_cache"] for row in result["backbones"])  # extracted by the first call


@pytest.mark.parametrize(
    "args, code",
    [
        (["rank", "/nonexistent/dataset", "-b", "random:test_resnet"], "dataset_not_found"),
        (["rank", "{folder}", "-b", "resnet5O.a1_in1k"], "unknown_backbone"),
        (["rank", "{folder}", "-b", "test_resnet.r160_in1k"], "weights_unavailable"),
        (["rank", "{folder}", "-b", "random:test_resnet", "-e", "nope"], "unknown_estimator"),
        (["rank", "{folder}", "-b", "test_resnet@/tmp/w.pth"], "unsafe_checkpoint_format"),
    ],
)
def test_cli_bad_input_exits_2_with_the_error_code(args, code, image_folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app
    from service.config import get_settings

    monkeypatch.setenv("BACKBONE_RANK_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    get_settings.cache_clear()
    try:
        argv = [a.replace("{folder}", str(image_folder)) for a in args]
        result = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert code in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_demo_ranks_backbones_on_a_builtin_target(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app
    from service.config import get_settings

    monkeypatch.setenv("BACKBONE_RANK_CACHE_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app,
            ["demo", "--target", "digits", "--max-per-class", "3", "-b", "random:test_resnet", "-b", "random:test_vit"],
            env={"COLUMNS": "200"},
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "builtin:digits" in result.stdout and "Ranking — 30 images, 10 classes" in result.stdout
    assert (tmp_path / "builtin" / "digits" / "dataset.json").is_file()
    # the winner is fine-tuned on the sample the ranking saw, and its predicted accuracy is checked against it
    assert "3 images per class as ranked" in result.stdout
    # the packaged calibration learned 10 and 20 images per class: 3 is outside, and the note says so
    assert "as many images per class as were ranked (3)" in result.stdout and "extrapolate" in result.stdout
    assert re.search(
        r"predicted by the ranking before training: 0\.\d+ \[0\.\d+, [01]\.\d+\] \(90 % interval\); "
        r"measured 0\.\d+, (inside|outside) the interval",
        result.stdout,
    ), result.stdout


@pytest.mark.parametrize(
    "command", [["rank", "{folder}", "-b", "random:test_resnet"], ["demo", "-b", "random:test_resnet"]]
)
def test_rank_and_demo_use_the_configured_calibration(command, image_folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app
    from service.config import get_settings

    monkeypatch.setenv("BACKBONE_RANK_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BACKBONE_RANK_CALIBRATION_PATH", str(tmp_path / "absent.json"))
    get_settings.cache_clear()
    try:
        argv = [a.replace("{folder}", str(image_folder)) for a in command]
        result = CliRunner().invoke(app, argv, env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert "invalid_calibration" in result.stderr and "absent.json" in result.stderr
