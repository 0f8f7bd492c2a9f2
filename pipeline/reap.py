"""Ending a job's child processes: SIGTERM, a grace period, then SIGKILL for those still alive."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import psutil

GRACE_S = 5.0  # seconds between SIGTERM and SIGKILL: long enough for Ray's agents to flush


def terminate(procs: Iterable[int | psutil.Process], grace: float = GRACE_S) -> None:
    """SIGTERM every process of ``procs`` (pids or :class:`psutil.Process`) still alive, then
    SIGKILL and reap those alive after ``grace`` seconds.  Vanished processes are skipped."""
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
            proc.terminate()
            alive.append(proc)
    _, left = psutil.wait_procs(alive, timeout=grace)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if left:
        psutil.wait_procs(left, timeout=grace)
