"""The ``backbone-rank`` command line."""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Training-free backbone ranking.")
console = Console()


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


@app.command("demo")
def demo_command(
    n_per_class: int = typer.Option(60, min=2, help="Samples per class."),
    n_classes: int = typer.Option(12, min=2, help="Number of classes."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Score generated backbones of known quality with every estimator and rank them."""
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
