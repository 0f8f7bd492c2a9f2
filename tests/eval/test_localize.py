"""Localization on synthetic two-source embeddings, map resizing, normalized cuts and the detection scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from exiflang.eval.benchmark.metrics import pixel_ap
from exiflang.eval.embed.patches import splice_grid
from exiflang.eval.forensics.affinity import Coverage, cell_consistency, coverage, patch_affinity
from exiflang.eval.forensics.localize import (
    cells_to_image,
    localize,
    ncuts_cells,
    ncuts_similarity,
    normalise_map,
    oriented_heatmap,
)
from exiflang.eval.forensics.ncuts import best_ncut_split, ncuts_partition, ncuts_split
from exiflang.eval.forensics.scores import detection_scores


def _two_source(
    height: int,
    width: int,
    box: tuple[int, int, int, int],
    noise: float = 0.5,
    seed: int = 0,
    dim: int = 64,
    patch: int = 124,
):
    """Patches whose centre lies in ``box`` (y0, y1, x0, x1) get one direction, the rest another."""
    grid = splice_grid(height, width, patch=patch)
    g = torch.Generator().manual_seed(seed)
    centres = grid.corners() + grid.patch // 2
    y0, y1, x0, x1 = box
    inside = torch.from_numpy(
        (centres[:, 0] >= y0) & (centres[:, 0] < y1) & (centres[:, 1] >= x0) & (centres[:, 1] < x1)
    )
    a, b = torch.randn(dim, generator=g), torch.randn(dim, generator=g)
    emb = torch.where(inside[:, None], a, b) + noise * torch.randn(grid.count, dim, generator=g)
    truth = np.zeros((height, width), bool)
    truth[y0:y1, x0:x1] = True
    return torch.nn.functional.normalize(emb, dim=1), grid, truth


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / (pred | truth).sum())


def test_localize_recovers_a_rectangle():
    emb, grid, truth = _two_source(768, 1024, (200, 500, 300, 700))
    loc = localize(emb, grid)
    assert loc.heatmap.shape == (768, 1024) and loc.heatmap.dtype == np.float32
    assert loc.mask.dtype == bool and loc.ncuts_mask.shape == (768, 1024)
    assert float(loc.heatmap.min()) >= 0.0 and float(loc.heatmap.max()) <= 1.0
    assert loc.cell_map.shape == (26, 35) and loc.ncuts_cells.shape == (26, 35)
    assert set(loc.timings) == {"votes", "meanshift", "resize", "ncuts"}
    assert _iou(loc.mask, truth) > 0.8
    assert _iou(loc.ncuts_mask, truth) > 0.8
    assert loc.heatmap[truth].mean() > loc.heatmap[~truth].mean() + 0.5
    soft = loc.ncuts_heatmap
    assert soft.shape == (768, 1024) and soft.dtype == np.float32 and loc.ncuts_cell_map.shape == (26, 35)
    assert float(soft.min()) >= 0.0 and float(soft.max()) <= 1.0
    assert soft[truth].mean() > soft[~truth].mean() + 0.5  # oriented: the splice is high
    assert pixel_ap(soft, truth) > 0.9


def test_soft_ncuts_map_ranks_a_weak_splice_better_than_the_cut():
    """With noisy embeddings the soft map orders pixels; the binary cut can only split them."""
    emb, grid, truth = _two_source(768, 1024, (200, 500, 300, 700), noise=1.2, seed=4)
    loc = localize(emb, grid)
    assert pixel_ap(loc.ncuts_heatmap, truth) >= pixel_ap(loc.ncuts_mask.astype(np.float32), truth)
    assert loc.ncuts_heatmap[loc.ncuts_mask].mean() > loc.ncuts_heatmap[~loc.ncuts_mask].mean()


def test_large_splice_is_inverted_to_the_smaller_side():
    """The pasted region covers most of the photo: the smaller (original) part is marked."""
    emb, grid, truth = _two_source(480, 640, (0, 480, 0, 440), seed=1)
    loc = localize(emb, grid)
    assert _iou(loc.mask, ~truth) > 0.8
    assert _iou(loc.ncuts_mask, ~truth) > 0.8
    assert loc.mask.mean() < 0.5


def test_cell_level_ncuts_when_cells_are_patches():
    """With the stride above the patch size each cell is one patch: both ncuts graphs agree."""
    emb, grid, truth = _two_source(768, 1024, (200, 500, 250, 625), seed=2, patch=32)  # stride 33
    by_cells = localize(emb, grid, ncuts_level="cells")
    assert _iou(by_cells.ncuts_mask, truth) > 0.8
    affinity = patch_affinity(emb)
    cov = coverage(grid)
    by_patches, soft = ncuts_cells(affinity, cell_consistency(affinity, cov), cov, "patches")
    assert np.array_equal(by_cells.ncuts_cells, by_patches)
    assert soft[by_patches].min() > soft[~by_patches].max()  # the cut is a threshold of it
    assert by_cells.ncuts_cell_map[by_patches].min() > by_cells.ncuts_cell_map[~by_patches].max()
    with pytest.raises(ValueError, match="ncuts level"):
        ncuts_cells(affinity, cell_consistency(affinity, cov), cov, "pixels")


def test_orientation_marks_the_smaller_side():
    grid = splice_grid(300, 400)
    cov = coverage(grid)
    _, cols = cov.cells
    high = np.zeros(cov.cells, np.float32)
    high[:, : int(cols * 0.7)] = 2.0  # 70% of the cells far from the mode
    cell_map, heatmap, inverted = oriented_heatmap(torch.from_numpy(high.ravel()), grid, cov)
    assert inverted and heatmap.shape == (300, 400)
    assert np.array_equal(cell_map > 0.5, high == 0)
    assert 0.2 < (heatmap > 0.5).mean() < 0.4
    _, _, kept = oriented_heatmap(torch.from_numpy(2.0 - high.ravel()), grid, cov)
    assert not kept


def test_uniform_embeddings_give_an_empty_mask():
    grid = splice_grid(300, 400)
    emb = torch.nn.functional.normalize(torch.ones(grid.count, 8), dim=1)
    loc = localize(emb, grid, ncuts=False)
    assert loc.ncuts_mask is None and loc.timings["ncuts"] == 0.0
    assert not loc.mask.any() and float(loc.heatmap.max()) == 0.0
    with pytest.raises(ValueError, match="do not match"):
        localize(emb[:-1], grid)


def test_cells_to_image_places_cell_centres():
    cov = Coverage(torch.zeros(1, 20), (4, 5), 11, (0, 0))
    cells = np.random.default_rng(0).random((4, 5)).astype(np.float32)
    img = cells_to_image(cells, cov, 49, 61)  # 5 px margin below, 6 px right
    assert img.shape == (49, 61)
    centres = img[5::11, 5::11][:4, :5]  # odd cell side: block centre = a pixel centre
    assert np.allclose(centres, cells, atol=1e-6)
    assert img[0, 0] == pytest.approx(cells[0, 0])  # edges replicated
    assert np.allclose(img[44:, 0], cells[3, 0]) and np.allclose(img[0, 55:], cells[0, 4])  # margins
    shifted = cells_to_image(cells, Coverage(torch.zeros(1, 20), (4, 5), 11, (3, 4)), 49, 61)
    assert np.allclose(shifted[:3, :4], cells[0, 0])
    assert np.allclose(shifted[3:47, 4:59], img[:44, :55])  # same map, moved by the origin
    with pytest.raises(ValueError, match="does not match"):
        cells_to_image(cells.T, cov, 49, 61)
    assert np.array_equal(normalise_map(np.full((2, 2), 3.0)), np.zeros((2, 2), np.float32))


def _two_blocks(sizes=(12, 5), inner=1.0, outer=0.05, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    w = np.where(labels[:, None] == labels[None, :], inner, outer) + 0.02 * rng.random((labels.size,) * 2)
    perm = rng.permutation(labels.size)
    w = (w + w.T)[np.ix_(perm, perm)] / 2
    return w, labels[perm] == 1


def test_ncuts_finds_the_smaller_block():
    w, small = _two_blocks()
    assert np.array_equal(ncuts_split(w), small)
    assert np.array_equal(ncuts_split(torch.from_numpy(w)), small)
    big, small_big = _two_blocks((150, 60), seed=1)  # above the dense-eigensolver size
    assert np.array_equal(ncuts_split(big), small_big)


def _ncut_value(w: np.ndarray, side: np.ndarray) -> float:
    cut = w[np.ix_(side, ~side)].sum()
    return cut / w[side].sum() + cut / w[~side].sum()


def test_threshold_search_equals_a_loop():
    rng = np.random.default_rng(3)
    w = rng.random((15, 15))
    w = (w + w.T) / 2
    y = np.round(rng.normal(size=15), 1)  # ties between values
    side, value = best_ncut_split(w, y)
    candidates = [y <= t for t in np.unique(y)[:-1]]
    values = [_ncut_value(w, s) for s in candidates]
    assert value == pytest.approx(min(values))
    assert np.array_equal(side, candidates[int(np.argmin(values))])


def test_ncuts_partition_orients_the_soft_split():
    w, small = _two_blocks()
    side, soft = ncuts_partition(w)
    assert np.array_equal(side, small)
    assert soft[side].min() > soft[~side].max()  # the smaller block is the high end
    assert np.array_equal(ncuts_partition(w[::-1, ::-1])[0], small[::-1])
    side, soft = ncuts_partition(np.ones((4, 4)), max_ncut=0.99)
    assert not side.any() and not soft.any()  # no split: a flat soft map


def test_ncuts_similarity_kernel_width():
    d = torch.tensor([[0.0, 0.2, 0.6], [0.2, 0.0, 0.4], [0.6, 0.4, 0.0]])
    sigma = float(torch.tensor([0.2, 0.6, 0.2, 0.4, 0.6, 0.4], dtype=torch.float64).std())
    for scale in (0.5, 1.0):
        w = ncuts_similarity(d, scale)
        assert float(w[0, 2]) == pytest.approx(math.exp(-(0.6 - 0.2) / (scale * sigma)))
        assert float(w[0, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        ncuts_similarity(d, 0.0)


def test_ncuts_guards():
    w = np.zeros((6, 6))
    w[:4, :4] = 1.0
    w[4:, 4:] = 1.0  # two components
    assert ncuts_split(w).tolist() == [False] * 4 + [True] * 2
    assert ncuts_partition(w)[1].tolist() == [0.0] * 4 + [1.0] * 2
    assert not ncuts_split(np.eye(5)).any()  # no edges
    assert ncuts_split(np.ones((1, 1))).tolist() == [False]
    assert not ncuts_split(np.ones((4, 4)), max_ncut=0.99).any()  # uniform: every split has Ncut 1
    w_blocks, small = _two_blocks()
    assert np.array_equal(ncuts_split(w_blocks, max_ncut=0.99), small)
    with pytest.raises(ValueError, match="symmetric"):
        ncuts_split(np.triu(np.ones((3, 3))))
    with pytest.raises(ValueError, match="negative"):
        ncuts_split(-np.ones((3, 3)))


def test_detection_scores_rank_two_sources_above_one():
    two, grid, _ = _two_source(300, 400, (0, 150, 0, 200), seed=3)
    g = torch.Generator().manual_seed(3)
    one = torch.randn(64, generator=g) + 0.5 * torch.randn(grid.count, 64, generator=g)
    one = torch.nn.functional.normalize(one, dim=1)
    spliced, pristine = detection_scores(patch_affinity(two)), detection_scores(patch_affinity(one))
    assert set(spliced) == {"score_exp", "score_mean_dist"}
    assert spliced["score_mean_dist"] > pristine["score_mean_dist"]
    assert spliced["score_exp"] > pristine["score_exp"]


def test_score_exp_is_stable_and_matches_the_formula():
    rng = np.random.default_rng(5)
    a = np.clip(rng.uniform(0.9, 1.0, (20, 20)), -1, 1)
    a = (a + a.T) / 2
    np.fill_diagonal(a, 1.0)
    scores = detection_scores(torch.from_numpy(a).float(), tau=0.01)
    assert all(math.isfinite(v) for v in scores.values())
    off = a[~np.eye(20, dtype=bool)]
    for tau in (0.01, 0.5):
        phi = np.sum(np.exp(np.float64(off) / tau))  # finite in float64 (e^100 ~ 2.7e43)
        expected = -tau * math.log(phi / off.size)
        score = detection_scores(torch.from_numpy(a), tau=tau)["score_exp"]
        assert score == pytest.approx(expected, rel=1e-9)
    assert scores["score_mean_dist"] == pytest.approx(float((1 - off).mean()), rel=1e-5)
    assert detection_scores(torch.ones(1, 1)) == {"score_exp": 0.0, "score_mean_dist": 0.0}
    with pytest.raises(ValueError, match="tau"):
        detection_scores(torch.ones(3, 3), tau=0.0)


def test_cells_to_image_equals_full_upsample_then_crop() -> None:
    """The separable evaluation equals F.interpolate of the whole padded map, then the crop."""
    import torch.nn.functional as F

    from exiflang.eval.forensics.affinity import Coverage
    from exiflang.eval.forensics.localize import _pad_amounts, cells_to_image

    rng = np.random.default_rng(0)
    for cells, cell, origin, (h, w) in [
        ((5, 7), 16, (0, 0), (90, 120)),
        ((4, 3), 9, (3, 5), (45, 33)),
        ((1, 6), 30, (0, 10), (25, 200)),
    ]:
        cov = Coverage(torch.zeros(1, cells[0] * cells[1]), cells, cell, origin)
        cmap = rng.random(cells).astype(np.float32)
        top, bottom = _pad_amounts(origin[0], cells[0], cell, h)
        left, right = _pad_amounts(origin[1], cells[1], cell, w)
        x = F.pad(torch.from_numpy(cmap)[None, None], (left, right, top, bottom), mode="replicate")
        up = F.interpolate(x, scale_factor=cell, mode="bilinear", align_corners=False)[0, 0]
        y0, x0 = top * cell - origin[0], left * cell - origin[1]
        ref = up[y0 : y0 + h, x0 : x0 + w].numpy()
        np.testing.assert_allclose(cells_to_image(cmap, cov, h, w), ref, atol=1e-5)
