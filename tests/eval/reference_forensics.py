"""Test oracles for the forensics maths: plain-loop references of the vectorised product code.

Each function computes what its product counterpart computes, the slow and obvious way (the
authors' loops and tools), so that tests and ``benchmarks/detect_latency.py`` can check the
fast versions against them.  Nothing in the product imports this module.
"""

from __future__ import annotations

import numpy as np
import scipy.spatial
import torch

from exiflang.eval.embed.patches import Grid
from exiflang.eval.forensics.affinity import _COUNT_EPS, DEFAULT_MAX_CELLS, _cells_along, _check_affinity, cell_size
from exiflang.eval.forensics.meanshift import _check_points, bandwidth
from exiflang.eval.forensics.noi import MAD_TO_SIGMA


def cell_consistency_loop(
    affinity: torch.Tensor, grid: Grid, cell: int | None = None, max_cells: int = DEFAULT_MAX_CELLS
) -> torch.Tensor:
    """Reference for :func:`exiflang.eval.forensics.affinity.cell_consistency`: the authors'
    Python loop over every patch pair.

    Each ordered pair adds its distance to the block of cell pairs the two patches cover, and 1
    to the matching vote counts (which start at 1e-4).  Slow (``N²`` Python steps).  Same cell
    rule and output layout (``float32 [cells, cells]``) as ``coverage`` / ``cell_consistency``,
    but computed from the corners directly, not from the coverage matrix.
    """
    a = _check_affinity(affinity, grid.count)
    side = cell_size(grid, max_cells) if cell is None else int(cell)
    oy, ox = grid.ys[0], grid.xs[0]
    rows = _cells_along(grid.ys, grid.patch, side)
    cols = _cells_along(grid.xs, grid.patch, side)

    def span(start: int, origin: int) -> slice:
        # First cell whose block ends after `start`, last cell whose block starts before start+P.
        return slice((start - origin) // side, -(-(start + grid.patch - origin) // side))

    spans = [(span(y, oy), span(x, ox)) for y, x in grid.corners().tolist()]
    votes = torch.zeros(rows, cols, rows, cols, dtype=torch.float64)
    counts = torch.full((rows, cols, rows, cols), _COUNT_EPS, dtype=torch.float64)
    dist = (1.0 - a.to(torch.float64)).tolist()
    for i, (ya, xa) in enumerate(spans):
        for j, (yb, xb) in enumerate(spans):
            votes[ya, xa, yb, xb] += dist[i][j]
            counts[ya, xa, yb, xb] += 1.0
    return (votes / counts).reshape(rows * cols, rows * cols).to(torch.float32)


def mean_shift_map_reference(
    points: torch.Tensor | np.ndarray, iterations: int = 5, percentile: float = 10.0
) -> torch.Tensor:
    """Reference for :func:`exiflang.eval.forensics.meanshift.mean_shift_map`: the same
    synchronous rule with plain loops over points and a KD-tree (the authors' tools).

    ``[M, F]`` points -> ``float32 [F]``, the densest mode, like ``mean_shift_map``.
    """
    x = _check_points(points).numpy()
    tree = scipy.spatial.cKDTree(x)
    h = bandwidth(scipy.spatial.distance.cdist(x, x), float(np.linalg.norm(x, axis=1).max()), percentile)
    y = x.copy()
    for _ in range(int(iterations)):
        previous = y.copy()
        for i in range(len(y)):
            neighbours = tree.query_ball_point(previous[i], r=h)
            if neighbours:
                y[i] = previous[neighbours].mean(axis=0)
    counts = np.array([len(tree.query_ball_point(y[i], r=h)) for i in range(len(y))])
    tied = np.flatnonzero(counts == counts.max())
    return torch.from_numpy(y[tied].mean(axis=0)).to(torch.float32)


def block_sigma_reference(hh: np.ndarray, block: int) -> np.ndarray:
    """Reference for :func:`exiflang.eval.forensics.noi.block_sigma`: plain loops over tiles.

    ``[H', W']`` subband -> ``[rows, cols]`` noise sigma per ``block x block`` tile (>= 0).
    """
    rows, cols = hh.shape[0] // block, hh.shape[1] // block
    out = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            tile = hh[r * block : (r + 1) * block, c * block : (c + 1) * block]
            out[r, c] = np.median(np.abs(tile)) / MAD_TO_SIGMA
    return out
