"""The pipeline over HTTP: URL lists, a YFCC main file and the YFCC EXIF side file, against a
loopback server with misbehaving routes.  Every row ends as a Parquet row with a status."""

import csv
import gzip
import json
from pathlib import Path

import pytest

from exiflang.pipeline import records as st
from exiflang.pipeline.build_shards import main as shards_main
from exiflang.pipeline.shards.files import read_tables
from tests.http_server import LoopbackServer

NET = ["--timeout", "0.5", "--retries", "2", "--executor", "local", "--threads", "4", "--rows-per-shard", "8", "-q"]


@pytest.fixture(scope="module")
def server(photos_dir):
    with LoopbackServer(photos_dir) as srv:
        yield srv


def _photos(photos_dir: Path, n: int) -> list[str]:
    return sorted(p.name for p in photos_dir.glob("*.jpg"))[:n]


def test_url_list_with_misbehaving_routes(tmp_path, server, photos_dir):
    good, spare = _photos(photos_dir, 5), _photos(photos_dir, 8)[5:]
    routes = {
        "/status/404": st.HTTP_ERROR,
        "/status/500": st.HTTP_ERROR,
        f"/429?retry_after=0&times=1&file={spare[0]}": st.SUCCESS,
        f"/flaky500?times=1&file={spare[1]}": st.SUCCESS,
        "/slow?delay=3": st.TIMEOUT,
        f"/truncated?file={spare[2]}": st.DOWNLOAD_FAILED,
        "/redirect-loop": st.DOWNLOAD_FAILED,
        "/notimage": st.NOT_AN_IMAGE,
    }
    urls = [server.url(f"/files/{name}") for name in good] + [server.url(r) for r in routes]
    urls.append("ftp://example.invalid/x.jpg")
    lst = tmp_path / "urls.txt.gz"
    with gzip.open(lst, "wt") as fh:
        fh.write("# a comment\n\n" + "\n".join(urls) + "\n")
    assert shards_main(["--source", str(lst), "--out", str(tmp_path / "o")] + NET) == 0
    table = {r["url"]: r for r in read_tables(tmp_path / "o").to_pylist()}
    assert len(table) == len(urls)
    for name in good:
        row = table[server.url(f"/files/{name}")]
        assert row["status"] == st.SUCCESS and row["bytes"] == (photos_dir / name).stat().st_size
    for route, status in routes.items():
        row = table[server.url(route)]
        if status in (st.DOWNLOAD_FAILED, st.HTTP_ERROR):
            assert row["status"] in (st.DOWNLOAD_FAILED, st.HTTP_ERROR), (route, row)
        else:
            assert row["status"] == status, (route, row)
        assert row["error"] or row["status"] == st.SUCCESS
    assert table[server.url("/status/404")]["http_status"] == 404
    assert table["ftp://example.invalid/x.jpg"]["status"] == st.DOWNLOAD_FAILED


def test_csv_list_with_side_file_join(tmp_path, server, shared_data):
    photos = shared_data / "photos"
    ids = list(csv.DictReader((photos / "yfcc100m_exif_sample_ids.csv").read_text().splitlines()))[:12]
    lst = tmp_path / "list.csv"
    with open(lst, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["photo_id", "url"])
        for r in ids:
            w.writerow([r["photo_id"], server.url(f"/files/{r['file']}")])
    rc = shards_main(
        ["--source", str(lst), "--out", str(tmp_path / "o"), "--yfcc-exif", str(photos / "yfcc100m_exif_sample.tsv")]
        + NET
    )
    assert rc == 0
    rows = read_tables(tmp_path / "o").to_pylist()
    assert {r["photo_id"] for r in rows} == {r["photo_id"] for r in ids}
    ok = [r for r in rows if r["status"] == st.SUCCESS]
    assert ok
    for r in ok:
        sources = dict(r["exif_source"])
        assert "both" in sources.values()
        assert sources.get("Make") == "both"
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["tag_sources"].get("both", 0) > 0
    assert "exif_disagreements" in summary


def test_yfcc_main_file_original_url_and_fallback(tmp_path, server, photos_dir):
    """Rows 0-1 carry an original secret: fetched through the mirror template (row 1's
    original is missing there, so it falls back to the listed URL); rows 2-3 carry none."""
    names = _photos(photos_dir, 4)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "100_orig_o.jpg").symlink_to(photos_dir / names[0])  # a link, never a copy
    lines = []
    for i, name in enumerate(names):
        osecret, oext = ("orig", "jpg") if i < 2 else ("", "")
        cols = [
            str(i),
            str(100 + i),
            "hash",
            "user@N01",
            "nick",
            "2010-01-01+00:00:00.0",
            "0",
            "Canon+EOS",
            "title",
            "desc",
            "tags",
            "",
            "",
            "",
            "",
            "page",
            server.url(f"/files/{name}"),
            "license",
            "lurl",
            "7",
            "1",
            "sec",
            osecret,
            oext,
            "0",
        ]
        lines.append("\t".join(cols))
    video = lines[0].split("\t")
    video[-1], video[1] = "1", "999"
    lines.append("\t".join(video))
    main = tmp_path / "yfcc100m_dataset"
    main.write_text("\n".join(lines) + "\n")
    with LoopbackServer(mirror) as mirror_srv:
        template = mirror_srv.url("/files/{id}_{original_secret}_o.{ext}")
        assert (
            shards_main(["--source", str(main), "--out", str(tmp_path / "o"), "--yfcc-original-url", template] + NET)
            == 0
        )
    rows = {r["photo_id"]: r for r in read_tables(tmp_path / "o").to_pylist()}
    assert sorted(rows) == ["100", "101", "102", "103"]
    assert all(r["status"] in (st.SUCCESS, st.TOO_FEW_TAGS) for r in rows.values())
    assert rows["100"]["url"] == template.format(id="100", original_secret="orig", ext="jpg")
    assert rows["100"]["bytes"] == (photos_dir / names[0]).stat().st_size
    assert rows["101"]["bytes"] == (photos_dir / names[1]).stat().st_size  # via the fallback
    job = json.loads((tmp_path / "o" / "job.json").read_text())
    assert job["source"]["format"] == "yfcc" and job["source"]["skipped"].get("video") == 1
