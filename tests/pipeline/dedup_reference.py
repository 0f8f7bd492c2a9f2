"""Naive reference for cross-shard dedup: every hash of the dataset in one in-memory dict.

This is pipeline/shards/dedup.py as it was before the spilling version (issue 19), kept so that
tests can check the streaming pass against it row for row and byte for byte, and so that
benchmarks/scale_metadata.py can measure the memory it needed.  The rule: the first copy
in (shard, position) read order is kept; a later copy in another shard is dropped from its
tar and marked ``duplicate`` in its table; copies within one shard are left to the worker.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from exiflang.pipeline import records as st
from exiflang.pipeline.shards.files import TarShardWriter, read_tables, shard_paths, write_stats

log = logging.getLogger(__name__)


def find_cross_shard_duplicates(out_dir: Path) -> dict[int, dict[str, str]]:
    """``{shard: {key: key of the first copy}}`` for successful samples seen in an earlier shard."""
    table = read_tables(out_dir, ["key", "shard", "position", "status", "sha256"])
    table = table.filter(pc.equal(table["status"], st.SUCCESS))
    first: dict[str, tuple[int, str]] = {}
    dups: dict[int, dict[str, str]] = defaultdict(dict)
    # Tables are read in shard order and rows are in position order within a shard.
    for key, shard, sha in zip(table["key"].to_pylist(), table["shard"].to_pylist(), table["sha256"].to_pylist()):
        if sha in first and first[sha][0] != shard:
            dups[shard][key] = first[sha][1]
        else:
            first.setdefault(sha, (shard, key))
    return dict(dups)


def _rewrite_tar(path: Path, drop: set[str]) -> int:
    """Copy a tar without the members of the dropped keys; returns samples kept."""
    writer = TarShardWriter(path)
    kept: set[str] = set()
    try:
        with tarfile.open(path, "r") as src:
            groups: dict[str, dict[str, bytes]] = {}
            for member in src:
                key, _, ext = member.name.partition(".")
                if key in drop:
                    continue
                fh = src.extractfile(member)
                groups.setdefault(key, {})[ext] = fh.read() if fh else b""
            for key, members in groups.items():
                writer.add(key, members)
                kept.add(key)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return len(kept)


def _rewrite_shard(out_dir: Path, shard: int, drop: dict[str, str]) -> None:
    paths = shard_paths(out_dir, shard)
    samples = _rewrite_tar(paths["tar"], set(drop))
    table = pq.read_table(paths["parquet"])
    keys = table["key"].to_pylist()
    status = [st.DUPLICATE if k in drop else s for k, s in zip(keys, table["status"].to_pylist())]
    error = [f"duplicate of {drop[k]}" if k in drop else e for k, e in zip(keys, table["error"].to_pylist())]
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    table = table.set_column(table.schema.get_field_index("error"), "error", pa.array(error, pa.string()))
    tmp = paths["parquet"].with_name(paths["parquet"].name + ".tmp-dedup")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(paths["parquet"])
    stats = json.loads(paths["stats"].read_text())
    counts = {s: status.count(s) for s in st.STATUSES}
    stats.update(samples=samples, status_counts=counts)
    # Also records the new tar's and table's size and sha256, which a rerun checks.
    write_stats(out_dir, shard, stats)


def remove_cross_shard_duplicates(out_dir: Path) -> int:
    """Mark and drop later copies across shards; returns how many samples were dropped."""
    dups = find_cross_shard_duplicates(out_dir)
    for shard in sorted(dups):
        _rewrite_shard(out_dir, shard, dups[shard])
    total = sum(len(d) for d in dups.values())
    if total:
        log.info("dropped %d cross-shard duplicates in %d shards", total, len(dups))
    return total
