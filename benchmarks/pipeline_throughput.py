"""Pipeline throughput: the dev photos served over loopback, many times over.

Measures (a) a floor — fetch the bytes and append them to a tar, nothing else — and (b) the
full shard worker (fetch, image check, sha256, EXIF parse, tar + Parquet + stats), called
directly and driven by Ray; reports photos/s, photos per CPU-second ("per core"), MB/s, the
ratio b/a and peak memory per worker.  The server runs in its own process so it does not
share the workers' GIL.

    python benchmarks/pipeline_throughput.py [--repeats 6] [--threads 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from exiflang.pipeline.config import ShardConfig  # noqa: E402
from exiflang.pipeline.driver import JobOptions, build  # noqa: E402
from exiflang.pipeline.fetch.download import DownloadConfig, Downloader  # noqa: E402
from exiflang.pipeline.records import SourceRow  # noqa: E402
from exiflang.pipeline.shards.files import read_tables  # noqa: E402
from exiflang.pipeline.shards.worker import process_shard  # noqa: E402


def _serve(root: str, q: mp.Queue[int]) -> None:
    from tests.http_server import LoopbackServer

    with LoopbackServer(Path(root)) as srv:
        q.put(srv.port)
        while True:
            time.sleep(3600)


def _cpu() -> float:
    """CPU seconds of this process and its reaped children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def floor(urls: list[str], threads: int, out: Path) -> tuple[float, float, int]:
    """Fetch and append to a tar only; returns (wall s, cpu s, bytes)."""
    total = 0
    t0, c0 = time.perf_counter(), _cpu()
    with (
        Downloader(DownloadConfig(per_host_concurrency=threads)) as dl,
        ThreadPoolExecutor(threads) as pool,
        tarfile.open(out, "w") as tar,
    ):
        for i, res in enumerate(pool.map(dl.fetch, urls)):
            info = tarfile.TarInfo(f"{i:08d}.jpg")
            info.size = len(res.data or b"")
            tar.addfile(info, io.BytesIO(res.data or b""))
            total += info.size
    return time.perf_counter() - t0, _cpu() - c0, total


def _cfg(out: Path, threads: int, per_shard: int) -> ShardConfig:
    # Repeats of one photo are the point here, so dedup is off: every row is full work.
    return ShardConfig(
        out_dir=str(out),
        threads=threads,
        rows_per_shard=per_shard,
        dedup=False,
        download=DownloadConfig(per_host_concurrency=threads),
    )


def worker_direct(urls: list[str], threads: int, out: Path) -> tuple[float, float, int, float]:
    rows = [SourceRow(index=i, url=u) for i, u in enumerate(urls)]
    t0, c0 = time.perf_counter(), _cpu()
    stats = process_shard(0, rows, _cfg(out, threads, len(rows)))
    return time.perf_counter() - t0, _cpu() - c0, stats["bytes_fetched"], stats["peak_rss_mb"]


def ray_driven(urls: list[str], threads: int, workers: int, out: Path) -> tuple[float, float, int, float]:
    import psutil
    import ray

    rows = iter([SourceRow(index=i, url=u) for i, u in enumerate(urls)])
    per_shard = max(1, len(urls) // (workers * 2))
    ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False)
    t0 = time.perf_counter()
    cpu0 = sum(p.cpu_times().user + p.cpu_times().system for p in psutil.Process().children(recursive=True))
    cfg = _cfg(out, threads, per_shard)
    cfg.download.per_host_concurrency = threads * workers
    build(rows, cfg, JobOptions(executor="ray", workers=workers))
    wall = time.perf_counter() - t0
    procs = psutil.Process().children(recursive=True)
    cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs) - cpu0
    ray.shutdown()
    table = read_tables(out, ["bytes"])
    import json

    rss = max(json.loads(p.read_text()).get("peak_rss_mb", 0) for p in out.glob("*_stats.json"))
    return wall, cpu, sum(b or 0 for b in table["bytes"].to_pylist()), rss


def _isolated(fn, *args):
    """Run one measurement in a fresh process so its CPU time and peak RSS are its own."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, fn, args))
    p.start()
    res = q.get(timeout=1800)
    p.join()
    return res


def _child(q, fn, args) -> None:
    res = fn(*args)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put((*res[:3], rss))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--repeats", type=int, default=6, help="times each photo is served")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="Ray workers")
    args = ap.parse_args(argv)
    names = sorted(p.name for p in Path(args.photos).glob("*.jpg"))
    q: mp.Queue[int] = mp.get_context("spawn").Queue()
    server = mp.get_context("spawn").Process(target=_serve, args=(args.photos, q), daemon=True)
    server.start()
    port = q.get(timeout=60)
    urls = [f"http://127.0.0.1:{port}/files/{n}?i={r}" for r in range(args.repeats) for n in names]
    tmp = Path(tempfile.mkdtemp(prefix="exiflang-bench-"))
    try:
        floor(urls[: len(names)], args.threads, tmp / "warm.tar")  # warm server cache
        fw, fc, fb, frss = _isolated(floor, urls, args.threads, tmp / "floor.tar")
        dw, dc, db, drss = _isolated(worker_direct, urls, args.threads, tmp / "direct")
        rw, rc, rb, rrss = ray_driven(urls, args.threads, args.workers, tmp / "ray")
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(urls)
    mb = fb / 2**20
    print(f"\n{n} photos ({mb / n:.2f} MB mean), {args.threads} threads, {os.cpu_count()} cores\n")
    print("| path | photos/s | photos per CPU-s | MB/s | ratio to floor (per CPU-s) | peak RSS per worker |")
    print("|---|---|---|---|---|---|")
    base = n / fc
    for name, w, c, b, rss in (
        ("(a) floor: fetch + tar append", fw, fc, fb, frss),
        ("(b) full worker, called directly", dw, dc, db, drss),
        (f"(b) full worker, Ray x{args.workers}", rw, rc, rb, rrss),
    ):
        per_cpu = n / c if c > 0 else float("nan")
        rss_s = f"{rss:.0f} MB" if rss else "-"
        print(f"| {name} | {n / w:.0f} | {per_cpu:.0f} | {b / 2**20 / w:.0f} | {per_cpu / base:.2f} | {rss_s} |")
    print(f"\nwall-clock ratio b/a (direct): {fw / dw:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
