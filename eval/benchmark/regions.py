"""Random splice regions: a binary rectangle, ellipse or star-convex polygon covering a set share of a window.

A region is drawn inside an ``height x width`` window and returned as a ``bool [height, width]``
mask (True = the pixels that will come from the donor).  Shapes are rasterised without
anti-aliasing (Pillow's ``ImageDraw`` with a single fill value), so every pixel is wholly host
or wholly donor: nothing is blended or resampled.

How a region is drawn (all draws from the caller's ``numpy.random.Generator``, so a seed fixes
the region):

1. a shape (uniform over the allowed ones), a target area share ``a ~ U(lo, hi)`` of the window
   and an aspect ratio ``r`` (bounding-box width / height, log-uniform in 1/2..2);
2. the bounding box that gives the shape that area: ``a*A`` for a rectangle, ``a*A*4/pi`` for an
   ellipse, ``a*A/f`` for a polygon whose vertices fill a share ``f`` of their own box;
3. a uniform position with the box wholly inside the window; a box that does not fit is redrawn;
4. the rasterised share is measured and the region redrawn unless it lies in ``[lo, hi]``.

``fit`` adds a second bound on the box (the donor photo's size).  After ``MAX_TRIES`` failed
draws (tiny windows, extreme ranges, a small ``fit``) the fallback is a centred rectangle of the
middle of the range within both bounds; if even that misses the range, ValueError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("rectangle", "ellipse", "polygon")
MAX_TRIES = 200
ASPECT_RANGE = (0.5, 2.0)
POLYGON_VERTICES = (5, 12)  # inclusive range of vertex counts
POLYGON_RADIUS = (0.45, 1.0)  # vertex radius as a share of the largest, so the shape stays star-convex


@dataclass(frozen=True)
class Region:
    """A drawn region: ``mask`` ``bool [H,W]``, its shape name, area share (0..1) and box."""

    mask: np.ndarray
    shape: str
    area_fraction: float
    box: tuple[int, int, int, int]  # (y0, x0, y1, x1) of the True pixels, end-exclusive


def _polygon_unit(rng: np.random.Generator) -> np.ndarray:
    """A random star-convex polygon's vertices, ``float [K,2]`` (x, y), scaled to the unit box."""
    k = int(rng.integers(POLYGON_VERTICES[0], POLYGON_VERTICES[1] + 1))
    # Jittered, evenly spread angles keep vertices in angular order (so the outline never
    # crosses itself) while still varying the outline from draw to draw.
    angles = 2 * math.pi * (np.arange(k) + rng.uniform(-0.4, 0.4, k)) / k + rng.uniform(0, 2 * math.pi)
    radii = rng.uniform(POLYGON_RADIUS[0], POLYGON_RADIUS[1], k)
    pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    pts -= pts.min(axis=0)
    return pts / np.maximum(pts.max(axis=0), 1e-9)


def _shoelace(pts: np.ndarray) -> float:
    """Area of a simple polygon ``[K,2]``."""
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _rasterise(
    shape: str, height: int, width: int, y0: int, x0: int, bh: int, bw: int, unit: np.ndarray | None
) -> np.ndarray:
    """Draw ``shape`` filling the box ``(y0, x0, bh, bw)`` of an empty window -> ``bool [H,W]``."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    box = [x0, y0, x0 + bw - 1, y0 + bh - 1]
    if shape == "rectangle":
        draw.rectangle(box, fill=255)
    elif shape == "ellipse":
        draw.ellipse(box, fill=255)
    else:
        assert unit is not None
        pts = unit * np.array([bw - 1, bh - 1]) + np.array([x0, y0])
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=255)
    return np.asarray(canvas) > 0


def _region(mask: np.ndarray, shape: str) -> Region:
    ys, xs = np.nonzero(mask)
    box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
    return Region(mask, shape, float(mask.mean()), box)


def _fallback(height: int, width: int, lo: float, hi: float, max_h: int, max_w: int) -> np.ndarray | None:
    """A centred rectangle of the middle share within ``max_h x max_w``, or None if none fits ``[lo, hi]``."""
    target = (lo + hi) / 2 * height * width
    bh = min(max_h, max(1, round(math.sqrt(target * height / width))))
    bw = min(max_w, max(1, round(target / bh)))
    bh = min(max_h, max(1, round(target / bw)))  # re-balance when the width hit its cap
    mask = _rasterise("rectangle", height, width, (height - bh) // 2, (width - bw) // 2, bh, bw, None)
    return mask if lo <= mask.mean() <= hi else None


def draw_region(
    rng: np.random.Generator,
    height: int,
    width: int,
    area: tuple[float, float] = (0.05, 0.40),
    shapes: tuple[str, ...] = SHAPES,
    fit: tuple[int, int] | None = None,
) -> Region:
    """A random region inside an ``height x width`` window covering a share in ``area`` of it.

    ``area``: (lo, hi) with 0 < lo <= hi < 1; ``shapes``: a non-empty subset of :data:`SHAPES`;
    ``fit``: (h, w) the region's bounding box must also fit in (the donor photo), if any.
    ValueError when no region of that share fits (a ``fit`` far smaller than the window).
    """
    lo, hi = area
    if not 0 < lo <= hi < 1:
        raise ValueError(f"area range {area}: expected 0 < lo <= hi < 1")
    bad = [s for s in shapes if s not in SHAPES]
    if not shapes or bad:
        raise ValueError(f"shapes {list(shapes)}: expected a subset of {list(SHAPES)}")
    max_h, max_w = (min(height, fit[0]), min(width, fit[1])) if fit else (height, width)
    total = height * width
    for _ in range(MAX_TRIES):
        shape = shapes[int(rng.integers(len(shapes)))]
        target = rng.uniform(lo, hi)
        aspect = math.exp(rng.uniform(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])))
        unit = _polygon_unit(rng) if shape == "polygon" else None
        fill = _shoelace(unit) if unit is not None else {"rectangle": 1.0, "ellipse": math.pi / 4}[shape]
        box_area = target * total / fill
        bh, bw = round(math.sqrt(box_area / aspect)), round(math.sqrt(box_area * aspect))
        if not (2 <= bh <= max_h and 2 <= bw <= max_w):
            continue
        y0 = int(rng.integers(0, height - bh + 1))
        x0 = int(rng.integers(0, width - bw + 1))
        mask = _rasterise(shape, height, width, y0, x0, bh, bw, unit)
        if lo <= mask.mean() <= hi:
            return _region(mask, shape)
    fallback = _fallback(height, width, lo, hi, max_h, max_w)
    if fallback is None:
        raise ValueError(f"no region of {lo:.0%}-{hi:.0%} of a {width}x{height} window fits in {max_w}x{max_h}")
    return _region(fallback, "rectangle")
