"""benchmark harness: outputs, resume, bad items, NOI end to end, and the trained model's "it must work" bar."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exiflang.eval.benchmark.command import COMMAND, benchmark_config, main
from exiflang.eval.benchmark.datasets import read_dataset
from exiflang.eval.benchmark.run import ROW_FORMAT, interleave, run_benchmark
from exiflang.eval.benchmark.settings import BenchmarkConfig
from exiflang.eval.forensics.noi import NoiDetector
from exiflang.eval.forensics.settings import DetectorConfig

RNG = np.random.default_rng(0)
H, W = 256, 320


def scene() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    phase = RNG.uniform(0, 6)
    return 128 + 50 * np.sin(xx / 30 + phase) * np.cos(yy / 45)


def save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).save(path)


def noise_splice_set(root: Path, n: int = 4) -> Path:
    """``n`` spliced (a rectangle with strong extra noise) + ``n`` authentic grey-ish PNGs, manifest."""
    rows = [["name", "kind", "image", "mask"]]
    for i in range(n):
        grey = scene() + RNG.normal(0, 1.0, (H, W))
        m = np.zeros((H, W), bool)
        y, x = RNG.integers(0, 100), RNG.integers(0, 140)
        m[y : y + 120, x : x + 150] = True
        grey[m] += RNG.normal(0, 8.0, m.sum())
        save(np.repeat(grey[:, :, None], 3, 2), root / "spliced" / f"s{i}.png")
        save(m * 255.0, root / "masks" / f"s{i}.png")
        rows.append([f"s{i}", "spliced", f"spliced/s{i}.png", f"masks/s{i}.png"])
        save(np.repeat((scene() + RNG.normal(0, 1.0, (H, W)))[:, :, None], 3, 2), root / "authentic" / f"a{i}.png")
        rows.append([f"a{i}", "authentic", f"authentic/a{i}.png", ""])
    with (root / "manifest.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from exiflang.train.model import ExifClip, ModelConfig

    torch.manual_seed(0)
    return ExifClip(ModelConfig.preset("cpu-small")).save_pretrained(tmp_path_factory.mktemp("m") / "model")


def test_noi_end_to_end_finds_noisy_splices(tmp_path):
    root = noise_splice_set(tmp_path / "set")
    metrics = run_benchmark(None, "folder", root, tmp_path / "out", methods=["noi"], progress=False)
    noi = metrics["methods"]["noi"]
    assert (noi["images"], noi["spliced"], noi["authentic"]) == (8, 4, 4)
    assert noi["p_map"] > 0.9 and noi["ciou"] > 0.7
    assert noi["detection"]["score_noi"]["ap"] == 1.0 and noi["detection"]["score_noi"]["roc_auc"] == 1.0
    rows = read_csv(tmp_path / "out" / "per_image.csv")
    assert len(rows) == 8 and {r["method"] for r in rows} == {"noi"}
    assert all((r["pixel_ap"] != "") == (r["spliced"] == "1") for r in rows)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["methods"]["noi"]["p_map"] == pytest.approx(noi["p_map"])
    table = (tmp_path / "out" / "metrics.md").read_text()
    assert "| noi |" in table and "score_noi (default)" in table


def test_exif_and_noi_outputs_maps_and_cli(tiny_model, tmp_path, capsys):
    root = noise_splice_set(tmp_path / "set", n=1)
    out = tmp_path / "out"
    rc = main(
        [
            "--model",
            str(tiny_model),
            "--dataset",
            "folder",
            "--root",
            str(root),
            "--out",
            str(out),
            "--patches-per-side",
            "3",
            "--save-maps",
            "--no-progress",
        ]
    )
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "| exif |" in stdout and "| noi |" in stdout and "score_mean_dist (default)" in stdout
    rows = read_csv(out / "per_image.csv")
    assert len(rows) == 4
    exif = next(r for r in rows if r["method"] == "exif" and r["name"] == "s0")
    for key in ("pixel_ap", "ciou", "pixel_ap_ncuts", "ciou_ncuts", "score_exp", "score_mean_dist", "seconds"):
        assert exif[key] != "", key
    assert 0.0 <= float(exif["pixel_ap"]) <= 1.0 and exif["score_noi"] == ""
    for method in ("exif", "noi"):
        for name in ("s0", "a0"):
            with np.load(out / "maps" / method / f"{name}.npz") as z:
                assert z["heatmap"].shape == (H, W) and z["mask"].dtype == bool and "detection" in z
            assert (out / "maps" / method / f"{name}.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]["exif"]["detection"]) == {"score_exp", "score_mean_dist"}
    assert metrics["methods"]["exif"]["localization"]["pixel_ap_ncuts"]["count"] == 1


def test_resume_skips_done_pairs_force_redoes_and_settings_clash(tmp_path, monkeypatch, capsys):
    root = noise_splice_set(tmp_path / "set", n=2)
    calls = []
    real = NoiDetector.detect
    monkeypatch.setattr(NoiDetector, "detect", lambda self, rgb: calls.append(1) or real(self, rgb))
    out = tmp_path / "out"
    kwargs = dict(methods=["noi"], progress=False)
    first = run_benchmark(None, "folder", root, out, **kwargs)
    assert len(calls) == 4
    run_benchmark(None, "folder", root, out, **kwargs)
    assert len(calls) == 4  # everything was already there
    rows = read_csv(out / "per_image.csv")
    with (out / "per_image.csv").open("w", newline="") as fh:  # forget one row
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[1:])
    again = run_benchmark(None, "folder", root, out, **kwargs)
    assert len(calls) == 5 and len(read_csv(out / "per_image.csv")) == 4
    assert again["methods"]["noi"]["p_map"] == pytest.approx(first["methods"]["noi"]["p_map"])
    run_benchmark(None, "folder", root, out, force=True, **kwargs)
    assert len(calls) == 9
    with pytest.raises(ValueError, match=r"other settings \(noi_block\)"):
        run_benchmark(None, "folder", root, out, noi_block=4, **kwargs)
    # Rows of an older format (a settings.json from before row_format) are redone, not resumed.
    settings = json.loads((out / "settings.json").read_text())
    assert settings["row_format"] == ROW_FORMAT
    del settings["row_format"]
    (out / "settings.json").write_text(json.dumps(settings))
    run_benchmark(None, "folder", root, out, **kwargs)
    assert len(calls) == 13 and "older format" in capsys.readouterr().err
    assert json.loads((out / "settings.json").read_text())["row_format"] == ROW_FORMAT
    run_benchmark(None, "folder", root, out, **kwargs)
    assert len(calls) == 13


def test_bad_images_and_masks_are_reported_and_the_rest_answered(tmp_path, capsys):
    root = noise_splice_set(tmp_path / "set", n=2)
    save(np.zeros((10, 10)), root / "masks" / "s1.png")  # wrong size
    (root / "authentic" / "a1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # corrupt
    with (root / "manifest.csv").open("a", newline="") as fh:
        csv.writer(fh).writerow(["gone", "authentic", "authentic/gone.png", ""])
    rc = main(
        ["--dataset", "folder", "--root", str(root), "--out", str(tmp_path / "out"), "--method", "noi", "--no-progress"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "a1.png: not a readable image" in err and "gone.png: no such file" in err
    assert "s1.png: mask is 10x10 but its image is 320x256; localization skipped" in err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert sorted(b["name"] for b in metrics["unusable"]) == ["a1", "gone"]
    assert [m["name"] for m in metrics["localization_skipped"]] == ["s1"]
    noi = metrics["methods"]["noi"]
    assert (noi["spliced"], noi["authentic"]) == (2, 1)  # s1 still counts for detection
    assert noi["localization"]["pixel_ap"]["count"] == 1 and noi["detection"]["score_noi"]["count"] == 3


def test_limit_interleaves_classes_and_usage_errors(tmp_path, capsys):
    root = noise_splice_set(tmp_path / "set", n=3)
    items = interleave(read_dataset("folder", root))
    assert [i.spliced for i in items] == [True, False] * 3
    m = run_benchmark(None, "folder", root, tmp_path / "o", methods=["noi"], limit=2, progress=False)
    assert (m["methods"]["noi"]["spliced"], m["methods"]["noi"]["authentic"]) == (1, 1)
    base = ["--dataset", "folder", "--out", str(tmp_path / "o2"), "--no-progress"]
    assert main(base + ["--root", str(root)]) == 2  # exif is a default method: needs --model
    assert "method exif needs --model" in capsys.readouterr().err
    assert main(base + ["--root", str(tmp_path / "nope"), "--method", "noi"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(base + ["--root", str(root), "--method", "sift"]) == 2
    assert main(base + ["--root", str(root), "--model", str(tmp_path), "--method", "exif"]) == 2


def test_settings_from_the_command_line_and_overrides():
    base = ["--dataset", "folder", "--root", "r", "--out", "o"]
    config = benchmark_config(COMMAND.parser().parse_args(base + ["--method", "noi, exif", "--no-ncuts"]))
    assert config.methods == ("noi", "exif") and config.detector == DetectorConfig(ncuts=False)
    paper = benchmark_config(COMMAND.parser().parse_args(base + ["--grid", "paper", "--device", "cpu"]))
    assert (paper.detector.per_side, paper.detector.device, paper.progress) == (25, "cpu", True)
    # Detector settings by name go to .detector; the rest stay; a wrong name is refused.
    changed = BenchmarkConfig().replace(per_side=7, noi_block=4, methods=["noi"])
    assert (changed.detector.per_side, changed.noi_block, changed.methods) == (7, 4, ("noi",))
    with pytest.raises(TypeError, match="per_sid"):
        BenchmarkConfig().replace(per_sid=7)


# "It must work": held-out synthetic splices between synthetic cameras, fixed seeds, from the
# shared run's held-out shots at 768-1024 px (tests/synth_run.py: splice_photos).
# Measured with the shared run (cpu-small, 64-px crops, 1600 steps; tests/synth_run.py) on this
# exact set: p-mAP 0.740, cIoU 0.750, detection AP 0.785 (score_exp) / 0.863 (score_mean_dist,
# the default score); on 2026-12-07 with the code of then 0.744 / - / 0.755 / 0.851.  The
# preset's own recipe at 800 steps scored 0.710 / 0.720 / 0.759 / 0.874 here (docs/results.md).
# Perfect patch embeddings reach p-mAP 0.97 here.  The floors guard this level with a margin
# (chance: detection AP 0.5, p-AP about the splice share, 0.05-0.40).  The 0.8 bar on p-mAP and
# detection AP is asked of the ~20-minute run (tests/eval/test_splice_bar.py, make test-bar).
FLOOR_P_MAP, FLOOR_DET_AP, FLOOR_DET_AP_MEAN_DIST = 0.6, 0.68, 0.78
# The soft normalized-cuts map of the same run on this set: p-mAP 0.885 (cIoU 0.824; 0.862 on
# 2026-12-07); on two larger sets (48 spliced, seeds 1 and 2) 0.787 and 0.715 vs the mean-shift
# map's 0.717 / 0.722.
FLOOR_P_MAP_NCUTS = 0.75
PER_SIDE = 10  # ~90 patches per image instead of ~700 (n = 30): the suite's time budget


@pytest.fixture(scope="module")
def heldout_benchmark(synth_run, tmp_path_factory) -> dict:
    from exiflang.eval.benchmark.splices import make_splices

    root = tmp_path_factory.mktemp("heldout_splices")
    make_splices([synth_run.splice_photos], root / "set", count=24, authentic=24, seed=0, progress=False)
    torch.manual_seed(0)
    config = BenchmarkConfig(
        methods=("exif", "noi"), detector=DetectorConfig(per_side=PER_SIDE, device="cpu"), progress=False
    )
    metrics = run_benchmark(synth_run.model, "folder", root / "set", root / "out", config)
    report = {
        m: {
            "p_map": s["p_map"],
            "ciou": s["ciou"],
            "p_map_ncuts": s["localization"].get("pixel_ap_ncuts", {}).get("mean"),
            **{k: v["ap"] for k, v in s["detection"].items()},
        }
        for m, s in metrics["methods"].items()
    }
    print(json.dumps(report, indent=1))
    return metrics


@pytest.mark.slow
def test_trained_model_localizes_and_detects_heldout_splices_above_chance(heldout_benchmark):
    exif, noi = heldout_benchmark["methods"]["exif"], heldout_benchmark["methods"]["noi"]
    assert (exif["spliced"], exif["authentic"]) == (24, 24) and noi["images"] == 48
    assert exif["localization"]["pixel_ap"]["count"] == 24
    assert exif["p_map"] >= FLOOR_P_MAP
    assert exif["localization"]["pixel_ap_ncuts"]["mean"] >= FLOOR_P_MAP_NCUTS
    assert exif["detection"]["score_exp"]["ap"] >= FLOOR_DET_AP
    assert exif["detection"]["score_mean_dist"]["ap"] >= FLOOR_DET_AP_MEAN_DIST
    # The score the detector reports by default is the one with the higher floor.
    assert exif["default_score"] == "score_mean_dist"
    assert exif["p_map"] > noi["p_map"]  # the learned model beats the hand-crafted baseline
