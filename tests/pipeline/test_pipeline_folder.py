"""The pipeline over real photo folders: the shard contract, byte-identity, malformed files."""

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from exiflang.pipeline import records as st
from exiflang.pipeline.build_shards import main as shards_main
from exiflang.pipeline.shards.files import complete_shards, read_tables, shard_paths


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory, photos_dir):
    out = tmp_path_factory.mktemp("photos_shards")
    rc = shards_main(
        ["--source", str(photos_dir), "--out", str(out), "--executor", "local", "--rows-per-shard", "40", "-q"]
    )
    assert rc == 0
    return out


def test_every_source_row_has_a_table_row(photo_shards, photos_dir):
    photos = sorted(p for p in photos_dir.rglob("*.jpg"))
    table = read_tables(photo_shards)
    assert table.num_rows == len(photos) == 102
    assert sorted(table["url"].to_pylist()) == sorted(str(p) for p in photos)
    assert set(table["status"].to_pylist()) <= set(st.STATUSES)
    assert complete_shards(photo_shards) == [0, 1, 2]


def test_tar_holds_original_bytes_and_exif(photo_shards):
    table = read_tables(photo_shards).to_pylist()
    by_key = {r["key"]: r for r in table}
    n_ok = 0
    for shard in complete_shards(photo_shards):
        members = _tar_members(shard_paths(photo_shards, shard)["tar"])
        keys = {name.split(".")[0] for name in members}
        for key in keys:
            row = by_key[key]
            assert row["status"] == st.SUCCESS
            data = members[f"{key}.jpg"]
            assert data == Path(row["url"]).read_bytes()  # never re-encoded
            assert hashlib.sha256(data).hexdigest() == row["sha256"]
            exif = json.loads(members[f"{key}.exif.json"])
            assert exif == dict(row["exif"]) and len(exif) >= 10
            info = json.loads(members[f"{key}.json"])
            assert (info["width"], info["height"]) == (row["width"], row["height"])
            n_ok += 1
    assert n_ok == sum(r["status"] == st.SUCCESS for r in table) >= 90


def test_tags_sizes_summary(photo_shards):
    tags = json.loads((photo_shards / "tags.json").read_text())
    for tag in ("Make", "Model", "Exposure Time", "Focal Length", "Date/Time Original"):
        assert tag in tags["tags"], tag
    assert all(f > 0.5 for f in tags["frequencies"].values())
    sizes = json.loads((photo_shards / "sizes.json").read_text())
    for name, n in sizes.items():
        assert len(_tar_members(photo_shards / name)) == 3 * n
    summary = json.loads((photo_shards / "summary.json").read_text())
    assert summary["rows"] == 102 and sum(summary["status_counts"].values()) == 102
    assert json.loads((photo_shards / "config.json").read_text())["min_tags"] == 10


def test_rerun_skips_complete_shards(photo_shards, photos_dir):
    before = {p.name: p.stat().st_mtime_ns for p in photo_shards.iterdir() if p.suffix in (".tar", ".parquet")}
    rc = shards_main(
        ["--source", str(photos_dir), "--out", str(photo_shards), "--executor", "local", "--rows-per-shard", "40", "-q"]
    )
    assert rc == 0
    after = {p.name: p.stat().st_mtime_ns for p in photo_shards.iterdir() if p.suffix in (".tar", ".parquet")}
    assert before == after
    job = json.loads((photo_shards / "job.json").read_text())
    assert job["skipped_complete_shards"] == 3


def test_malformed_files_each_get_a_status(tmp_path, shared_data):
    src = shared_data / "malformed"
    files = sorted(src.glob("*.jpg"))
    assert len(files) == 49
    rc = shards_main(
        [
            "--source",
            str(src),
            "--out",
            str(tmp_path),
            "--executor",
            "local",
            "--rows-per-shard",
            "20",
            "--min-tags",
            "1",
            "-q",
        ]
    )
    assert rc == 0
    table = read_tables(tmp_path).to_pylist()
    assert len(table) == 49
    for row in table:
        assert row["status"] in st.STATUSES
        if row["status"] != st.SUCCESS:
            assert row["error"] and "\n" not in row["error"], row
    assert {r["status"] for r in table} >= {st.DECODE_FAILED}


def test_missing_source_is_a_one_line_error(tmp_path, capsys):
    rc = shards_main(["--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err


def test_bad_flag_exits_nonzero(tmp_path):
    assert shards_main(["--source", str(tmp_path), "--verify", "sometimes"]) == 2  # a usage error


def test_shards_read_by_webdataset(photo_shards):
    """The tars follow the WebDataset convention: the webdataset library groups our members."""
    import webdataset as wds

    urls = [str(p) for p in sorted(photo_shards.glob("*.tar"))]
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    seen = 0
    for sample in ds:
        assert {"jpg", "exif.json", "json"} <= set(sample)
        info = json.loads(sample["json"])
        assert info["key"] == sample["__key__"]
        assert hashlib.sha256(sample["jpg"]).hexdigest() == info["sha256"]
        seen += 1
    sizes = json.loads((photo_shards / "sizes.json").read_text())
    assert seen == sum(sizes.values())
