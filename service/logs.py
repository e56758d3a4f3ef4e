"""JSON-lines logging for the service processes (web and workers), on stdlib ``logging``.

One JSON object per line on stderr: ``ts``, ``level``, ``logger``, ``msg``, ``pid`` and whatever a call
passes in ``extra=`` (``job_id``, ``kind``, ...); ``exc`` holds a traceback. Only the entry points of
``backbone-rank serve`` and ``backbone-rank worker`` call :func:`configure_logging`; importing a module
never touches logging configuration.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
# (uvicorn adds "color_message", an ANSI-coloured copy of msg.)
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_logging(level: str | int | None = None) -> None:
    """Send the root logger's records to stderr as JSON lines (level: argument, ``BACKBONE_RANK_LOG_LEVEL``
    or INFO). Replaces existing root handlers, so calling it twice is harmless."""
    level = level or os.environ.get("BACKBONE_RANK_LOG_LEVEL", "INFO")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
