"""benchmark harness: PhotoHolmes/TruFor metrics in per_image.csv, metrics.json, metrics.md; resume from older CSVs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from exiflang.eval.benchmark.metrics import THRESHOLD_KEYS, ciou, threshold_metrics
from exiflang.eval.benchmark.run import run_benchmark
from exiflang.eval.forensics.noi import NoiDetector
from tests.eval.test_benchmark import noise_splice_set, read_csv


def test_noi_run_reports_the_published_metrics(tmp_path):
    root = noise_splice_set(tmp_path / "set", n=2)
    out = tmp_path / "out"
    metrics = run_benchmark(None, "folder", root, out, methods=["noi"], progress=False)
    noi = metrics["methods"]["noi"]
    rows = read_csv(out / "per_image.csv")
    for row in rows:  # spliced rows carry every new value
        assert all((row[k] != "") == (row["spliced"] == "1") for k in THRESHOLD_KEYS)
    spliced = [r for r in rows if r["spliced"] == "1"]
    for key in THRESHOLD_KEYS:  # per image, then the mean over spliced images
        assert noi["localization"][key]["count"] == 2
        assert noi["localization"][key]["mean"] == pytest.approx(np.mean([float(r[key]) for r in spliced]), rel=1e-5)
    loc = noi["localization"]
    assert loc["f1_best"]["mean"] >= loc["f1_fixed"]["mean"] and loc["f1_best"]["mean"] > 0.8
    assert loc["pixel_auc"]["mean"] > 0.9  # the NOI map finds the noisy rectangle
    assert noi["image_auroc"] == noi["detection"]["score_noi"]["roc_auc"] == 1.0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["methods"]["noi"]["localization"]["mcc_best"]["mean"] == pytest.approx(loc["mcc_best"]["mean"])
    assert "at least 0.5" in saved["notes"]
    table = (out / "metrics.md").read_text()
    assert "| method | p-mAP | cIoU |" in table  # the old table is still there
    line = next(t for t in table.splitlines() if t.startswith("| noi |") and "(score_noi)" in t)
    assert line.split(" | ")[1] == f"{loc['f1_best']['mean']:.3f}" and "1.000 (score_noi)" in line
    assert "at least 0.5" in table and "floor" in table


def test_resume_redoes_rows_from_a_csv_without_the_new_columns(tmp_path, monkeypatch):
    root = noise_splice_set(tmp_path / "set", n=2)
    calls = []
    real = NoiDetector.detect
    monkeypatch.setattr(NoiDetector, "detect", lambda self, rgb: calls.append(1) or real(self, rgb))
    out = tmp_path / "out"
    first = run_benchmark(None, "folder", root, out, methods=["noi"], progress=False)
    assert len(calls) == 4
    rows = read_csv(out / "per_image.csv")
    old_columns = [c for c in rows[0] if c not in THRESHOLD_KEYS]  # the CSV as written before
    with (out / "per_image.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=old_columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    again = run_benchmark(None, "folder", root, out, methods=["noi"], progress=False)
    assert len(calls) == 6  # the 2 spliced rows redone, the 2 authentic ones kept
    assert again["methods"]["noi"]["localization"]["f1_best"] == first["methods"]["noi"]["localization"]["f1_best"]
    assert again["methods"]["noi"]["p_map"] == pytest.approx(first["methods"]["noi"]["p_map"])
    assert all(r["f1_best"] != "" for r in read_csv(out / "per_image.csv") if r["spliced"] == "1")
    run_benchmark(None, "folder", root, out, methods=["noi"], progress=False)
    assert len(calls) == 6  # now complete: nothing redone


def test_ciou_floor_is_one_half_for_any_map():
    rng = np.random.default_rng(7)
    mask = np.zeros((20, 30), bool)
    mask[4:9, 6:20] = True
    assert ciou(np.full(mask.shape, 0.2), mask) == pytest.approx(0.5)
    for _ in range(5):
        assert ciou(rng.random(mask.shape), mask) >= 0.5
        assert ciou(rng.random(mask.shape), mask, mode="legacy") >= 0.5
    # The threshold metrics of a constant map sit at their chance level instead: MCC 0, AUC 0.5.
    flat = threshold_metrics(np.full(mask.shape, 0.2), mask)
    assert flat["mcc_best"] == 0.0 and flat["pixel_auc"] == 0.5 and flat["f1_fixed"] == 0.0
