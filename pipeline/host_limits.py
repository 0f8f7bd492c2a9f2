"""Per-host politeness for one process: at most N requests in flight and R requests/s per host.

All threads of a process share one :class:`HostLimiter`.  Limits across processes are not
coordinated here: the driver divides the job's budget by the number of concurrent workers.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator


class _HostState:
    """Book-keeping for one host; guarded by the limiter's lock."""

    __slots__ = ("cond", "active", "users", "next_start")

    def __init__(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        self.active = 0          # requests holding a slot
        self.users = 0           # holders + waiters: the entry must outlive all of them
        self.next_start = 0.0    # monotonic time the next request may start (rate limit)


class HostLimiter:
    """A counting semaphore and a start-interval schedule per host, created on first use.

    ``concurrency <= 0`` means no concurrency cap; ``rate <= 0`` means no rate cap.
    The rate limit spaces request *starts* at least ``1 / rate`` seconds apart (a token
    bucket of depth one): no bursts, so a remote host never sees more than ``rate``
    requests in any one-second window from this process.
    """

    # Idle entries are dropped on release; ones still inside their rate interval linger
    # and are swept when the table has doubled, so millions of one-off hosts stay cheap.
    _SWEEP_MIN = 1024

    def __init__(self, concurrency: int = 8, rate: float = 0.0) -> None:
        self.concurrency = concurrency
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostState] = {}
        self._sweep_at = self._SWEEP_MIN

    @contextmanager
    def slot(self, host: str) -> Iterator[float]:
        """Hold one of ``host``'s slots for the body of the ``with``; yields seconds waited."""
        t0 = time.monotonic()
        state = self._acquire(host)
        try:
            delay = self._reserve_start(state)
            if delay > 0:
                # Sleep outside the lock; the slot is already ours, so the schedule holds.
                time.sleep(delay)
            yield time.monotonic() - t0
        finally:
            self._release(host, state)

    def in_use(self, host: str) -> int:
        """Requests currently holding a slot for ``host`` (for tests and logs)."""
        with self._lock:
            state = self._hosts.get(host)
            return state.active if state else 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._hosts)

    def _acquire(self, host: str) -> _HostState:
        with self._lock:
            state = self._hosts.get(host)
            if state is None:
                if len(self._hosts) >= self._sweep_at:
                    self._sweep()
                state = self._hosts[host] = _HostState(self._lock)
            state.users += 1
            try:
                while self.concurrency > 0 and state.active >= self.concurrency:
                    state.cond.wait()
            except BaseException:
                state.users -= 1
                raise
            state.active += 1
            return state

    def _reserve_start(self, state: _HostState) -> float:
        """Book the next free start time (after taking the slot, so waiters cannot bunch up)."""
        if self.interval <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            start = max(now, state.next_start)
            state.next_start = start + self.interval
            return start - now

    def _release(self, host: str, state: _HostState) -> None:
        with self._lock:
            state.active -= 1
            state.users -= 1
            state.cond.notify()
            if state.users == 0 and state.next_start <= time.monotonic():
                # Only when no one is waiting and the rate interval has passed: dropping it
                # earlier would let the next request skip its interval.
                self._hosts.pop(host, None)

    def _sweep(self) -> None:
        """Drop idle entries whose rate interval has passed (caller holds the lock)."""
        now = time.monotonic()
        for host in [h for h, s in self._hosts.items() if s.users == 0 and s.next_start <= now]:
            del self._hosts[host]
        self._sweep_at = max(self._SWEEP_MIN, 2 * len(self._hosts))
