"""Sources at scale: a folder or glob of list files / Parquet shards (local or on S3) is one stream
with continuous indices; Parquet is read by batches; a YFCC main file is streamed, never held."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exiflang.pipeline import storage
from exiflang.pipeline.sources.base import SourceError
from exiflang.pipeline.sources.folder import MultiSource, detect_format
from exiflang.pipeline.sources.open import open_source
from exiflang.pipeline.sources.yfcc import FIELDS_2016
from tests.s3_server import s3_server, storage_options

REPO = Path(__file__).resolve().parents[2]
TXT = ["https://h/a0.jpg", "https://h/a1.jpg", "https://h/a2.jpg"]
CSV = [("b0", "https://h/b0.jpg"), ("b1", "https://h/b1.jpg")]
PARQUET = [("c0", "https://h/c0.jpg"), ("c1", "https://h/c1.jpg"), ("c2", "https://h/c2.jpg")]


def _csv_gz(rows) -> bytes:
    text = io.StringIO()
    csv.writer(text).writerows([("photo_id", "url"), *rows])
    return gzip.compress(text.getvalue().encode())


def _parquet(rows, row_group_size: int = 1 << 20) -> bytes:
    sink = io.BytesIO()
    table = pa.table({"photo_id": [r[0] for r in rows], "url": [r[1] for r in rows]})
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def _list_files() -> dict[str, bytes]:
    """Three list kinds, plus what a folder of lists also holds and must not turn into rows."""
    return {
        "a.txt": ("# three\n" + "\n".join(TXT) + "\n").encode(),
        "b.csv.gz": _csv_gz(CSV),
        "sub/c.parquet": _parquet(PARQUET),
        "d.txt": b"# nothing but a comment\n",  # empty: skipped, counted
        "_SUCCESS": b"",
        "README": b"see a.txt\n",  # bookkeeping, no suffix: skipped
        ".hidden.txt": b"https://h/hidden.jpg\n",
    }


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _rows(source) -> list[tuple]:
    return [(r.index, r.url, r.photo_id) for r in source.rows()]


EXPECTED = [
    (i, url, pid)
    for i, (url, pid) in enumerate([(u, None) for u in TXT] + [(u, p) for p, u in CSV] + [(u, p) for p, u in PARQUET])
]


def test_folder_and_glob_of_lists_are_one_stream(tmp_path):
    root = _write(tmp_path / "lists", _list_files())
    folder = open_source(root)
    assert isinstance(folder, MultiSource) and detect_format(root) == "urls"
    assert _rows(folder) == EXPECTED == _rows(folder)  # continuous, and the same twice
    assert folder.skipped == {"comment": 1, "empty_file": 1, "not_a_list": 2, "hidden": 1}
    assert folder.files_read == 3 and folder.format == "urls"
    pattern = open_source(f"{root}/**/[a-c]*.*")
    assert _rows(pattern) == EXPECTED
    assert _rows(open_source(f"file://{root}")) == EXPECTED


def test_folder_and_glob_of_lists_on_s3(tmp_path):
    with s3_server() as endpoint:
        storage.configure(storage_options(endpoint))
        try:
            for name, data in _list_files().items():
                storage.write_bytes(f"s3://exiflang/lists/{name}", data)
            assert _rows(open_source("s3://exiflang/lists")) == EXPECTED
            assert _rows(open_source("s3://exiflang/lists/**/[a-c]*.*")) == EXPECTED
            single = open_source("s3://exiflang/lists/sub/c.parquet")
            assert _rows(single) == [(i, u, p) for i, (p, u) in enumerate(PARQUET)]
        finally:
            storage.configure(None)


def test_unusable_globs_and_folders_are_one_line(tmp_path):
    with pytest.raises(SourceError, match="matches no file"):
        open_source(f"{tmp_path}/*.csv")
    _write(tmp_path / "only_empty", {"x.txt": b"\n# c\n"})
    with pytest.raises(SourceError, match="no list files with entries"):
        open_source(tmp_path / "only_empty")
    _write(tmp_path / "bad", {"a.txt": b"https://h/1.jpg\n", "b.csv": b"link\nx\n"})
    rows = open_source(tmp_path / "bad").rows()
    assert next(rows).url == "https://h/1.jpg"  # the first file is fine...
    with pytest.raises(SourceError, match=r"b\.csv: no URL column"):
        next(rows)  # ...the second stops the job


def test_parquet_shard_is_read_by_row_groups(tmp_path):
    """A folder of Parquet shards, one with 4 row groups of 5000 whose last is damaged: the
    batches before the damage arrive first (4096-row batches: 3 of them end before row 15000),
    so the file is read by batches, not whole."""
    rows = [(f"p{i}", f"https://h/{i}.jpg") for i in range(20_000)]
    root = _write(
        tmp_path / "shards", {"part-0.parquet": _parquet(rows[:100]), "part-1.parquet": _parquet(rows[100:], 5_000)}
    )
    path = root / "part-1.parquet"
    meta = pq.read_metadata(path)
    assert meta.num_row_groups == 4
    data = bytearray(path.read_bytes())
    for c in range(meta.num_columns):  # garble the last row group's column chunks
        col = meta.row_group(3).column(c)
        start = (col.dictionary_page_offset or col.data_page_offset) + 16
        data[start : start + col.total_compressed_size - 32] = b"\xa5" * (col.total_compressed_size - 32)
    path.write_bytes(bytes(data))
    got = []
    with pytest.raises(SourceError, match=r"part-1.parquet: unreadable Parquet"):
        for row in open_source(root).rows():
            got.append((row.index, row.photo_id))
    assert got == [(i, f"p{i}") for i in range(100 + 3 * 4096)]


def _yfcc_line(i: int, description: str) -> str:
    f = dict.fromkeys(FIELDS_2016, "")
    f.update(
        line_number=str(i),
        photo_id=str(10**9 + i),
        user_id="u@N01",
        title="t",
        description=description,
        download_url=f"https://h/{i}.jpg",
        farm_id="1",
        server_id="2",
        secret="s",
        original_secret="o",
        original_extension="jpg",
        marker="0",
    )
    return "\t".join(f[k] for k in FIELDS_2016) + "\n"


def _yfcc_file(path: Path, lines: int, description: str = "d" * 8000) -> Path:
    """A gzipped YFCC main file; 1000 distinct lines repeated (generation stays fast)."""
    block = "".join(_yfcc_line(i, description) for i in range(1000)).encode()
    with gzip.open(path, "wb", compresslevel=1) as fh:
        for _ in range(lines // 1000):
            fh.write(block)
    return path


_PEAK = """
import json, resource, sys
from exiflang.pipeline.sources.open import open_source
source = open_source(sys.argv[1])
n = sum(1 for _ in source.rows())
print(json.dumps({"rows": n, "format": source.format,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _peak(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path)], cwd=REPO, check=True, capture_output=True, text=True, timeout=300
    ).stdout
    return json.loads(out)


def test_yfcc_file_is_streamed_in_flat_memory(tmp_path):
    """50k lines of 8 KB (400 MB of text) read in the memory of 1k lines (8 MB)."""
    small = _peak(_yfcc_file(tmp_path / "small.gz", 1_000))
    big = _peak(_yfcc_file(tmp_path / "big.gz", 50_000))
    assert (small["rows"], big["rows"]) == (1_000, 50_000)
    assert small["format"] == big["format"] == "yfcc"
    assert big["peak_mb"] < small["peak_mb"] + 40, (small, big)


def test_yfcc_rows_arrive_before_the_end_is_read(tmp_path):
    """A truncated compressed file: the rows before the damage arrive first, then one line."""
    path = _yfcc_file(tmp_path / "yfcc100m_dataset.gz", 20_000, "d" * 100)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 9 // 10])
    rows = open_source(path).rows()
    first = next(rows)
    assert (first.index, first.photo_id) == (0, str(10**9))
    seen = 1
    with pytest.raises(SourceError) as exc:
        for _ in rows:
            seen += 1
    assert seen > 10_000 and str(path) in str(exc.value) and "\n" not in str(exc.value)
