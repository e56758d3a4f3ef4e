"""``backbone-rank benchmark``, ``resummarize``, ``report`` and ``calibrate``: run a suite, recompute a recorded
result's summary (the product's default order under a calibration), render a result as HTML, and fit the
calibration on benchmark results, with their tables. Together because they all read what benchmark writes.
Registered in service/cli/__init__.py.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from service.cli._common import (
    OfflineOption,
    _build_request,
    _exit_with,
    _local_runtime,
    _rich_progress,
    console,
    err_console,
)


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
    reuse: Annotated[
        list[Path] | None,
        typer.Option(
            "--reuse",
            metavar="RESULT.json",
            help="Take the (target, backbone) pairs of an earlier benchmark result as recorded instead of "
            "computing them, where they were produced under the same protocol (environment fingerprint, "
            "fine-tuning, images per class, input size); a mismatch is refused and named. Pairs scored with other "
            "estimators keep their fine-tuned ground truth and are ranked again (rescored). Repeatable.",
        ),
    ] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Also write the HTML report.")] = True,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap replicates per target for the CIs.")] = 500,
    p_best: Annotated[
        int,
        typer.Option(
            "--p-best",
            min=0,
            help="Check p_best: half-sample replicates of the default order's p_best per target (as `rank "
            "--bootstrap`), then how often the backbone given p >= 0.5 is the best (0: off; each replicate refits "
            "the fusion's members for every backbone).",
        ),
    ] = 0,
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
            p_best=p_best,
            device=device,
            reuse=[str(p) for p in reuse or []],
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
        caption="mean over targets [95% bootstrap CI]; the product's orders in bold (default: what `rank` returns), "
        "baselines in italics",
    )
    for column in ("method", "weighted τ", "Kendall τ", "Pearson r", "top-1 regret"):
        table.add_column(column, justify="left" if column == "method" else "right")
    ordered = sorted(
        result["summary"].items(),
        key=lambda kv: (
            not kv[1].get("is_product"),
            -(kv[1]["weighted_tau"]["mean"] if kv[1]["weighted_tau"]["mean"] is not None else -9),
        ),
    )
    for name, entry in ordered:
        label = (
            f"[bold]{name}[/]" if entry.get("is_product") else f"[italic]{name}[/]" if entry["is_baseline"] else name
        )
        table.add_row(label, *(_fmt_ci(entry[m]) for m in ("weighted_tau", "kendall_tau", "pearson", "top1_regret")))
    console.print(table)
    calibration = (result.get("default_order") or {}).get("calibration")
    if result.get("default_order") is not None:
        console.print(
            "default order: "
            + (f"calibration {escape(str(calibration['path']))} ({calibration['created']})" if calibration else
               "no calibration (mean rank)")
        )  # fmt: skip
    check = result.get("p_best_check")
    if check:
        console.print(
            f"p_best ({check['n_bootstrap']} half-samples): a backbone got p >= 0.5 on {check['n_confident']} of "
            f"{check['n_targets']} targets and was the best on {check['n_confident_best']}; no backbone reached 0.5 "
            f"on {check['n_unconfident']}; mean p_best of the actual best {_fmt(check['mean_p_best_of_best'], '.2f')}"
        )
    for flag in result.get("ground_truth_flags") or []:
        console.print(f"[yellow]ground truths disagree[/]: {escape(flag['message'])}")
    cost = result.get("cost") or {}
    if cost.get("ratio"):
        console.print(
            f"ranking {cost['ranking_seconds']:.0f} s vs fine-tuning {cost['finetune_seconds']:.0f} s: "
            f"{cost['ratio']:.0f}x cheaper"
        )
    for skipped in result.get("skipped", {}).get("backbones", []):
        console.print(f"[yellow]skipped backbone[/] {escape(skipped['backbone'])}: {escape(skipped['reason'])}")


def resummarize_command(
    result_file: Annotated[
        Path, typer.Argument(metavar="RESULT.json", help="A benchmark result (`backbone-rank benchmark`).")
    ],
    calibration: Annotated[
        str,
        typer.Option(
            help="What the default order applies: 'default' (the packaged calibration), a calibration JSON, or "
            "'none' (the mean-rank order)."
        ),
    ] = "default",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the JSON (and the CSV beside it) [default: RESULT.json]."),
    ] = None,
    bootstrap: Annotated[
        int | None,
        typer.Option(min=0, help="Bootstrap replicates per target for the CIs [default: the recorded run's, or 500]."),
    ] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Also write the HTML report.")] = True,
) -> None:
    """Recompute a recorded benchmark's summary with the product's default order and predicted accuracy under a
    calibration, and its checks, from the recorded scores (nothing is rerun)."""
    from service.errors import InvalidCalibration, InvalidResult

    try:
        from service.contract import BenchmarkResult
        from service.pipeline.benchmark.default_order import resummarize
        from service.pipeline.benchmark.results import write_result_files

        try:
            document = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidResult(
                f"cannot read {str(result_file)!r} as a benchmark result ({type(err).__name__}: {err})"
            ) from None
        if (
            not isinstance(document, dict)
            or document.get("kind", "benchmark") != "benchmark"
            or "targets" not in document
        ):
            raise InvalidResult(
                f"{str(result_file)!r} is not a benchmark result (`backbone-rank benchmark` writes one)"
            )
        try:
            resummarize(document, None if calibration == "none" else calibration, n_bootstrap=bootstrap)
            typed = BenchmarkResult.model_validate(document)
        except (KeyError, TypeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
            raise InvalidResult(
                f"{str(result_file)!r} is a malformed benchmark result ({type(err).__name__}: {err})"
            ) from None
        files = {k: str(v) for k, v in write_result_files(document, output or result_file).items()}
    except (InvalidResult, InvalidCalibration) as err:
        _exit_with(err)
    except OSError as err:
        err_console.print(f"[bold red]error[/]: cannot write the result: {escape(str(err))}")
        raise typer.Exit(2) from None
    _print_benchmark(document)
    if report:
        from service.reports import render_report

        html_path = Path(files["json"]).with_suffix(".html")
        html_path.write_text(render_report(typed), encoding="utf-8")
        files["html"] = str(html_path)
    for kind, path in files.items():
        console.print(f"{kind}: {escape(path)}")


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
        float | None,
        typer.Option(
            min=0.0,
            help="Fusion members must have cost at most this many seconds per (target, backbone) in the benchmark "
            "(p_best recomputes them on every half-sample; default: no limit); the priors are free.",
        ),
    ] = None,
    fusable: Annotated[
        list[str] | None,
        typer.Option(
            "--fusable",
            help="Estimators allowed as fusion members (repeatable; default: every estimator). For a quick "
            "p_best: the ones without a D x D decomposition, "
            "service.pipeline.calibration.selection.FUSABLE_ESTIMATORS.",
        ),
    ] = None,
) -> None:
    """Fit predicted accuracy and the fused ranking on benchmark results; print the leave-one-target-out table."""
    from service.errors import InvalidCalibration

    try:
        from service.pipeline.calibration.fit import fit_calibration
        from service.pipeline.calibration.model import save_calibration

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
            max_member_seconds=math.inf if max_member_seconds is None else max_member_seconds,
            fusable=frozenset(fusable) if fusable else None,
            kinds=_builtin_kinds(results),
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


def _builtin_kinds(results: list[Any]) -> dict[str, str]:
    """The kind of each built-in target, for results recorded before targets carried their kind."""
    from service.builtin.datasets import BUILTIN_DATASETS

    kinds = {}
    for result in results:
        for target in (result.get("targets") or []) if isinstance(result, dict) else []:
            dataset = str(target.get("dataset") or "") if isinstance(target, dict) else ""
            info = BUILTIN_DATASETS.get(dataset.removeprefix("builtin:").split("#")[0])
            if info is not None and dataset.startswith("builtin:"):
                kinds[str(target.get("name"))] = info.kind
    return kinds


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
        + f"; fused top-1 regret {_fmt(fusion.get('fused_mean_top1_regret'))}"
    )
    if fusion.get("per_kind"):
        console.print(
            "leave-one-kind-out, fused τw: "
            + ", ".join(f"{row['kind']} {_fmt(row['weighted_tau'], '+.3f')}" for row in fusion["per_kind"])
        )
    if evaluation.get("fusable") is not None or evaluation.get("max_member_seconds") is not None:
        console.print(
            f"best single allowed as a member: {fusion.get('best_fusable_single')} "
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
