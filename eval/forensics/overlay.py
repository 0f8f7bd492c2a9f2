"""A detection drawn for people: [photo | photo + heatmap colours + mask outlines] as one PNG, PIL only.

The PNG is for looking at, not for measuring (the npz holds the full-resolution maps): the
canvas is downscaled so its long side is at most ``max_side`` (1600) pixels.  Left panel: the
photo.  Right panel: the photo blended ~50 % with the heatmap through a small five-stop colour
ramp (dark = consistent, bright yellow = likely spliced), the mean-shift mask outlined in cyan
and the normalized-cuts mask outlined in green (outlines only when asked: ``detect`` asks when the
verdict is "spliced", so an authentic photo is never drawn with a splice).  A strip below holds the colour bar and a
one-line legend with the scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# Five stops, dark purple -> yellow, monotone in lightness so grey-scale printing keeps the order.
RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
MEANSHIFT_RGB = (0, 230, 255)  # cyan: far from every ramp colour
NCUTS_RGB = (60, 255, 60)  # green: likewise, and distinct from cyan
GAP, STRIP = 8, 34  # pixels between panels; legend strip height


def colorize(values: np.ndarray) -> np.ndarray:
    """``float [h,w]`` in 0..1 (clipped) -> ``uint8 [h,w,3]`` through :data:`RAMP` (piecewise linear)."""
    v = np.clip(np.nan_to_num(values.astype(np.float32), nan=0.0), 0.0, 1.0) * (len(RAMP) - 1)
    lo = np.minimum(np.floor(v).astype(np.int64), len(RAMP) - 2)
    frac = (v - lo)[..., None]
    return np.rint(RAMP[lo] * (1 - frac) + RAMP[lo + 1] * frac).astype(np.uint8)


def display_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) of one panel so that two side by side (+ gap) fit ``max_side`` on the long side."""
    scale = min(1.0, (max_side - GAP) / (2 * width), (max_side - STRIP) / height)
    return max(1, int(height * scale)), max(1, int(width * scale))  # floor: never past max_side


def outline(mask: np.ndarray, size: tuple[int, int], width: int = 3) -> np.ndarray:
    """``bool [H,W]`` -> ``bool [h,w]`` boundary pixels at display ``size`` (h, w), about ``width`` px thick."""
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)
    k = 2 * (width // 2) + 1
    # Dilation minus erosion: a band on both sides of the edge, visible at any zoom.
    edge = np.asarray(small.filter(ImageFilter.MaxFilter(k))) != np.asarray(small.filter(ImageFilter.MinFilter(k)))
    return edge


def _resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(rgb)
    return np.asarray(
        img if img.size == (size[1], size[0]) else img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    )


def _resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    img = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _legend(width: int, caption: str, outlines: bool = True) -> Image.Image:
    strip = Image.new("RGB", (width, STRIP), (24, 24, 24))
    bar_w = min(200, width // 4)
    bar = colorize(np.tile(np.linspace(0, 1, bar_w, dtype=np.float32), (12, 1)))
    strip.paste(Image.fromarray(bar), (8, 4))
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default()
    draw.text((8, 19), "0 consistent", fill=(220, 220, 220), font=font)
    draw.text((max(8, bar_w - 40), 19), "1 spliced", fill=(220, 220, 220), font=font)
    x: float = bar_w + 24  # advanced by text widths below
    draw.text((x, 4), caption, fill=(235, 235, 235), font=font)
    if not outlines:
        draw.text((x, 19), "no splice outline: the verdict is not 'spliced'", fill=(200, 200, 200), font=font)
        return strip
    draw.text((x, 19), "cyan: mean-shift mask", fill=MEANSHIFT_RGB, font=font)
    x += draw.textlength("cyan: mean-shift mask", font=font) + 16
    draw.text((x, 19), "green: normalized-cuts mask", fill=NCUTS_RGB, font=font)
    return strip


def render_overlay(
    rgb: np.ndarray,
    heatmap: np.ndarray,
    mask: np.ndarray,
    ncuts_mask: np.ndarray | None = None,
    caption: str = "",
    max_side: int = 1600,
    alpha: float = 0.5,
    outlines: bool = True,
) -> Image.Image:
    """The overlay as a PIL RGB image.

    ``rgb``: ``uint8 [H,W,3]``; ``heatmap``: ``float [H,W]`` 0..1; ``mask``/``ncuts_mask``:
    ``bool [H,W]``.  ``alpha``: weight of the colour map in the right panel (0..1).
    ``outlines``: draw the mask outlines (False: the heatmap colours only).
    """
    if heatmap.shape != rgb.shape[:2] or mask.shape != rgb.shape[:2]:
        raise ValueError(f"heatmap {heatmap.shape} / mask {mask.shape} do not match image {rgb.shape[:2]}")
    size = display_size(rgb.shape[0], rgb.shape[1], max_side)
    photo = _resize_rgb(rgb, size)
    blend = (1 - alpha) * photo.astype(np.float32) + alpha * colorize(_resize_map(heatmap, size))
    right = np.rint(blend).astype(np.uint8)
    if outlines and ncuts_mask is not None:
        right[outline(ncuts_mask, size)] = NCUTS_RGB
    if outlines:
        right[outline(mask, size)] = MEANSHIFT_RGB  # drawn last: the main mask stays visible where they meet
    h, w = size
    canvas = Image.new("RGB", (2 * w + GAP, h + STRIP), (24, 24, 24))
    canvas.paste(Image.fromarray(photo), (0, 0))
    canvas.paste(Image.fromarray(right), (w + GAP, 0))
    canvas.paste(_legend(canvas.width, caption, outlines), (0, h))
    return canvas


def write_overlay(
    path: Path,
    rgb: np.ndarray,
    heatmap: np.ndarray,
    mask: np.ndarray,
    ncuts_mask: np.ndarray | None = None,
    caption: str = "",
    max_side: int = 1600,
    outlines: bool = True,
) -> Path:
    """:func:`render_overlay` saved as PNG at ``path`` (written to a temp name, then renamed)."""
    img = render_overlay(rgb, heatmap, mask, ncuts_mask, caption, max_side, outlines=outlines)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG", compress_level=1)  # ~4x faster than 6, ~15 % larger
    tmp.replace(path)
    return path
