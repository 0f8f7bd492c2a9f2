"""NOI baseline: Haar subband, block noise estimates vs a loop reference, and finding a noisier rectangle."""

from __future__ import annotations

import numpy as np
import pytest

from exiflang.eval.benchmark.metrics import pixel_ap
from exiflang.eval.forensics.noi import NoiDetector, block_sigma, haar_hh, otsu_threshold, paint
from tests.eval.reference_forensics import block_sigma_reference

RNG = np.random.default_rng(0)


def scene(h: int = 480, w: int = 640) -> np.ndarray:
    """A smooth shaded grey scene (little energy in the finest diagonal band)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return 128 + 60 * np.sin(xx / 40) * np.cos(yy / 55)


def to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.repeat(grey[:, :, None], 3, axis=2)), 0, 255).astype(np.uint8)


def test_haar_hh_formula_and_noise_scale():
    g = np.arange(20, dtype=float).reshape(4, 5) ** 1.5
    hh = haar_hh(g)
    assert hh.shape == (2, 2)  # the odd column is dropped
    assert hh[1, 0] == pytest.approx((g[2, 0] - g[2, 1] - g[3, 0] + g[3, 1]) / 2)
    # Orthonormal: white noise of sigma s keeps sigma s in the subband.
    hh = haar_hh(RNG.normal(0, 3.0, (400, 400)))
    assert hh.std() == pytest.approx(3.0, rel=0.03)


def test_block_sigma_matches_loop_reference_and_estimates_sigma():
    hh = RNG.normal(0, 1, (53, 71)) * RNG.uniform(0.5, 4, (53, 71))
    for block in (2, 5, 8):
        np.testing.assert_allclose(block_sigma(hh, block), block_sigma_reference(hh, block), rtol=1e-12)
    est = block_sigma(haar_hh(RNG.normal(0, 5.0, (512, 512))), 8)
    assert np.median(est) == pytest.approx(5.0, rel=0.05)
    with pytest.raises(ValueError, match="smaller than one 8x8 block"):
        block_sigma(np.zeros((7, 40)), 8)


def test_otsu_and_paint():
    values = np.concatenate([RNG.normal(0.1, 0.02, 300), RNG.normal(0.8, 0.02, 100)])
    t = otsu_threshold(values)
    assert 0.2 < t < 0.7
    assert otsu_threshold(np.full(5, 0.3)) == 0.3
    cells = np.array([[0.0, 1.0], [2.0, 3.0]])
    full = paint(cells, 5, 7, 2)  # 2x2 cells of 2 px; the margin repeats the last cell
    assert full.shape == (5, 7) and full[0, 2] == 1.0 and full[4, 6] == 3.0 and full[3, 1] == 2.0


@pytest.mark.parametrize("extra_sigma", [4.0, 8.0])
def test_noi_finds_a_noisier_rectangle(extra_sigma):
    grey = scene() + RNG.normal(0, 1.0, (480, 640))
    truth = np.zeros((480, 640), bool)
    truth[100:260, 300:520] = True
    spliced = grey.copy()
    spliced[truth] += RNG.normal(0, extra_sigma, truth.sum())
    det = NoiDetector()
    res = det.detect(to_rgb(spliced))
    assert res.heatmap.shape == (480, 640) and res.heatmap.dtype == np.float32
    assert res.heatmap.min() >= 0.0 and res.heatmap.max() <= 1.0
    assert pixel_ap(res.heatmap, truth) > 0.9
    iou = (res.mask & truth).sum() / (res.mask | truth).sum()
    assert iou > 0.7 and res.mask.mean() < 0.5  # the smaller region is the splice
    assert res.heatmap[truth].mean() > res.heatmap[~truth].mean()  # oriented, not just separable
    clean = det.detect(to_rgb(grey))
    assert res.scores["score_noi"] > clean.scores["score_noi"]
    assert set(res.timings) == {"noise", "total"} and res.ncuts_mask is None
    assert res.grid.patch == 16 and res.grid.shape == (30, 40)


def test_noi_flat_image_and_bad_input():
    flat = NoiDetector().detect(np.full((64, 64, 3), 90, np.uint8))
    assert not flat.mask.any() and float(flat.heatmap.max()) == 0.0 and flat.scores["score_noi"] == 0.0
    with pytest.raises(ValueError, match="smaller than one"):
        NoiDetector().detect(np.zeros((10, 100, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        NoiDetector().detect(np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        NoiDetector(block=1)
