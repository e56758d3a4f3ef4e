"""Build the report pages: result dict -> view model (formatted strings, figures) -> jinja2 template -> HTML.

Every page is one self-contained HTML file: inline CSS, figures as base64 PNG ``<img>`` tags, no script,
no external font, so it can be mailed, archived or opened offline. Templates autoescape everything:
backbone ids, class names and dataset paths come from users.

The view models are built in Python, not in the templates, so that a null, a missing key or a non-finite
number becomes "n/a" in one place and the templates only lay out strings. Each kind has its module
(:mod:`service.reports.benchmark`, :mod:`service.reports.ranking`, :mod:`service.reports.finetune`) over the
shared machinery of :mod:`service.reports._page`; this module reads a result of any schema version into its
typed model and dispatches on its kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from service.contract import AnyResult, BenchmarkResult, FinetuneResult, RankingResult, load_result
from service.contract import result_kind as contract_result_kind
from service.errors import InvalidResult

from .benchmark import render_benchmark_report
from .finetune import render_finetune_report
from .ranking import render_ranking_report

__all__ = ["render_report", "result_kind", "typed_result"]


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


def render_report(result: Mapping[str, Any] | AnyResult) -> str:
    """Render any result (its typed model, or a JSON document of any schema version) as one self-contained HTML
    page, dispatching on its kind.

    Raises
    ------
    InvalidResult
        (a ``ValueError``) when ``result`` is not a benchmark, ranking or fine-tune result, or is malformed.
    """
    typed = typed_result(result)
    renderers = {
        "benchmark": render_benchmark_report,
        "ranking": render_ranking_report,
        "finetune": render_finetune_report,
    }
    return renderers[typed.kind](typed.model_dump(mode="json"))
