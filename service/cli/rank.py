"""``backbone-rank rank``: the ranking command and its tables (the order, then the scores or, for many
backbones, the per-estimator ranks). ``demo`` prints its ranking with the same tables. Registered in
service/cli/__init__.py.
"""

from __future__ import annotations

import sys
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
    _justify,
    _local_runtime,
    _number,
    _print_result,
    _progress_bars,
    console,
    err_console,
)
from service.cli.server import _dataset_or_upload, _on_server, _refuse_offline_for_server, _upload_to_server


def rank_command(
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
    dataset: Annotated[
        str | None,
        typer.Argument(
            help="An image folder (class per sub-folder), a manifest (.csv/.jsonl with path,label), hf:PATH "
            "(a saved HuggingFace dataset), builtin:NAME or upload:ID (uploaded to the --server). Append #split to "
            "choose a split, e.g. data#val. Leave out with --upload."
        ),
    ] = None,
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
    executor: Annotated[
        str | None,
        typer.Option(
            help="Where the features are extracted: local (this process) or ray (actors on the Ray cluster of "
            "BACKBONE_RANK_RAY_ADDRESS, or a local one on 127.0.0.1 started for the run; pip install "
            "'backbone-rank[ray]'). Default: settings (BACKBONE_RANK_EXECUTOR, local). Same rows and scores either "
            "way.",
        ),
    ] = None,
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
    layer_scores: Annotated[
        bool,
        typer.Option(
            "--layer-scores",
            help="Also score every stage of each backbone (same forward pass) and say which layer to extract "
            "features from and how many stages to freeze when fine-tuning.",
        ),
    ] = False,
    bootstrap: Annotated[
        int,
        typer.Option(
            min=0,
            help="Half-sample replicates for each backbone's probability of being best (0: none). Each one refits "
            "the fusion's members (the packaged fusion, ridge probe + PARC + NCTI: ~0.1-0.5 s per backbone and "
            "replicate).",
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
    upload: Annotated[
        Path | None,
        typer.Option(
            "--upload",
            help="With --server: upload this local folder (one sub-folder per class; zipped to a temporary file) or "
            "archive (.zip, .tar, .tar.gz) to the server, which cannot see this machine's files, and rank on it "
            "(instead of DATASET). The same content uploaded again is not stored twice.",
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
        spec = _dataset_or_upload(dataset, upload, server, image_column, label_column, command="rank")
        request = _build_request(
            RankingRequest,
            dataset=spec,
            backbones=backbone,
            skip_unavailable=skip_unavailable,
            estimators=estimator or None,
            max_per_class=max_per_class,
            seed=seed,
            layer=layer,
            streaming=streaming,
            layer_scores=layer_scores,
            n_bootstrap=bootstrap,
            device=device,
            batch_size=batch_size,
            cache=cache,
            executor=executor,
            weights_dirs=[str(path) for path in weights_dir or []],
        )
        _refuse_offline_for_server(offline, server)
        if upload is not None and server is not None:
            # After the request was built: a mistyped option costs no upload.
            request = request.model_copy(update={"dataset": _upload_to_server(server, upload, json_output)})
        if server is not None:
            result: Any = _on_server(server, request, json_output)
        else:
            from service.pipeline.engine import rank

            with _progress_bars(enabled=not json_output or sys.stderr.isatty()) as on_progress:
                result = rank(request, _local_runtime(offline=offline), progress=on_progress)
    except (BackboneRankError, ValueError) as err:
        _exit_with(err)
    _print_result(result, json_output, _print_ranking)


#: Up to this many backbones the scores table has one column per backbone; beyond, a terminal cannot show the
#: values, and a matrix of per-estimator ranks (backbones as rows) is printed instead.
_SCORE_COLUMNS_MAX = 5


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
        table.add_column(column, justify=_justify(justify), no_wrap=column == "backbone")
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
    _print_left_out(result.get("unavailable") or [])
    _print_transfer(result["backbones"])
    _print_layers(result["backbones"])
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


def _print_transfer(rows: list[dict[str, Any]]) -> None:
    """How to transfer each backbone: the advised strategy in words, and what it costs next to a full fine-tune."""
    advised = [row for row in rows if row.get("transfer")]
    if not advised:
        return
    table = Table(
        title="How to transfer",
        caption="cost: passes over the training images (a forward pass = 1; a full fine-tune of 10 epochs = 30)",
    )
    for column in ("backbone", "advice", "cost"):
        table.add_column(
            column, no_wrap=column == "backbone", justify=_justify("right" if column == "cost" else "left")
        )
    for row in advised:
        transfer = row["transfer"]
        option = next((o for o in transfer["options"] if o["strategy"] == transfer["strategy"]), None)
        cost = _number(option["cost"]["passes"], "g") if option else "-"
        table.add_row(row["id"], escape(transfer["advice"]), cost)
    console.print(table)


def _print_layers(rows: list[dict[str, Any]]) -> None:
    """The layer advice of each backbone (``--layer-scores``), with the per-layer accuracy it reads."""
    advised = [row for row in rows if row.get("layers")]
    if not advised:
        return
    table = Table(title="Layers", caption="accuracy = leave-one-out ridge probe on each layer's pooled output")
    for column in ("backbone", "extract from", "advice", "accuracy by layer (input → head)"):
        table.add_column(column, no_wrap=column == "backbone")
    for row in advised:
        layers = row["layers"]
        by_layer = " · ".join(
            f"{layer['module']} {_number(layer['scores'].get(layers['decided_by']), '.2f')}"
            for layer in layers["layers"]
        )
        table.add_row(
            row["id"], layers["best_layer"], escape(layers.get("advice") or layers.get("note") or "-"), by_layer
        )
    console.print(table)


def _print_left_out(unavailable: list[dict[str, str]]) -> None:
    """The candidates a ranking left out, one line per reason (the full details are in --json): ids, and how to
    get them, as the first one's error says (its "To fix" part)."""
    by_code: dict[str, list[dict[str, str]]] = {}
    for item in unavailable:
        by_code.setdefault(item["code"], []).append(item)
    for code, items in by_code.items():
        ids = ", ".join(item["id"] for item in items)
        fix = items[0]["detail"].partition("To fix: ")[2] or items[0]["detail"]
        example = f" (for {items[0]['id']})" if len(items) > 1 else ""
        err_console.print(
            f"[yellow]left out[/] {len(items)} {escape('[' + code + ']')}: {escape(ids)}. To get them{example}: "
            f"{escape(fix)}",
            soft_wrap=True,
        )
