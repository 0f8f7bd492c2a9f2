"""Synthetic camera corpus: determinism, valid JPEG + EXIF, per-camera JPEG/noise traits, scene independence."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyexiv2
import pytest
from PIL import Image, JpegImagePlugin
from scipy.ndimage import gaussian_filter

from exiflang.pipeline.synth import corpus as synth
from exiflang.pipeline.synth.camera import SUBSAMPLING, CameraModel, capture, encode_jpeg
from exiflang.pipeline.synth.params import make_cameras, n_makes
from exiflang.pipeline.synth.scene import render_scene

SIZE = (192, 144)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    assert (
        synth.main(
            [
                "--out",
                str(out),
                "--cameras",
                "4",
                "--images",
                "16",
                "--seed",
                "3",
                "--size",
                "192x144",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    return out


def test_layout_and_manifest(corpus: Path) -> None:
    rows = _rows(corpus)
    assert len(rows) == 16 and [int(r["index"]) for r in rows] == list(range(16))
    assert set(synth.MANIFEST_FIELDS) <= set(rows[0])
    for r in rows:
        assert r["file"] == synth.file_name(int(r["camera"]), int(r["index"]))
        assert (corpus / r["file"]).is_file()
    counts = Counter(int(r["camera"]) for r in rows)
    assert sorted(counts.values()) == [4, 4, 4, 4]  # balanced assignment
    cams = json.loads((corpus / "cameras.json").read_text())["cameras"]
    assert len(cams) == 4 and all("qtables" in c and "iso_set" in c for c in cams)


def test_deterministic_and_worker_independent(corpus: Path, tmp_path: Path) -> None:
    synth.write_corpus(tmp_path / "b", 4, 16, 3, SIZE, workers=2, progress=False)
    for r in _rows(corpus):
        assert (corpus / r["file"]).read_bytes() == (tmp_path / "b" / r["file"]).read_bytes()
    assert (corpus / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    synth.write_corpus(tmp_path / "c", 4, 4, 4, SIZE, workers=1, progress=False)
    other = {r["index"]: (tmp_path / "c" / r["file"]).read_bytes() for r in _rows(tmp_path / "c")}
    ours = {r["index"]: (corpus / r["file"]).read_bytes() for r in _rows(corpus)}
    assert all(other[i] != ours[i] for i in other)


def test_indices_write_the_same_files_and_larger_sizes_keep_the_cameras(corpus: Path, tmp_path: Path) -> None:
    assert (
        synth.main(
            [
                "--out",
                str(tmp_path / "s"),
                "--cameras",
                "4",
                "--images",
                "16",
                "--seed",
                "3",
                "--size",
                "192x144",
                "--indices",
                "10:13",
                "--workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = _rows(tmp_path / "s")
    assert [int(r["index"]) for r in rows] == [10, 11, 12]
    full = {r["index"]: r for r in _rows(corpus)}
    for r in rows:  # the very files (and manifest rows) a full run writes at those indices
        assert r == full[r["index"]]
        assert (tmp_path / "s" / r["file"]).read_bytes() == (corpus / r["file"]).read_bytes()
    small = synth.make_cameras(3, 4, None, 384, 640)
    large = synth.make_cameras(3, 4, None, 768, 1024)
    for a, b in zip(small, large):
        assert b.width > a.width and b.height > a.height
        da, db = a.to_dict(), b.to_dict()
        for key in ("width", "height"):
            da.pop(key), db.pop(key)
        assert da == db  # only the sensor size differs: same cameras, larger photos
    assert synth.main(["--out", str(tmp_path / "t"), "--images", "16", "--indices", "10:20"]) == 2
    assert synth.main(["--out", str(tmp_path / "t"), "--images", "16", "--indices", "5"]) == 2  # usage error


def test_jpeg_and_exif_match_manifest(corpus: Path) -> None:
    for r in _rows(corpus):
        data = (corpus / r["file"]).read_bytes()
        with Image.open(corpus / r["file"]) as im:
            assert im.format == "JPEG" and im.size == (int(r["width"]), int(r["height"]))
            im.load()
        with pyexiv2.ImageData(data) as img:
            exif = img.read_exif()
        assert len(exif) >= 25
        assert exif["Exif.Image.Make"] == r["make"] and exif["Exif.Image.Model"] == r["model"]
        assert exif["Exif.Photo.ISOSpeedRatings"] == r["iso"]
        assert exif["Exif.Photo.ExposureTime"] == r["exposure_time"]
        assert exif["Exif.Photo.PixelXDimension"] == r["width"]
        # Exposure is physically consistent: the EV the settings give is the scene EV minus
        # the compensation, up to the camera's shutter-stop and range limits.
        n, t = float(r["f_number"]), float(eval(r["exposure_time"]))  # "1/200"
        ev_set = math.log2(n * n / t) - math.log2(int(r["iso"]) / 100)
        target = float(r["scene_ev"]) - float(eval(r["exposure_bias"]))
        assert abs(ev_set - target) < 1.2, r


def test_qtables_and_subsampling_follow_camera_config(corpus: Path) -> None:
    cams = json.loads((corpus / "cameras.json").read_text())["cameras"]
    seen: dict[int, tuple] = {}
    for r in _rows(corpus):
        cam = cams[int(r["camera"])]
        with Image.open(corpus / r["file"]) as im:
            q = im.quantization
            sampling = JpegImagePlugin.get_sampling(im)
        assert [list(q[0]), list(q[1])] == [list(t) for t in cam["qtables"]]
        assert sampling == cam["subsampling"], (SUBSAMPLING[sampling], cam["subsampling_name"])
        seen[int(r["camera"])] = (tuple(q[0]), tuple(q[1]))
    assert len(set(seen.values())) == len(seen) == 4


def test_qtables_unique_for_many_cameras() -> None:
    cams = make_cameras(11, 50, SIZE)
    assert len({c.qtables for c in cams}) == 50
    assert len({c.model for c in cams}) == 50
    assert len({c.make for c in cams}) == n_makes(50) < 50
    assert all(70 <= c.jpeg_quality <= 98 for c in cams)


def test_sizes_default_range() -> None:
    for cam in make_cameras(2, 12):
        assert 384 <= cam.width <= 640 and min(cam.width, cam.height) >= 128
        assert cam.width * 3 == cam.height * 4


def _flat_noise(cam: CameraModel, iso: int) -> float:
    """High-pass std of a uniformly grey scene shot at ``iso`` and decoded from the JPEG."""
    flat = np.full((2 * cam.height, 2 * cam.width, 3), 0.18, np.float32)
    rgb = capture(cam, flat, iso, 1.0, np.random.default_rng(0))
    with Image.open(io.BytesIO(encode_jpeg(cam, rgb))) as im:
        y = np.asarray(im.convert("L"), np.float32)[16:-16, 16:-16]
    return float((y - gaussian_filter(y, 3)).std())


def test_noise_grows_with_iso() -> None:
    for cam in make_cameras(5, 4, SIZE):
        isos = [cam.iso_set[0], cam.iso_set[len(cam.iso_set) // 2], cam.iso_set[-1]]
        noise = [_flat_noise(cam, iso) for iso in isos]
        assert noise[0] < noise[1] < noise[2], (cam.model, isos, noise)


def _small_grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L").resize((16, 12), Image.BOX), np.float64)


def test_scene_independent_of_camera() -> None:
    cams = make_cameras(7, 8, None, 256, 448)
    a = cams[0]
    b = next(c for c in cams if c.width != a.width and c.make != a.make)  # a very different camera
    for index in (0, 1, 2):
        ia, ib = (_small_grey(synth.make_image(c, 7, index)[2]) for c in (a, b))
        assert np.corrcoef(ia.ravel(), ib.ravel())[0, 1] > 0.85
    other = _small_grey(synth.make_image(b, 7, 9)[2])
    same = _small_grey(synth.make_image(a, 7, 0)[2])
    assert np.corrcoef(other.ravel(), same.ravel())[0, 1] < 0.8
    # The scene itself, at two resolutions: same low-frequency content.
    lo, _ = render_scene(7, 4, 96, 128)
    hi, _ = render_scene(7, 4, 288, 384)
    hi = hi.reshape(96, 3, 128, 3, 3).mean(axis=(1, 3))
    assert np.corrcoef(gaussian_filter(lo, (4, 4, 0)).ravel(), gaussian_filter(hi, (4, 4, 0)).ravel())[0, 1] > 0.97


def test_cli_rejects_tiny_images(tmp_path: Path) -> None:
    assert synth.main(["--out", str(tmp_path), "--size", "160x120", "--images", "1"]) == 2
    assert not (tmp_path / "manifest.csv").exists()


def _features(rgb: np.ndarray) -> np.ndarray:
    """Hand-crafted low-level statistics of uint8 HxWx3: noise level and its spectrum
    (sharpening, noise reduction), chroma vs luma noise, colour balance, tone percentiles,
    8x8 blockiness."""
    x = rgb.astype(np.float32)
    y = x @ np.float32([0.299, 0.587, 0.114])
    c = x - y[..., None]
    r1, r2 = y - gaussian_filter(y, 1.0), y - gaussian_filter(y, 2.5)
    rc = c - gaussian_filter(c, (1.0, 1.0, 0))
    n1 = np.log(r1.std() + 1e-3)
    f = [
        n1,
        np.log(r2.std() + 1e-3) - n1,
        np.log(rc.std(axis=(0, 1)) + 1e-3) - n1,
        [np.corrcoef(r1[:, :-1].ravel(), r1[:, 1:].ravel())[0, 1], np.corrcoef(r1[:-1].ravel(), r1[1:].ravel())[0, 1]],
        np.log(x.mean(axis=(0, 1)) + 1) - np.log(x.mean() + 1),
        np.percentile(y, [1, 50, 99]) / 255,
        [np.abs(c).mean() / (y.mean() + 1)],
    ]
    d = np.abs(np.diff(y, axis=1)).mean(axis=0)
    f.append([d[7::8].mean() / (d.mean() + 1e-6)])
    return np.concatenate([np.ravel(v) for v in f])


@pytest.mark.slow
def test_cameras_separable_by_low_level_stats() -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cams = make_cameras(21, 4, SIZE)
    xs, ys = [], []
    for i in range(64):
        data, _, _ = synth.make_image(cams[i % 4], 21, i)
        with Image.open(io.BytesIO(data)) as im:
            xs.append(_features(np.asarray(im.convert("RGB"))))
        ys.append(i % 4)
    model = make_pipeline(StandardScaler(), sklearn.LogisticRegression(C=1.0, max_iter=2000))
    acc = cross_val_score(model, np.array(xs), np.array(ys), cv=4).mean()
    assert acc > 0.5, acc  # chance is 0.25 (this seed: ~0.7)
