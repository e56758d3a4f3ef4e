"""What every ``backbone-rank`` command shares: the consoles, error reporting, request building, the options
that several commands take, the local runtime and the progress bars.

Separate from the command modules so that they share one copy of each: ``_exit_with``'s one-line error format,
``_build_request``'s option names in its messages, one ``_local_runtime`` (tests/contract/test_cli_requests.py
replaces it in each command module that calls it). Imports nothing of the service at module level; the helpers
import what they use when called, so the CLI starts fast and the listing commands never load torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, cast

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

if TYPE_CHECKING:
    from rich.console import JustifyMethod


#: Line width when the output is not a terminal (piped or redirected) and COLUMNS is not set: rich would fall back
#: to 80 columns there and cut table cells (backbone ids as ``tf_eff…``); tables are as wide as their content.
_NON_TTY_WIDTH = 10_000


class _Console(Console):
    """A rich console that does not cut its output at 80 columns when its stream is not a terminal.

    On a terminal (or with ``COLUMNS`` set explicitly) the width is rich's; decided at every print, so a
    replaced ``sys.stdout`` (pipes, ``CliRunner``) is seen.
    """

    @property
    def size(self) -> ConsoleDimensions:
        import os

        dimensions = Console.size.fget(self)  # type: ignore[attr-defined]  # rich's stubs type size as a plain attribute
        if self.is_terminal or os.environ.get("COLUMNS", "").isdigit():
            return dimensions
        return ConsoleDimensions(_NON_TTY_WIDTH, dimensions.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]  # as above


console = _Console()
err_console = _Console(stderr=True)

#: The CLI option behind each request field, for error messages.
_OPTION_OF = {
    "backbones": "--backbone",
    "estimators": "--estimator",
    "n_bootstrap": "--bootstrap",
    "weights_dirs": "--weights-dir",
    "lr_grid": "--lr",
    "seeds": "--seed",
    "targets": "--target",
    "backbone_map": "--backbone NAME=ID",
    "per_class": "--per-class",
    "dataset": "DATASET",
}


def _build_request(model: Callable[..., Any], **fields: Any) -> Any:
    """The request model from CLI options (None: not given, the model's default applies); a value the model
    refuses is an ``invalid_request`` error naming the option."""
    from pydantic import ValidationError

    from service.errors import InvalidRequest

    try:
        return model(**{name: value for name, value in fields.items() if value is not None})
    except ValidationError as err:
        problems = []
        for error in err.errors():
            where = error["loc"][0] if error["loc"] else ""
            option = _OPTION_OF.get(str(where), "--" + str(where).replace("_", "-")) if where else "the request"
            problems.append(f"{option}: {error['msg']}")
        raise InvalidRequest("; ".join(problems)) from None


#: ``--image-column`` / ``--label-column``: part of the dataset reference (hub datasets).
ImageColumnOption = Annotated[
    str | None, typer.Option(help="hf://datasets/... only: the image column (default: detected).")
]
LabelColumnOption = Annotated[
    str | None, typer.Option(help="hf://datasets/... only: the label column (default: detected).")
]


def _dataset_spec(
    text: str, *, for_server: bool, image_column: str | None = None, label_column: str | None = None
) -> Any:
    """A dataset argument (``builtin:NAME``, ``hf://datasets/ORG/NAME``, ``hf:PATH``, a folder or manifest,
    ``#split``) as the request's spec, with the hub columns if given. For a server, a relative path typed here means
    this machine's path: it is made absolute (the server would resolve it against its own working directory)."""
    import dataclasses

    from service.contract import DatasetSpec
    from service.pipeline.data.refs import parse_dataset_ref

    ref = parse_dataset_ref(text)
    if image_column or label_column:
        ref = dataclasses.replace(ref, image_column=image_column, label_column=label_column)
    spec = ref.to_dict()
    if for_server and "path" in spec and not Path(spec["path"]).is_absolute() and not spec["path"].startswith("~"):
        spec["path"] = str(Path(spec["path"]).absolute())
    return DatasetSpec(**spec)


def _local_runtime(*, offline: bool = False) -> Any:
    """The settings' runtime for a local run, with this process's registries filled (service.bootstrap);
    ``offline`` (``--offline``) turns hub downloads off whatever the settings say."""
    from service.bootstrap import cli_runtime, start
    from service.config import get_settings

    settings = get_settings()
    if offline:
        settings = settings.model_copy(update={"offline": True})
    start(settings)
    return cli_runtime(settings)


#: ``--offline``: a local run reads weights only from local places (a server follows its own settings).
OfflineOption = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Download nothing: use only weights already in the HF cache, weights dirs and the zoo (also "
        "HF_HUB_OFFLINE=1 or BACKBONE_RANK_OFFLINE=1). Without it, missing timm weights are fetched from the hub.",
    ),
]


def _print_result(result: Any, json_output: bool, print_table: Callable[[dict[str, Any]], None]) -> None:
    """A command's result model: its JSON document on stdout with --json (the API's schema), else its tables."""
    if json_output:
        typer.echo(result.model_dump_json(indent=2))
    else:
        print_table(result.model_dump(mode="json"))


def _justify(value: str) -> JustifyMethod:
    """A column alignment from the plain strings of the column tables ("left", "right", "center")."""
    if value not in ("default", "left", "center", "right", "full"):
        raise ValueError(f"not a column alignment: {value!r}")
    return cast("JustifyMethod", value)


def _exit_with(err: Exception) -> NoReturn:
    """Report a user-fixable error in one line on stderr (``error [code]: detail`` for the coded ones) and exit 2."""
    code, detail = getattr(err, "code", None), getattr(err, "detail", None)
    if code is not None and detail is not None:
        err_console.print(f"[bold red]error[/] {escape(f'[{code}]')}: {escape(detail)}")
    else:
        err_console.print(f"[bold red]error[/]: {escape(str(err))}")
    raise typer.Exit(2) from None


def _rich_progress(*, transient: bool) -> Any:
    """rich progress bars on stderr: description, bar, done/total, elapsed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=err_console, transient=transient)


#: Progress stages after the extraction, with their bar's label (service.pipeline.features.extract.ProgressEvent).
_AFTER_EXTRACTION = {"score": "scoring the backbones", "p_best": "p(best): half-sample replicates"}


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[Callable[[Any], None] | None]:
    """Rich progress bars on stderr, one per backbone, fed by extraction progress events."""
    if not enabled:
        yield None
        return
    with _rich_progress(transient=True) as bars:
        tasks: dict[str, Any] = {}

        def on_progress(event: Any) -> None:
            # extraction: one bar per backbone; then one bar for scoring and one for the p_best replicates
            key = event.stage if event.stage in _AFTER_EXTRACTION else event.backbone
            suffix = {"cached": " (cached)", "download": " (downloading, bytes)"}.get(event.stage, "")
            label = _AFTER_EXTRACTION.get(event.stage) or f"{event.backbone}{suffix}"
            if key not in tasks:
                tasks[key] = bars.add_task(label, total=event.total)
            bars.update(tasks[key], completed=event.done, total=event.total, description=label)

        yield on_progress


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
