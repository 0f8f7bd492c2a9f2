"""Lookup abstention: is a query photo as close to its nearest index photos as the index's own photos are to theirs?

Raw cosines of a small model's photo embeddings are all near 1 (0.985-0.9998 for the demo model,
real photos and synthetic alike), so "similarity 0.999" says nothing.  Distances are measured
after whitening instead: the index's vectors ``x`` are centred on their mean ``mu`` and
multiplied by ``W = V diag(1 / sqrt(lambda + s * lambda_max)) V^T`` (``lambda, V``: eigenvalues and
vectors of their covariance; ``s`` = :data:`SHRINK` keeps the near-empty directions from being
blown up), so every direction the index varies in counts by its spread, not by its raw size.

A photo's *distance* is the Euclidean distance, in that space, to its ``k``-th nearest index photo
among the ``candidates`` nearest by the index's own cosine search (the FAISS index answers the
candidates; their vectors are read back from it).  The reference is the same distance for a
seeded sample of the index's own photos, each searched with itself left out (leave-one-out).  A
query is *known* when its distance is at most the reference's ``percentile``-th value (95: as
close as 95 % of the index's photos are to their neighbours); otherwise lookup says "unknown
camera".  Everything is computed from the index when it is loaded (:func:`fit`: a few hundred
searches), so older index folders get it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SHRINK = 0.1  # added to every eigenvalue, relative to the largest
K = 10  # the k-th nearest neighbour's distance
CANDIDATES = 50  # nearest by cosine, re-measured after whitening
PERCENTILE = 95.0  # of the index's own leave-one-out distances: the "known" threshold
SAMPLE = 400  # index photos in the leave-one-out reference
FIT_ROWS = 20000  # index photos the mean and covariance are estimated from


@dataclass(frozen=True)
class Familiarity:
    """What :func:`fit` measured on an index; ``reference`` is sorted ascending."""

    mean: np.ndarray  # float64 [D]
    whiten: np.ndarray  # float64 [D, D]
    reference: np.ndarray  # float64 [S] leave-one-out distances of sampled index photos
    k: int
    candidates: int
    percentile: float

    @property
    def threshold(self) -> float:
        return float(np.percentile(self.reference, self.percentile))

    def info(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {
            "method": "whitened k-th neighbour distance vs the index's leave-one-out distances",
            "k": self.k,
            "candidates": self.candidates,
            "percentile": self.percentile,
            "threshold": round(self.threshold, 6),
            "reference_photos": int(len(self.reference)),
        }


def vectors_of(index: Any, ids: np.ndarray) -> np.ndarray | None:
    """``float32 [len(ids), D]`` vectors of FAISS ``index`` rows ``ids`` (decoded: approximate for PQ),
    or None when this kind of index cannot give them back."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except (RuntimeError, TypeError):
        ivf = None
    ids = np.asarray(ids, dtype=np.int64)
    if not len(ids):
        return np.zeros((0, index.d), np.float32)
    try:
        # DirectMap is a swig class missing from faiss's type information.
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:  # type: ignore[attr-defined]
            ivf.make_direct_map()  # lets reconstruct() find a row's list
        return np.asarray(index.reconstruct_batch(ids), dtype=np.float32).reshape(len(ids), index.d)
    except RuntimeError:
        return None


def _whitening(x: np.ndarray, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    cov = np.cov((x - mean).T) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))
    lam, vec = np.linalg.eigh(np.atleast_2d(cov))
    lam = np.clip(lam, 0.0, None)
    floor = shrink * max(float(lam.max()), 1e-12)
    return mean, (vec / np.sqrt(lam + floor)) @ vec.T


def kth_distances(fam: Familiarity, index: Any, queries: np.ndarray, cand_ids: np.ndarray) -> np.ndarray:
    """``float64 [Q]``: per query (``[Q, D]``), the whitened distance to its ``k``-th nearest among
    its candidate rows ``cand_ids`` (``int [Q, C]``, ``-1`` = none); inf when it has no candidate."""
    out = np.full(len(queries), np.inf)
    for qi, (q, ids) in enumerate(zip(queries, cand_ids)):
        ids = ids[ids >= 0]
        vecs = vectors_of(index, ids)
        if vecs is None or not len(ids):
            continue
        zq = (q.astype(np.float64) - fam.mean) @ fam.whiten
        zc = (vecs.astype(np.float64) - fam.mean) @ fam.whiten
        d = np.sort(np.linalg.norm(zc - zq, axis=1))
        out[qi] = d[min(fam.k, len(d)) - 1]
    return out


def fit(
    index: Any,
    *,
    k: int = K,
    candidates: int = CANDIDATES,
    percentile: float = PERCENTILE,
    sample: int = SAMPLE,
    fit_rows: int = FIT_ROWS,
    shrink: float = SHRINK,
    seed: int = 0,
) -> Familiarity | None:
    """Measure :class:`Familiarity` on a FAISS ``index`` (cosine / inner product over unit rows).

    None when the index has fewer than ``k + 2`` rows or cannot give its vectors back.
    """
    n = int(index.ntotal)
    if n < k + 2:
        return None
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, fit_rows), replace=False))
    x = vectors_of(index, rows)
    if x is None:
        return None
    mean, whiten = _whitening(x.astype(np.float64), shrink)
    probe = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    q = vectors_of(index, probe)
    if q is None:
        return None
    cand = min(candidates, n - 1)
    _, ids = index.search(np.ascontiguousarray(q, dtype=np.float32), cand + 1)
    # Leave one out: drop the photo itself from its own candidates (keep the first C others).
    ids = np.stack([np.concatenate([r[r != p], np.full(1, -1)])[:cand] for r, p in zip(ids, probe)])
    fam = Familiarity(mean, whiten, np.zeros(1), k, cand, float(percentile))
    ref = kth_distances(fam, index, q, ids)
    ref = np.sort(ref[np.isfinite(ref)])
    if not len(ref):
        return None
    return Familiarity(mean, whiten, ref, k, cand, float(percentile))


def judge(fam: Familiarity | None, distance: float) -> dict[str, Any]:
    """``{"known", "distance", "threshold", "rank"}`` for one query's distance; ``rank`` (0..100) is
    the share of the index's own photos that are closer to their neighbours.  Without a
    reference: ``known`` True and ``"reason"`` says that nothing was measured."""
    if fam is None:
        return {"known": True, "reason": "no reference: the index cannot give its vectors back"}
    rank = 100.0 * float(np.searchsorted(fam.reference, distance, side="left")) / len(fam.reference)
    return {
        "known": bool(distance <= fam.threshold),
        "distance": round(float(distance), 6),
        "threshold": round(fam.threshold, 6),
        "rank": round(rank, 2),
    }
