"""The benchmark's files: per-image CSV rows (read back for resume), per-method aggregates and the Markdown table.

Rows are dicts keyed by :data:`CSV_COLUMNS`; metric and score cells are floats or None (an
empty cell).  Aggregates come from :func:`exiflang.eval.benchmark.metrics.summarize`, one call per method.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exiflang.eval.benchmark.metrics import FIXED_THRESHOLD, THRESHOLD_KEYS, summarize
from exiflang.eval.forensics.scores import DEFAULT_SCORE as EXIF_DEFAULT

SCORE_COLUMNS = ("score_exp", "score_mean_dist", "score_noi")
# THRESHOLD_KEYS (F1/IoU/MCC best and fixed, pixel AUC) came later: CSVs from before lack them.
MAP_COLUMNS = ("pixel_ap", "ciou", "pixel_ap_ncuts", "ciou_ncuts", *THRESHOLD_KEYS)
FLOAT_COLUMNS = MAP_COLUMNS + SCORE_COLUMNS + ("seconds",)
CSV_COLUMNS = ["name", "method", "spliced", "image", "height", "width", *MAP_COLUMNS, *SCORE_COLUMNS, "seconds", "note"]
# The score each method's headline detection number uses (the README's default).
DEFAULT_SCORE = {"exif": EXIF_DEFAULT, "noi": "score_noi"}
# Authors' README, released model (docs/design.md §6): (p-mAP, detection mAP); None = not given.
REFERENCE = {
    "columbia": (0.94, 0.98),
    "dso1": (0.62, 0.66),
    "rt": (0.23, 0.53),
    "inthewild": (0.54, None),
    "hays": (0.31, None),
}


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def _parse(column: str, text: str) -> Any:
    if column in FLOAT_COLUMNS:
        return float(text) if text not in ("", "nan") else None
    if column in ("spliced", "height", "width"):
        return int(text) if text else None
    return text


def read_rows(path: Path) -> list[dict[str, Any]]:
    """An earlier ``per_image.csv`` -> rows (empty list when there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: _parse(k, v or "") for k, v in row.items() if k in CSV_COLUMNS} for row in csv.DictReader(fh)]


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """All rows, sorted by (name, method), written to a temp file and renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r["name"], r["method"])):
            writer.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})
    os.replace(tmp, path)


def lacks_threshold_metrics(row: dict[str, Any]) -> bool:
    """A row from a CSV written before :data:`THRESHOLD_KEYS` existed: scored (p-AP) but no F1."""
    return row.get("pixel_ap") is not None and any(row.get(k) is None for k in THRESHOLD_KEYS)


def summarize_methods(rows: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Method -> :func:`exiflang.eval.benchmark.metrics.summarize` of its rows, plus ``default_score``,
    ``image_auroc`` (its detection ROC-AUC) and ``seconds_mean``."""
    out: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        keys = [k for k in MAP_COLUMNS if any(r.get(k) is not None for r in mine)] or ["pixel_ap", "ciou"]
        records = [
            {
                "spliced": bool(r["spliced"]),
                **{k: r.get(k) for k in keys},
                "scores": {k: r[k] for k in SCORE_COLUMNS if r.get(k) is not None},
            }
            for r in mine
        ]
        summary = summarize(records, map_keys=tuple(keys))
        seconds = [r["seconds"] for r in mine if r.get("seconds") is not None]
        summary["default_score"] = DEFAULT_SCORE.get(method)
        # The detection ROC-AUC of the default score, under the name other benchmarks give it.
        summary["image_auroc"] = summary["detection"].get(DEFAULT_SCORE.get(method), {}).get("roc_auc")
        summary["seconds_mean"] = float(np.mean(seconds)) if seconds else None
        out[method] = summary
    return out


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def published_table(metrics: dict[str, Any]) -> str:
    """The metrics PhotoHolmes / TruFor tables print, per method: per-image pixel F1, IoU, MCC at the
    best and the fixed threshold, pixel AUROC (means over spliced images), image AUROC (default score)."""
    lines = [
        "| method | F1 best | IoU best | MCC best | F1 @0.5 | IoU @0.5 | MCC @0.5 | pixel AUROC "
        "| image AUROC (score) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, s in metrics["methods"].items():
        loc = s.get("localization", {})
        cells = [_num(loc.get(k, {}).get("mean")) for k in THRESHOLD_KEYS]
        score = s.get("default_score")
        det = s["detection"].get(score, {}) if score else {}
        lines.append(f"| {method} | {' | '.join(cells)} | {_num(det.get('roc_auc'))} ({score or 'n/a'}) |")
    return "\n".join(lines)


NOTES = (
    "cIoU (the authors' class-balanced IoU, each class at its own threshold) is at least 0.5 for any "
    "map, a constant one included "
    "(predicting everything gives spliced IoU P/(P+N), nothing gives pristine IoU N/(P+N), which sum "
    "to 1): read 0.5 as its floor, not as a score.  F1/IoU/MCC best: each at its own best threshold "
    f"per image, max over map and 1 - map, then averaged over spliced images; @{FIXED_THRESHOLD:g}: "
    f"map >= {FIXED_THRESHOLD:g} as given "
    "(1 = spliced); pixel AUROC per image as given, averaged.  All pixels count (no band around the "
    "mask's edge is left out).  See docs/forensics.md."
)


def markdown_table(metrics: dict[str, Any]) -> str:
    """The Markdown summary: one row per method and detection score (p-mAP/cIoU on the first)."""
    lines = [
        "| method | p-mAP | cIoU | detection score | det. mAP | ROC-AUC | s / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, s in metrics["methods"].items():
        scores = sorted(s["detection"], key=lambda k: (k != s.get("default_score"), k)) or [None]
        for i, score in enumerate(scores):
            det = s["detection"].get(score, {}) if score else {}
            label = f"{score} (default)" if score and score == s.get("default_score") else (score or "")
            first = i == 0
            lines.append(
                f"| {method if first else ''} | {_num(s['p_map']) if first else ''} | "
                f"{_num(s['ciou']) if first else ''} | {label} | {_num(det.get('ap'))} | "
                f"{_num(det.get('roc_auc'))} | {_num(s['seconds_mean']) if first else ''} |"
            )
        loc = s.get("localization", {})
        if "pixel_ap_ncuts" in loc:
            lines.append(
                f"| {method} (ncuts map) | {_num(loc['pixel_ap_ncuts']['mean'])} | "
                f"{_num(loc.get('ciou_ncuts', {}).get('mean'))} |  |  |  |  |"
            )
    ref = REFERENCE.get(metrics["dataset"])
    if ref:
        lines.append(f"| authors' README (released model) | {_num(ref[0])} |  |  | {_num(ref[1])} |  |  |")
    return "\n".join(lines)


def write_markdown(path: Path, metrics: dict[str, Any]) -> None:
    """``metrics.md``: a heading with the counts, the table, and the unusable images."""
    counts: dict[str, Any] = next(iter(metrics["methods"].values()), {})
    head = (
        f"# Benchmark: {metrics['dataset']} ({metrics['images']} images; "
        f"{counts.get('spliced', 0)} spliced + {counts.get('authentic', 0)} authentic answered)\n\n"
        "p-mAP and cIoU over spliced images with a usable mask; detection mAP and ROC-AUC over "
        "spliced + authentic; n/a where a dataset has one class only.\n\n"
    )
    tail = ""
    if metrics["unusable"] or metrics["localization_skipped"]:
        tail = (
            f"\n\n{len(metrics['unusable'])} image(s) unusable, "
            f"{len(metrics['localization_skipped'])} without a usable mask: see metrics.json."
        )
    published = "\n\nAs PhotoHolmes / TruFor tables report them:\n\n" + published_table(metrics)
    path.write_text(head + markdown_table(metrics) + published + "\n\n" + NOTES + tail + "\n")
