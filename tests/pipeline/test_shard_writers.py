"""The shard writers' fast paths against their naive references: tar headers, table columns, JSON members."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

from exiflang.pipeline.shards.files import SCHEMA, TarShardWriter, _columns, json_bytes, json_safe
from tests.pipeline.shard_files_reference import sanitised_table, tarfile_shard


def _samples(seed: int) -> list[tuple[str, dict[str, bytes]]]:
    rng = random.Random(seed)
    sizes = [0, 1, 511, 512, 513, 1023, 1024, 10_000]
    out = []
    for i in range(40):
        key = f"{i:05d}_{rng.randrange(10**5):05d}"
        out.append(
            (
                key,
                {
                    "jpg": rng.randbytes(rng.choice(sizes + [rng.randrange(70_000)])),
                    "exif.json": rng.randbytes(rng.choice(sizes)),
                    "json": b"{}",
                },
            )
        )
    # Names of exactly 100 bytes and of 101 (tarfile's GNU long-name block).
    out.append(("k" * 95, {"json": b"x"}))
    out.append(("k" * 96, {"json": b"y"}))
    out.append(("k" * 128, {"exif.json": b"z" * 600}))
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_tar_is_byte_identical_to_tarfile(tmp_path: Path, seed: int) -> None:
    samples = _samples(seed)
    writer = TarShardWriter(tmp_path / "mine.tar")
    for key, members in samples:
        writer.add(key, members)
    record = writer.commit()
    tarfile_shard(tmp_path / "ref.tar", samples)
    mine, ref = (tmp_path / "mine.tar").read_bytes(), (tmp_path / "ref.tar").read_bytes()
    assert mine == ref
    assert record["size"] == len(ref)
    assert writer.count == len(samples)


def test_empty_tar_is_byte_identical_to_tarfile(tmp_path: Path) -> None:
    writer = TarShardWriter(tmp_path / "mine.tar")
    writer.commit()
    tarfile_shard(tmp_path / "ref.tar", [])
    assert (tmp_path / "mine.tar").read_bytes() == (tmp_path / "ref.tar").read_bytes()


def test_bad_member_name_writes_nothing_and_abort_leaves_no_file(tmp_path: Path) -> None:
    writer = TarShardWriter(tmp_path / "mine.tar")
    with pytest.raises(ValueError, match="ASCII-safe"):
        writer.add("ok_key", {"jpg": b"x", "b\u00e4d": b"y"})
    assert writer.count == 0 and writer.tmp.stat().st_size == 0
    writer.abort()
    assert not list(tmp_path.iterdir())


def _row(i: int, **over: object) -> dict:
    row = {
        "key": f"00000_{i:05d}",
        "shard": 0,
        "position": i,
        "source_index": i,
        "photo_id": str(i),
        "url": f"http://127.0.0.1/{i}.jpg",
        "status": "success",
        "error": None,
        "http_status": 200,
        "attempts": 1,
        "seconds": 0.01,
        "width": 64,
        "height": 48,
        "bytes": 1000,
        "sha256": "ab" * 32,
        "ext": "jpg",
        "n_tags": 2,
        "exif": {"Make": "Canon", "Model": "EOS 5D", "Empty": None},
        "exif_source": {"Make": "exiv2", "Model": "exiv2"},
        "meta": {"line": str(i)},
    }
    row.update(over)
    return row


ODD_ROWS = [
    [_row(i) for i in range(5)],  # all valid text: the fast path
    [_row(0), _row(1, url="http://127.0.0.1/b\udcff.jpg")],  # a surrogate in a string column
    [_row(0), _row(1, exif={"Make": "Ca\udcffnon"})],  # in a map value
    [_row(0), _row(1, meta={"k\ud800": "v"})],  # in a map key, no byte behind it
    [_row(0), _row(1, photo_id=12345, error=3.5)],  # numbers where text goes: str()
    [_row(0), _row(1, photo_id=b"bytes-id")],  # bytes: str() too, never taken as text
    [_row(0), _row(1, meta={"n": 7, 8: "eight"}, exif=None)],  # numbers in a map; no map
]


@pytest.mark.parametrize("rows", ODD_ROWS)
def test_table_columns_equal_the_sanitised_reference(rows: list[dict]) -> None:
    fast = pa.table(_columns(rows), schema=SCHEMA)
    ref = sanitised_table(rows)
    assert fast.equals(ref), (fast.to_pylist(), ref.to_pylist())


@pytest.mark.parametrize(
    "obj",
    [
        {"Make": "Canon", "n": 3, "list": ["a", None, 1.5]},
        {"Make": "Ca\udcffnon"},
        {"k\ud800": ["x", {"y": "\udcfe"}]},
    ],
)
def test_json_members_equal_the_sanitised_dump(obj: dict) -> None:
    for args in ({"ensure_ascii": False, "sort_keys": True}, {"indent": 2, "sort_keys": True}):
        got = json_bytes(obj, **args)
        assert got == json.dumps(json_safe(obj), **args).encode("utf-8")
        json.loads(got)  # valid UTF-8 JSON whatever the input held
