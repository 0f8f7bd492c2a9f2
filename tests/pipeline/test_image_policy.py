"""The image-size and pixel-mode policy in the pipeline: forged headers, a real 101.8-MP photo, threads.

Every bad input is made here from a real photo: SOF / IHDR / TIFF tags patched to claim a size
the bytes cannot hold.  The helpers (names without ``test_``) are shared with
tests/eval/test_image_limits.py.
"""

from __future__ import annotations

import io
import resource
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exiflang.pipeline import image_policy as ip
from exiflang.pipeline import records as st
from exiflang.pipeline.config import ShardConfig
from exiflang.pipeline.image_policy import ImagePolicy, PolicyError, default_policy, min_bytes
from exiflang.pipeline.shards.sample import process_bytes

PHOTO = "Canon_Canon-EOS-20D_d0a3cab9.jpg"  # a real camera JPEG with EXIF
BIG = (11648, 8736)  # 101.8 MP, a medium-format camera's size


def real_pixels(photos_dir: Path, side: int = 128) -> tuple[Image.Image, bytes]:
    """A ``side``-px square cut from a real photo, and that photo's EXIF bytes."""
    with Image.open(photos_dir / PHOTO) as src:
        src.load()
        exif = src.info.get("exif", b"")
        return src.crop((500, 400, 500 + side, 400 + side)), exif


def small_jpeg(photos_dir: Path, side: int = 128) -> bytes:
    """A small real JPEG (a few KB) carrying the photo's EXIF."""
    img, exif = real_pixels(photos_dir, side)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def _sof_offset(data: bytes) -> int:
    """Offset of the frame header's Y field (walks segments: an EXIF thumbnail has its own SOF)."""
    i = 2
    while i + 4 <= len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return i + 5
        i += 2 + length
    raise AssertionError("no SOF")


def forge_jpeg(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its frame header claiming ``width x height``."""
    y = _sof_offset(data)
    return data[:y] + struct.pack(">HH", height, width) + data[y + 4 :]


def pad_jpeg(data: bytes, extra: int) -> bytes:
    """``data`` with about ``extra`` bytes of COM segments after SOI (a plausibly long file)."""
    chunks = []
    while extra > 0:
        n = min(extra, 65000)
        chunks.append(b"\xff\xfe" + struct.pack(">H", n + 2) + b"x" * n)
        extra -= n
    return data[:2] + b"".join(chunks) + data[2:]


def small_png(photos_dir: Path) -> bytes:
    buf = io.BytesIO()
    real_pixels(photos_dir)[0].save(buf, "PNG")
    return buf.getvalue()


def forge_png(data: bytes, width: int, height: int) -> bytes:
    """``data`` with IHDR claiming ``width x height`` and its CRC fixed (so Pillow trusts it)."""
    body = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + body + struct.pack(">I", zlib.crc32(body)) + data[33:]


def small_tiff(photos_dir: Path, **save) -> bytes:
    buf = io.BytesIO()
    real_pixels(photos_dir)[0].save(buf, "TIFF", **save)
    return buf.getvalue()


def forge_tiff(data: bytes, width: int, height: int) -> bytes:
    """``data`` (little-endian TIFF) with ImageWidth/ImageLength rewritten as LONGs."""
    assert data[:4] == b"II*\x00"
    out = bytearray(data)
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        e = ifd + 2 + 12 * k
        tag = struct.unpack("<H", data[e : e + 2])[0]
        if tag in (256, 257):
            out[e + 2 : e + 12] = struct.pack("<HII", 4, 1, width if tag == 256 else height)
    return bytes(out)


def float_tiff() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.linspace(0, 1, 200 * 160, dtype=np.float32).reshape(160, 200)).save(buf, "TIFF")
    return buf.getvalue()


def tiled_photo(photos_dir: Path, path: Path, size: tuple[int, int] = BIG) -> Path:
    """A real photo tiled to ``size`` and saved once as JPEG with its EXIF (~12 MB, ~1.5 s)."""
    with Image.open(photos_dir / PHOTO) as src:
        src.load()
        exif = src.info.get("exif", b"")
        big = Image.new("RGB", size)
        for y in range(0, size[1], src.size[1]):
            for x in range(0, size[0], src.size[0]):
                big.paste(src, (x, y))
    big.save(path, "JPEG", quality=85, exif=exif)
    big.close()
    return path


def _status(data: bytes, **cfg) -> str:
    return process_bytes(data, ShardConfig(min_tags=0, **cfg)).status


# --- forged headers, decided from the header -----------------------------------------------


def test_forged_jpeg_sof(photos_dir):
    data = small_jpeg(photos_dir)
    assert len(data) < 30_000 and _status(data) == st.SUCCESS  # 128x128 pixels + the EXIF (thumbnail)
    for verify in ("structure", "full", "header"):
        assert _status(forge_jpeg(data, 9000, 9000), verify=verify) == st.IMPLAUSIBLE_SIZE
        assert _status(forge_jpeg(data, 19000, 19000), verify=verify) == st.TOO_LARGE
    out = process_bytes(forge_jpeg(data, 9000, 9000), ShardConfig(min_tags=0, verify="full"))
    assert "9000x9000" in out.error and "\n" not in out.error and out.sha256


def test_forged_png_ihdr(photos_dir):
    data = small_png(photos_dir)
    assert _status(data) == st.SUCCESS
    assert _status(forge_png(data, 9000, 9000)) == st.IMPLAUSIBLE_SIZE
    assert _status(forge_png(data, 20000, 20000)) == st.TOO_LARGE
    # Past Pillow's own guard (2 x 1e9 pixels): its error is mapped to the same status.
    assert _status(forge_png(data, 65535, 65535)) == st.TOO_LARGE


def test_forged_tiff_tags(photos_dir):
    for save in ({}, {"compression": "tiff_deflate"}, {"compression": "tiff_lzw"}):
        data = small_tiff(photos_dir, **save)
        assert _status(data) == st.SUCCESS, save
        assert _status(forge_tiff(data, 9000, 9000)) == st.IMPLAUSIBLE_SIZE, save
        assert _status(forge_tiff(data, 20000, 15000)) == st.TOO_LARGE, save


def test_refused_without_decoding(photos_dir):
    """A 361-MP claim in verify=full costs no decode: no time, no memory (a decode is > 1 GB)."""
    forged = forge_jpeg(small_jpeg(photos_dir), 19000, 19000)
    implausible = forge_jpeg(small_jpeg(photos_dir), 14000, 14000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    assert _status(forged, verify="full") == st.TOO_LARGE
    assert _status(implausible, verify="full", max_pixels=ip.HARD_MAX_PIXELS) == st.IMPLAUSIBLE_SIZE
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB


# --- real images of every format at their best compression pass ---------------------------


def _flat_files() -> dict[str, bytes]:
    """Flat 1024x1024 images: the best case of each codec, as real encoders write it."""
    rgb = Image.new("RGB", (1024, 1024), (90, 120, 200))
    one, pal = Image.new("1", rgb.size, 1), Image.new("P", rgb.size, 3)
    variants = {
        "jpeg-optimized": (rgb, "JPEG", {"optimize": True, "quality": 50}),
        "jpeg-progressive": (rgb, "JPEG", {"progressive": True, "optimize": True}),
        "jpeg-grey": (rgb.convert("L"), "JPEG", {"optimize": True}),
        "jpeg-444": (rgb, "JPEG", {"subsampling": 0, "optimize": True}),
        "png-rgb": (rgb, "PNG", {"compress_level": 9}),
        "png-1bit": (one, "PNG", {"compress_level": 9}),
        "png-palette": (pal, "PNG", {"compress_level": 9}),
        "tiff-deflate": (rgb, "TIFF", {"compression": "tiff_adobe_deflate"}),
        "tiff-lzw": (rgb, "TIFF", {"compression": "tiff_lzw"}),
        "tiff-packbits": (rgb, "TIFF", {"compression": "packbits"}),
        "tiff-g4": (one, "TIFF", {"compression": "group4"}),
        "tiff-jpeg": (rgb, "TIFF", {"compression": "jpeg"}),
        "gif": (pal, "GIF", {}),
        "bmp": (rgb, "BMP", {}),
        "webp-lossless": (rgb, "WEBP", {"lossless": True}),
    }
    out = {}
    for name, (img, fmt, save) in variants.items():
        buf = io.BytesIO()
        img.save(buf, fmt, **save)
        out[name] = buf.getvalue()
    return out


def test_best_compression_of_real_encoders_is_plausible():
    for name, data in _flat_files().items():
        with Image.open(io.BytesIO(data)) as img:
            floor = min_bytes(img, data)
            assert floor <= len(data), (name, floor, len(data))
        ImagePolicy().open(data).close()
        if name.startswith(("jpeg", "png", "tiff")):
            assert floor > 0, name  # a real floor, not a skipped check


def test_dev_photos_pass(photos_dir, shared_data):
    for folder in (photos_dir, shared_data / "exif-variety"):
        for p in sorted(folder.glob("*.jp*g")) + sorted(folder.glob("*.tif")):
            data = p.read_bytes()
            ImagePolicy().open(data).close()  # raises PolicyError if refused


def test_real_101_megapixel_photo(photos_dir, tmp_path):
    """A 11648x8736 photo (over Pillow's 89.5-MP default) is a success: default check and a decode."""
    data = tiled_photo(photos_dir, tmp_path / "big.jpg").read_bytes()
    out = process_bytes(data, ShardConfig())  # default settings: verify=structure, min_tags=10
    assert out.status == st.SUCCESS, out.error
    assert (out.width, out.height) == BIG
    assert process_bytes(data, ShardConfig(verify="draft")).status == st.SUCCESS  # 1/8-scale decode
    assert process_bytes(data, ShardConfig(max_pixels=100_000_000)).status == st.TOO_LARGE


# --- modes ----------------------------------------------------------------------------------


def test_exotic_modes():
    def tiff(arr: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "TIFF")
        return buf.getvalue()

    grey16 = (np.arange(200 * 160) % 65536).astype(np.uint16).reshape(160, 200)
    assert _status(float_tiff()) == st.UNSUPPORTED_MODE
    assert _status(float_tiff(), verify="header") == st.UNSUPPORTED_MODE
    assert _status(tiff(grey16.astype(np.int32) * 70000)) == st.UNSUPPORTED_MODE  # 32-bit integer
    assert _status(tiff(grey16)) == st.SUCCESS
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, "PNG")
    assert _status(buf.getvalue()) == st.SUCCESS
    err = process_bytes(float_tiff(), ShardConfig(min_tags=0)).error
    assert err == "unsupported pixel mode F (floating point)"


# --- threads: one answer, no global state touched ------------------------------------------


def _race(data: bytes, cfg: ShardConfig, n: int = 40) -> set[str]:
    barrier = threading.Barrier(n)
    answers: list[str] = []

    def one() -> None:
        barrier.wait()
        answers.append(process_bytes(data, cfg).status)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == n
    return set(answers)


def test_forty_threads_on_a_144_megapixel_header(photos_dir):
    small = small_jpeg(photos_dir)
    forged = forge_jpeg(small, 12000, 12000)  # 144 MP
    plausible = pad_jpeg(forged, 80_000)  # long enough for 144 MP at 4:2:0
    pillow_limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    for _ in range(5):
        assert _race(plausible, ShardConfig(min_tags=0)) == {st.SUCCESS}
        assert _race(plausible, ShardConfig(min_tags=0, max_pixels=100_000_000)) == {st.TOO_LARGE}
        assert _race(forged, ShardConfig(min_tags=0)) == {st.IMPLAUSIBLE_SIZE}
    assert Image.MAX_IMAGE_PIXELS == pillow_limit == ip.HARD_MAX_PIXELS
    assert warnings.filters == filters


def test_decode_budget_makes_large_decodes_wait():
    budget = ip._PixelBudget(100)
    order: list[str] = []
    with budget.hold(80):

        def second() -> None:
            with budget.hold(50):
                order.append("second")

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"]
    with budget.hold(10**12):  # a request above the total is capped, never a deadlock
        pass


# --- configuration ----------------------------------------------------------------------------


def test_limit_configuration(monkeypatch):
    assert ShardConfig().max_pixels == ip.DEFAULT_MAX_PIXELS == 200_000_000
    for bad in (0, -1, ip.HARD_MAX_PIXELS + 1, 1.5e8):
        with pytest.raises(ValueError, match="max_pixels must be a whole number"):
            ShardConfig(max_pixels=bad)
    monkeypatch.setenv(ip.MAX_PIXELS_ENV, "300_000_000")
    assert default_policy().max_pixels == 300_000_000 == ShardConfig().max_pixels
    monkeypatch.setenv(ip.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=r"EXIFLANG_MAX_PIXELS='lots': must be a whole number"):
        default_policy()


def test_policy_error_carries_status(photos_dir):
    with pytest.raises(PolicyError) as err:
        ImagePolicy(1000).open(small_jpeg(photos_dir))
    assert err.value.status == st.TOO_LARGE and str(err.value).startswith("too large: 128x128")
