"""The ``backbone-rank`` command line: the typer app, its global options and the list of its commands.

The commands live in modules by group (catalog, rank, server, benchmark, finetune, demo, zoo; what they share
is in ``_common``). They are registered here, in one list, so that the order ``backbone-rank --help`` shows
is written down rather than following the order of imports. The modules import only typer, rich and the
standard library at import time; each command imports what it runs when it runs, so the CLI starts fast and
the listing commands never load torch.
"""

from __future__ import annotations

import logging

import typer

from service.cli import benchmark, catalog, demo, finetune, rank, server, zoo

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Training-free backbone ranking.")


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr.")) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


app.command("estimators")(catalog.list_estimators_command)
app.command("models")(catalog.list_models_command)
app.command("datasets")(catalog.list_datasets_command)
app.command("rank")(rank.rank_command)
app.command("serve")(server.serve_command)
app.command("worker")(server.worker_command)
app.command("benchmark")(benchmark.benchmark_command)
app.command("resummarize")(benchmark.resummarize_command)
app.command("report")(benchmark.report_command)
app.command("calibrate")(benchmark.calibrate_command)
app.command("finetune")(finetune.finetune_command)
app.command("demo")(demo.demo_command)
app.add_typer(zoo.zoo_app, name="zoo")
