"""Pixels for the batch: random crop boxes, full-resolution decode of the boxes, CLIP tensors, id padding.

:func:`decode_crops` decodes the whole image at full resolution — ``Image.draft`` is never used,
the camera's pixel statistics are the signal — and copies out the boxes as RGB ``uint8``.  No
resize, flip, colour jitter, EXIF-orientation transpose or ICC conversion.

Modes (the pipeline's image policy, :mod:`exiflang.pipeline.image_policy`, decides which are accepted, from
the header, before the decode): 8-bit modes go through Pillow's ``convert("RGB")`` (grey repeated,
alpha dropped, CMYK converted naively, palettes expanded); 16-bit grey (``I;16*``, and ``I`` with
16-bit samples) is scaled by 255/65535; float (``F``), 32-bit integer and other modes are
refused.  Each box is cut *before* the conversion: every conversion here is per pixel, so this
equals converting the whole image first at a fraction of the cost.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from exiflang.pipeline.image_policy import PolicyError, decode, default_policy, pil_to_rgb
from exiflang.train.data.samples import SampleError
from exiflang.train.normalize import CLIP_MEAN, CLIP_STD

Box = tuple[int, int, int, int]


def crop_boxes(size: tuple[int, int], patch: int, n: int, rng: random.Random) -> list[Box]:
    """``n`` uniformly random ``patch``-sized boxes ``(left, top, right, bottom)`` inside ``size``."""
    w, h = size
    boxes = []
    for _ in range(n):
        x, y = rng.randrange(w - patch + 1), rng.randrange(h - patch + 1)
        boxes.append((x, y, x + patch, y + patch))
    return boxes


def decode_crops(data: bytes, boxes: Sequence[Box]) -> list[np.ndarray]:
    """Decode ``data`` at full resolution and copy out ``boxes``: each ``uint8 [P,P,3]``, 0..255.

    Raises :class:`SampleError` (``decode_failed``) when the pixel data does not decode, or with the
    image policy's status (``too_large``, ``implausible_size``, ``unsupported_mode``) before it.
    """
    policy = default_policy()
    try:
        with policy.open(data) as img:
            decode(img)  # the full decode; never img.draft(), which would shrink the JPEG
            return [pil_to_rgb(img.crop(box)) for box in boxes]
    except PolicyError as exc:
        raise SampleError(exc.status, exc.reason) from None
    except SampleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure costs this sample, not the run
        raise SampleError("decode_failed", str(exc)) from None


_MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def normalise(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack ``uint8 [P,P,3]`` crops into CLIP-normalised ``float32 [B,3,P,P]``.

    ``(x/255 - mean) / std`` per channel, the same arithmetic as :func:`exiflang.train.normalize.to_clip_tensor`
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


def pad_ids(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> ``input_ids`` and ``attention_mask``, int64 ``[B, longest]`` (mask 0/1),
    as a tokenizer's ``padding="longest"`` would pad them."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        cols = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[r, cols], mask[r, cols] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask
