"""The dataset on disk, one sample at a time: folder checks, tar members, header checks, crops, tensors.

Split so that the loader decides a sample's fate without decoding it:

- :func:`open_shards` / :func:`load_vocabulary` check the folder (tars, ``sizes.json``,
  ``tags.json`` and its hash) with one-line errors naming the file;
- :func:`read_groups` / :func:`read_member` walk a tar's headers and read members by offset
  (the loader can re-read an image later without holding its bytes);
- :func:`check_sample` / :func:`probe_image` look at members, ``exif.json`` and the image header
  only (for JPEG also the marker segments): microseconds.  They reject what they can see: a
  missing member, bad JSON, not an image, an unsupported mode, a structurally broken JPEG, a
  side shorter than the patch;
- :func:`decode_crops` decodes the whole image at full resolution — ``Image.draft`` is never used,
  the camera's pixel statistics are the signal — and copies out the boxes as RGB ``uint8``.  No
  resize, flip, colour jitter, EXIF-orientation transpose or ICC conversion;
- :func:`normalise` and :func:`pad_ids` make the batch tensors.

Modes: 8-bit modes go through Pillow's ``convert("RGB")`` (grey repeated, alpha dropped, CMYK
converted naively, palettes expanded); 16-bit grey (``I;16*``, and ``I`` as Pillow opens 16-bit
PNG/TIFF) is scaled by 255/65535; float images (``F``) are rejected.  Each box is cut *before*
the conversion: every conversion here is per pixel, so this equals converting the whole image
first at a fraction of the cost.
"""
from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from pipeline.jpeg_check import jpeg_problem
from pipeline.tags import vocabulary_hash
from train.normalize import CLIP_MEAN, CLIP_STD

# Member extensions that hold the image, in the order a sample's members are searched.
IMAGE_EXTS = ("jpg", "jpeg", "png", "tif", "tiff", "webp")
_RGB_VIA_CONVERT = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}

Box = tuple[int, int, int, int]
Location = tuple[int, int]  # (byte offset, size) of a member's data inside its tar


class SampleError(Exception):
    """A sample the loader must skip; ``reason`` is a short counter name (e.g. ``too_small``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ShardSet:
    """A checked dataset folder: its tar names (sorted) and their sample counts (``sizes.json``)."""

    root: Path
    names: tuple[str, ...]
    sizes: tuple[int, ...]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def open_shards(data: str) -> ShardSet:
    """Check a dataset folder; one-line ``FileNotFoundError`` / ``ValueError`` naming the file."""
    root = Path(data)
    if not data or not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    names = tuple(sorted(p.name for p in root.glob("*.tar")))
    if not names:
        raise FileNotFoundError(f"{root}: no *.tar shards (build them with `exiflang shards`)")
    sizes_path = root / "sizes.json"
    sizes = _read_json(sizes_path)
    missing = [n for n in names if not isinstance(sizes, dict) or n not in sizes]
    if missing:
        raise ValueError(f"{sizes_path}: no entry for {missing[0]} ({len(missing)} tars unlisted)")
    return ShardSet(root, names, tuple(int(sizes[n]) for n in names))


def load_vocabulary(path: Path) -> tuple[str, ...]:
    """``tags.json``'s tag list, checked against its hash."""
    doc = _read_json(path)
    tags = doc.get("tags") if isinstance(doc, dict) else None
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"{path}: no non-empty 'tags' list")
    if doc.get("hash") != vocabulary_hash(tags):
        raise ValueError(f"{path}: hash {doc.get('hash')!r} does not match its tag list "
                         "(re-select with `exiflang select-tags`)")
    return tuple(tags)


class ShardError(Exception):
    """A tar that cannot be read any further."""


def read_groups(path: Path) -> Iterator[tuple[str, dict[str, Location]]]:
    """A tar's samples in order: key and ``{ext: (offset, size)}``; reads headers, seeks past data."""
    try:
        with tarfile.open(path, "r:") as tar:
            key: Optional[str] = None
            members: dict[str, Location] = {}
            while (info := tar.next()) is not None:
                tar.members.clear()  # TarFile keeps every header otherwise: flat memory on big tars
                folder, _, name = info.name.rpartition("/")
                stem, dot, ext = name.partition(".")
                if not info.isreg() or not dot:
                    continue
                base = f"{folder}/{stem}" if folder else stem
                if base != key:
                    if key is not None:
                        yield key, members
                    key, members = base, {}
                members[ext.lower()] = (info.offset_data, info.size)
            if key is not None:
                yield key, members
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(str(exc)) from None


def read_member(fh: BinaryIO, loc: Location) -> bytes:
    fh.seek(loc[0])
    data = fh.read(loc[1])
    if len(data) != loc[1]:
        raise ShardError(f"member at byte {loc[0]} truncated ({len(data)} of {loc[1]} bytes)")
    return data


def parse_exif(raw: bytes) -> dict[str, str]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleError("bad_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise SampleError("bad_json", "exif.json is not an object")
    return {str(k): str(v) for k, v in doc.items()}


Checked = tuple[Location, Optional[dict[str, str]], bytes, tuple[int, int]]


def check_sample(fh: BinaryIO, members: dict[str, Location], patch: int,
                 vocab: Optional[Sequence[str]]) -> Checked:
    """Everything about one sample short of decoding it: ``(image location, exif, image bytes, size)``.

    ``vocab=None`` (CropCLR) needs no ``exif.json``; otherwise at least one vocabulary tag must be
    present.  Raises :class:`SampleError` for a bad sample, :class:`ShardError` for a short read.
    """
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
        raise SampleError("missing_image")
    exif = None
    if vocab is not None:
        if "exif.json" not in members:
            raise SampleError("missing_exif")
        exif = parse_exif(read_member(fh, members["exif.json"]))
        if not any(tag in exif for tag in vocab):
            raise SampleError("no_vocab_tags")
    data = read_member(fh, members[ext])
    return members[ext], exif, data, probe_image(data, patch)


def probe_image(data: bytes, patch: int) -> tuple[int, int]:
    """Header-only check of one image; returns its ``(width, height)``.

    Raises :class:`SampleError` with reason ``not_an_image``, ``corrupt_image`` (JPEG structure),
    ``unsupported_mode`` or ``too_small`` (a side below ``patch``).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, size, mode = img.format, img.size, img.mode
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
        raise SampleError("not_an_image", str(exc)) from None
    if fmt == "JPEG":
        problem = jpeg_problem(data)
        if problem:
            raise SampleError("corrupt_image", problem)
    if mode not in _RGB_VIA_CONVERT and mode not in _SIXTEEN_BIT:
        raise SampleError("unsupported_mode", mode)
    if min(size) < patch:
        raise SampleError("too_small", f"{size[0]}x{size[1]} < {patch}")
    return size


def crop_boxes(size: tuple[int, int], patch: int, n: int, rng: random.Random) -> list[Box]:
    """``n`` uniformly random ``patch``-sized boxes ``(left, top, right, bottom)`` inside ``size``."""
    w, h = size
    boxes = []
    for _ in range(n):
        x, y = rng.randrange(w - patch + 1), rng.randrange(h - patch + 1)
        boxes.append((x, y, x + patch, y + patch))
    return boxes


def _rgb(img: Image.Image) -> np.ndarray:
    """One (already cropped) image as ``uint8 [H,W,3]``."""
    if img.mode in _SIXTEEN_BIT:
        grey = np.asarray(img).astype(np.int64)
        # 0..65535 -> 0..255, rounded; values outside (32-bit "I" data) are clipped.
        grey = np.clip((grey + 128) // 257, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


def decode_crops(data: bytes, boxes: Sequence[Box]) -> list[np.ndarray]:
    """Decode ``data`` at full resolution and copy out ``boxes``: each ``uint8 [P,P,3]``, 0..255.

    Raises :class:`SampleError` (``decode_failed``) when the pixel data does not decode.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # the full decode; never img.draft(), which would shrink the JPEG
            return [_rgb(img.crop(box)) for box in boxes]
    except SampleError:
        raise
    except Exception as exc:
        raise SampleError("decode_failed", str(exc)) from None


_MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def normalise(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack ``uint8 [P,P,3]`` crops into CLIP-normalised ``float32 [B,3,P,P]``.

    ``(x/255 - mean) / std`` per channel, the same arithmetic as :func:`train.normalize.to_clip_tensor`
    (evaluation), so values lie in about [-1.79, 2.15].
    """
    stacked = torch.from_numpy(np.stack(crops))  # [B,P,P,3] uint8
    out = torch.empty(stacked.shape[0], 3, *stacked.shape[1:3], dtype=torch.float32)
    out.copy_(stacked.permute(0, 3, 1, 2))  # contiguous NCHW
    return out.div_(255.0).sub_(_MEAN).div_(_STD)


def unnormalise(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalise`: ``float [B,3,P,P]`` -> ``uint8 [B,P,P,3]`` (rounded)."""
    pixels = (images.float() * _STD + _MEAN) * 255.0
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int,
            side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> ``input_ids`` and ``attention_mask``, int64 ``[B, longest]`` (mask 0/1),
    as a tokenizer's ``padding="longest"`` would pad them."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[r, cols], mask[r, cols] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask
