"""Shards written to and lists read from a real S3-compatible server on loopback (moto).

The same `exiflang shards` run (a subprocess, as a user runs it) written to local disk and to
``s3://exiflang/run1`` gives the same files; the stats file is uploaded after its tar and
table (the commit protocol); a rerun skips complete shards and redoes a truncated one; a URL
list is read from S3; nothing half-written is ever left, locally or remotely.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from exiflang.pipeline import storage
from exiflang.pipeline.build_shards import main as shards_main
from exiflang.pipeline.shards.files import TarShardWriter, read_tables, write_table
from tests.http_server import LoopbackServer
from tests.s3_server import s3_env, s3_server, storage_options

REPO = Path(__file__).resolve().parents[2]
RUN = ["--executor", "local", "--threads", "2", "--rows-per-shard", "3", "-q"]
ONE, POOL = ["--workers", "1"], ["--workers", "2"]  # in-process / two worker processes
OUT = "s3://exiflang/run1"
STABLE = [
    "key",
    "shard",
    "position",
    "source_index",
    "photo_id",
    "url",
    "status",
    "error",
    "width",
    "height",
    "bytes",
    "sha256",
    "ext",
    "n_tags",
    "exif",
    "exif_source",
    "meta",
]
VOLATILE_STATS = {"started", "seconds", "peak_rss_mb", "files", "worker_seconds"}
_REQUEST = re.compile(r'"(GET|PUT|POST|HEAD|DELETE) /exiflang/([^ ?]*)')


@pytest.fixture(scope="module")
def endpoint():
    with s3_server() as url:
        yield url


@pytest.fixture()
def s3(endpoint):
    """fsspec's S3 filesystem on the loopback server; this process's storage layer points there."""
    import fsspec

    storage.configure(storage_options(endpoint))
    yield fsspec.filesystem("s3", skip_instance_cache=True, **storage_options(endpoint))
    storage.configure(None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos_dir):
    src = tmp_path_factory.mktemp("src")
    for photo in sorted(photos_dir.glob("*.jpg"))[:6]:
        os.symlink(photo, src / photo.name)  # links: the shared photos are never copied
    return src


def _shards(endpoint: str, source: str, out: str, *extra: str, env: dict | None = None) -> float:
    """Run `exiflang shards` in a subprocess with the server's credentials; returns wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "exiflang", "shards", "--source", source, "--out", out, *RUN, *(extra or ONE)],
        cwd=REPO,
        env=env or s3_env(endpoint),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return time.perf_counter() - t0


class _ServerLog(logging.Handler):
    """The loopback server's request log, as (method, key) in the order it served them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.requests: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = _REQUEST.search(record.getMessage())
        if found:
            self.requests.append((found.group(1), found.group(2)))

    def puts(self) -> list[str]:
        return [key for method, key in self.requests if method == "PUT"]


@pytest.fixture()
def server_log():
    logger = logging.getLogger("werkzeug")
    handler, level = _ServerLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def built(endpoint, folder, tmp_path_factory):
    """The same job written to a local folder and to s3://exiflang/run1, with the server's log."""
    local = tmp_path_factory.mktemp("local")
    t_local = _shards(endpoint, str(folder), str(local), *POOL)
    logger, log = logging.getLogger("werkzeug"), _ServerLog()
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    try:
        t_s3 = _shards(endpoint, str(folder), OUT, *POOL)  # pool workers write to S3 too
    finally:
        logger.removeHandler(log)
    print(f"wall: local {t_local:.1f} s, s3 {t_s3:.1f} s")
    return local, log.puts()


def test_s3_run_equals_local_run_and_commits_stats_last(built, s3):
    local, puts = built
    assert len(puts) >= 11  # 2 x 3 shard files + 5 job files
    names = sorted(p.name for p in local.iterdir())
    assert sorted(storage.listdir(OUT)) == names  # the whole folder, nothing else
    for name in names:
        mine, theirs = (local / name).read_bytes(), s3.cat_file(f"exiflang/run1/{name}")
        if name.endswith(".tar") or name in ("tags.json", "sizes.json"):
            assert theirs == mine, name  # byte-identical
        elif name.endswith(".parquet"):  # per-row fetch seconds differ
            assert pq.read_table(io.BytesIO(theirs), columns=STABLE) == pq.read_table(local / name, columns=STABLE), (
                name
            )
        elif name.endswith("_stats.json") or name == "summary.json":
            a, b = json.loads(theirs), json.loads(mine)
            assert {k: v for k, v in a.items() if k not in VOLATILE_STATS} == {
                k: v for k, v in b.items() if k not in VOLATILE_STATS
            }, name
            if "files" in a:
                assert a["files"]["tar"] == b["files"]["tar"]
    assert read_tables(OUT, STABLE) == read_tables(local, STABLE)
    for shard in ("00000", "00001"):
        # The commit protocol: the stats file goes up after the shard's tar and table.
        order = [key for key in puts if key.startswith(f"run1/{shard}")]
        assert order[-1] == f"run1/{shard}_stats.json", order
        assert {f"run1/{shard}.tar", f"run1/{shard}.parquet"} <= set(order[:-1])
    assert not [k for k in puts if ".tmp-" in k]  # staged locally, never on S3


def test_rerun_skips_complete_shards_and_redoes_a_truncated_object(built, endpoint, s3, folder, server_log):
    tars = {n: s3.cat_file(f"exiflang/run1/{n}") for n in ("00000.tar", "00001.tar")}
    _shards(endpoint, str(folder), OUT)
    job = json.loads(s3.cat_file("exiflang/run1/job.json"))
    assert job["skipped_complete_shards"] == 2
    assert not [k for k in server_log.puts() if k.endswith((".tar", ".parquet"))]

    s3.pipe_file("exiflang/run1/00000.tar", tars["00000.tar"][:1536])  # a damaged object
    server_log.requests.clear()
    _shards(endpoint, str(folder), OUT)
    puts = server_log.puts()
    assert "run1/00000.tar" in puts and "run1/00001.tar" not in puts
    assert json.loads(s3.cat_file("exiflang/run1/job.json"))["skipped_complete_shards"] == 1
    assert {n: s3.cat_file(f"exiflang/run1/{n}") for n in tars} == tars


def test_url_list_read_from_s3_with_storage_options_flag(endpoint, s3, photos_dir, tmp_path):
    names = sorted(p.name for p in photos_dir.glob("*.jpg"))[:4]
    env = s3_env(endpoint)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # the flag alone names the server
        env.pop(name)
    flag = json.dumps({"client_kwargs": {"endpoint_url": endpoint}})
    with LoopbackServer(photos_dir) as server:
        lines = ["photo_id,url"] + [f"{i},{server.url('/files/' + n)}" for i, n in enumerate(names)]
        s3.pipe_file("exiflang/lists/urls.csv", ("\n".join(lines) + "\n").encode())
        _shards(
            endpoint,
            "s3://exiflang/lists/urls.csv",
            "s3://exiflang/from-list",
            "--storage-options",
            flag,
            *ONE,
            env=env,
        )
    rows = read_tables("s3://exiflang/from-list", ["photo_id", "url", "status"]).to_pylist()
    assert [r["photo_id"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["status"] for r in rows} == {"success"}
    job = json.loads(s3.cat_file("exiflang/from-list/job.json"))
    assert job["source"]["path"] == "s3://exiflang/lists/urls.csv"
    config = json.loads(s3.cat_file("exiflang/from-list/config.json"))
    assert config["storage_options"] == {"client_kwargs": {"endpoint_url": endpoint}}


def test_storage_layer_on_s3(s3):
    base = "s3://exiflang/layer"
    storage.write_bytes(storage.join(base, "a.json"), b"{}")
    storage.write_bytes(storage.join(base, "sub", "b.txt"), b"bb")
    assert storage.exists(f"{base}/a.json") and not storage.exists(f"{base}/nope")
    assert storage.isdir(base) and storage.size(f"{base}/sub/b.txt") == 2
    assert storage.listdir(base) == ["a.json"]  # files only, not sub/
    assert [str(p) for p in storage.glob(f"{base}/**/*.txt")] == [f"{base}/sub/b.txt"]
    assert list(storage.walk_files(base)) == [f"{base}/a.json", f"{base}/sub/b.txt"]
    storage.remove(f"{base}/a.json")
    storage.remove(f"{base}/a.json")  # missing: no error
    assert not storage.exists(f"{base}/a.json")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{base}/a.json")


def test_failed_writes_leave_no_temporary(s3, tmp_path, monkeypatch):
    stage = tmp_path / "stage"
    monkeypatch.setenv(storage.STAGING_ENV, str(stage))
    missing = "s3://no-such-bucket/x"
    writer = TarShardWriter(f"{missing}/00000.tar")
    writer.add("00000_00000", {"json": b"{}"})
    with pytest.raises(OSError):
        writer.commit()  # the upload fails: the staged tar goes anyway
    with pytest.raises(OSError):
        write_table(f"{missing}/00000.parquet", [{"key": "k", "status": "success"}])
    assert list(stage.iterdir()) == []
    local = TarShardWriter(tmp_path / "00000.tar")
    local.add("00000_00000", {"json": b"{}"})
    local.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--out", "gs://bucket/run"], "gs:// needs a package"),
        (["--out", "s3://exiflang/x", "--storage-options", "{not json"], "--storage-options: not JSON"),
        (["--out", "s3://exiflang/x", "--storage-options", "[1]"], "must be a JSON object"),
    ],
)
def test_bad_storage_is_one_line_exit_2(folder, args, reason, capsys):
    assert shards_main(["--source", str(folder), *args, "--executor", "local", "-q"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], lines


def test_photo_folder_on_s3(endpoint, s3, photos_dir, tmp_path, monkeypatch):
    """A folder of images on the object store is a source like a local one (read in-process)."""
    photos = sorted(photos_dir.glob("*.jpg"))[:2]
    for i, photo in enumerate(photos):
        s3.pipe_file(f"exiflang/photos/d{i}/{photo.name}", photo.read_bytes())  # bytes as they are
    s3.pipe_file("exiflang/photos/notes.txt", b"not a photo")
    for name, value in s3_env(endpoint).items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "o"
    assert shards_main(["--source", "s3://exiflang/photos", "--out", str(out), *RUN, *ONE]) == 0
    rows = read_tables(out, ["url", "status", "sha256"]).to_pylist()
    assert [r["url"] for r in rows] == [f"s3://exiflang/photos/d{i}/{p.name}" for i, p in enumerate(photos)]
    assert [r["sha256"] for r in rows] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in photos]
    assert json.loads((out / "job.json").read_text())["source"]["skipped"] == {"not_image": 1}


def test_missing_bucket_is_one_line_naming_the_object(endpoint, folder, monkeypatch, capsys):
    for name, value in s3_env(endpoint).items():
        monkeypatch.setenv(name, value)
    assert shards_main(["--source", str(folder), "--out", "s3://no-such-bucket/run", *RUN, *ONE]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "s3://no-such-bucket/run/config.json" in lines[0], lines


def test_paths_and_options(monkeypatch):
    assert storage.resolve("file:///tmp/x") == Path("/tmp/x") and storage.resolve("rel") == Path("rel")
    assert storage.resolve("s3://b/run/") == "s3://b/run" and not storage.is_remote("a/b://c")
    assert storage.join("s3://b/run", "00000.tar") == "s3://b/run/00000.tar"
    assert storage.join(Path("/o"), "x.json") == Path("/o/x.json")
    monkeypatch.setenv(storage.OPTIONS_ENV, json.dumps({"anon": True, "s3": {"key": "env"}}))
    storage.configure({"s3": {"key": "flag"}, "gs": {"project": "p"}, "client_kwargs": {"a": 1}})
    try:
        assert storage.options_for("s3") == {
            "anon": True,
            "key": "flag",
            "client_kwargs": {"a": 1},
            "use_listings_cache": False,
        }
        assert storage.options_for("gs")["project"] == "p" and "key" not in storage.options_for("gs")
    finally:
        storage.configure(None)
