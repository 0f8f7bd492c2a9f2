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


def test_truth_check_attributes_to_the_storm_only_rows_its_429s_ended(tmp_path):
    """A row whose last try met a storm 429 is what happened, not a mismatch; any other is one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from exiflang.pipeline.shards.files import atomic_write_json, shard_paths, write_table

    def truth(pid: str, fate: str, expected: str) -> dict:
        url = f"http://127.0.0.15:1/7545/{pid}_abc_o.jpg"
        return {"photo_id": pid, "source_index": int(pid), "fate": fate, "expected_status": expected}, url

    rows, truths = [], []
    cases = [  # (photo id, fate, expected, got status, got http, stormed)
        ("1", "cut", "download_failed", "http_error", 429, True),  # the storm ended it: attributed
        ("2", "cut", "download_failed", "http_error", 429, False),  # a 429 the storm did not send
        ("3", "ok", "success", "http_error", 404, True),  # stormed, but not a 429: a mismatch
        ("4", "ok", "success", "success", 200, False),
    ]
    stormed = []
    for i, (pid, fate, expected, status, http, hit) in enumerate(cases):
        t, url = truth(pid, fate, expected)
        truths.append(
            {**t, "url": url, "expected_http_status": None, "duplicate_of": None, "farm": 5, "host": "h", "line": i}
        )
        rows.append(
            {
                "key": f"00000_{i:05d}",
                "position": i,
                "source_index": int(pid),
                "photo_id": pid,
                "url": url,
                "status": status,
                "http_status": http,
                "error": f"HTTP {http}",
            }
        )
        if hit:
            stormed.append(f"/7545/{pid}_abc_o.jpg")
    pq.write_table(pa.Table.from_pylist(truths), tmp_path / "truth.parquet")
    out = tmp_path / "out"
    out.mkdir()
    write_table(shard_paths(out, 0)["parquet"], rows)
    atomic_write_json(shard_paths(out, 0)["stats"], {"shard": 0, "rows": len(rows)})
    got = scale.check_truth(out, tmp_path / "truth.parquet", storm_paths=stormed)
    assert got["storm_attributed"] == 1 and got["storm_attributed_examples"][0].startswith("1: cut")
    assert got["mismatch_kinds"] == {"cut: download_failed": 1, "ok: success": 1}
    assert not got["pass"]
