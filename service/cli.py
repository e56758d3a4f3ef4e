"""The ``backbone-rank`` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Training-free backbone ranking.")
console = Console()
err_console = Console(stderr=True)


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
    for column, justify in (("name", "left"), ("role", "left"), ("classes", "right"), ("relation", "left"),
                            ("materialized", "left")):
        table.add_column(column, justify=justify, no_wrap=column == "name")  # type: ignore[arg-type]
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
            help="timm id (arch.tag), arch.tag@/path/weights.safetensors, local-dir:/path, zoo:NAME, or "
            "random:arch for an untrained baseline. Repeat for each candidate.",
        ),
    ],
    estimator: Annotated[
        list[str] | None,
        typer.Option("--estimator", "-e", help="Estimators to compute (default: all that apply). Repeatable."),
    ] = None,
    max_per_class: Annotated[
        int | None, typer.Option(min=1, help="Rank on a seeded sample of at most N images per class.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the per-class sample.")] = 0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON (schema: service.pipeline.rank).")
    ] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ... (default: settings, auto).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per batch (default: settings, 64).")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse and store extracted features.")] = True,
    weights_dir: Annotated[
        list[Path] | None, typer.Option("--weights-dir", help="Extra directories with <id>.safetensors files.")
    ] = None,
    layer: Annotated[
        int | None, typer.Option(help="Score an intermediate layer (timm forward_intermediates index).")
    ] = None,
) -> None:
    """Rank backbones on a labelled image dataset with training-free transferability scores."""
    from service.config import get_settings
    from service.errors import BackboneRankError

    settings = get_settings()
    try:
        from service.pipeline.cache import FeatureCache
        from service.pipeline.rank import rank_backbones

        feature_cache = (
            FeatureCache(settings.cache_dir / "features", settings.feature_cache_max_bytes) if cache else None
        )
        with _progress_bars(enabled=not json_output or sys.stderr.isatty()) as on_progress:
            result = rank_backbones(
                dataset,
                backbone,
                estimators=estimator or None,
                roots=settings.data_roots or None,
                max_per_class=max_per_class,
                seed=seed,
                min_per_class=settings.min_samples_per_class,
                cache=feature_cache,
                weights_dirs=[*settings.weights_dirs, *(weights_dir or [])],
                hf_cache_dir=settings.hf_cache_dir,
                device=device or settings.device,
                batch_size=batch_size or settings.batch_size,
                layer=layer,
                progress=on_progress,
                builtin_dir=settings.cache_dir / "builtin",
            )
    except BackboneRankError as err:
        err_console.print(f"[bold red]error[/] {escape(f'[{err.code}]')}: {escape(err.detail)}")
        raise typer.Exit(2) from None
    except ValueError as err:
        err_console.print(f"[bold red]error[/]: {escape(str(err))}")
        raise typer.Exit(2) from None
    if json_output:
        typer.echo(json.dumps(result, indent=2, default=_json_default))
        return
    _print_ranking(result)


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    """Rich progress bars on stderr, one per backbone, fed by extraction progress events."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bars:
        tasks: dict[str, Any] = {}

        def on_progress(event: Any) -> None:
            if event.backbone not in tasks:
                tasks[event.backbone] = bars.add_task(event.backbone, total=event.total)
            label = f"{event.backbone} (cached)" if event.stage == "cached" else event.backbone
            bars.update(tasks[event.backbone], completed=event.done, total=event.total, description=label)

        yield on_progress


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _print_ranking(result: dict[str, Any]) -> None:
    summary = result["dataset"]
    title = (
        f"{summary['n_images']} images, {summary['n_classes']} classes"
        + (f", {result['failed_images']} undecodable skipped" if result["failed_images"] else "")
        + (f", {sum(summary['skipped'].values())} files skipped while listing" if summary["skipped"] else "")
    )
    table = Table(title=f"Ranking — {title}", caption="fused rank = mean of the per-estimator ranks")
    for column, justify in (("rank", "right"), ("backbone", "left"), ("mean rank", "right"), ("D", "right"),
                            ("weights", "left"), ("extract s", "right"), ("cached", "center")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in result["backbones"]:
        table.add_row(
            str(row["rank"]), row["id"], f"{row['mean_rank']:.2f}", str(row["feature_dim"]),
            str(row["weights_source"]), f"{row['seconds']['extract']:.1f}", "yes" if row["from_cache"] else "",
        )
    console.print(table)
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


#: The embedded default: real ImageNet backbones shipped by pip wheels, and an untrained control.
DEMO_BACKBONES = (
    "tf_efficientnet_lite0.in1k",
    "tf_efficientnet_lite1.in1k",
    "tf_efficientnet_lite2.in1k",
    "random:tf_efficientnet_lite0",
)


@app.command("demo")
def demo_command(
    target: Annotated[str, typer.Option(help="Built-in target dataset (`backbone-rank datasets`).")] = "glyphs-greek",
    backbone: Annotated[
        list[str] | None, typer.Option("--backbone", "-b", help="Backbones (default: the embedded ImageNet ones).")
    ] = None,
    max_per_class: Annotated[int, typer.Option(min=2, help="Images per class to rank on.")] = 10,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Instead: score generated features of known quality (seconds).")
    ] = False,
    n_per_class: Annotated[int, typer.Option(min=2, help="--synthetic: samples per class.")] = 60,
    n_classes: Annotated[int, typer.Option(min=2, help="--synthetic: number of classes.")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Rank the embedded real backbones on a built-in target, offline (or, --synthetic, generated features)."""
    if not synthetic:
        console.print(
            f"Ranking {', '.join(backbone or DEMO_BACKBONES)} on builtin:{target} ({max_per_class} images per class; "
            "the dataset and the converted weights are built on first use)."
        )
        rank_command(
            dataset=f"builtin:{target}", backbone=list(backbone or DEMO_BACKBONES), max_per_class=max_per_class,
            seed=seed,
        )
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


if __name__ == "__main__":
    app()
