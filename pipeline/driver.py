"""The shard-building driver: plans shards from a source, fans them out (Ray or in-process),
retries failures, then deduplicates across shards and selects the tag vocabulary.

A task is a few consecutive shards (:func:`plan_tasks`) built through one fetch window, so a
worker whose shard waits for a paused host's rows goes on with the next shard meanwhile.

A Ray runtime the driver starts itself (no ``--address`` / ``RAY_ADDRESS``) is its to stop:
at the end of the build, at interpreter exit, and on SIGINT / SIGTERM, it is shut down and
every process it started (GCS, raylet, dashboard and runtime-env agents, workers) that is
still alive is terminated (SIGTERM, then SIGKILL after 5 s), so none outlives the job.
SIGINT ends the build with KeyboardInterrupt, SIGTERM with status 143 (128 + 15).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from tqdm import tqdm

from exiflang.pipeline import reap, storage
from exiflang.pipeline.config import ShardConfig
from exiflang.pipeline.fetch.governor_service import GovernorServer
from exiflang.pipeline.fetch.politeness import HostGovernor
from exiflang.pipeline.local_pool import run_pool
from exiflang.pipeline.records import SourceRow
from exiflang.pipeline.shards.dedup import remove_cross_shard_duplicates
from exiflang.pipeline.shards.files import RERUN_CHECKS, shard_problem
from exiflang.pipeline.shards.tags import write_sizes_and_summary, write_tags
from exiflang.pipeline.shards.worker import process_shards

log = logging.getLogger(__name__)


@dataclass
class JobOptions:
    """How the job runs, as opposed to what each shard does (:class:`ShardConfig`)."""

    executor: str = "ray"  # "ray" or "local" (worker processes on this machine)
    workers: int | None = None  # concurrent shards; default: the Ray cluster's / this machine's CPUs
    address: str | None = None  # a Ray cluster; default RAY_ADDRESS, else embedded
    shard_retries: int = 2  # extra attempts for a shard whose task failed
    tag_threshold: float = 0.5
    max_rows: int | None = None  # stop after this many source rows (smoke runs)
    progress: bool = True  # a tqdm bar of rows done
    # How a shard with a stats file is checked before it is skipped: "hash" (sizes and
    # sha256 of tar and table, about one read of the dataset) or "size" (stat only).
    rerun_check: str = "hash"
    # Consecutive shards per task, built through one fetch window: while one shard waits for
    # a paused host's parked rows, the task goes on with the next (exiflang.pipeline.shards.window).
    shards_per_task: int = 4


def plan_shards(
    rows: Iterator[SourceRow], rows_per_shard: int, max_rows: int | None = None
) -> Iterator[tuple[int, list[SourceRow]]]:
    """Cut the row stream into consecutive shards: shard i holds rows [i*n, (i+1)*n).

    Deterministic for a deterministic source, which is what makes resume exact.
    """
    if max_rows is not None:
        rows = itertools.islice(rows, max_rows)
    for shard in itertools.count():
        chunk = list(itertools.islice(rows, rows_per_shard))
        if not chunk:
            return
        yield shard, chunk


Shard = tuple[int, list[SourceRow]]


def plan_tasks(shards: Iterator[Shard], per_task: int, workers: int) -> Iterator[list[Shard]]:
    """Group consecutive shards into tasks of ``per_task`` (>= 1).

    Towards the source's end tasks shrink (guided scheduling: a task takes at most
    1/workers of the shards left, down to one), so the job does not end with one worker
    on a long task and the others idle; to know where the end is, ``per_task * (workers + 1)``
    shards are read ahead.
    """
    per_task, workers = max(1, per_task), max(1, workers)
    ahead: deque[Shard] = deque()
    for shard in shards:
        ahead.append(shard)
        if len(ahead) >= per_task * (workers + 1):
            yield [ahead.popleft() for _ in range(per_task)]
    while ahead:
        size = min(per_task, max(1, len(ahead) // workers))
        yield [ahead.popleft() for _ in range(size)]


def _incomplete(cfg: ShardConfig, task: list[Shard]) -> list[int]:
    """The shards of a task that failed all its attempts which are not complete on disk."""
    out_dir = storage.resolve(cfg.out_dir)
    return [shard for shard, _ in task if shard_problem(out_dir, shard, "size") is not None]


@contextlib.contextmanager
def _governed(cfg: ShardConfig, workers: int, tcp_host: str | None = None) -> Iterator[ShardConfig]:
    """``cfg`` pointing every worker at one host governor served from this process.

    Per-host limits hold for the whole job (exiflang.pipeline.fetch.politeness): the workers share the
    governor's state instead of each taking a fraction of the budget.  Unix socket for
    local processes (and, when the job caps nothing, a pause board they read without a round
    trip), TCP on ``tcp_host`` for Ray workers.
    """
    with GovernorServer(HostGovernor(cfg.download.limits()), tcp_host) as server:
        board = str(server.board.path) if server.board is not None else None
        dl = replace(
            cfg.download,
            governor_address=server.address,
            governor_key=server.key,
            governor_share=workers,
            governor_board=board,
        )
        yield replace(cfg, download=dl)


_REAP_GRACE_S = 5.0  # SIGTERM -> SIGKILL grace for Ray's leftover processes


class _EmbeddedRay:
    """Stops the Ray runtime this process started, and reaps whatever it leaves running.

    ``ray.shutdown()`` alone leaves the dashboard and runtime-env agents alive when the
    driver is stopped while Ray is starting (they are the raylet's children and outlive
    it), so the processes below this one that appeared after :meth:`start` are terminated
    too.  The signal handlers only raise (KeyboardInterrupt, or SystemExit(143)); the stop
    itself runs as that exception unwinds through :func:`_ray_session`, because
    ``ray.shutdown()`` called inside a handler that interrupted ``ray.wait`` crashed the
    interpreter at exit (SIGSEGV).  ``atexit`` covers every other way out.  Idempotent.
    """

    def __init__(self) -> None:
        self.before: set[int] = set()
        self.stopped = True
        self.handlers: dict[int, Any] = {}
        self.signalled = 0  # the signal that is stopping the job, if any

    def start(self, ray: Any, num_cpus: int | None) -> None:
        self.before = {p.pid for p in _descendants()}
        self.stopped = False
        atexit.register(self.stop)
        self._install()
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, configure_logging=False)
        except SystemExit as exc:
            # Ray's own SIGTERM handler, set while it starts, exits with code 15.
            if exc.code == signal.SIGTERM:
                raise SystemExit(128 + signal.SIGTERM) from None
            raise
        self._install()  # ray.init replaced the SIGTERM handler with its own

    def stop(self) -> None:
        """Shut Ray down and terminate its leftover processes; restore the signal handlers."""
        if self.stopped:
            return
        self.stopped = True
        ours = [p for p in _descendants() if p.pid not in self.before]
        try:
            import ray

            ray.shutdown()
        except Exception as exc:  # noqa: BLE001 - the reaping below still runs
            log.warning("ray.shutdown() failed: %s", exc)
        reap.terminate(ours, _REAP_GRACE_S)
        self._restore()
        atexit.unregister(self.stop)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN:
                continue
            self.handlers.setdefault(sig, current)  # the handler from before Ray
            signal.signal(sig, self._on_signal)

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self.handlers.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.handlers = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stopped:
            return  # already stopping: a second Ctrl-C must not cut the reaping short
        self.signalled = self.signalled or signum
        previous = self.handlers.get(signum)
        if callable(previous):
            previous(signum, frame)  # e.g. Python's SIGINT handler: KeyboardInterrupt
            return
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)  # SIGTERM's default action, as status 143


def _descendants() -> list[Any]:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


@contextlib.contextmanager
def _ray_session(opts: JobOptions) -> Iterator[Any]:
    """Ray, joined (``address``) or already running, or else started here and stopped on leaving."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    address = opts.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        yield ray
        return
    if address:
        ray.init(address=address, log_to_driver=True)
        yield ray
        return
    embedded = _EmbeddedRay()
    try:
        embedded.start(ray, opts.workers or os.cpu_count())
        yield ray
    except SystemExit:
        # A signal that lands inside ray.wait's C++ wait comes out of it as SystemExit(1)
        # whatever the handler raised (seen in about one SIGTERM in four): say what it was.
        if embedded.signalled == signal.SIGTERM:
            raise SystemExit(128 + signal.SIGTERM) from None
        if embedded.signalled == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise
    finally:
        embedded.stop()


def _run_local(
    shards: Iterator[Shard], cfg: ShardConfig, on_done: Callable[[dict], None], opts: JobOptions
) -> list[int]:
    workers = opts.workers or os.cpu_count() or 1
    tasks = plan_tasks(shards, opts.shards_per_task, workers)
    if workers > 1:  # processes, not threads: the GIL would hold the job to one core
        with _governed(cfg, workers) as shared:
            return run_pool(tasks, shared, on_done, workers, opts.shard_retries)
    failed = []
    for task in tasks:
        for attempt in range(opts.shard_retries + 1):
            try:
                for stats in process_shards(task, cfg):
                    on_done(stats)
                break
            except Exception as exc:  # noqa: BLE001 - retried, then reported per shard
                log.warning("shards %s attempt %d failed: %s", _names(task), attempt + 1, exc)
        else:
            failed += _incomplete(cfg, task)
    return failed


def _names(task: list[Shard]) -> str:
    """``00004`` or ``00004-00007``: a task's shards, for messages."""
    first, last = task[0][0], task[-1][0]
    return f"{first:05d}" if first == last else f"{first:05d}-{last:05d}"


def _run_ray(shards: Iterator[Shard], cfg: ShardConfig, on_done: Callable[[dict], None], opts: JobOptions) -> list[int]:
    with _ray_session(opts) as ray:
        return _fan_out(ray, shards, cfg, on_done, opts)


def _fan_out(
    ray: Any,
    shards: Iterator[Shard],
    cfg: ShardConfig,
    on_done: Callable[[dict], None],
    opts: JobOptions,
) -> list[int]:
    workers = opts.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(num_cpus=1, max_retries=opts.shard_retries, retry_exceptions=True)(process_shards)
    tasks = plan_tasks(shards, opts.shards_per_task, workers)
    # The driver's node address: Ray workers on other nodes reach the governor there.
    with _governed(cfg, workers, ray.util.get_node_ip_address()) as shared:
        return _submit_all(ray, task, tasks, shared, ray.put(shared), on_done, opts, workers)


def _submit_all(
    ray: Any,
    task: Any,
    tasks: Iterator[list[Shard]],
    cfg: ShardConfig,
    cfg_ref: Any,
    on_done: Callable[[dict], None],
    opts: JobOptions,
    workers: int,
) -> list[int]:
    pending: dict[Any, list[Shard]] = {}
    failed: list[int] = []

    def drain(until: int) -> None:
        while len(pending) > until:
            done, _ = ray.wait(list(pending), num_returns=1)
            batch = pending.pop(done[0])
            try:
                for stats in ray.get(done[0]):
                    on_done(stats)
            except Exception as exc:  # noqa: BLE001 - a task that failed all its retries
                log.error(
                    "shards %s failed after %d attempts: %s",
                    _names(batch),
                    opts.shard_retries + 1,
                    str(exc).splitlines()[-1] if str(exc) else exc,
                )
                failed.extend(_incomplete(cfg, batch))

    # Bounded in-flight tasks: the source may be 100M rows, never materialised at once.
    for batch in tasks:
        pending[task.remote(batch, cfg_ref)] = batch
        drain(2 * workers)
    drain(0)
    return failed


def build(source_rows: Iterator[SourceRow], cfg: ShardConfig, opts: JobOptions) -> dict[str, Any]:
    """Build every shard not yet complete, then dedupe and select tags; returns the summary."""
    if opts.rerun_check not in RERUN_CHECKS:
        raise ValueError(f"rerun_check must be one of {', '.join(RERUN_CHECKS)}, not {opts.rerun_check!r}")
    out_dir = storage.resolve(cfg.out_dir)  # a local Path, or an object-store URL
    storage.makedirs(out_dir)
    t0 = time.time()
    bar = tqdm(desc="rows", unit="row", dynamic_ncols=True, mininterval=1.0, disable=not opts.progress)
    skipped = {"shards": 0}

    def todo() -> Iterator[tuple[int, list[SourceRow]]]:
        for shard, rows in plan_shards(source_rows, cfg.rows_per_shard, opts.max_rows):
            problem = shard_problem(out_dir, shard, opts.rerun_check)
            if problem is None:
                skipped["shards"] += 1
                bar.update(len(rows))
                continue
            if problem != "no stats file":
                log.warning("shard %05d is redone: %s", shard, problem)
            yield shard, rows

    def on_done(stats: dict) -> None:
        bar.update(stats["rows"])
        bar.set_postfix(shard=stats["shard"], ok=stats["samples"])

    runner = _run_ray if opts.executor == "ray" else _run_local
    failed = runner(todo(), cfg, on_done, opts)
    bar.close()
    if skipped["shards"]:
        log.info("%d shards were already complete and were skipped", skipped["shards"])
    if cfg.dedup:
        remove_cross_shard_duplicates(out_dir)
    summary = write_sizes_and_summary(out_dir)
    tags = write_tags(out_dir, opts.tag_threshold, cfg.min_tags)
    summary.update(
        failed_shards=failed,
        seconds=round(time.time() - t0, 2),
        vocabulary_size=len(tags["tags"]),
        skipped_complete_shards=skipped["shards"],
    )
    return summary
