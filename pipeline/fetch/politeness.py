"""The job-wide host governor: per-host concurrency cap, request rate and pauses after 429/503.

One :class:`HostGovernor` holds the politeness state of every host for the whole job; every
fetch thread of every worker process asks it for a *lease* (one request's slot) before it
opens a request to a host, and gives the lease back with what the host answered.  So the
limits hold for the job, not per thread or per process:

* **concurrency**: at most ``concurrency`` leases per host exist at once, job-wide;
* **rate**: lease start times for a host are spaced ``1 / rate`` s apart, job-wide (a token
  bucket of depth one: no bursts);
* **pauses**: a 429 or 503 pauses the host for everyone: no new lease is granted before
  ``Retry-After`` (seconds or HTTP date, parsed by the client) has passed, capped at
  ``retry_after_max`` (default 600 s).  Without ``Retry-After`` the pause doubles with each
  throttled answer, ``pause_base * 2**(strikes - 1)``, to the same cap; any other answer from
  the host resets the strikes.  Requests already in flight when a pause began (their lease's
  *epoch* is older) may extend the pause but do not count as new strikes, so sixteen threads
  throttled together double the pause once, not sixteen times.

Why one central authority rather than partitioning hosts among workers: a worker owns a
*shard* (contiguous source rows, written in source order, byte-identical on rerun), and a
shard's rows name any host; routing rows to a host's owner would break that contract.  Why
not a Ray actor: a Ray actor call costs ~1.4 ms wall and ~0.57 ms CPU here (measured), as much
as the fetch itself; a request over :mod:`exiflang.pipeline.fetch.governor_service`'s socket costs tens of
microseconds.  Leases are counted where they are granted, so a lease held by a worker that
dies is returned when its connection closes, and in any case ``hold`` seconds after it was
granted (the client asks for more than its attempt can last).

A caller that has better things to do than wait out a pause (a shard, which parks the row and
fetches other hosts' rows meanwhile: :mod:`exiflang.pipeline.shards.window`) asks with
``unless_paused``: a paused host then answers at once with :class:`Paused` (how long the pause
still runs) instead of a lease.

Nothing here does I/O; the blocking :meth:`HostGovernor.acquire` waits on a :class:`Clock`,
which tests replace with a fake one to honour a ten-minute ``Retry-After`` without waiting.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Outcomes reported with a lease when it is given back.
ANSWERED = 0  # the host answered normally (any status but 429/503): strikes reset
NO_ANSWER = 1  # timeout, connection error, or no request made: says nothing about the host
THROTTLED = 2  # 429 or 503: the host is paused for everyone

THROTTLE_CODES = frozenset({429, 503})


class Clock:
    """Monotonic time and the two ways of waiting on it; tests substitute a fake one."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, cond: threading.Condition, seconds: float) -> None:
        """Wait on ``cond`` (held by the caller) for at most ``seconds``."""
        cond.wait(seconds)


@dataclass(frozen=True)
class Paused:
    """The answer to an ``unless_paused`` request for a paused host: no lease, and how long it waits."""

    seconds: float  # > 0: what is left of the host's pause


@dataclass
class GovernorLimits:
    """The politeness settings of one job, for every host alike."""

    concurrency: int = 32  # leases per host at once, job-wide (<= 0: no cap)
    rate: float = 0.0  # request starts per second per host, job-wide (0: no cap)
    retry_after_max: float = 600.0  # longest pause a host's Retry-After can impose (s)
    pause_base: float = 1.0  # first pause after a 429/503 without Retry-After (s)


class _Host:
    """Book-keeping of one host; guarded by the governor's lock."""

    __slots__ = ("cond", "epoch", "leases", "next_start", "paused_until", "strikes", "waiters")

    def __init__(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        self.leases: set[int] = set()
        self.waiters = 0
        self.next_start = 0.0  # clock time the next request may start (rate)
        self.paused_until = 0.0  # clock time the host's pause ends
        self.strikes = 0  # throttled answers in a row without Retry-After
        self.epoch = 0  # bumped whenever a new pause begins


@dataclass
class _Lease:
    host: str
    owner: int
    epoch: int
    expires: float


class HostGovernor:
    """Grants per-host leases under :class:`GovernorLimits`; thread-safe, one per job."""

    _SWEEP_MIN = 1024  # idle host entries are swept once the table has doubled past this

    def __init__(self, limits: GovernorLimits | None = None, clock: Clock | None = None) -> None:
        self.limits = limits or GovernorLimits()
        self.clock = clock or Clock()
        # Called (under the lock) with (host, paused_until, epoch, strikes) whenever a host's
        # pause state changes: how a PauseBoard learns it (exiflang.pipeline.fetch.pause_board).
        self.on_change: Callable[[str, float, int, int], None] | None = None
        self._interval = 1.0 / self.limits.rate if self.limits.rate > 0 else 0.0
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}
        self._leases: dict[int, _Lease] = {}
        self._ids = itertools.count(1)
        self._sweep_at = self._SWEEP_MIN

    # ---- the three calls a client makes ------------------------------------------------
    def acquire(
        self, host: str, owner: int, hold: float, wait_max: float, unless_paused: bool = False
    ) -> int | Paused | None:
        """A lease id for one request to ``host``, or None if none came within ``wait_max`` s.

        Waits while the host is paused or at its cap, then books the next start time of the
        rate schedule and waits for it too (the lease is already ours, so waiters cannot
        bunch up).  The lease lapses ``hold`` s after its start if never given back.  With
        ``unless_paused``, a host that is paused (or becomes so while this call waits for room)
        answers :class:`Paused` at once instead.
        """
        clock = self.clock
        with self._lock:
            state = self._host(host)
            state.waiters += 1
            try:
                granted = self._wait_for_room(state, clock.now() + wait_max, unless_paused)
            finally:
                state.waiters -= 1
            if not granted:
                left = state.paused_until - clock.now()
                self._forget_if_idle(host, state)
                return Paused(left) if unless_paused and left > 0 else None
            lease, now = next(self._ids), clock.now()
            delay = self._book_start(state, now)
            state.leases.add(lease)
            # ``hold`` counts from the request's start, after its wait for the rate schedule.
            self._leases[lease] = _Lease(host, owner, state.epoch, now + delay + hold)
        if delay > 0:
            clock.sleep(delay)
        return lease

    def release(self, lease: int, outcome: int = NO_ANSWER, retry_after: float | None = None) -> None:
        """Give ``lease`` back with what the host answered (unknown or lapsed leases: ignored)."""
        with self._lock:
            held = self._leases.pop(lease, None)
            if held is None:
                return
            state = self._hosts[held.host]
            state.leases.discard(lease)
            self._settle(held.host, state, outcome, held.epoch, retry_after)

    def report(self, host: str, outcome: int, epoch: int, retry_after: float | None = None) -> None:
        """What ``host`` answered a request sent without a lease (a worker that read the host's
        pause ``epoch`` off a pause board): as :meth:`release`, minus the lease."""
        with self._lock:
            self._settle(host, self._host(host), outcome, epoch, retry_after)

    def drop_owner(self, owner: int) -> int:
        """Give back every lease ``owner`` still holds (a client gone); returns how many."""
        with self._lock:
            mine = [lease for lease, held in self._leases.items() if held.owner == owner]
        for lease in mine:
            self.release(lease)
        return len(mine)

    # ---- views for tests and logs -------------------------------------------------------
    def in_use(self, host: str) -> int:
        with self._lock:
            state = self._hosts.get(host)
            return len(state.leases) if state else 0

    def paused_for(self, host: str) -> float:
        """Seconds left of ``host``'s pause (0 when not paused)."""
        with self._lock:
            state = self._hosts.get(host)
            return max(0.0, state.paused_until - self.clock.now()) if state else 0.0

    def __len__(self) -> int:
        with self._lock:
            return len(self._hosts)

    # ---- internals (the caller holds the lock) -------------------------------------------
    def _host(self, host: str) -> _Host:
        state = self._hosts.get(host)
        if state is None:
            if len(self._hosts) >= self._sweep_at:
                self._sweep()
            state = self._hosts[host] = _Host(self._lock)
        return state

    def _settle(self, host: str, state: _Host, outcome: int, epoch: int, retry_after: float | None) -> None:
        before = (state.paused_until, state.epoch, state.strikes)
        if outcome == THROTTLED:
            self._pause(state, epoch, retry_after)
            state.cond.notify_all()  # waiters re-read the pause's end
        else:
            if outcome == ANSWERED:
                state.strikes = 0
            state.cond.notify()  # one slot came free
        after = (state.paused_until, state.epoch, state.strikes)
        if self.on_change is not None and after != before:
            self.on_change(host, *after)
        self._forget_if_idle(host, state)

    def _wait_for_room(self, state: _Host, until: float, unless_paused: bool = False) -> bool:
        """Wait until ``state`` is neither paused nor full, or ``until``; True if there is room.

        ``unless_paused``: False as soon as the host is paused (the caller will not wait for it).
        """
        cap = self.limits.concurrency
        while True:
            now = self.clock.now()
            self._reclaim_lapsed(state, now)
            if now >= state.paused_until and (cap <= 0 or len(state.leases) < cap):
                return True
            if now >= until or (unless_paused and now < state.paused_until):
                return False
            # A pause has a known end; a full host frees up on a release, which notifies.
            end = min(until, state.paused_until) if now < state.paused_until else until
            self.clock.wait(state.cond, max(end - now, 1e-4))

    def _book_start(self, state: _Host, now: float) -> float:
        if self._interval <= 0:
            return 0.0
        start = max(now, state.next_start)
        state.next_start = start + self._interval
        return start - now

    def _pause(self, state: _Host, epoch: int, retry_after: float | None) -> None:
        limits, now = self.limits, self.clock.now()
        if retry_after is not None:
            seconds = min(max(0.0, retry_after), limits.retry_after_max)
        else:
            if epoch == state.epoch:  # a new throttle, not one more answer from the same storm
                state.strikes += 1
            seconds = min(limits.pause_base * 2 ** max(0, state.strikes - 1), limits.retry_after_max)
        until = now + seconds
        if until > state.paused_until:
            if state.paused_until <= now:  # a new pause (not an extension of a running one)
                state.epoch += 1
            state.paused_until = until

    def _reclaim_lapsed(self, state: _Host, now: float) -> None:
        for lease in [lease for lease in state.leases if self._leases[lease].expires <= now]:
            state.leases.discard(lease)
            del self._leases[lease]

    def _forget_if_idle(self, host: str, state: _Host) -> None:
        if self._idle(state, self.clock.now()):
            del self._hosts[host]

    @staticmethod
    def _idle(state: _Host, now: float) -> bool:
        # Only once its rate interval and pause have passed: dropping the entry earlier
        # would let the next request skip them.
        return not state.leases and not state.waiters and state.next_start <= now and state.paused_until <= now

    def _sweep(self) -> None:
        now = self.clock.now()
        for host in [h for h, s in self._hosts.items() if self._idle(s, now)]:
            del self._hosts[host]
        self._sweep_at = max(self._SWEEP_MIN, 2 * len(self._hosts))
