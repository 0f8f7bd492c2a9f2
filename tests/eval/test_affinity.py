"""Patch affinity, patch-to-cell coverage, and the vectorised vote averaging against the authors' loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exiflang.eval.embed.patches import Grid, splice_grid
from exiflang.eval.forensics.affinity import cell_consistency, cell_size, coverage, grid_stride, patch_affinity
from tests.eval.reference_forensics import cell_consistency_loop


def _unit(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def test_patch_affinity_is_cosine():
    emb = _unit(12)
    a = patch_affinity(emb)
    assert a.shape == (12, 12) and a.dtype == torch.float32
    assert torch.allclose(a, a.T)
    assert torch.allclose(torch.diagonal(a), torch.ones(12), atol=1e-6)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        patch_affinity(torch.ones(5))


@pytest.mark.parametrize(
    "ys, patch, expected",
    [
        ((0, 2, 4), 4, [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]),  # stride divides P
        ((0, 3, 6), 4, [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]),  # 4 px patch over 3 px cells
        ((0, 5), 4, [[1, 0], [0, 1]]),  # stride > P: one cell each
    ],
)
def test_axis_coverage_known_answers(ys, patch, expected):
    size = ys[-1] + patch
    grid = Grid(size, patch, patch, ys, (0,))
    cov = coverage(grid)
    assert cov.cell == ys[1] - ys[0]
    rows, cols = cov.cells
    assert rows == len(expected[0]) and cols == -(-patch // cov.cell)  # one patch column: ceil(P/cell)
    per_row = cov.matrix.reshape(len(ys), rows, cols).amax(2)  # coverage along y only
    assert per_row.numpy().astype(int).tolist() == expected


def test_coverage_equals_pixel_overlap():
    """Every matrix entry is 1 exactly when the patch's pixels and the cell's block overlap."""
    grid = splice_grid(61, 83, patch=20, per_side=7)  # stride 9, 20 px patches: partial cells
    cov = coverage(grid)
    rows, cols = cov.cells
    height, width = rows * cov.cell, cols * cov.cell
    for p, (y, x) in enumerate(grid.corners().tolist()):
        patch_px = np.zeros((height, width), bool)
        patch_px[y : y + grid.patch, x : x + grid.patch] = True
        for k in range(rows * cols):
            r, c = divmod(k, cols)
            block = patch_px[r * cov.cell : (r + 1) * cov.cell, c * cov.cell : (c + 1) * cov.cell]
            assert bool(cov.matrix[p, k]) == bool(block.any()), (p, k)


def test_splice_grid_cell_counts():
    big = coverage(splice_grid(3000, 4000))  # stride 129 > P = 124: one cell per patch
    assert splice_grid(3000, 4000).count == 713
    assert big.cells == (23, 31) and big.cell == 129
    assert torch.equal(big.matrix, torch.eye(713))
    mid = coverage(splice_grid(768, 1024))  # stride 30: ceil(124/30) = 5 cells per axis
    assert mid.cells == (26, 35) and mid.cell == 30
    assert set(mid.matrix.sum(1).tolist()) == {25.0}


def test_mask_share_is_each_patchs_fraction_inside_the_mask():
    grid = splice_grid(40, 52, patch=12, per_side=5)
    mask = np.zeros((40, 52), bool)
    mask[5:30, 20:45] = True
    want = [mask[y : y + 12, x : x + 12].sum() / 144 for y in grid.ys for x in grid.xs]  # raster order
    np.testing.assert_allclose(grid.mask_share(mask), want)
    assert grid.mask_share(np.ones((40, 52), bool)).tolist() == [1.0] * grid.count


def test_tiny_image_merges_cells():
    grid = splice_grid(130, 140)  # stride 1: 129 x 140 cells without merging
    assert grid_stride(grid) == 1
    cov = coverage(grid, max_cells=400)
    assert cov.count <= 400 and cov.cell == cell_size(grid, 400) and cov.cell > 1
    assert float(cov.matrix.sum(0).min()) > 0  # every cell has votes


@pytest.mark.parametrize(
    "height, width, patch, per_side, cell",
    [
        (40, 52, 12, 5, None),  # stride 8, 12 px patches: 2 cells per patch, partial
        (36, 36, 12, 4, None),  # stride 6 divides P
        (30, 44, 8, 2, None),  # stride 18 > P
        (40, 52, 12, 5, 16),  # merged cells (twice the stride)
    ],
)
def test_vectorised_votes_equal_loop(height, width, patch, per_side, cell):
    grid = splice_grid(height, width, patch=patch, per_side=per_side)
    a = patch_affinity(_unit(grid.count, seed=grid.count))
    fast = cell_consistency(a, coverage(grid, cell=cell))
    slow = cell_consistency_loop(a, grid, cell=cell)
    assert fast.shape == slow.shape
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(fast, fast.T, atol=1e-6)
    assert float(fast.min()) >= 0.0 and float(fast.max()) <= 2.0


def test_identical_patches_give_zero_distance_and_size_checks():
    grid = splice_grid(40, 52, patch=12, per_side=5)
    emb = torch.nn.functional.normalize(torch.ones(grid.count, 4), dim=1)
    v = cell_consistency(patch_affinity(emb), coverage(grid))
    assert float(v.abs().max()) < 1e-6
    with pytest.raises(ValueError, match="grid has"):
        cell_consistency(torch.zeros(3, 3), coverage(grid))
