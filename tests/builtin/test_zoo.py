"""The built-in zoo: building (files, card, determinism, skip, lock-free rebuild), loading as zoo:NAME, the CLI.

The default tests build at a tiny scale (a reduced copy of the source, a few epochs) into tmp dirs: a small
trained entry (timm's ``test_resnet`` on ``textures``) and the default random-init control
``random-convnext-atto``. The slow test builds the whole default zoo and checks that every model learned.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from service.builtin import zoo  # noqa: E402
from service.builtin.zoo import ZOO_ENTRIES, ZooEntry, ZooProgress, build_zoo, build_zoo_model  # noqa: E402
from service.contract.results import ZooProvenance  # noqa: E402
from service.errors import UnknownBackbone, WeightsUnavailable, ZooBuildFailed  # noqa: E402
from service.pipeline.calibration.model import DEFAULT_CALIBRATION_PATH, load_calibration  # noqa: E402
from service.pipeline.calibration.samples import zoo_hashes_of  # noqa: E402
from service.pipeline.data.datasets import load_dataset  # noqa: E402
from service.pipeline.finetune.training import evaluate, load_split_tensors  # noqa: E402
from service.pipeline.models.backbones import load_backbone  # noqa: E402
from service.pipeline.models.providers import list_weights_providers  # noqa: E402

SCALE = 0.2  # textures: 24 train / 4 val / 4 test images per class
TINY = ZooEntry(
    "tiny-textures",
    "test_resnet",
    "textures",
    "test_resnet on a reduced textures copy",
    epochs=20,
    lr=0.05,
    batch_size=16,
)
CONTROL = "random-convnext-atto"
FILES = ("config.json", "model.safetensors", "card.json", "README.md")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    return {"zoo": root / "zoo", "builtin": root / "builtin"}


@pytest.fixture(scope="module")
def built(dirs: dict[str, Path]) -> dict[str, Any]:
    """The tiny trained entry and the random control, built once for the module."""
    events: list[ZooProgress] = []
    tiny = build_zoo_model(TINY, dirs["zoo"], builtin_dir=dirs["builtin"], scale=SCALE, progress=events.append)
    (control,) = build_zoo(dirs["zoo"], [CONTROL], builtin_dir=dirs["builtin"], scale=SCALE)
    return {"tiny": tiny, "control": control, "events": events}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -------------------------------------------------------------------------------------------- registry


def test_default_zoo_varies_architecture_source_budget_and_init() -> None:
    entries = list(ZOO_ENTRIES.values())
    assert 9 <= len(entries) <= 14
    archs = {e.arch for e in entries}
    assert {"resnet10t", "mobilenetv3_small_050", "regnetx_002", "convnext_atto"} <= archs
    assert any(e.arch.startswith("vit_") for e in entries)
    assert {e.source for e in entries} == {"glyphs-latin", "textures", "shapes"}
    assert {e.name for e in entries if e.init == "random"} == {"random-resnet10t", "random-convnext-atto"}
    by_arch: dict[str, set[tuple[str, int]]] = {}
    for e in entries:
        if e.init == "pretrained":
            by_arch.setdefault(e.arch, set()).add((e.source, e.epochs))
    assert any(len({source for source, _ in runs}) > 1 for runs in by_arch.values())  # an arch on two sources
    assert any(len({epochs for _, epochs in runs}) > 1 for runs in by_arch.values())  # and on two budgets
    for e in entries:
        assert e.id == f"zoo:{e.name}" and e.description


def test_learn_threshold() -> None:
    assert zoo.learn_threshold(62) == pytest.approx(1 / 62 + 0.15)
    assert zoo.learn_threshold(12) == pytest.approx(3 / 12)
    assert zoo.learn_threshold(20) == pytest.approx(1 / 20 + 0.15)
    assert zoo.learn_threshold(2) == pytest.approx(1.5)  # 3 x chance: unreachable, a binary source is pointless
    assert zoo.learn_threshold(4) == pytest.approx(0.75)


def test_recipe_hash_changes_with_what_changes_the_weights() -> None:
    base = TINY.recipe_hash(SCALE)
    assert TINY.recipe_hash(SCALE) == base
    assert dataclasses.replace(TINY, description="other words").recipe_hash(SCALE) == base
    for change in ({"seed": 1}, {"lr": 0.1}, {"epochs": 3}, {"model_args": {"drop_rate": 0.1}}):
        assert dataclasses.replace(TINY, **change).recipe_hash(SCALE) != base, change
    assert TINY.recipe_hash(1.0) != base


def test_bad_entries_are_refused() -> None:
    with pytest.raises(ValueError, match="lower-case"):
        ZooEntry("Bad/Name", "resnet10t", "textures", "x")
    with pytest.raises(ValueError, match="init"):
        ZooEntry("x", "resnet10t", "textures", "x", init="imagenet")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- build


def test_build_writes_timm_layout_and_card(built: dict[str, Any], dirs: dict[str, Path]) -> None:
    folder = dirs["zoo"] / TINY.name
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    card = json.loads((folder / "card.json").read_text())
    assert card == built["tiny"]
    manifest = json.loads((dirs["builtin"] / ".zoo-scale-0.2" / "textures" / "dataset.json").read_text())
    classes = manifest["classes"]
    assert card["source"] == "textures" and card["source_classes"] == len(classes) == 20
    assert card["source_dataset_sha256"] == manifest["content_sha256"]  # the manifest's key (read as "sha256": null)
    assert card["init"] == "pretrained" and card["learned"] is True
    assert card["source_accuracy"] >= zoo.learn_threshold(20) == card["learn_threshold"]
    assert 0.0 <= card["source_val_accuracy"] <= 1.0
    assert card["epochs"] == 4 == len(card["epoch_loss"]) and card["scale"] == SCALE
    assert card["train_images"] == 20 * 24 and card["source_test_images"] == 20 * 4
    assert card["training_seconds"] > 0 and card["images_per_second"] > 0
    assert card["weights_sha256"] == _sha256(folder / "model.safetensors")
    assert card["recipe_hash"] == TINY.recipe_hash(SCALE)
    assert card["input_size"] == [3, 32, 32] and card["lr"] == 0.05 and card["optimizer"] == "sgd"
    for key in ("timm_version", "torch_version", "seed", "mean", "std", "built_at", "num_params"):
        assert key in card

    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 20
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "center"
    assert cfg["label_names"] == classes and cfg["num_classes"] == 20 and cfg["classifier"] == "fc"
    assert cfg["mean"] == card["mean"] and cfg["std"] == card["std"]

    readme = (folder / "README.md").read_text()
    assert f"{card['source_accuracy']:.3f}" in readme and card["weights_sha256"] in readme

    stages = [e.stage for e in built["events"]]
    assert stages[0] == "data" and stages[-1] == "done" and "eval" in stages
    train = [e for e in built["events"] if e.stage == "train"]
    assert train[-1].epoch == 4 and train[-1].step == train[-1].steps and train[-1].loss < train[0].loss


def test_random_control_is_untrained_at_chance(built: dict[str, Any], dirs: dict[str, Path]) -> None:
    card = built["control"]
    assert card["init"] == "random" and card["epochs"] == 0 and card["epoch_loss"] == []
    assert card["training_seconds"] == 0.0 and card["lr"] is None
    assert card["source_accuracy"] < card["learn_threshold"]  # at chance, and not held to the learning bar
    assert card["learned"] is False
    assert "Random-init control" in (dirs["zoo"] / CONTROL / "README.md").read_text()
    config = json.loads((dirs["zoo"] / CONTROL / "config.json").read_text())
    assert config["architecture"] == "convnext_atto" and config["pretrained_cfg"]["classifier"] == "head.fc"


def test_same_recipe_gives_identical_bytes_and_is_skipped_unless_forced_or_changed(
    built: dict[str, Any], dirs: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "zoo"
    first = build_zoo_model(TINY, target, builtin_dir=dirs["builtin"], scale=SCALE)
    weights = target / TINY.name / "model.safetensors"
    assert weights.read_bytes() == (dirs["zoo"] / TINY.name / "model.safetensors").read_bytes()
    assert first["weights_sha256"] == built["tiny"]["weights_sha256"]
    assert first["source_accuracy"] == built["tiny"]["source_accuracy"]

    stamp = weights.stat().st_mtime_ns
    events: list[ZooProgress] = []
    assert build_zoo_model(TINY, target, builtin_dir=dirs["builtin"], scale=SCALE, progress=events.append) == first
    assert [e.stage for e in events] == ["skipped"] and weights.stat().st_mtime_ns == stamp

    rebuilt = build_zoo_model(TINY, target, builtin_dir=dirs["builtin"], scale=SCALE, force=True)
    assert weights.stat().st_mtime_ns != stamp and rebuilt["weights_sha256"] == first["weights_sha256"]
    changed = build_zoo_model(dataclasses.replace(TINY, seed=1), target, builtin_dir=dirs["builtin"], scale=SCALE)
    assert changed["recipe_hash"] != first["recipe_hash"] and changed["weights_sha256"] != first["weights_sha256"]
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == [TINY.name]
    assert not list(target.glob(f".{TINY.name}.tmp-*")) and not list(target.glob(f".{TINY.name}.old-*"))


def test_a_model_that_does_not_learn_fails_the_build(built: dict[str, Any], dirs: dict[str, Path]) -> None:
    frozen = dataclasses.replace(TINY, name="never-learns", lr=0.0, epochs=5)
    with pytest.raises(ZooBuildFailed, match="zoo model never-learns did not learn its source task textures") as info:
        build_zoo_model(frozen, dirs["zoo"], builtin_dir=dirs["builtin"], scale=SCALE)
    assert info.value.code == "zoo_build_failed" and info.value.context["model"] == "never-learns"
    assert not (dirs["zoo"] / "never-learns").exists()
    assert not list(dirs["zoo"].glob(".never-learns.tmp-*"))


def test_unknown_names_are_refused_with_the_list() -> None:
    with pytest.raises(UnknownBackbone, match="unknown zoo model.*nope.*the zoo has: latin-resnet10t"):
        build_zoo(Path("/nonexistent"), ["latin-resnet10t", "nope"])


# ------------------------------------------------------------------------------------------- loading


def test_zoo_ids_load_with_their_source_head(built: dict[str, Any], dirs: dict[str, Path]) -> None:
    zoo.register_zoo(dirs["zoo"])
    assert "zoo" in list_weights_providers()
    zoo.register_zoo(dirs["zoo"])  # idempotent
    loaded = load_backbone("zoo:tiny-textures")
    card = built["tiny"]
    assert loaded.spec.arch == "test_resnet" and loaded.weights_source == "provider:zoo"
    assert loaded.weights_sha256 == card["weights_sha256"]
    assert loaded.num_source_classes == card["source_classes"] == 20
    assert tuple(loaded.data_config["input_size"]) == (3, 32, 32)
    assert list(loaded.data_config["mean"]) == card["mean"] and loaded.data_config["crop_pct"] == 1.0
    # the loaded model, head included, is the one that was evaluated: same test accuracy
    test = load_dataset(dirs["builtin"] / ".zoo-scale-0.2" / "textures" / "test")
    split = load_split_tensors(test, loaded.data_config)
    result = evaluate(loaded.model, split, mean=loaded.data_config["mean"], std=loaded.data_config["std"])
    assert result.accuracy == pytest.approx(card["source_accuracy"])

    control = load_backbone(f"zoo:{CONTROL}")
    assert control.num_source_classes == 20 and control.spec.arch == "convnext_atto"

    with pytest.raises(WeightsUnavailable, match="zoo build"):
        load_backbone("zoo:latin-resnet10t")  # a default entry, not built here


def test_provider_answers_only_for_built_zoo_names(built: dict[str, Any], dirs: dict[str, Path]) -> None:
    assert zoo.zoo_provider(dirs["zoo"], "zoo:tiny-textures") == dirs["zoo"] / "tiny-textures"
    assert zoo.zoo_provider(dirs["zoo"], "tiny-textures") is None  # a timm id: not the zoo's
    assert zoo.zoo_provider(dirs["zoo"], "resnet10t.c3_in1k") is None
    assert zoo.zoo_provider(dirs["zoo"], "zoo:latin-resnet10t") is None  # not built
    assert zoo.zoo_provider(dirs["zoo"], "zoo:../zoo/tiny-textures") is None


def test_registering_another_dir_replaces_the_zoo(built: dict[str, Any], dirs: dict[str, Path], tmp_path: Path) -> None:
    from service.pipeline.plugins import source_info

    zoo.register_zoo(dirs["zoo"])
    assert source_info("zoo:tiny-textures") == ("textures", built["tiny"]["source_accuracy"])
    zoo.register_zoo(tmp_path / "empty-zoo")
    assert list_weights_providers().count("zoo") == 1
    assert source_info("zoo:tiny-textures") == (None, None)
    with pytest.raises(WeightsUnavailable, match="zoo build"):
        load_backbone("zoo:tiny-textures")
    zoo.unregister_zoo()
    assert "zoo" not in list_weights_providers()


def test_list_zoo_shows_default_entries_and_other_built_models(built: dict[str, Any], dirs: dict[str, Path]) -> None:
    rows = {row["name"]: row for row in zoo.list_zoo(dirs["zoo"])}
    assert set(ZOO_ENTRIES) <= set(rows)
    assert rows[CONTROL]["built"] and rows[CONTROL]["current"] and rows[CONTROL]["card"] == built["control"]
    assert not rows["latin-resnet10t"]["built"] and rows["latin-resnet10t"]["card"] is None
    assert rows["tiny-textures"]["built"] and rows["tiny-textures"]["arch"] == "test_resnet"
    assert rows["textures-vit-tiny"]["input_size"] == 32


def test_rank_resolves_zoo_ids(built: dict[str, Any], dirs: dict[str, Path], builtins: None) -> None:
    from service.pipeline.ranking.rank import rank_backbones

    zoo.register_zoo(dirs["zoo"])  # the builtins fixture registered the settings' zoo: rebind it
    # a calibration fitted with the same control and another build of tiny-textures
    packaged = load_calibration(DEFAULT_CALIBRATION_PATH)
    fitted_with = {"zoo:tiny-textures": "ab" * 32, f"zoo:{CONTROL}": built["control"]["weights_sha256"]}
    calibration = dataclasses.replace(
        packaged, source={"zoo": {"models": {k: {"weights_sha256": v} for k, v in fitted_with.items()}}}
    )
    result = rank_backbones(
        str(dirs["builtin"] / ".zoo-scale-0.2" / "textures" / "test"),
        ["zoo:tiny-textures", f"zoo:{CONTROL}"],
        estimators=["leep", "logme"],
        device="cpu",
        calibration=calibration,
    )
    note = result["fusion"]["note"]
    assert (
        f"; zoo:tiny-textures in use differs from the zoo the calibration was fitted with (weights sha256 "
        f"{built['tiny']['weights_sha256'][:12]}… vs abababababab…): predicted accuracies may be off" in note
    )
    assert CONTROL not in note  # the same build as calibrated: nothing to say
    rows = {row["id"]: row for row in result["backbones"]}
    assert set(rows) == {"zoo:tiny-textures", f"zoo:{CONTROL}"}
    assert all(row["scores"]["leep"] is not None for row in rows.values())  # the source heads were loaded
    # on its own source's test images the trained model's LEEP beats the untrained control's
    assert rows["zoo:tiny-textures"]["scores"]["leep"] > rows[f"zoo:{CONTROL}"]["scores"]["leep"]


# ------------------------------------------------------------------------------------------ provenance


def test_two_builds_in_separate_dirs_give_byte_identical_weights(
    built: dict[str, Any], dirs: dict[str, Path], tmp_path: Path
) -> None:
    # the source dataset generated again and the model trained again, in directories of their own
    card = build_zoo_model(TINY, tmp_path / "zoo", builtin_dir=tmp_path / "builtin", scale=SCALE)
    weights = (tmp_path / "zoo" / TINY.name / "model.safetensors").read_bytes()
    assert card["source_dir"] != built["tiny"]["source_dir"]
    assert weights == (dirs["zoo"] / TINY.name / "model.safetensors").read_bytes()
    assert card["weights_sha256"] == built["tiny"]["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert card["source_dataset_sha256"] == built["tiny"]["source_dataset_sha256"] is not None


def test_a_tampered_weights_file_is_refused_naming_the_file_and_both_hashes(
    built: dict[str, Any], dirs: dict[str, Path], tmp_path: Path
) -> None:
    shutil.copytree(dirs["zoo"] / TINY.name, tmp_path / "zoo" / TINY.name)
    weights = tmp_path / "zoo" / TINY.name / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one weight's last byte: still a valid safetensors file, only the hash tells
    weights.write_bytes(bytes(data))
    expected, actual = built["tiny"]["weights_sha256"], _sha256(weights)
    with pytest.raises(WeightsUnavailable) as info:
        zoo.zoo_provider(tmp_path / "zoo", "zoo:tiny-textures")
    message = str(info.value)
    assert f"weights file {weights} has sha256 {actual}, but its card" in message and f"records {expected}" in message
    assert info.value.context["expected_sha256"] == expected and info.value.context["actual_sha256"] == actual
    zoo.register_zoo(tmp_path / "zoo")
    with pytest.raises(WeightsUnavailable, match=f"{actual}, but its card .* records {expected}"):
        load_backbone("zoo:tiny-textures")
    zoo.register_zoo(dirs["zoo"])
    assert load_backbone("zoo:tiny-textures").weights_sha256 == expected  # the untouched build still loads


def test_a_card_written_before_the_source_hash_was_recorded_takes_it_from_the_dataset_manifest(
    built: dict[str, Any], dirs: dict[str, Path], tmp_path: Path
) -> None:
    assert zoo.zoo_provenance(dirs["zoo"], "zoo:tiny-textures") == {
        "weights_sha256": built["tiny"]["weights_sha256"], "source": "textures",
        "source_dataset_sha256": built["tiny"]["source_dataset_sha256"], "source_dataset_sha256_from": "card",
    }  # fmt: skip
    shutil.copytree(dirs["zoo"] / TINY.name, tmp_path / "zoo" / TINY.name)
    card_file = tmp_path / "zoo" / TINY.name / "card.json"
    legacy = {**built["tiny"], "source_dataset_sha256": None}  # what builds wrote before the fix
    card_file.write_text(json.dumps(legacy))
    found = zoo.zoo_provenance(tmp_path / "zoo", "zoo:tiny-textures")
    assert found is not None and found["source_dataset_sha256_from"] == "dataset manifest"
    assert found["source_dataset_sha256"] == built["tiny"]["source_dataset_sha256"]
    assert json.loads(card_file.read_text())["source_dataset_sha256"] is None  # the record is not rewritten
    # a dataset on disk that is not the one the card describes fills nothing
    card_file.write_text(json.dumps({**legacy, "train_images": legacy["train_images"] + 1}))
    found = zoo.zoo_provenance(tmp_path / "zoo", "zoo:tiny-textures")
    assert found is not None and found["source_dataset_sha256"] is None and found["source_dataset_sha256_from"] is None
    assert zoo.zoo_provenance(tmp_path / "zoo", "zoo:latin-resnet10t") is None  # not built
    assert zoo.zoo_provenance(tmp_path / "zoo", "resnet10t.c3_in1k") is None  # not a zoo id


def test_hashes_are_added_to_a_recorded_result_only_from_a_zoo_that_reproduces_it(
    built: dict[str, Any], dirs: dict[str, Path]
) -> None:
    row = {"id": "zoo:tiny-textures", "source_accuracy": built["tiny"]["source_accuracy"]}
    other = {"id": "random:test_resnet", "source_accuracy": None}
    recorded = {"targets": [{"backbones": [row, other]}, {"backbones": [dict(row), dict(other)]}]}
    added = zoo.add_zoo_hashes(recorded, dirs["zoo"])
    assert "weights_sha256" not in recorded["targets"][0]["backbones"][0]  # a copy
    sha = built["tiny"]["weights_sha256"]
    assert [r.get("weights_sha256") for t in added["targets"] for r in t["backbones"]] == [sha, None, sha, None]
    assert added["zoo"]["models"] == {"zoo:tiny-textures": zoo.zoo_provenance(dirs["zoo"], "zoo:tiny-textures")}
    assert "added after the run" in added["zoo"]["note"]
    ZooProvenance.model_validate(added["zoo"])  # the block a benchmark result documents
    # a calibration fitted on it records the hashes, and how they were obtained
    source_sha = built["tiny"]["source_dataset_sha256"]
    assert zoo_hashes_of([added]) == {
        "models": {"zoo:tiny-textures": {"weights_sha256": sha, "source_dataset_sha256": source_sha}},
        "note": added["zoo"]["note"],
    }
    with pytest.raises(ValueError, match="not the one the result was run with.*recorded source accuracy 0.5, the zoo"):
        zoo.add_zoo_hashes({"targets": [{"backbones": [{**row, "source_accuracy": 0.5}]}]}, dirs["zoo"])
    with pytest.raises(ValueError, match="zoo:latin-resnet10t is not built in"):
        zoo.add_zoo_hashes({"targets": [{"backbones": [{"id": "zoo:latin-resnet10t"}]}]}, dirs["zoo"])
    with pytest.raises(ValueError, match="the result names weights 00"):
        zoo.add_zoo_hashes({"targets": [{"backbones": [{**row, "weights_sha256": "0" * 64}]}]}, dirs["zoo"])


# ------------------------------------------------------------------------------------------------ CLI


def _cli(args: list[str], cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BACKBONE_RANK_CACHE_DIR": str(cache_dir), "COLUMNS": "200"}
    env.pop("BACKBONE_RANK_ZOO_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_build_and_list(built: dict[str, Any], tmp_path: Path) -> None:
    done = _cli(["zoo", "build", "--only", CONTROL, "--scale", str(SCALE)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert CONTROL in done.stdout and "convnext_atto" in done.stdout and "textures" in done.stdout
    card = json.loads((tmp_path / "zoo" / CONTROL / "card.json").read_text())
    assert f"{card['source_accuracy']:.3f}" in done.stdout
    # the control's seeded init is the same in another process
    assert card["weights_sha256"] == built["control"]["weights_sha256"]

    listed = _cli(["zoo", "list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[1]: line for line in listed.stdout.splitlines() if line.startswith("│")}
    assert set(ZOO_ENTRIES) <= set(rows)
    assert "yes (scale 0.2)" in rows[CONTROL] and f"{card['source_accuracy']:.3f}" in rows[CONTROL]
    assert " no " in rows["latin-resnet10t"] and "glyphs-latin" in rows["latin-resnet10t"]

    unknown = _cli(["zoo", "build", "--only", "nope"], tmp_path)
    assert unknown.returncode == 2
    assert "error [unknown_backbone]" in unknown.stderr and "latin-resnet10t" in unknown.stderr


# ----------------------------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_default_zoo_builds_and_every_trained_model_learns(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    cards = build_zoo(tmp_path / "zoo", builtin_dir=tmp_path / "builtin")  # raises if any model did not learn
    assert [card["name"] for card in cards] == list(ZOO_ENTRIES)
    zoo.register_zoo(tmp_path / "zoo")
    for card in cards:
        if card["init"] == "pretrained":
            assert card["source_accuracy"] >= card["learn_threshold"], card["name"]
        else:
            assert card["source_accuracy"] < card["learn_threshold"], card["name"]
        assert load_backbone(card["id"]).num_source_classes == card["source_classes"]
