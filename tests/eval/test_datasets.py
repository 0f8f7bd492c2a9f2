"""Dataset readers: tiny files written in each benchmark's exact layout and mask convention."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exiflang.eval.benchmark.datasets import DATASETS, MaskError, load_mask, read_dataset
from exiflang.eval.images import load_rgb

H, W = 60, 80
RNG = np.random.default_rng(0)
BOX = (slice(10, 40), slice(20, 60))  # the spliced rectangle of every fixture mask


def truth() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[BOX] = True
    return m


def image(path: Path, h: int = H, w: int = W) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def mask_file(path: Path, inside, outside, mode: str = "RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (H, W, 3) if mode == "RGB" else (H, W)
    arr = np.empty(shape, np.uint8)
    arr[...] = outside
    arr[BOX] = inside
    Image.fromarray(arr, mode).save(path, **save)
    return path


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def check(items, name, spliced, mask_name=None):
    item = next(i for i in items if i.name == name)
    assert item.spliced is spliced and item.image.is_file()
    assert (item.mask.name if item.mask else None) == mask_name
    return item


def test_columbia_green_jpeg_edgemask(tmp_path):
    root = tmp_path / "Columbia Uncompressed"
    image(root / "4cam_auth" / "canong3_02_sub_01.tif")
    image(root / "4cam_splc" / "canong3_canonxt_sub_01.tif")
    image(root / "4cam_splc" / "canong3_nikond70_sub_09.tif")  # its mask is missing
    # Columbia's masks: the splice green ((0,255,0) here, (0,200,0) in others), the rest red, saved as JPEG.
    mask_file(
        root / "4cam_splc" / "edgemask" / "canong3_canonxt_sub_01_edgemask.jpg", (0, 255, 0), (255, 0, 0), quality=75
    )
    mask_file(root / "4cam_splc" / "edgemask" / "other_edgemask.jpg", (0, 200, 0), (255, 0, 0), quality=75)
    items = read_dataset("columbia", tmp_path)  # the wrapper folder is found one level down
    assert len(items) == 3
    check(items, "canong3_02_sub_01", False)
    item = check(items, "canong3_canonxt_sub_01", True, "canong3_canonxt_sub_01_edgemask.jpg")
    check(items, "canong3_nikond70_sub_09", True, None)
    m = load_mask(item.mask, (H, W, 3), "columbia")
    assert iou(m, truth()) > 0.95
    dark = load_mask(root / "4cam_splc" / "edgemask" / "other_edgemask.jpg", (H, W), "columbia")
    assert iou(dark, truth()) > 0.95


def test_dso1_black_marks_the_splice(tmp_path):
    root = tmp_path / "tifs-database"
    image(root / "DSO-1" / "normal-01.png")
    image(root / "DSO-1" / "splicing-01.png")
    mask_file(root / "DSO-1-Fake-Images-Masks" / "splicing-01.png", (0, 0, 0), (255, 255, 255))
    items = read_dataset("dso1", root)
    assert sorted((i.name, i.spliced) for i in items) == [("normal-01", False), ("splicing-01", True)]
    item = check(items, "splicing-01", True, "splicing-01.png")
    assert np.array_equal(load_mask(item.mask, (H, W), "dso1"), truth())


def test_rt_per_camera_non_black_ground_truth(tmp_path):
    root = tmp_path / "data-images"
    for cam in ("Canon_60D", "Sony_A57"):
        image(root / cam / "pristine" / "r0a5c2b44t.TIF")
        image(root / cam / "tampered-realistic" / "r0a5c2b44t.TIF")
        mask_file(root / cam / "ground-truth" / "r0a5c2b44t.PNG", 128, 0, mode="L")
    items = read_dataset("rt", tmp_path)  # root or its wrapper
    assert len(items) == 4 and len({i.name for i in items}) == 4
    item = check(items, "Sony_A57_tampered_r0a5c2b44t", True, "r0a5c2b44t.PNG")
    check(items, "Sony_A57_pristine_r0a5c2b44t", False)
    assert np.array_equal(load_mask(item.mask, (H, W), "rt"), truth())


def test_rt_real_sample_mask(shared_data):
    folder = shared_data / "forensics" / "realistic-tampering-sample"
    shape = load_rgb(folder / "DSC06083.TIF").shape
    m = load_mask(folder / "DSC06083_mask.PNG", shape, "rt")
    assert m.shape == (1080, 1920) and m.mean() == pytest.approx(0.0786, abs=0.0005)


def test_inthewild_and_hays_white_masks(tmp_path):
    wild = tmp_path / "label_in_wild"
    image(wild / "images" / "a.jpg")
    image(wild / "images" / "b.jpg")
    mask_file(wild / "masks" / "a.png", 1, 0, mode="L")  # non-zero counts, even 1
    items = read_dataset("inthewild", tmp_path)
    assert all(i.spliced for i in items) and len(items) == 2
    item = check(items, "a", True, "a.png")
    check(items, "b", True, None)
    assert np.array_equal(load_mask(item.mask, (H, W), "white"), truth())
    hays = tmp_path / "hays"
    image(hays / "img1.jpg")
    mask_file(hays / "img1_mask.jpg", 255, 0, mode="L", quality=70)  # JPEG noise below 128 is ignored
    items = read_dataset("hays", hays)
    assert [(i.name, i.mask.name) for i in items] == [("img1", "img1_mask.jpg")]
    assert iou(load_mask(items[0].mask, (H, W), "white"), truth()) > 0.95


def test_folder_with_and_without_manifest(tmp_path):
    root = tmp_path / "set"
    image(root / "spliced" / "spliced_0000.png")
    image(root / "authentic" / "authentic_0000.png")
    mask_file(root / "masks" / "spliced_0000.png", 255, 0, mode="L")
    without = read_dataset("folder", root)
    assert [(i.name, i.spliced, i.mask is not None) for i in without] == [
        ("spliced_0000", True, True),
        ("authentic_0000", False, False),
    ]
    with (root / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerows(
            [
                ["name", "kind", "image", "mask"],
                ["s0", "spliced", "spliced/spliced_0000.png", "masks/spliced_0000.png"],
                ["a0", "authentic", "authentic/authentic_0000.png", ""],
            ]
        )
    items = read_dataset("folder", root)
    assert [(i.name, i.spliced) for i in items] == [("s0", True), ("a0", False)]
    assert np.array_equal(load_mask(items[0].mask, (H, W), "white"), truth())


def test_bad_masks_and_layouts_give_one_line_errors(tmp_path):
    small = mask_file(tmp_path / "m.png", 255, 0, mode="L")
    with pytest.raises(MaskError, match=r"m\.png: mask is 80x60 but its image is 100x60"):
        load_mask(small, (60, 100, 3), "white")
    empty = mask_file(tmp_path / "e.png", 0, 0, mode="L")
    with pytest.raises(MaskError, match="marks no spliced pixel"):
        load_mask(empty, (H, W), "white")
    (tmp_path / "junk.png").write_bytes(b"nope")
    with pytest.raises(MaskError, match=r"junk\.png: not a readable image"):
        load_mask(tmp_path / "junk.png", (H, W), "white")
    with pytest.raises(ValueError, match="mask convention"):
        load_mask(small, (H, W), "purple")
    for name in DATASETS:
        with pytest.raises(ValueError, match=f"no {name} images found") as err:
            read_dataset(name, _empty(tmp_path))
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no such folder"):
        read_dataset("columbia", tmp_path / "missing")
    with pytest.raises(ValueError, match="expected one of"):
        read_dataset("casia", tmp_path)


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "emptydir"
    d.mkdir(exist_ok=True)
    return d
