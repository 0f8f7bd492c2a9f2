"""The shard-building driver: plans shards from a source, fans them out (Ray or in-process),
retries failures, then deduplicates across shards and selects the tag vocabulary."""
from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from tqdm import tqdm

from pipeline.config import ShardConfig
from pipeline.dedup import remove_cross_shard_duplicates
from pipeline.records import SourceRow
from pipeline.shard_io import is_complete, shard_paths
from pipeline.tags import write_sizes_and_summary, write_tags
from pipeline.worker import process_shard

log = logging.getLogger(__name__)


@dataclass
class JobOptions:
    """How the job runs, as opposed to what each shard does (:class:`ShardConfig`)."""

    executor: str = "ray"            # "ray" or "local" (the worker called directly)
    workers: Optional[int] = None    # concurrent shards; default: the Ray cluster's CPUs
    address: Optional[str] = None    # a Ray cluster; default RAY_ADDRESS, else embedded
    shard_retries: int = 2           # extra attempts for a shard whose task failed
    tag_threshold: float = 0.5
    max_rows: Optional[int] = None   # stop after this many source rows (smoke runs)
    progress: bool = True            # a tqdm bar of rows done


def plan_shards(rows: Iterator[SourceRow], rows_per_shard: int,
                max_rows: Optional[int] = None) -> Iterator[tuple[int, list[SourceRow]]]:
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


def _split_host_budget(cfg: ShardConfig, workers: int) -> ShardConfig:
    """Per-host limits are global for the job: each concurrent worker gets its share."""
    dl = cfg.download
    dl = replace(dl, per_host_concurrency=max(1, dl.per_host_concurrency // workers),
                 per_host_rate=dl.per_host_rate / workers if dl.per_host_rate else 0.0)
    return replace(cfg, download=dl)


def _init_ray(opts: JobOptions) -> Any:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=opts.workers or os.cpu_count(), include_dashboard=False,
                     log_to_driver=True, configure_logging=False)
    return ray


def _run_local(shards: Iterator[tuple[int, list[SourceRow]]], cfg: ShardConfig,
               on_done: Callable[[dict], None], opts: JobOptions) -> list[int]:
    failed = []
    for shard, rows in shards:
        for attempt in range(opts.shard_retries + 1):
            try:
                on_done(process_shard(shard, rows, cfg))
                break
            except Exception as exc:  # noqa: BLE001 - retried, then reported per shard
                log.warning("shard %05d attempt %d failed: %s", shard, attempt + 1, exc)
        else:
            failed.append(shard)
    return failed


def _run_ray(shards: Iterator[tuple[int, list[SourceRow]]], cfg: ShardConfig,
             on_done: Callable[[dict], None], opts: JobOptions) -> list[int]:
    ray = _init_ray(opts)
    workers = opts.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(num_cpus=1, max_retries=opts.shard_retries,
                      retry_exceptions=True)(process_shard)
    cfg = _split_host_budget(cfg, workers)
    cfg_ref = ray.put(cfg)
    pending: dict[Any, int] = {}
    failed: list[int] = []

    def drain(until: int) -> None:
        while len(pending) > until:
            done, _ = ray.wait(list(pending), num_returns=1)
            shard = pending.pop(done[0])
            try:
                on_done(ray.get(done[0]))
            except Exception as exc:  # noqa: BLE001 - a shard that failed all its retries
                log.error("shard %05d failed after %d attempts: %s", shard,
                          opts.shard_retries + 1, str(exc).splitlines()[-1] if str(exc) else exc)
                failed.append(shard)

    # Bounded in-flight tasks: the source may be 100M rows, never materialised at once.
    for shard, rows in shards:
        pending[task.remote(shard, rows, cfg_ref)] = shard
        drain(2 * workers)
    drain(0)
    return failed


def build(source_rows: Iterator[SourceRow], cfg: ShardConfig, opts: JobOptions) -> dict[str, Any]:
    """Build every shard not yet complete, then dedupe and select tags; returns the summary."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    bar = tqdm(desc="rows", unit="row", dynamic_ncols=True, mininterval=1.0,
               disable=not opts.progress)
    skipped = {"shards": 0}

    def todo() -> Iterator[tuple[int, list[SourceRow]]]:
        for shard, rows in plan_shards(source_rows, cfg.rows_per_shard, opts.max_rows):
            if is_complete(out_dir, shard):
                skipped["shards"] += 1
                bar.update(len(rows))
                continue
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
    summary.update(failed_shards=failed, seconds=round(time.time() - t0, 2),
                   vocabulary_size=len(tags["tags"]), skipped_complete_shards=skipped["shards"])
    return summary


def shard_files(out_dir: Path, shard: int) -> Sequence[Path]:
    """The files of one shard (for tools and tests)."""
    return list(shard_paths(out_dir, shard).values())
