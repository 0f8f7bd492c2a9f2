"""Forensic metrics: AP and ROC-AUC (equal to scikit-learn's), per-image p-AP and cIoU, and their aggregate.

Per image (``heatmap`` any real values, ``mask`` bool or 0/1, same shape; True = spliced):

- :func:`pixel_ap` = ``max(AP(map), AP(1 - map))`` over pixels (the authors' inversion
  allowance: a map whose polarity is flipped scores the same);
- :func:`ciou` = the class-balanced IoU: the best-threshold IoU of the spliced class and of the
  pristine class, averaged, also max over map / 1 - map.  Every distinct value is tried as a
  threshold (``pred = map >= t``, plus "nothing predicted"), not a 1000-step grid.  ``mode``:
  ``"independent"`` (default; each class at its own best threshold, the authors' definition),
  ``"shared"`` (one threshold for both classes), ``"legacy"`` (the authors' released code,
  where ``~label`` on an integer mask made the pristine IoU always 1: ``(1 + best IoU) / 2``,
  only for comparing with published numbers).

- :func:`threshold_metrics` = the numbers PhotoHolmes and TruFor tables print: pixel F1, IoU (of
  the spliced class) and MCC at the best threshold (every distinct value tried, plus "nothing
  predicted"; each metric at its own best threshold, max over map / 1 - map like p-AP) and at
  the fixed threshold ``map >= 0.5`` (the map as given: the detectors orient it so that 1 =
  spliced), and the pixel ROC-AUC of the map as given.  All from one sort of the pixels.

All are undefined (NaN) when the mask has only one class (an authentic image): localization
metrics average over spliced images only.  :func:`summarize` aggregates records; see its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, TypeGuard

import numpy as np
import scipy.stats

CIOU_MODES = ("independent", "shared", "legacy")


def _binary(labels: np.ndarray) -> np.ndarray:
    # `!= 0` rather than `~`/astype tricks: `~` on an integer mask is bitwise and always truthy.
    return np.asarray(labels).ravel() != 0


def _prefix_counts(labels_sorted: np.ndarray, values_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True/false positives when predicting the first k items, at each end of a run of equal values.

    Items sorted so that the prediction grows from the front; ``values_sorted`` monotone.
    Returns ``(tp, fp)``, each ``int64 [n_groups]``.
    """
    ends = np.flatnonzero(np.diff(values_sorted) != 0)
    ends = np.append(ends, len(values_sorted) - 1)
    tp = np.cumsum(labels_sorted, dtype=np.int64)[ends]
    return tp, ends + 1 - tp


def _ap_from_prefix(tp: np.ndarray, fp: np.ndarray, positives: int) -> float:
    if positives == 0:
        return float("nan")
    precision = tp / (tp + fp)
    recall_step = np.diff(tp, prepend=0) / positives
    return float(np.sum(recall_step * precision))


def _check_scores(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = _binary(labels)
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    return y, s


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's ``average_precision_score`` (ties grouped); NaN when there is no positive.

    (scikit-learn returns 0.0 with a warning there; NaN keeps such images out of averages.)
    """
    y, s = _check_scores(labels, scores)
    order = np.argsort(-s, kind="stable")
    tp, fp = _prefix_counts(y[order], s[order])
    return _ap_from_prefix(tp, fp, int(y.sum()))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's ``roc_auc_score`` (Mann-Whitney U with average ranks for ties); NaN for one class."""
    y, s = _check_scores(labels, scores)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = scipy.stats.rankdata(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _check_map(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heat, m = np.asarray(heatmap), np.asarray(mask)
    if heat.shape != m.shape:
        raise ValueError(f"heatmap shape {heat.shape} does not match mask shape {m.shape}")
    values = heat.ravel()
    if not np.isfinite(values).all():
        raise ValueError("heatmap contains NaN or infinite values")
    return values, _binary(m)


def _both_orientations(
    heatmap: np.ndarray, mask: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], int, int]:
    """One ascending sort serves both polarities -> ((tp, fp) for map, (tp, fp) for 1 - map, P, Nn)."""
    values, y = _check_map(heatmap, mask)
    order = np.argsort(values, kind="stable")
    v, lab = values[order], y[order]
    # map >= t predicts a suffix of the ascending order; 1 - map >= t predicts a prefix.
    direct = _prefix_counts(lab[::-1], v[::-1])
    inverted = _prefix_counts(lab, v)
    positives = int(y.sum())
    return direct, inverted, positives, y.size - positives


def pixel_ap(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """``max(AP(map), AP(1 - map))`` over the pixels; NaN when the mask has one class only."""
    direct, inverted, positives, negatives = _both_orientations(heatmap, mask)
    if positives == 0 or negatives == 0:
        return float("nan")
    return max(_ap_from_prefix(*direct, positives), _ap_from_prefix(*inverted, positives))


def _ciou_one(tp: np.ndarray, fp: np.ndarray, positives: int, negatives: int, mode: str) -> float:
    tp = np.append(0, tp).astype(np.float64)  # the "nothing predicted" threshold first
    fp = np.append(0, fp).astype(np.float64)
    iou_pos = tp / (positives + fp)
    iou_neg = (negatives - fp) / (positives + negatives - tp)
    if mode == "shared":
        return float(((iou_pos + iou_neg) / 2.0).max())
    if mode == "legacy":
        return float((1.0 + iou_pos.max()) / 2.0)
    return float((iou_pos.max() + iou_neg.max()) / 2.0)


def ciou(heatmap: np.ndarray, mask: np.ndarray, mode: str = "independent") -> float:
    """Class-balanced IoU at the best threshold(s), max over map and 1 - map; NaN for a one-class mask."""
    if mode not in CIOU_MODES:
        raise ValueError(f"cIoU mode {mode!r}: expected one of {', '.join(CIOU_MODES)}")
    direct, inverted, positives, negatives = _both_orientations(heatmap, mask)
    if positives == 0 or negatives == 0:
        return float("nan")
    return max(_ciou_one(*direct, positives, negatives, mode), _ciou_one(*inverted, positives, negatives, mode))


FIXED_THRESHOLD = 0.5
THRESHOLD_KEYS = ("f1_best", "iou_best", "mcc_best", "f1_fixed", "iou_fixed", "mcc_fixed", "pixel_auc")


def _f1_iou_mcc(
    tp: np.ndarray, fp: np.ndarray, positives: int, negatives: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel F1, IoU and MCC of the spliced class at each operating point (arrays of equal shape).

    ``positives > 0`` keeps F1's and IoU's denominators positive; MCC is 0 where a marginal is
    empty (everything or nothing predicted), scikit-learn's convention.
    """
    tp, fp = np.asarray(tp, np.float64), np.asarray(fp, np.float64)
    fn, tn = positives - tp, negatives - fp
    f1 = 2.0 * tp / (tp + fp + positives)
    iou = tp / (fp + positives)
    denom = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)  # float64: no overflow at 10^7 pixels
    mcc = np.divide(tp * tn - fp * fn, np.sqrt(denom), out=np.zeros_like(tp), where=denom > 0)
    return f1, iou, mcc


def threshold_metrics(heatmap: np.ndarray, mask: np.ndarray, fixed: float = FIXED_THRESHOLD) -> dict[str, float]:
    """Per-image F1/IoU/MCC at the best and at a fixed threshold, and pixel ROC-AUC -> :data:`THRESHOLD_KEYS`.

    ``heatmap`` any real values ``[H, W]``; ``mask`` bool or 0/1 ``[H, W]``, True = spliced.
    ``*_best``: max over every threshold ``map >= t`` (t each distinct value, plus "nothing
    predicted") and over map / 1 - map, each metric at its own best threshold; in 0..1 (MCC
    -1..1, so its best is >= 0).  ``*_fixed``: ``map >= fixed`` on the map as given.
    ``pixel_auc``: ROC-AUC of the map as given (scikit-learn's, ties averaged), 0..1, 0.5 =
    chance.  All NaN when the mask has one class only.
    """
    direct, inverted, positives, negatives = _both_orientations(heatmap, mask)
    if positives == 0 or negatives == 0:
        return {key: float("nan") for key in THRESHOLD_KEYS}
    best = [-np.inf, -np.inf, -np.inf]
    for tp, fp in (direct, inverted):
        curves = _f1_iou_mcc(np.append(0, tp), np.append(0, fp), positives, negatives)
        best = [max(b, float(c.max())) for b, c in zip(best, curves)]
    values, y = _check_map(heatmap, mask)
    pred = values >= fixed
    tp_fixed, fp_fixed = int(np.count_nonzero(pred & y)), int(np.count_nonzero(pred & ~y))
    fixed_curves = _f1_iou_mcc(np.array([tp_fixed]), np.array([fp_fixed]), positives, negatives)
    # ROC through the direct prefixes (one point per distinct value, ties as one diagonal step):
    # the trapezoid area equals the Mann-Whitney AUC with averaged ranks.
    tpr = np.append(0, direct[0]) / positives
    fpr = np.append(0, direct[1]) / negatives
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return {
        "f1_best": best[0],
        "iou_best": best[1],
        "mcc_best": best[2],
        "f1_fixed": float(fixed_curves[0][0]),
        "iou_fixed": float(fixed_curves[1][0]),
        "mcc_fixed": float(fixed_curves[2][0]),
        "pixel_auc": auc,
    }


def _finite(value: Any) -> TypeGuard[float]:  # an int or numpy float passes too: float() reads it
    return value is not None and isinstance(value, (int, float, np.floating)) and math.isfinite(value)


def _mean_or_none(values: Iterable[Any]) -> tuple[float | None, int]:
    kept = [float(v) for v in values if _finite(v)]
    return (float(np.mean(kept)) if kept else None), len(kept)


def _none_if_nan(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarize(records: list[dict], map_keys: Sequence[str] = ("pixel_ap", "ciou")) -> dict:
    """Aggregate per-image records into dataset metrics (JSON-ready: NaN becomes None).

    Each record: ``{"spliced": bool, "pixel_ap": float|None, "ciou": float|None, "scores":
    {score_name: float}}``; any other per-image localization value can be averaged by naming
    its key in ``map_keys``.  Missing, None or NaN values are left out of that average.

    Returns ``{"images", "spliced", "authentic": int, "p_map": mean pixel_ap, "ciou": mean ciou,
    "localization": {key: {"mean": float|None, "count": int}}, "detection": {score_name:
    {"ap": float|None, "roc_auc": float|None, "count": int}}}`` where localization averages run
    over spliced images only and detection metrics over spliced (positive) + authentic records
    with a finite score (None unless both classes are present).
    """
    spliced = [r for r in records if r.get("spliced")]
    localization = {}
    for key in map_keys:
        mean, count = _mean_or_none(r.get(key) for r in spliced)
        localization[key] = {"mean": mean, "count": count}
    names = sorted({name for r in records for name in (r.get("scores") or {})})
    detection = {}
    for name in names:
        given = [(bool(r.get("spliced")), (r.get("scores") or {}).get(name)) for r in records]
        rows = [(label, float(score)) for label, score in given if _finite(score)]
        labels = np.array([label for label, _ in rows], dtype=bool)
        scores = np.array([score for _, score in rows], dtype=np.float64)
        both = labels.any() and (~labels).any()
        detection[name] = {
            "ap": _none_if_nan(average_precision(labels, scores)) if both else None,
            "roc_auc": _none_if_nan(roc_auc(labels, scores)) if both else None,
            "count": len(rows),
        }
    return {
        "images": len(records),
        "spliced": len(spliced),
        "authentic": len(records) - len(spliced),
        "p_map": localization.get("pixel_ap", {}).get("mean"),
        "ciou": localization.get("ciou", {}).get("mean"),
        "localization": localization,
        "detection": detection,
    }
