"""YFCC100M: the main file in both layouts, and the EXIF side file's parsing and SQLite index."""

import bz2
import csv
import gzip
import os
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from exiflang.pipeline.sources.base import SourceError
from exiflang.pipeline.sources.folder import detect_format
from exiflang.pipeline.sources.open import open_source
from exiflang.pipeline.sources.yfcc import FIELDS_2014, FIELDS_2016, YfccSource
from exiflang.pipeline.sources.yfcc_exif import YfccExifIndex, parse_exif_line, parse_items

REPO = Path(__file__).resolve().parents[2]


def _line(layout: int, photo_id: str, *, video: bool = False, original: bool = True, listed: str = "") -> str:
    """One main-file line with URL-encoded free text, as the published file has it."""
    f = dict.fromkeys(FIELDS_2016, "")
    f.update(
        line_number="7",
        photo_id=photo_id,
        photo_hash="ab12",
        user_id="12345678@N00",
        user_nickname="some+one",
        date_taken="2010-01-02+03%3A04%3A05.0",
        date_uploaded="1262401445",
        capture_device="Canon+EOS+400D+Digital",
        title="At+the+beach%2C+again",
        description="long+text",
        user_tags="sea,sun",
        page_url=f"http://www.flickr.com/photos/x/{photo_id}/",
        download_url=listed or f"http://farm3.staticflickr.com/2087/{photo_id}_5ecf2c5be4.jpg",
        license_name="Attribution+License",
        server_id="2087",
        farm_id="3",
        secret="5ecf2c5be4",
        marker="1" if video else "0",
    )
    if original:
        f.update(original_secret="9c41e0ca5a", original_extension="jpg")
    names = FIELDS_2016 if layout == 25 else FIELDS_2014
    return "\t".join(f[n] for n in names)


def _main_file(path: Path, layout: int, compress=None) -> Path:
    lines = [
        _line(layout, "5001"),
        _line(layout, "5002", video=True),
        "",
        _line(layout, "5003", original=False),
        "garbage\twith\thttp://farm1.staticflickr.com/1/9_s.jpg",
        _line(layout, "5004"),
    ]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(compress(data) if compress else data)
    return path


@pytest.mark.parametrize("layout", [25, 23])
def test_main_file_both_layouts(tmp_path, layout):
    path = _main_file(tmp_path / "yfcc100m_dataset", layout)
    assert detect_format(path) == "yfcc"
    source = open_source(path)
    assert source.format == "yfcc"
    rows = list(source.rows())
    assert [r.index for r in rows] == [0, 1, 2, 3]
    assert [r.photo_id for r in rows] == ["5001", "5003", None, "5004"]
    assert source.skipped == {"video": 1, "blank": 1}
    assert source.flagged == {"malformed": 1}
    first = rows[0]
    assert first.url == "https://farm3.staticflickr.com/2087/5001_9c41e0ca5a_o.jpg"
    assert first.fallback_urls == ("http://farm3.staticflickr.com/2087/5001_5ecf2c5be4.jpg",)
    assert first.meta["capture_device"] == "Canon EOS 400D Digital"
    assert first.meta["date_taken"] == "2010-01-02 03:04:05.0"
    assert first.meta["title"] == "At the beach, again"
    assert first.meta["user_id"] == "12345678@N00"
    assert first.meta["license_name"] == "Attribution License"
    assert "description" not in first.meta and "user_tags" not in first.meta
    assert ("line_number" in first.meta) == (layout == 25)
    # Without an original secret the listed (reduced) URL is all there is.
    assert (rows[1].url, rows[1].fallback_urls) == ("http://farm3.staticflickr.com/2087/5003_5ecf2c5be4.jpg", ())
    bad = rows[2]
    assert bad.url == "http://farm1.staticflickr.com/1/9_s.jpg"
    assert "malformed YFCC line: 3 tab-separated fields" in bad.meta["source_error"]


@pytest.mark.parametrize(
    "name,compress",
    [
        ("yfcc100m_dataset.bz2", bz2.compress),
        ("yfcc100m_dataset.gz", gzip.compress),
        ("sample.tsv", None),
        ("sample.txt", None),
    ],
)
def test_main_file_detected_by_content(tmp_path, name, compress):
    path = _main_file(tmp_path / name, 25, compress)
    assert detect_format(path) == "yfcc"
    assert [r.photo_id for r in open_source(path).rows()] == ["5001", "5003", None, "5004"]


def test_malformed_line_without_url_and_forced_format(tmp_path):
    path = tmp_path / "odd.tsv"
    path.write_text("just\ttwo\n" + _line(23, "42") + "\n")
    # The first line is not YFCC, the second is: still detected (a few lines are looked at).
    assert detect_format(path) == "yfcc"
    rows = list(open_source(path, "yfcc").rows())
    assert rows[0].url == "" and "malformed" in rows[0].meta["source_error"]
    assert rows[1].photo_id == "42"


def test_url_tsv_is_not_taken_for_yfcc(tmp_path):
    path = tmp_path / "list.tsv"
    path.write_text("photo_id\turl\n1\thttps://h/1.jpg\n")
    assert detect_format(path) == "urls"


def test_detection_reads_only_the_start(tmp_path):
    path = tmp_path / "yfcc100m_dataset.gz"
    body = gzip.compress(("\n".join(_line(25, str(i)) for i in range(3000)) + "\n").encode())
    path.write_bytes(body[: len(body) // 2])  # truncated: the end is unreadable
    assert detect_format(path) == "yfcc"
    source = open_source(path)
    with pytest.raises(SourceError) as exc:
        list(source.rows())
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


# -- the EXIF side file ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def side_file(photos_dir) -> Path:
    return photos_dir / "yfcc100m_exif_sample.tsv"


@pytest.fixture(scope="module")
def expected_camera(photos_dir) -> dict[str, tuple[str, str]]:
    files = {
        r["photo_id"]: r["file"]
        for r in csv.DictReader((photos_dir / "yfcc100m_exif_sample_ids.csv").read_text().splitlines())
    }
    manifest = {r["file"]: r for r in csv.DictReader((photos_dir / "manifest.csv").read_text().splitlines())}
    return {pid: (manifest[f]["make"].strip(), manifest[f]["model"].strip()) for pid, f in files.items()}


def test_every_sample_line_parses_to_its_camera(side_file, expected_camera):
    lines = side_file.read_text().splitlines()
    assert len(lines) == len(expected_camera) == 76
    for line in lines:
        photo_id, tags = parse_exif_line(line)
        assert (tags["Make"], tags["Model"]) == expected_camera[photo_id], photo_id
        assert len(tags) >= 10
        assert all("+" not in k and "%" not in k for k in tags)
    _, tags = parse_exif_line(lines[0])
    assert tags["Date/Time Original"] == "2008:07:01 17:27:03"  # ':' inside values survive
    assert tags["Orientation"] == "Right side, top (Rotate 90 CW)"  # %2C is a comma
    assert tags["Exposure Time"] == "1/250 sec" and tags["F-Number"] == "f/5.6"
    assert "User Comment" not in tags  # empty values dropped
    assert any(k.startswith("Canon Makernote.") for k in tags)


def test_item_parsing_edge_cases():
    items = ",".join(
        [
            "Exif+SubIFD.Date%2FTime:2001%3A01%3A01+00%3A00%3A00",  # SubIFD first ...
            "Exif+IFD0.Date%2FTime:2002%3A02%3A02+02%3A02%3A02",  # ... IFD0 still wins
            "Exif+Thumbnail.Compression:JPEG+(old-style)",
            "Canon+Makernote.Lens+Model:EF-S18-55mm",
            "Sony+Makernote.A.F+Point:Center",  # a dot inside the tag
            "Exif+IFD0.Copyright:Me, Myself",  # an unencoded comma
            "Exif+IFD0.Software:",
            "NoDirectory:1",
            "",
        ]
    )
    tags = parse_items(items)
    assert tags == {
        "Date/Time": "2002:02:02 02:02:02",
        "Thumbnail Compression": "JPEG (old-style)",
        "Canon Makernote.Lens Model": "EF-S18-55mm",
        "Sony Makernote.A.F Point": "Center",
        "Copyright": "Me, Myself",
        "NoDirectory": "1",
    }
    assert parse_items("Exif+IFD0.Software:", keep_empty=True) == {"Software": ""}
    assert parse_exif_line("77\t\n") == ("77", {})
    for bad in ("no tab here", "\tExif+IFD0.Make:X", "1 2\tExif+IFD0.Make:X"):
        with pytest.raises(ValueError):
            parse_exif_line(bad)


def test_index_build_get_and_reuse(tmp_path, side_file):
    db = tmp_path / "exif.sqlite"
    index = YfccExifIndex.build(str(side_file), str(db))
    assert len(index) == 76 and index.info["malformed"] == "0"
    lines = side_file.read_text().splitlines()
    pid, tags = parse_exif_line(lines[5])
    assert index.get(pid) == tags and pid in index
    assert index.get("123") is None
    many = index.get_many([parse_exif_line(line)[0] for line in lines[:3]] + ["123", "", None])
    assert list(many) == [parse_exif_line(line)[0] for line in lines[:3]]
    assert sorted(os.listdir(tmp_path)) == ["exif.sqlite"]  # no temporary left behind
    stamp = db.stat().st_mtime_ns
    again = YfccExifIndex.build(str(side_file), str(db), photo_ids={pid})
    assert db.stat().st_mtime_ns == stamp and len(again) == 76  # a full index is reused


def test_index_filter_compression_malformed_and_rebuild(tmp_path, side_file):
    lines = side_file.read_text().splitlines()
    src = tmp_path / "yfcc100m_exif.bz2"
    src.write_bytes(bz2.compress(("\n".join(lines[:10] + ["broken line", lines[0]]) + "\n").encode()))
    keep = {parse_exif_line(line)[0] for line in lines[:4]}
    db = tmp_path / "exif.sqlite"
    index = YfccExifIndex.build(str(src), str(db), photo_ids=keep)
    assert len(index) == 4 and set(index.get_many(sorted(keep))) == keep
    assert index.info["malformed"] == "1" and index.info["duplicates"] == "1"
    assert index.get(parse_exif_line(lines[7])[0]) is None
    index.close()
    # Another filter, or a changed side file, means a rebuild.
    other = YfccExifIndex.build(str(src), str(db), photo_ids={parse_exif_line(lines[7])[0]})
    assert len(other) == 1
    src.write_bytes(gzip.compress(("\n".join(lines[:2]) + "\n").encode()))
    assert len(YfccExifIndex.build(str(src), str(db))) == 2


def test_index_opens_read_only_in_other_processes(tmp_path, side_file):
    db = tmp_path / "exif.sqlite"
    pid, tags = parse_exif_line(side_file.read_text().splitlines()[0])
    YfccExifIndex.build(str(side_file), str(db))
    os.chmod(db, 0o444)  # read-only on disk is enough
    os.chmod(tmp_path, 0o555)
    try:
        code = (
            "import sys; from exiflang.pipeline.sources.yfcc_exif import YfccExifIndex as I; "
            f"i = I.open({str(db)!r}); print(i.get({pid!r})['Model'])"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        assert out == tags["Model"]
        clone = pickle.loads(pickle.dumps(YfccExifIndex.open(str(db))))
        assert clone.get(pid) == tags
        with pytest.raises(sqlite3.OperationalError):
            clone._conn.execute("DELETE FROM exif")
    finally:
        os.chmod(tmp_path, 0o755)


def test_index_folder_is_created(tmp_path, side_file):
    db = tmp_path / "new" / "dir" / "exif.sqlite"
    assert len(YfccExifIndex.build(str(side_file), str(db))) == 76
    assert os.listdir(db.parent) == ["exif.sqlite"]


def test_index_errors_are_one_line(tmp_path):
    with pytest.raises(SourceError, match=r"nope.tsv: no such YFCC EXIF side file"):
        YfccExifIndex.build(str(tmp_path / "nope.tsv"), str(tmp_path / "x.sqlite"))
    with pytest.raises(SourceError, match="no such YFCC EXIF index"):
        YfccExifIndex.open(str(tmp_path / "x.sqlite"))
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(SourceError, match="not a YFCC EXIF index"):
        YfccExifIndex.open(str(junk))


def test_yfcc_source_meta_fields_are_configurable(tmp_path):
    path = _main_file(tmp_path / "m", 23)
    (row, *_) = YfccSource(path, meta_fields=("description", "user_tags")).rows()
    assert row.meta == {"description": "long text", "user_tags": "sea,sun"}
