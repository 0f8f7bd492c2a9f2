"""Splice localization from patch embeddings: vote averaging, mean-shift heatmap, ncuts mask and map, at image size.

Steps (docs/design.md §6): affinity -> 4-D cell map (:mod:`exiflang.eval.forensics.affinity`) -> mean-shift mode
(:mod:`exiflang.eval.forensics.meanshift`) reshaped to the cell grid -> min-max normalised to 0..1 (a constant
map stays 0) -> resized bilinearly to the image -> oriented: if more than half of the area
covered by patches is above 0.5, the map is inverted (the smaller region is the splice) ->
``mask = heatmap > 0.5``.

Normalized cuts (:mod:`exiflang.eval.forensics.ncuts`) splits a similarity ``W = exp(-(d - min d) / (s σ))``, ``σ``
the standard deviation of the off-diagonal distances (scale-free: nodes are contrasted by how far
apart they are relative to the spread of all distances) and ``s = NCUTS_SIGMA`` (0.5); the smaller
segment is the splice.  Its continuous relaxation, the eigenvector the cut is made from (signed
so the splice side is high), is the second heatmap, ``ncuts_heatmap``: spread to cells like the
votes (the mean over the patches covering a cell), min-max normalised, resized like the
mean-shift map.  Mean shift keys on the densest region, which content (flat vs textured) can
win; the cut weighs every pair.  On held-out synthetic splices the soft map localizes as well
or better (p-mAP +0.11 / +0.09 / +0.01 on three sets for one trained model, +0.15 / +0.07 /
-0.01 for another; README, "Splice benchmarks"), most of all between two models of one make.
``ncuts_level="patches"`` (default) cuts the patch graph (``d = 1 - A``) and spreads the
segment to cells by the same votes as the 4-D map: a cell is spliced when more than half of
the patches covering it are.  ``ncuts_level="cells"`` cuts the 4-D map itself (``d = V``, the
authors' choice).  Patches are pure (one source each) while border cells mix both sources, so
the cell graph's cut hugs the pure core of the splice: on synthetic two-source embeddings
(tests/eval/test_localize.py) the patch graph reaches the IoU of the ideal cell labelling and
the cell graph falls short of it when the stride is smaller than the patch.

Resizing (:func:`cells_to_image`): the cell map is padded by replicating its edge cells until
it spans the whole image, upsampled by the integer cell side with
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (cell centres at the
block centres) and cropped to the image, so the uncovered right/bottom margin (less than one
stride) takes the value of the nearest cells.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from exiflang.eval.embed.patches import Grid
from exiflang.eval.forensics.affinity import Coverage, cell_consistency, coverage, patch_affinity
from exiflang.eval.forensics.meanshift import mean_shift_mode
from exiflang.eval.forensics.ncuts import ncuts_partition

# The ncuts kernel's width as a fraction of the distances' standard deviation.  Chosen on two
# held-out synthetic splice sets (0.1 to 2 tried, seven models; 0.25-0.5 best); on a third set,
# looked at only afterwards, 0.5 equals 1 and 0.25 is a little better.  README, "Splice benchmarks".
NCUTS_SIGMA = 0.5


@dataclass
class Localization:
    """One image's localization; every map has the image's ``[H, W]`` or the cell grid's shape."""

    heatmap: np.ndarray  # float32 [H,W], 0..1, higher = more likely spliced (mean shift)
    mask: np.ndarray  # bool [H,W], heatmap > 0.5: the predicted splice (smaller side)
    cell_map: np.ndarray  # float32 [rows, cols], the heatmap at cell resolution, 0..1
    ncuts_mask: np.ndarray | None  # bool [H,W] (the smaller ncuts segment) or None
    timings: dict[str, float]  # seconds: "votes", "meanshift", "ncuts" (0 when skipped), "resize"
    inverted: bool = False  # True when the mean-shift map was flipped to make the splice smaller
    bandwidth: float = 0.0  # the mean-shift bandwidth h
    ncuts_cells: np.ndarray | None = field(default=None)  # bool [rows, cols], the ncuts splice cells
    cell: int = 0  # cell side in pixels
    ncuts_heatmap: np.ndarray | None = None  # float32 [H,W], 0..1, the soft ncuts map (None when off)
    ncuts_cell_map: np.ndarray | None = None  # float32 [rows, cols], the same at cell resolution


def _pad_amounts(origin: int, n_cells: int, cell: int, size: int) -> tuple[int, int]:
    """Cells to add before/after one axis so that the padded cells span pixels ``[0, size)``."""
    before = math.ceil(origin / cell)
    after = max(0, math.ceil((size - origin) / cell) - n_cells)
    return before, after


def cells_to_image(cell_map: np.ndarray | torch.Tensor, cov: Coverage, height: int, width: int) -> np.ndarray:
    """``[rows, cols]`` cell values -> ``float32 [H, W]`` (bilinear, edges replicated; module docstring)."""
    cells = torch.as_tensor(np.asarray(cell_map, dtype=np.float32))
    if tuple(cells.shape) != cov.cells:
        raise ValueError(f"cell map shape {tuple(cells.shape)} does not match the coverage's {cov.cells}")
    top, bottom = _pad_amounts(cov.origin[0], cov.cells[0], cov.cell, height)
    left, right = _pad_amounts(cov.origin[1], cov.cells[1], cov.cell, width)
    x = (
        F.pad(cells[None, None], (left, right, top, bottom), mode="replicate")[0, 0]
        if any((top, bottom, left, right))
        else cells
    )
    # Bilinear upsampling by the cell size (align_corners=False), evaluated only at the pixels
    # kept: separable weights [H, rows] and [W, cols] instead of the whole padded upsampled map,
    # which for a very elongated image (one huge stride) would be gigabytes.
    rows = _axis_weights(height, top * cov.cell - cov.origin[0], cov.cell, x.shape[0])
    cols = _axis_weights(width, left * cov.cell - cov.origin[1], cov.cell, x.shape[1])
    return (rows @ x @ cols.T).contiguous().numpy()


def _axis_weights(n_out: int, offset: int, cell: int, n_in: int) -> torch.Tensor:
    """``float32 [n_out, n_in]``: ``F.interpolate``'s bilinear weights (scale ``cell``,
    ``align_corners=False``) for output pixels ``offset .. offset + n_out - 1``."""
    u = torch.arange(n_out, dtype=torch.float64) + offset
    src = ((u + 0.5) / cell - 0.5).clamp(min=0.0, max=float(n_in - 1))
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    w1 = (src - i0).to(torch.float32)
    weights = torch.zeros(n_out, n_in, dtype=torch.float32)
    idx = torch.arange(n_out)
    weights.index_put_((idx, i0), 1.0 - w1, accumulate=True)
    weights.index_put_((idx, i1), w1, accumulate=True)
    return weights


def normalise_map(values: np.ndarray) -> np.ndarray:
    """Min-max to 0..1 (``float32``, same shape); a constant (or near-constant) map becomes all 0."""
    v = np.asarray(values, dtype=np.float32)
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo
    if not span > 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(v)
    return (v - lo) / span


def covered_region(grid: Grid) -> tuple[slice, slice]:
    """Pixel rows/cols that some patch covers: ``[ys[0], ys[-1]+P) x [xs[0], xs[-1]+P)``."""
    return (slice(grid.ys[0], grid.ys[-1] + grid.patch), slice(grid.xs[0], grid.xs[-1] + grid.patch))


def ncuts_similarity(dist: torch.Tensor, sigma_scale: float = NCUTS_SIGMA) -> torch.Tensor:
    """``[M,M]`` distances (0..2) -> ``float64 [M,M]`` similarity ``exp(-(d - min d) / (s σ))``, 0..1.

    ``min`` and ``σ`` (standard deviation) over the off-diagonal entries, ``s = sigma_scale``;
    subtracting the minimum only rescales ``W`` (ncuts is scale-free) and keeps ``exp`` from
    underflowing.
    """
    if not sigma_scale > 0:
        raise ValueError(f"ncuts sigma scale {sigma_scale}: must be positive")
    m = dist.shape[0]
    d = dist.detach().to(torch.float64)
    off = d[~torch.eye(m, dtype=torch.bool)] if m > 1 else d.flatten()
    sigma = float(off.std()) if off.numel() > 1 else 0.0
    # A spread of zero means every node is alike: any positive σ gives the same (constant) graph.
    sigma = sigma if sigma > 1e-12 else 1.0
    w = torch.exp(-(d - float(off.min())).clamp(min=0.0) / (sigma * sigma_scale))
    return (w + w.T) / 2.0


def oriented_heatmap(mode: torch.Tensor, grid: Grid, cov: Coverage) -> tuple[np.ndarray, np.ndarray, bool]:
    """Mode row ``[K]`` -> (cell map ``[rows, cols]``, heatmap ``[H,W]``, inverted?), both 0..1.

    Inverted when more than half of the covered pixels are above 0.5: the splice is the smaller side.
    """
    cell_map = normalise_map(mode.reshape(cov.cells).numpy())
    heatmap = cells_to_image(cell_map, cov, grid.height, grid.width)
    rows, cols = covered_region(grid)
    inverted = bool((heatmap[rows, cols] > 0.5).mean() > 0.5)
    if inverted:
        cell_map = 1.0 - cell_map
        np.subtract(1.0, heatmap, out=heatmap)  # in place: a 4000x3000 map is 48 MB
    # Bilinear weights are convex, so the resized map stays within the cell map's 0..1.
    return cell_map.astype(np.float32, copy=False), heatmap, inverted


def ncuts_cells(
    affinity: torch.Tensor, cell_dist: torch.Tensor, cov: Coverage, level: str = "patches"
) -> tuple[np.ndarray, np.ndarray]:
    """The ncuts split at cell resolution -> (bool ``[rows, cols]`` splice side, float32
    ``[rows, cols]`` soft map 0..1, high = the splice side) (module docstring)."""
    if level == "cells":
        side, soft = ncuts_partition(ncuts_similarity(cell_dist))
        return side.reshape(cov.cells), normalise_map(soft.reshape(cov.cells))
    if level != "patches":
        raise ValueError(f"ncuts level {level!r}: expected 'patches' or 'cells'")
    side, soft = ncuts_partition(ncuts_similarity(1.0 - affinity))
    # One product for both: [K, 2] = per cell, the share of covering patches on the splice side
    # and their mean soft value.
    per_patch = torch.from_numpy(np.stack([side, soft], axis=1).astype(np.float32))  # [N, 2]
    votes = (cov.matrix.T @ per_patch) / cov.matrix.sum(0).clamp(min=1.0)[:, None]  # [K, 2]
    return ((votes[:, 0] > 0.5).reshape(cov.cells).numpy(), normalise_map(votes[:, 1].reshape(cov.cells).numpy()))


def localize(
    emb: torch.Tensor,
    grid: Grid,
    *,
    ncuts: bool = True,
    iterations: int = 5,
    percentile: float = 10.0,
    cov: Coverage | None = None,
    ncuts_level: str = "patches",
) -> Localization:
    """``[N,D]`` L2-normalised patch embeddings in ``grid``'s raster order -> :class:`Localization`.

    ``cov``: a precomputed :func:`exiflang.eval.forensics.affinity.coverage` of ``grid`` (default: built here).
    ``ncuts_level``: ``"patches"`` or ``"cells"``, the graph normalized cuts splits.
    """
    if emb.ndim != 2 or emb.shape[0] != grid.count:
        raise ValueError(f"embeddings of shape {tuple(emb.shape)} do not match a grid of {grid.count} patches")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    cov = coverage(grid) if cov is None else cov
    affinity = patch_affinity(emb)  # [N, N]
    cell_dist = cell_consistency(affinity, cov)  # [K, K]
    timings["votes"] = time.perf_counter() - start

    start = time.perf_counter()
    mode, h = mean_shift_mode(cell_dist, iterations, percentile)  # [K]
    timings["meanshift"] = time.perf_counter() - start

    start = time.perf_counter()
    cell_map, heatmap, inverted = oriented_heatmap(mode, grid, cov)
    mask = heatmap > 0.5
    timings["resize"] = time.perf_counter() - start

    ncuts_mask = cut_cells = soft_cells = soft_map = None
    timings["ncuts"] = 0.0
    if ncuts:
        start = time.perf_counter()
        cut_cells, soft_cells = ncuts_cells(affinity, cell_dist, cov, ncuts_level)
        ncuts_mask = cells_to_image(cut_cells.astype(np.float32), cov, grid.height, grid.width) > 0.5
        soft_map = cells_to_image(soft_cells, cov, grid.height, grid.width)
        timings["ncuts"] = time.perf_counter() - start
    return Localization(
        heatmap, mask, cell_map, ncuts_mask, timings, inverted, h, cut_cells, cov.cell, soft_map, soft_cells
    )
