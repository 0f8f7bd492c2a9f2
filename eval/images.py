"""Reading a photo a user names into full-resolution RGB ``uint8`` pixels, with one-line errors.

Every failure is an :class:`ImageError` whose message is ``"PATH: reason"`` on one line, so a
batch command can report the file and go on.  Pixels are never resized, re-encoded or rotated
(EXIF orientation is *not* applied: the camera's pixel grid is the signal, and benchmark masks
are aligned with the stored pixels).  Modes:

- 8-bit RGB/RGBA/grey/palette/CMYK/YCbCr: Pillow's ``convert("RGB")`` (grey repeated, alpha
  dropped, CMYK converted naively);
- 16-bit grey (``I;16*``, ``I``): scaled by 255/65535 and repeated to 3 channels;
- 16-bit-per-channel RGB TIFF/PNG: as Pillow opens it (it reduces what it supports to 8 bits
  per channel); a layout Pillow cannot decode gives an error saying so;
- float (``F``) images and anything else: rejected with the mode in the message.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from train.crops import pil_to_rgb

PathLike = Union[str, "os.PathLike[str]"]
MAX_PIXELS = 400_000_000  # a 20000x20000 scan still opens; beyond is a decompression bomb


class ImageError(Exception):
    """A photo that cannot be used; ``str(err)`` is ``"PATH: reason"`` on one line."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path, self.reason = str(path), " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """A loaded Pillow image -> ``uint8 [H,W,3]`` in 0..255 (see the module docstring for modes)."""
    if img.mode == "F":
        raise ValueError("floating-point image (mode F) is not a camera photo")
    return pil_to_rgb(img)  # the trainer's own conversion: test pixels match training pixels


def load_rgb_bytes(data: bytes, name: PathLike = "<bytes>") -> np.ndarray:
    """Decode ``data`` fully -> ``uint8 [H,W,3]``; :class:`ImageError` naming ``name`` on failure."""
    if not data:
        raise ImageError(name, "empty file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning / TIFF tag chatter
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageError(name, f"too large ({exc})") from None
        except Image.UnidentifiedImageError:
            raise ImageError(name, "not a readable image (no format Pillow knows)") from None
        except Exception as exc:  # Pillow raises many types for broken headers
            raise ImageError(name, f"not a readable image ({type(exc).__name__}: {exc})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old
        try:
            with img:
                img.load()  # full decode: truncated or corrupt pixel data fails here
                arr = to_rgb_array(img)
        except Exception as exc:
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
