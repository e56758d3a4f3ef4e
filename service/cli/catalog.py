"""``backbone-rank estimators``, ``models`` and ``datasets``: the listings of what can be ranked with what.

Listing only: these commands import neither torch nor the engine (the web process's catalogue, service/catalog.py,
and the built-in dataset descriptions), so they answer in a moment. Registered in service/cli/__init__.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from service.cli._common import _exit_with, _justify, console


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


def list_datasets_command(
    builtin_dir: Annotated[
        Path | None,
        typer.Option("--builtin-dir", help="Where built-in datasets are materialized (default: <cache dir>/builtin)."),
    ] = None,
) -> None:
    """List the built-in datasets (use as builtin:NAME): role, kind, classes, relation to the sources, materialized."""
    from service.builtin.datasets import BUILTIN_DATASETS, builtin_dataset_manifest
    from service.config import get_settings

    # The same directory `rank` materializes into, so "materialized" tells whether a rank will build first.
    directory = builtin_dir if builtin_dir is not None else get_settings().cache_dir / "builtin"
    table = Table(title="Built-in datasets", caption=f"materialized under {escape(str(directory))}")
    for column, justify in (
        ("name", "left"),
        ("role", "left"),
        ("kind", "left"),
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
        table.add_row(info.name, info.role, info.kind, str(classes), escape(info.relation), state)
    console.print(table)
