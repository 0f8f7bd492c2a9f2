"""Synthetic radial lens distortion and the crop set of the paper's radial-distortion linear probe.

The model is the one-parameter polynomial ``r_d = r_u * (1 + k1 * r_u**2)``: a point at normalised
radius ``r_u`` from the image centre in the undistorted image lands at ``r_d`` in the distorted
one; ``k1 < 0`` is barrel distortion (magnification falls off with the radius, straight lines
bow outwards), ``k1 > 0`` pincushion.  :func:`distort` maps by inversion: for every output
(distorted) pixel it solves the cubic for ``r_u`` on its monotone branch and samples the input
bilinearly there.  Radii are normalised by ``radius`` pixels: by default the input's
half-diagonal ``0.5 * sqrt(H**2 + W**2)``.

Pixels with no source are filled: for ``k1 < 0`` the polynomial peaks at
``r_d = 2 / (3 * sqrt(-3 * k1))`` (e.g. 0.609 for k1 = -0.4), so output radii beyond that have no
solution and are 0; a source outside the input is 0 (``fill="zero"``) or mirrored back into it
(``fill="reflect"``).  Barrel distortion of a full frame therefore leaves a dark rim.

The probe set (:func:`make_probe_set`) avoids any fill: each crop is the central ``crop x crop``
of a distorted square context window cut at a random place of the photo, with the radius
normalised so that the crop's corner sits at ``r_d = CORNER_RADIUS`` (0.6, inside the invertible
range for every k1 >= -0.4), i.e. ``radius = crop / (sqrt(2) * 0.6)`` (603 px for 512-px crops).
The context is large enough for the strongest distortion (702 px for 512-px crops), so every
output pixel is sampled from real photo pixels; photos smaller than it on a side are skipped.
k1 is drawn uniformly from ``[-0.4, 0)`` and quantised into 20 equal bins.
"""

from __future__ import annotations

import functools
import logging
import math
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from exiflang.eval.images import ImageError, load_rgb

log = logging.getLogger("exiflang.eval")

K1_RANGE = (-0.4, 0.0)  # the paper's range of k1
N_BINS = 20  # the paper's quantisation of k1
CORNER_RADIUS = 0.6  # normalised radius of a probe crop's corner (< 0.609, the fold at k1=-0.4)
FILLS = ("zero", "reflect")


def fold_radius(k1: float) -> float:
    """Largest distorted radius the model reaches for ``k1 < 0`` (``inf`` for ``k1 >= 0``)."""
    return math.inf if k1 >= 0 else 2.0 / (3.0 * math.sqrt(-3.0 * k1))


def undistorted_radius(r_d: np.ndarray, k1: float, iterations: int = 60) -> np.ndarray:
    """Solve ``r_u + k1 * r_u**3 = r_d`` elementwise -> ``float64`` like ``r_d`` (NaN: no solution).

    ``r_d >= 0``.  Newton's method from ``r_u = r_d``: the cubic is concave for ``k1 < 0`` and
    convex for ``k1 > 0`` on ``r >= 0``, so the iterates approach the root of the monotone branch
    from one side and never jump past the fold.  ``k1 = 0`` returns ``r_d`` exactly.
    """
    r_d = np.asarray(r_d, dtype=np.float64)
    r = r_d.copy()
    if k1 == 0:
        return r
    valid = r_d <= fold_radius(k1)
    for _ in range(iterations):
        f = r + k1 * r**3 - r_d
        if np.all(np.abs(f[valid]) < 1e-13):
            break
        slope = np.maximum(1.0 + 3.0 * k1 * r**2, 1e-12)  # > 0 below the fold; the floor guards it
        r = np.where(valid, r - f / slope, r)
    return np.where(valid, r, np.nan)


def source_coordinates(
    out_shape: tuple[int, int], in_shape: tuple[int, int], k1: float, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Where each output pixel samples the input: ``(ys, xs)`` ``float64 [h, w]`` in input pixels.

    Output and input share their centres (``(size - 1) / 2``); NaN marks pixels with no source.
    """
    oh, ow = out_shape
    dy = np.arange(oh, dtype=np.float64)[:, None] - (oh - 1) / 2.0
    dx = np.arange(ow, dtype=np.float64)[None, :] - (ow - 1) / 2.0
    r_d = np.hypot(dy, dx) / radius
    r_u = undistorted_radius(r_d, k1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(r_d > 0, r_u / np.where(r_d > 0, r_d, 1.0), 1.0)
    return (in_shape[0] - 1) / 2.0 + dy * scale, (in_shape[1] - 1) / 2.0 + dx * scale


def _mirror(coord: np.ndarray, size: int) -> np.ndarray:
    """Reflect coordinates into ``[0, size - 1]`` about the edge pixel centres (no edge repeat)."""
    if size == 1:
        return np.zeros_like(coord)
    period = 2.0 * (size - 1)
    c = np.mod(coord, period)
    return np.where(c > size - 1, period - c, c)


def sample_bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, fill: str = "zero") -> np.ndarray:
    """Bilinear samples of ``image`` ``[H,W,C]`` at ``(ys, xs)`` ``[h,w]`` -> ``float32 [h,w,C]``.

    ``zero``: neighbours outside the image count as 0; ``reflect``: coordinates are mirrored into
    the image first.  NaN coordinates give 0.
    """
    if fill not in FILLS:
        raise ValueError(f"fill {fill!r}: expected one of {FILLS}")
    height, width = image.shape[:2]
    nan = np.isnan(ys) | np.isnan(xs)
    ys, xs = np.where(nan, -2.0, ys), np.where(nan, -2.0, xs)
    if fill == "reflect":
        ys, xs = _mirror(ys, height), _mirror(xs, width)
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    wy, wx = (ys - y0).astype(np.float32)[..., None], (xs - x0).astype(np.float32)[..., None]
    flat = image.reshape(height * width, image.shape[2]).astype(np.float32, copy=False)
    out = np.zeros(ys.shape + (image.shape[2],), dtype=np.float32)
    for oy, ox, weight in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        yy, xx = y0 + oy, x0 + ox
        inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
        vals = flat[np.clip(yy, 0, height - 1) * width + np.clip(xx, 0, width - 1)]
        if not inside.all():  # the probe's crops never leave the image: skip the mask there
            weight = weight * inside[..., None]
        out += vals * weight
    out[nan] = 0.0
    return out


def distort(
    rgb: np.ndarray,
    k1: float,
    *,
    radius: float | None = None,
    out_size: tuple[int, int] | None = None,
    fill: str = "zero",
) -> np.ndarray:
    """Apply barrel (``k1 < 0``) or pincushion (``k1 > 0``) distortion about the image centre.

    ``rgb``: ``[H,W,C]`` uint8 (0..255) or float.  ``radius``: the normalising radius in pixels
    (default the half-diagonal ``0.5 * sqrt(H**2 + W**2)``).  ``out_size``: ``(h, w)`` of the
    output, centred on the input (default ``(H, W)``).  Returns the input's dtype (uint8 rounded
    and clipped; float as float32); ``k1 = 0`` with the default size returns the input's pixels.
    """
    if rgb.ndim != 3:
        raise ValueError(f"expected an [H,W,C] image, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    radius = 0.5 * math.hypot(height, width) if radius is None else float(radius)
    if radius <= 0:
        raise ValueError(f"radius {radius}: must be positive")
    ys, xs = source_coordinates(out_size or (height, width), (height, width), float(k1), radius)
    out = sample_bilinear(rgb, ys, xs, fill)
    if rgb.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out


def k1_bins(k1: np.ndarray, n_bins: int = N_BINS, k1_range: tuple[float, float] = K1_RANGE) -> np.ndarray:
    """``k1`` -> bin index ``int64`` in ``0..n_bins-1`` (equal bins over ``k1_range``; ends clipped)."""
    lo, hi = k1_range
    idx = np.floor((np.asarray(k1, dtype=np.float64) - lo) / (hi - lo) * n_bins).astype(np.int64)
    return np.clip(idx, 0, n_bins - 1)


def bin_centres(n_bins: int = N_BINS, k1_range: tuple[float, float] = K1_RANGE) -> np.ndarray:
    """``float64 [n_bins]``: the k1 at the middle of each bin."""
    lo, hi = k1_range
    return lo + (np.arange(n_bins) + 0.5) * (hi - lo) / n_bins


@functools.lru_cache(maxsize=16)  # 0.04 s of maths per call, asked once per photo
def probe_geometry(crop: int = 512, k1_min: float = K1_RANGE[0]) -> tuple[float, int]:
    """``(radius, context)`` for probe crops: the normalising radius in pixels and the side of the
    square context window whose central ``crop`` pixels stay fully sampled down to ``k1_min``."""
    radius = crop / (math.sqrt(2.0) * CORNER_RADIUS)
    ys, xs = source_coordinates((crop, crop), (crop, crop), k1_min, radius)
    if np.isnan(ys).any():
        raise ValueError(f"k1 {k1_min} folds inside the crop (corner radius {CORNER_RADIUS})")
    reach = max(np.abs(ys - (crop - 1) / 2.0).max(), np.abs(xs - (crop - 1) / 2.0).max())
    margin = int(math.ceil(reach - (crop - 1) / 2.0)) + 1  # +1: the bilinear neighbour
    return radius, crop + 2 * margin  # even margin both sides keeps the centres on one pixel


class ProbeSet(NamedTuple):
    """Distorted crops and their labels; ``skipped`` lists ``"PATH: reason"`` for unusable photos."""

    crops: np.ndarray  # uint8 [N, crop, crop, 3]
    k1: np.ndarray  # float64 [N], in [-0.4, 0)
    bins: np.ndarray  # int64 [N], 0..19 (0 = strongest barrel)
    photo: np.ndarray  # int64 [N], index into the photo list
    skipped: list[str]


def photo_rng(path: Path, seed: int) -> np.random.Generator:
    """A generator keyed on (seed, file name): a photo's crops do not depend on the list it is in."""
    return np.random.default_rng([int(seed), zlib.crc32(Path(path).name.encode())])


def photo_crops(
    rgb: np.ndarray, n: int, rng: np.random.Generator, crop: int = 512, k1_range: tuple[float, float] = K1_RANGE
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distorted crops of one photo -> ``(uint8 [n, crop, crop, 3], k1 float64 [n])``.

    Raises ``ValueError`` when the photo is smaller than the context window on a side.
    """
    radius, context = probe_geometry(crop, k1_range[0])
    height, width = rgb.shape[:2]
    if min(height, width) < context:
        raise ValueError(
            f"{width}x{height} is smaller than the {context}x{context} context a {crop}-px distorted crop needs"
        )
    k1 = rng.uniform(k1_range[0], k1_range[1], size=n)
    out = np.empty((n, crop, crop, 3), dtype=np.uint8)
    for i in range(n):
        y0 = int(rng.integers(0, height - context + 1))
        x0 = int(rng.integers(0, width - context + 1))
        window = rgb[y0 : y0 + context, x0 : x0 + context]
        out[i] = distort(window, float(k1[i]), radius=radius, out_size=(crop, crop))
    return out, k1


def iter_probe_crops(
    photos: Sequence[Path], n_per_photo: int, seed: int = 0, crop: int = 512
) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None, str]]:
    """Per photo ``(index, crops or None, k1 or None, skip reason or "")``: one photo in memory at a time."""
    for index, path in enumerate(photos):
        try:
            rgb = load_rgb(path)
            crops, k1 = photo_crops(rgb, n_per_photo, photo_rng(path, seed), crop)
        except ImageError as exc:
            yield index, None, None, str(exc)
            continue
        except ValueError as exc:
            yield index, None, None, f"{path}: {exc}"
            continue
        yield index, crops, k1, ""


def make_probe_set(photos: Sequence[Path], n_per_photo: int = 8, seed: int = 0, crop: int = 512) -> ProbeSet:
    """Random distorted ``crop x crop`` crops of every usable photo (see the module docstring).

    Unreadable photos and photos smaller than the context window are skipped, each with a
    one-line reason in ``skipped`` (also logged).
    """
    crops: list[np.ndarray] = []
    k1s: list[np.ndarray] = []
    idx: list[np.ndarray] = []
    skipped: list[str] = []
    for index, c, k1, reason in iter_probe_crops(photos, n_per_photo, seed, crop):
        if c is None or k1 is None:  # both None together: a skipped photo
            log.warning("skipped %s", reason)
            skipped.append(reason)
            continue
        crops.append(c)
        k1s.append(k1)
        idx.append(np.full(len(c), index, dtype=np.int64))
    if not crops:
        return ProbeSet(
            np.zeros((0, crop, crop, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), skipped
        )
    k1 = np.concatenate(k1s)
    return ProbeSet(np.concatenate(crops), k1, k1_bins(k1), np.concatenate(idx), skipped)
