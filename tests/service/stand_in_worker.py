"""A real worker process (``service.jobs.worker.main``) whose jobs are cheap stand-ins, for the tests that kill
workers and their parents: ``python -m tests.service.stand_in_worker [--exit-with-parent --parent-pid N]``, its
settings from the environment (``BACKBONE_RANK_CACHE_DIR``, ...).

A job's request is ``{"steps": N, "done_file": PATH}``: N progress events 0.05 s apart, then one line
``<job id> <pid>`` appended to ``done_file``, so a test counts how often a job ran to its end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from service.jobs.executor import JobContext
from service.jobs.worker import command_line, main


def run(request: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
    steps = int(request["steps"])
    for step in range(steps):
        ctx.progress({"stage": "extract", "done": step, "total": steps}, force=True)
        time.sleep(0.05)
    with open(request["done_file"], "a") as fh:
        fh.write(f"{ctx.job_id} {os.getpid()}\n")
    return {"steps": steps}


if __name__ == "__main__":
    main(**command_line(sys.argv[1:]), executors={"ranking": (run, None), "finetune": (run, None)})
