"""Which FAISS index to build for N vectors and a memory budget, and building (training + adding) it.

Rules (:func:`choose_kind`, ``kind="auto"``):

- ``N < EXACT_MAX`` (50,000): ``flat`` — ``IndexFlatIP``, exact inner product (= cosine on
  L2-normalised rows).  At 50k x 768 a batched exact search still answers thousands of queries
  per second on 2 cores, and nothing can be wrong with it.
- otherwise ``ivf-flat`` — ``IndexIVFFlat`` (full vectors in inverted lists) when its estimated
  size fits ``memory_budget_mb`` (or no budget is given);
- otherwise ``ivf-pq`` — ``IndexIVFPQ`` with the largest number of 8-bit sub-quantizers ``m``
  (a divisor of D, at least 4 dims each) whose codes fit the budget; when PQ alone cannot reach
  the recall target a re-ranking stage (``IndexRefine``: 8-bit scalar-quantized copies, or
  full vectors) is added if it fits (:mod:`eval.index_tune` decides).
- ``hnsw`` (``IndexHNSWFlat``, M=32) only when asked: its graph costs memory and a long build
  (hours for millions of 768-d vectors on 2 cores), for low single-query latency.

IVF lists: ``nlist = round(4 * sqrt(N))`` (at most one list per 40 training vectors); the
coarse quantizer is k-means (10 iterations) on a random sample of ``min(pool, 40 * nlist)``
vectors drawn from the *training pool* — every vector except the held-out tuning queries — so
the queries that later measure recall never shaped the clustering.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import faiss
import numpy as np

KINDS = ("auto", "flat", "ivf-flat", "ivf-pq", "hnsw")
EXACT_MAX = 50_000
TRAIN_PER_LIST = 40        # faiss warns below 39 points per centroid
KMEANS_ITERS = 10
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
PQ_TRAIN = 32_768        # PQ codebooks: 256 centroids x 128 points
ID_BYTES = 8               # an inverted list stores an int64 id per vector


@dataclass
class Built:
    """A populated index and how it was made (``params`` and ``seconds`` go into ``index.json``)."""

    index: faiss.Index
    kind: str
    params: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def default_nlist(n: int, pool: int) -> int:
    """``round(4 * sqrt(n))``, at least 1, at most ``pool // TRAIN_PER_LIST``."""
    return int(max(1, min(round(4 * math.sqrt(max(n, 1))), pool // TRAIN_PER_LIST)))


def pq_m_choices(dim: int) -> list[int]:
    """Divisors of ``dim`` usable as PQ sub-quantizer counts, largest first."""
    return [m for m in range(dim, 0, -1) if dim % m == 0]


def estimate_bytes(kind: str, n: int, dim: int, *, nlist: int = 0, m: int = 0, refine: str = "") -> int:
    """Approximate in-memory size of an index (vectors, codes, ids, centroids, graph)."""
    centroids = nlist * dim * 4
    if kind == "flat":
        return n * dim * 4
    if kind == "ivf-flat":
        return n * (dim * 4 + ID_BYTES) + centroids
    if kind == "ivf-pq":
        extra = {"": 0, "sq8": dim, "flat": dim * 4}[refine]
        return n * (m + ID_BYTES + extra) + centroids + 256 * dim * 4
    if kind == "hnsw":
        return int(n * (dim * 4 + 2 * HNSW_M * 4 * 1.1))
    raise ValueError(f"index kind {kind!r}: expected one of {KINDS}")


def choose_kind(n: int, dim: int, memory_budget_mb: Optional[float] = None) -> str:
    """The ``auto`` rule of the module docstring."""
    if n < EXACT_MAX:
        return "flat"
    nlist = default_nlist(n, n)
    if memory_budget_mb is None or estimate_bytes("ivf-flat", n, dim, nlist=nlist) <= memory_budget_mb * 2**20:
        return "ivf-flat"
    return "ivf-pq"


def choose_pq_m(n: int, dim: int, nlist: int, memory_budget_mb: Optional[float]) -> int:
    """The largest sub-quantizer count (at most ``D/4``) whose codes fit the budget; ``D/8``
    without a budget.  (Fewer than 4 dimensions per sub-quantizer trains slowly for little gain.)"""
    choices = [m for m in pq_m_choices(dim) if m <= max(dim // 4, 1)]
    if memory_budget_mb is None:
        return next(m for m in choices if m <= max(dim // 8, 1))
    budget = memory_budget_mb * 2**20
    for m in choices:
        if estimate_bytes("ivf-pq", n, dim, nlist=nlist, m=m) <= budget:
            return m
    need = estimate_bytes("ivf-pq", n, dim, nlist=nlist, m=choices[-1]) / 2**20
    raise ValueError(f"memory budget {memory_budget_mb} MB is too small for {n} vectors of {dim} "
                     f"dimensions (the smallest IVF-PQ needs about {need:.0f} MB)")


def _train_sample(vectors: np.ndarray, pool: np.ndarray, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False))
    return np.ascontiguousarray(vectors[pick])


def _add(index: faiss.Index, vectors: np.ndarray, chunk: int = 262_144) -> None:
    """Add in chunks: a 1M x 768 ``add`` otherwise builds large temporaries (assignments, codes)."""
    for s in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[s:s + chunk]))


def add_rows(index: faiss.Index, vectors: np.ndarray, rows: np.ndarray, chunk: int = 65_536) -> None:
    """Add ``vectors[rows]`` under their row ids (an ``IndexIDMap``), in chunks."""
    for s in range(0, len(rows), chunk):
        ids = np.ascontiguousarray(rows[s:s + chunk], dtype=np.int64)
        index.add_with_ids(np.ascontiguousarray(vectors[ids]), ids)


def build(vectors: np.ndarray, kind: str, pool: np.ndarray, *, memory_budget_mb: Optional[float] = None,
          seed: int = 0) -> Built:
    """Construct, train (on a sample of ``pool`` row ids) and fill an index of ``kind`` (not ``auto``).

    ``vectors``: float32 ``[N, D]``, rows L2-normalised.  ``pool``: int64 row ids that may be
    used for training (the caller keeps its tuning queries out).  HNSW gets only the ``pool``
    rows here; the caller adds the others with :func:`add_rows` once it has tuned.
    """
    n, dim = vectors.shape
    metric = faiss.METRIC_INNER_PRODUCT
    t0 = time.perf_counter()
    params: dict = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, HNSW_M, metric)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = faiss.IndexIDMap2(graph)  # rows are added out of order (tuning queries last)
        params.update(hnsw_m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
    elif kind in ("ivf-flat", "ivf-pq"):
        nlist = default_nlist(n, len(pool))
        quantizer = faiss.IndexFlatIP(dim)
        size = TRAIN_PER_LIST * nlist
        if kind == "ivf-flat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        else:
            size = max(size, PQ_TRAIN)
            m = choose_pq_m(n, dim, nlist, memory_budget_mb)
            # 256 centroids per sub-quantizer need >= 256 training points; tiny sets get fewer bits.
            nbits = int(min(8, max(1, np.log2(max(min(size, len(pool)) // 4, 2)))))
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, metric)
            params.update(m=m, nbits=nbits)
        index.cp.niter = KMEANS_ITERS
        index.cp.seed = seed
        # The sample sizes above are chosen on purpose; faiss's "too few points" warning is noise.
        index.cp.min_points_per_centroid = 1
        if kind == "ivf-pq":
            index.pq.cp.min_points_per_centroid = 1
            index.pq.cp.niter = KMEANS_ITERS
        sample = _train_sample(vectors, pool, size, seed)
        index.train(sample)
        params.update(nlist=nlist, train_size=len(sample))
    else:
        raise ValueError(f"index kind {kind!r}: expected one of {KINDS[1:]}")
    t1 = time.perf_counter()
    if kind == "hnsw":
        add_rows(index, vectors, pool)  # the tuning queries join after tuning (eval.index_tune)
    else:
        _add(index, vectors)
    t2 = time.perf_counter()
    return Built(index, kind, params, {"train": round(t1 - t0, 3), "add": round(t2 - t1, 3)})


def add_refine(built: Built, vectors: np.ndarray, pool: np.ndarray, how: str, seed: int = 0) -> Built:
    """Wrap a filled IVF-PQ in ``IndexRefine`` over ``sq8`` (8-bit scalar) or ``flat`` copies."""
    dim = vectors.shape[1]
    t0 = time.perf_counter()
    if how == "flat":
        refine = faiss.IndexFlatIP(dim)
    else:
        refine = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        refine.train(_train_sample(vectors, pool, 65_536, seed))
    _add(refine, vectors)
    wrapped = faiss.IndexRefine(built.index, refine)
    seconds = {**built.seconds, "refine": round(time.perf_counter() - t0, 3)}
    return Built(wrapped, built.kind, {**built.params, "refine": how}, seconds)
