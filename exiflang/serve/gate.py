"""Admission control for model calls: at most N running, at most Q waiting, a deadline for each.

The model's calls are CPU-bound and synchronous, so they run on a private thread pool of
``workers`` threads.  :meth:`Gate.run` admits a call only while fewer than ``workers + queue``
calls are admitted (running or waiting); beyond that it raises :class:`Busy` at once (the
service answers 503 with ``Retry-After``), so memory stays bounded by ``workers + queue`` decoded
photos however many clients connect.  A call that outlives its deadline raises
:class:`DeadlineExceeded` (504) to its client, but its slot is only freed when the thread really
finishes: a running torch call cannot be cancelled, and counting it as free would let more
computations run at once than ``workers``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Busy(Exception):
    """Every running and waiting slot is taken; ``retry_after`` seconds is a fair wait."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"the service is busy: every slot is taken; retry in {retry_after} s")


class DeadlineExceeded(Exception):
    """The call did not finish within the per-request deadline (seconds in ``deadline``)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        super().__init__(f"the request took longer than the {deadline:g} s deadline")


class Gate:
    """``workers`` concurrent model calls, ``queue`` more waiting, each within ``deadline`` seconds."""

    def __init__(self, workers: int = 1, queue: int = 4, deadline: float = 120.0) -> None:
        if workers < 1 or queue < 0 or deadline <= 0:
            raise ValueError(f"workers >= 1, queue >= 0 and deadline > 0 (got {workers}, {queue}, {deadline})")
        self.workers, self.queue, self.deadline = workers, queue, deadline
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="exiflang-model")
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting; changed only under _lock
        self._running = 0
        self._recent: list[float] = []  # durations of the last calls, for Retry-After

    def state(self) -> dict[str, int]:
        """``running``, ``waiting``, ``workers``, ``queue`` (JSON-ready, for /v1/health)."""
        with self._lock:
            return {
                "running": self._running,
                "waiting": self._admitted - self._running,
                "workers": self.workers,
                "queue": self.queue,
            }

    def retry_after(self) -> int:
        """Whole seconds until a slot is likely free: the median recent call time, at least 1."""
        with self._lock:
            recent = sorted(self._recent)
        return max(1, round(recent[len(recent) // 2])) if recent else 1

    def _admit(self) -> None:
        with self._lock:
            if self._admitted >= self.workers + self.queue:
                full = True
            else:
                full, self._admitted = False, self._admitted + 1
        if full:
            raise Busy(self.retry_after())

    def _call(self, fn: Callable[[], T]) -> T:
        """Runs on a pool thread; the slot is released here, when the work is really over."""
        start = time.monotonic()
        with self._lock:
            self._running += 1
        try:
            return fn()
        finally:
            with self._lock:
                self._running -= 1
                self._admitted -= 1
                self._recent = (self._recent + [time.monotonic() - start])[-16:]

    async def run(self, fn: Callable[[], T], deadline: float | None = None) -> T:
        """``fn()`` on the pool: :class:`Busy` when full, :class:`DeadlineExceeded` past the deadline."""
        self._admit()
        limit = self.deadline if deadline is None else min(deadline, self.deadline)
        try:
            future = self._pool.submit(self._call, fn)
        except BaseException:
            with self._lock:
                self._admitted -= 1
            raise
        try:
            # shield: a timed-out or disconnected request must not cancel the pool future
            # (cancelling a queued future would skip _call and leak its slot).
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout=limit)
        except asyncio.TimeoutError:
            if future.cancel():  # still queued: it never ran, so give its slot back now
                with self._lock:
                    self._admitted -= 1
            raise DeadlineExceeded(limit) from None

    def close(self) -> None:
        """Stop taking work; running calls finish (the process is exiting)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
