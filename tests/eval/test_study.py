"""`make study` in miniature: a tiny synthetic corpus through every stage of eval/study.py.

Four synthetic cameras, 720-px photos (the distortion probe needs 702-px context windows), two
training steps per variant: what is checked is that the study's plumbing runs end to end and
writes its table, not the numbers (the README reports a real run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exiflang.eval.study import main as study_main
from exiflang.pipeline.synth import corpus as synth


@pytest.mark.integration
@pytest.mark.slow
def test_study_end_to_end_on_a_tiny_corpus(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    assert (
        synth.main(
            [
                "--out",
                str(photos),
                "--cameras",
                "4",
                "--images",
                "16",
                "--seed",
                "1",
                "--size",
                "720x720",
                "--no-progress",
            ]
        )
        == 0
    )
    out = tmp_path / "study"
    args = [
        "--photos",
        str(photos),
        "--out",
        str(out),
        "--steps",
        "2",
        "--splices",
        "2",
        "--per-photo",
        "1",
        "--per-side",  # a coarse grid: the plumbing is what is checked here, not the maps
        "8",
        "--test-fraction",
        "0.5",
        "-q",
    ]
    assert study_main(args) == 0
    results = json.loads((out / "results.json").read_text())
    split = results["split"]
    assert results["per_side"] == 8
    assert not set(split["train"]["cameras"]) & set(split["test"]["cameras"])
    assert set(results["methods"]) == {"exif", "cropclr", "model-tag", "untrained", "NOI (hand-crafted)"}
    for name in ("exif", "cropclr", "model-tag", "untrained"):
        r = results["methods"][name]
        assert r["splices"]["spliced"] == 2 and "average" in r["tags"] and "accuracy" in r["distortion"]
    assert results["methods"]["cropclr"]["tags"]["average"]["zero_shot"] is None  # no text tower
    table = (out / "results.md").read_text()
    assert table.count("\n|") >= 6 and "paper (full-scale YFCC" in table
    train_s = results["training_seconds"]
    assert set(train_s) == {"exif", "cropclr", "model-tag"} and all(v > 0 for v in train_s.values())
    assert "Compute: " in table and "minutes (median step time x steps)" in table
    first = json.loads((out / "timings.json").read_text())
    assert study_main(args) == 0  # a rerun reuses every finished stage ...
    again = json.loads((out / "timings.json").read_text())
    assert set(again) == set(first)  # ... and adds its (short) time to each stage's record
    assert all(again[k] >= first[k] for k in first)
    assert again["train exif"] - first["train exif"] < 0.5 * first["train exif"] + 1
