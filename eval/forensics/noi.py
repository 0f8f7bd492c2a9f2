"""The hand-crafted baseline: noise-level inconsistency (NOI, after Mahdian & Saic 2009) per image block.

A splice from another camera usually carries another noise level.  NOI estimates the noise of
each block from the finest diagonal wavelet subband, where a natural image has little signal
left, with the robust median estimator of Donoho & Johnstone:

1. grey = 0.299 R + 0.587 G + 0.114 B (float, 0..255);
2. one level of the orthonormal 2-D Haar transform; its diagonal detail is
   ``HH = (a - b - c + d) / 2`` for every 2x2 pixel block ``[[a, b], [c, d]]`` (``[H/2, W/2]``);
3. per ``block x block`` tile of HH (default 8, i.e. 16x16 pixels, non-overlapping):
   ``sigma = median(|HH|) / 0.6745``;
4. heatmap = the deviation of each block from the image's typical noise level, in log terms so a
   doubling and a halving count alike: ``|log((sigma + eps) / (median(sigma) + eps))|`` with
   ``eps`` = 0.5 grey levels (keeps flat, clipped blocks with sigma = 0 from dominating),
   divided by its maximum (0..1; a constant map stays 0), each block's value painted over its
   pixels; the right/bottom margin that no whole block covers takes its nearest block's value;
5. orientation: the deviation is measured from the median, i.e. from the majority's noise, so
   high values already mark the smaller region; the mask is the heatmap above Otsu's threshold
   (computed on the block values), inverted should it cover more than half the blocks;
6. detection score ``score_noi`` = the standard deviation of ``log(sigma + eps)`` over blocks
   (higher = more varied noise = more likely spliced).

:class:`NoiDetector` returns the same :class:`exiflang.eval.forensics.detector.DetectionResult` as the learned
detector, so the benchmark harness runs both alike; its ``grid`` describes the blocks (patch =
block size in pixels, corners at multiples of it) and ``ncuts_mask`` is None.
"""

from __future__ import annotations

import time

import numpy as np

from exiflang.eval.embed.patches import Grid
from exiflang.eval.forensics.detector import DetectionResult

MAD_TO_SIGMA = 0.6745  # median(|N(0, s^2)|) = 0.6745 s
EPS = 0.5  # grey levels; about the noise of 8-bit quantisation (0.29) and a bit more
LUMA = np.array([0.299, 0.587, 0.114])


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """``uint8 [H,W,3]`` -> ``float64 [H,W]`` luma, 0..255."""
    return rgb.astype(np.float64) @ LUMA


def haar_hh(grey: np.ndarray) -> np.ndarray:
    """``[H,W]`` -> ``[H//2, W//2]`` diagonal detail of one orthonormal Haar level (odd edge dropped)."""
    h, w = grey.shape[0] // 2 * 2, grey.shape[1] // 2 * 2
    g = grey[:h, :w]
    return (g[0::2, 0::2] - g[0::2, 1::2] - g[1::2, 0::2] + g[1::2, 1::2]) / 2.0


def block_sigma(hh: np.ndarray, block: int) -> np.ndarray:
    """Noise sigma per non-overlapping ``block x block`` tile of ``hh`` -> ``[rows, cols]`` (>= 0).

    Tiles are cut from the top-left; a partial last row/column of tiles is dropped.
    """
    rows, cols = hh.shape[0] // block, hh.shape[1] // block
    if rows == 0 or cols == 0:
        raise ValueError(f"subband {hh.shape[1]}x{hh.shape[0]} is smaller than one {block}x{block} block")
    tiles = np.abs(hh[: rows * block, : cols * block]).reshape(rows, block, cols, block)
    tiles = tiles.transpose(0, 2, 1, 3).reshape(rows, cols, block * block)
    return np.median(tiles, axis=2) / MAD_TO_SIGMA


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any range): the cut maximising the between-class variance."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    # Every cut inside an empty gap between two modes ties; take the middle of that run of ties.
    first = int(np.argmax(between))
    last = first
    while last + 1 < len(between) and between[last + 1] >= between[first] * (1 - 1e-9):
        last += 1
    return float(edges[(first + last) // 2 + 1])


def paint(cell_map: np.ndarray, height: int, width: int, step: int) -> np.ndarray:
    """Each cell's value over its ``step x step`` pixels; the uncovered margin takes the nearest cell."""
    full = np.repeat(np.repeat(cell_map, step, axis=0), step, axis=1)[:height, :width]
    pad = ((0, height - full.shape[0]), (0, width - full.shape[1]))
    return np.pad(full, pad, mode="edge")


class NoiDetector:
    """Noise-inconsistency splice maps (see the module docstring); ``block`` in subband samples."""

    name = "noi"
    score_names = ("score_noi",)

    def __init__(self, block: int = 8) -> None:
        if block < 2:
            raise ValueError(f"NOI block {block}: must be at least 2")
        self.block = int(block)

    @property
    def settings(self) -> dict[str, object]:
        return {"method": "noi", "block": self.block, "wavelet": "haar", "eps": EPS}

    def detect(self, rgb: np.ndarray) -> DetectionResult:
        """``uint8 [H,W,3]`` -> heatmap (0..1, high = off the majority's noise), mask, ``score_noi``.

        ValueError for wrong pixels or an image smaller than one block (``2*block`` pixels).
        """
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected uint8 [H,W,3] pixels, got {rgb.dtype} {tuple(rgb.shape)}")
        t0 = time.perf_counter()
        height, width = rgb.shape[:2]
        sigma = block_sigma(haar_hh(to_grey(rgb)), self.block)
        log_sigma = np.log(sigma + EPS)
        deviation = np.abs(log_sigma - np.log(np.median(sigma) + EPS))
        top = float(deviation.max())
        cells = (deviation / top if top > 0 else np.zeros_like(deviation)).astype(np.float32)
        high = cells > otsu_threshold(cells) if top > 0 else np.zeros(cells.shape, bool)
        if high.mean() > 0.5:  # the splice is the smaller region
            high, cells = ~high, 1.0 - cells
        step = 2 * self.block
        t_noise = time.perf_counter() - t0
        grid = Grid(
            height,
            width,
            step,
            tuple(range(0, sigma.shape[0] * step, step)),
            tuple(range(0, sigma.shape[1] * step, step)),
        )
        total = time.perf_counter() - t0
        return DetectionResult(
            heatmap=paint(cells, height, width, step).astype(np.float32),
            mask=paint(high, height, width, step).astype(bool),
            ncuts_mask=None,
            scores={"score_noi": float(log_sigma.std())},
            grid=grid,
            timings={"noise": t_noise, "total": total},
            cell_map=cells,
            settings=self.settings,
        )
