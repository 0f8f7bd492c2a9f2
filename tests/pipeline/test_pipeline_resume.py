"""Killing the driver at any moment loses nothing and duplicates nothing: resume == clean run."""

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from exiflang.pipeline.shards.files import complete_shards, read_tables, shard_paths

REPO = Path(__file__).resolve().parents[2]
STABLE = ["key", "photo_id", "url", "status", "error", "width", "height", "bytes", "sha256", "n_tags", "exif"]


def _cmd(src: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "pipeline" / "build_shards.py"),
        "--source",
        str(src),
        "--out",
        str(out),
        "--executor",
        "local",
        "--rows-per-shard",
        "8",
        "--threads",
        "2",
        "-q",
    ]


def _snapshot(out: Path) -> tuple[list, dict]:
    table = read_tables(out, STABLE).to_pylist()
    tars = {s: shard_paths(out, s)["tar"].read_bytes() for s in complete_shards(out)}
    return table, tars


@pytest.mark.integration
def test_kill_mid_run_then_resume_matches_uninterrupted(tmp_path, photos_dir):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(_cmd(photos_dir, clean), check=True, env=env, timeout=600)
    proc = subprocess.Popen(_cmd(photos_dir, killed), env=env)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(killed.glob("*_stats.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = complete_shards(killed)
    assert 3 <= len(done_before) < 13, "kill landed outside the run"
    # Whatever the kill left, nothing without a stats file counts as a shard.
    for tar in killed.glob("*.tar"):
        with tarfile.open(tar):
            pass
    subprocess.run(_cmd(photos_dir, killed), check=True, env=env, timeout=600)
    assert complete_shards(killed) == complete_shards(clean) == list(range(13))
    assert not list(killed.glob("*.tmp-*"))
    t_clean, tars_clean = _snapshot(clean)
    t_killed, tars_killed = _snapshot(killed)
    assert t_clean == t_killed
    assert tars_clean == tars_killed  # byte-identical shards
    keys = [r["key"] for r in t_killed]
    assert len(keys) == len(set(keys)) == 102
