"""The spilling cross-shard dedup against the naive in-memory reference, on real small shards."""

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from exiflang.pipeline import records as st
from exiflang.pipeline.shards import dedup
from exiflang.pipeline.shards.files import TarShardWriter, atomic_write_json, is_complete, shard_paths, write_table
from tests.pipeline import dedup_reference as ref

FAILED = (st.HTTP_ERROR, st.DECODE_FAILED, st.TOO_FEW_TAGS)


def write_dataset(out: Path, seed: int, shards: int = 6, rows: int = 40, hashes: int = 25) -> None:
    """Complete shards whose successful rows draw sha256s from a small pool: many copies,
    across shards and within one, some failed rows sharing hashes, a rare missing hash."""
    rng = random.Random(seed)
    pool = [f"{rng.getrandbits(256):064x}" for _ in range(hashes)]
    out.mkdir(parents=True, exist_ok=True)
    for shard in range(shards):
        paths = shard_paths(out, shard)
        writer, table = TarShardWriter(paths["tar"]), []
        for pos in range(rng.randint(0, rows)):
            key = f"{shard:05d}_{pos:05d}"
            status = st.SUCCESS if rng.random() < 0.8 else rng.choice(FAILED)
            sha = None if rng.random() < 0.02 else rng.choice(pool)
            table.append(
                {
                    "key": key,
                    "shard": shard,
                    "position": pos,
                    "status": status,
                    "sha256": sha,
                    "error": None if status == st.SUCCESS else "x",
                }
            )
            if status == st.SUCCESS:
                writer.add(key, {"jpg": f"{sha}{key}".encode(), "json": b"{}"})
        writer.commit()
        write_table(paths["parquet"], table)
        counts = Counter(r["status"] for r in table)
        atomic_write_json(
            paths["stats"], {"shard": shard, "rows": len(table), "samples": writer.count, "status_counts": counts}
        )


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("partition_rows", [1, 7, 50, 10**6])
def test_find_equals_reference(tmp_path, seed, partition_rows):
    write_dataset(tmp_path, seed)
    expected = ref.find_cross_shard_duplicates(tmp_path)
    assert expected  # the generator does make duplicates
    got = dedup.find_cross_shard_duplicates(tmp_path, partition_rows=partition_rows)
    assert got == expected
    # Same shards, and within each shard the same keys in the same (position) order.
    assert [list(got[s].items()) for s in sorted(got)] == [list(expected[s].items()) for s in sorted(expected)]
    assert not list(tmp_path.glob(".dedup-*"))  # the spill folder is removed


@pytest.mark.parametrize("seed", [11, 12])
def test_remove_rewrites_the_same_bytes_as_reference(tmp_path, seed):
    a, b = tmp_path / "a", tmp_path / "b"
    write_dataset(a, seed, shards=8, rows=60)
    write_dataset(b, seed, shards=8, rows=60)
    assert _files(a) == _files(b)
    dropped = ref.remove_cross_shard_duplicates(a)
    assert dropped > 0
    assert dedup.remove_cross_shard_duplicates(b, partition_rows=5) == dropped
    assert _files(a) == _files(b)  # tars, tables and stats, byte for byte
    assert all(is_complete(b, s) for s in range(8))  # a rerun would not redo a rewritten shard
    assert dedup.remove_cross_shard_duplicates(b, partition_rows=5) == 0


def test_many_way_and_within_shard_copies(tmp_path):
    """One hash in every shard (twice in some), one only within a shard: the first copy is
    kept, every copy in a later shard points at it, copies beside the first are the worker's."""
    same, local = "a" * 64, "b" * 64
    for shard, shas in enumerate([[local, same, local, same], [same, "c" * 64, same], [same], ["c" * 64, local]]):
        paths = shard_paths(tmp_path, shard)
        writer = TarShardWriter(paths["tar"])
        rows = [
            {"key": f"{shard}_{i}", "shard": shard, "position": i, "status": st.SUCCESS, "sha256": sha}
            for i, sha in enumerate(shas)
        ]
        for r in rows:
            writer.add(r["key"], {"jpg": r["sha256"].encode()})
        writer.commit()
        write_table(paths["parquet"], rows)
        atomic_write_json(paths["stats"], {"shard": shard, "rows": len(rows)})
    expected = {1: {"1_0": "0_1", "1_2": "0_1"}, 2: {"2_0": "0_1"}, 3: {"3_0": "1_1", "3_1": "0_0"}}
    assert ref.find_cross_shard_duplicates(tmp_path) == expected
    for budget in (1, 2, 100):
        assert dedup.find_cross_shard_duplicates(tmp_path, partition_rows=budget) == expected


def test_tiny_budget_spills_to_many_files_then_cleans_up(tmp_path):
    write_dataset(tmp_path, 3, shards=5, rows=30)
    work_files = []
    items = dedup.iter_cross_shard_duplicates(tmp_path, partition_rows=4)
    first = next(items)
    # While iterating, the duplicates sit on disk in several shard-range files.
    work_files = [p.name for p in tmp_path.glob(".dedup-*/*")]
    assert len(work_files) > 1 and all(p.startswith("drop-") for p in work_files)
    rest = list(items)
    assert dict([first, *rest]) == ref.find_cross_shard_duplicates(tmp_path)
    assert not list(tmp_path.glob(".dedup-*"))


def test_no_shards_and_no_successes(tmp_path):
    assert dedup.find_cross_shard_duplicates(tmp_path) == {}
    paths = shard_paths(tmp_path, 0)
    TarShardWriter(paths["tar"]).commit()
    write_table(paths["parquet"], [{"key": "k", "shard": 0, "position": 0, "status": st.HTTP_ERROR, "sha256": None}])
    atomic_write_json(paths["stats"], {"shard": 0})
    assert dedup.find_cross_shard_duplicates(tmp_path) == {}
    assert dedup.remove_cross_shard_duplicates(tmp_path) == 0
    assert pq.read_table(paths["parquet"])["status"].to_pylist() == [st.HTTP_ERROR]
    assert json.loads(paths["stats"].read_text()) == {"shard": 0}
