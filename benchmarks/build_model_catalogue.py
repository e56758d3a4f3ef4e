"""Build the packaged model catalogue from timm's published results (deterministic, no torch).

Usage (from the repository root; ``--timm-results`` is a copy of timm's ``results/`` folder)::

    python benchmarks/build_model_catalogue.py --timm-results ../shared/data/timm \\
        --out service/builtin/model_catalogue.csv

Writes ``model_catalogue.csv`` (one row per pretrained timm id, the columns of
``service.model_catalogue.COLUMNS``) and, beside it, ``model_catalogue.SOURCE.md``: where the numbers come
from (repository, commit, date, licence) and the rules below. Rebuilding from the same input gives
byte-identical files: rows sorted by id, floats with a fixed number of decimals, no build date.
The raw files are never copied: only the columns below, one row per id.

Rules (also written into the SOURCE file, from the same tables):

- **Rows.** ``results-imagenet.csv`` has one row per ``arch.tag`` and a second one for the 290 ids whose
  pretrained config has a larger ``test_input_size``. The row kept is the one at the smaller size, the
  config's ``input_size``: what ``timm.data.resolve_model_data_config`` (and so this project's feature
  extraction) uses. The larger evaluation goes into ``test_img_size`` / ``imagenet_top1_test``.
  (Checked once against timm 1.0.31's pretrained configs: all 1266 ids follow this.)
- **Throughput and GMACs** are keyed by *architecture and image size* in the benchmark files (their
  ``model`` column has no tag): a row joins on ``(arch, img_size)`` exactly, so every tag of an
  architecture shares them. No match leaves the field empty; a nearby size is never substituted. GMACs
  come from the GPU file only (the CPU file is from an older timm, whose counts differ for a few
  re-parameterised models).
- **Family**: :data:`FAMILY_PREFIXES`, then the first word of the architecture up to its first digit.
- **Pretraining data**: :func:`pretrain_of`.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from service.model_catalogue import COLUMNS

SOURCE_REPO = "https://github.com/huggingface/pytorch-image-models"
SOURCE_LICENCE = "Apache-2.0"
RESULTS_FILE = "results-imagenet.csv"
GPU_FILE = "benchmark-infer-amp-nchw-pt291-cu128-4090.csv"
CPU_FILE = "benchmark-infer-fp32-nchw-pt240-cpu-i7_12700h-dynamo.csv"
METADATA_FILE = "model_metadata-in1k.csv"

#: Source-specific prefixes of timm architecture names (TensorFlow ports, old ports): not part of the family.
PORT_PREFIXES = ("tf_", "legacy_")

#: ``(prefix, family)``, first match wins, for the names whose first word does not say the family. Checked
#: after :data:`PORT_PREFIXES` are removed. ResNeXt-style (grouped) ResNets are ``resnext``; SE/ECA/SK/GC
#: ResNets and wide ResNets are ``resnet``; ResNeSt, TResNet and normaliser-free ResNets are their own.
FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("wide_resnet", "resnet"),
    ("seresnext", "resnext"),
    ("skresnext", "resnext"),
    ("gcresnext", "resnext"),
    ("bat_resnext", "resnext"),
    ("eca_resnext", "resnext"),
    ("resnext", "resnext"),
    ("resnest", "resnest"),
    ("resnet", "resnet"),
    ("seresnet", "resnet"),
    ("ecaresnet", "resnet"),
    ("skresnet", "resnet"),
    ("gcresnet", "resnet"),
    ("eca_resnet", "resnet"),
    ("nf_", "nfnet"),
    ("dm_nfnet", "nfnet"),
    ("eca_nfnet", "nfnet"),
    ("regnet", "regnet"),
    ("cs3", "cspnet"),
    ("cspdarknet", "cspnet"),
    ("cspresne", "cspnet"),
    ("darknetaa", "darknet"),
    ("ese_vovnet", "vovnet"),
    ("tiny_vit", "tiny_vit"),
    ("inception_next", "inception_next"),
    ("coatnext", "coatnet"),
    ("maxxvit", "maxvit"),
    ("rexnetr", "rexnet"),
    ("semnasnet", "mnasnet"),
    ("fbnet", "fbnet"),
    ("eca_botnext", "botnet"),
    ("sebotnet", "botnet"),
    ("eca_halonext", "halonet"),
    ("sehalonet", "halonet"),
    ("halo2botnet", "halonet"),
    ("lamhalobotnet", "halonet"),
    ("haloregnetz", "halonet"),
    ("densenetblur", "densenet"),
    ("gc_efficientnet", "efficientnet"),
    ("nasnetalarge", "nasnet"),
    ("pnasnet", "pnasnet"),
    ("res2net", "res2net"),
    ("res2next", "res2net"),
)

# The first word's size or version, from its first digit on ("resnet50d", "convnextv2", "deit3", "dla102x2"):
# what the fallback drops.
_TRAILING_VERSION = re.compile(r"v?\d.*$")


def family_of(arch: str) -> str:
    """The architecture family of a timm architecture name (see :data:`FAMILY_PREFIXES`).

    >>> [family_of(a) for a in ("tf_efficientnetv2_s", "seresnext50_32x4d", "deit3_small_patch16_224")]
    ['efficientnet', 'resnext', 'deit']
    """
    name = arch
    for port in PORT_PREFIXES:
        name = name.removeprefix(port)
    for prefix, family in FAMILY_PREFIXES:
        if name.startswith(prefix):
            return family
    word = name.split("_", 1)[0]
    return _TRAILING_VERSION.sub("", word) or word


#: Words of a timm tag that name training data, and the name the catalogue gives it. ImageNet-21k and -22k
#: are the same data set (the full ImageNet); ``laiona`` is a LAION-2B subset; ``swag`` and ``seer`` name
#: methods whose papers train on Instagram images (3.6 B and 1 B); ``openai`` is CLIP's own image-text data.
TAG_DATA: Mapping[str, str] = {
    "in1k": "in1k",
    "in12k": "in12k",
    "in21k": "in21k",
    "in22k": "in21k",
    "laion2b": "laion2b",
    "laiona": "laion2b",
    "openai": "openai",
    "jft": "jft300m",
    "ig1b": "ig1b",
    "swag": "ig3b",
    "seer": "ig1b",
    "yfcc100m": "yfcc100m",
    "m38m": "m38m",
    "m30m": "m30m",
    "webli": "webli",
}


#: Words of a timm tag that name a method trained on more than ImageNet-1k without saying on what: EVA's
#: ``clip`` (its image-text data), PaddleClas's ``ssld`` (distillation with unlabelled extra images), NextViT's
#: ``6m`` (6 M images). A tag with one of them and no other data word has unknown pretraining data, not in1k.
UNNAMED_DATA_WORDS = frozenset({"clip", "ssld", "6m"})


def pretrain_from_tag(tag: str) -> str:
    """The data a tag names, in training order, without the final ImageNet-1k fine-tune (``+``-joined).

    Empty when the tag names a method with more data but not the data (:data:`UNNAMED_DATA_WORDS`).

    >>> [pretrain_from_tag(t) for t in ("a1_in1k", "augreg_in21k_ft_in1k", "laion2b_ft_in12k_in1k", "clip_ft_in1k")]
    ['in1k', 'in21k', 'laion2b+in12k', '']
    """
    words = tag.split("_")
    data: list[str] = []
    for word in words:
        name = TAG_DATA.get(word)
        if name is not None and name not in data:
            data.append(name)
    if len(data) > 1 and data[-1] == "in1k":
        data.pop()
    if data == ["in1k"] and UNNAMED_DATA_WORDS.intersection(words):
        return ""
    return "+".join(data)


def pretrain_of(arch: str, tag: str, tags_of_arch: int, metadata: Mapping[str, str]) -> str:
    """Pretraining data: timm's ``model_metadata-in1k.csv`` where it applies, else what the tag names.

    The metadata file is keyed by architecture only (it predates tags), so it is used only for an
    architecture with one tag in the results (otherwise which tag it describes is a guess), and only when it
    refines the tag rather than contradicts it (``in1k-dist`` for a tag that says ``in1k``; the one
    contradiction, ``mixer_l16_224`` as ``in1k`` for ``goog_in21k_ft_in1k``, keeps the tag's ``in21k``).
    """
    from_tag = pretrain_from_tag(tag)
    listed = metadata.get(arch, "")
    if tags_of_arch == 1 and listed and listed.split("-", 1)[0] == from_tag:
        return listed
    return from_tag


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# timm prints numbers of 1000 and more with thousands separators ("1,014.45", quoted in the csv).
_GROUPED = re.compile(r"\d{1,3}(,\d{3})+(\.\d+)?")


def _fixed(value: str, decimals: int) -> str:
    value = value.strip()
    if _GROUPED.fullmatch(value):
        value = value.replace(",", "")
    return f"{float(value):.{decimals}f}" if value else ""


def build_rows(results_dir: Path) -> list[dict[str, str]]:
    """The catalogue's rows (strings, as written), sorted by id."""
    evaluations: dict[str, list[dict[str, str]]] = {}
    for row in _read_csv(results_dir / RESULTS_FILE):
        evaluations.setdefault(row["model"], []).append(row)
    gpu = {(r["model"], r["infer_img_size"]): r for r in _read_csv(results_dir / GPU_FILE)}
    cpu = {(r["model"], r["infer_img_size"]): r for r in _read_csv(results_dir / CPU_FILE)}
    metadata = {r["model"]: r["pretrain"] for r in _read_csv(results_dir / METADATA_FILE)}
    tags_per_arch: dict[str, int] = {}
    for model_id in evaluations:
        arch = model_id.partition(".")[0]
        tags_per_arch[arch] = tags_per_arch.get(arch, 0) + 1

    rows = []
    for model_id in sorted(evaluations):
        arch, _, tag = model_id.partition(".")
        by_size = sorted(evaluations[model_id], key=lambda r: int(r["img_size"]))
        default, test = by_size[0], (by_size[-1] if len(by_size) > 1 else None)
        size = default["img_size"]
        gpu_row, cpu_row = gpu.get((arch, size)), cpu.get((arch, size))
        rows.append(
            {
                "id": model_id,
                "arch": arch,
                "tag": tag,
                "family": family_of(arch),
                "params_m": _fixed(default["param_count"], 2),
                "imagenet_top1": _fixed(default["top1"], 3),
                "imagenet_top5": _fixed(default["top5"], 3),
                "img_size": str(int(size)),
                "crop_pct": _fixed(default["crop_pct"], 3),
                "interpolation": default["interpolation"],
                "gmacs": _fixed(gpu_row["infer_gmacs"], 2) if gpu_row else "",
                "gpu_img_per_s": _fixed(gpu_row["infer_samples_per_sec"], 2) if gpu_row else "",
                "cpu_img_per_s": _fixed(cpu_row["infer_samples_per_sec"], 2) if cpu_row else "",
                "pretrain": pretrain_of(arch, tag, tags_per_arch[arch], metadata),
                "test_img_size": str(int(test["img_size"])) if test else "",
                "imagenet_top1_test": _fixed(test["top1"], 3) if test else "",
            }
        )
    return rows


def render_csv(rows: Iterable[Mapping[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def source_of(results_dir: Path) -> tuple[str, str]:
    """The commit and date named in the folder's SOURCE.md (40 hex digits, then a YYYY-MM-DD date)."""
    text = (results_dir / "SOURCE.md").read_text(encoding="utf-8") if (results_dir / "SOURCE.md").is_file() else ""
    commit = re.search(r"\b[0-9a-f]{40}\b", text)
    date = re.search(r"\b\d{4}-\d{2}-\d{2}\b", text[commit.end() :] if commit else "")
    if not commit or not date:
        raise SystemExit(
            f"{results_dir / 'SOURCE.md'} does not name the timm commit and its date: pass --source-commit and "
            "--source-date"
        )
    return commit.group(0), date.group(0)


_COLUMN_DOCS = {
    "id": "timm model id `arch.tag`",
    "arch": "timm architecture",
    "tag": "pretrained tag",
    "family": "architecture family (rules below)",
    "params_m": "parameters, millions (results-imagenet.csv `param_count`)",
    "imagenet_top1": "ImageNet-1k top-1 (%) at `img_size`",
    "imagenet_top5": "ImageNet-1k top-5 (%) at `img_size`",
    "img_size": "evaluation resolution: the pretrained config's input size",
    "crop_pct": "centre-crop fraction of that evaluation",
    "interpolation": "resize interpolation of that evaluation",
    "gmacs": f"GMACs at `img_size` ({GPU_FILE})",
    "gpu_img_per_s": "inference images/s at `img_size`, RTX 4090, AMP, PyTorch 2.9.1, timm's batch (mostly 1024) "
    f"({GPU_FILE})",
    "cpu_img_per_s": f"inference images/s at `img_size`, i7-12700H, fp32, torch.compile, batch 1 ({CPU_FILE})",
    "pretrain": "data seen before the ImageNet-1k fine-tune, `+`-joined in training order (rules below)",
    "test_img_size": "the config's larger test resolution, when timm evaluated one",
    "imagenet_top1_test": "ImageNet-1k top-1 (%) at `test_img_size`",
}


def render_source(commit: str, date: str, n_rows: int, csv_name: str) -> str:
    families = "\n".join(f"| `{prefix}` | {family} |" for prefix, family in FAMILY_PREFIXES)
    data = "\n".join(f"| `{word}` | {name} |" for word, name in TAG_DATA.items())
    columns = "\n".join(f"| `{name}` | {_COLUMN_DOCS[name]} |" for name in COLUMNS)
    return f"""# {csv_name}: where the numbers come from

Derived from the published results of timm (PyTorch Image Models), {SOURCE_REPO}, folder `results/` at
commit {commit} ({date}), licensed {SOURCE_LICENCE}. Files read: `{RESULTS_FILE}`, `{GPU_FILE}`,
`{CPU_FILE}`, `{METADATA_FILE}`. Changes: columns selected and joined as below, one row per model id
({n_rows} rows), numbers re-printed with fixed decimals. Generated by `benchmarks/build_model_catalogue.py`;
do not edit by hand.

## Columns

| column | meaning |
|---|---|
{columns}

Empty means the source has no number for that model at that resolution (never a guess or a neighbour).

## Rules

- One row per `arch.tag`: of the two evaluations timm publishes for some ids, the one at the pretrained
  config's `input_size` (the smaller), what `timm.data.resolve_model_data_config` uses; the other is in
  `test_img_size` / `imagenet_top1_test`.
- Throughput and GMACs join on (architecture, `img_size`): the benchmark files are keyed by
  architecture, so every tag of an architecture shares them.
- `family`: after dropping a `{"`/`".join(PORT_PREFIXES)}` prefix, the first prefix below that matches; otherwise
  the architecture's first `_`-word up to its first digit, without a `v` just before it (`dla102x2` -> dla,
  `convnextv2` -> convnext, `deit3` -> deit).

| prefix | family |
|---|---|
{families}

- `pretrain`: the tag's words below, in order, without the final `in1k` when something came before it
  (`augreg_in21k_ft_in1k` -> in21k, `laion2b_ft_in12k_in1k` -> laion2b+in12k, `a1_in1k` -> in1k).
  Empty when the tag names a method trained on more data without naming it (`{"`, `".join(sorted(UNNAMED_DATA_WORDS))}`,
  e.g. `clip_ft_in1k`).
  `{METADATA_FILE}` (keyed by architecture only) refines it (`in1k-dist`, `in21k-selfsl`, ...) where the
  architecture has a single tag and the file agrees with the tag.

| tag word | data |
|---|---|
{data}
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--timm-results", type=Path, required=True, help="a copy of timm's results/ folder")
    parser.add_argument("--out", type=Path, default=Path("service/builtin/model_catalogue.csv"))
    parser.add_argument("--source-commit", help="timm commit of the files (default: from the folder's SOURCE.md)")
    parser.add_argument("--source-date", help="that commit's date, YYYY-MM-DD (default: from SOURCE.md)")
    args = parser.parse_args(argv)

    if args.source_commit and args.source_date:
        commit, date = args.source_commit, args.source_date
    else:
        commit, date = source_of(args.timm_results)
    rows = build_rows(args.timm_results)
    source_path = args.out.with_suffix(".SOURCE.md")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # newline="" so the file has "\n" line ends on every platform: the output must be byte-identical.
    args.out.write_text(render_csv(rows), encoding="utf-8", newline="")
    source_path.write_text(render_source(commit, date, len(rows), args.out.name), encoding="utf-8", newline="")
    print(f"wrote {args.out} ({len(rows)} rows, {args.out.stat().st_size} bytes) and {source_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
