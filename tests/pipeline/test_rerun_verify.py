"""Completed shards are verified on rerun against the sizes and sha256 their stats file records;
a damaged one (missing, truncated, altered file) is redone, an intact one is not touched."""

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from exiflang.pipeline import records as st
from exiflang.pipeline.build_shards import main as shards_main
from exiflang.pipeline.shards.files import (
    TarShardWriter,
    complete_shards,
    read_tables,
    shard_paths,
    shard_problem,
    write_stats,
    write_table,
)

RUN = ["--executor", "local", "--threads", "2", "--rows-per-shard", "3", "-q"]
STABLE = ["key", "url", "status", "error", "width", "height", "bytes", "sha256", "exif"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(out: Path) -> dict[str, tuple[str, int]]:
    """sha256 and modification time (ns) of every tar and table: a redone file is newer."""
    return {
        p.name: (_digest(p), p.stat().st_mtime_ns)
        for p in sorted(out.glob("000*.*"))
        if p.suffix in (".tar", ".parquet")
    }


@pytest.fixture()
def folder(tmp_path, photos_dir):
    src = tmp_path / "src"
    src.mkdir()
    for photo in sorted(photos_dir.glob("*.jpg"))[:6]:
        os.symlink(photo, src / photo.name)
    return src


def _build(src: Path, out: Path, *extra: str) -> None:
    assert shards_main(["--source", str(src), "--out", str(out), *RUN, *extra]) == 0


def test_stats_file_records_sizes_and_hashes(folder, tmp_path):
    out = tmp_path / "out"
    _build(folder, out)
    for shard in (0, 1):
        paths = shard_paths(out, shard)
        files = json.loads(paths["stats"].read_text())["files"]
        for kind in ("tar", "parquet"):
            assert files[kind] == {"size": paths[kind].stat().st_size, "sha256": _digest(paths[kind])}


def test_truncated_tar_after_a_complete_run_is_redone(folder, tmp_path, caplog):
    out = tmp_path / "out"
    _build(folder, out)
    before, table = _files(out), read_tables(out, STABLE).to_pylist()
    tar0 = shard_paths(out, 0)["tar"]
    with open(tar0, "r+b") as fh:  # what a full disk or a bad copy leaves
        fh.truncate(tar0.stat().st_size // 2)
    assert shard_problem(out, 0, "size").startswith("00000.tar is ")
    _build(folder, out)
    after = _files(out)
    assert after["00000.tar"][0] == before["00000.tar"][0]  # same bytes again
    assert after["00001.tar"] == before["00001.tar"]  # untouched (same mtime)
    assert after["00001.parquet"] == before["00001.parquet"]
    assert read_tables(out, STABLE).to_pylist() == table
    assert "shard 00000 is redone: 00000.tar is" in caplog.text


def test_same_size_damage_is_caught_by_the_hash_not_by_size(folder, tmp_path):
    out = tmp_path / "out"
    _build(folder, out)
    good = _files(out)
    tar1 = shard_paths(out, 1)["tar"]
    data = bytearray(tar1.read_bytes())
    data[len(data) // 3] ^= 0xFF  # a flipped byte inside a photo
    tar1.write_bytes(bytes(data))
    _build(folder, out, "--rerun-check", "size")
    assert _files(out)["00001.tar"][0] != good["00001.tar"][0]  # size alone trusts it
    _build(folder, out)  # default: hash
    assert _files(out)["00001.tar"][0] == good["00001.tar"][0]
    assert _files(out)["00000.tar"] == good["00000.tar"]


def test_missing_table_and_unreadable_stats_are_redone(folder, tmp_path):
    out = tmp_path / "out"
    _build(folder, out)
    good, table = _files(out), read_tables(out, STABLE).to_pylist()
    shard_paths(out, 0)["parquet"].unlink()
    shard_paths(out, 1)["stats"].write_text("{not json")
    assert shard_problem(out, 0) == "00000.parquet: No such file or directory"
    assert shard_problem(out, 1) == "00001_stats.json unreadable (JSONDecodeError)"
    _build(folder, out)
    after = _files(out)
    for name in ("00000.tar", "00001.tar"):
        assert after[name][0] == good[name][0] and after[name][1] > good[name][1]  # rewritten
    assert read_tables(out, STABLE).to_pylist() == table
    assert complete_shards(out) == [0, 1] and shard_problem(out, 1) is None


def _hand_made_shard(out: Path, record: bool) -> None:
    paths = shard_paths(out, 0)
    w = TarShardWriter(paths["tar"])
    w.add("00000_00000", {"jpg": b"x" * 3000, "json": b"{}"})
    w.commit()
    write_table(paths["parquet"], [{"key": "00000_00000", "status": st.SUCCESS}])
    stats = {"shard": 0, "rows": 1, "samples": 1, "status_counts": dict(Counter([st.SUCCESS]))}
    if record:
        write_stats(out, 0, stats)
    else:  # a stats file written before sizes were recorded
        paths["stats"].write_text(json.dumps(stats))


def test_stats_without_recorded_sizes_still_catch_truncation(tmp_path):
    _hand_made_shard(tmp_path, record=False)
    assert shard_problem(tmp_path, 0) is None
    tar = shard_paths(tmp_path, 0)["tar"]
    for cut in (4000, 3584, 700):  # mid-photo, mid-photo on a block boundary, mid-header
        with open(tar, "r+b") as fh:
            fh.truncate(cut)
        assert "truncated" in shard_problem(tmp_path, 0), cut


def test_rerun_check_names_its_choices(tmp_path):
    _hand_made_shard(tmp_path, record=True)
    assert shard_problem(tmp_path, 0, "hash") is None and shard_problem(tmp_path, 0, "size") is None
    with pytest.raises(ValueError, match="hash, size"):
        shard_problem(tmp_path, 0, "mtime")
