"""``backbone-rank demo`` (``make demo``): build the zoo if missing, rank it with real ImageNet backbones on a
built-in target, fine-tune the winner and write the reports; or, ``--synthetic``, score generated features
(service/demo.py). Strings the other commands together, so it imports their helpers. Registered in
service/cli/__init__.py.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from service.cli._common import _exit_with, _local_runtime, _progress_bars, console
from service.cli.finetune import _finetune_progress, _print_finetune
from service.cli.rank import _print_ranking
from service.cli.zoo import _zoo_progress

#: The embedded default: real ImageNet backbones shipped by pip wheels, and an untrained control.
DEMO_BACKBONES = (
    "tf_efficientnet_lite0.in1k",
    "tf_efficientnet_lite1.in1k",
    "tf_efficientnet_lite2.in1k",
    "random:tf_efficientnet_lite0",
)


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
