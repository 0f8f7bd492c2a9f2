"""Procedural scene generator: one camera-independent linear-light scene per (seed, image index).

A scene is first *described* (gradient, textures, shapes, illuminant, brightness) from an RNG
stream keyed on ``(seed, index)`` only, in frame-normalised coordinates, and then *rendered* at
whatever resolution a camera asks for.  So two cameras shooting image ``index`` see the same
scene: identical low-frequency content, and identical pixels when their sensors match.  Nothing
here knows about cameras; `exiflang.pipeline.synth.camera` turns the radiance into a JPEG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from PIL import Image, ImageDraw, ImageFilter

# RNG stream ids: each random draw of the synthetic corpus is keyed (seed, index, stream, ...),
# so adding a draw to one stream never shifts another.
STREAM_SCENE = 1
STREAM_TEXTURE = 2
STREAM_METER = 3

LOW_K = 12  # texture frequencies (cycles/frame) fixed across resolutions
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


@dataclass(frozen=True)
class SceneInfo:
    """What the camera's meter would see: scene luminance and illuminant (no pixels).

    ev100: metered exposure value at ISO 100 (≈3 dim interior .. 15 bright sun).
    illuminant: linear RGB multipliers of the light's colour (green = 1).
    """

    ev100: float
    illuminant: tuple[float, float, float]


def scene_rng(seed: int, index: int, stream: int = STREAM_SCENE) -> np.random.Generator:
    """The RNG stream of image ``index`` of corpus ``seed`` (independent of any camera)."""
    return np.random.default_rng([int(seed), int(index), int(stream)])


def scene_info(seed: int, index: int) -> SceneInfo:
    """Metering facts of a scene, cheap (no rendering); equal to what `render_scene` returns."""
    rng = scene_rng(seed, index, STREAM_METER)
    kind = rng.integers(4)  # dim interior, interior, overcast, sun: spreads ISO over its range
    lo, hi = [(2.5, 6.0), (5.0, 9.0), (9.0, 12.5), (12.0, 15.5)][kind]
    ev = float(rng.uniform(lo, hi))
    # Warm tungsten indoors, cool shade outdoors: a one-parameter blackbody-ish tint.
    warm = float(rng.uniform(0.05, 0.45) if kind < 2 else rng.uniform(-0.2, 0.15))
    illum = (1.0 + warm, 1.0, max(0.4, 1.0 - 1.1 * warm))
    return SceneInfo(ev100=ev, illuminant=illum)


def pink_field(rng_low: np.random.Generator, rng_high: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """Two independent 1/f^beta noise fields, float32 2xHxW, zero mean, unit std.

    Frequencies up to ``LOW_K`` cycles/frame come from ``rng_low`` with a fixed-size draw, so
    that part is the same continuous function at every (h, w); finer detail is drawn per size.
    """
    ky = np.fft.fftfreq(h, 1.0 / h).astype(np.float32)
    kx = np.fft.fftfreq(w, 1.0 / w).astype(np.float32)
    # Radial frequency in cycles per frame height, so textures are isotropic at any aspect.
    rad2 = ky[:, None] ** 2 + (kx[None, :] * np.float32(h / w)) ** 2
    rad2[0, 0] = 1.0
    spec = np.empty((h, w), np.complex64)
    spec.real = rng_high.standard_normal((h, w), np.float32)
    spec.imag = rng_high.standard_normal((h, w), np.float32)
    n = 2 * LOW_K + 1
    low = rng_low.standard_normal((n, n)) + 1j * rng_low.standard_normal((n, n))
    idx = np.arange(-LOW_K, LOW_K + 1)
    spec[np.ix_(idx % h, idx % w)] = low
    spec *= rad2 ** np.float32(-beta / 2)
    spec[0, 0] = 0.0
    # A full complex inverse gives two independent real fields (real and imaginary parts) for
    # one FFT; norm="forward" makes the low band resolution independent.
    field = scipy.fft.ifft2(spec, norm="forward", workers=1)
    out = np.stack([field.real, field.imag]).astype(np.float32)
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-12
    return out


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A natural-ish surface albedo, linear RGB in (0.02, 0.85): mostly muted, sometimes vivid."""
    base = rng.uniform(0.03, 0.7)
    sat = rng.beta(1.2, 2.5)
    hue = rng.dirichlet([1.0, 1.0, 1.0]) * 3.0
    return np.clip(base * ((1 - sat) + sat * hue), 0.02, 0.85).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth two-colour gradient along a random direction, float32 HxWx3 linear."""
    c0, c1 = _colour(rng), _colour(rng)
    theta = rng.uniform(0, 2 * np.pi)
    y = (np.arange(h, dtype=np.float32) + 0.5) / h
    x = (np.arange(w, dtype=np.float32) + 0.5) / w
    t = np.cos(theta) * (x[None, :] - 0.5) + np.sin(theta) * (y[:, None] - 0.5) + 0.5
    t = np.clip(t, 0, 1)
    t = t * t * (3 - 2 * t)  # smoothstep: horizons and skies fade rather than ramp
    return c0 + (c1 - c0) * t[..., None]


def _draw_mask(
    kind: str, geom: np.ndarray, width: float, h: int, w: int, soft: float
) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Rasterise one shape on its bounding box: ((y0, y1, x0, x1), float32 mask in [0, 1])."""
    pts = geom * np.array([w, h], np.float32)
    pad = int(np.ceil(3 * soft + width)) + 2
    x0, y0 = np.floor(pts.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int) + pad
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return (0, 0, 0, 0), np.zeros((0, 0), np.float32)
    img = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
    draw = ImageDraw.Draw(img)
    local = [(float(px - x0), float(py - y0)) for px, py in pts]
    if kind == "ellipse":
        draw.ellipse([local[0], local[1]], fill=255)
    elif kind == "line":
        draw.line(local, fill=255, width=max(1, int(round(width))))
    else:
        draw.polygon(local, fill=255)
    if soft > 0.3:  # out-of-focus object: soft edge
        img = img.filter(ImageFilter.GaussianBlur(soft))
    return (int(y0), int(y1), int(x0), int(x1)), np.asarray(img, np.float32) / 255.0


def _shape_geometry(rng: np.random.Generator) -> tuple[str, np.ndarray, float]:
    """Kind, frame-normalised points (Nx2, x then y) and relative stroke width of one shape."""
    kind = str(rng.choice(["ellipse", "polygon", "rect", "line"], p=[0.35, 0.3, 0.2, 0.15]))
    cx, cy = rng.uniform(-0.1, 1.1, size=2)
    size = 0.5 * rng.uniform(0.03, 0.6) ** 1.3  # many small, few large: scale-free-ish
    if kind == "ellipse":
        rx, ry = size * rng.uniform(0.4, 1.6, size=2)
        pts = np.array([[cx - rx, cy - ry], [cx + rx, cy + ry]])
    elif kind == "polygon":
        n = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = size * rng.uniform(0.4, 1.2, n)
        pts = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], axis=1)
    elif kind == "rect":
        a, b = size * rng.uniform(0.3, 1.5, size=2)
        rot = rng.uniform(0, np.pi)
        corners = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
        c, s = np.cos(rot), np.sin(rot)
        pts = corners @ np.array([[c, s], [-s, c]]) + [cx, cy]
    else:
        n = int(rng.integers(2, 5))
        pts = np.array([cx, cy]) + np.cumsum(rng.normal(0, size, (n, 2)), axis=0)
    return kind, pts.astype(np.float32), float(rng.uniform(0.001, 0.006))


def _fill_params(rng: np.random.Generator) -> dict:
    """Surface description of one shape, drawn whether or not it lands in the frame (so every
    later draw is the same at any resolution)."""
    return dict(
        c0=_colour(rng),
        mode=int(rng.choice(3, p=[0.45, 0.4, 0.15])),
        light=rng.normal(0, 1.5, 2),
        tex_gain=rng.uniform(0.15, 0.6),
        c1=_colour(rng),
        freq=rng.uniform(8, 60),
        angle=rng.uniform(0, np.pi),
    )


def _fill(p: dict, tex: np.ndarray, box: tuple[int, int, int, int], h: int, w: int) -> np.ndarray:
    """Surface of one shape over its box: shaded, textured or striped albedo, float32 hxwx3."""
    y0, y1, x0, x1 = box
    yy = ((np.arange(y0, y1, dtype=np.float32) + 0.5) / h)[:, None]
    xx = ((np.arange(x0, x1, dtype=np.float32) + 0.5) / w)[None, :]
    # Shading: a plane of illumination across the object.
    shade = np.clip(1 + p["light"][0] * (xx - xx.mean()) + p["light"][1] * (yy - yy.mean()), 0.3, 1.7)
    if p["mode"] == 1:  # textured surface: the global 1/f field with its own contrast
        shade = shade * np.exp(p["tex_gain"] * tex[y0:y1, x0:x1])
    surf = p["c0"] * shade[..., None]
    if p["mode"] == 2:  # fabric / blinds: a grating between two colours
        th = p["angle"]
        g = 0.5 + 0.5 * np.sin(2 * np.pi * p["freq"] * (np.cos(th) * xx * (w / h) + np.sin(th) * yy))
        surf = surf * (1 - g[..., None]) + p["c1"] * shade[..., None] * g[..., None]
    return surf.astype(np.float32)


def _up2(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Repeat each pixel of a half-resolution array 2x2 and crop to h x w (leading axes)."""
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)[:h, :w]


def render_scene(seed: int, index: int, height: int, width: int) -> tuple[np.ndarray, SceneInfo]:
    """Render scene ``index`` of corpus ``seed`` at ``height x width`` pixels.

    Returns (radiance float32 HxWx3, linear light, scaled so mean luminance is about 0.18 times
    a per-scene key of ±1 stop; highlights may exceed 1 and will clip in the camera, and the
    `SceneInfo` used for metering).  Depends only on (seed, index) and the requested size.
    """
    info = scene_info(seed, index)
    rng = scene_rng(seed, index)
    # Smooth parts (texture, gradient, light) are built at half resolution and repeated 2x2:
    # detail above half the canvas Nyquist would be averaged away by the sensor's pixels anyway.
    h2, w2 = -(-height // 2), -(-width // 2)
    rng_low = scene_rng(seed, index, STREAM_TEXTURE)
    rng_high = np.random.default_rng([int(seed), int(index), STREAM_TEXTURE, h2, w2])
    tex = pink_field(rng_low, rng_high, h2, w2, beta=float(rng.uniform(0.9, 1.5)))
    base = _background(rng, h2, w2) * np.exp(np.float32(rng.uniform(0.05, 0.3)) * tex[0])[..., None]
    img = _up2(base, height, width)
    tex_shapes = _up2(tex[1], height, width)
    for _ in range(int(rng.integers(8, 28))):
        kind, geom, stroke = _shape_geometry(rng)
        soft = float(rng.exponential(0.004) if rng.random() < 0.35 else 0.0) * height
        params = _fill_params(rng)
        box, mask = _draw_mask(kind, geom, stroke * height, height, width, soft)
        if mask.size:
            y0, y1, x0, x1 = box
            m = mask[..., None]
            img[y0:y1, x0:x1] += (_fill(params, tex_shapes, box, height, width) - img[y0:y1, x0:x1]) * m
    # Uneven illumination over the frame (vignetting is the camera's, this is the light's).
    gx, gy = rng.normal(0, 0.35, 2)
    y = (np.arange(h2, dtype=np.float32) / h2 - 0.5)[:, None]
    x = (np.arange(w2, dtype=np.float32) / w2 - 0.5)[None, :]
    light = _up2(np.clip(1 + np.float32(gx) * x + np.float32(gy) * y, 0.4, 1.6), height, width)
    # Exposure key: mean luminance (on a sparse grid: same value, a fraction of the cost).
    key = 0.18 * 2.0 ** float(rng.normal(0, 0.4))
    lum = float(((img[::4, ::4] @ LUMA) * light[::4, ::4]).mean())
    img *= light[..., None] * (key / max(lum, 1e-6) * np.asarray(info.illuminant, np.float32))
    return img.astype(np.float32, copy=False), info
