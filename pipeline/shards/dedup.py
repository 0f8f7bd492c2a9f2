"""Cross-shard duplicate removal: the same bytes (sha256) kept once, in its first shard.

Workers mark duplicates inside their own shard; shards built in parallel cannot see each
other, so after all shards are complete this pass keeps the first occurrence in (shard,
position) order and, for every shard holding a later copy, rewrites its tar without that
sample and its table with status ``duplicate``.  The rule is deterministic, so running the
pass again (after a resume, say) changes nothing more.

Memory is flat in the number of rows N: the (sha256, shard, key, read order) of every
successful row are spilled to P files partitioned by hash (P = ceil(N / partition_rows)),
under a temporary folder in the dataset folder (in the local temporary folder when the
dataset is on an object store) that is removed afterwards; each partition
is then resolved on its own, and the duplicates found are spilled again by shard range so
that the rewrite also holds one range at a time.  The naive in-memory version, which this
must match exactly, is tests/pipeline/dedup_reference.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import tempfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from exiflang.pipeline import records as st
from exiflang.pipeline import storage
from exiflang.pipeline.shards.files import (
    TarShardWriter,
    complete_shards,
    parquet_metadata,
    read_parquet,
    shard_paths,
    write_arrow_table,
    write_stats,
)

log = logging.getLogger(__name__)
# Rows resolved in memory at once (~100 bytes each, a few times that while sorting).  Peak
# RSS measured flat at 202-209 MB (imports ~75, reading Parquet ~90) from 10^5 to 3x10^6
# rows; 250,000 gave 205-266 MB and no more speed (docs/scale_metadata.md).
PARTITION_ROWS = 50_000
# Rows buffered before appending to the partition files, in units of PARTITION_ROWS: more
# rows per appended chunk (fewer file appends when there are thousands of partitions).
FLUSH_FACTOR = 5


class _Spill:
    """``parts`` append-only files of length-prefixed Arrow IPC chunks under ``folder``.

    Rows are buffered in memory and appended when ``flush_rows`` (>= 1) are pending, so the
    buffer never holds more than that plus the last table added.
    """

    def __init__(self, folder: Path, name: str, parts: int, flush_rows: int) -> None:
        self.parts = parts
        self.paths = [folder / f"{name}-{p:05d}.arrows" for p in range(parts)]
        self._flush_rows = flush_rows
        self._buffer: dict[int, list[pa.Table]] = defaultdict(list)
        self._pending = 0

    def add(self, part: np.ndarray, table: pa.Table) -> None:
        """Queue each row of ``table`` for partition ``part[row]`` (0 <= part < parts)."""
        order = np.argsort(part, kind="stable")
        part, table = part[order], table.take(order)
        cuts = np.flatnonzero(np.diff(part)) + 1
        for start, end in zip([0, *cuts], [*cuts, len(part)]):
            self._buffer[int(part[start])].append(table.slice(start, end - start))
        self._pending += len(part)
        if self._pending >= self._flush_rows:
            self.flush()

    def flush(self) -> None:
        for p, tables in self._buffer.items():
            table = pa.concat_tables(tables)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            data = sink.getvalue()
            with open(self.paths[p], "ab") as fh:
                fh.write(len(data).to_bytes(8, "little"))
                fh.write(data)
        self._buffer.clear()
        self._pending = 0

    def read(self, p: int) -> pa.Table | None:
        """Everything appended to partition ``p``, in append order; None when empty."""
        if not self.paths[p].exists():
            return None
        data = pa.py_buffer(self.paths[p].read_bytes())
        chunks, pos = [], 0
        while pos < data.size:
            size = int.from_bytes(data.slice(pos, 8).to_pybytes(), "little")
            chunks.append(pa.ipc.open_stream(data.slice(pos + 8, size)).read_all())
            pos += 8 + size
        return pa.concat_tables(chunks)

    def remove(self, p: int) -> None:
        self.paths[p].unlink(missing_ok=True)


def _partition_of(sha: pa.Array, parts: int) -> np.ndarray:
    """Partition (0 <= p < parts) of each hash: crc32 of its first 16 characters."""
    if parts == 1:
        return np.zeros(len(sha), dtype=np.int64)
    prefix = pc.utf8_slice_codeunits(sha, 0, 16).dictionary_encode()
    # One crc32 per distinct prefix, then a vectorised lookup for the rows.
    codes = np.array([zlib.crc32(v.encode()) % parts for v in prefix.dictionary.to_pylist()], dtype=np.int64)
    return codes[prefix.indices.to_numpy()]


def _spill_hashes(out_dir: storage.PathLike, shards: list[int], spill: _Spill) -> None:
    """Pass 1: successful rows of every shard, numbered in read order, into ``spill``."""
    ordinal = 0
    for shard in shards:
        table = read_parquet(shard_paths(out_dir, shard)["parquet"], columns=["key", "shard", "status", "sha256"])
        table = table.filter(pc.equal(table["status"], st.SUCCESS))
        n = len(table)
        if not n:
            continue
        # A missing hash is one more value (as the reference's dict treats None); "" is
        # never a real sha256, and -1 never a real shard.
        sha = pc.fill_null(table["sha256"], "").combine_chunks()
        rows = pa.table(
            {
                "sha256": sha,
                "shard": pc.fill_null(table["shard"], -1),
                "key": table["key"],
                "ordinal": pa.array(np.arange(ordinal, ordinal + n), pa.int64()),
            }
        )
        ordinal += n
        spill.add(_partition_of(sha, spill.parts), rows)
    spill.flush()


def _duplicates_in(part: pa.Table) -> pa.Table:
    """Pass 2, one partition: rows whose hash was first seen (lowest ordinal) in another shard."""
    part = part.sort_by([("sha256", "ascending"), ("ordinal", "ascending")])
    sha = part["sha256"].combine_chunks()
    n = len(part)
    starts = np.ones(n, dtype=bool)
    if n > 1:
        starts[1:] = pc.not_equal(sha.slice(1), sha.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    first = np.flatnonzero(starts)[np.cumsum(starts) - 1]  # row of each row's first copy
    shard = part["shard"].to_numpy()
    idx = np.flatnonzero(shard != shard[first])
    return pa.table(
        {
            "shard": pa.array(shard[idx], pa.int32()),
            "key": part["key"].take(idx),
            "first_key": part["key"].take(first[idx]),
            "ordinal": part["ordinal"].take(idx),
        }
    )


def _per_shard(drops: _Spill) -> Iterator[tuple[int, dict[str, str]]]:
    """Pass 3: ``(shard, {key: first key})`` in shard order, one shard range in memory."""
    for q in range(drops.parts):
        table = drops.read(q)
        if table is None:
            continue
        table = table.sort_by([("shard", "ascending"), ("ordinal", "ascending")])
        shard = table["shard"].to_numpy()
        keys, firsts = table["key"].to_pylist(), table["first_key"].to_pylist()
        cuts = np.flatnonzero(np.diff(shard)) + 1
        for start, end in zip([0, *cuts], [*cuts, len(shard)]):
            yield int(shard[start]), dict(zip(keys[start:end], firsts[start:end]))
        drops.remove(q)


def iter_cross_shard_duplicates(
    out_dir: storage.PathLike, *, partition_rows: int = PARTITION_ROWS
) -> Iterator[tuple[int, dict[str, str]]]:
    """``(shard, {key: key of the first copy})`` for each shard holding later copies, in shard order.

    ``partition_rows`` (>= 1) bounds the rows held in memory at once; every table is read
    before the first item is yielded, so the caller may rewrite shards while iterating.
    """
    shards = complete_shards(out_dir)
    if not shards:
        return
    n = sum(parquet_metadata(shard_paths(out_dir, s)["parquet"]).num_rows for s in shards)
    parts = max(1, -(-n // partition_rows))
    local = storage.resolve(out_dir)
    work = Path(tempfile.mkdtemp(prefix=".dedup-", dir=local if isinstance(local, Path) else None))
    try:
        hashes = _Spill(work, "hash", parts, FLUSH_FACTOR * partition_rows)
        _spill_hashes(out_dir, shards, hashes)
        drops = _Spill(work, "drop", parts, FLUSH_FACTOR * partition_rows)
        top = max(shards) + 1
        for p in range(parts):
            table = hashes.read(p)
            hashes.remove(p)
            found = _duplicates_in(table) if table is not None else None
            if found is not None and len(found):
                # Contiguous shard ranges: a range's drops are at most its rows.
                bucket = np.clip(found["shard"].to_numpy().astype(np.int64) * parts // top, 0, parts - 1)
                drops.add(bucket, found)
        drops.flush()
        yield from _per_shard(drops)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def find_cross_shard_duplicates(
    out_dir: storage.PathLike, *, partition_rows: int = PARTITION_ROWS
) -> dict[int, dict[str, str]]:
    """``{shard: {key: key of the first copy}}`` for successful samples seen in an earlier shard."""
    return dict(iter_cross_shard_duplicates(out_dir, partition_rows=partition_rows))


def _samples(src: tarfile.TarFile, drop: set[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The tar's samples not in ``drop``: consecutive members sharing a key, as written."""
    key = ""
    members: dict[str, bytes] = {}
    for member in src:
        name, _, ext = member.name.partition(".")
        if name in drop:
            continue
        if name != key and members:
            yield key, members
            members = {}
        key = name
        fh = src.extractfile(member)
        members[ext] = fh.read() if fh else b""
    if members:
        yield key, members


def _rewrite_tar(path: storage.Location, drop: set[str]) -> tuple[int, dict]:
    """Copy a tar without the members of the dropped keys, one sample in memory; returns the
    samples kept and the new tar's file record."""
    writer = TarShardWriter(path)
    kept = 0
    try:
        # Read as a stream: one forward pass, also over an object store.
        with storage.open_read(path) as fh, tarfile.open(fileobj=fh, mode="r|") as src:
            for key, members in _samples(src, drop):
                writer.add(key, members)
                kept += 1
        record = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return kept, record


def _rewrite_shard(out_dir: storage.PathLike, shard: int, drop: dict[str, str]) -> None:
    """Drop ``drop``'s keys from the shard's tar; mark them ``duplicate`` in its table and stats."""
    paths = shard_paths(out_dir, shard)
    samples, tar_record = _rewrite_tar(paths["tar"], set(drop))
    table = read_parquet(paths["parquet"])
    keys = table["key"].to_pylist()
    status = [st.DUPLICATE if k in drop else s for k, s in zip(keys, table["status"].to_pylist())]
    error = [f"duplicate of {drop[k]}" if k in drop else e for k, e in zip(keys, table["error"].to_pylist())]
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    table = table.set_column(table.schema.get_field_index("error"), "error", pa.array(error, pa.string()))
    table_record = write_arrow_table(paths["parquet"], table)
    stats = json.loads(storage.read_bytes(paths["stats"]))
    counts = {s: status.count(s) for s in st.STATUSES}
    stats.update(samples=samples, status_counts=counts)
    # Also records the new tar's and table's size and sha256, which a rerun checks.
    write_stats(out_dir, shard, stats, {"tar": tar_record, "parquet": table_record})


def remove_cross_shard_duplicates(out_dir: storage.PathLike, *, partition_rows: int = PARTITION_ROWS) -> int:
    """Mark and drop later copies across shards; returns how many samples were dropped."""
    total = shards = 0
    for shard, drop in iter_cross_shard_duplicates(out_dir, partition_rows=partition_rows):
        _rewrite_shard(out_dir, shard, drop)
        total, shards = total + len(drop), shards + 1
    if total:
        log.info("dropped %d cross-shard duplicates in %d shards", total, shards)
    return total


__all__ = [
    "complete_shards",
    "find_cross_shard_duplicates",
    "iter_cross_shard_duplicates",
    "remove_cross_shard_duplicates",
]
