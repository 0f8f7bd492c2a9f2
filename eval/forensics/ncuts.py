"""Two-way normalized cuts (Shi & Malik 2000) on a dense similarity matrix: the smaller segment and the soft split.

Method: ``D = diag(W 1)``; the second-smallest generalized eigenvector of ``(D - W) y = λ D y``
is ``y = D^-1/2 z`` with ``z`` the eigenvector of the second-largest eigenvalue of ``D^-1/2 W
D^-1/2`` (ARPACK ``eigsh`` for the two largest; dense ``eigh`` when small or unconverged).
``y`` is split at the threshold that minimises ``Ncut(A,B) = cut(A,B)/assoc(A,V) +
cut(A,B)/assoc(B,V)``, trying every gap between consecutive distinct values of ``y`` (all
``M - 1`` splits evaluated at once from 2-D cumulative sums of the reordered ``W``).

Guards: a graph in several connected components (positive off-diagonal entries as edges) is
split at zero cost into its largest component and the rest; a graph without edges, a single
node, or an eigenvector with a single value gives no split (all False).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.csgraph
import scipy.sparse.linalg
import torch

_SYM_TOL = 1e-5
_DENSE_UP_TO = 64  # below this many nodes a dense eigendecomposition is cheaper than Lanczos


def _check_similarity(similarity: torch.Tensor | np.ndarray) -> np.ndarray:
    w = similarity.detach().cpu().numpy() if isinstance(similarity, torch.Tensor) else np.asarray(similarity)
    w = w.astype(np.float64, copy=True)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"similarity must be a square [M, M] matrix, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("similarity contains NaN or infinite values")
    scale = max(1.0, float(np.abs(w).max(initial=0.0)))
    if (w < -_SYM_TOL * scale).any():
        raise ValueError("similarity has negative entries; normalized cuts needs weights >= 0")
    if np.abs(w - w.T).max(initial=0.0) > _SYM_TOL * scale:
        raise ValueError("similarity is not symmetric")
    # Round-off asymmetry and tiny negatives are cleaned, not refused.
    return np.clip((w + w.T) / 2.0, 0.0, None)


def _smaller(side: np.ndarray) -> np.ndarray:
    """Flip a two-way labelling so that True marks the side with fewer nodes (ties: as given)."""
    return ~side if side.sum() * 2 > side.size else side


def _components_split(w: np.ndarray) -> np.ndarray | None:
    """Largest connected component vs the rest when the graph is disconnected, else None."""
    if (w > 0).all():
        return None  # a dense similarity such as exp(-d/σ): connected, skip the graph search
    edges = w > 0
    np.fill_diagonal(edges, False)
    n_comp, labels = scipy.sparse.csgraph.connected_components(edges, directed=False)
    if n_comp == 1:
        return None
    largest = np.bincount(labels).argmax()
    return _smaller(labels != largest)


def _top_two(normalised: np.ndarray) -> np.ndarray:
    """Eigenvectors of the two largest eigenvalues of a symmetric ``[M,M]``, ascending -> ``[M, 2]``."""
    m = len(normalised)
    if m > _DENSE_UP_TO:
        try:
            # Lanczos (ARPACK) needs a few dozen products with the matrix, far cheaper than a full
            # decomposition at M ~ 1000; a fixed start vector keeps the result deterministic.
            _, vecs = scipy.sparse.linalg.eigsh(normalised, k=2, which="LA", v0=np.ones(m), tol=1e-10)
            return vecs
        except scipy.sparse.linalg.ArpackNoConvergence:
            pass
    _, vecs = np.linalg.eigh(normalised)
    return vecs[:, -2:]


def fiedler_vector(w: np.ndarray) -> np.ndarray:
    """``[M,M]`` connected, non-negative symmetric ``W`` -> the generalized eigenvector ``y`` ``[M]``."""
    degree = w.sum(1)
    inv_sqrt = 1.0 / np.sqrt(degree)
    normalised = w * inv_sqrt[:, None] * inv_sqrt[None, :]
    # The largest eigenvalue of D^-1/2 W D^-1/2 is 1 (eigenvector D^1/2 1); the one below it is
    # 1 - λ2 of the normalized Laplacian, whose eigenvector z gives y = D^-1/2 z.
    return _top_two(normalised)[:, 0] * inv_sqrt


def best_ncut_split(w: np.ndarray, y: np.ndarray) -> tuple[np.ndarray | None, float]:
    """Threshold ``y`` where the Ncut value is smallest -> (bool ``[M]`` side ``y <= t``, its Ncut).

    Returns ``(None, inf)`` when ``y`` has a single distinct value (no threshold separates it).
    """
    order = np.argsort(y, kind="stable")
    ys = y[order]
    ws = w[np.ix_(order, order)]
    degree = ws.sum(1)
    total = degree.sum()
    assoc_a = np.cumsum(degree)[:-1]  # split after position k: A = order[:k+1]
    within_a = np.diagonal(ws.cumsum(0).cumsum(1))[:-1]  # sum of W over A x A
    cut = assoc_a - within_a
    assoc_b = total - assoc_a
    with np.errstate(divide="ignore", invalid="ignore"):
        ncut = cut / assoc_a + cut / assoc_b
    valid = (ys[1:] > ys[:-1]) & (assoc_a > 0) & (assoc_b > 0)
    if not valid.any():
        return None, float("inf")
    ncut = np.where(valid, ncut, np.inf)
    k = int(np.argmin(ncut))
    side = np.zeros(len(y), dtype=bool)
    side[order[: k + 1]] = True
    return side, float(ncut[k])


def ncuts_partition(
    similarity: torch.Tensor | np.ndarray, max_ncut: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``[M,M]`` non-negative symmetric similarity -> (bool ``[M]`` side, float64 ``[M]`` soft split).

    ``side``: True = the smaller of 2 segments; all False when there is nothing to split (see the
    module docstring's guards), or when ``max_ncut`` is given and the best cut's Ncut value
    (0..2) exceeds it: Shi & Malik's stopping rule (a graph without structure has Ncut near 1
    for every split; a uniform one exactly 1).  ``soft``: the generalized eigenvector ``y`` the
    side was cut from, signed so that the side's mean is the higher — the continuous relaxation
    of the cut, a ranking of how far each node is on the smaller side (for a disconnected graph
    the side as 0/1; all 0 without a split).
    """
    w = _check_similarity(similarity)
    m = len(w)
    nothing = np.zeros(m, dtype=bool), np.zeros(m, dtype=np.float64)
    if m < 2 or w.sum() - np.trace(w) <= 0:
        return nothing
    split = _components_split(w)
    if split is not None:
        return split, split.astype(np.float64)
    y = fiedler_vector(w)
    side, value = best_ncut_split(w, y)
    if side is None or (max_ncut is not None and value > max_ncut):
        return nothing
    side = _smaller(side)
    # An eigenvector's sign is arbitrary: orient it by the cut it produced.
    return side, (y if y[side].mean() >= y[~side].mean() else -y)


def ncuts_split(similarity: torch.Tensor | np.ndarray, max_ncut: float | None = None) -> np.ndarray:
    """``[M,M]`` non-negative symmetric similarity -> bool ``[M]``, True = the smaller of 2 segments
    (the side of :func:`ncuts_partition`)."""
    return ncuts_partition(similarity, max_ncut)[0]
