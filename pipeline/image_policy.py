"""The one image-size and pixel-mode policy, decided from the header before any decode.

Every place that opens image bytes from outside (the pipeline's sample check, the trainer's
header probe and crop decoder, evaluation's loader, the splice maker) calls
:meth:`ImagePolicy.open`: Pillow's ``Image.open`` is lazy and reads only the header, and the
three checks below run on that header, so nothing is decoded or allocated for a refused file.

1. **Pixel limit** (``too_large``): ``width * height`` above ``max_pixels`` (default
   :data:`DEFAULT_MAX_PIXELS` = 200 MP, high enough for 100-150 MP medium-format cameras;
   ``EXIFLANG_MAX_PIXELS`` sets it for every entry point, 1 .. :data:`HARD_MAX_PIXELS`).  This
   also bounds any one decode: 200 MP is 600 MB as RGB.
2. **Plausibility** (``implausible_size``): a file shorter than :func:`min_bytes`, the fewest
   bytes its format can hold an image of that size in even at its best possible compression.
   Catches a forged or corrupted header (libjpeg would fill the missing pixels with grey).
3. **Pixel mode** (``unsupported_mode``): 8-bit modes (and 1-bit) go through Pillow's
   ``convert("RGB")``; 16-bit unsigned grey (``I;16*``, or ``I`` holding 16-bit samples) is
   scaled to 8 bits; float (``F``), 32-bit integer (``I`` with ``I;32*`` samples) and any other
   mode (``LAB``, ``HSV``, ...) are refused - none is a camera's output.

Deterministic under threads: the checks read only the header and this object.  Pillow's own
guard (a module global that warns or raises by pixel count) is raised once, at import, to
:data:`HARD_MAX_PIXELS`, above any limit this policy allows, so it can never refuse what the
policy accepts; when it does fire (over 2 x that) its error is mapped to ``too_large``.  No
warnings filter is touched.  :func:`decode` loads an image while holding its pixel count from a
per-process budget, so many threads cannot decode large images at once.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

from exiflang.pipeline import records as st
from exiflang.pipeline.shards.jpeg_check import jpeg_frame

DEFAULT_MAX_PIXELS = 200_000_000  # a 150-MP medium-format photo (14204 x 10652) passes
HARD_MAX_PIXELS = 1_000_000_000  # no configured limit above this (3 GB as RGB)
MAX_PIXELS_ENV = "EXIFLANG_MAX_PIXELS"
DECODE_BUDGET_PIXELS = 400_000_000  # pixels being decoded at once per process (1.2 GB RGB)

# Set once, at import (under the import lock, before any caller runs): never changed again.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < HARD_MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = HARD_MAX_PIXELS

# Modes Pillow's convert("RGB") turns into camera-like RGB (grey repeated, alpha dropped,
# palettes expanded, CMYK/YCbCr converted).
RGB_VIA_CONVERT = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
# 16-bit grey, scaled by 255/65535 (exiflang.train.data.crops.pil_to_rgb); "I" only with 16-bit samples.
SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_SIXTEEN_BIT_RAW = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})

# Best-case ratios (uncompressed bytes per stored byte) of the codecs, see min_bytes().
_DEFLATE = 1032  # a 258-byte match needs >= 1 bit of length code + >= 1 bit of distance code
_LZW = 4096 * 8 / 9  # a code of >= 9 bits (TIFF) stands for <= 4096 bytes: ~3641
_TIFF_RATIO = {"raw": 1, "packbits": 64, "tiff_lzw": _LZW, "tiff_deflate": _DEFLATE, "tiff_adobe_deflate": _DEFLATE}
_TIFF_FAX = {"tiff_ccitt", "group3", "group4"}
_TIFF_JPEG = {"jpeg", "tiff_jpeg"}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class PolicyError(ValueError):
    """An image the policy refuses: ``status`` is a pipeline status value, ``str(err)`` one line."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _tiles(img: Image.Image) -> list:
    """The decoder tiles of an opened, not yet loaded image (``ImageFile.tile``; none on a plain
    ``Image``, which has nothing left to decode)."""
    return getattr(img, "tile", None) or []


def _rawmode(img: Image.Image) -> str | None:
    """The sample layout of the first tile (``"I;16B"``, ``"I;32S"``...), or ``None``."""
    tiles = _tiles(img)
    if not tiles:
        return None
    args = tiles[0][3]  # (codec, extents, offset, args)
    if isinstance(args, str):
        return args
    return args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else None


def mode_problem(img: Image.Image) -> str | None:
    """``None`` if ``img``'s pixel mode is one the policy converts to RGB, else the reason."""
    mode = img.mode
    if mode in RGB_VIA_CONVERT or (mode in SIXTEEN_BIT and mode != "I"):
        return None
    if mode == "I":
        raw = _rawmode(img)
        if raw in _SIXTEEN_BIT_RAW:
            return None
        return f"unsupported pixel mode I with {raw or 'unknown'} samples (32-bit integer)"
    if mode == "F":
        return "unsupported pixel mode F (floating point)"
    return f"unsupported pixel mode {mode}"


def _jpeg_min(data: bytes) -> int:
    """1 bit per 8x8 block of the least-sampled component (Huffman codes are >= 1 bit)."""
    frame = jpeg_frame(data)
    if frame is None or not frame.sampling or frame.marker >= 0xC9:
        return 0  # arithmetic coding (SOF9-15) can code a flat block in far under one bit
    hmax = max(h for h, _ in frame.sampling)
    vmax = max(v for _, v in frame.sampling)
    if hmax < 1 or vmax < 1:
        return 0
    blocks = min(
        math.ceil(math.ceil(frame.width * h / hmax) / 8) * math.ceil(math.ceil(frame.height * v / vmax) / 8)
        for h, v in frame.sampling
    )
    return math.ceil(blocks / 8)


def _png_min(data: bytes, width: int, height: int) -> int:
    """The filtered rows (1 filter byte + packed samples each) over deflate's best ratio."""
    if data[12:16] != b"IHDR" or len(data) < 26:
        return 0
    bits = data[24] * _PNG_CHANNELS.get(data[25], 1)
    return math.ceil(height * (1 + math.ceil(width * bits / 8)) / _DEFLATE)


def _tiff_min(img: Image.Image) -> int:
    """Packed samples over the compression's best ratio (fax: >= 1 bit per row)."""
    width, height = img.size
    compression = img.info.get("compression", "raw")
    if compression in _TIFF_FAX:
        return math.ceil(height / 8)
    if compression in _TIFF_JPEG:
        return math.ceil(width * height / 1024 / 8)  # 1 bit per 8x8 block at 4x4 subsampling
    ratio = _TIFF_RATIO.get(compression)
    if ratio is None:
        return 0  # zstd, lzma, webp...: no useful floor; the pixel limit bounds the decode
    tags = getattr(img, "tag_v2", {})
    try:
        bits = tags.get(258, (1,))
        bits = tuple(bits) if isinstance(bits, (tuple, list)) else (int(bits),)
        samples = int(tags.get(277, len(bits)))
        bpp = sum(bits) if len(bits) == samples else bits[0] * samples
    except (TypeError, ValueError, IndexError):
        bpp = 1
    return math.ceil(height * math.ceil(width * max(1, int(bpp)) / 8) / ratio)


def min_bytes(img: Image.Image, data: bytes) -> int:
    """The fewest bytes a file of ``img``'s format can hold its header's size in (>= 0).

    - JPEG (Huffman): every 8x8 block of every coded component costs >= 1 bit (its DC code).
      The floor is 1 bit per block of the least-sampled component: 4:2:0 colour gives 1/2048
      byte per pixel, grey 1/512.  Real photos store 0.05-0.5 byte per pixel.  Arithmetic
      coding has no such floor (0).  A crafted progressive file that skips its DC scans can go
      lower (libjpeg only warns); the pixel limit bounds what it costs.
    - PNG: deflate cannot beat 1032:1; rows are a filter byte plus packed samples.
    - TIFF: raw 1:1, PackBits 64:1, LZW < 3641:1, deflate 1032:1 of the packed samples; fax
      (G3/G4) >= 1 bit per row; JPEG 1 bit per 32x32 pixels; other codecs 0.
    - GIF: an LZW code of >= 3 bits stands for <= 4096 pixels.  Other formats with Pillow's
      ``raw`` codec (BMP, PPM, TGA...): >= 1 bit per pixel.  Anything else (WebP, RLE BMP...): 0.
    """
    width, height = img.size
    fmt = img.format or ""
    if fmt in ("JPEG", "MPO"):
        return _jpeg_min(data)
    if fmt == "PNG":
        return _png_min(data, width, height)
    if fmt == "TIFF":
        return _tiff_min(img)
    if fmt == "GIF":
        return math.ceil(width * height * 3 / (4096 * 8))
    tiles = _tiles(img)
    if tiles and tiles[0][0] == "raw":
        return height * math.ceil(width / 8)
    return 0


@dataclass(frozen=True)
class ImagePolicy:
    """The limits one caller applies; ``max_pixels`` in 1 .. :data:`HARD_MAX_PIXELS`."""

    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_pixels, bool)
            or not isinstance(self.max_pixels, int)
            or not 1 <= self.max_pixels <= HARD_MAX_PIXELS
        ):
            raise ValueError(f"max_pixels must be a whole number from 1 to {HARD_MAX_PIXELS}, not {self.max_pixels!r}")

    def check(self, img: Image.Image, data: bytes) -> None:
        """Raise :class:`PolicyError` if the opened (not loaded) ``img`` of ``data`` is refused."""
        width, height = img.size
        if width * height > self.max_pixels:
            raise PolicyError(
                st.TOO_LARGE,
                f"too large: {width}x{height} is {width * height / 1e6:.1f} "
                f"MP, over the {self.max_pixels / 1e6:g} MP limit",
            )
        floor = min_bytes(img, data)
        if len(data) < floor:
            raise PolicyError(
                st.IMPLAUSIBLE_SIZE,
                f"implausible size: {len(data)} bytes cannot hold "
                f"a {width}x{height} {img.format} image (its best compression needs "
                f"{floor})",
            )
        problem = mode_problem(img)
        if problem:
            raise PolicyError(st.UNSUPPORTED_MODE, problem)

    def open(self, data: bytes) -> Image.Image:
        """``Image.open`` (header only) plus :meth:`check`; the image is not loaded.

        Raises :class:`PolicyError`, or Pillow's own errors for bytes it cannot identify.
        """
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise PolicyError(st.TOO_LARGE, f"too large: over the {self.max_pixels / 1e6:g} MP limit ({exc})") from None
        try:
            self.check(img, data)
        except PolicyError:
            img.close()
            raise
        return img


def default_policy() -> ImagePolicy:
    """The policy every entry point uses unless told otherwise (``EXIFLANG_MAX_PIXELS`` or 200 MP)."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not raw:
        return ImagePolicy()
    try:
        return ImagePolicy(int(raw))
    except ValueError:
        raise ValueError(
            f"{MAX_PIXELS_ENV}={raw!r}: must be a whole number of pixels from 1 to {HARD_MAX_PIXELS}"
        ) from None


class _PixelBudget:
    """Pixels being decoded at once in this process; a larger request waits (capped at the total)."""

    def __init__(self, total: int) -> None:
        self._total, self._used = total, 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = min(max(1, pixels), self._total)
        with self._cond:
            self._cond.wait_for(lambda: self._used + need <= self._total)
            self._used += need
        try:
            yield
        finally:
            with self._cond:
                self._used -= need
                self._cond.notify_all()


_BUDGET = _PixelBudget(DECODE_BUDGET_PIXELS)


def decode(img: Image.Image) -> None:
    """``img.load()`` while holding its pixel count (after any ``draft``) from the process budget."""
    width, height = img.size
    with _BUDGET.hold(width * height):
        img.load()


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """A loaded Pillow image as ``uint8 [H,W,3]`` in 0..255 (16-bit grey scaled, other modes
    through ``convert("RGB")``); the one conversion training and evaluation both use."""
    if img.mode in SIXTEEN_BIT:
        grey = np.asarray(img).astype(np.int64)
        # 0..65535 -> 0..255, rounded; values outside (32-bit "I" data) are clipped.
        grey = np.clip((grey + 128) // 257, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
