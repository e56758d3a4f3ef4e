"""Self-contained HTML reports for benchmark, ranking and fine-tune results.

Each page is one HTML file: inline CSS, figures embedded as base64 PNG, no script and nothing loaded
from the network, so it can be archived, mailed or served as is. Rendering needs jinja2, matplotlib
(Agg, no pyplot) and numpy only: the web process, which never imports torch, serves these pages.

>>> from service.reports import render_report
>>> html = render_report(result)          # doctest: +SKIP
"""

from ._page import result_kind
from .benchmark import honest_reading, render_benchmark_report
from .finetune import render_finetune_report
from .ranking import render_ranking_report
from .render import render_report

__all__ = [
    "honest_reading",
    "render_benchmark_report",
    "render_finetune_report",
    "render_ranking_report",
    "render_report",
    "result_kind",
]
