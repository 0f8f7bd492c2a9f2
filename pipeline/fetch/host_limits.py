"""Per-host politeness as a fetch thread sees it: one slot per request, granted by the job's governor.

A :class:`HostLimiter` is what a :class:`~exiflang.pipeline.fetch.download.Downloader` and its threads use:
``with limiter.slot(host) as slot:`` blocks until the host may be sent one more request, and
the ``with`` body reports what the host answered (``slot.answered(status, retry_after)``) so a
429/503 pauses the host for the whole job.  The limits themselves live in a
:class:`~exiflang.pipeline.fetch.politeness.HostGovernor`: in this process when it is the job's only one
(``--executor local --workers 1``, tests), or in the driver, reached through
:class:`~exiflang.pipeline.fetch.governor_service.RemoteGovernor`, when many processes share the job.

A caller may offer to *park* instead of waiting out a host's pause (``slot(host, park=...)``):
if the host is paused for at least :data:`PARK_MIN_S` more and ``park()`` grants a parking space,
:class:`HostPaused` is raised at once and no slot is held; a shorter pause, or no space left, and
the thread waits for the host as usual.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from exiflang.pipeline.fetch.politeness import (
    ANSWERED,
    NO_ANSWER,
    THROTTLE_CODES,
    THROTTLED,
    GovernorLimits,
    HostGovernor,
    Paused,
)

_OWNERS = itertools.count(1)
# Pauses shorter than this are waited out in the thread even when the caller could park: a
# parked row makes its shard spill the rows finished behind it, which costs more than a
# second's wait (the simulated crawl's one-second Retry-Afters parked ~2,300 rows and spilled
# 157 MB over 6,000 rows when every pause parked).
PARK_MIN_S = 2.0


class Governor(Protocol):
    """What a limiter needs of a governor, local or remote."""

    def acquire(
        self, host: str, owner: int, hold: float, wait_max: float, unless_paused: bool = False
    ) -> int | Paused | None: ...

    def release(self, lease: int, outcome: int, retry_after: float | None = None) -> None: ...


class LimiterClosed(Exception):
    """The limiter was closed while a thread waited for a slot."""


class HostPaused(Exception):
    """``host`` is paused for ``seconds`` more and the caller took a parking space instead of waiting.

    ``waited``: seconds this ask had already queued for a slot (politeness: not the row's time).
    """

    def __init__(self, host: str, seconds: float, waited: float) -> None:
        super().__init__(f"{host} paused for {seconds:.1f} s")
        self.host, self.seconds, self.waited = host, seconds, waited


class Slot:
    """One granted request to a host; tell it what the host answered."""

    __slots__ = ("lease", "outcome", "retry_after", "waited")

    def __init__(self, waited: float, lease: int) -> None:
        self.waited = waited  # seconds queued for politeness (not the server's time)
        self.lease = lease
        self.outcome = NO_ANSWER
        self.retry_after: float | None = None

    def answered(self, http_status: int | None, retry_after: float | None = None) -> None:
        """Record the host's answer: None (no answer), a 429/503 (throttled) or any other status."""
        if http_status is None:
            self.outcome = NO_ANSWER
        elif http_status in THROTTLE_CODES:
            self.outcome, self.retry_after = THROTTLED, retry_after
        else:
            self.outcome = ANSWERED


class HostLimiter:
    """Slots from ``governor`` for this process's threads; :meth:`close` frees waiting threads.

    ``hold`` bounds how long one request may keep its slot (the governor takes it back after
    that if never given back); ``wait_max`` is how long one ask may block before the thread
    asks again, which is also how soon :meth:`close` is noticed.
    """

    def __init__(self, governor: Governor | None = None, hold: float = 120.0, wait_max: float = 1.0) -> None:
        self.governor: Governor = governor if governor is not None else HostGovernor()
        self.hold, self.wait_max = hold, wait_max
        self.owner = next(_OWNERS)
        self._closed = threading.Event()

    @classmethod
    def local(cls, concurrency: int = 8, rate: float = 0.0, **limits: float) -> HostLimiter:
        """A limiter with a governor of its own (the limits hold for this limiter's threads)."""
        return cls(HostGovernor(GovernorLimits(concurrency, rate, **limits)))

    @contextmanager
    def slot(self, host: str, park: Callable[[], bool] | None = None) -> Iterator[Slot]:
        """Hold one of ``host``'s slots for the body of the ``with``; raises LimiterClosed.

        ``park``: asked when the host is paused for PARK_MIN_S or more; True (a parking space is the caller's) raises
        :class:`HostPaused` before any slot is held, False makes this call wait for the host.
        """
        t0 = time.monotonic()
        granted = None
        while granted is None:
            if self._closed.is_set():
                raise LimiterClosed("downloader closed")
            got = self.governor.acquire(host, self.owner, self.hold, self.wait_max, park is not None)
            if isinstance(got, Paused):
                if got.seconds < PARK_MIN_S:  # a short pause: wait it out here
                    got = self.governor.acquire(host, self.owner, self.hold, self.wait_max)
                elif park is not None and park():
                    raise HostPaused(host, got.seconds, time.monotonic() - t0)
                else:
                    park = None  # no space left: wait for the host here, as without parking
                    continue
            granted = got if not isinstance(got, Paused) else None
        slot = Slot(time.monotonic() - t0, granted)
        try:
            yield slot
        finally:
            self.governor.release(slot.lease, slot.outcome, slot.retry_after)

    def close(self) -> None:
        """Stop waiting for slots (slots held are given back as their requests end)."""
        self._closed.set()

    # Views for tests and logs, when the governor is in this process.
    def in_use(self, host: str) -> int:
        return self.governor.in_use(host) if isinstance(self.governor, HostGovernor) else 0

    def __len__(self) -> int:
        return len(self.governor) if isinstance(self.governor, HostGovernor) else 0
