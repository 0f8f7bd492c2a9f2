"""make-splices: random regions, pixel-exact pastes between cameras, masks, manifest, determinism, bad photos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exiflang.eval.benchmark.regions import SHAPES, draw_region
from exiflang.eval.benchmark.splices import main, make_splices
from exiflang.eval.images import load_rgb

RNG = np.random.default_rng(0)


def write_photo(path: Path, h: int, w: int, make: str | None, model: str | None) -> None:
    """A JPEG of random pixels with the given EXIF Make/Model (None leaves the tag out)."""
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    arr = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, "JPEG", quality=90, exif=exif.tobytes())


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """3 cameras x 3 photos of assorted sizes, plus three unusable files."""
    folder = tmp_path_factory.mktemp("photos")
    sizes = [(300, 400), (280, 420), (320, 320)]
    for c, (make, model) in enumerate([("Acme", "Acme A1"), ("Acme", "Acme B2"), ("Zeta", "Z9")]):
        for i, (h, w) in enumerate(sizes):
            write_photo(folder / f"cam{c}_{i}.jpg", h + 10 * c, w - 10 * i, make, model)
    write_photo(folder / "nomodel.jpg", 300, 300, "Acme", None)
    write_photo(folder / "small.jpg", 200, 400, "Acme", "Acme A1")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def read_manifest(out: Path) -> list[dict[str, str]]:
    with (out / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("seed", range(12))
def test_regions_cover_the_asked_share_inside_the_window(seed):
    rng = np.random.default_rng(seed)
    for _ in range(5):
        r = draw_region(rng, 240, 320)
        assert r.mask.shape == (240, 320) and r.mask.dtype == bool
        assert 0.05 <= r.area_fraction <= 0.40 and r.shape in SHAPES
        assert r.area_fraction == pytest.approx(r.mask.mean())
        y0, x0, y1, x1 = r.box
        assert r.mask[y0:y1, x0:x1].sum() == r.mask.sum()  # the box holds every True pixel


def test_regions_every_shape_and_determinism_and_fallback():
    seen = {draw_region(np.random.default_rng(s), 200, 200).shape for s in range(40)}
    assert seen == set(SHAPES)
    a = draw_region(np.random.default_rng(7), 200, 300, shapes=("polygon",))
    b = draw_region(np.random.default_rng(7), 200, 300, shapes=("polygon",))
    assert a.shape == "polygon" and np.array_equal(a.mask, b.mask)
    # A range random shapes rarely hit on a 10x10 window still ends inside it (the fallback: a
    # centred 6x6 rectangle, 0.36).
    for s in range(5):
        r = draw_region(np.random.default_rng(s), 10, 10, area=(0.355, 0.365))
        assert 0.355 <= r.area_fraction <= 0.365
    with pytest.raises(ValueError, match="area range"):
        draw_region(np.random.default_rng(0), 10, 10, area=(0.5, 0.2))
    with pytest.raises(ValueError, match="shapes"):
        draw_region(np.random.default_rng(0), 10, 10, shapes=("star",))


def test_spliced_pixels_come_from_host_and_donor_windows_exactly(photos, tmp_path, capsys):
    out = tmp_path / "set"
    settings = make_splices([photos], out, count=6, seed=3, authentic=4, progress=False)
    err = capsys.readouterr().err
    assert "nomodel.jpg: no camera Model in its EXIF" in err
    assert "small.jpg: 400x200 is smaller than the minimum side 256" in err
    assert "broken.jpg" in err and len(settings["skipped"]) == 3
    assert settings["cameras"] == {"Acme A1": 3, "Acme B2": 3, "Zeta Z9": 3}
    rows = read_manifest(out)
    assert [r["kind"] for r in rows] == ["spliced"] * 6 + ["authentic"] * 4
    for r in rows:
        img = load_rgb(out / r["image"])
        assert img.shape[:2] == (int(r["height"]), int(r["width"]))
        host = load_rgb(r["host_file"])
        hy, hx = map(int, r["host_window"].split())
        h, w = img.shape[:2]
        host_win = host[hy : hy + h, hx : hx + w]
        if r["kind"] == "authentic":
            assert r["mask"] == "" and r["donor_file"] == ""
            assert np.array_equal(img, host_win)
            continue
        mask = np.asarray(Image.open(out / r["mask"]))
        assert set(np.unique(mask)) <= {0, 255}
        m = mask == 255
        assert 0.05 <= m.mean() <= 0.40 and float(r["area_fraction"]) == pytest.approx(m.mean(), abs=1e-4)
        donor = load_rgb(r["donor_file"])
        dy, dx = map(int, r["donor_origin"].split())
        y0, x0, y1, x1 = map(int, r["box"].split())
        assert m[y0:y1, x0:x1].sum() == m.sum()
        assert np.array_equal(img[~m], host_win[~m])
        inside = m[y0:y1, x0:x1]
        assert np.array_equal(img[y0:y1, x0:x1][inside], donor[dy : dy + y1 - y0, dx : dx + x1 - x0][inside])
        assert (r["host_make"], r["host_model"]) != (r["donor_make"], r["donor_model"])
        assert (h, w) == host.shape[:2]  # no --max-side crop at these sizes: the whole host
    assert json.loads((out / "settings.json").read_text())["written"] == 10


def test_same_seed_same_bytes_other_seed_differs(photos, tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        make_splices([photos], tmp_path / name, count=3, seed=seed, authentic=1, progress=False)
    a, b, c = (read_manifest(tmp_path / n) for n in "abc")
    assert a == b and a != c
    for r in a:
        assert (tmp_path / "a" / r["image"]).read_bytes() == (tmp_path / "b" / r["image"]).read_bytes()


def test_max_side_crops_and_never_resizes(photos, tmp_path):
    make_splices([photos], tmp_path / "s", count=3, seed=1, authentic=2, max_side=260, progress=False)
    for r in read_manifest(tmp_path / "s"):
        img, host = load_rgb(tmp_path / "s" / r["image"]), load_rgb(r["host_file"])
        assert img.shape[:2] == (min(260, host.shape[0]), min(260, host.shape[1]))
        hy, hx = map(int, r["host_window"].split())
        if r["kind"] == "authentic":  # a crop: the pixels are the photo's own
            assert np.array_equal(img, host[hy : hy + img.shape[0], hx : hx + img.shape[1]])


def test_region_box_fits_a_small_donor():
    rng = np.random.default_rng(0)
    for _ in range(20):
        r = draw_region(rng, 600, 800, area=(0.05, 0.40), fit=(260, 300))
        y0, x0, y1, x1 = r.box
        assert y1 - y0 <= 260 and x1 - x0 <= 300 and 0.05 <= r.area_fraction <= 0.40
    # 5 % of 1000x1000 cannot come from a 100x100 donor.
    with pytest.raises(ValueError, match="fits in 100x100"):
        draw_region(rng, 1000, 1000, fit=(100, 100))


def test_cli_errors_exit_2_and_force_rebuilds(photos, tmp_path, capsys):
    one_cam = tmp_path / "one"
    one_cam.mkdir()
    for i in range(2):
        write_photo(one_cam / f"p{i}.jpg", 300, 300, "Acme", "Acme A1")
    assert main(["--photos", str(one_cam), "--out", str(tmp_path / "x"), "--count", "2", "--no-progress"]) == 2
    assert "a splice needs two models" in capsys.readouterr().err
    out = tmp_path / "y"
    args = ["--photos", str(photos), "--out", str(out), "--count", "2", "--no-progress"]
    assert main(args) == 0
    assert "2 spliced + 2 authentic" in capsys.readouterr().out
    assert main(args) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(args + ["--force", "--count", "1", "--authentic", "0"]) == 0
    assert sorted(p.name for p in (out / "spliced").iterdir()) == ["spliced_0000.png"]
    assert (
        main(
            ["--photos", str(photos), "--out", str(out), "--count", "0", "--authentic", "0", "--force", "--no-progress"]
        )
        == 2
    )
    assert main(args + ["--force", "--min-area", "0.5", "--max-area", "0.2"]) == 2
    assert "area range" in capsys.readouterr().err


def test_photo_whose_pixels_do_not_decode_is_reported_and_replaced(tmp_path, capsys):
    folder = tmp_path / "p"
    folder.mkdir()
    write_photo(folder / "a_good.jpg", 300, 300, "Acme", "Acme A1")
    write_photo(folder / "a_cut.jpg", 300, 300, "Acme", "Acme A1")
    data = (folder / "a_cut.jpg").read_bytes()
    (folder / "a_cut.jpg").write_bytes(data[: len(data) // 2])  # EXIF and header intact
    write_photo(folder / "b_good.jpg", 300, 300, "Zeta", "Z9")
    settings = make_splices([folder], tmp_path / "out", count=2, authentic=2, seed=0, progress=False)
    assert any("a_cut.jpg: pixel data does not decode" in s for s in settings["skipped"])
    assert "a_cut.jpg: pixel data does not decode" in capsys.readouterr().err
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == 4 and not any("a_cut" in r["host_file"] + r["donor_file"] for r in rows)
