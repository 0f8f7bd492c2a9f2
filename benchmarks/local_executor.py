"""Local executor speed-up: one process against a pool of worker processes, same source and outputs.

The source is the shared dev photos, linked ``--copies`` times under distinct names (symlinks,
never copies; repeated bytes end as ``duplicate`` rows after being fully processed).  Each
setting runs ``build_shards.py --executor local --workers N`` in a fresh interpreter, the
settings alternated ``--repeats`` times; reported: wall seconds (min, median), rows/s, and
CPU seconds of the whole job (driver and workers).  The tars are checked identical.

    python benchmarks/local_executor.py [--copies 4] [--workers 1 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _become_subreaper() -> None:
    """Pool workers are the forkserver's children, and it is reparented when the driver
    exits; as a subreaper this process inherits and reaps them, so their CPU is counted."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER (Linux)


def _reap_orphans(seconds: float = 10.0) -> None:
    end = time.time() + seconds
    while time.time() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if pid == 0:
            time.sleep(0.05)


def _link_photos(photos: Path, folder: Path, copies: int) -> int:
    n = 0
    for c in range(copies):
        for src in sorted(photos.glob("*.jpg")):
            (folder / f"c{c}_{src.name}").symlink_to(src)
            n += 1
    return n


def _run(src: Path, out: Path, workers: int) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        str(REPO / "pipeline" / "build_shards.py"),
        "--source",
        str(src),
        "--out",
        str(out),
        "--executor",
        "local",
        "--workers",
        str(workers),
        "--rows-per-shard",
        "32",
        "-q",
    ]
    c0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    _reap_orphans()
    return wall, _children_cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    args = ap.parse_args()
    _become_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="exiflang-local-exec-"))
    try:
        src = tmp / "src"
        src.mkdir()
        rows = _link_photos(Path(args.photos), src, args.copies)
        walls: dict[int, list[float]] = {w: [] for w in args.workers}
        cpus: dict[int, list[float]] = {w: [] for w in args.workers}
        for _ in range(args.repeats):
            for w in args.workers:
                wall, cpu = _run(src, tmp / f"out{w}", w)
                walls[w].append(wall)
                cpus[w].append(cpu)
        tars = {w: sorted(p.read_bytes() for p in (tmp / f"out{w}").glob("*.tar")) for w in args.workers}
        assert all(t == tars[args.workers[0]] for t in tars.values()), "shards differ"
        print(f"{rows} rows, {os.cpu_count()} CPUs")
        base = min(walls[args.workers[0]])
        for w in args.workers:
            print(
                f"workers {w}: wall min {min(walls[w]):.1f} s, median {statistics.median(walls[w]):.1f} s "
                f"({rows / min(walls[w]):.0f} rows/s, x{base / min(walls[w]):.2f}); "
                f"CPU {statistics.median(cpus[w]):.1f} s"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
