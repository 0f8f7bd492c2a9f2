"""The per-shard worker: source rows in, one tar + one Parquet table + one stats file out.

A plain function, testable without Ray; the driver only fans it out.  Atomicity: tar and
table go to temporary names and are renamed into place, the stats file is renamed last, so
a shard with a stats file is whole and a shard without one is redone from scratch.
"""
from __future__ import annotations

import json
import logging
import resource
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from pipeline import records as st
from pipeline.config import ShardConfig
from pipeline.download import Downloader, FetchResult
from pipeline.records import SourceRow
from pipeline.sample import SampleOutcome, process_bytes
from pipeline.shard_io import (TarShardWriter, atomic_write_json, is_complete, remove_partial,
                               shard_name, shard_paths, write_table)

log = logging.getLogger(__name__)


def read_local(path: str, max_bytes: int) -> FetchResult:
    """Read a local file as if it were downloaded (same result type, same statuses)."""
    t0 = time.perf_counter()
    try:
        p = Path(path)
        size = p.stat().st_size
        if size > max_bytes:
            return FetchResult(path, path, st.DOWNLOAD_FAILED, None, None,
                               f"file too large: {size} > {max_bytes} bytes", 1, 0.0)
        data = p.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return FetchResult(path, None, st.DOWNLOAD_FAILED, None, None,
                           f"cannot read file: {reason}", 1, time.perf_counter() - t0)
    return FetchResult(path, path, st.SUCCESS, None, data, None, 1, time.perf_counter() - t0)


def _handle_row(row: SourceRow, cfg: ShardConfig, downloader: Optional[Downloader],
                side: Optional[dict[str, str]]) -> tuple[FetchResult, Optional[SampleOutcome]]:
    """Fetch one row and check its bytes (runs in a worker thread)."""
    if row.meta.get("source_error") and not row.location:
        # The source already knows this row is unusable (malformed YFCC line, no URL):
        # report its reason rather than the downloader's "invalid URL".
        return FetchResult(row.location, None, st.DOWNLOAD_FAILED, None, None,
                           row.meta["source_error"], 0, 0.0), None
    if row.path is not None:
        fetched = read_local(row.path, cfg.download.max_bytes)
    else:
        assert downloader is not None
        fetched = downloader.fetch(row.url or "", row.fallback_urls)
    if fetched.status != st.SUCCESS or fetched.data is None:
        return fetched, None
    return fetched, process_bytes(fetched.data, cfg, side)


def _ordered(rows: Sequence[SourceRow], cfg: ShardConfig, downloader: Optional[Downloader],
             side: dict[str, dict[str, str]]) -> Iterator[tuple[SourceRow, FetchResult, Optional[SampleOutcome]]]:
    """Process rows on a thread pool, yielding in source order with a bounded window.

    The window bounds memory: at most ``2 * threads`` photos' bytes are held at once, even
    when an early row is stuck in retries.
    """
    window: deque[tuple[SourceRow, Future]] = deque()
    with ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix="fetch") as pool:
        for row in rows:
            fut = pool.submit(_handle_row, row, cfg, downloader, side.get(row.photo_id or ""))
            window.append((row, fut))
            if len(window) >= 2 * cfg.threads:
                r, f = window.popleft()
                yield (r, *f.result())
        while window:
            r, f = window.popleft()
            yield (r, *f.result())


def _table_row(shard: int, pos: int, row: SourceRow, fetched: FetchResult,
               out: Optional[SampleOutcome]) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "key": f"{shard_name(shard)}_{pos:05d}", "shard": shard, "position": pos,
        "source_index": row.index, "photo_id": row.photo_id, "url": row.location,
        "status": fetched.status, "error": fetched.error, "http_status": fetched.http_status,
        "attempts": fetched.attempts, "seconds": fetched.seconds,
        "bytes": len(fetched.data) if fetched.data is not None else None, "meta": row.meta,
    }
    if out is not None:
        rec.update(status=out.status, error=out.error, width=out.width, height=out.height,
                   sha256=out.sha256, ext=out.ext, n_tags=len(out.exif), exif=out.exif,
                   exif_source=out.exif_source)
    return rec


def _members(rec: dict[str, Any], data: bytes, out: SampleOutcome) -> dict[str, bytes]:
    info = {k: rec[k] for k in ("key", "photo_id", "url", "width", "height", "sha256")}
    info["exif_source"] = out.exif_source
    return {out.ext: data,
            "exif.json": json.dumps(out.exif, ensure_ascii=False, sort_keys=True).encode(),
            "json": json.dumps(info, ensure_ascii=False, sort_keys=True).encode()}


def _side_exif(rows: Sequence[SourceRow], cfg: ShardConfig) -> dict[str, dict[str, str]]:
    if not cfg.yfcc_exif_db:
        return {}
    from pipeline.yfcc_exif import YfccExifIndex
    ids = [r.photo_id for r in rows if r.photo_id]
    with YfccExifIndex.open(cfg.yfcc_exif_db) as index:
        return index.get_many(ids)


def process_shard(shard: int, rows: Sequence[SourceRow], cfg: ShardConfig) -> dict[str, Any]:
    """Build shard ``shard`` from ``rows``; returns its stats (also written to disk).

    Skips the work if the shard is already complete.  Never raises on bad samples: each
    row ends as a table row with a status.  Raises only on an unusable output folder.
    """
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = shard_paths(out_dir, shard)
    if is_complete(out_dir, shard):
        return json.loads(paths["stats"].read_text())
    remove_partial(out_dir, shard)
    t0 = time.time()
    side = _side_exif(rows, cfg)
    needs_http = any(r.path is None for r in rows)
    downloader = Downloader(cfg.download) if needs_http else None
    writer = TarShardWriter(paths["tar"])
    table: list[dict[str, Any]] = []
    counts: Counter = Counter()
    tag_sources: Counter = Counter()
    seen: dict[str, str] = {}
    totals = {"bytes_fetched": 0, "bytes_written": 0, "exif_disagreements": 0}
    try:
        for pos, (row, fetched, out) in enumerate(_ordered(rows, cfg, downloader, side)):
            rec = _table_row(shard, pos, row, fetched, out)
            totals["bytes_fetched"] += rec["bytes"] or 0
            if out is not None and out.status == st.SUCCESS:
                if cfg.dedup and out.sha256 in seen:
                    rec["status"], rec["error"] = st.DUPLICATE, f"duplicate of {seen[out.sha256]}"
                else:
                    seen[out.sha256] = rec["key"]  # type: ignore[index]
                    writer.add(rec["key"], _members(rec, fetched.data or b"", out))
                    totals["bytes_written"] += rec["bytes"] or 0
                    tag_sources.update(out.exif_source.values())
                    totals["exif_disagreements"] += out.exif_disagreements
            counts[rec["status"]] += 1
            table.append(rec)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        if downloader is not None:
            downloader.close()
    write_table(paths["parquet"], table)
    stats = {"shard": shard, "rows": len(rows), "samples": writer.count,
             "status_counts": {s: counts.get(s, 0) for s in st.STATUSES},
             "tag_sources": dict(tag_sources), **totals,
             "started": t0, "seconds": round(time.time() - t0, 3),
             # Peak RSS of the process running this shard (a Ray worker or the driver).
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    atomic_write_json(paths["stats"], stats)
    log.info("shard %s: %d rows, %d samples", shard_name(shard), len(rows), writer.count)
    return stats
