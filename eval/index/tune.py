"""Recall@k of an index against exact search, and tuning its search parameters to a recall target.

Held-out queries (:func:`holdout`): ``min(1000, N // 10)`` rows of the set itself, drawn at
random and kept out of every training sample (IVF centroids, PQ codebooks).  Ground truth is
exact inner-product search (:func:`exact_search`: ``faiss.knn``, the ``IndexFlatIP`` kernel, over
the set read a chunk at a time, keeping the best k per query — the whole set is never in memory
at once when it is read from disk).  A query must behave like a *new* photo, so its own row may
never help it:

- flat / IVF (``leave-one-out``): the queries are in the index; both the exact and the
  approximate search ask for ``k + 1`` neighbours and the query's own row is dropped.  An IVF
  list is the same whether or not it holds the query, so this measures a fresh query.
- HNSW (``held-out-of-index``): the graph is built without the queries (they are added after
  tuning), and every query row is dropped from the ground truth.  Leave-one-out would be far
  too easy here — a node is linked to its neighbours by construction; on 20k random 64-d
  vectors it read 0.95 where fresh queries got 0.55.

Tuning (:func:`tune`) looks for the smallest value on a fixed ladder of the search parameter
(IVF ``nprobe`` 1, 2, 3, 4, 6, 8, 12, ...; HNSW ``efSearch`` 16, 24, 32, ...) that meets the
target: galloping up the ladder, then bisecting (recall grows with the value), on the first 250
queries' mean recall; the value found is then checked on all held-out queries and stepped up
until the *one-sided 95 % lower confidence bound* of their mean recall@k reaches the target, so
that new queries meet it too (the mean alone would sit right at the target and miss it about
half the time).  With a re-ranking stage the outer ladder is ``k_factor`` 1, 2, 4, ..., 128,
taking the first that reaches the target at some ``nprobe``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import faiss
import numpy as np

from exiflang.eval.index.build import VectorSource, as_source

LADDER = (
    1,
    2,
    3,
    4,
    6,
    8,
    12,
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
    1536,
    2048,
    3072,
    4096,
    6144,
    8192,
    12288,
    16384,
    24576,
    32768,
    49152,
    65536,
)
# Re-ranking candidates = k_factor x k.  Dense clusters need many: 10M clustered vectors (2,400 a
# list) reached recall@10 0.76 at 16 and, simulated at the same density, 0.87 / 0.94 / 0.97 at 32 /
# 64 / 128 (PQ16 codes cannot order that many near-ties; sq8 re-ranking of 1,280 rows is cheap).
K_FACTORS = (1, 2, 4, 8, 16, 32, 64, 128)
MAX_QUERIES = 1000
EXTRA = 16  # spare neighbours fetched so that dropped rows still leave k
WALK_QUERIES = 250  # queries used while walking a ladder; the chosen value is checked on all
Z_95 = 1.645  # one-sided 95 % normal quantile


def holdout(n: int, seed: int = 0, max_queries: int = MAX_QUERIES) -> tuple[np.ndarray, np.ndarray]:
    """``(query row ids, training pool row ids)``, both sorted int64; ``min(max, n // 10)`` queries."""
    rng = np.random.default_rng(seed + 1)
    nq = int(min(max_queries, n // 10))
    queries = np.sort(rng.choice(n, size=nq, replace=False)).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[queries] = False
    return queries, np.flatnonzero(mask).astype(np.int64)


def merge_top_k(
    sims: np.ndarray, ids: np.ndarray, more_sims: np.ndarray, more_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` per row of two ranked lists ``[Q, a]`` and ``[Q, b]`` (ids ``-1`` = none).

    Sorted by similarity, best first; ties keep the first list's entries (lower row ids) first.
    Returns ``(float32 [Q, k], int64 [Q, k])``, padded with ``-inf`` / ``-1``.
    """
    all_sims = np.concatenate([sims, np.where(more_ids >= 0, more_sims, -np.inf).astype(np.float32)], axis=1)
    all_ids = np.concatenate([ids, more_ids.astype(np.int64)], axis=1)
    if all_sims.shape[1] < k:
        pad = k - all_sims.shape[1]
        all_sims = np.pad(all_sims, ((0, 0), (0, pad)), constant_values=-np.inf)
        all_ids = np.pad(all_ids, ((0, 0), (0, pad)), constant_values=-1)
    order = np.argsort(-all_sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_sims, order, 1), np.take_along_axis(all_ids, order, 1)


def exact_search(
    base: np.ndarray | VectorSource, queries: np.ndarray, k: int, chunk_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner product: ``(sims float32 [Q,k], ids int64 [Q,k])``, best first.

    ``base``: float32 ``[N, D]`` rows or a :class:`~exiflang.eval.index.build.VectorSource` (a ``.npy`` on
    disk), scanned ``chunk_rows`` rows at a time (default 64 MiB): per chunk ``faiss.knn``, then
    the running top-k is merged with the chunk's.  Memory: one chunk and ``[Q, 2k]``.  Where
    fewer than ``k`` rows exist, ids are ``-1`` and sims ``-inf``.
    """
    source = as_source(base)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    sims = np.full((len(q), k), -np.inf, dtype=np.float32)
    ids = np.full((len(q), k), -1, dtype=np.int64)
    if len(q) == 0 or k <= 0:
        return sims, ids
    for start, block in source.chunks(chunk_rows):
        d, i = faiss.knn(q, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        sims, ids = merge_top_k(sims, ids, d, np.where(i >= 0, i + start, -1), k)
    return sims, ids


def first_k(ids: np.ndarray, banned: np.ndarray, k: int) -> np.ndarray:
    """Per row, the first ``k`` ids that are not ``banned`` (bool ``[Q, K]``), padded with -1."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for r in range(len(ids)):
        keep = ids[r][~banned[r] & (ids[r] >= 0)][:k]
        out[r, : len(keep)] = keep
    return out


def per_query_recall(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per row, the fraction of its true neighbours (ids >= 0 of ``truth``) found; rows without any
    true neighbour are left out.  ``[Q,k]`` each -> float64 ``[Q']``."""
    out = []
    for f, t in zip(found, truth):
        t = set(t[t >= 0].tolist())
        if t:
            out.append(len(t & set(f[f >= 0].tolist())) / len(t))
    return np.asarray(out, dtype=np.float64)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of the true neighbours (ids >= 0 in ``truth`` ``[Q,k]``) present in ``found`` ``[Q,k]``."""
    total = int((truth >= 0).sum())
    if total == 0:
        return 1.0
    hits = sum(len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth))
    return hits / total


def lower_bound(per_query: np.ndarray, z: float = Z_95) -> float:
    """One-sided 95 % lower confidence bound of the mean recall (normal approximation)."""
    if len(per_query) < 2:
        return float(per_query.mean()) if len(per_query) else 1.0
    return float(per_query.mean() - z * per_query.std(ddof=1) / np.sqrt(len(per_query)))


class RecallProbe:
    """The held-out queries of one index and their exact neighbours (see the module docstring)."""

    def __init__(
        self,
        base: np.ndarray | VectorSource,
        query_ids: np.ndarray,
        k: int,
        in_index: bool = True,
        chunk_rows: int | None = None,
    ) -> None:
        base = as_source(base)
        self.query_ids, self.in_index = query_ids, in_index
        self.queries = base.take(query_ids)
        self.k = int(min(k, max(len(base) - len(query_ids), 0)))
        fetch = min(len(base), self.k + (1 if in_index else min(len(query_ids), EXTRA)))
        self.truth = np.zeros((len(query_ids), self.k), np.int64)
        if len(query_ids) and self.k:
            _, ids = exact_search(base, self.queries, fetch, chunk_rows)
            self.truth = first_k(ids, self._banned(ids, always_all=True), self.k)

    def head(self, count: int) -> RecallProbe:
        """The same probe on its first ``count`` queries (cheap walks before a full check)."""
        sub = object.__new__(RecallProbe)
        sub.query_ids, sub.in_index, sub.k = self.query_ids[:count], self.in_index, self.k
        sub.queries, sub.truth = self.queries[:count], self.truth[:count]
        return sub

    def _banned(self, ids: np.ndarray, always_all: bool = False) -> np.ndarray:
        if self.in_index:
            return ids == self.query_ids[:, None]
        return np.isin(ids, self.query_ids) if always_all else np.zeros(ids.shape, bool)

    def found(self, index: faiss.Index) -> np.ndarray:
        """The index's answers to the held-out queries, ``[Q, k]`` after dropping own rows."""
        _, ids = index.search(self.queries, self.k + (1 if self.in_index else 0))
        return first_k(ids, self._banned(ids), self.k)

    def measure(self, index: faiss.Index) -> dict:
        """``{"recall", "recall_lcb", "qps"}`` of one batched search of the held-out queries."""
        if len(self.queries) == 0 or self.k == 0:
            return {"recall": 1.0, "recall_lcb": 1.0, "qps": 0.0}
        t0 = time.perf_counter()
        found = self.found(index)
        seconds = time.perf_counter() - t0
        per = per_query_recall(found, self.truth)
        return {
            "recall": round(float(per.mean()) if len(per) else 1.0, 4),
            "recall_lcb": round(lower_bound(per), 4),
            "qps": round(len(self.queries) / max(seconds, 1e-9), 1),
        }

    def latency_ms(self, index: faiss.Index, count: int = 50) -> float:
        """Median milliseconds of single-query searches (batch 1) over the first ``count`` queries."""
        times = []
        for q in self.queries[:count]:
            t0 = time.perf_counter()
            index.search(q[None], max(self.k, 1))
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1e3) if times else 0.0


def set_param(index: faiss.Index, name: str, value: float) -> None:
    """Set ``nprobe`` / ``efSearch`` / ``k_factor`` on an index or the one it wraps."""
    if name == "efSearch":
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
        graph = faiss.downcast_index(inner)
        if not isinstance(graph, faiss.IndexHNSW):
            raise ValueError(f"efSearch: {type(graph).__name__} is not an HNSW index")
        graph.hnsw.efSearch = int(value)
        return
    faiss.ParameterSpace().set_index_parameter(index, "k_factor_rf" if name == "k_factor" else name, value)


def ladders(kind: str, index: faiss.Index, n: int, refine: bool) -> list[tuple[str, tuple[int, ...]]]:
    """The parameters to walk for a kind (inner first) with their ladders."""
    if kind in ("ivf-flat", "ivf-pq"):
        nlist = faiss.extract_index_ivf(index).nlist
        return [("nprobe", tuple(v for v in LADDER if v < nlist) + (nlist,))] + (
            [("k_factor", K_FACTORS)] if refine else []
        )
    if kind == "hnsw":
        top = max(16, n)
        return [("efSearch", tuple(v for v in LADDER if 16 <= v < top) + (top,))]
    return []


def smallest_meeting(score: Callable[[int], float], ladder: tuple[int, ...], target: float) -> int | None:
    """Index of the smallest ladder value with ``score >= target`` (scores grow along the ladder):
    gallop over indices 0, 1, 3, 7, ... then bisect; ``None`` when even the last one misses."""
    seen: dict[int, bool] = {}

    def ok(i: int) -> bool:
        if i not in seen:
            seen[i] = score(ladder[i]) >= target
        return seen[i]

    lo, step, i = -1, 1, 0
    while not ok(min(i, len(ladder) - 1)):
        lo = min(i, len(ladder) - 1)
        if lo == len(ladder) - 1:
            return None
        i, step = i + step, step * 2
    hi = min(i, len(ladder) - 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def tune(index: faiss.Index, kind: str, probe: RecallProbe, target: float, n: int, refine: bool = False) -> dict:
    """Set the cheapest search parameters whose recall lower bound reaches ``target``.

    The ladder is walked on the first ``WALK_QUERIES`` queries (their mean recall), then the
    value found is checked on all of them and stepped up until the lower bound holds.  When
    nothing reaches the target the best value seen is kept.  Returns ``{"params", "recall",
    "recall_lcb", "qps", "met", "curve": [{param.., queries, recall, recall_lcb, qps}]}``.
    """
    walk = ladders(kind, index, n, refine)
    curve: list[dict] = []
    if not walk:
        m = probe.measure(index)
        return {"params": {}, **m, "met": m["recall_lcb"] >= target, "curve": curve}
    (inner_name, inner), (outer_name, outer) = walk[0], (walk[1] if len(walk) > 1 else ("", (0,)))
    quick = probe.head(WALK_QUERIES)

    def measure(p: RecallProbe, values: dict) -> dict:
        for name, value in values.items():
            set_param(index, name, value)
        point = {**values, "queries": len(p.queries), **p.measure(index)}
        curve.append(point)
        return point

    chosen: dict | None = None
    for ov in outer:
        fixed = {outer_name: ov} if outer_name else {}
        # Called before the loop moves on, so the closure's `fixed` is this iteration's.
        i = smallest_meeting(lambda v: measure(quick, {**fixed, inner_name: v})["recall"], inner, target)  # noqa: B023
        while i is not None and i < len(inner):
            point = measure(probe, {**fixed, inner_name: inner[i]})
            if point["recall_lcb"] >= target:
                chosen = point
                break
            i += 1
        if chosen:
            break
    if chosen is None:
        full = [c for c in curve if c["queries"] == len(probe.queries)] or curve
        chosen = max(full, key=lambda c: (c["recall_lcb"], c["qps"]))
    values = {k: v for k, v in chosen.items() if k in (inner_name, outer_name)}
    for name, value in values.items():
        set_param(index, name, value)
    return {
        "params": values,
        "recall": chosen["recall"],
        "recall_lcb": chosen["recall_lcb"],
        "qps": chosen["qps"],
        "met": chosen["recall_lcb"] >= target,
        "curve": curve,
    }
