"""Forensic metrics: known answers, agreement with scikit-learn, cIoU against a brute-force sweep."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from exiflang.eval.benchmark.metrics import average_precision, ciou, pixel_ap, roc_auc, summarize


def _rect_mask(shape=(40, 50), box=(10, 25, 5, 30)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[box[0] : box[1], box[2] : box[3]] = True
    return mask


@pytest.mark.parametrize("seed, n, levels", [(0, 50, None), (1, 300, 7), (2, 1000, 3), (3, 17, 2)])
def test_ap_and_auc_equal_sklearn(seed, n, levels):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    labels[0], labels[1] = True, False
    scores = rng.random(n) + 0.4 * labels
    if levels:  # heavy ties
        scores = np.round(scores * levels) / levels
    expected = average_precision_score(labels, scores)
    assert average_precision(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_single_class_is_nan():
    assert math.isnan(average_precision(np.zeros(5), np.arange(5)))
    assert math.isnan(roc_auc(np.ones(5), np.arange(5)))


def test_pixel_ap_known_answers():
    mask = _rect_mask()
    perfect = mask.astype(np.float32)
    assert pixel_ap(perfect, mask) == pytest.approx(1.0)
    assert pixel_ap(1.0 - perfect, mask) == pytest.approx(1.0)  # inverted map: same p-AP
    constant = np.full(mask.shape, 0.3)
    assert pixel_ap(constant, mask) == pytest.approx(mask.mean())  # AP = positive fraction
    rng = np.random.default_rng(4)
    noisy = perfect * 0.5 + rng.random(mask.shape)
    expected = max(
        average_precision_score(mask.ravel(), noisy.ravel()), average_precision_score(mask.ravel(), -noisy.ravel())
    )
    assert pixel_ap(noisy, mask) == pytest.approx(expected, abs=1e-12)
    assert pixel_ap(-noisy, mask) == pytest.approx(expected, abs=1e-12)


def test_integer_masks_and_bad_input():
    mask = _rect_mask()
    heat = mask * 0.8 + 0.1
    assert pixel_ap(heat, (mask * 255).astype(np.uint8)) == pytest.approx(1.0)
    assert ciou(heat, mask.astype(np.uint8)) == pytest.approx(1.0)
    assert math.isnan(pixel_ap(heat, np.zeros_like(mask)))  # authentic: undefined
    assert math.isnan(ciou(heat, np.zeros_like(mask)))
    assert math.isnan(ciou(heat, np.ones_like(mask)))
    with pytest.raises(ValueError, match="does not match"):
        pixel_ap(heat[:, :10], mask)
    with pytest.raises(ValueError, match="NaN"):
        ciou(np.where(mask, np.nan, 0.0), mask)
    with pytest.raises(ValueError, match="mode"):
        ciou(heat, mask, mode="best")


def _ciou_brute(heat: np.ndarray, mask: np.ndarray, mode: str) -> float:
    """Every threshold (each distinct value, and one above the maximum), both polarities, plain loops."""
    best = 0.0
    for m in (heat, 1.0 - heat):
        pos, neg = [], []
        for t in list(np.unique(m)) + [m.max() + 1.0]:
            pred = m >= t
            pos.append((pred & mask).sum() / (pred | mask).sum())
            neg.append((~pred & ~mask).sum() / (~pred | ~mask).sum())
        pos, neg = np.array(pos), np.array(neg)
        value = {
            "independent": (pos.max() + neg.max()) / 2,
            "shared": ((pos + neg) / 2).max(),
            "legacy": (1 + pos.max()) / 2,
        }[mode]
        best = max(best, value)
    return best


@pytest.mark.parametrize("mode", ["independent", "shared", "legacy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ciou_equals_brute_force(mode, seed):
    rng = np.random.default_rng(seed)
    mask = _rect_mask((20, 24), (3, 12, 4, 15))
    heat = np.round(mask * 0.4 + rng.random(mask.shape), 2)  # ties included
    assert ciou(heat, mask, mode) == pytest.approx(_ciou_brute(heat, mask, mode), abs=1e-12)


def test_ciou_known_answers():
    mask = _rect_mask()
    frac = mask.mean()
    perfect = mask.astype(np.float64)
    for mode in ("independent", "shared", "legacy"):
        assert ciou(perfect, mask, mode) == pytest.approx(1.0)
        assert ciou(1.0 - perfect, mask, mode) == pytest.approx(1.0)
    constant = np.full(mask.shape, 0.7)
    # Independent thresholds: all-spliced gives IoU = frac, nothing-spliced gives 1 - frac.
    assert ciou(constant, mask) == pytest.approx(0.5)
    assert ciou(constant, mask, "shared") == pytest.approx(max(frac, 1 - frac) / 2)
    assert ciou(constant, mask, "legacy") == pytest.approx((1 + frac) / 2)


def test_legacy_reproduces_the_integer_mask_bug():
    """The authors' sweep (1000 thresholds, `~` on an integer mask) equals mode="legacy"."""
    rng = np.random.default_rng(7)
    mask = _rect_mask((30, 30), (5, 20, 8, 22))
    grid = np.linspace(0, 1, 1000)
    heat = grid[rng.integers(0, 999, size=mask.shape)] * 0.6 + mask * grid[399]  # values on the grid
    heat = grid[np.abs(heat[..., None] - grid).argmin(-1)]
    label = mask.astype(np.int64)

    def buggy(score: np.ndarray) -> float:
        pred = score[:, :, None] >= grid[None, None, :]
        iou_pos = (pred & (label[:, :, None] > 0)).sum((0, 1)) / (pred | (label[:, :, None] > 0)).sum((0, 1))
        # ~label on int64 is -1 / -2: always truthy, so the "pristine" class is the whole image.
        not_label = (~label[:, :, None]).astype(bool)
        iou_neg = (~pred & not_label).sum((0, 1)) / (~pred | not_label).sum((0, 1))
        return (iou_pos.max() + iou_neg.max()) / 2

    authors = max(buggy(heat), buggy(1 - heat))
    assert authors == pytest.approx(ciou(heat, mask, "legacy"), abs=1e-9)
    assert ciou(heat, mask) < authors


def test_summarize():
    records = [
        {"spliced": True, "pixel_ap": 0.9, "ciou": 0.8, "scores": {"a": 0.9, "b": 0.2}},
        {"spliced": True, "pixel_ap": 0.5, "ciou": None, "scores": {"a": 0.4, "b": 0.6}},
        {"spliced": True, "pixel_ap": float("nan"), "ciou": 0.6, "scores": {"a": 0.7}},
        {"spliced": False, "pixel_ap": None, "ciou": None, "scores": {"a": 0.1, "b": 0.3}},
        {"spliced": False, "scores": {"a": 0.5, "b": float("nan")}},
    ]
    out = summarize(records)
    assert (out["images"], out["spliced"], out["authentic"]) == (5, 3, 2)
    assert out["p_map"] == pytest.approx(0.7) and out["localization"]["pixel_ap"]["count"] == 2
    assert out["ciou"] == pytest.approx(0.7) and out["localization"]["ciou"]["count"] == 2
    labels, a = [1, 1, 1, 0, 0], [0.9, 0.4, 0.7, 0.1, 0.5]
    assert out["detection"]["a"]["ap"] == pytest.approx(average_precision_score(labels, a))
    assert out["detection"]["a"]["roc_auc"] == pytest.approx(roc_auc_score(labels, a))
    assert out["detection"]["b"]["count"] == 3  # missing and NaN scores left out
    assert out["detection"]["b"]["ap"] == pytest.approx(average_precision_score([1, 1, 0], [0.2, 0.6, 0.3]))
    only_spliced = summarize(records[:2])
    assert only_spliced["detection"]["a"]["ap"] is None and only_spliced["detection"]["a"]["count"] == 2
    assert summarize([])["p_map"] is None
