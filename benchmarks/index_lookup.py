"""Index and lookup benchmark: exact (flat) vs the index `exiflang index` chooses, on random unit vectors.

For each distribution and size: build seconds, size in MB, queries/s at batch 1 and batch 256,
and recall@10 of fresh queries (not in the index, never seen by tuning) against exact search —
with the ratio against the flat baseline measured in the same run.  Then the end-to-end lookup
latency per photo on CPU: decode one real photo, embed a 4 x 4 grid of 124-px patches with the
`paper` ResNet-50 (random init: the cost is the same), search the largest index built.

Distributions:
- ``uniform``: unit vectors uniformly on the sphere — the worst case for IVF/PQ/graphs (no
  cluster structure: in 768-d a point's 10 nearest neighbours are barely nearer than any
  other point, so any partition has to be scanned widely to find them);
- ``clustered``: points around ``--centres`` (4096) random unit centres with Gaussian noise of
  the same norm as the centre (cosine to the centre about 0.7) — closer to real embeddings,
  which gather by camera model and settings.

    python benchmarks/index_lookup.py [--sizes 100000,1000000] [--dim 768] [--quick]
                                      [--dists uniform,clustered] [--kinds auto] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from exiflang.eval.index.run import VectorIndex, build_index, set_threads  # noqa: E402
from exiflang.eval.index.tune import recall_at_k  # noqa: E402

K = 10


def vectors(dist: str, n: int, dim: int, seed: int, centres: int, chunk: int = 100_000) -> np.ndarray:
    """float32 ``[n, dim]`` unit rows, generated in chunks (1M x 768 is 3 GB)."""
    out = np.empty((n, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    c = None
    if dist == "clustered":
        c = np.random.default_rng(12345).standard_normal((centres, dim), dtype=np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = rng.standard_normal((m, dim), dtype=np.float32)
        if c is not None:
            x = c[rng.integers(0, centres, m)] + x / np.sqrt(dim)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def search_speed(search, queries: np.ndarray, batch: int, limit: int) -> float:
    """Queries per second of ``search(batch)`` over the first ``limit`` queries."""
    q = queries[:limit]
    t0 = time.perf_counter()
    for s in range(0, len(q), batch):
        search(q[s : s + batch])
    return len(q) / (time.perf_counter() - t0)


def flat_row(base: np.ndarray, queries: np.ndarray) -> tuple[dict, np.ndarray]:
    """The exact baseline: an ``IndexFlatIP`` (add = copy) searched like the others; its answers."""
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    build = time.perf_counter() - t0
    _, truth = index.search(queries, K)
    search = functools.partial(index.search, k=K)  # no closure over `index`, which is freed below
    row = {
        "index": "flat",
        "params": "exact",
        "build_s": build,
        "mb": base.nbytes / 2**20,
        "qps_1": search_speed(search, queries, 1, 50),
        "qps_256": search_speed(search, queries, 256, len(queries)),
        "recall": 1.0,
    }
    del index, search
    return row, truth


def approx_row(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, kind: str, folder: Path) -> dict:
    t0 = time.perf_counter()
    info = build_index(base, folder, kind=kind, recall_target=0.9, k=K)
    build = time.perf_counter() - t0
    index = VectorIndex.load(folder)
    _, found = index.search(queries, K)
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items() if k not in ("train_size",))
    return {
        "index": info["kind"],
        "params": params,
        "build_s": build,
        "mb": info["bytes"] / 2**20,
        "qps_1": search_speed(lambda q: index.search(q, K), queries, 1, 200),
        "qps_256": search_speed(lambda q: index.search(q, K), queries, 256, len(queries)),
        "recall": recall_at_k(found, truth),
        "tuned_recall": info["recall_at_k"],
        "tune_s": info["build_seconds"].get("tune", 0.0),
    }


def end_to_end(index_dir: Path, dim: int, photo: Path, repeats: int = 3) -> dict:
    """Median ms per photo: decode, embed (paper ResNet-50, 16 patches of 124 px), search, on CPU."""
    import torch

    from exiflang.eval.embed.batch import PhotoEncoder
    from exiflang.eval.embed.patches import PatchEmbedder
    from exiflang.eval.images import load_rgb
    from exiflang.train.model import ExifClip, ModelConfig

    torch.manual_seed(0)
    model = ExifClip(ModelConfig.preset("paper", embed_dim=dim))
    encoder = PhotoEncoder(PatchEmbedder(model, device="cpu", batch_size=256), 124, 4, "grid")
    index = VectorIndex.load(index_dir)
    times: dict[str, list[float]] = {"decode": [], "embed": [], "search": []}
    for i in range(repeats + 1):  # the first round warms up allocators and kernels
        t0 = time.perf_counter()
        rgb = load_rgb(photo)
        t1 = time.perf_counter()
        with torch.inference_mode():
            emb = encoder.embed([rgb])
        t2 = time.perf_counter()
        index.search(emb, K)
        t3 = time.perf_counter()
        if i:
            for name, v in (("decode", t1 - t0), ("embed", t2 - t1), ("search", t3 - t2)):
                times[name].append(v * 1e3)
    out = {k: float(np.median(v)) for k, v in times.items()}
    out.update(
        total=sum(out.values()),
        photo=photo.name,
        pixels=f"{rgb.shape[1]}x{rgb.shape[0]}",
        index=index.info["kind"],
        n=len(index),
        torch_threads=torch.get_num_threads(),
    )
    return out


def emit(row: dict, flat: dict, dist: str, n: int, rows: list) -> None:
    """Complete a result row (ratio against the flat baseline of its case), print it, keep it."""
    row.update(dist=dist, n=n, speedup=row["qps_256"] / flat["qps_256"])
    rows.append(row)
    print(
        f"| {n:,} | {dist} | {row['index']} | {row['params']} | {row['build_s']:.1f} | {row['mb']:.0f} "
        f"| {row['qps_1']:.0f} | {row['qps_256']:.0f} | {row['recall']:.3f} | {row['speedup']:.1f}x |",
        flush=True,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated numbers of vectors")
    ap.add_argument("--dim", type=int, default=768, help="vector dimension (768: the paper model)")
    ap.add_argument("--dists", default="uniform,clustered", help="uniform and/or clustered")
    ap.add_argument("--kinds", default="auto", help="approximate kinds to compare with flat (auto, ivf-pq, hnsw, ...)")
    ap.add_argument("--centres", type=int, default=4096, help="centres of the clustered distribution")
    ap.add_argument("--queries", type=int, default=1000, help="fresh queries per case")
    ap.add_argument("--threads", type=int, help="FAISS threads (default: the cores available)")
    ap.add_argument("--photo", help="photo for the end-to-end latency (default: one of shared/data/photos)")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end lookup latency")
    ap.add_argument("--quick", action="store_true", help="one size of 60,000 vectors, 300 queries")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.queries = "60000", 300
    return args


def default_photo() -> Path:
    photos = sorted((REPO.parent / "shared" / "data" / "photos").glob("*.jpg"), key=lambda p: p.stat().st_size)
    if not photos:
        raise SystemExit("no photo for the end-to-end latency: pass --photo")
    return photos[len(photos) // 2]  # a median-sized one


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    print(
        f"faiss {faiss.__version__}, {threads} threads, dim {args.dim}, load average {os.getloadavg()[0]:.1f} "
        f"(the CPU may be shared: absolute numbers vary with load, ratios within a row less)",
        flush=True,
    )
    rows, last_index = [], None
    work = Path(tempfile.mkdtemp(prefix="index_bench-"))
    result = {"rows": rows, "threads": threads, "dim": args.dim}
    print(
        "\n| vectors | distribution | index | parameters | build s | MB | q/s batch 1 | q/s batch 256 "
        "| recall@10 | batch-256 speed vs flat |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for dist in args.dists.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            base = vectors(dist, n, args.dim, seed=0, centres=args.centres)
            queries = vectors(dist, args.queries, args.dim, seed=1, centres=args.centres)
            flat, truth = flat_row(base, queries)
            emit(flat, flat, dist, n, rows)
            for kind in args.kinds.split(","):
                last_index = work / f"{dist}-{n}-{kind}"
                emit(approx_row(base, queries, truth, kind, last_index), flat, dist, n, rows)
            del base
            if args.json:  # partial results survive an interrupted run
                Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    result["load_average_end"] = os.getloadavg()[0]
    if not args.no_e2e and last_index is not None and args.dim > 0:
        e2e = end_to_end(last_index, args.dim, Path(args.photo) if args.photo else default_photo())
        result["end_to_end"] = e2e
        print(
            f"\nend-to-end lookup per photo ({e2e['photo']}, {e2e['pixels']}; paper ResNet-50, 16 patches of "
            f"124 px, {e2e['torch_threads']} torch threads; {e2e['index']} index of {e2e['n']:,}): decode "
            f"{e2e['decode']:.0f} ms + embed {e2e['embed']:.0f} ms + search {e2e['search']:.1f} ms = "
            f"{e2e['total']:.0f} ms"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
