"""Whether an executor can run in this installation, asked without importing Ray or torch.

Separate from the rest of the package so that the web process (service/validate.py) can refuse a ranking with the
executor ``ray`` on a server without Ray before queueing it, and the engine (service/pipeline/engine.py) can refuse
it before loading anything; both give the same error.
"""

from __future__ import annotations

import importlib.util

from service.errors import ExecutorUnavailable

__all__ = ["RAY_EXTRA", "ray_installed", "require_executor"]

#: How to install the executor ``ray`` (the ``ray`` extra of pyproject.toml pins ``ray[data]``).
RAY_EXTRA = "pip install 'backbone-rank[ray]'"


def ray_installed() -> bool:
    """True when ``import ray`` would find Ray (it is not imported here)."""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a half-installed package, or a module object without a spec
        return False


def require_executor(executor: str) -> None:
    """Raise :class:`~service.errors.ExecutorUnavailable` when ``executor`` cannot run here (``ray`` without Ray)."""
    if executor == "ray" and not ray_installed():
        raise ExecutorUnavailable(
            f"the executor 'ray' needs Ray, which is not installed here: {RAY_EXTRA} (or use the executor 'local')",
            executor=executor,
        )
