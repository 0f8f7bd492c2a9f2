"""Index at scale: build an index streamed from an .npy on disk at 1M and 10M x 128, against chunked exact search.

For each size: clustered unit vectors (the recipe of ``benchmarks/index_lookup.py``: points
around 4096 random unit centres, cosine ~0.7 to theirs) are written straight into an ``.npy``
in a temporary folder, a chunk at a time (never whole in memory); a child process builds the
index from that file (``build_index(path)``: training on a sample, adding in chunks) and reports
its peak RSS; this process then loads the index and measures, on 1000 fresh queries of the same
distribution, queries/s at batch 1 and 256 and recall@10 against exact search.  The baseline is
that exact search itself (``exiflang.eval.index.tune.exact_search``: the file scanned in 64 MiB chunks,
the best 10 kept per query), timed alternately with the index (min and median of the repeats;
on fewer queries than the index, see :func:`alternate`).
The temporary folder is deleted at the end.

    python benchmarks/index_scale.py [--sizes 1000000,10000000] [--dim 128] [--kind ivf-pq]
                                     [--memory-mb M] [--recall 0.9] [--repeats 3] [--exact-queries 256]
                                     [--exact-batch1 3] [--json FILE] [--quick]
"""

from __future__ import annotations

import argparse
import json
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
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from exiflang.eval.index.build import NpySource  # noqa: E402
from exiflang.eval.index.run import VectorIndex, build_index, set_threads  # noqa: E402
from exiflang.eval.index.tune import exact_search, recall_at_k  # noqa: E402

K = 10
CHUNK = 100_000  # rows generated per step (the chunk of index_lookup.vectors, so the same stream)


def write_vectors(path: Path, n: int, dim: int, seed: int, centres: int) -> None:
    """Stream float32 ``[n, dim]`` clustered unit rows into the ``.npy`` ``path``, ``CHUNK`` rows at a time."""
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    offset = header.offset
    del header  # only the header and the file's size are wanted from it; rows go through writes
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(12345).standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        for s in range(0, n, CHUNK):
            m = min(CHUNK, n - s)
            x = rng.standard_normal((m, dim), dtype=np.float32)
            x = c[rng.integers(0, centres, m)] + x / np.sqrt(dim)
            fh.write((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32).tobytes())


def queries_like(n: int, dim: int, seed: int, centres: int, folder: Path) -> np.ndarray:
    path = folder / f"queries-{seed}.npy"
    write_vectors(path, n, dim, seed, centres)
    return np.load(path)


def child_build(args: argparse.Namespace) -> int:
    """The build, alone in its process so that its peak RSS is the build's: prints one JSON line."""
    set_threads(args.threads)
    # RSS before the build (interpreter, numpy, faiss, pandas): the build's own share is the rest.
    status = Path("/proc/self/status").read_text().splitlines()
    before_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    t0 = time.perf_counter()
    info = build_index(
        Path(args.child_build),
        Path(args.child_out),
        kind=args.kind,
        recall_target=args.recall,
        memory_budget_mb=args.memory_mb,
        k=K,
    )
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps({"build_s": seconds, "peak_rss_mb": peak_kb / 1024, "rss_before_mb": before_kb / 1024, "info": info})
    )
    return 0


def run_build(base: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = (
        [
            sys.executable,
            __file__,
            "--child-build",
            str(base),
            "--child-out",
            str(out),
            "--kind",
            args.kind,
            "--recall",
            str(args.recall),
        ]
        + (["--memory-mb", str(args.memory_mb)] if args.memory_mb else [])
        + (["--threads", str(args.threads)] if args.threads else [])
    )
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def qps(search, queries: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(queries), batch):
        search(queries[s : s + batch])
    return len(queries) / (time.perf_counter() - t0)


def alternate(index: VectorIndex, source: NpySource, queries: np.ndarray, args: argparse.Namespace) -> dict:
    """Queries/s of the index (A) and of exact search (B), run A, B, A, B, ...: ``{name: [values]}``.

    Exact search reads the whole file per batch (10M x 128: 5 GB, minutes per batch on 2 shared
    cores), so it is timed on fewer queries: ``--exact-batch1`` one by one, ``--exact-queries``
    in batches of 256; the index on 200 one by one and on all of them in batches of 256.
    """
    runs: dict[str, list[float]] = {"index_1": [], "index_256": [], "exact_1": [], "exact_256": []}
    for _ in range(args.repeats):
        runs["index_1"].append(qps(lambda q: index.search(q, K), queries[:200], 1))
        runs["exact_1"].append(qps(lambda q: exact_search(source, q, K), queries[: args.exact_batch1], 1))
        runs["index_256"].append(qps(lambda q: index.search(q, K), queries, 256))
        runs["exact_256"].append(qps(lambda q: exact_search(source, q, K), queries[: args.exact_queries], 256))
    return runs


def measure(n: int, args: argparse.Namespace, work: Path) -> dict:
    """Generate, build (child), load, measure one size; the base file is deleted before returning."""
    base, out = work / f"base-{n}.npy", work / f"index-{n}"
    t0 = time.perf_counter()
    write_vectors(base, n, args.dim, 0, args.centres)
    gen_s = time.perf_counter() - t0
    queries = queries_like(args.queries, args.dim, 1, args.centres, work)
    built = run_build(base, out, args)
    source = NpySource([base])
    t0 = time.perf_counter()
    _, truth = exact_search(source, queries, K)  # the reference: chunked exact search
    truth_s = time.perf_counter() - t0
    index = VectorIndex.load(out)
    found = index.search(queries, K)[1]
    runs = alternate(index, source, queries, args)
    info = built["info"]
    row = {
        "n": n,
        "dim": args.dim,
        "kind": info["kind"],
        "generate_s": gen_s,
        "build_s": built["build_s"],
        "build_seconds": info["build_seconds"],
        "params": info["params"],
        "mb": info["bytes"] / 2**20,
        "bytes_per_vector": info["bytes"] / n,
        "raw_mb": n * args.dim * 4 / 2**20,
        "peak_rss_mb": built["peak_rss_mb"],
        "rss_before_mb": built["rss_before_mb"],
        "recall": recall_at_k(found, truth),
        "build_recall_lcb": info["recall_at_k_lower_95"],
        "truth_s": truth_s,
        "truth_qps_batch_all": len(queries) / truth_s,
        **{k: {"min": min(v), "median": statistics.median(v), "all": v} for k, v in runs.items()},
    }
    del index
    base.unlink()
    shutil.rmtree(out, ignore_errors=True)
    return row


def emit(row: dict) -> None:
    p = ", ".join(f"{k}={v}" for k, v in row["params"].items() if k != "train_size")
    med = {k: row[k]["median"] for k in ("index_1", "index_256", "exact_1", "exact_256")}
    print(
        f"| {row['n']:,} | {row['kind']} ({p}) | {row['build_s']:.0f} | {row['mb']:.0f} "
        f"| {row['bytes_per_vector']:.0f} | {row['peak_rss_mb']:.0f} ({row['rss_before_mb']:.0f} before; "
        f"raw {row['raw_mb']:.0f}) "
        f"| {row['index_1']['min']:.0f} / {med['index_1']:.0f} "
        f"| {row['index_256']['min']:.0f} / {med['index_256']:.0f} "
        f"| {row['recall']:.3f} | {row['exact_1']['min']:.2f} / {med['exact_1']:.2f} "
        f"| {row['exact_256']['min']:.1f} / {med['exact_256']:.1f} | {med['index_1'] / med['exact_1']:.0f}x "
        f"| {med['index_256'] / med['exact_256']:.0f}x |",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000", help="comma-separated numbers of vectors")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--centres", type=int, default=4096, help="centres of the clustered distribution")
    ap.add_argument("--kind", default="ivf-pq", help="index kind passed to build_index")
    ap.add_argument("--memory-mb", type=float, help="memory budget of the index (build_index's memory_budget_mb)")
    ap.add_argument("--recall", type=float, default=0.9, help="recall@10 target of the tuning")
    ap.add_argument("--queries", type=int, default=1000, help="fresh queries (recall and batch-256 speed)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats of index and exact timing")
    ap.add_argument("--exact-batch1", type=int, default=3, help="queries timed one by one by exact search")
    ap.add_argument("--exact-queries", type=int, default=256, help="queries timed in batches of 256 by exact search")
    ap.add_argument("--threads", type=int, help="FAISS threads (default: the cores available)")
    ap.add_argument("--workdir", help="where the temporary folder goes (default: the system's)")
    ap.add_argument("--quick", action="store_true", help="one size of 100,000 vectors")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child-build", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = "100000"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_build:
        return child_build(args)
    threads = set_threads(args.threads)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, {threads} FAISS threads, dim {args.dim}, "
        f"load average {os.getloadavg()[0]:.1f}; q/s as min / median of {args.repeats} alternating runs",
        flush=True,
    )
    print(
        "\n| vectors | index | build s | MB on disk | bytes/vector | build peak RSS MB | q/s batch 1 | q/s batch 256 "
        "| recall@10 | exact q/s batch 1 | exact q/s batch 256 | batch-1 vs exact | batch-256 vs exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="index_scale-", dir=args.workdir))
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(n, args, work))
            emit(rows[-1])
            if args.json:  # partial results survive an interrupted run
                Path(args.json).write_text(json.dumps({"rows": rows, "threads": threads}, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
