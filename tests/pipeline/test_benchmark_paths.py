"""Where benchmark results go (the cache, never the working directory), the coded errors of a suite whose data
or weights are missing, and which git commit a result records."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from service.config import Settings  # noqa: E402
from service.errors import DatasetNotFound, WeightsUnavailable  # noqa: E402
from service.pipeline.benchmark.benchmark import run_benchmark  # noqa: E402
from service.pipeline.benchmark.results import _git_commit  # noqa: E402
from service.pipeline.benchmark.suites import STANDARD_TARGET_FOLDERS, get_suite  # noqa: E402

from .test_benchmark import _splits  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _splits(tmp_path_factory.mktemp("target"), 0, {"train": 6, "val": 3, "test": 3})


def _cli(*args: str, cwd: Path, cache: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BACKBONE_RANK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("BACKBONE_RANK_BENCHMARK_RESULTS_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )


# ------------------------------------------------------------------------------------------ result folder


def test_benchmark_results_dir_defaults_to_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("BACKBONE_RANK_BENCHMARK_RESULTS_DIR", raising=False)
    settings = Settings(cache_dir=tmp_path / "c")
    assert settings.benchmark_results_dir == tmp_path / "c" / "benchmarks"
    assert not settings.benchmark_results_dir.is_relative_to(ROOT)  # never the source tree (empty when installed)
    monkeypatch.setenv("BACKBONE_RANK_BENCHMARK_RESULTS_DIR", str(tmp_path / "mine"))
    assert Settings(cache_dir=tmp_path / "c").benchmark_results_dir == tmp_path / "mine"


def test_cli_benchmark_writes_into_the_cache_not_the_working_directory(target_dir, tmp_path):
    ids = ("random:test_resnet", "random:test_efficientnet")
    suite_file = tmp_path / "mine.toml"
    suite_file.write_text(
        'name = "paths"\nground_truth = "published"\nestimators = ["logme"]\n'
        f'[[targets]]\nname = "shapes"\ndataset = "{target_dir}"\n'
        f'[[backbones]]\nid = "{ids[0]}"\ninput_size = 32\n[[backbones]]\nid = "{ids[1]}"\ninput_size = 32\n'
        f'[published.shapes]\n"{ids[0]}" = 0.3\n"{ids[1]}" = 0.6\n',
        encoding="utf-8",
    )
    work = tmp_path / "work"
    work.mkdir()
    proc = _cli("benchmark", "--suite", str(suite_file), "--bootstrap", "10", "--device", "cpu",
                cwd=work, cache=tmp_path / "cache")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = tmp_path / "cache" / "benchmarks"
    [json_file] = results.glob("benchmark-paths-*.json")
    assert json_file.with_suffix(".csv").is_file() and json_file.with_suffix(".html").is_file()
    assert not list(results.glob("*.partial.jsonl"))
    assert not list(work.iterdir())  # nothing written where the command ran


# ------------------------------------------------------------------------------ missing data and weights


def test_standard_suite_without_its_data_is_a_short_coded_error(tmp_path):
    proc = _cli("benchmark", "--suite", "standard", cwd=tmp_path, cache=tmp_path / "cache", timeout=120)
    assert proc.returncode == 2
    message = " ".join(proc.stderr.split())
    assert message.startswith("error [dataset_not_found]: no target of suite 'standard' was found"), message
    assert "missing under standard-data: aircraft/, caltech101/," in message and "--data-dir" in message
    assert len(message) < 600

    empty = tmp_path / "fgvc"
    empty.mkdir()
    with pytest.raises(DatasetNotFound, match=f"missing under {empty}: pets/, dtd/\\);.*--data-dir") as info:
        run_benchmark(get_suite("standard", data_dir=empty), out_dir=None, targets=["pets", "dtd"])
    assert info.value.context["missing"] == [str(empty / "pets"), str(empty / "dtd")]
    assert set(STANDARD_TARGET_FOLDERS) >= {"pets", "dtd"}


def test_standard_suite_without_weights_names_the_models_briefly(target_dir, tmp_path):
    data = tmp_path / "fgvc"
    data.mkdir()
    (data / "pets").symlink_to(target_dir, target_is_directory=True)
    suite = get_suite("standard", data_dir=data)
    with pytest.raises(WeightsUnavailable) as info:
        run_benchmark(suite, out_dir=None, targets=["pets"], hf_cache_dir=tmp_path / "hf", build_zoo=False)
    detail = info.value.detail
    assert detail.startswith("suite 'standard': fewer than 2 usable backbones; no weights on this machine for ")
    assert "resnet34.tv_in1k" in detail and "googlenet" in detail and "--backbone NAME=" in detail
    assert len(detail) < 800


# ------------------------------------------------------------------------------------------- git commit


def _git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args],
        cwd=cwd, capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return out.stdout.strip()


def _repo(path: Path, project_name: str) -> Path:
    path.mkdir(parents=True)
    (path / "pyproject.toml").write_text(f'[project]\nname = "{project_name}"\n', encoding="utf-8")
    _git(path, "init", "-q")
    _git(path, "add", "pyproject.toml")
    _git(path, "commit", "-q", "-m", "init")
    return path


def test_git_commit_of_a_backbone_rank_checkout(tmp_path):
    checkout = _repo(tmp_path / "backbone-rank", "backbone-rank")
    assert _git_commit(checkout) == _git(checkout, "rev-parse", "--short=12", "HEAD")


def test_no_git_commit_from_a_repository_around_an_installed_package(tmp_path):
    project = _repo(tmp_path / "my-project", "my-project")
    # installed into a venv inside the user's project: its commit is not backbone-rank's
    site_packages = project / ".venv" / "lib" / "python3.11" / "site-packages"
    (site_packages / "service").mkdir(parents=True)
    assert _git_commit(site_packages) is None
    # a backbone-rank source folder vendored inside another repository is not a checkout's top level either
    vendored = project / "vendor" / "backbone-rank"
    vendored.mkdir(parents=True)
    (vendored / "pyproject.toml").write_text('[project]\nname = "backbone-rank"\n', encoding="utf-8")
    assert _git_commit(vendored) is None
    # a checkout of another project at the top level
    assert _git_commit(project) is None
    # no repository at all
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "pyproject.toml").write_text('[project]\nname = "backbone-rank"\n', encoding="utf-8")
    assert _git_commit(lone) is None
