"""The model catalogue: the packaged table, its generator, named candidate sets, filters and id look-ups.

The raw timm results the table is built from live outside the repository (``../shared/data/timm`` beside a
checkout, or ``BACKBONE_RANK_TIMM_RESULTS``); a fresh clone does not have them, so the checks against them
skip there. The generator itself is tested on a small input written here.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import service
from service.errors import BackboneRankError, InvalidCandidateSet, UnknownCandidateSet
from service.model_catalogue import (
    CANDIDATE_SET_FILTERS,
    CANDIDATE_SETS,
    COLUMNS,
    DEFAULT_CATALOGUE_PATH,
    MOBILE_MAX_MODELS,
    MOBILE_MAX_PARAMS_M,
    POPULAR_IDS,
    CatalogueEntry,
    catalogue_info,
    expand_backbone_ids,
    expand_candidate_set,
    filter_models,
    load_model_catalogue,
)

ROOT = Path(__file__).resolve().parents[1]
RAW = Path(os.environ.get("BACKBONE_RANK_TIMM_RESULTS") or ROOT.parent / "shared" / "data" / "timm")
needs_raw = pytest.mark.skipif(
    not (RAW / "results-imagenet.csv").is_file(),
    reason=f"timm's raw results are not at {RAW} (a fresh clone has only the packaged table; "
    "set BACKBONE_RANK_TIMM_RESULTS to a copy of timm's results/ folder)",
)
POPULAR_FAMILIES = {"resnet", "convnext", "efficientnet", "vit", "deit", "swin", "regnet", "mobilenet"}


def _generator() -> ModuleType:
    script = ROOT / "benchmarks" / "build_model_catalogue.py"
    spec = importlib.util.spec_from_file_location("build_model_catalogue", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def catalogue() -> tuple[CatalogueEntry, ...]:
    return load_model_catalogue()


# ------------------------------------------------------------------------------------- the packaged table


def test_the_packaged_table_loads_from_the_service_package(catalogue):
    assert DEFAULT_CATALOGUE_PATH == Path(service.__file__).resolve().parent / "builtin" / "model_catalogue.csv"
    ids = [e.id for e in catalogue]
    assert len(ids) > 1000
    assert ids == sorted(set(ids))
    assert all(e.id == f"{e.arch}.{e.tag}" and e.family for e in catalogue)
    assert load_model_catalogue() is catalogue  # read once per path
    resnet50 = catalogue_info("resnet50.a1_in1k")
    assert resnet50 is not None
    assert (resnet50.params_m, resnet50.imagenet_top1, resnet50.img_size) == (25.56, 80.382, 224)
    assert (resnet50.test_img_size, resnet50.imagenet_top1_test, resnet50.gmacs) == (288, 81.24, 4.11)
    assert (resnet50.family, resnet50.pretrain) == ("resnet", "in1k")


def test_the_packaged_table_says_where_its_numbers_come_from():
    source = DEFAULT_CATALOGUE_PATH.with_suffix(".SOURCE.md").read_text(encoding="utf-8")
    for fact in ("huggingface/pytorch-image-models", "aa4b5850c1543fa488abf260f18390eda46cf85d", "2026-08-08",
                 "Apache-2.0", "benchmarks/build_model_catalogue.py"):  # fmt: skip
        assert fact in source


def _raw_rows(name: str) -> list[dict[str, str]]:
    with (RAW / name).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@needs_raw
@pytest.mark.parametrize(
    "model_id",
    [
        "resnet50.a1_in1k",  # two evaluations (224 default, 288 test), four benchmark sizes
        "vit_small_patch16_224.augreg_in21k_ft_in1k",  # one evaluation
        "eva_giant_patch14_560.m30m_ft_in22k_in1k",  # param_count printed "1,014.45"
    ],
)
def test_numbers_match_timms_raw_results(catalogue, model_id):
    entry = catalogue_info(model_id)
    assert entry is not None
    evaluations = sorted((r for r in _raw_rows("results-imagenet.csv") if r["model"] == model_id),
                         key=lambda r: int(r["img_size"]))  # fmt: skip
    default = evaluations[0]
    assert entry.img_size == int(default["img_size"])
    assert entry.imagenet_top1 == float(default["top1"]) and entry.imagenet_top5 == float(default["top5"])
    assert entry.params_m == float(default["param_count"].replace(",", ""))
    assert (entry.crop_pct, entry.interpolation) == (float(default["crop_pct"]), default["interpolation"])
    if len(evaluations) > 1:
        assert (entry.test_img_size, entry.imagenet_top1_test) == (int(evaluations[-1]["img_size"]),
                                                                   float(evaluations[-1]["top1"]))  # fmt: skip
    [gpu] = [r for r in _raw_rows("benchmark-infer-amp-nchw-pt291-cu128-4090.csv")
             if r["model"] == entry.arch and r["infer_img_size"] == default["img_size"]]  # fmt: skip
    assert (entry.gmacs, entry.gpu_img_per_s) == (float(gpu["infer_gmacs"]), float(gpu["infer_samples_per_sec"]))
    cpu = [r for r in _raw_rows("benchmark-infer-fp32-nchw-pt240-cpu-i7_12700h-dynamo.csv")
           if r["model"] == entry.arch and r["infer_img_size"] == default["img_size"]]  # fmt: skip
    assert entry.cpu_img_per_s == (float(cpu[0]["infer_samples_per_sec"]) if cpu else None)


@needs_raw
def test_the_packaged_table_is_what_the_generator_builds(tmp_path):
    out = tmp_path / "model_catalogue.csv"
    assert _generator().main(["--timm-results", str(RAW), "--out", str(out)]) == 0
    assert out.read_bytes() == DEFAULT_CATALOGUE_PATH.read_bytes()
    assert out.with_suffix(".SOURCE.md").read_bytes() == DEFAULT_CATALOGUE_PATH.with_suffix(".SOURCE.md").read_bytes()


# ------------------------------------------------------------------------------------- the generator


def _write_csv(path: Path, header: str, *rows: str) -> None:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


@pytest.fixture
def timm_results(tmp_path) -> Path:
    raw = tmp_path / "timm"
    raw.mkdir()
    (raw / "SOURCE.md").write_text(f"copied at commit {'ab' * 20} (2026-01-02)\n", encoding="utf-8")
    results_header = "model,img_size,top1,top1_err,top5,top5_err,param_count,crop_pct,interpolation"
    _write_csv(
        raw / "results-imagenet.csv", results_header,
        "zeta_net.big_in1k,288,81.5,18.5,95.0,5.0,\"1,234.5\",1.0,bicubic",  # the test-size evaluation, listed first
        "zeta_net.big_in1k,224,80.25,19.75,94.5,5.5,\"1,234.5\",0.95,bicubic",
        "tf_alpha_b0.augreg_in21k_ft_in1k,224,70.1,29.9,90.2,9.8,5.3,0.875,bilinear",
        "alphav2_s.a1_in1k,160,60.0,40.0,80.0,20.0,2.0,0.9,bicubic",
        "alphav2_s.clip_ft_in1k,160,61.0,39.0,81.0,19.0,2.0,0.9,bicubic",
        "resnet9x.tv_in1k,224,55.0,45.0,75.0,25.0,9.0,0.875,bilinear",
    )  # fmt: skip
    bench_header = ",".join(["model", "infer_img_size", "infer_samples_per_sec", "infer_step_time", "infer_batch_size",
                             "param_count", "infer_gmacs", "infer_macts"])  # fmt: skip
    _write_csv(
        raw / "benchmark-infer-amp-nchw-pt291-cu128-4090.csv", bench_header,
        "zeta_net,224,100.5,1,256,1234.5,10.1,1",
        "zeta_net,288,60.25,1,256,1234.5,16.7,1",
        "tf_alpha_b0,224,2000,1,1024,5.3,0.4,1",
        "alphav2_s,224,3000,1,1024,2.0,0.2,1",  # only at 224: alphav2_s at 160 has no GPU row
    )  # fmt: skip
    _write_csv(
        raw / "benchmark-infer-fp32-nchw-pt240-cpu-i7_12700h-dynamo.csv", bench_header,
        "tf_alpha_b0,224,50,1,1,5.3,0.5,1",  # a different GMACs count: never used
    )  # fmt: skip
    _write_csv(raw / "model_metadata-in1k.csv", "model,pretrain",
               "tf_alpha_b0,in21k-selfsl", "alphav2_s,in1k-dist", "resnet9x,in21k")  # fmt: skip
    return raw


def test_the_generator_is_deterministic_and_joins_only_exact_matches(tmp_path, timm_results):
    generator = _generator()
    first, second = tmp_path / "a" / "model_catalogue.csv", tmp_path / "b" / "model_catalogue.csv"
    for out in (first, second):
        assert generator.main(["--timm-results", str(timm_results), "--out", str(out)]) == 0
    assert first.read_bytes() == second.read_bytes()
    assert first.with_suffix(".SOURCE.md").read_bytes() == second.with_suffix(".SOURCE.md").read_bytes()
    assert f"commit {'ab' * 20} (2026-01-02)" in first.with_suffix(".SOURCE.md").read_text(encoding="utf-8")

    with first.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = {r["id"]: r for r in reader}
    assert list(rows) == sorted(rows)
    zeta = rows["zeta_net.big_in1k"]
    assert {k: zeta[k] for k in ("family", "params_m", "imagenet_top1", "img_size", "crop_pct", "gmacs",
                                 "gpu_img_per_s", "cpu_img_per_s", "test_img_size", "imagenet_top1_test")} == {
        "family": "zeta", "params_m": "1234.50", "imagenet_top1": "80.250", "img_size": "224", "crop_pct": "0.950",
        "gmacs": "10.10", "gpu_img_per_s": "100.50", "cpu_img_per_s": "", "test_img_size": "288",
        "imagenet_top1_test": "81.500",
    }  # fmt: skip
    alpha = rows["tf_alpha_b0.augreg_in21k_ft_in1k"]
    # the CPU row's GMACs differ and are not used; one tag: the metadata refines the tag's in21k
    assert (alpha["family"], alpha["gmacs"], alpha["cpu_img_per_s"], alpha["pretrain"]) == (
        "alpha", "0.40", "50.00", "in21k-selfsl")  # fmt: skip
    for model_id in ("alphav2_s.a1_in1k", "alphav2_s.clip_ft_in1k"):  # no benchmark row at 160: empty, not 224's
        assert (rows[model_id]["gmacs"], rows[model_id]["gpu_img_per_s"], rows[model_id]["family"]) == ("", "", "alpha")
    # two tags: the arch-keyed metadata is not used; "clip" names more data without saying which
    assert (rows["alphav2_s.a1_in1k"]["pretrain"], rows["alphav2_s.clip_ft_in1k"]["pretrain"]) == ("in1k", "")
    assert rows["resnet9x.tv_in1k"]["pretrain"] == "in1k"  # the metadata contradicts the tag: the tag wins

    entries = load_model_catalogue(first)
    assert [e.id for e in entries] == sorted(rows)
    assert (entries[0].id, entries[0].gmacs, entries[0].test_img_size) == ("alphav2_s.a1_in1k", None, None)
    zeta_entry = entries[-1]
    assert (zeta_entry.id, zeta_entry.test_img_size, zeta_entry.imagenet_top1_test) == ("zeta_net.big_in1k", 288, 81.5)
    assert catalogue_info("zeta_net", entries) == next(e for e in entries if e.arch == "zeta_net")


def test_the_generator_refuses_a_folder_that_does_not_name_its_source(tmp_path, timm_results):
    (timm_results / "SOURCE.md").unlink()
    with pytest.raises(SystemExit, match="--source-commit"):
        _generator().main(["--timm-results", str(timm_results), "--out", str(tmp_path / "c.csv")])
    out = tmp_path / "d.csv"
    _generator().main(["--timm-results", str(timm_results), "--out", str(out),
                       "--source-commit", "c" * 40, "--source-date", "2026-03-04"])  # fmt: skip
    assert "c" * 40 in out.with_suffix(".SOURCE.md").read_text(encoding="utf-8")


def test_reading_a_table_with_other_columns_fails_clearly(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("id,arch\nx.y,x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="are not the catalogue's"):
        load_model_catalogue(path)


# ------------------------------------------------------------------------------------- named candidate sets


def test_mobile_is_the_best_small_model_of_each_family(catalogue):
    ids = expand_candidate_set("@mobile")
    chosen = [catalogue_info(i) for i in ids]
    assert 0 < len(ids) <= MOBILE_MAX_MODELS and all(e is not None for e in chosen)
    assert all(e.params_m <= MOBILE_MAX_PARAMS_M for e in chosen)
    assert len({e.family for e in chosen}) == len(chosen) and "test" not in {e.family for e in chosen}
    assert [e.imagenet_top1 for e in chosen] == sorted((e.imagenet_top1 for e in chosen), reverse=True)
    for e in chosen:
        same_family = filter_models(catalogue, family=e.family, max_params_m=MOBILE_MAX_PARAMS_M)
        assert e.imagenet_top1 == max(m.imagenet_top1 for m in same_family)
    small = expand_candidate_set("@mobile?max_gmacs=0.3&min_top1=70")
    assert small and all(catalogue_info(i).gmacs <= 0.3 and catalogue_info(i).imagenet_top1 >= 70 for i in small)


def test_popular_is_the_documented_list_of_well_known_families(catalogue):
    assert expand_candidate_set("@popular") == list(POPULAR_IDS)
    families = {catalogue_info(i).family for i in POPULAR_IDS}
    assert families == POPULAR_FAMILIES
    assert expand_candidate_set("@popular?family=vit,deit") == [i for i in POPULAR_IDS if i.startswith(("vit", "deit"))]


def test_top_n_is_the_n_best_by_imagenet_top1(catalogue):
    ids = expand_candidate_set("@top:20")
    ranked = sorted((e for e in catalogue if e.family != "test"), key=lambda e: (-e.imagenet_top1, e.id))
    assert ids == [e.id for e in ranked[:20]]
    assert len(expand_candidate_set("@top:200")) == 200 and len(expand_candidate_set(" @TOP:1 ")) == 1
    filtered = [catalogue_info(i) for i in expand_candidate_set("@top:20?max_params=30&min_top1=80")]
    assert len(filtered) == 20 and all(e.params_m <= 30 and e.imagenet_top1 >= 80 for e in filtered)
    assert [e.imagenet_top1 for e in filtered] == sorted((e.imagenet_top1 for e in filtered), reverse=True)


def test_expanding_a_backbone_list_keeps_order_and_drops_repeats():
    ids = expand_backbone_ids(["zoo:tiny", "resnet18.a1_in1k", "@popular?family=resnet", "zoo:tiny"])
    assert ids == ["zoo:tiny", "resnet18.a1_in1k", "resnet50.a1_in1k"]


@pytest.mark.parametrize("text", ["@fast", "@", "top:5", "@popularity"])
def test_an_unknown_set_is_refused_with_the_valid_ones(text):
    with pytest.raises(UnknownCandidateSet) as info:
        expand_candidate_set(text)
    assert info.value.code == "unknown_candidate_set" and isinstance(info.value, BackboneRankError)
    assert info.value.to_dict()["valid"] == list(CANDIDATE_SETS)
    assert all(name in info.value.detail for name in CANDIDATE_SETS)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("@top", "needs a count"),
        ("@top:0", "needs a count"),
        ("@top:201", "needs a count"),
        ("@top:x", "needs a count"),
        ("@mobile:5", "takes no count"),
        ("@top:5?", "nothing after"),
        ("@top:5?max_param=30", "unknown filter 'max_param'"),
        ("@top:5?max_params", "has no value"),
        ("@top:5?max_params=-1", "not a number >= 0"),
        ("@top:5?min_top1=nan", "not a number >= 0"),
        ("@top:5?max_params=3&max_params=4", "given twice"),
        ("@top:5?family=resnett", "unknown family resnett"),
        ("@top:5?pretrain=imagenet", "unknown pretrain imagenet"),
        ("@top:5?min_top1=99.9", "no model"),
    ],
)
def test_a_bad_count_or_filter_is_refused_with_the_valid_filters(text, why):
    with pytest.raises(InvalidCandidateSet, match=why) as info:
        expand_candidate_set(text)
    assert info.value.code == "invalid_candidate_set"
    assert info.value.to_dict()["valid"] == list(CANDIDATE_SET_FILTERS)
    assert all(key in info.value.detail for key in CANDIDATE_SET_FILTERS)


# ------------------------------------------------------------------------------------- filters and look-ups


def _entry(model_id: str, *, family: str = "fam", params_m: float = 1.0, top1: float = 50.0,
           gmacs: float | None = 1.0, pretrain: str = "in1k") -> CatalogueEntry:  # fmt: skip
    arch, _, tag = model_id.partition(".")
    return CatalogueEntry(
        id=model_id, arch=arch, tag=tag, family=family, params_m=params_m, imagenet_top1=top1,
        imagenet_top5=90.0, img_size=224, crop_pct=0.9, interpolation="bicubic", gmacs=gmacs, gpu_img_per_s=None,
        cpu_img_per_s=None, pretrain=pretrain, test_img_size=None, imagenet_top1_test=None,
    )  # fmt: skip


def test_filters_combine_and_leave_unknown_costs_out():
    entries = [
        _entry("a.x", family="ResNet", params_m=5, top1=70, gmacs=0.5),
        _entry("b.x", family="vit", params_m=50, top1=80, gmacs=None, pretrain="laion2b+in12k"),
        _entry("c.y", family="vit", params_m=20, top1=75, gmacs=4.0, pretrain="in1k-dist"),
        _entry("d.y", family="deit", params_m=8, top1=60, gmacs=1.0, pretrain="in1k+in21k"),
    ]

    def ids(**kwargs):
        return [e.id for e in filter_models(entries, **kwargs)]

    assert ids() == ["a.x", "b.x", "c.y", "d.y"]
    assert ids(max_params_m=8) == ["a.x", "d.y"]
    assert ids(max_gmacs=10) == ["a.x", "c.y", "d.y"]  # b has no GMACs figure
    assert ids(min_top1=75) == ["b.x", "c.y"]
    assert ids(family="vit") == ["b.x", "c.y"] and ids(family=["VIT", "deit"]) == ["b.x", "c.y", "d.y"]
    assert ids(pretrain="in1k") == ["a.x", "c.y"]  # in1k-dist is in1k; in1k+in21k is not
    assert ids(pretrain="laion2b+in12k,in1k+in21k") == ["b.x", "d.y"]
    assert ids(query="Y") == ["c.y", "d.y"] and ids(query="*.x") == ["a.x", "b.x"] and ids(query="a y") == []
    assert ids(family="vit", max_params_m=30, min_top1=70) == ["c.y"]


def test_catalogue_info_accepts_the_forms_of_a_timm_id():
    entries = [_entry("resnet50.a1_in1k"), _entry("resnet50.tv_in1k"), _entry("deit_tiny.fb_in1k")]
    assert catalogue_info("resnet50.tv_in1k", entries).id == "resnet50.tv_in1k"
    assert catalogue_info(" hf-hub:timm/resnet50.tv_in1k ", entries).id == "resnet50.tv_in1k"
    assert catalogue_info("resnet50.tv_in1k@v1.0", entries).id == "resnet50.tv_in1k"  # a pinned revision
    assert catalogue_info("deit_tiny", entries).id == "deit_tiny.fb_in1k"  # the architecture's only tag
    assert catalogue_info("resnet50", entries) is None  # which tag timm picks is not in the results
    assert catalogue_info("resnet50", entries, default_tags={"resnet50": "tv_in1k"}).id == "resnet50.tv_in1k"
    assert catalogue_info("resnet50", entries, default_tags={}) is None
    others = ["resnet50.a1_in1k@/w/resnet50.safetensors", "resnet50.a1_in1k@w.safetensors", "zoo:resnet50",
              "random:resnet50", "local-dir:/m", "hf-hub:someone/resnet50.a1_in1k", "resnet50.nope", ""]  # fmt: skip
    for other in others:
        assert catalogue_info(other, entries) is None, other


def test_the_module_imports_no_torch():
    code = (
        "import sys, service.model_catalogue as m; m.expand_candidate_set('@mobile'); m.catalogue_info('resnet50'); "
        "heavy = sorted(k for k in sys.modules "
        "               if k in ('torch', 'timm', 'torchvision') or k.startswith('service.pipeline')); "
        "assert not heavy, heavy"
    )  # fmt: skip
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_the_models_command_lists_filters_and_explains_mistakes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """The README's `backbone-rank models` commands, as written."""
    from typer.testing import CliRunner

    from service.cli import app
    from service.config import get_settings

    env = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    monkeypatch.setenv("BACKBONE_RANK_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BACKBONE_RANK_HF_CACHE_DIR", str(tmp_path / "hf"))  # an empty HF cache
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)  # the next test reads its own environment
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "--filter", "max_params=10&min_top1=78", "--sort", "speed", "--limit", "10",
                                 "--json"], env=env)  # fmt: skip
    assert listed.exit_code == 0, listed.output
    models = json.loads(listed.stdout)["models"]
    assert len(models) == 10 and all(m["params_m"] <= 10 and m["imagenet_top1"] >= 78 for m in models)
    speeds = [m["gpu_img_per_s"] for m in models if m["gpu_img_per_s"] is not None]
    assert speeds == sorted(speeds, reverse=True)
    mobile = runner.invoke(app, ["models", "@mobile", "--json"], env=env)
    assert [m["id"] for m in json.loads(mobile.stdout)["models"]] == expand_candidate_set("@mobile")
    table = runner.invoke(app, ["models", "--search", "convnext_tiny", "--limit", "3"], env=env)
    assert table.exit_code == 0 and "convnext_tiny" in table.stdout and "GMACs" in table.stdout
    local = runner.invoke(app, ["models", "--search", "convnext", "--local", "--json"], env=env)
    assert json.loads(local.stdout)["models"] == []  # an empty HF cache holds none
    bad = runner.invoke(app, ["models", "@fast"], env=env)
    assert bad.exit_code == 2 and "error [unknown_candidate_set]" in bad.stderr
