"""One extraction's connection to Ray: the cluster the settings name, or a local cluster bound to 127.0.0.1.

Separate from the driver (extraction.py) because it holds the one delicate part, what a local cluster listens on:
Ray decides at its import whether a node is a cluster member, and by default its processes then listen on every
network interface, even with ``_node_ip_address="127.0.0.1"``. With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the
environment when Ray is imported, every Ray socket binds the loopback interface. :func:`import_ray` sets it before
the first import when a local cluster is wanted, and :func:`ray_session` refuses to start one if Ray was imported
without it. The address comes from the settings only (service/config.py, ``ray_address``), never from a request.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from service.errors import ExecutorUnavailable
from service.pipeline.scaleout.check import RAY_EXTRA

__all__ = ["LOOPBACK_ENV", "RaySession", "import_ray", "ray_session"]

_logger = logging.getLogger(__name__)

#: Ray reads it once, at import: "0" makes a node use (and listen on) the loopback address only.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray(*, local_cluster: bool) -> Any:
    """The ``ray`` module, imported now (an optional extra, imported only by the executor ``ray``).

    Typed ``Any``: this package uses a handful of Ray's functions, and its annotations are not complete enough for
    a strict check. With ``local_cluster`` and Ray not yet imported, :data:`LOOPBACK_ENV` is set to "0" first (unless
    the environment sets it), so that the local cluster listens on 127.0.0.1 only.
    """
    if local_cluster and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        return importlib.import_module("ray")
    except ImportError as err:
        raise ExecutorUnavailable(
            f"the executor 'ray' needs Ray, which cannot be imported here ({err}): {RAY_EXTRA}", executor="ray"
        ) from None


@dataclass(frozen=True)
class RaySession:
    """A usable connection: ``ray`` the module; ``cluster`` is ``"local"`` (started for this extraction),
    ``"address"`` (connected to the settings' address) or ``"existing"`` (this process was connected already)."""

    ray: Any
    cluster: str


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[RaySession]:
    """Connect to ``address`` (``auto``, ``ray://HOST:PORT``, ``HOST:PORT``) or, when it is empty, start a local
    cluster on 127.0.0.1 (no dashboard); disconnect, or shut the local cluster down, on leaving.

    A process already connected to Ray (``ray.is_initialized()``, e.g. a program that called ``ray.init`` itself)
    keeps its connection, whatever the address, and it stays open afterwards.

    Raises
    ------
    ExecutorUnavailable
        Ray is not installed, or a local cluster is asked for in a process that imported Ray without
        :data:`LOOPBACK_ENV` = "0" (it would listen on every interface).
    """
    local = not address
    ray = import_ray(local_cluster=local)
    if ray.is_initialized():
        _logger.info("using this process's existing Ray connection")
        yield RaySession(ray, "existing")
        return
    if local:
        if os.environ.get(LOOPBACK_ENV) != "0":
            raise ExecutorUnavailable(
                f"a local Ray cluster would listen on every network interface: Ray was imported before "
                f"{LOOPBACK_ENV}=0 could be set; set it in the environment, or set BACKBONE_RANK_RAY_ADDRESS to a "
                "cluster",
                executor="ray",
            )
        _logger.info("starting a local Ray cluster on 127.0.0.1")
        ray.init(
            address="local",
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    else:
        _logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield RaySession(ray, "local" if local else "address")
    finally:
        ray.shutdown()
