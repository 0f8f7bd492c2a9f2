"""Best- and fixed-threshold pixel F1/IoU/MCC and pixel ROC-AUC against a naive threshold loop and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score, matthews_corrcoef, roc_auc_score

from exiflang.eval.benchmark.metrics import THRESHOLD_KEYS, threshold_metrics


def naive_threshold_metrics(heat: np.ndarray, mask: np.ndarray, fixed: float = 0.5) -> dict[str, float]:
    """The slow, obvious reference: scikit-learn at every candidate threshold of map and 1 - map."""
    y = mask.ravel() != 0
    if y.all() or not y.any():
        return {key: float("nan") for key in THRESHOLD_KEYS}
    scores = {"f1": [], "iou": [], "mcc": []}
    for values in (heat.ravel().astype(np.float64), 1.0 - heat.ravel().astype(np.float64)):
        for t in [*np.unique(values), np.inf]:  # np.inf: nothing predicted
            pred = values >= t
            scores["f1"].append(f1_score(y, pred, zero_division=0))
            scores["iou"].append(jaccard_score(y, pred, zero_division=0))
            scores["mcc"].append(matthews_corrcoef(y, pred))
    pred = heat.ravel() >= fixed
    return {
        "f1_best": max(scores["f1"]),
        "iou_best": max(scores["iou"]),
        "mcc_best": max(scores["mcc"]),
        "f1_fixed": f1_score(y, pred, zero_division=0),
        "iou_fixed": jaccard_score(y, pred, zero_division=0),
        "mcc_fixed": matthews_corrcoef(y, pred),
        "pixel_auc": roc_auc_score(y, heat.ravel()),
    }


def _assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(THRESHOLD_KEYS)
    for key in THRESHOLD_KEYS:
        if math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize(
    "seed, shape, levels", [(0, (6, 9), None), (1, (12, 15), 7), (2, (10, 10), 2), (3, (6, 20), 4), (4, (3, 5), None)]
)
def test_equals_naive_reference_on_random_maps_with_ties(seed, shape, levels):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < rng.uniform(0.1, 0.6)
    mask.flat[0], mask.flat[1] = True, False
    heat = rng.random(shape) * 0.8 + 0.3 * mask * rng.choice([1, -1])  # either polarity
    if levels:
        heat = np.round(heat * levels) / levels  # many ties, some at 0.5
    _assert_close(threshold_metrics(heat, mask), naive_threshold_metrics(heat, mask))


def test_degenerate_masks_and_constant_maps():
    rng = np.random.default_rng(5)
    heat = rng.random((8, 9))
    for mask in (np.zeros((8, 9), bool), np.ones((8, 9), np.uint8)):  # one class: undefined
        got = threshold_metrics(heat, mask)
        assert all(math.isnan(got[k]) for k in THRESHOLD_KEYS)
    mask = np.zeros((8, 9), bool)
    mask[2:5, 3:7] = True  # 12 of 72 pixels
    for level in (0.0, 0.5, 1.0):
        constant = np.full(mask.shape, level)
        got = threshold_metrics(constant, mask)
        _assert_close(got, naive_threshold_metrics(constant, mask))
        # One threshold only: all or nothing predicted. Best = all: F1 2P/(P+n), IoU P/n, MCC 0.
        assert got["f1_best"] == pytest.approx(2 * 12 / (12 + 72))
        assert got["iou_best"] == pytest.approx(12 / 72)
        assert got["mcc_best"] == 0.0 and got["pixel_auc"] == 0.5
        assert got["f1_fixed"] == pytest.approx(2 * 12 / 84 if level >= 0.5 else 0.0)


def test_known_answers_perfect_inverted_and_uint8_masks():
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:25] = True
    perfect = mask.astype(np.float32)
    got = threshold_metrics(perfect, (mask * 255).astype(np.uint8))
    assert all(got[k] == pytest.approx(1.0) for k in THRESHOLD_KEYS)
    flipped = threshold_metrics(1.0 - perfect, mask)
    # Best-threshold metrics allow the flip (like p-AP); the fixed threshold and AUC take the map as given.
    assert flipped["f1_best"] == flipped["iou_best"] == flipped["mcc_best"] == pytest.approx(1.0)
    assert flipped["f1_fixed"] == 0.0 and flipped["mcc_fixed"] == pytest.approx(-1.0)
    assert flipped["pixel_auc"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="does not match"):
        threshold_metrics(perfect, mask[:-1])


def test_large_map_is_fast_and_matches_sklearn_auc():
    """A 800 x 600 map: one sort, no threshold loop (well under a second on a shared core)."""
    import time

    rng = np.random.default_rng(6)
    mask = np.zeros((600, 800), bool)
    mask[150:350, 200:500] = True
    heat = np.clip(rng.normal(0.3 + 0.4 * mask, 0.2), 0, 1).astype(np.float32)
    t0 = time.perf_counter()
    got = threshold_metrics(heat, mask)
    seconds = time.perf_counter() - t0
    assert got["pixel_auc"] == pytest.approx(roc_auc_score(mask.ravel(), heat.ravel()), abs=1e-9)
    pred = heat.ravel() >= 0.5
    assert got["f1_fixed"] == pytest.approx(f1_score(mask.ravel(), pred), abs=1e-12)
    assert got["mcc_fixed"] == pytest.approx(matthews_corrcoef(mask.ravel(), pred), abs=1e-9)
    assert got["f1_best"] >= got["f1_fixed"] and got["iou_best"] >= got["iou_fixed"]
    assert seconds < 5.0
