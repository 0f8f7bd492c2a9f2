"""Tag selection semantics, sizes/summary files, and cross-shard dedup on hand-made shards."""

import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from exiflang.pipeline import records as st
from exiflang.pipeline.shards.dedup import remove_cross_shard_duplicates
from exiflang.pipeline.shards.files import TarShardWriter, atomic_write_json, shard_paths, write_table
from exiflang.pipeline.shards.tags import select_tags, vocabulary_hash, write_sizes_and_summary, write_tags


def test_strictly_more_than_threshold():
    counts = Counter({"A": 10, "B": 6, "C": 5, "D": 4})
    assert select_tags(counts, 10, 0.5) == ["A", "B"]  # C at exactly 50% is out
    assert select_tags(counts, 10, 0.3) == ["A", "B", "C", "D"]
    assert select_tags(counts, 0, 0.5) == []
    with pytest.raises(ValueError):
        select_tags(counts, 10, 1.0)


def test_order_is_frequency_then_name():
    counts = Counter({"b": 7, "a": 7, "c": 9})
    assert select_tags(counts, 10) == ["c", "a", "b"]
    assert vocabulary_hash(["a", "b"]) != vocabulary_hash(["b", "a"])


def _shard(out: Path, shard: int, samples: list[tuple[str, str, dict]]) -> None:
    """Write a complete shard: samples are (status, sha256, exif)."""
    paths = shard_paths(out, shard)
    w = TarShardWriter(paths["tar"])
    rows = []
    for pos, (status, sha, exif) in enumerate(samples):
        key = f"{shard:05d}_{pos:05d}"
        rows.append(
            {
                "key": key,
                "shard": shard,
                "position": pos,
                "status": status,
                "sha256": sha,
                "exif": exif,
                "n_tags": len(exif),
            }
        )
        if status == st.SUCCESS:
            w.add(key, {"jpg": sha.encode(), "exif.json": json.dumps(exif).encode()})
    w.commit()
    write_table(paths["parquet"], rows)
    atomic_write_json(
        paths["stats"],
        {
            "shard": shard,
            "rows": len(rows),
            "samples": w.count,
            "status_counts": dict(Counter(r["status"] for r in rows)),
        },
    )


def test_selection_reads_only_successful_rows(tmp_path):
    full = {"Make": "X", "Model": "Y", "ISO Speed Ratings": "100"}
    _shard(
        tmp_path,
        0,
        [
            (st.SUCCESS, "a", full),
            (st.SUCCESS, "b", {"Make": "X"}),
            (st.TOO_FEW_TAGS, "c", {"Model": "Y"}),
            (st.DECODE_FAILED, "d", {}),
        ],
    )
    _shard(tmp_path, 1, [(st.SUCCESS, "e", {"Make": "X", "Model": "Z"})])
    doc = write_tags(tmp_path, 0.5, min_tags=10)
    assert doc["num_images"] == 3
    assert doc["tags"] == ["Make", "Model"]  # Model 2/3; ISO 1/3 is out
    assert doc["frequencies"]["Model"] == pytest.approx(2 / 3, abs=1e-5)
    assert json.loads((tmp_path / "tags.json").read_text())["hash"] == doc["hash"]
    summary = write_sizes_and_summary(tmp_path)
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"00000.tar": 2, "00001.tar": 1}
    assert summary["status_counts"][st.SUCCESS] == 3


def test_cross_shard_duplicates_dropped_once_and_idempotent(tmp_path):
    e = {"Make": "X"}
    _shard(tmp_path, 0, [(st.SUCCESS, "h1", e), (st.SUCCESS, "h2", e)])
    _shard(tmp_path, 1, [(st.SUCCESS, "h2", e), (st.SUCCESS, "h3", e), (st.SUCCESS, "h1", e)])
    assert remove_cross_shard_duplicates(tmp_path) == 2
    assert remove_cross_shard_duplicates(tmp_path) == 0
    t = pq.read_table(shard_paths(tmp_path, 1)["parquet"]).to_pylist()
    assert [r["status"] for r in t] == [st.DUPLICATE, st.SUCCESS, st.DUPLICATE]
    assert t[0]["error"] == "duplicate of 00000_00001"
    with tarfile.open(shard_paths(tmp_path, 1)["tar"]) as tar:
        assert sorted(tar.getnames()) == ["00001_00001.exif.json", "00001_00001.jpg"]
    stats = json.loads(shard_paths(tmp_path, 1)["stats"].read_text())
    assert stats["samples"] == 1 and stats["status_counts"][st.DUPLICATE] == 2


def test_tag_counts_equal_a_row_by_row_count(tmp_path):
    """Counted in Arrow: the same as reading every successful row's map in Python."""
    import random

    from exiflang.pipeline.shards.files import read_tables
    from exiflang.pipeline.shards.tags import tag_counts

    rng = random.Random(3)
    names = [f"Tag {i}" for i in range(30)] + ["Ma\udcffke"]
    for shard in range(3):
        samples = []
        for i in range(rng.randrange(0, 40)):
            exif = {t: rng.choice(["1", "", None]) for t in rng.sample(names, rng.randrange(0, 12))}
            status = rng.choice([st.SUCCESS, st.SUCCESS, st.TOO_FEW_TAGS])
            samples.append((status, f"{shard}-{i}", exif))
        _shard(tmp_path, shard, samples)
    table = read_tables(tmp_path, ["status", "exif"]).to_pylist()
    kept = [r for r in table if r["status"] == st.SUCCESS]
    counts, n = tag_counts(tmp_path)
    assert n == len(kept)
    assert counts == Counter(k for r in kept for k, _ in r["exif"] or [])
