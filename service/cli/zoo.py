"""``backbone-rank zoo list`` and ``zoo build``: the built-in model zoo (service/builtin/zoo.py), a typer sub-app
added to the main one in service/cli/__init__.py. ``demo`` builds a missing zoo with the same progress bars.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from service.cli._common import _exit_with, _justify, _rich_progress, console, err_console

zoo_app = typer.Typer(
    no_args_is_help=True, help="The built-in model zoo: small timm models trained offline (use as zoo:NAME)."
)


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
