"""The per-shard worker: source rows in, one tar + one Parquet table + one stats file out.

Plain functions, testable without Ray; the driver only fans them out, a task being a few
consecutive shards built through one fetch window (:func:`process_shards`; rows of a paused
host are parked meanwhile: :mod:`exiflang.pipeline.shards.window`).  Atomicity: tar and
table are written to local temporary files and renamed into place (or, when the dataset
folder is on an object store, uploaded whole once complete: :mod:`exiflang.pipeline.storage`); the
stats file is written last and records both files' sizes and hashes, so a shard is whole
exactly when its stats file exists and matches (:func:`exiflang.pipeline.shards.files.shard_problem`);
any other shard is redone.

A row is the unit of failure: whatever goes wrong with one source row (its name or fields,
its fetch, its bytes, its EXIF, an unexpected exception) ends as that row's status and
error, and the rest of the shard is written.  Names that are not valid UTF-8 arrive as
surrogate-escaped str: a local file is read through its real bytes path (``os.fsencode``), a
URL is fetched with its raw bytes percent-encoded, and the table keeps both escaped text
and raw bytes (:mod:`exiflang.pipeline.shards.files`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from exiflang.pipeline import records as st
from exiflang.pipeline import storage
from exiflang.pipeline.config import ShardConfig
from exiflang.pipeline.fetch.download import Downloader, FetchResult, RowFetch
from exiflang.pipeline.records import SourceRow
from exiflang.pipeline.shards.files import (
    TarShardWriter,
    is_utf8,
    json_bytes,
    remove_partial,
    safe_text,
    shard_name,
    shard_paths,
    shard_problem,
    write_stats,
    write_table,
)
from exiflang.pipeline.shards.sample import SampleOutcome, process_bytes
from exiflang.pipeline.shards.window import Parked, Window

log = logging.getLogger(__name__)


def read_local(path: str, max_bytes: int) -> FetchResult:
    """Read a local file as if it were downloaded (same result type, same statuses).

    The file is opened by its real bytes (``os.fsencode``), so a name that is not valid
    UTF-8 reads like any other; a name no file system bytes can stand for is a bad row.
    """
    t0 = time.perf_counter()
    if storage.is_remote(path):
        return _read_remote(path, max_bytes, t0)
    try:
        name = os.fsencode(path)
    except UnicodeEncodeError:
        return _failed(path, st.BAD_SOURCE_ROW, "file name holds a character no file name can")
    try:
        with open(name, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                return FetchResult(
                    path, path, st.DOWNLOAD_FAILED, None, None, f"file too large: {size} > {max_bytes} bytes", 1, 0.0
                )
            data = fh.read()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return FetchResult(
            path, None, st.DOWNLOAD_FAILED, None, None, f"cannot read file: {reason}", 1, time.perf_counter() - t0
        )
    return FetchResult(path, path, st.SUCCESS, None, data, None, 1, time.perf_counter() - t0)


def _read_remote(path: str, max_bytes: int, t0: float) -> FetchResult:
    """A photo in a folder on an object store, read through :mod:`exiflang.pipeline.storage`."""
    try:
        size = storage.size(path)
        if size > max_bytes:
            return FetchResult(
                path, path, st.DOWNLOAD_FAILED, None, None, f"file too large: {size} > {max_bytes} bytes", 1, 0.0
            )
        data = storage.read_bytes(path)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or _one_line(exc)
        return FetchResult(
            path, None, st.DOWNLOAD_FAILED, None, None, f"cannot read file: {reason}", 1, time.perf_counter() - t0
        )
    return FetchResult(path, path, st.SUCCESS, None, data, None, 1, time.perf_counter() - t0)


def fetchable_url(url: str) -> str | None:
    """``url`` as the downloader can send it: non-UTF-8 bytes (surrogate-escaped) become
    ``%XX``; None when it holds a surrogate that stands for no byte (a JSON ``"\\ud800"``)."""
    if is_utf8(url):
        return url
    try:
        raw = url.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None
    return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)


def _failed(location: str, status: str, error: str) -> FetchResult:
    return FetchResult(location, None, status, None, None, error, 0, 0.0)


def _fetch(
    row: SourceRow, cfg: ShardConfig, downloader: Downloader | None, job: RowFetch | None, park: Callable[[], bool]
) -> FetchResult | RowFetch:
    """The row's bytes, or why there are none: its source's reason, a bad name, a failed fetch;
    or, parked while its host is paused, the fetch's state (``job``: go on from there)."""
    if job is not None:
        assert downloader is not None
        return downloader.proceed(job, park)
    if row.meta.get("source_error") and not row.location:
        # The source already knows this row is unusable (malformed line, no URL): report
        # its reason rather than the downloader's "invalid URL".
        return _failed(row.location, st.BAD_SOURCE_ROW, row.meta["source_error"])
    if row.path is not None:
        return read_local(row.path, cfg.download.max_bytes)
    assert downloader is not None
    urls = [fetchable_url(u) for u in (row.url or "", *row.fallback_urls)]
    if urls[0] is None:
        return _failed(
            row.location, st.BAD_SOURCE_ROW, f"URL {safe_text(row.location)[:200]!r} holds a lone surrogate, not text"
        )
    job = downloader.begin(urls[0], [u for u in urls[1:] if u is not None])
    return downloader.proceed(job, park)


Handled = tuple[FetchResult, SampleOutcome | None]


def _handle_row(
    row: SourceRow,
    cfg: ShardConfig,
    downloader: Downloader | None,
    side: dict[str, str] | None,
    job: RowFetch | None = None,
    park: Callable[[], bool] = lambda: False,
) -> Handled | Parked:
    """Fetch one row and check its bytes (runs in a worker thread); never raises.

    Parked (:mod:`exiflang.pipeline.shards.window`) when its host is paused and ``park()``
    grants a space; called again later with the ``job`` it parked with.  An unexpected
    exception costs this row only: download_failed while fetching, decode_failed while
    checking the bytes.
    """
    try:
        fetched = _fetch(row, cfg, downloader, job, park)
    except Exception as exc:  # noqa: BLE001 - one row's bug must not fail the shard
        return _failed(row.location, st.DOWNLOAD_FAILED, f"internal error: {_one_line(exc)}"), None
    if isinstance(fetched, RowFetch):
        return Parked(fetched, fetched.pause)
    if fetched.status != st.SUCCESS or fetched.data is None:
        return fetched, None
    try:
        return fetched, process_bytes(fetched.data, cfg, side)
    except Exception as exc:  # noqa: BLE001 - as above
        return fetched, SampleOutcome(st.DECODE_FAILED, f"internal error: {_one_line(exc)}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return safe_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]


def _window(
    cfg: ShardConfig, downloader: Downloader | None, side: dict[str, dict[str, str]]
) -> Window[SourceRow, Handled]:
    """The shard's fetch window: rows in source order, rows of a paused host parked meanwhile."""

    def handle(row: SourceRow, job: RowFetch | None, park: Callable[[], bool]) -> Handled | Parked:
        return _handle_row(row, cfg, downloader, side.get(row.photo_id or ""), job, park)

    # Local files never wait for a host: nothing to park.
    return Window(handle, cfg.threads, cfg.max_parked if downloader is not None else 0)


def _table_row(shard: int, pos: int, row: SourceRow, fetched: FetchResult, out: SampleOutcome | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "key": f"{shard_name(shard)}_{pos:05d}",
        "shard": shard,
        "position": pos,
        "source_index": row.index,
        "photo_id": row.photo_id,
        "url": row.location,
        "status": fetched.status,
        "error": fetched.error,
        "http_status": fetched.http_status,
        "attempts": fetched.attempts,
        "seconds": fetched.seconds,
        "bytes": len(fetched.data) if fetched.data is not None else None,
        "meta": row.meta,
    }
    if out is not None:
        rec.update(
            status=out.status,
            error=out.error,
            width=out.width,
            height=out.height,
            sha256=out.sha256,
            ext=out.ext,
            n_tags=len(out.exif),
            exif=out.exif,
            exif_source=out.exif_source,
        )
    return rec


def _members(rec: dict[str, Any], data: bytes, out: SampleOutcome) -> dict[str, bytes]:
    info = {k: rec[k] for k in ("key", "photo_id", "url", "width", "height", "sha256")}
    info["exif_source"] = out.exif_source
    return {
        out.ext: data,
        "exif.json": json_bytes(out.exif, ensure_ascii=False, sort_keys=True),
        "json": json_bytes(info, ensure_ascii=False, sort_keys=True),
    }


def _side_exif(rows: Sequence[SourceRow], cfg: ShardConfig) -> dict[str, dict[str, str]]:
    if not cfg.yfcc_exif_db:
        return {}
    from exiflang.pipeline.sources.yfcc_exif import YfccExifIndex

    # An id that is not valid UTF-8 cannot be in the index (and SQLite cannot take it).
    ids = [r.photo_id for r in rows if r.photo_id and is_utf8(r.photo_id)]
    with YfccExifIndex.open(cfg.yfcc_exif_db) as index:
        return index.get_many(ids)


def process_shard(shard: int, rows: Sequence[SourceRow], cfg: ShardConfig) -> dict[str, Any]:
    """Build shard ``shard`` from ``rows``; returns its stats (also written to disk).

    Skips the work if the shard is already complete (its files match its stats file);
    redoes it from scratch otherwise.  Never raises on bad rows: each ends as a table row
    with a status.  Raises only on an unusable output folder (or the side EXIF index).
    """
    return process_shards([(shard, rows)], cfg)[0]


def process_shards(batch: Sequence[tuple[int, Sequence[SourceRow]]], cfg: ShardConfig) -> list[dict[str, Any]]:
    """Build the shards of ``batch`` (consecutive ones, in order) through one fetch window; their stats.

    One window for the whole batch: while a shard waits for its parked rows (a paused host),
    the rows of the next shards are fetched (and spilled until their turn), so a pause does not
    idle the worker at every shard's end.  Each shard is still written whole, in source order,
    and committed as soon as its last row is in, exactly as :func:`process_shard` alone would.
    Complete shards are skipped (their stats returned), incomplete ones redone from scratch.
    """
    storage.configure(cfg.storage_options)  # this process may be a Ray or pool worker
    out_dir = storage.resolve(cfg.out_dir)
    storage.makedirs(out_dir)
    stats: dict[int, dict[str, Any]] = {}
    todo = []
    for shard, rows in batch:
        problem = shard_problem(out_dir, shard)
        if problem is None:
            stats[shard] = json.loads(storage.read_bytes(shard_paths(out_dir, shard)["stats"]))
            continue
        log.debug("shard %s: built from scratch (%s)", shard_name(shard), problem)
        remove_partial(out_dir, shard)
        todo.append((shard, rows))
    side = {k: v for _, rows in todo for k, v in _side_exif(rows, cfg).items()}
    needs_http = any(r.path is None for _, rows in todo for r in rows)
    downloader = Downloader(cfg.download) if needs_http else None
    window = _window(cfg, downloader, side)
    results = window.run(r for _, rows in todo for r in rows)
    try:
        for shard, rows in todo:
            stats[shard] = _build(out_dir, shard, rows, itertools.islice(results, len(rows)), cfg, window)
    finally:
        results.close()  # a failed shard: the batch's queued rows must not run on
        if downloader is not None:
            downloader.close()
    return [stats[shard] for shard, _ in batch]


def _build(
    out_dir: storage.Location,
    shard: int,
    rows: Sequence[SourceRow],
    results: Iterator[tuple[SourceRow, Handled]],
    cfg: ShardConfig,
    window: Window[SourceRow, Handled],
) -> dict[str, Any]:
    """Write one shard from its rows' results (in order); commit it and return its stats."""
    t0, parked0 = time.time(), window.stats()
    paths = shard_paths(out_dir, shard)
    writer = TarShardWriter(paths["tar"])
    acc = _Accumulator(shard, cfg.dedup)
    try:
        n = 0
        for pos, (row, (fetched, out)) in enumerate(results):
            acc.add(writer, pos, row, fetched, out)
            n += 1
        assert n == len(rows), f"shard {shard}: {n} of {len(rows)} rows came back"
        files = {"tar": writer.commit()}
    except BaseException:
        writer.abort()
        raise
    files["parquet"] = write_table(paths["parquet"], acc.table)
    parking = {k: v - parked0[k] for k, v in window.stats().items() if k != "parked_peak"}
    stats = {
        "shard": shard,
        "rows": len(rows),
        "samples": writer.count,
        "status_counts": {s: acc.counts.get(s, 0) for s in st.STATUSES},
        "tag_sources": dict(acc.tag_sources),
        **acc.totals,
        "parking": parking,
        # From this shard's first row written (its rows may have been fetched earlier).
        "started": t0,
        "seconds": round(time.time() - t0, 3),
        # Peak RSS of the process running this shard (a Ray worker or the driver).
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    stats = write_stats(out_dir, shard, stats, files)  # last: its presence commits the shard
    log.info("shard %s: %d rows, %d samples", shard_name(shard), len(rows), writer.count)
    return stats


class _Accumulator:
    """The shard's table rows, status counts and totals, fed one processed row at a time."""

    def __init__(self, shard: int, dedup: bool) -> None:
        self.shard, self.dedup = shard, dedup
        self.table: list[dict[str, Any]] = []
        self.counts: Counter = Counter()
        self.tag_sources: Counter = Counter()
        self.seen: dict[str, str] = {}
        self.totals = {"bytes_fetched": 0, "bytes_written": 0, "exif_disagreements": 0}

    def add(
        self, writer: TarShardWriter, pos: int, row: SourceRow, fetched: FetchResult, out: SampleOutcome | None
    ) -> None:
        """Record one row; a success not seen before also goes into the tar."""
        rec = _table_row(self.shard, pos, row, fetched, out)
        self.totals["bytes_fetched"] += rec["bytes"] or 0
        if out is not None and rec["status"] == st.SUCCESS:
            if self.dedup and out.sha256 in self.seen:
                rec["status"], rec["error"] = st.DUPLICATE, f"duplicate of {self.seen[out.sha256]}"
            else:
                self._write(writer, rec, fetched, out)
        self.counts[rec["status"]] += 1
        self.table.append(rec)

    def _write(self, writer: TarShardWriter, rec: dict[str, Any], fetched: FetchResult, out: SampleOutcome) -> None:
        try:
            members = _members(rec, fetched.data or b"", out)
            writer.add(rec["key"], members)  # checks every name before writing any
        except (ValueError, TypeError) as exc:  # this sample's members, not the tar, are bad
            rec["status"], rec["error"] = st.DECODE_FAILED, f"internal error: {_one_line(exc)}"
            return
        if out.sha256:
            self.seen[out.sha256] = rec["key"]
        self.totals["bytes_written"] += rec["bytes"] or 0
        self.tag_sources.update(out.exif_source.values())
        self.totals["exif_disagreements"] += out.exif_disagreements
