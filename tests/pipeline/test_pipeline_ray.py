"""The Ray paths: embedded Ray driving the worker, and `ray job submit` against a local head."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from exiflang.pipeline.build_shards import main as shards_main
from exiflang.pipeline.shards.files import read_tables

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embedded_ray_matches_local_executor(tmp_path, photos_dir):
    import ray

    common = ["--source", str(photos_dir), "--rows-per-shard", "6", "--max-rows", "18", "-q"]
    try:
        assert shards_main(common + ["--out", str(tmp_path / "ray"), "--workers", "2"]) == 0
    finally:
        ray.shutdown()
    assert shards_main(common + ["--out", str(tmp_path / "local"), "--executor", "local"]) == 0
    cols = ["key", "status", "sha256", "exif"]
    assert read_tables(tmp_path / "ray", cols).to_pylist() == read_tables(tmp_path / "local", cols).to_pylist()
    for name in ("tags.json", "sizes.json"):
        assert json.loads((tmp_path / "ray" / name).read_text()) == json.loads((tmp_path / "local" / name).read_text())


def _stop_head(ray_tmp: Path) -> None:
    """End this test's Ray head and only it: every process whose command line names its temp dir.

    ``ray stop --force`` would kill every Ray process of the machine, other jobs' included."""
    import psutil

    from exiflang.pipeline.reap import terminate

    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(ray_tmp) in " ".join(proc.info["cmdline"] or []):
            mine.append(proc)
    terminate(mine)


@pytest.mark.slow
def test_ray_job_submit_on_a_local_head(tmp_path, photos_dir):
    ray_bin = Path(sys.executable).parent / "ray"
    port, dash = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # Ray's Unix sockets live under --temp-dir; pytest's tmp paths exceed the 107-byte limit.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    start = [
        str(ray_bin),
        "start",
        "--head",
        f"--port={port}",
        "--num-cpus=2",
        f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--temp-dir={ray_tmp}",
        "--disable-usage-stats",
        # Ports of its own: the agents' defaults (52365, ...) are taken when another Ray runs
        # on the machine, and the job agent then never registers ("No available agent").
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]
    res = subprocess.run(start, env=env, timeout=180, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = tmp_path / "job_out"
    try:
        runtime_env = {"excludes": [".venv", "shards", "runs", ".git", "tests", "benchmarks"]}
        submit = [
            str(ray_bin),
            "job",
            "submit",
            f"--address=http://127.0.0.1:{dash}",
            "--working-dir",
            str(REPO),
            f"--runtime-env-json={json.dumps(runtime_env)}",
            "--",
            sys.executable,
            "pipeline/build_shards.py",
            "--source",
            str(photos_dir),
            "--out",
            str(out),
            "--rows-per-shard",
            "10",
            "--max-rows",
            "20",
            "-q",
        ]
        res = subprocess.run(submit, env=env, timeout=300, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert "succeeded" in (res.stdout + res.stderr).lower()
    finally:
        _stop_head(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    table = read_tables(out)
    assert table.num_rows == 20
    assert (out / "tags.json").exists() and (out / "sizes.json").exists()
