"""Mean shift over the rows of the 4-D consistency map, as in EXIF-SC (Huh et al. 2018): the densest mode.

What is implemented, exactly (``X`` = the original points ``[M, F]``, ``Y`` = the moving copy):

1. bandwidth ``h`` = the ``percentile``-th percentile (numpy's linear interpolation) of all
   ``M x M`` euclidean distances between original points, the zero diagonal included (as the
   authors' ``np.percentile(cdist(points, points), 10)``); floored at ``1e-6 * max(1, max
   row norm)``: with a zero bandwidth (more than ``percentile``% of the pairs identical, e.g. a
   constant map) rounding could leave a point without even itself as a neighbour;
2. ``iterations`` times, synchronously for every point ``i``: its neighbours are the indices
   ``j`` of the ORIGINAL points with ``||X_j - Y_i|| <= h`` (the authors query a KD-tree built
   on the original points), and ``Y_i`` moves to the mean of those neighbours' CURRENT positions
   ``Y_j`` (the authors' ``points[nearest_inds]`` reads the moving array). A point with no
   neighbour stays where it is (the authors' code would produce NaN);
3. each moved point's count = how many original points lie within ``h`` of it; the mode is the
   mean of the moved points with the highest count (ties averaged).

The authors updated ``Y`` in place, point after point (later points in a sweep see earlier
points' new positions); here every point of a sweep reads the previous sweep's positions, which
is what a matrix product computes.  The tests' oracle, ``mean_shift_map_reference`` in
``tests/eval/reference_forensics.py``, implements the same synchronous rule with plain loops and
a KD-tree.  With the cell map as points, the mode is a row of distances from the dominant (most
self-consistent) region: high = inconsistent.
"""

from __future__ import annotations

import numpy as np
import torch

_FLOOR = 1e-6


def _check_points(points: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(points).detach().to(torch.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"mean shift needs a non-empty [M, F] point matrix, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("mean shift points contain NaN or infinite values")
    return x


def bandwidth(distances: np.ndarray, points_norm_max: float, percentile: float) -> float:
    """``percentile`` of an ``[M,M]`` distance matrix, floored at ``1e-6 * max(1, max row norm)``."""
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile {percentile}: must be within 0..100")
    h = float(np.percentile(distances, percentile))
    return max(h, _FLOOR * max(1.0, points_norm_max))


def _sq_distances(y: torch.Tensor, x: torch.Tensor, x_sq: torch.Tensor) -> torch.Tensor:
    """``[M,F]`` x ``[M',F]`` -> squared euclidean ``[M,M']`` via one product (float64: exact enough)."""
    d2 = (y * y).sum(1, keepdim=True) + x_sq[None, :] - 2.0 * (y @ x.T)
    return d2.clamp_(min=0.0)


def mean_shift_mode(
    points: torch.Tensor | np.ndarray, iterations: int = 5, percentile: float = 10.0
) -> tuple[torch.Tensor, float]:
    """Vectorised mean shift (see the module docstring) -> (mode ``float32 [F]``, bandwidth ``h``).

    ``points``: ``[M, F]`` finite values.  Costs ``2 * iterations + 2`` ``[M,F]x[F,M]`` products.
    """
    x = _check_points(points)
    norm_max = float(x.norm(dim=1).max())
    # Distances and means are translation-equivariant; centring shrinks the norms that cancel in
    # |y|² + |x|² - 2 y·x, so the product-based distances stay accurate.
    centre = x.mean(0)
    x = x - centre
    x_sq = (x * x).sum(1)
    d2 = _sq_distances(x, x, x_sq)
    d2.fill_diagonal_(0.0)  # rounding in the product leaves ~1e-13 where it must be exactly 0
    h = bandwidth(d2.sqrt().numpy(), norm_max, percentile)
    h2 = h * h
    y = x.clone()
    for _ in range(int(iterations)):
        near = (_sq_distances(y, x, x_sq) <= h2).to(torch.float64)  # [M, M]: moving i, original j
        counts = near.sum(1, keepdim=True)
        moved = (near @ y) / counts.clamp(min=1.0)
        y = torch.where(counts > 0, moved, y)
    counts = (_sq_distances(y, x, x_sq) <= h2).sum(1)
    tied = counts == counts.max()
    return (y[tied].mean(0) + centre).to(torch.float32), h


def mean_shift_map(points: torch.Tensor | np.ndarray, iterations: int = 5, percentile: float = 10.0) -> torch.Tensor:
    """``[M,F]`` points (rows of the cell map) -> ``float32 [F]``: the densest mode, vectorised."""
    return mean_shift_mode(points, iterations, percentile)[0]
