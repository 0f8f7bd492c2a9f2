"""The driver's memory against the number of Ray tasks: is it flat at 10^5-10^7 source rows?

A crawl's driver holds a bounded window of rows (``plan_tasks`` reads ``per_task * (workers +
1)`` shards ahead, ``_submit_all`` keeps ``2 * workers`` tasks in flight), but Ray's own
bookkeeping in the driver (owned objects, task events) could grow with every task submitted.
This runs the driver's real submission loop (``exiflang.pipeline.driver._submit_all`` and
``plan_tasks``) over synthetic shards of realistic :class:`SourceRow` objects, with a worker
function that returns a shard's stats without fetching, and samples the driver's RSS as tasks
complete.  Each size runs in a fresh process with embedded Ray (2 CPUs).  The baseline is the
driver's RSS after ``ray.init`` and the first task, before the bulk of the tasks: the table
gives the growth from it and the ratio of the last samples' RSS to it.

    python benchmarks/driver_memory.py [--tasks 50,500,5000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARDS_PER_TASK = 4
ROWS_PER_SHARD = 500


def _status_mb(field: str) -> float:
    """This process's ``VmRSS`` / ``VmHWM`` from /proc/self/status, in MB."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(f"{field}:")) / 1024


def _stats(batch: list[tuple[int, list[Any]]], cfg: Any) -> list[dict[str, Any]]:
    """What a worker returns for a task: one stats dict a shard, shaped like the real ones."""
    return [
        {
            "shard": shard,
            "rows": len(rows),
            "samples": len(rows) // 2,
            "status_counts": {"success": len(rows) // 2, "http_error": len(rows) - len(rows) // 2},
            "files": {k: {"size": 1 << 20, "sha256": "0" * 64} for k in ("tar", "parquet")},
        }
        for shard, rows in batch
    ]


def _shards(n_shards: int) -> Any:
    from exiflang.pipeline.records import SourceRow

    for shard in range(n_shards):
        base = shard * ROWS_PER_SHARD
        rows = [
            SourceRow(
                index=base + i,
                url=f"http://farm{i % 9 + 1}.staticflickr.com/{base + i}/{base + i}_0123456789_o.jpg",
                photo_id=str(base + i),
                meta={"user": f"{i % 997}@N00", "license": "Attribution License", "line": str(base + i)},
            )
            for i in range(ROWS_PER_SHARD)
        ]
        yield shard, rows


def child(n_tasks: int) -> dict[str, Any]:
    """One driver: embedded Ray, ``n_tasks`` tasks through the real submission loop."""
    import ray

    from exiflang.pipeline.config import ShardConfig
    from exiflang.pipeline.driver import JobOptions, _submit_all, plan_tasks

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    task = ray.remote(num_cpus=1)(_stats)
    cfg = ShardConfig()
    samples: list[tuple[int, float]] = []
    done = {"tasks": 0, "shards": 0}
    every = max(1, n_tasks // 20)

    def on_done(stats: dict) -> None:
        done["shards"] += 1
        if done["shards"] % SHARDS_PER_TASK == 0:
            done["tasks"] += 1
            if done["tasks"] == 1 or done["tasks"] % every == 0:
                samples.append((done["tasks"], round(_status_mb("VmRSS"), 1)))

    t0 = time.perf_counter()
    tasks = plan_tasks(_shards(n_tasks * SHARDS_PER_TASK), SHARDS_PER_TASK, 2)
    _submit_all(ray, task, tasks, cfg, ray.put(cfg), on_done, JobOptions(), 2)
    seconds = time.perf_counter() - t0
    ray.shutdown()
    peak = _status_mb("VmHWM")
    return {"tasks": n_tasks, "seconds": round(seconds, 1), "samples": samples, "peak_rss_mb": round(peak, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="50,500,5000", help="comma list of task counts (4 shards of 500 rows each)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    rows = []
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
    print(
        "| tasks | source rows | s | RSS after task 1 (baseline) MB | RSS at 50% MB | RSS at end MB "
        "| growth MB | end / baseline | peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.tasks.split(",")]:
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, env=env, cwd=REPO, check=True
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        s = row["samples"]
        base, mid, end = s[0][1], s[len(s) // 2][1], s[-1][1]
        row.update(baseline_mb=base, mid_mb=mid, end_mb=end, rows=n * SHARDS_PER_TASK * ROWS_PER_SHARD)
        rows.append(row)
        print(
            f"| {n:,} | {row['rows']:,} | {row['seconds']} | {base} | {mid} | {end} | {end - base:+.1f} | "
            f"{end / base:.2f} | {row['peak_rss_mb']} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
