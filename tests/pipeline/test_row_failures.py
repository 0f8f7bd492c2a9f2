"""A row is the unit of failure: names and fields that are not valid UTF-8, and one row's
unexpected exception, end as that row's status (or go through), never as a lost shard."""

import csv
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exiflang.pipeline import records as st
from exiflang.pipeline.build_shards import main as shards_main
from exiflang.pipeline.config import ShardConfig
from exiflang.pipeline.records import SourceRow
from exiflang.pipeline.shards.files import complete_shards, read_tables, shard_paths, write_table
from exiflang.pipeline.shards.worker import fetchable_url, process_shard
from exiflang.pipeline.sources.open import open_source
from exiflang.pipeline.sources.yfcc import record_meta
from tests.http_server import LoopbackServer

RUN = ["--executor", "local", "--threads", "2", "--rows-per-shard", "10", "--timeout", "2", "--retries", "0", "-q"]


def _photos(photos_dir: Path, n: int) -> list[Path]:
    return sorted(photos_dir.glob("*.jpg"))[:n]


def _rows(out: Path) -> list[dict]:
    return read_tables(out).to_pylist()


def _json_members(out: Path) -> dict[str, dict]:
    """Every ``KEY.json`` member of every tar, parsed as strict UTF-8 JSON."""
    found = {}
    for shard in complete_shards(out):
        with tarfile.open(shard_paths(out, shard)["tar"]) as tar:
            for m in tar:
                assert m.name.isascii(), m.name
                data = tar.extractfile(m).read()
                if m.name.endswith(".json"):
                    found[m.name] = json.loads(data.decode("utf-8"))  # raises if not UTF-8
    return found


@pytest.fixture(scope="module")
def server(photos_dir):
    with LoopbackServer(photos_dir) as srv:
        yield srv


def test_folder_file_with_non_utf8_name_goes_through_and_keeps_its_name(tmp_path, photos_dir):
    src = tmp_path / "src"
    src.mkdir()
    plain, odd = _photos(photos_dir, 2)
    os.symlink(plain, src / "plain.jpg")
    odd_name = os.fsencode(src) + b"/caf\xe9-\xff\xfe.jpg"  # Latin-1 and junk bytes
    os.symlink(odd, odd_name)
    out = tmp_path / "out"
    assert shards_main(["--source", str(src), "--out", str(out)] + RUN) == 0
    rows = {r["url_bytes"] or r["url"].encode(): r for r in _rows(out)}
    assert len(rows) == 2
    row = rows[odd_name]
    assert row["status"] == st.SUCCESS, row
    assert row["url"] == str(src) + "/caf\\xe9-\\xff\\xfe.jpg"  # readable escape
    assert row["bytes"] == odd.stat().st_size
    assert os.fsdecode(row["url_bytes"]).encode("utf-8", "surrogateescape") == odd_name
    assert rows[(src / "plain.jpg").as_posix().encode()]["url_bytes"] is None
    members = _json_members(out)
    assert members[f"{row['key']}.json"]["url"] == row["url"]


def test_jsonl_with_lone_surrogates_and_bad_bytes(tmp_path, server, photos_dir):
    good = [server.url(f"/files/{p.name}") for p in _photos(photos_dir, 5)]
    lines = [
        json.dumps({"url": good[0], "title": "plain"}),
        json.dumps({"url": good[1], "title": "caf\udcff"}),  # JSON "\udcff"
        json.dumps({"url": server.url("/files/x\udcff.jpg")}),  # URL with it
        json.dumps({"url": "http://127.0.0.1:9/\ud800.jpg"}),  # no byte behind it
        json.dumps({"url": good[2], "photo_id": "id\udcfe", "\udcfb": "v"}),
        "{broken json",
        json.dumps({"url": good[3]}),
    ]
    raw = "\n".join(lines).encode("ascii") + b'\n{"url": "' + good[4].encode() + b'", "note": "\xff\xfe"}\n'
    lst = tmp_path / "list.jsonl"
    lst.write_bytes(raw)
    out = tmp_path / "out"
    assert shards_main(["--source", str(lst), "--out", str(out)] + RUN) == 0
    rows = _rows(out)
    assert [r["source_index"] for r in rows] == list(range(8))  # no row lost
    status = [r["status"] for r in rows]
    assert status[0] == status[1] == status[4] == status[6] == status[7] == st.SUCCESS, rows
    assert status[2] == st.HTTP_ERROR and rows[2]["http_status"] == 404  # fetched as %FF
    assert rows[2]["url"].endswith("/files/x\\xff.jpg") and rows[2]["url_bytes"].endswith(b"x\xff.jpg")
    assert status[3] == st.BAD_SOURCE_ROW and "surrogate" in rows[3]["error"]
    assert status[5] == st.BAD_SOURCE_ROW and "invalid JSON" in rows[5]["error"]
    assert dict(rows[1]["meta"]) == {"title": "caf\\xff"}
    assert dict(rows[1]["meta_bytes"]) == {b"title": b"caf\xff"}
    assert rows[4]["photo_id"] == "id\\xfe" and rows[4]["photo_id_bytes"] == b"id\xfe"
    assert dict(rows[4]["meta_bytes"]) == {b"\xfb": b"v"}
    assert dict(rows[7]["meta_bytes"]) == {b"note": b"\xff\xfe"}  # raw bytes, exact
    assert dict(rows[0]["meta_bytes"]) == {} and rows[0]["url_bytes"] is None
    assert len(_json_members(out)) == 5 * 2  # KEY.json and KEY.exif.json


def test_csv_with_lone_surrogate_and_latin1_fields(tmp_path, server, photos_dir):
    good = [server.url(f"/files/{p.name}") for p in _photos(photos_dir, 4)]
    lst = tmp_path / "list.csv"
    with open(lst, "w", newline="", encoding="utf-8", errors="surrogatepass") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "photo_id", "caption"])
        w.writerow([good[0], "1", "ok"])
        w.writerow([good[1], "2", "lone \udcff surrogate"])  # written as WTF-8 ed b3 bf
        w.writerow([server.url("/files/\udc80.jpg"), "3", "x"])
        w.writerow([good[2], "4", "end"])
    with open(lst, "ab") as fh:  # a Latin-1 line in a UTF-8 file
        fh.write(good[3].encode() + b",5,caf\xe9\n")
    out = tmp_path / "out"
    assert shards_main(["--source", str(lst), "--out", str(out)] + RUN) == 0
    rows = {r["photo_id"]: r for r in _rows(out)}
    assert sorted(rows) == ["1", "2", "3", "4", "5"]
    assert [rows[k]["status"] for k in "1245"] == [st.SUCCESS] * 4
    assert rows["3"]["status"] == st.HTTP_ERROR
    assert dict(rows["2"]["meta_bytes"]) == {b"caption": b"lone \xed\xb3\xbf surrogate"}
    assert dict(rows["2"]["meta"])["caption"] == "lone \\xed\\xb3\\xbf surrogate"
    assert dict(rows["5"]["meta_bytes"]) == {b"caption": b"caf\xe9"}
    assert rows["3"]["url_bytes"].endswith(b"/files/\xed\xb2\x80.jpg")


def test_parquet_list_cell_of_bad_utf8_is_a_row_not_a_crash(tmp_path):
    urls = pa.array([b"http://127.0.0.1:9/a.jpg", b"http://127.0.0.1:9/\xff.jpg"], pa.binary())
    notes = pa.array([b"fine", b"bad \xfe"], pa.binary())
    # Views skip UTF-8 validation: the same bytes another tool could have written.
    table = pa.table({"url": urls.view(pa.string()), "note": notes.view(pa.string())})
    path = tmp_path / "list.parquet"
    pq.write_table(table, path)
    rows = list(open_source(path).rows())
    assert [r.url for r in rows] == ["http://127.0.0.1:9/a.jpg", "http://127.0.0.1:9/\udcff.jpg"]
    assert rows[1].meta == {"note": "bad \udcfe"}
    assert fetchable_url(rows[1].url) == "http://127.0.0.1:9/%FF.jpg"
    assert fetchable_url("http://h/\ud800") is None


def test_yfcc_percent_escape_of_bad_bytes_is_kept_exact():
    meta = record_meta({"title": "caf%E9+au+lait", "user_nickname": "ok"})
    assert meta["title"] == "caf\udce9 au lait"
    assert meta["title"].encode("utf-8", "surrogateescape") == b"caf\xe9 au lait"


def test_table_stores_any_text_losslessly(tmp_path):
    odd = "a\udcff\ud800b"  # an escaped byte and a surrogate with no byte
    row = {
        "key": "00000_00000",
        "shard": 0,
        "position": 0,
        "url": odd,
        "photo_id": odd,
        "status": st.DOWNLOAD_FAILED,
        "error": f"failed: {odd}",
        "meta": {odd: odd, "k": "v"},
        "exif": {"Make": odd},
    }
    path = tmp_path / "t.parquet"
    write_table(path, [row])
    got = pq.read_table(path).to_pylist()[0]
    assert got["url"] == got["photo_id"] == "a\\xed\\xb3\\xbf\\xed\\xa0\\x80b"
    assert got["url_bytes"].decode("utf-8", "surrogatepass") == odd
    assert got["error"].startswith("failed: a\\x")
    assert dict(got["meta_bytes"]) == {got["url_bytes"]: got["url_bytes"]}
    assert dict(got["exif"])["Make"] == got["url"]


def test_one_rows_unexpected_exception_costs_that_row_only(tmp_path, photos_dir):
    a, b = _photos(photos_dir, 2)
    rows = [
        SourceRow(index=0, path=str(a)),
        SourceRow(index=1, url=12345),  # type: ignore[arg-type]  not a str
        SourceRow(index=2, path=str(b), meta={"n": 5}),
    ]  # type: ignore[dict-item]
    cfg = ShardConfig(out_dir=str(tmp_path), rows_per_shard=3, threads=2)
    stats = process_shard(0, rows, cfg)
    table = pq.read_table(shard_paths(tmp_path, 0)["parquet"]).to_pylist()
    assert [r["status"] for r in table] == [st.SUCCESS, st.DOWNLOAD_FAILED, st.SUCCESS]
    assert table[1]["error"].startswith("internal error: ")
    assert dict(table[2]["meta"]) == {"n": "5"}
    assert stats["samples"] == 2 and stats["status_counts"][st.DOWNLOAD_FAILED] == 1
