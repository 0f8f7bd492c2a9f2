"""Input sources: format detection, photo folders and URL lists in every format and compression."""

import bz2
import csv
import gzip
import io
import json
import lzma
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exiflang.pipeline.sources.base import FORMATS, SourceError
from exiflang.pipeline.sources.folder import detect_format
from exiflang.pipeline.sources.open import open_source

COMPRESSORS = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}

# One list, written in every format: three good URLs, one non-http entry that must be kept.
ENTRIES = [
    {"photo_id": "101", "url": "https://example.com/a.jpg", "license": "CC-BY"},
    {"photo_id": "102", "url": "http://example.com/b.jpg", "license": "CC0"},
    {"photo_id": "103", "url": "ftp://example.com/c.jpg", "license": "CC-BY"},
    {"photo_id": "104", "url": "https://example.com/d%2C.jpg?x=1,2", "license": "CC-BY, NC"},
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(COMPRESSORS[next((c for c in COMPRESSORS if c and path.name.endswith(c)), "")](data))
    return path


def _encode(kind: str) -> bytes:
    if kind == "txt":
        lines = ["# my photos", ""] + [e["url"] for e in ENTRIES] + ["", "   "]
        return "\n".join(lines).encode()
    if kind in ("csv", "tsv"):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["photo_id", "url", "license"], delimiter="\t" if kind == "tsv" else ",")
        w.writeheader()
        for i, e in enumerate(ENTRIES):
            w.writerow(e)
            if i == 1:
                buf.write("\r\n")  # a blank line between entries is not a row
        return buf.getvalue().encode()
    if kind == "jsonl":
        return (
            "\n".join(json.dumps(e) for e in ENTRIES[:2])
            + "\n\n"
            + "\n".join(json.dumps(e) for e in ENTRIES[2:])
            + "\n"
        ).encode()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ENTRIES), sink)
    return sink.getvalue()


@pytest.mark.parametrize("compression", ["", ".gz", ".bz2", ".xz"])
@pytest.mark.parametrize("kind", ["txt", "csv", "tsv", "jsonl", "parquet"])
def test_every_list_format_and_compression(tmp_path, kind, compression):
    path = _write(tmp_path / f"list.{kind}{compression}", _encode(kind))
    assert detect_format(path) == "urls"
    source = open_source(path)
    assert source.format == "urls"
    rows = list(source.rows())
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert [r.url for r in rows] == [e["url"] for e in ENTRIES]  # ftp kept, as given
    assert all(r.path is None for r in rows)
    assert source.flagged == {"not_http": 1}
    if kind == "txt":
        assert all(r.photo_id is None and r.meta == {} for r in rows)
        assert source.skipped == {"comment": 1, "blank": 3}
    else:
        assert [r.photo_id for r in rows] == ["101", "102", "103", "104"]
        assert [r.meta for r in rows] == [{"license": e["license"]} for e in ENTRIES]
    if kind in ("csv", "tsv", "jsonl"):
        assert source.skipped == {"blank": 1}
    assert list(source.rows()) == rows  # deterministic, counts reset
    assert source.flagged == {"not_http": 1}


@pytest.mark.parametrize("column", ["url", "URL", "image_url", "download_url", "photo_url", "Image_URL"])
def test_csv_url_column_names_are_recognised(tmp_path, column):
    path = tmp_path / "l.csv"
    path.write_text(f"key,{column},caption\nk1,https://h/x.jpg,hello\n")
    (row,) = open_source(path).rows()
    assert (row.url, row.photo_id, row.meta) == ("https://h/x.jpg", "k1", {"caption": "hello"})


def test_url_column_given_by_name(tmp_path):
    path = tmp_path / "l.tsv"
    path.write_text("id\tthumb\tfull\n7\thttps://h/t.jpg\thttps://h/f.jpg\n")
    with pytest.raises(SourceError, match="no URL column"):
        open_source(path)
    (row,) = open_source(path, url_column="full").rows()
    assert (row.url, row.photo_id, row.meta) == ("https://h/f.jpg", "7", {"thumb": "https://h/t.jpg"})
    jl = tmp_path / "l.jsonl"
    jl.write_text(json.dumps({"src": "https://h/j.jpg", "id": 5}) + "\n")
    (row,) = open_source(jl, url_column="src").rows()
    assert (row.url, row.photo_id) == ("https://h/j.jpg", "5")


def test_headerless_csv_and_odd_rows(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("https://h/1.jpg,first\nhttps://h/2.jpg\n,orphan caption\n")
    rows = list(open_source(path).rows())
    assert [r.url for r in rows] == ["https://h/1.jpg", "https://h/2.jpg", ""]
    assert rows[0].meta == {"column_1": "first"}
    assert "source_error" in rows[2].meta  # kept, and the downloader fails it


def test_jsonl_bad_lines_are_rows_not_crashes(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text(
        '{"url": "https://h/1.jpg", "id": 1, "size": 2.5, "tags": ["a"], "x": null}\n'
        '{not json\n"https://h/bare.jpg"\n[1, 2]\n'
    )
    source = open_source(path)
    rows = list(source.rows())
    assert [r.url for r in rows] == ["https://h/1.jpg", "", "https://h/bare.jpg", ""]
    assert rows[0].photo_id == "1" and rows[0].meta == {"size": "2.5", "tags": '["a"]'}
    assert "line 2" in rows[1].meta["source_error"]
    assert source.flagged == {"malformed": 2, "no_url": 2}


def test_parquet_ids_stay_text_and_misnamed_parquet_is_recognised(tmp_path):
    table = pa.table({"image_url": ["https://h/1.jpg", None], "photo_id": [12345678901, 2]})
    path = tmp_path / "list.dat"
    pq.write_table(table, path)
    rows = list(open_source(path).rows())
    assert [(r.url, r.photo_id) for r in rows] == [("https://h/1.jpg", "12345678901"), ("", "2")]


def test_misnamed_compressed_list_still_opens(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_bytes(gzip.compress(b"https://h/1.jpg\n"))
    assert [r.url for r in open_source(path).rows()] == ["https://h/1.jpg"]


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.txt", b"", "empty list"),
        ("comments.txt", b"# nothing\n\n", "empty list"),
        ("empty.csv.gz", gzip.compress(b"", mtime=0), "empty list"),  # mtime 0: the same test id on every xdist worker
        ("header.csv", b"url,id\n", "a header but no rows"),
        ("nourl.csv", b"name,caption\na,b\n", "no URL column"),
        ("nourl.jsonl", b'{"name": "a"}\n', "no URL field"),
        ("notjson.jsonl", b"hello\n", "not JSON"),
        ("broken.parquet", b"PAR1 not really", "unreadable Parquet"),
    ],
)
def test_unusable_lists_fail_at_open_with_one_line(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError) as exc:
        open_source(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and reason in msg


def test_wrong_url_column_names_the_columns(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("url,id\nhttps://h/1.jpg,1\n")
    with pytest.raises(SourceError, match=r"no URL column.*'link'.*columns: url, id"):
        open_source(path, url_column="link")


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(SourceError, match="nope: no such file"):
        open_source(tmp_path / "nope")
    with pytest.raises(SourceError, match="nope: no such file"):
        detect_format(tmp_path / "nope")
    with pytest.raises(SourceError, match="unknown source format 'zip'"):
        open_source(tmp_path, "zip")
    (tmp_path / "a.txt").write_text("https://h/1.jpg\n")
    with pytest.raises(SourceError, match="not a folder"):
        open_source(tmp_path / "a.txt", "folder")
    assert set(FORMATS) == {"folder", "urls", "yfcc"}


def test_truncated_compressed_list_fails_with_one_line(tmp_path):
    path = tmp_path / "l.txt.gz"
    data = gzip.compress(b"".join(b"https://h/%d.jpg\n" % i for i in range(20000)))
    path.write_bytes(data[: len(data) // 2])
    source = open_source(path)  # the start is readable: opening is fine
    with pytest.raises(SourceError) as exc:
        list(source.rows())
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


# -- folders --------------------------------------------------------------------------------


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_is_recursive_sorted_and_filtered(tmp_path):
    root = tmp_path / "photos"
    wanted = ["a.JPG", "b/c.jpeg", "b/d/e.png", "b/d/f.TIFF", "b/g.webp", "h.heic", "i.bmp", "j.tif"]
    for rel in wanted:
        _touch(root / rel)
    for rel in (".hidden.jpg", ".cache/x.jpg", "notes.txt", "b/raw.CR2", "b/d/movie.mp4"):
        _touch(root / rel)
    source = open_source(root)
    assert detect_format(root) == "folder" and source.format == "folder"
    rows = list(source.rows())
    assert [r.path for r in rows] == [str(root / rel) for rel in wanted]
    assert [r.index for r in rows] == list(range(len(wanted)))
    assert all(r.url is None and r.photo_id is None for r in rows)
    assert source.skipped == {"hidden": 2, "not_image": 3}
    assert list(source.rows()) == rows


def test_folder_symlink_loop_does_not_hang(tmp_path):
    root = tmp_path / "r"
    _touch(root / "sub" / "x.jpg")
    os.symlink(root, root / "sub" / "loop")
    os.symlink(root / "sub", root / "alias")  # a second way into the same folder
    os.symlink(root / "gone.jpg", root / "dangling.jpg")
    source = open_source(root)
    rows = [r.path for r in source.rows()]
    # The dangling link is a row (its read fails with a status); each folder is walked once.
    assert rows == [str(root / "alias" / "x.jpg"), str(root / "dangling.jpg")]
    assert source.skipped["folder_seen"] == 2


def test_relative_folder_gives_absolute_paths(tmp_path, monkeypatch):
    _touch(tmp_path / "p" / "x.jpg")
    monkeypatch.chdir(tmp_path)
    (row,) = open_source("p").rows()
    assert row.path == str(tmp_path / "p" / "x.jpg")


def test_folder_without_images_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="no image files"):
        open_source(tmp_path)
    _touch(tmp_path / "readme.txt")
    with pytest.raises(SourceError, match="no image files"):
        open_source(tmp_path, "folder")


def test_real_photo_folder(photos_dir):
    source = open_source(photos_dir)
    rows = list(source.rows())
    assert len(rows) == 102
    assert [r.path for r in rows] == sorted(str(p) for p in photos_dir.glob("*.jpg"))
    assert source.skipped["not_image"] > 0  # the metadata-extractor dumps, manifest, ...
