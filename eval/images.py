"""Reading a photo a user names into full-resolution RGB ``uint8`` pixels, with one-line errors.

Every failure is an :class:`ImageError` whose message is ``"PATH: reason"`` on one line, so a
batch command can report the file and go on.  Pixels are never resized, re-encoded or rotated
(EXIF orientation is *not* applied: the camera's pixel grid is the signal, and benchmark masks
are aligned with the stored pixels).

Before anything is decoded, the header goes through the pipeline's image policy
(:mod:`exiflang.pipeline.image_policy`, the same one the shard builder and the trainer apply): over the
pixel limit (default 200 MP), implausibly small for the size it claims, or a pixel mode the
policy refuses -> ``ImageError``.  Modes:

- 8-bit RGB/RGBA/grey/palette/CMYK/YCbCr (and 1-bit): Pillow's ``convert("RGB")`` (grey
  repeated, alpha dropped, CMYK converted naively);
- 16-bit grey (``I;16*``, or ``I`` with 16-bit samples): scaled by 255/65535 and repeated to 3
  channels;
- 16-bit-per-channel RGB TIFF/PNG: as Pillow opens it (it reduces what it supports to 8 bits
  per channel); a layout Pillow cannot decode gives an error saying so;
- float (``F``), 32-bit integer and any other mode: refused with the mode in the message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from exiflang.pipeline.image_policy import (
    RGB_VIA_CONVERT,
    SIXTEEN_BIT,
    ImagePolicy,
    PolicyError,
    decode,
    default_policy,
    mode_problem,
    pil_to_rgb,
)

PathLike = Union[str, "os.PathLike[str]"]


class ImageError(Exception):
    """A photo that cannot be used; ``str(err)`` is ``"PATH: reason"`` on one line."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path, self.reason = str(path), " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """A loaded Pillow image -> ``uint8 [H,W,3]`` in 0..255 (see the module docstring for modes);
    ``ValueError`` for a mode the policy refuses (a loaded ``I`` image is taken as 16-bit: which
    samples it held is known only from its header, which :func:`open_checked` checks)."""
    if img.mode not in RGB_VIA_CONVERT and img.mode not in SIXTEEN_BIT:
        raise ValueError(mode_problem(img) or f"unsupported pixel mode {img.mode}")
    return pil_to_rgb(img)  # the trainer's own conversion: test pixels match training pixels


def open_checked(data: bytes, name: PathLike = "<bytes>", policy: ImagePolicy | None = None) -> Image.Image:
    """``data``'s header opened (not decoded) and passed through the image policy; :class:`ImageError`
    naming ``name`` if it is empty, unreadable or refused (too large, implausible size, mode)."""
    if not data:
        raise ImageError(name, "empty file")
    policy = policy or default_policy()  # a bad EXIFLANG_MAX_PIXELS is a ValueError, not this file's
    try:
        return policy.open(data)
    except PolicyError as exc:
        raise ImageError(name, str(exc)) from None
    except Image.UnidentifiedImageError:
        raise ImageError(name, "not a readable image (no format Pillow knows)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken headers
        raise ImageError(name, f"not a readable image ({type(exc).__name__}: {exc})") from None


def load_rgb_bytes(data: bytes, name: PathLike = "<bytes>", policy: ImagePolicy | None = None) -> np.ndarray:
    """Check the header (:func:`open_checked`), decode ``data`` fully -> ``uint8 [H,W,3]``;
    :class:`ImageError` naming ``name`` on failure."""
    img = open_checked(data, name, policy)
    try:
        with img:
            decode(img)  # full decode, bounded by the policy's pixel limit
            arr = to_rgb_array(img)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad image
        raise ImageError(name, f"pixel data does not decode ({type(exc).__name__}: {exc})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ImageError(name, f"unexpected pixel array shape {arr.shape}")
    return np.ascontiguousarray(arr)


def load_rgb(path: PathLike) -> np.ndarray:
    """Read the file at ``path`` -> ``uint8 [H,W,3]``; :class:`ImageError` naming it on failure."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageError(p, "no such file") from None
    except IsADirectoryError:
        raise ImageError(p, "is a folder, not an image") from None
    except OSError as exc:
        raise ImageError(p, f"unreadable ({exc.strerror or exc})") from None
    return load_rgb_bytes(data, p)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".heic"}


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as named, folders expanded (recursive, sorted, image suffixes only); order kept."""
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)  # a missing file is reported when it is read, with the others answered
    return out
