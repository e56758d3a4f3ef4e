"""What every report page shares: the jinja2 environment, rendering a template, the guard that turns a malformed
result into :class:`~service.errors.InvalidResult`, and the small view helpers the three pages use.

Separate from :mod:`service.reports.render` (the dispatch) so that the per-kind pages
(:mod:`service.reports.benchmark`, :mod:`service.reports.ranking`, :mod:`service.reports.finetune`) can use it
while the dispatch imports them, without an import cycle.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import jinja2

from service.errors import InvalidResult

from ._format import NA, as_float, fmt_percent

_logger = logging.getLogger(__name__)


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("service.reports", "templates"),
        autoescape=True,  # ids, class names and paths are user input
        undefined=jinja2.StrictUndefined,  # a typo in a template is an error, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment


def _render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


F = TypeVar("F", bound=Callable[..., str])


def _malformed_is_invalid(kind: str) -> Callable[[F], F]:
    """A result whose structure is wrong (a list where an object belongs ...) -> InvalidResult, not a TypeError."""

    def decorate(render: F) -> F:
        @functools.wraps(render)
        def wrapper(result: Any) -> str:
            if not isinstance(result, Mapping):
                raise InvalidResult(f"a {kind} result must be a JSON object, got {type(result).__name__}")
            try:
                return render(result)
            except InvalidResult:
                raise
            except (AttributeError, KeyError, TypeError, IndexError, ValueError) as err:
                _logger.debug("cannot render %s result", kind, exc_info=True)
                raise InvalidResult(f"malformed {kind} result ({type(err).__name__}: {err})") from err

        return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature F describes

    return decorate


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else []


def _direction(higher_is_better: Any) -> str:
    return "↓" if higher_is_better is False else "↑"


def _mean_std_percent(value: Any) -> str:
    """``{"mean", "std"}`` (or a bare fraction) as ``71.2 ± 1.3``, in percent."""
    if not isinstance(value, Mapping):
        return fmt_percent(value)
    mean, std = fmt_percent(value.get("mean")), as_float(value.get("std"))
    return mean if std is None or mean == NA else f"{mean} ± {100 * std:.1f}"
