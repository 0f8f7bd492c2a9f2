"""Mean shift: vectorised equals the plain loop reference, finds the densest mode, guards zero bandwidth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exiflang.eval.embed.patches import splice_grid
from exiflang.eval.forensics.affinity import cell_consistency, coverage, patch_affinity
from exiflang.eval.forensics.meanshift import mean_shift_map, mean_shift_mode
from tests.eval.reference_forensics import mean_shift_map_reference


def _clusters(sizes: list[int], dim: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * 3.0
    return np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])


@pytest.mark.parametrize(
    "sizes, dim, spread, iterations, percentile, seed",
    [
        ([40, 15], 8, 0.5, 5, 10.0, 0),
        ([25, 25, 10], 30, 1.0, 5, 10.0, 1),
        ([60], 5, 1.0, 3, 25.0, 2),
        ([30, 30], 12, 2.0, 8, 5.0, 3),
    ],
)
def test_vectorised_equals_reference(sizes, dim, spread, iterations, percentile, seed):
    points = _clusters(sizes, dim, spread, seed)
    fast = mean_shift_map(torch.from_numpy(points), iterations, percentile)
    slow = mean_shift_map_reference(points, iterations, percentile)
    assert fast.shape == (dim,) and fast.dtype == torch.float32
    assert torch.allclose(fast, slow, atol=1e-5)


def test_equals_reference_on_a_cell_map():
    """The real input: rows of the 4-D map of a two-source synthetic image."""
    grid = splice_grid(200, 260, patch=40, per_side=8)
    corners = grid.corners()
    inside = torch.from_numpy((corners[:, 0] < 80) & (corners[:, 1] < 100))
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    emb = torch.where(inside[:, None], a, b) + 0.6 * torch.randn(grid.count, 16, generator=g)
    cells = cell_consistency(patch_affinity(torch.nn.functional.normalize(emb, dim=1)), coverage(grid))
    assert torch.allclose(mean_shift_map(cells), mean_shift_map_reference(cells), atol=1e-5)


def test_mode_is_the_densest_cluster():
    points = _clusters([45, 15], 6, 0.3, seed=5)
    centre_big = points[:45].mean(0)
    mode = mean_shift_map(points).numpy()
    assert np.linalg.norm(mode - centre_big) < 0.3
    assert np.linalg.norm(mode - points[45:].mean(0)) > 2.0


def test_zero_bandwidth_guard():
    constant = np.full((30, 7), 0.25)
    mode, h = mean_shift_mode(constant)
    assert h > 0 and torch.isfinite(mode).all()
    assert torch.allclose(mode, torch.full((7,), 0.25))
    assert torch.allclose(mean_shift_map_reference(constant), mode)
    # More than 10% of pairs identical: the percentile is 0; the duplicated point is the mode.
    rng = np.random.default_rng(6)
    points = np.concatenate([np.ones((20, 4)), rng.normal(size=(6, 4)) * 5])
    mode, h = mean_shift_mode(points)
    assert h < 1e-4
    assert torch.allclose(mode, torch.ones(4))
    assert torch.allclose(mean_shift_map_reference(points), mode)


def test_single_point_and_bad_input():
    assert torch.allclose(mean_shift_map(np.array([[1.0, 2.0]])), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        mean_shift_map(np.array([[np.nan, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\[M, F\]"):
        mean_shift_map(np.zeros(4))
    with pytest.raises(ValueError, match="percentile"):
        mean_shift_map(np.zeros((3, 2)), percentile=150.0)
