"""The local executor's multi-core path: shards run on a pool of worker processes, one task (a few
consecutive shards: :func:`exiflang.pipeline.shards.worker.process_shards`) at a time each.

Threads alone leave the job bound by the GIL to about one core (EXIF rendering, hashing and
tar writing are Python), so ``--executor local --workers N`` runs ``N`` processes.  A shard's
content depends only on its rows and the settings, never on the process that wrote it, so
the shards are byte-identical to a one-process run's, and resume is unchanged (a shard with a
valid stats file is skipped by the driver; any other is redone from scratch).

Processes come from a ``forkserver`` (not ``fork``: the driver has threads, e.g. the host
governor's; not ``spawn``: every worker would import the pipeline again), which imports the
worker module once.  No worker outlives the job:

* SIGINT (Ctrl-C reaches the whole process group) is ignored by the workers, so the driver
  alone decides: it raises KeyboardInterrupt, and on the way out terminates every process
  the pool started (SIGTERM, then SIGKILL after a grace period);
* SIGTERM to the driver is turned into ``SystemExit(143)`` while the pool runs, with the same
  clean-up;
* SIGKILL to the driver cannot be caught: each worker watches the driver's process (a Linux
  ``pidfd``, else polling its pid every second) and exits as soon as it is gone.  (The
  kernel's parent-death signal would not do: a worker's parent is the forkserver, which
  itself lives as long as any worker holds the driver's end of its pipe.)  Once the workers
  are gone, so are the forkserver and the resource tracker.

A task that raises is retried up to ``retries`` times (its complete shards are skipped); a worker
that dies (OOM killer) breaks the pool, which is replaced, and the tasks it held are retried the
same way.  The shards of a task that fails every attempt and are not complete are reported failed.

As with any non-``fork`` multiprocessing, each worker imports the ``__main__`` module of the
driver: a script that calls :func:`exiflang.pipeline.driver.build` with this executor must keep its
work under ``if __name__ == "__main__":`` (``exiflang shards`` and pytest do).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from exiflang.pipeline import reap, storage
from exiflang.pipeline.config import ShardConfig
from exiflang.pipeline.records import SourceRow
from exiflang.pipeline.shards.files import shard_problem
from exiflang.pipeline.shards.worker import process_shards

log = logging.getLogger(__name__)

_GRACE_S = 5.0  # SIGTERM -> SIGKILL grace for the pool's processes
_ORPHANED = 128 + 15  # a worker's exit status when its driver died (as if SIGTERM)


def _worker_init(driver: int) -> None:
    """In each worker: leave SIGINT to the driver, and exit as soon as the driver is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(driver,), name="driver-watch", daemon=True).start()


def _exit_with(driver: int) -> None:
    try:
        fd = os.pidfd_open(driver)  # readable once the process has exited; immune to pid reuse
    except ProcessLookupError:
        os._exit(_ORPHANED)
    except (AttributeError, OSError):
        fd = None  # no pidfd here: poll the pid
    while True:
        if fd is not None:
            select.select([fd], [], [])
            os._exit(_ORPHANED)
        time.sleep(1.0)
        try:
            os.kill(driver, 0)
        except ProcessLookupError:
            os._exit(_ORPHANED)
        except PermissionError:  # the pid was reused by someone else's process
            os._exit(_ORPHANED)


def _context() -> Any:
    methods = mp.get_all_start_methods()
    if "forkserver" not in methods:
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # Imported once, then forked.  pandas too: pyarrow imports it on a process's first
    # pa.array() (to recognise pandas objects), 0.22 s of CPU in every worker otherwise.
    ctx.set_forkserver_preload(["exiflang.pipeline.shards.worker", "pandas"])
    return ctx


Task = list[tuple[int, list[SourceRow]]]


class _Pool:
    """A process pool that is replaced when a worker dies, with each task's attempt count."""

    def __init__(self, cfg: ShardConfig, workers: int, retries: int) -> None:
        self.cfg, self.workers, self.retries = cfg, workers, retries
        self.pending: dict[Future, tuple[Task, int]] = {}
        self.failed: list[int] = []
        self.orphans: list[tuple[Task, int]] = []  # lost with a broken pool
        self.pids: set[int] = set()
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers, mp_context=_context(), initializer=_worker_init, initargs=(os.getpid(),)
        )

    def submit(self, task: Task, attempt: int = 0) -> None:
        fut = self.pool.submit(process_shards, task, self.cfg)
        self.pending[fut] = (task, attempt)
        self.pids.update(getattr(self.pool, "_processes", None) or {})  # for the reaper

    def drain(self, until: int, on_done: Callable[[dict], None]) -> None:
        """Collect finished tasks until at most ``until`` are in flight."""
        while len(self.pending) > until:
            done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                task, attempt = self.pending.pop(fut)
                try:
                    for stats in fut.result():
                        on_done(stats)
                except BrokenProcessPool as exc:
                    broken = True
                    self._retry(task, attempt, exc, resubmit=False)
                except Exception as exc:  # noqa: BLE001 - retried, then reported per shard
                    self._retry(task, attempt, exc, resubmit=True)
            if broken:
                self._replace()

    def _retry(self, task: Task, attempt: int, exc: BaseException, resubmit: bool) -> None:
        log.warning("shards %05d.. attempt %d failed: %s", task[0][0], attempt + 1, exc)
        if attempt >= self.retries:
            self._give_up(task)
        elif resubmit:
            self.submit(task, attempt + 1)
        else:
            self.orphans.append((task, attempt + 1))

    def _give_up(self, task: Task) -> None:
        out_dir = storage.resolve(self.cfg.out_dir)
        self.failed += [shard for shard, _ in task if shard_problem(out_dir, shard, "size") is not None]

    def _replace(self) -> None:
        """A worker died and took the pool with it: a new pool, the lost tasks resubmitted."""
        lost = [(t, a + 1) for t, a in self.pending.values()] + self.orphans
        self.pending, self.orphans = {}, []
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()
        for task, attempt in lost:
            if attempt > self.retries:
                self._give_up(task)
            else:
                self.submit(task, attempt)

    def close(self, clean: bool) -> None:
        """Shut the pool down: waiting for it after success, terminating it otherwise."""
        if clean:
            self.pool.shutdown(wait=True)
            return
        self.pool.shutdown(wait=False, cancel_futures=True)
        reap.terminate(self.pids, _GRACE_S)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the pool runs, SIGTERM unwinds the driver (SystemExit 143) so the pool is reaped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def run_pool(
    tasks: Iterator[Task],
    cfg: ShardConfig,
    on_done: Callable[[dict], None],
    workers: int,
    retries: int,
) -> list[int]:
    """Build ``tasks`` on ``workers`` processes (at most ``2 * workers`` in flight); failed shards."""
    with _sigterm_raises():
        pool = _Pool(cfg, workers, retries)
        clean = False
        try:
            # Bounded in flight: the source may be 100M rows, never materialised at once.
            for task in tasks:
                pool.submit(task)
                pool.drain(2 * workers, on_done)
            pool.drain(0, on_done)
            clean = True
        finally:
            pool.close(clean)
    return sorted(pool.failed)
