"""The resume checkpoint of a benchmark run: append-only JSON lines of finished (stage, target, backbone) pieces.

Separate from the run (:mod:`service.pipeline.benchmark.benchmark`) because it knows nothing of suites or
models, only how a piece is recorded durably (one fsync per line) and read back after a crash.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)


class _Checkpoint:
    """Append-only JSON lines of finished work; keyed by (stage, target, backbone)."""

    def __init__(self, path: Path | None, resume: bool) -> None:
        self.path = path
        self.done: dict[tuple[str, str, str], Any] = {}
        if path is None:
            return
        if resume and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self.done[(record["stage"], record["target"], record["backbone"])] = record["data"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash: redo that piece
            _logger.info("resuming from %s: %d finished pieces", path, len(self.done))
        elif path.exists():
            path.unlink()

    def get(self, stage: str, target: str, backbone: str) -> Any:
        return self.done.get((stage, target, backbone))

    def put(self, stage: str, target: str, backbone: str, data: Any) -> None:
        self.done[(stage, target, backbone)] = data
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"stage": stage, "target": target, "backbone": backbone, "data": data}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
