"""Detection verdicts: percentiles and bands against a reference of authentic scores, the
`calibrate` command, verdicts in detect's outputs, and splice outlines drawn only for "spliced"."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exiflang.commands import calibrate, detect
from exiflang.eval.forensics.calibration import REFERENCE, judge, load_reference, reference_from_scores, save_reference
from exiflang.eval.forensics.detect import write_outputs
from exiflang.eval.forensics.detector import Detector
from exiflang.eval.forensics.overlay import MEANSHIFT_RGB, NCUTS_RGB

SETTINGS = {"patch": 124, "per_side": 3, "legacy_negative": False, "tau": 0.01}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from exiflang.train.model import ExifClip, ModelConfig

    torch.manual_seed(0)
    return ExifClip(ModelConfig.preset("cpu-small")).save_pretrained(tmp_path_factory.mktemp("m") / "model")


def spliced(seed: int = 0, h: int = 200, w: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.tile(np.linspace(40, 200, w, dtype=np.float32)[None, :, None], (h, 1, 3)).astype(np.uint8)
    img[40:120, 60:160] = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    return img


def reference(values, settings=SETTINGS):
    return reference_from_scores([{"score_mean_dist": float(v), "score_exp": -float(v)} for v in values], settings)


def test_percentile_and_bands_on_a_known_reference():
    ref = reference(range(100))  # 0, 1, ..., 99
    assert ref.percentile(49.5) == 50.0 and ref.percentile(-1) == 0.0 and ref.percentile(1000) == 100.0
    assert ref.percentile(10) == pytest.approx(10.5)  # ties count half
    cases = {
        5.0: "authentic",
        89.0: "authentic",
        90.2: "inconclusive",
        97.6: "inconclusive",
        98.6: "spliced",
        99.5: "spliced",
        500.0: "spliced",
    }
    for score, want in cases.items():
        pct, verdict, why = judge({"score_mean_dist": score}, ref, SETTINGS)
        assert verdict == want, (score, pct)
        assert 0 <= pct <= 100 and "authentic photos" in why


def test_unknown_without_a_usable_reference():
    assert judge({"score_mean_dist": 1.0}, None, SETTINGS)[:2] == (None, "unknown")
    assert judge({"score_mean_dist": 1.0}, reference(range(5)), SETTINGS)[:2] == (None, "unknown")
    pct, verdict, why = judge({"score_mean_dist": 1.0}, reference(range(50)), {**SETTINGS, "per_side": 30})
    assert (pct, verdict) == (None, "unknown") and "per_side" in why


def test_reference_round_trip_and_damaged_file(tmp_path):
    ref = reference(np.linspace(0, 1, 20))
    save_reference(tmp_path, ref)
    back = load_reference(tmp_path)
    assert back.photos == 20 and back.band == (90.0, 99.0) and back.settings == SETTINGS
    np.testing.assert_array_equal(back.scores["score_mean_dist"], ref.scores["score_mean_dist"])
    assert load_reference(tmp_path / "nothing") is None
    (tmp_path / REFERENCE).write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match=REFERENCE):
        load_reference(tmp_path)


def _coloured(png: Path, rgb) -> int:
    return int(np.all(np.asarray(Image.open(png).convert("RGB")) == rgb, axis=-1).sum())


def test_overlay_outlines_only_a_spliced_verdict(tiny_model, tmp_path):
    det = Detector(tiny_model, per_side=3, device="cpu")
    rgb = spliced()
    score = det.detect(rgb).scores["score_mean_dist"]
    drawn = {}
    for verdict, refs in {
        "spliced": np.linspace(0, score * 0.5, 20),
        "authentic": np.linspace(score * 2, score * 3, 20),
    }.items():
        det.reference = reference(refs, det.settings)
        res = det.detect(rgb)
        assert res.verdict == verdict and res.mask.any()
        assert res.percentile == (100.0 if verdict == "spliced" else 0.0)
        rec = write_outputs(res, rgb, tmp_path, verdict)
        assert rec["verdict"] == verdict and rec["reference"]["photos"] == 20
        drawn[verdict] = _coloured(tmp_path / f"{verdict}.png", MEANSHIFT_RGB) + _coloured(
            tmp_path / f"{verdict}.png", NCUTS_RGB
        )
        with np.load(tmp_path / f"{verdict}.npz") as z:
            assert str(z["verdict"]) == verdict and float(z["percentile"]) == res.percentile
    assert drawn["spliced"] > 100 and drawn["authentic"] == 0


def test_calibrate_then_detect_gives_verdicts(tiny_model, tmp_path, capsys):
    photos = tmp_path / "authentic"
    photos.mkdir()
    for i in range(12):
        Image.fromarray(spliced(seed=i)).save(photos / f"p{i:02d}.png")
    Image.fromarray(spliced()[:, :, 0]).save(photos / "p00_mask.png")  # a ground-truth mask: left out
    assert (
        calibrate.main(
            ["--model", str(tiny_model), "--photos", str(photos), "--patches-per-side", "3", "--device", "cpu"]
        )
        == 0
    )
    assert "12 authentic photos scored" in capsys.readouterr().out
    doc = json.loads((tiny_model / REFERENCE).read_text())
    assert doc["photos"] == 12 and doc["settings"]["per_side"] == 3
    out = tmp_path / "out"
    assert (
        detect.main(["--model", str(tiny_model), str(photos / "p03.png"), "--out", str(out), "--patches-per-side", "3"])
        == 0
    )
    rec = json.loads((out / "results.jsonl").read_text())
    assert rec["verdict"] in ("authentic", "inconclusive", "spliced") and 0 <= rec["percentile"] <= 100
    # Another grid: the reference does not apply.
    assert (
        detect.main(
            [
                "--model",
                str(tiny_model),
                str(photos / "p03.png"),
                "--out",
                str(out),
                "--patches-per-side",
                "2",
                "--force",
            ]
        )
        == 0
    )
    rec = json.loads((out / "results.jsonl").read_text())
    assert rec["verdict"] == "unknown" and "per_side" in rec["verdict_reason"]
    # Too few photos: one line, exit 2, nothing replaced.
    assert (
        calibrate.main(
            [
                "--model",
                str(tiny_model),
                "--photos",
                str(photos / "p01.png"),
                "--patches-per-side",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "at least 10" in capsys.readouterr().err
    assert json.loads((tiny_model / REFERENCE).read_text())["photos"] == 12
