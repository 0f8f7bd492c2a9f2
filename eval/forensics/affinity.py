"""Patch affinity and its vote averaging onto grid cells: the 4-D consistency map of docs/design.md §6.

Cells
-----
A cell is a ``cell x cell`` pixel block; cell ``(r, c)`` spans rows ``[oy + r*cell, oy +
(r+1)*cell)`` and columns ``[ox + c*cell, ox + (c+1)*cell)`` where ``(oy, ox)`` is the first
patch corner (``(0, 0)`` for :func:`exiflang.eval.embed.patches.splice_grid`).  The cell side defaults to the
grid stride.  A patch at ``(y, x)`` covers every cell whose block *overlaps* ``[y, y+P) x [x,
x+P)``, i.e. along one axis the cells ``(y-oy)//cell .. ceil((y+P-oy)/cell) - 1``.  With the
stride as the cell this is ``ceil(P/stride)`` cells per axis; the authors' code used
``P // stride`` (identical whenever the stride divides ``P`` or exceeds it, as on every photo
larger than about 3900 px).  The cell grid is ``(rows, cols)`` with ``rows = ceil((last_y + P -
oy) / cell)``, so its last cells may reach up to ``cell - 1`` pixels past the image edge.

When the grid would give more than ``max_cells`` cells (tiny images, where the stride is a few
pixels), the cell side is the smallest multiple of the stride that keeps the count under
``max_cells``: the 4-D map has ``cells²`` entries and mean shift costs ``cells³``.

The 4-D map ``V[a, b]`` is the mean patch-pair distance ``1 - A[i, j]`` over the ordered pairs
``(i, j)`` of patches with ``i`` covering cell ``a`` and ``j`` covering cell ``b`` (self-pairs
included, as in the authors' code), computed as one product ``Cᵀ (1 - A) C / (c cᵀ + 1e-4)``.
Every cell of a :func:`exiflang.eval.embed.patches.splice_grid` is covered; a grid with gaps wider than a
cell (not one this project builds) would leave cells with no votes, which read as 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from exiflang.eval.embed.patches import Grid

DEFAULT_MAX_CELLS = 1024
# The authors' vote counts start at 1e-4 so that an uncovered cell divides by a non-zero number.
_COUNT_EPS = 1e-4


def patch_affinity(emb: torch.Tensor) -> torch.Tensor:
    """``[N,D]`` L2-normalised patch embeddings (raster order) -> ``float32 [N,N]`` cosine, -1..1."""
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"patch embeddings must be a non-empty [N, D] matrix, got shape {tuple(emb.shape)}")
    x = emb.detach().to(torch.float32)
    return (x @ x.T).clamp_(-1.0, 1.0)


@dataclass(frozen=True)
class Coverage:
    """Which patches cover which cells; cells in raster order (row-major over ``cells``)."""

    matrix: torch.Tensor  # float32 [N_patches, N_cells], 1 where a patch covers a cell
    cells: tuple[int, int]  # (rows, cols) of cells
    cell: int  # cell side in pixels (the grid stride unless merged)
    origin: tuple[int, int] = (0, 0)  # (y, x) pixel of cell (0, 0)'s top-left corner

    @property
    def count(self) -> int:
        return self.cells[0] * self.cells[1]


def grid_stride(grid: Grid) -> int:
    """The grid's step between neighbouring corners (the smaller axis step; ``P`` for one patch)."""
    steps = [axis[1] - axis[0] for axis in (grid.ys, grid.xs) if len(axis) > 1]
    return max(1, min(steps)) if steps else grid.patch


def _cells_along(corners: tuple[int, ...], patch: int, cell: int) -> int:
    """How many cells one axis needs so that the last patch's far edge is inside the last cell."""
    return math.ceil((corners[-1] + patch - corners[0]) / cell)


def cell_size(grid: Grid, max_cells: int = DEFAULT_MAX_CELLS) -> int:
    """The cell side: the grid stride, times the smallest integer keeping ``rows*cols <= max_cells``."""
    stride = grid_stride(grid)
    factor = 1
    while True:
        cell = stride * factor
        rows = _cells_along(grid.ys, grid.patch, cell)
        cols = _cells_along(grid.xs, grid.patch, cell)
        if rows * cols <= max_cells or (rows == 1 and cols == 1):
            return cell
        factor += 1


def _axis_coverage(corners: tuple[int, ...], patch: int, cell: int) -> np.ndarray:
    """``bool [n_corners, n_cells]``: cell block ``[o + r*cell, o + (r+1)*cell)`` overlaps ``[y, y+P)``."""
    origin = corners[0]
    n_cells = _cells_along(corners, patch, cell)
    starts = origin + cell * np.arange(n_cells)
    y = np.asarray(corners)[:, None]
    return (starts[None, :] < y + patch) & (starts[None, :] + cell > y)


def coverage(grid: Grid, cell: int | None = None, max_cells: int = DEFAULT_MAX_CELLS) -> Coverage:
    """The patch-to-cell coverage matrix of ``grid`` (see the module docstring for the cell rule).

    ``cell``: the cell side in pixels; ``None`` picks :func:`cell_size` (the stride, merged when
    there would be more than ``max_cells`` cells).  Returns ``matrix`` ``float32 [N, rows*cols]``
    of 0/1 with the patch index in the grid's raster order.
    """
    if grid.count == 0:
        raise ValueError("the grid has no patches")
    side = cell_size(grid, max_cells) if cell is None else int(cell)
    if side <= 0:
        raise ValueError(f"cell size {side}: must be positive")
    cy = _axis_coverage(grid.ys, grid.patch, side)
    cx = _axis_coverage(grid.xs, grid.patch, side)
    # Raster order on both sides: patch (i, j) -> i*cols_p + j, cell (r, c) -> r*cols_c + c,
    # so C[(i,j), (r,c)] = cy[i,r] * cx[j,c] is exactly the Kronecker product.
    matrix = torch.from_numpy(np.kron(cy.astype(np.float32), cx.astype(np.float32)))
    return Coverage(matrix, (cy.shape[1], cx.shape[1]), side, (grid.ys[0], grid.xs[0]))


def _check_affinity(affinity: torch.Tensor, n_patches: int) -> torch.Tensor:
    if affinity.ndim != 2 or affinity.shape[0] != affinity.shape[1]:
        raise ValueError(f"affinity must be a square [N, N] matrix, got shape {tuple(affinity.shape)}")
    if affinity.shape[0] != n_patches:
        raise ValueError(f"affinity is for {affinity.shape[0]} patches, the grid has {n_patches}")
    return affinity.detach().to(torch.float32)


def cell_consistency(affinity: torch.Tensor, cov: Coverage) -> torch.Tensor:
    """The 4-D map flattened: ``[N,N]`` cosine affinity -> ``float32 [K,K]`` mean distance, 0..2.

    ``K = rows*cols`` cells in raster order; entry ``[a, b]`` is the mean of ``1 - A[i, j]`` over
    the patches ``i`` covering cell ``a`` and ``j`` covering cell ``b``.  One matrix product:
    ``Cᵀ (1 - A) C / (c cᵀ + 1e-4)`` with ``c = C.sum(0)``.  Symmetric when ``A`` is.
    """
    a = _check_affinity(affinity, cov.matrix.shape[0])
    c_mat = cov.matrix
    votes = c_mat.T @ (1.0 - a) @ c_mat
    counts = c_mat.sum(0)
    return votes / (counts[:, None] * counts[None, :] + _COUNT_EPS)
