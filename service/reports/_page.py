"""What every report page shares: the jinja2 environment, rendering a template, reading a result into its typed model
(:func:`typed_result`, the one place a JSON document is validated, with the errors every page raises), and the small
view helpers the pages use.

Separate from :mod:`service.reports.render` (the dispatch) so that the per-kind pages
(:mod:`service.reports.benchmark`, :mod:`service.reports.ranking`, :mod:`service.reports.finetune`) can use it
while the dispatch imports them, without an import cycle.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, TypeVar

import jinja2
from pydantic import BaseModel, ValidationError

from service.contract import AnyResult, BenchmarkResult, FinetuneResult, RankingResult, load_result
from service.contract import result_kind as contract_result_kind
from service.errors import InvalidResult

from ._format import NA, as_float, fmt_percent

__all__ = ["result_kind", "typed_result"]


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


def result_kind(result: Any) -> str:
    """``"benchmark"``, ``"ranking"`` or ``"finetune"`` (:func:`service.contract.result_kind`: the ``kind``, or the
    keys of a version-1 file); anything else -> :class:`InvalidResult`."""
    if isinstance(result, BaseModel):
        return str(getattr(result, "kind", ""))
    if not isinstance(result, Mapping):
        raise InvalidResult(f"a result must be a JSON object, got {type(result).__name__}")
    kind = contract_result_kind(dict(result))
    if kind is not None:
        return kind
    keys = ", ".join(sorted(map(str, result.keys()))[:12]) or "none"
    raise InvalidResult(
        'not a backbone-rank result: expected a benchmark result ("kind": "benchmark"), a ranking result '
        f"(`backbone-rank rank --json`) or a fine-tune result (`backbone-rank finetune --json`); got keys: {keys}"
    )


def typed_result(result: Mapping[str, Any] | AnyResult) -> AnyResult:
    """``result`` as its typed model (:func:`service.contract.load_result`, any schema version); a document that
    does not validate is an :class:`InvalidResult` naming the first problems."""
    if isinstance(result, RankingResult | FinetuneResult | BenchmarkResult):
        return result
    kind = result_kind(result)
    try:
        return load_result(dict(result))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'][1:])) or '(top level)'}: {e['msg']}" for e in err.errors()[:5]
        )
        raise InvalidResult(f"malformed {kind} result ({err.error_count()} problem(s)): {problems}") from None
    except ValueError as err:
        raise InvalidResult(str(err)) from None


R = TypeVar("R", RankingResult, FinetuneResult, BenchmarkResult)


def _typed_as(result: R | Mapping[str, Any], model: type[R], label: str) -> R:
    """``result`` as ``model`` through :func:`typed_result`, for the per-kind pages, which also take a document."""
    if not isinstance(result, BaseModel | Mapping):
        raise InvalidResult(f"a {label} result must be a JSON object, got {type(result).__name__}")
    typed = typed_result(result)
    if not isinstance(typed, model):
        raise InvalidResult(f"not a {label} result: got a {typed.kind} result")
    return typed


def _direction(higher_is_better: Any) -> str:
    return "↓" if higher_is_better is False else "↑"


def _mean_std_percent(mean: Any, std: Any) -> str:
    """A mean and its standard deviation (fractions) as ``71.2 ± 1.3``, in percent; the mean alone without a std."""
    text, spread = fmt_percent(mean), as_float(std)
    return text if spread is None or text == NA else f"{text} ± {100 * spread:.1f}"
