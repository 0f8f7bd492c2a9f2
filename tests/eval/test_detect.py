"""`exiflang detect`: outputs and their keys, rerun/--force, bad inputs per file, exit codes, a
4000x3000 photo end to end, the legacy-negative transform, and the PNG overlay helpers.

The command tests use a tiny random-init `cpu-small` model folder (only the image tower is
used) and few patches per side, so each run takes a second or two.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exiflang.commands import detect
from exiflang.eval.forensics.detector import Detector, legacy_negative
from exiflang.eval.forensics.maps import full_maps
from exiflang.eval.forensics.overlay import RAMP, colorize, outline, render_overlay

RNG = np.random.default_rng(0)
NPZ_KEYS = {
    "detection",
    "scores_score_exp",
    "scores_score_mean_dist",
    "percentile",
    "verdict",
    "image_size",
    "cell_map",
    "ncuts_cell_map",
    "ncuts_cells",
    "grid_ys",
    "grid_xs",
    "patch",
}
FULL_KEYS = {"heatmap", "mask", "ncuts_mask", "ncuts_heatmap"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from exiflang.train.model import ExifClip, ModelConfig

    torch.manual_seed(0)
    model = ExifClip(ModelConfig.preset("cpu-small", cropclr=True))  # detect reads the image tower only
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "model")


def noise(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def spliced(h: int = 200, w: int = 300) -> np.ndarray:
    """Smooth host with a noisy rectangle pasted in: something for the maps to find."""
    img = np.tile(np.linspace(40, 200, w, dtype=np.float32)[None, :, None], (h, 1, 3)).astype(np.uint8)
    img[40:120, 60:160] = noise(80, 100)
    return img


def run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = detect.main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def states(stdout: str) -> dict[str, str]:
    """The summary table's name -> status column."""
    rows = [line.split(" | ") for line in stdout.splitlines() if line.count(" | ") == 9]
    return {r[0].strip(): r[-1].strip() for r in rows[1:]}


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_outputs_have_the_documented_keys_and_shapes(tiny_model, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(spliced()).save(src / "a.png")
    Image.fromarray(noise(180, 260)).save(src / "b.jpg", quality=90)
    rc, stdout, _ = run(
        ["--model", str(tiny_model), str(src), "--out", str(tmp_path / "out"), "--patches-per-side", "4"], capsys
    )
    assert rc == 0
    assert "score_exp" in stdout and "splice area %" in stdout and states(stdout) == {"a": "done", "b": "done"}
    for name, (h, w) in {"a": (200, 300), "b": (180, 260)}.items():
        with np.load(tmp_path / "out" / f"{name}.npz") as z:
            assert set(z.files) == NPZ_KEYS
            assert tuple(z["image_size"]) == (h, w) and str(z["verdict"]) == "unknown"
            assert np.isnan(z["percentile"])
            rows_cols = z["cell_map"].shape
            assert z["ncuts_cells"].shape == rows_cols and z["ncuts_cells"].dtype == bool
            assert z["ncuts_cell_map"].shape == rows_cols and z["ncuts_cell_map"].dtype == np.float32
            maps = full_maps(z)
            assert maps["heatmap"].shape == (h, w) and maps["heatmap"].dtype == np.float32
            assert maps["heatmap"].min() >= 0.0 and maps["heatmap"].max() <= 1.0
            assert maps["mask"].shape == (h, w) and maps["mask"].dtype == bool
            assert maps["ncuts_mask"].shape == (h, w) and maps["ncuts_mask"].dtype == bool
            assert maps["ncuts_heatmap"].shape == (h, w) and maps["ncuts_heatmap"].dtype == np.float32
            assert maps["ncuts_heatmap"].min() >= 0.0 and maps["ncuts_heatmap"].max() <= 1.0
            assert float(z["detection"]) == pytest.approx(float(z["scores_score_mean_dist"]), rel=1e-6)
            assert int(z["patch"]) == 124
            stride = (max(h, w) - 124) // 4
            assert list(z["grid_ys"]) == list(range(0, h - 124 + 1, stride))
            assert list(z["grid_xs"]) == list(range(0, w - 124 + 1, stride))
        png = Image.open(tmp_path / "out" / f"{name}.png")
        assert png.mode == "RGB" and max(png.size) <= 1600
    recs = {r["name"]: r for r in results(tmp_path / "out")}
    assert set(recs) == {"a", "b"} and all(r["status"] == "ok" for r in recs.values())
    rec = recs["a"]
    assert (rec["width"], rec["height"]) == (300, 200)
    assert set(rec["scores"]) == {"score_exp", "score_mean_dist"}
    assert {"load", "embed", "votes", "meanshift", "ncuts", "write", "total"} <= set(rec["timings"])
    assert rec["timings"]["total"] >= rec["timings"]["embed"] > 0
    assert rec["patches"] == rec["grid"]["rows"] * rec["grid"]["cols"]
    assert rec["verdict"] == "unknown" and rec["percentile"] is None and rec["maps"] == "cells"
    assert rec["model_card"] == ""  # the tiny model folder has no card
    with np.load(rec["outputs"]["npz"]) as z:
        assert rec["splice_fraction"] == pytest.approx(float(full_maps(z)["mask"].mean()), abs=1e-3)


def test_npz_maps_equal_what_the_detector_computes(tiny_model, tmp_path, capsys):
    """The cells in the npz rebuild the detector's own image-size maps; --full-maps stores them as computed."""
    img = tmp_path / "a.png"
    rgb = spliced()
    Image.fromarray(rgb).save(img)
    res = Detector(tiny_model, per_side=4, device="cpu").detect(rgb)
    assert (
        run(
            ["--model", str(tiny_model), str(img), "--out", str(tmp_path / "cells"), "--patches-per-side", "4"], capsys
        )[0]
        == 0
    )
    assert (
        run(
            [
                "--model",
                str(tiny_model),
                str(img),
                "--out",
                str(tmp_path / "full"),
                "--patches-per-side",
                "4",
                "--full-maps",
            ],
            capsys,
        )[0]
        == 0
    )
    with np.load(tmp_path / "cells" / "a.npz") as z, np.load(tmp_path / "full" / "a.npz") as f:
        assert set(f.files) == NPZ_KEYS | FULL_KEYS
        np.testing.assert_array_equal(z["cell_map"], res.cell_map)
        np.testing.assert_array_equal(z["ncuts_cell_map"], res.ncuts_cell_map)
        np.testing.assert_array_equal(z["ncuts_cells"], res.ncuts_cells)
        assert float(z["scores_score_mean_dist"]) == res.scores["score_mean_dist"]
        for key in FULL_KEYS:  # stored as computed
            np.testing.assert_array_equal(f[key], getattr(res, key))
        rebuilt = full_maps(z)
        # Exact but for float32 rounding where the detector flipped its map after resizing.
        np.testing.assert_allclose(rebuilt["heatmap"], res.heatmap, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(rebuilt["ncuts_heatmap"], res.ncuts_heatmap)
        np.testing.assert_array_equal(rebuilt["ncuts_mask"], res.ncuts_mask)
        differ = rebuilt["mask"] != res.mask
        assert np.all(np.abs(res.heatmap[differ] - 0.5) < 1e-6)
    assert (tmp_path / "cells" / "a.npz").stat().st_size < (tmp_path / "full" / "a.npz").stat().st_size / 5


def test_rerun_skips_force_redoes_and_new_settings_redo(tiny_model, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(spliced()).save(img)
    out = tmp_path / "out"
    base = ["--model", str(tiny_model), str(img), "--out", str(out), "--patches-per-side", "3"]
    assert run(base, capsys)[0] == 0
    first = (out / "x.npz").stat().st_mtime_ns
    rc, stdout, _ = run(base, capsys)
    assert rc == 0 and states(stdout) == {"x": "skipped"}
    assert (out / "x.npz").stat().st_mtime_ns == first
    assert len(results(out)) == 1
    rc, stdout, _ = run(base + ["--force"], capsys)
    assert rc == 0 and states(stdout) == {"x": "done"}
    assert (out / "x.npz").stat().st_mtime_ns != first
    # Other settings are not "already done": --no-ncuts redoes it and drops the ncuts mask.
    rc, stdout, _ = run(base + ["--no-ncuts"], capsys)
    assert rc == 0 and states(stdout) == {"x": "done"}
    with np.load(out / "x.npz") as z:
        assert not {"ncuts_mask", "ncuts_heatmap", "ncuts_cells", "ncuts_cell_map"} & set(z.files)
    (rec,) = results(out)
    assert rec["settings"]["ncuts"] is False and rec["timings"].get("ncuts", 0.0) < 0.01
    # A deleted output means the image is redone.
    (out / "x.png").unlink()
    rc, stdout, _ = run(base + ["--no-ncuts"], capsys)
    assert rc == 0 and states(stdout) == {"x": "done"} and (out / "x.png").is_file()


def test_same_stem_in_two_folders_gets_unique_names(tiny_model, tmp_path, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.fromarray(spliced()).save(tmp_path / d / "photo.png")
    out = tmp_path / "out"
    args = [
        "--model",
        str(tiny_model),
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        "--out",
        str(out),
        "--patches-per-side",
        "2",
    ]
    assert run(args, capsys)[0] == 0
    names = {r["name"]: r["path"] for r in results(out)}
    assert set(names) == {"photo", "photo-2"}
    assert names["photo"].endswith("a/photo.png") and names["photo-2"].endswith("b/photo.png")
    # Only b, later: it keeps its name and a's outputs are not overwritten.
    rc, stdout, _ = run(
        ["--model", str(tiny_model), str(tmp_path / "b"), "--out", str(out), "--patches-per-side", "2"], capsys
    )
    assert rc == 0 and states(stdout) == {"photo-2": "skipped"}
    assert len(results(out)) == 2


def _bad_inputs(folder: Path) -> dict[str, bool]:
    """Write one file of each awkward kind -> name -> whether it should be answered."""
    folder.mkdir()
    rgb = spliced()
    Image.fromarray(rgb).save(folder / "good.jpg", quality=92)
    Image.fromarray(rgb[:, :, 0]).save(folder / "grey.png")  # 8-bit grayscale
    grey16 = (np.linspace(0, 65535, 200 * 300).reshape(200, 300)).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.tif")  # mode I;16
    assert Image.open(folder / "grey16.tif").mode.startswith("I;16")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=90)  # CMYK JPEG
    Image.fromarray(rgb).save(folder / "rgb.tif")  # 8-bit TIFF
    data = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])  # cut mid-scan
    Image.fromarray(noise(100, 300)).save(folder / "tiny.png")  # < one patch high
    (folder / "text.jpg").write_text("not an image at all\n")
    (folder / "empty.png").write_bytes(b"")
    Image.fromarray(noise(124, 124)).save(folder / "one_patch.png")  # exactly one patch
    return {
        "good": True,
        "grey": True,
        "grey16": True,
        "cmyk": True,
        "rgb": True,
        "truncated": False,
        "tiny": False,
        "text": False,
        "empty": False,
        "one_patch": True,
    }


def test_bad_inputs_are_reported_per_file_and_the_rest_answered(tiny_model, tmp_path, capsys):
    expected = _bad_inputs(tmp_path / "in")
    out = tmp_path / "out"
    missing = tmp_path / "missing.jpg"
    rc, _, stderr = run(
        ["--model", str(tiny_model), str(tmp_path / "in"), str(missing), "--out", str(out), "--patches-per-side", "2"],
        capsys,
    )
    assert rc == 1
    recs = {r["name"]: r for r in results(out)}
    assert recs["missing"]["status"] == "error" and "no such file" in recs["missing"]["error"]
    for name, ok in expected.items():
        assert (recs[name]["status"] == "ok") is ok, recs[name]
        assert (out / f"{name}.npz").is_file() is ok
        if not ok:
            err = recs[name]["error"]
            assert "\n" not in err and name in err
            assert any(name in line and line.startswith("exiflang detect:") for line in stderr.splitlines())
    assert "smaller than one 124x124 patch" in recs["tiny"]["error"]
    # Grey and 16-bit grey come out as three equal channels: the same map as the RGB-repeated grey.
    with np.load(out / "grey16.npz") as z:
        assert tuple(z["image_size"]) == (200, 300)


def test_real_malformed_files_do_not_stop_the_batch(tiny_model, tmp_path, capsys, shared_data):
    folder = shared_data / "malformed"
    n = len(list(folder.glob("*.jpg")))
    rc, _, stderr = run(
        [
            "--model",
            str(tiny_model),
            str(folder),
            "--out",
            str(tmp_path / "out"),
            "--patches-per-side",
            "2",
            "--no-ncuts",
        ],
        capsys,
    )
    recs = results(tmp_path / "out")
    assert len(recs) == n
    ok = [r for r in recs if r["status"] == "ok"]
    bad = [r for r in recs if r["status"] == "error"]
    assert ok and bad and rc == 1
    assert len([line for line in stderr.splitlines() if line.startswith("exiflang detect:")]) == len(bad)
    for r in ok:
        with np.load(r["outputs"]["npz"]) as z:
            assert tuple(z["image_size"]) == (r["height"], r["width"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--patches-per-side", "7", "--grid", "paper"], "--grid paper"),
        (["--patch-size", "0"], "must be positive"),
        (["--max-side", "10"], "--max-side"),
        (["--device", "bogus"], "--device bogus"),
    ],
)
def test_usage_errors_exit_2(tiny_model, tmp_path, capsys, args, message):
    Image.fromarray(spliced()).save(tmp_path / "x.png")
    rc, _, stderr = run(
        ["--model", str(tiny_model), str(tmp_path / "x.png"), "--out", str(tmp_path / "o")] + args, capsys
    )
    assert rc == 2 and message in stderr and len(stderr.strip().splitlines()) == 1


def test_bad_model_no_inputs_and_all_failed_exit_2(tiny_model, tmp_path, capsys):
    Image.fromarray(spliced()).save(tmp_path / "x.png")
    rc, _, stderr = run(
        ["--model", str(tmp_path / "nomodel"), str(tmp_path / "x.png"), "--out", str(tmp_path / "o")], capsys
    )
    assert rc == 2 and "nomodel" in stderr and len(stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    rc, _, stderr = run(["--model", str(tiny_model), str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "no images" in stderr
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    rc, _, stderr = run(["--model", str(tiny_model), str(tmp_path / "bad.jpg"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "bad.jpg" in stderr


def test_outputs_inside_the_input_folder_are_not_read_back(tiny_model, tmp_path, capsys):
    Image.fromarray(spliced()).save(tmp_path / "x.png")
    args = [
        "--model",
        str(tiny_model),
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
        "--patches-per-side",
        "2",
        "--no-compress",
    ]
    assert run(args, capsys)[0] == 0
    assert run(args, capsys)[0] == 0
    assert [r["name"] for r in results(tmp_path / "out")] == ["x"]
    with zipfile.ZipFile(tmp_path / "out" / "x.npz") as zf:  # --no-compress: members stored as is
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}


def test_mask_files_in_a_folder_are_left_out_unless_asked_or_named(tiny_model, tmp_path, capsys):
    """RT, Hays, Columbia and CASIA keep masks beside or under their photos: not inputs."""
    src = tmp_path / "in"
    for rel in (
        "DSC1.png",
        "DSC1_mask.PNG",
        "c_edgemask.jpg",
        "y-GT.png",
        "masks/m.png",
        "ground-truth/g.png",
        "sub/photo.png",
    ):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(spliced(130, 180)).save(src / rel)
    base = ["--model", str(tiny_model), "--patches-per-side", "2", "--no-ncuts"]
    rc, stdout, stderr = run(base + [str(src), "--out", str(tmp_path / "o1")], capsys)
    assert rc == 0 and set(states(stdout)) == {"DSC1", "photo"}
    assert "left out 5 file(s) named like ground-truth masks" in stderr
    rc, stdout, _ = run(base + [str(src), "--out", str(tmp_path / "o2"), "--include-masks"], capsys)
    assert rc == 0 and len(states(stdout)) == 7
    # Named one by one, or a mask folder named itself: the user asked for exactly these.
    rc, stdout, stderr = run(
        base + [str(src / "DSC1_mask.PNG"), str(src / "masks"), "--out", str(tmp_path / "o3")], capsys
    )
    assert rc == 0 and set(states(stdout)) == {"DSC1_mask", "m"} and "left out" not in stderr


@pytest.mark.slow
def test_a_4000x3000_photo_end_to_end(tiny_model, tmp_path, capsys):
    """The authors' grid (n = 30) on a 12-MP JPEG: 31 x 23 = 713 patches, maps at full size."""
    img = tmp_path / "big.jpg"
    Image.fromarray(noise(3000, 4000)).save(img, quality=85)
    rc, _, _ = run(
        ["--model", str(tiny_model), str(img), "--out", str(tmp_path / "out"), "--batch-size", "128"], capsys
    )
    assert rc == 0
    (rec,) = results(tmp_path / "out")
    assert rec["patches"] == 713 and (rec["grid"]["rows"], rec["grid"]["cols"]) == (23, 31)
    # Maps on the cells by default: a few kB for a 12-MP photo (its full float32 heatmap is 48 MB).
    assert (tmp_path / "out" / "big.npz").stat().st_size < 64 * 1024
    with np.load(tmp_path / "out" / "big.npz") as z:
        maps = full_maps(z)
        assert maps["heatmap"].shape == (3000, 4000) and maps["mask"].shape == (3000, 4000)
        assert maps["ncuts_mask"].shape == (3000, 4000)
    assert 1590 <= Image.open(tmp_path / "out" / "big.png").size[0] <= 1600


def test_detector_api_and_default_tau(tiny_model):
    det = Detector(tiny_model, per_side=3, device="cpu")
    assert det.tau == pytest.approx(0.01, rel=1e-4)  # the fixed logit scale 100
    rgb = spliced()
    res = det.detect(rgb)
    assert res.heatmap.shape == (200, 300) and res.mask.shape == (200, 300)
    assert res.cell_map.ndim == 2 and res.grid.count == len(res.grid.ys) * len(res.grid.xs)
    assert {"embed", "votes", "meanshift", "ncuts", "total"} <= set(res.timings)
    from exiflang.train.model import ExifClip

    same = Detector.from_model(ExifClip.from_pretrained(tiny_model).model, per_side=3, device="cpu")
    again = same.detect(rgb)
    np.testing.assert_allclose(again.heatmap, res.heatmap, atol=1e-5)
    assert again.scores == pytest.approx(res.scores, abs=1e-6) and same.settings["model"] is None
    with pytest.raises(ValueError, match="smaller than one"):
        det.detect(noise(100, 400))
    with pytest.raises(ValueError, match="uint8"):
        det.detect(noise(200, 300).astype(np.float32))


def test_legacy_negative_matches_the_authors_topilimage_cast():
    """Float 0..255 through ToPILImage: ``pic.mul(255).byte()`` -- what torch really computes."""
    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    want = torch.from_numpy(values.astype(np.float32)).mul(255).byte().numpy()
    assert np.array_equal(legacy_negative(values), want)
    assert legacy_negative(values)[0, 1, 0] == 255 and legacy_negative(values)[0, 0, 0] == 0


def test_legacy_negative_changes_the_embeddings(tiny_model):
    rgb = spliced()
    plain = Detector(tiny_model, per_side=2, device="cpu", ncuts=False)
    legacy = Detector(tiny_model, per_side=2, device="cpu", ncuts=False, legacy_negative=True)
    grid = plain.grid_for(200, 300)
    a = plain.embedder.embed_grid(rgb, grid)
    b = legacy.embedder.embed_grid(legacy_negative(rgb), grid)
    assert not torch.allclose(a, b)
    assert legacy.settings["legacy_negative"] is True and plain.settings != legacy.settings


def test_colour_ramp_ends_and_monotone_lightness():
    v = colorize(np.linspace(0, 1, 101, dtype=np.float32)[None, :])[0].astype(float)
    assert np.array_equal(v[0], RAMP[0]) and np.array_equal(v[-1], RAMP[-1])
    luma = v @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luma) >= -1e-6)
    assert np.array_equal(colorize(np.array([[-3.0, np.nan, 7.0]]))[0], RAMP[[0, 0, -1]].astype(np.uint8))


def test_outline_marks_the_edge_not_the_inside():
    mask = np.zeros((100, 100), bool)
    mask[20:80, 30:70] = True
    edge = outline(mask, (100, 100), width=3)
    assert edge[20, 50] and edge[50, 30] and edge[79, 50]
    assert not edge[50, 50] and not edge[5, 5]


def test_render_overlay_fits_and_draws_both_outlines():
    rgb = np.full((600, 900, 3), 128, np.uint8)
    heat = np.zeros((600, 900), np.float32)
    mask = np.zeros((600, 900), bool)
    mask[100:300, 100:400] = True
    ncuts = np.zeros_like(mask)
    ncuts[350:550, 500:800] = True
    img = np.asarray(render_overlay(rgb, heat, mask, ncuts, "x", max_side=800))
    assert max(img.shape[:2]) <= 800
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert (0, 230, 255) in colours and (60, 255, 60) in colours
    with pytest.raises(ValueError, match="do not match"):
        render_overlay(rgb, heat[:10], mask)
