"""The local executor's process pool: the same shards, byte for byte, as one process; and no
worker outlives the driver, whether it is interrupted, terminated or killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from exiflang.pipeline.build_shards import main as shards_main
from exiflang.pipeline.shards.files import complete_shards, read_tables, shard_paths
from tests.http_server import LoopbackServer

REPO = Path(__file__).resolve().parents[2]
STABLE = ["key", "photo_id", "url", "status", "error", "width", "height", "bytes", "sha256", "n_tags", "exif"]


@pytest.fixture(scope="module")
def forty(tmp_path_factory, photos_dir: Path) -> Path:
    """40 of the shared photos, as symlinks (never copied)."""
    folder = tmp_path_factory.mktemp("forty")
    for src in sorted(photos_dir.glob("*.jpg"))[:40]:
        (folder / src.name).symlink_to(src)
    return folder


def _run(src: Path, out: Path, workers: int) -> None:
    rc = shards_main(
        [
            "--source",
            str(src),
            "--out",
            str(out),
            "--executor",
            "local",
            "--workers",
            str(workers),
            "--rows-per-shard",
            "8",
            "--threads",
            "2",
            "-q",
        ]
    )
    assert rc == 0


def test_pool_shards_are_byte_identical_to_one_process(tmp_path, forty):
    one, two = tmp_path / "one", tmp_path / "two"
    _run(forty, one, 1)
    _run(forty, two, 2)
    assert complete_shards(one) == complete_shards(two) == list(range(5))
    for shard in range(5):
        assert shard_paths(one, shard)["tar"].read_bytes() == shard_paths(two, shard)["tar"].read_bytes()
    assert read_tables(one, STABLE).to_pylist() == read_tables(two, STABLE).to_pylist()
    for name in ("tags.json", "sizes.json"):
        assert json.loads((one / name).read_text()) == json.loads((two / name).read_text())


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


@pytest.mark.integration  # a shard-builder driver process killed mid-run
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_no_worker_outlives_the_driver(tmp_path, photos_dir, sig, code):
    with LoopbackServer(photos_dir) as srv:
        lst = tmp_path / "urls.txt"
        lst.write_text("".join(srv.url(f"/slow?delay=30&i={i}") + "\n" for i in range(40)))
        cmd = [
            sys.executable,
            str(REPO / "pipeline" / "build_shards.py"),
            "--source",
            str(lst),
            "--out",
            str(tmp_path / "o"),
            "--executor",
            "local",
            "--workers",
            "2",
            "--rows-per-shard",
            "4",
            "--threads",
            "2",
            "--timeout",
            "60",
            "-q",
        ]
        proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and srv.hits["/slow"] < 4:  # both workers fetching
                time.sleep(0.1)
            assert srv.hits["/slow"] >= 4, "the pool never started"
            procs = _descendants(proc.pid)
            assert len(procs) >= 2
            proc.send_signal(sig)
            assert proc.wait(timeout=60) == code
            _, alive = psutil.wait_procs(procs, timeout=20)
            assert alive == [], [p.pid for p in alive]
        finally:
            if proc.poll() is None:
                proc.kill()
