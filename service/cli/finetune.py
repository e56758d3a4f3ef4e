"""``backbone-rank finetune``: fine-tune one backbone (or the winner of a saved ranking), with its progress bars
and its summary. ``demo`` fine-tunes its winner with the same helpers. Registered in service/cli/__init__.py.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from service.cli._common import (
    ImageColumnOption,
    LabelColumnOption,
    OfflineOption,
    _build_request,
    _exit_with,
    _local_runtime,
    _print_result,
    _rich_progress,
    console,
    err_console,
)
from service.cli.server import _dataset_or_upload, _on_server, _refuse_offline_for_server, _upload_to_server


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
        str,
        typer.Option(
            help="linear (frozen backbone, new head), partial (last ~25% of blocks, or see --freeze-stages), full, "
            "or advised (score every layer on the training split first and do what that advises)."
        ),
    ] = "full",
    freeze_stages: Annotated[
        int | None,
        typer.Option(
            min=0, help="With --strategy partial: freeze the first N stages (as rank --layer-scores counts them)."
        ),
    ] = None,
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
    upload: Annotated[
        Path | None,
        typer.Option(
            "--upload",
            help="With --server: upload this local folder (one sub-folder per class, or train/val/test splits) or "
            "archive (.zip, .tar, .tar.gz) to the server, which cannot see this machine's files, and fine-tune on it "
            "(instead of DATASET, or of the --winner ranking's dataset).",
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
    if winner is None and dataset is None and upload is None:
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
            "freeze_stages": freeze_stages,
            "epochs": epochs,
            "lr_grid": lr or None,
            "seeds": seed or None,
            "batch_size": batch_size,
            "max_per_class": max_per_class,
            "input_size": input_size,
            "device": device,
            "weights_dirs": [str(path) for path in weights_dir or []],
        }
        spec = _dataset_or_upload(
            dataset, upload, server, image_column, label_column, command="fine-tune", required=winner is None
        )
        if spec is not None:
            fields["dataset"] = spec
        ranking = None
        if winner is not None:
            from service.pipeline.engine import winner_request

            ranking = _read_ranking(winner)
            request = _build_request(lambda **f: winner_request(ranking, **f), **fields)
        else:
            request = _build_request(FinetuneRequest, backbone=backbone, **fields)
        _refuse_offline_for_server(offline, server)
        if upload is not None and server is not None:
            # After the request was built: a mistyped option costs no upload.
            request = request.model_copy(update={"dataset": _upload_to_server(server, upload, json_output)})
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
    partial = result["config"].get("partial") or {}
    if "frozen_stages" in partial:
        console.print(
            f"frozen: stages 1-{partial['frozen_stages']} of {partial['stages']} (up to {partial['last_frozen']}); "
            f"trained from {partial['first_trained']}"
            if partial["frozen_stages"]
            else "frozen: nothing (freeze_stages 0)"
        )
    if result.get("advice"):
        console.print(f"advised: {escape(result['advice']['advice'] or '')}")
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
