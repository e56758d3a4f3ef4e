"""Which process claimed a job, and whether that process is provably dead.

Separate from :mod:`service.jobs.store` because it reads the operating system (``/proc``), not the database. A claim
records the claiming process (:class:`ProcessIdentity`: its host, pid and start time); a job whose worker was killed
can then be requeued within a second or two by whoever sweeps on the same host (the web process's reaper, another
worker's claim) instead of showing ``running`` until its lease (60 s by default) runs out.

"Provably" is the point: a job is taken back early only when the sweeping process and the worker share one host
identity (host name, kernel boot id and pid namespace, so pids mean the same process to both) and that pid no longer
runs the process that claimed: it is gone, a zombie, or a different process reusing the pid (another start time,
read from ``/proc/<pid>/stat``). Anything else (another host, another container, no ``/proc``, an unreadable entry)
is left to the lease.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessIdentity", "current_process", "host_identity", "process_identity", "provably_dead"]

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessIdentity:
    """One process, as a claim records it: ``host`` (:func:`host_identity`), ``pid`` and ``started`` (clock ticks
    after boot, field 22 of ``/proc/<pid>/stat``: a reused pid has another)."""

    host: str
    pid: int
    started: int


@functools.cache
def host_identity() -> str | None:
    """``hostname/boot id/pid namespace`` of this process, or None where there is no ``/proc`` to read them from
    (then no claim of this host is ever reclaimed early)."""
    try:
        boot_id = (_PROC / "sys/kernel/random/boot_id").read_text().strip()
        pid_namespace = os.readlink(_PROC / "self/ns/pid")
    except OSError:
        return None
    return f"{socket.gethostname()}/{boot_id}/{pid_namespace}"


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time)`` of ``pid``, or None when no such process exists.

    Raises
    ------
    OSError
        The entry exists but cannot be read (e.g. ``/proc`` mounted with ``hidepid``).
    ValueError
        The entry does not parse.
    """
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after its last ")".
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19])


def process_identity(pid: int) -> ProcessIdentity | None:
    """The identity of the running process ``pid`` on this host, or None where it cannot be told (no such process,
    no ``/proc``)."""
    host = host_identity()
    if host is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        stat = _stat(pid)
        if stat is not None:
            return ProcessIdentity(host, pid, stat[1])
    return None


def current_process() -> ProcessIdentity | None:
    """This process's identity (what its claims record), or None where it cannot be told."""
    return process_identity(os.getpid())


def provably_dead(process: ProcessIdentity) -> bool:
    """True only when ``process`` ran on this host and certainly runs no more (gone, a zombie, or its pid now
    another process's); False when alive, elsewhere, or not knowable."""
    if process.host != host_identity() or process.pid <= 0:
        return False
    try:
        stat = _stat(process.pid)
    except (OSError, ValueError):
        return False
    if stat is None:
        return True
    state, started = stat
    return state in ("Z", "X", "x") or started != process.started
