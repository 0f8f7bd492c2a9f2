"""One sample's checks: bytes -> image validity, size, sha256 and merged EXIF, with a status."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from PIL import Image

from exiflang.pipeline import records as st
from exiflang.pipeline.config import ShardConfig
from exiflang.pipeline.exif.parse import ExifReadError, read_exif
from exiflang.pipeline.image_policy import ImagePolicy, PolicyError, decode
from exiflang.pipeline.shards.jpeg_check import jpeg_problem

# Pillow format name -> the tar member extension webdataset decoders recognise.
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif", "WEBP": "webp", "BMP": "bmp", "MPO": "jpg", "GIF": "gif"}


@dataclass
class SampleOutcome:
    """What became of one source row's bytes."""

    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    ext: str = "jpg"
    exif: dict[str, str] = field(default_factory=dict)
    exif_source: dict[str, str] = field(default_factory=dict)  # tag -> image | yfcc | both
    exif_disagreements: int = 0


def _verify(img: Image.Image, data: bytes, cfg: ShardConfig) -> str | None:
    """Check ``img`` as deeply as ``cfg.verify`` says; a one-line problem or ``None``."""
    fmt = img.format or ""
    if cfg.verify == "header":
        return None
    if cfg.verify == "structure" and fmt in ("JPEG", "MPO"):
        return jpeg_problem(data)
    if cfg.verify == "draft" and fmt == "JPEG":
        # DCT-domain 1/8 scaling still entropy-decodes every block, so a truncated or
        # corrupt scan fails here at 1/64 of a full decode's memory.
        width, height = img.size
        img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
    decode(img)  # bounded: the policy's pixel limit, and the per-process decode budget
    return None


def _check_image(data: bytes, cfg: ShardConfig) -> tuple[SampleOutcome | None, int, int, str]:
    """Image policy on the header, then a (partial) decode; returns (failure or None, width, height, ext)."""
    try:
        img = ImagePolicy(cfg.max_pixels).open(data)
    except PolicyError as exc:
        return SampleOutcome(exc.status, exc.reason), 0, 0, ""
    except Image.UnidentifiedImageError:
        return SampleOutcome(st.NOT_AN_IMAGE, "not an image Pillow can identify"), 0, 0, ""
    except Exception as exc:  # noqa: BLE001 - a header Pillow chokes on is this sample's status
        return SampleOutcome(st.DECODE_FAILED, f"decode failed: {_first_line(exc)}"), 0, 0, ""
    with img:
        width, height = img.size
        fmt = img.format or ""
        try:
            problem = _verify(img, data, cfg)
        except Image.DecompressionBombError as exc:  # Pillow's guard inside a decoder (GIF, TIFF tiles)
            return SampleOutcome(st.TOO_LARGE, f"too large: {_first_line(exc)}"), 0, 0, ""
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this sample's status
            problem = _first_line(exc)
    if problem:
        return SampleOutcome(st.DECODE_FAILED, f"decode failed: {problem}"), 0, 0, ""
    return None, width, height, EXTENSIONS.get(fmt, fmt.lower() or "bin")


def _first_line(exc: BaseException) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def merge_exif(
    from_image: dict[str, str], from_side: dict[str, str] | None, prefer: str
) -> tuple[dict[str, str], dict[str, str], int]:
    """Join EXIF read from the bytes with the YFCC side file's; returns (tags, source, disagreements)."""
    if not from_side:
        return dict(from_image), dict.fromkeys(from_image, "image"), 0
    merged: dict[str, str] = {}
    source: dict[str, str] = {}
    disagreements = 0
    for tag in list(from_image) + [t for t in from_side if t not in from_image]:
        a, b = from_image.get(tag), from_side.get(tag)
        if a is not None and b is not None:
            source[tag] = "both"
            if a.strip() != b.strip():
                disagreements += 1
            merged[tag] = a if prefer == "image" else b
        else:
            source[tag] = "image" if a is not None else "yfcc"
            merged[tag] = a if a is not None else b  # type: ignore[assignment]
    return merged, source, disagreements


def process_bytes(data: bytes, cfg: ShardConfig, side_exif: dict[str, str] | None = None) -> SampleOutcome:
    """Check one image's bytes and parse its EXIF; never raises on bad data."""
    sha = hashlib.sha256(data).hexdigest()
    failed, width, height, ext = _check_image(data, cfg)
    if failed is not None:
        failed.sha256 = sha
        return failed
    exif_error = None
    try:
        image_exif = read_exif(data, max_value_chars=cfg.max_value_chars)
    except ExifReadError as exc:
        image_exif, exif_error = {}, f"EXIF unreadable: {exc}"
    tags, source, disagree = merge_exif(image_exif, side_exif, cfg.exif_prefer)
    out = SampleOutcome(st.SUCCESS, exif_error, width, height, sha, ext, tags, source, disagree)
    if min(width, height) < cfg.patch_size:
        out.status, out.error = st.TOO_SMALL, f"{width}x{height} is smaller than a {cfg.patch_size}-px patch"
    elif len(tags) < cfg.min_tags:
        out.status = st.TOO_FEW_TAGS
        out.error = exif_error or f"{len(tags)} EXIF tags, fewer than the minimum {cfg.min_tags}"
    return out
