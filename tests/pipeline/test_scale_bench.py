"""benchmarks/scale.py in its smallest mode: a 300-line simulated YFCC crawl with embedded Ray,
checked against the simulator's ground truth and its per-host counters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import scale

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_smallest_scale_run_matches_the_ground_truth(tmp_path):
    out = tmp_path / "results.json"
    cmd = [
        sys.executable,
        "benchmarks/scale.py",
        "--rows",
        "300",
        "--rows-per-shard",
        "50",
        "--no-kill",
        "--no-compare",
        "--storm-seconds",
        "0",
        "--dir",
        str(tmp_path / "work"),
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=scale.bench_env())
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    full = json.loads(out.read_text())["part1"]["full"]
    truth, polite = full["truth"], full["politeness"]
    assert truth["lost"] == 0 and truth["duplicated"] == 0 and truth["extra"] == 0, truth
    assert truth["mismatches"] == 0, truth["examples"]
    assert truth["table_rows"] == truth["truth_rows"] == full["photos"] > 250
    assert polite["pass"], polite["problems"]
    assert all(h["throttled_429"] == 0 and h["max_in_flight"] <= 5 for h in polite["hosts"].values())
    # The measurement itself: the whole process tree's CPU, the driver and Ray's processes seen.
    assert full["cpu_s"] > 0 and full["peak_rss_mb"]["driver"] > 0 and "worker" in full["peak_rss_mb"]
    assert proc.returncode == 0, proc.stdout[-3000:]
