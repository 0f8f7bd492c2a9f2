"""Synthetic radial distortion (geometry against the formula and a scipy reference) and the k1 probe."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from exiflang.eval.probes import distortion as dist
from exiflang.eval.probes import distortion_probe as dp


def _reference_root(r_d: float, k1: float) -> float:
    """Smallest non-negative real root of k1 r^3 + r - r_d (numpy's polynomial roots), NaN if none."""
    roots = np.roots([k1, 0.0, 1.0, -r_d]) if k1 else np.array([r_d])
    real = [r.real for r in roots if abs(r.imag) < 1e-9 and r.real >= -1e-12]
    return min(real) if real else math.nan


@pytest.mark.parametrize("k1", [-0.4, -0.25, -0.05, -1e-6, 0.2])
def test_undistorted_radius_matches_polynomial_roots(k1):
    r_d = np.linspace(0.0, 1.0, 41)
    got = dist.undistorted_radius(r_d, k1)
    want = np.array([_reference_root(r, k1) for r in r_d])
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.allclose(got[ok], want[ok], atol=1e-9)
    assert (np.isnan(got).any()) == (k1 < 0 and dist.fold_radius(k1) < 1.0)


@pytest.mark.parametrize("shape", [(37, 52, 3), (64, 64, 3), (1, 5, 1)])
def test_zero_k1_is_the_identity(shape):
    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    assert np.array_equal(dist.distort(img, 0.0), img)
    assert np.array_equal(dist.distort(img.astype(np.float32), 0.0), img.astype(np.float32))


def test_pixel_mapping_follows_the_formula():
    """On a float ramp image (value = x, then value = y) bilinear sampling is exact, so each
    output pixel's value is the source coordinate it sampled; check it against the model."""
    h, w, k1 = 81, 121, -0.3
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = dist.distort(np.stack([xx, yy], axis=-1), k1, fill="zero")
    cy, cx, radius = (h - 1) / 2, (w - 1) / 2, 0.5 * math.hypot(h, w)
    for i, j in [(10, 15), (40, 100), (70, 60), (5, 118), (40, 60)]:
        r_d = math.hypot(i - cy, j - cx) / radius
        r_u = _reference_root(r_d, k1)
        if math.isnan(r_u):  # beyond the fold (r_d > 0.703 for k1 = -0.3): no source, filled with 0
            assert r_d > dist.fold_radius(k1) and (out[i, j] == 0).all()
            continue
        ratio = r_u / r_d if r_d > 0 else 1.0
        sy, sx = cy + (i - cy) * ratio, cx + (j - cx) * ratio
        # the forward model maps the source point back onto this output pixel
        assert abs(r_u * (1 + k1 * r_u**2) - r_d) < 1e-9
        if 0 <= sy <= h - 1 and 0 <= sx <= w - 1:
            assert out[i, j, 0] == pytest.approx(sx, abs=1e-3)
            assert out[i, j, 1] == pytest.approx(sy, abs=1e-3)
    # barrel: off-centre pixels sample further out than themselves (r_u > r_d)
    assert out[10, 15, 0] < 15 and out[10, 15, 1] < 10


def test_straight_line_bends_outwards_for_barrel():
    h, w, row = 201, 301, 40
    img = np.zeros((h, w, 3), np.float32)
    img[row] = 255.0  # a horizontal line 60 px above the centre
    out = dist.distort(img, -0.3, fill="zero")
    radius, cy = 0.5 * math.hypot(h, w), (h - 1) / 2

    def line_row(col: int) -> float:  # intensity-weighted row of the line in one column
        column = out[:, col, 0].astype(np.float64)
        return float((column * np.arange(h)).sum() / column.sum())

    centre_col, side_col = (w - 1) // 2, 40
    # centre column: the source point (row 40) lands at r_d = r_u (1 + k1 r_u^2)
    r_u = (cy - row) / radius
    expected = cy - radius * r_u * (1 - 0.3 * r_u**2)
    assert line_row(centre_col) == pytest.approx(expected, abs=0.05)
    assert line_row(centre_col) > row  # pulled towards the centre
    assert line_row(side_col) > line_row(centre_col) + 3  # ends pulled in more: the line bows out
    assert np.isclose(line_row(side_col), line_row(w - 1 - side_col), atol=1e-3)  # symmetric
    pincushion = dist.distort(img, 0.3, fill="zero")
    col = pincushion[:, side_col, 0].astype(np.float64)
    assert (col * np.arange(h)).sum() / col.sum() < row  # the opposite way for k1 > 0


@pytest.mark.parametrize("fill, mode", [("zero", "grid-constant"), ("reflect", "mirror")])
def test_bilinear_sampler_matches_scipy(fill, mode):
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(23, 31, 3)).astype(np.float32)
    ys, xs = rng.uniform(-5, 28, size=(17, 19)), rng.uniform(-5, 36, size=(17, 19))
    got = dist.sample_bilinear(img, ys, xs, fill)
    want = np.stack(
        [map_coordinates(img[..., c].astype(np.float64), [ys, xs], order=1, mode=mode, cval=0.0) for c in range(3)],
        axis=-1,
    )
    assert np.allclose(got, want, atol=1e-3)


def test_bins_cover_the_range():
    edges = np.linspace(-0.4, 0.0, 21)
    assert dist.k1_bins(np.array([-0.4, -0.3999, -0.2, -1e-9, 0.0])).tolist() == [0, 0, 10, 19, 19]
    assert dist.k1_bins(edges[:-1] + 1e-9).tolist() == list(range(20))
    assert np.allclose(dist.bin_centres(), (edges[:-1] + edges[1:]) / 2)
    k1 = np.random.default_rng(2).uniform(-0.4, 0.0, 5000)
    centres = dist.bin_centres()[dist.k1_bins(k1)]
    assert np.abs(centres - k1).max() <= 0.01 + 1e-12


def test_probe_geometry_never_needs_fill():
    radius, context = dist.probe_geometry(512)
    assert context % 2 == 0 and context <= 768  # the smallest photos in shared/data have 768
    for k1 in (-0.4, -0.2, 0.0):
        ys, xs = dist.source_coordinates((512, 512), (context, context), k1, radius)
        assert not np.isnan(ys).any()
        assert ys.min() >= 0 and xs.min() >= 0 and ys.max() <= context - 2 and xs.max() <= context - 2


def test_make_probe_set_crops_labels_and_skips(tmp_path):
    rng = np.random.default_rng(3)
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, size=(300, 340, 3), dtype=np.uint8)).save(big)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((200, 260, 3), np.uint8)).save(small)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    ps = dist.make_probe_set([small, big, broken], n_per_photo=3, seed=5, crop=160)
    assert ps.crops.shape == (3, 160, 160, 3) and ps.crops.dtype == np.uint8
    assert ps.photo.tolist() == [1, 1, 1]
    assert ((ps.k1 >= -0.4) & (ps.k1 < 0)).all() and ps.bins.tolist() == dist.k1_bins(ps.k1).tolist()
    assert len(ps.skipped) == 2 and "small.png" in ps.skipped[0] and "context" in ps.skipped[0]
    assert "broken.jpg" in ps.skipped[1]
    again = dist.make_probe_set([big], n_per_photo=3, seed=5, crop=160)  # keyed on the file name
    assert np.array_equal(again.crops, ps.crops) and np.array_equal(again.k1, ps.k1)


def _synthetic_features(n: int, rng: np.random.Generator, informative: bool):
    k1 = rng.uniform(-0.4, 0.0, n)
    noise = rng.normal(size=(n, 16))
    if informative:  # k1 written linearly into a few directions, plus noise
        noise[:, :4] += (k1[:, None] / 0.4) * np.array([40.0, -30.0, 20.0, 35.0])
    return noise, k1


def test_probe_beats_majority_on_informative_features_and_not_on_noise():
    rng = np.random.default_rng(4)
    f_tr, k_tr = _synthetic_features(2000, rng, True)
    f_te, k_te = _synthetic_features(1000, rng, True)
    good = dp.probe(f_tr, dist.k1_bins(k_tr), f_te, dist.k1_bins(k_te), k1_test=k_te)
    assert good["accuracy"] > 0.3 > 2 * good["majority"]
    assert good["within_one_bin"] > 0.8 and good["mae_k1"] < 0.03 < good["mae_k1_majority"]
    f_tr, k_tr = _synthetic_features(2000, rng, False)
    f_te, k_te = _synthetic_features(1000, rng, False)
    noise = dp.probe(f_tr, dist.k1_bins(k_tr), f_te, dist.k1_bins(k_te), k1_test=k_te)
    assert abs(noise["accuracy"] - noise["majority"]) < 0.03 and noise["chance"] == 0.05
    with pytest.raises(ValueError):
        dp.probe(f_tr[:0], k_tr[:0], f_te, dist.k1_bins(k_te))


def test_split_by_camera_keeps_models_apart(photos_dir):
    photos = sorted(photos_dir.glob("*.jpg"))
    train, test = dp.split_photos(photos, "camera", 0.5, seed=0)
    keys = dict(zip(photos, dp.camera_keys(photos)))
    assert len(train) + len(test) == len(photos) and train and test
    assert not {keys[p] for p in train} & {keys[p] for p in test}
    assert len(set(keys.values())) == 80  # 80 camera models, per the data README


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    from exiflang.train.model import ExifClip, ModelConfig
    from exiflang.train.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer("auto", None, max_length=64)
    model = ExifClip(ModelConfig.preset("cpu-small", vocab_size=len(tok)))
    out = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(out, tok, {"tags": ["Make", "Model"], "hash": "x"})
    return out


def _smallest_photos(photos_dir, n):
    return sorted(photos_dir.glob("*.jpg"), key=lambda p: p.stat().st_size)[:n]


def test_end_to_end_on_real_photos(tiny_model, photos_dir):
    """The pooled 256-d ResNet feature of whole crops (the command test covers ``embed``)."""
    photos = _smallest_photos(photos_dir, 4)
    res = dp.run_distortion_probe(
        tiny_model, photos[:2], photos[2:], per_photo=3, seed=0, features="pooled", device="cpu", progress=False
    )
    assert res["n_train"] == 6 and res["n_test"] == 6 and res["photos_test"] == 2
    assert 0 <= res["accuracy"] <= 1 and 0 <= res["majority"] <= 1 and res["skipped"] == []
    assert res["feature_dim"] == 256 and res["features"] == "pooled"
    with pytest.raises(ValueError, match="both splits"):
        dp.run_distortion_probe(tiny_model, photos[:2], photos[1:], per_photo=1, progress=False)


def test_command_writes_json_and_reports_bad_input(tiny_model, photos_dir, tmp_path, capsys):
    photo_dir = tmp_path / "photos"
    photo_dir.mkdir()
    for p in _smallest_photos(photos_dir, 3):
        (photo_dir / p.name).symlink_to(p)
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out"
    rc = dp.main(
        [
            "--model",
            str(tiny_model),
            "--photos",
            str(photo_dir),
            "--out",
            str(out),
            "--per-photo",
            "2",
            "--split",
            "photo",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    res = json.loads((out / "distortion.json").read_text())
    assert res["n_train"] + res["n_test"] == 6 and len(res["skipped"]) == 1
    assert res["features"] == "embed" and res["feature_dim"] == 128  # 4x4 patch-embedding mean
    assert "broken.jpg" in res["skipped"][0] and "accuracy" in capsys.readouterr().out
    rc = dp.main(["--model", str(tmp_path / "nope"), "--photos", str(photo_dir), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nope" in err and len(err.splitlines()) == 1
    assert dp.main(["--random-init", "cpu-small", "--photos", str(tmp_path / "empty"), "--out", str(out)]) == 2


def test_batched_grid_embeddings_match_embed_photo(tiny_model):
    from exiflang.eval.embed.patches import PatchEmbedder
    from exiflang.train.model import ExifClip

    embedder = PatchEmbedder(ExifClip.from_pretrained(tiny_model).model, device="cpu", batch_size=20)
    crops = np.random.default_rng(6).integers(0, 256, size=(3, 200, 200, 3), dtype=np.uint8)
    got = dp.grid_embeddings(embedder, crops)
    want = np.stack([embedder.embed_photo(c, 124, 4).numpy() for c in crops])
    assert got.shape == (3, 128) and np.allclose(got, want, atol=1e-5)


def test_camera_keys_fall_back_to_exif_then_file_name(tmp_path):
    paths = []
    for i, (make, model) in enumerate([("Acme", "One"), ("Acme", "Two"), ("Acme", "One"), (None, None)]):
        exif = Image.Exif()
        if make:
            exif[0x010F], exif[0x0110] = make, model
        p = tmp_path / f"p{i}.jpg"
        Image.new("RGB", (8, 8)).save(p, exif=exif)
        paths.append(p)
    assert dp.camera_keys(paths) == ["Acme One", "Acme Two", "Acme One", "file:p3.jpg"]
    train, test = dp.split_photos(paths, "camera", 0.5, seed=1)
    assert {p.name for p in train} & {p.name for p in test} == set()
    assert ({"p0.jpg", "p2.jpg"} <= {p.name for p in train}) or ({"p0.jpg", "p2.jpg"} <= {p.name for p in test})
    with pytest.raises(ValueError, match="at least 2"):
        dp.split_photos(paths[:1], "camera")
