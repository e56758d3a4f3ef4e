"""Build the report pages: typed result -> view model (formatted strings, figures) -> jinja2 template -> HTML.

Every page is one self-contained HTML file: inline CSS, figures as base64 PNG ``<img>`` tags, no script,
no external font, so it can be mailed, archived or opened offline. Templates autoescape everything:
backbone ids, class names and dataset paths come from users.

The view models are built in Python from the typed result (:mod:`service.contract.results`), not in the templates,
so that a null or a non-finite number becomes "n/a" in one place and the templates only lay out strings. Each kind
has its module (:mod:`service.reports.benchmark`, :mod:`service.reports.ranking`, :mod:`service.reports.finetune`)
over the shared machinery of :mod:`service.reports._page`, which reads a result of any schema version into its typed
model (:func:`~service.reports._page.typed_result`); this module dispatches that model on its kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.contract import AnyResult, FinetuneResult, RankingResult

from ._page import typed_result
from .benchmark import render_benchmark_report
from .finetune import render_finetune_report
from .ranking import render_ranking_report

__all__ = ["render_report"]


def render_report(result: Mapping[str, Any] | AnyResult) -> str:
    """Render any result (its typed model, or a JSON document of any schema version) as one self-contained HTML
    page, dispatching on its kind.

    Raises
    ------
    InvalidResult
        (a ``ValueError``) when ``result`` is not a benchmark, ranking or fine-tune result, or is malformed.
    """
    typed = typed_result(result)
    if isinstance(typed, RankingResult):
        return render_ranking_report(typed)
    if isinstance(typed, FinetuneResult):
        return render_finetune_report(typed)
    return render_benchmark_report(typed)
