"""``backbone-rank serve`` and ``worker``, and what ``rank``/``finetune`` ``--server`` do: send the request to a
service (service/client.py) instead of running it here, after uploading a local dataset with ``--upload``.
Registered in service/cli/__init__.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli._common import _OPTION_OF, _dataset_spec, _exit_with, _progress_bars


def _refuse_offline_for_server(offline: bool, server: str | None) -> None:
    if offline and server is not None:
        from service.errors import InvalidRequest

        raise InvalidRequest(
            "--offline applies to local runs; a server downloads as its own settings say (BACKBONE_RANK_OFFLINE, "
            "BACKBONE_RANK_HUB_ALLOWED_REPOS)",
            fields=["offline"],
        )


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


def _dataset_or_upload(
    dataset: str | None,
    upload: Path | None,
    server: str | None,
    image_column: str | None,
    label_column: str | None,
    *,
    command: str,
    required: bool = True,
) -> Any:
    """The request's dataset: DATASET's spec, or for ``--upload`` a stand-in until the upload has its id (the
    caller replaces it after building the request, so a mistyped option costs no upload); None when neither is
    given and the command does not require one (``finetune --winner`` takes the ranking's)."""
    from service.contract import DatasetSpec
    from service.errors import InvalidRequest

    if upload is None:
        if dataset is None:
            if not required:
                return None
            raise InvalidRequest(
                f"give the DATASET to {command} (or, with --server, a local folder to send with --upload)"
            )
        return _dataset_spec(
            dataset, for_server=server is not None, image_column=image_column, label_column=label_column
        )
    if server is None:
        raise InvalidRequest(
            "--upload sends a local folder to a server: give --server URL too (locally, pass the folder)"
        )
    if dataset is not None:
        raise InvalidRequest("give either DATASET or --upload PATH, not both")
    if image_column or label_column:
        raise InvalidRequest("--image-column/--label-column apply to hf://datasets/... references, not to --upload")
    return DatasetSpec(kind="upload", name="0" * 64)


def _upload_to_server(server: str, path: Path, json_output: bool) -> Any:
    """Upload a local folder or archive to ``server`` (``--upload``); its ``upload:<id>`` as a request's dataset. Says
    what the server kept (classes, images, files left out) on stderr."""
    import contextlib

    from rich.markup import escape

    from service.cli._common import err_console
    from service.client import Client, ClientError
    from service.contract import DatasetSpec

    spinner = err_console.status(f"uploading {escape(str(path))}") if not json_output else contextlib.nullcontext()
    try:
        with Client(server) as client, spinner:
            uploaded = client.upload_dataset(path)
    except ClientError as err:
        _exit_with(err)
    skipped = sum(uploaded["skipped"].values())
    err_console.print(
        f"uploaded {escape(str(path))} as {uploaded['ref']}: {uploaded['n_images']} images, "
        f"{len(uploaded['classes'])} classes" + (f", {skipped} files left out" if skipped else ""),
        soft_wrap=True,
    )
    return DatasetSpec(**uploaded["dataset"])


def serve_command(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: settings, 8000).")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Worker processes to run and supervise.")] = 1,
) -> None:
    """Serve the HTTP API (uvicorn) with worker processes; jobs live in the SQLite store of the settings."""
    from service.config import get_settings
    from service.jobs.schema import StoreCorrupt
    from service.serve import run_server

    try:
        run_server(get_settings(), host=host, port=port, workers=workers)
    except StoreCorrupt as err:
        _exit_with(err)


def worker_command() -> None:
    """Run one job worker (claims queued rankings and fine-tunes from the store) until SIGTERM/SIGINT."""
    from service.jobs.worker import main as worker_main

    worker_main()
