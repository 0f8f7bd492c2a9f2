"""A shard's fetch window: rows handled on a thread pool, yielded in source order, and rows of a
paused host parked outside the window until the pause ends.

Why parking: a shard writes its rows in source order (its tar and table are byte-identical on
every run: resume and determinism depend on it), through a window of ``2 * threads`` rows in
flight, which bounds the photo bytes held at once.  A row whose host is paused (a 429/503 with
``Retry-After``) used to wait in its thread and keep its place in the window; within a window's
width the window's head was such a row and the whole shard stopped for the pause, and with it
every other host's rows (measured: during a 15-s storm on one of nine hosts the others fell to
25-32% of their pace; docs/scale.md).

Here, when a row's next request would wait for a paused host, the handler may *park* it instead
(:class:`Parked`: the row's small fetch state, no bytes): it leaves its thread and the window,
and is handed to the pool again once the pause is over (the host's governor still decides; a
host paused again parks it again).  Its place in the output is kept: results finished behind
a parked row wait in memory while the window has room; once it is full they are *spilled*,
latest first, to an anonymous temporary file (pickled, bytes included) to make room for more
rows, and read back in order when the parked row is done.  So the consumer still sees every row
exactly once, in source order, with the same result as without parking, and a short pause
(a one-second ``Retry-After``) costs no disk at all.

Bounds, for one shard:

* memory: at most ``2 * threads`` rows' results (running or finished, with their bytes), plus
  one small record per parked row (the fetch state; the row itself is the shard's already) and
  an offset per spilled result;
* parked rows: at most ``max_parked`` at once.  Beyond that, a row waits for its paused host in
  its thread, keeping its place in the window (the behaviour without parking: the shard slows
  to the pause, memory stays bounded).  ``max_parked = 0`` turns parking off;
* disk: the spill file holds at most the shard's own results (its tar's bytes, pickled), and
  is deleted when the shard ends, whatever way it ends.

A shard whose only unfinished rows are parked waits (idle) for the earliest pause to end.
"""

from __future__ import annotations

import heapq
import pickle
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Generic, TypeVar

R = TypeVar("R")  # a source row
T = TypeVar("T")  # a finished row's result (picklable)


@dataclass
class Parked:
    """A handler's answer for a row that waits for a paused host: its state and the pause left."""

    state: Any  # what the handler needs to go on (no photo bytes)
    seconds: float  # how long the host's pause still runs (>= 0)


# handler(row, state, park) -> the row's result, or Parked.  ``state`` is None on the first call,
# else the Parked.state it returned; ``park()`` True grants the row a parking space.
Handler = Callable[[R, Any, Callable[[], bool]], "T | Parked"]


class ParkingLot:
    """At most ``capacity`` parked rows at once; thread-safe (fetch threads take, the shard frees)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self.used = 0
        self.peak = 0  # most parked at once, for the shard's stats
        self.total = 0  # parkings over the shard (a row parked twice counts twice)
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Reserve a space; False when the lot is full."""
        with self._lock:
            if self.used >= self.capacity:
                return False
            self.used += 1
            self.total += 1
            self.peak = max(self.peak, self.used)
            return True

    def leave(self) -> None:
        with self._lock:
            self.used -= 1


class _Spill:
    """Finished results that wait for an earlier, parked row: pickled to an anonymous temp file."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._where: dict[int, tuple[int, int]] = {}  # position -> (offset, length)
        self.count = 0  # results spilled over the shard
        self.bytes = 0

    def __contains__(self, pos: int) -> bool:
        return pos in self._where

    def put(self, pos: int, value: Any) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="exiflang-spill-")  # noqa: SIM115 - closed in close()
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        offset = self._file.seek(0, 2)
        self._file.write(data)
        self._where[pos] = (offset, len(data))
        self.count += 1
        self.bytes += len(data)

    def take(self, pos: int) -> Any:
        assert self._file is not None
        offset, length = self._where.pop(pos)
        self._file.seek(offset)
        return pickle.loads(self._file.read(length))  # our own file, written above

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Window(Generic[R, T]):
    """Runs ``handle`` over rows on ``threads`` threads; :meth:`run` yields ``(row, result)`` in order.

    ``stats()`` after (or during) the run: parkings, most parked at once, results spilled.
    """

    def __init__(self, handle: Handler, threads: int, max_parked: int) -> None:
        self.handle, self.threads = handle, max(1, threads)
        self.limit = 2 * self.threads  # rows running or finished in memory
        self.lot = ParkingLot(max_parked)
        self.spill = _Spill()
        self.rows: dict[int, R] = {}  # position -> row, until it is yielded
        self.running: dict[Future, int] = {}
        self.finished: queue.SimpleQueue[Future] = queue.SimpleQueue()  # running rows, once done
        self.done: dict[int, T] = {}  # finished, in memory, not yet yielded
        self.parked: list[tuple[float, int]] = []  # heap of (when its pause ends, position)
        self.states: dict[int, Any] = {}  # position -> parked state
        self.next_out = 0  # the next position to yield
        self.revived: set[Future] = set()  # parked rows handed back to the pool, still running
        # When a pause ends its rows queue for the host's rate all at once, each holding a thread:
        # a quarter of the threads for them, the rest for the other hosts' rows (all of them made
        # the others stall for the drain, ~10 s after a 15-s storm in the simulated crawl).
        self.revive_cap = max(1, self.threads // 4)

    def stats(self) -> dict[str, int]:
        return {
            "parked": self.lot.total,
            "parked_peak": self.lot.peak,
            "spilled": self.spill.count,
            "spilled_bytes": self.spill.bytes,
        }

    def run(self, rows: Iterable[R]) -> Generator[tuple[R, T], None, None]:
        """Every row once, in order, with its result; the pool's queued rows are dropped if the
        consumer stops early or a handler raises."""
        source = iter(enumerate(rows))
        exhausted = False
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="fetch") as pool:
            try:
                while True:
                    exhausted = self._fill(pool, source, exhausted)
                    yield from self._ready()
                    if exhausted and not self.running and not self.parked:
                        break
                    self._wait()
            except BaseException:
                # The shard failed (or its consumer stopped): rows still queued must not run on.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            finally:
                self.spill.close()
        assert not self.rows, f"{len(self.rows)} rows never yielded"

    # ---- the loop's steps ----------------------------------------------------------------
    def _room(self) -> bool:
        return len(self.running) + len(self.done) < self.limit

    def _make_room(self) -> bool:
        """Room for one more row: there is some, or a finished result behind the earliest parked
        row (it would wait a whole pause in memory) is spilled to make it; False if neither."""
        if self._room():
            return True
        if not self.states or not self.done:
            return False
        last = max(self.done)  # the latest result is the last to be yielded: spilled first
        if last < min(self.states):
            return False
        self.spill.put(last, self.done.pop(last))
        return True

    def _fill(self, pool: ThreadPoolExecutor, source: Iterator[tuple[int, R]], exhausted: bool) -> bool:
        """Hand the pool parked rows whose pause is over (first: they are the oldest), then new
        rows, while the window has room; returns whether the source is exhausted."""
        now = time.monotonic()
        while self.parked and self.parked[0][0] <= now and len(self.revived) < self.revive_cap and self._make_room():
            _, pos = heapq.heappop(self.parked)
            self.lot.leave()
            self.revived.add(self._submit(pool, pos, self.states.pop(pos)))
        while not exhausted and self._make_room():
            item = next(source, None)
            if item is None:
                return True
            pos, row = item
            self.rows[pos] = row
            self._submit(pool, pos, None)
        return exhausted

    def _submit(self, pool: ThreadPoolExecutor, pos: int, state: Any) -> Future:
        fut = pool.submit(self.handle, self.rows[pos], state, self.lot.take)
        self.running[fut] = pos
        fut.add_done_callback(self.finished.put)  # O(1) per row, where wait() on all is O(window)
        return fut

    def _ready(self) -> Iterator[tuple[R, T]]:
        """Yield finished rows from the head of the order, in memory or spilled."""
        while True:
            pos = self.next_out
            if pos in self.done:
                result = self.done.pop(pos)
            elif pos in self.spill:
                result = self.spill.take(pos)
            else:
                return
            self.next_out += 1
            yield self.rows.pop(pos), result

    def _wait(self) -> None:
        """Wait for a running row to finish, or for the earliest parked row's pause to end."""
        timeout = None  # a parked row that cannot be revived yet waits for a running row
        if self.parked and len(self.revived) < self.revive_cap and (self._room() or self._spillable()):
            timeout = max(0.0, self.parked[0][0] - time.monotonic())
        if not self.running:
            time.sleep(timeout or 0.0)
            return
        try:
            finished = [self.finished.get(timeout=timeout)]
        except queue.Empty:
            return
        while not self.finished.empty():
            finished.append(self.finished.get())
        for fut in finished:
            pos = self.running.pop(fut)
            self.revived.discard(fut)
            out = fut.result()
            if isinstance(out, Parked):
                heapq.heappush(self.parked, (time.monotonic() + max(0.0, out.seconds), pos))
                self.states[pos] = out.state
            else:
                self.done[pos] = out

    def _spillable(self) -> bool:
        return bool(self.states) and bool(self.done) and max(self.done) > min(self.states)


def ordered(rows: Iterable[R], handle: Handler, threads: int, max_parked: int) -> Iterator[tuple[R, T]]:
    """``(row, result)`` for every row, in order: :class:`Window`'s run, for callers without stats."""
    return Window[R, T](handle, threads, max_parked).run(rows)
