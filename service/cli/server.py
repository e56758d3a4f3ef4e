"""``backbone-rank serve`` and ``worker``, and what ``rank``/``finetune`` ``--server`` do: send the request to a
service (service/client.py) instead of running it here. Registered in service/cli/__init__.py.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from service.cli._common import _OPTION_OF, _exit_with, _progress_bars


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
