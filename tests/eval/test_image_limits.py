"""The image policy downstream: trainer and evaluation refuse exactly what the pipeline refuses.

Inputs are made here (see tests/pipeline/test_image_policy.py for the forging helpers): forged
JPEG SOF, PNG IHDR and TIFF tags, float and 32-bit TIFFs, and a real photo tiled to 101.8 MP.
"""

from __future__ import annotations

import io
import json
import resource
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exiflang.eval.benchmark.splices import scan_photo
from exiflang.eval.images import ImageError, load_rgb, load_rgb_bytes, open_checked
from exiflang.eval.probes.distortion_probe import camera_keys
from exiflang.pipeline import records as st
from exiflang.pipeline.config import ShardConfig
from exiflang.pipeline.shards.sample import process_bytes
from exiflang.train.data.crops import decode_crops
from exiflang.train.data.samples import SampleError, probe_image
from exiflang.train.retrieval import read_samples
from tests.pipeline.test_image_policy import (
    BIG,
    float_tiff,
    forge_jpeg,
    forge_png,
    forge_tiff,
    small_jpeg,
    small_png,
    small_tiff,
    tiled_photo,
)

# How each refusal reads in a one-line error (the pipeline's status, in words).
WORDS = {
    st.TOO_LARGE: "too large",
    st.IMPLAUSIBLE_SIZE: "implausible size",
    st.UNSUPPORTED_MODE: "unsupported pixel mode",
}


def _tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "TIFF")
    return buf.getvalue()


def _inputs(photos_dir: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the pipeline status expected)."""
    jpg, png, tif = small_jpeg(photos_dir), small_png(photos_dir), small_tiff(photos_dir)
    grey16 = (np.arange(200 * 160) % 65536).astype(np.uint16).reshape(160, 200)
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, "PNG")
    return {
        "good.jpg": (jpg, st.SUCCESS),
        "grey16.png": (buf.getvalue(), st.SUCCESS),
        "grey16.tif": (_tiff(grey16), st.SUCCESS),
        "sof9000.jpg": (forge_jpeg(jpg, 9000, 9000), st.IMPLAUSIBLE_SIZE),
        "sof12000.jpg": (forge_jpeg(jpg, 12000, 12000), st.IMPLAUSIBLE_SIZE),
        "sof19000.jpg": (forge_jpeg(jpg, 19000, 19000), st.TOO_LARGE),
        "ihdr9000.png": (forge_png(png, 9000, 9000), st.IMPLAUSIBLE_SIZE),
        "ihdr20000.png": (forge_png(png, 20000, 20000), st.TOO_LARGE),
        "ihdr65535.png": (forge_png(png, 65535, 65535), st.TOO_LARGE),  # past Pillow's own guard
        "tags9000.tif": (forge_tiff(tif, 9000, 9000), st.IMPLAUSIBLE_SIZE),
        "tags20000.tif": (forge_tiff(tif, 20000, 15000), st.TOO_LARGE),
        "float.tif": (float_tiff(), st.UNSUPPORTED_MODE),
        "int32.tif": (_tiff(grey16.astype(np.int32) * 70000), st.UNSUPPORTED_MODE),
    }


def test_same_decision_in_pipeline_trainer_and_eval(photos_dir, tmp_path):
    for name, (data, expected) in _inputs(photos_dir).items():
        assert process_bytes(data, ShardConfig(min_tags=0)).status == expected, name
        path = tmp_path / name
        path.write_bytes(data)
        if expected == st.SUCCESS:
            assert probe_image(data, 124) and decode_crops(data, [(0, 0, 124, 124)])[0].shape == (124, 124, 3)
            assert load_rgb(path).dtype == np.uint8
            continue
        for call in (
            lambda data=data: probe_image(data, 124),
            lambda data=data: decode_crops(data, [(0, 0, 124, 124)]),
        ):
            with pytest.raises(SampleError) as err:
                call()
            assert err.value.reason == expected, name
        with pytest.raises(ImageError) as err:
            load_rgb(path)
        line = str(err.value)
        assert line.startswith(f"{path}: {WORDS[expected]}") and "\n" not in line, line


def test_refusals_cost_no_memory(photos_dir, tmp_path):
    """The 12k x 12k header that took 2 GB in lookup/embed, and a 361-MP one: refused from the header."""
    jpg = small_jpeg(photos_dir)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for w, h in ((12000, 12000), (19000, 19000)):
        with pytest.raises(ImageError, match=r"x\.jpg: (implausible size|too large)"):
            load_rgb_bytes(forge_jpeg(jpg, w, h), "x.jpg")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB


def test_real_101_megapixel_photo_passes_downstream(photos_dir, tmp_path):
    """Header and plausibility only (a full decode is the pipeline test's): the limit lets it in."""
    path = tiled_photo(photos_dir, tmp_path / "big.jpg")
    data = path.read_bytes()
    with open_checked(data, path) as img:
        assert img.size == BIG
    assert probe_image(data, 124) == BIG
    assert scan_photo(path, 124).width == BIG[0]


def test_threads_give_one_answer_downstream(photos_dir):
    forged = forge_jpeg(small_jpeg(photos_dir), 12000, 12000)
    answers: list[str] = []
    barrier = threading.Barrier(40)

    def one() -> None:
        barrier.wait()
        try:
            load_rgb_bytes(forged, "f.jpg")
            answers.append("ok")
        except ImageError as exc:
            answers.append(exc.reason.split(":")[0])

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == ["implausible size"] * 40


def test_splice_maker_probe_and_retrieval_apply_the_policy(photos_dir, tmp_path):
    good, forged = tmp_path / "good.jpg", tmp_path / "forged.jpg"
    good.write_bytes(small_jpeg(photos_dir))
    forged.write_bytes(forge_jpeg(good.read_bytes(), 9000, 9000))
    assert scan_photo(good, 124).model
    with pytest.raises(ImageError, match=r"forged\.jpg: implausible size: \d+ bytes cannot hold a 9000x9000"):
        scan_photo(forged, 124)
    keys = camera_keys([good, forged])
    assert keys[0] != "file:good.jpg" and keys[1] == "file:forged.jpg"
    shard = tmp_path / "held-out" / "000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for key, path in (("a", good), ("b", forged), ("c", good)):
            for ext, blob in (("jpg", path.read_bytes()), ("exif.json", json.dumps({"Model": key}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    assert [exif["Model"] for _, exif in read_samples(shard.parent)] == ["a", "c"]
