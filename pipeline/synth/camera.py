"""Simulated cameras: each camera's fixed parameters, and the chain that turns radiance into a JPEG.

Chain (all float32, linear light until the tone curve): pixel-area integration (2x box down from
the scene) -> vignetting and lens blur -> exposure -> sensor colour response (inverse colour
matrix, daylight raw balance) -> Bayer mosaic -> PRNU, column pattern, shot + read noise, ADC
quantisation -> demosaic -> white balance -> colour matrix -> tone curve -> noise reduction and
sharpening -> 8-bit -> JPEG with the camera's own quantisation tables and chroma subsampling.
Parameters are drawn from the corpus seed by `exiflang.pipeline.synth.params`; this module holds the
dataclass, the processing (its only randomness is the noise RNG it is handed) and the encoder.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, median_filter

CFA_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
DEMOSAIC = ("bilinear", "malvar", "freeman")
SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}  # Pillow's `subsampling=` codes

# Malvar-He-Cutler (2004) 5x5 demosaicing filters, x1/8; bilinear ones for comparison.
_MHC_G_AT_RB = (
    np.array([[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]], np.float32) / 8
)
_MHC_ROW = (
    np.array(
        [[0, 0, 0.5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1], [0, -1, 0, -1, 0], [0, 0, 0.5, 0, 0]], np.float32
    )
    / 8
)
_MHC_COL = _MHC_ROW.T.copy()
_MHC_DIAG = (
    np.array(
        [[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5], [0, 2, 0, 2, 0], [0, 0, -1.5, 0, 0]], np.float32
    )
    / 8
)
_BIL_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4
_BIL_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4
_Y = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class CameraModel:
    """Every fixed setting of one simulated camera (JSON-serialisable via `to_dict`).

    Noise units: ``full_well_e`` and ``read_noise_e`` in electrons at base ISO; ``adc_noise``
    and ``column_fpn`` as fractions of full scale; ``prnu`` as relative gain std.
    ``qtables`` are two 64-entry tables (luma, chroma) in natural (row-major) order.
    """

    index: int
    seed: int
    make: str
    model: str
    software: str
    kind: str  # phone | compact | apsc | fullframe
    width: int
    height: int
    crop_factor: float
    focal_range: tuple[float, float]
    fnum_range: tuple[float, float, float]  # widest at wide end, widest at tele end, smallest
    iso_set: tuple[int, ...]
    auto_iso_max: int
    shutter_range: tuple[float, float]  # fastest, slowest (seconds)
    continuous_shutter: bool  # phones: any 1/n, not only standard stops
    full_well_e: float
    read_noise_e: float
    adc_noise: float
    prnu: float
    column_fpn: float
    raw_bits: int
    cfa: str
    demosaic: str
    wb_daylight: tuple[float, float, float]  # raw gains that neutralise daylight
    awb_strength: float  # 0 = fixed daylight WB, 1 = full grey-world
    ccm: tuple[tuple[float, ...], ...]  # 3x3, white-balanced camera RGB -> linear sRGB
    exposure_offset: float  # EV the camera's metering adds (its "look")
    gamma: float
    s_curve: float
    luma_nr: float
    chroma_nr: float
    sharpen_amount: float
    sharpen_radius: float
    vignetting: float
    lens_blur: float
    jpeg_quality: int
    qtables: tuple[tuple[int, ...], tuple[int, ...]]
    subsampling: int
    jpeg_optimize: bool
    exif: dict[str, Any]  # fixed EXIF profile (see exiflang.pipeline.synth.corpus)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["subsampling_name"] = SUBSAMPLING[self.subsampling]
        return d

    @property
    def base_iso(self) -> int:
        return self.iso_set[0]


@lru_cache(maxsize=8)
def _fixed_pattern(seed: int, index: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The sensor's own PRNU map (HxW, unit std) and column offsets (W, unit std); cached."""
    rng = np.random.default_rng([seed, index, 77, h, w])
    return rng.standard_normal((h, w), np.float32), rng.standard_normal(w, np.float32)


@lru_cache(maxsize=64)
def _tone_lut(gamma: float, s_curve: float, n: int = 4096) -> np.ndarray:
    """Tone curve as a LUT over linear [0, 1] -> display [0, 1], float32 (n,)."""
    x = np.linspace(0, 1, n, dtype=np.float64)
    eps = 0.004  # finite slope at black so shadow noise is not blown up without bound
    g = 1.0 / gamma
    y = ((x + eps) ** g - eps**g) / ((1 + eps) ** g - eps**g)
    y = (1 - s_curve) * y + s_curve * (3 * y**2 - 2 * y**3)
    return y.astype(np.float32)


def _cfa_masks(cfa: str, h: int, w: int) -> np.ndarray:
    """Boolean 3xHxW masks of where the R, G and B photosites are."""
    masks = np.zeros((3, h, w), bool)
    for (dy, dx), c in zip([(0, 0), (0, 1), (1, 0), (1, 1)], cfa):
        masks["RGB".index(c), dy::2, dx::2] = True
    return masks


def _filt(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """2-D correlation of HxW ``img`` with a small sparse kernel, mirror borders.

    A sum of shifted views over the kernel's non-zero taps: faster than ndimage for these
    mostly-zero 5x5 kernels, and 'reflect' padding keeps the Bayer phase at the borders.
    """
    r = k.shape[0] // 2
    p = np.pad(img, r, mode="reflect")
    h, w = img.shape
    out = np.zeros_like(img)
    for dy, dx in zip(*np.nonzero(k)):
        out += k[dy, dx] * p[dy : dy + h, dx : dx + w]
    return out


def demosaic(mosaic: np.ndarray, cfa: str, method: str) -> np.ndarray:
    """Interpolate a Bayer mosaic (float32 HxW) to float32 HxWx3 with the named method."""
    h, w = mosaic.shape
    m = _cfa_masks(cfa, h, w)
    out = np.empty((h, w, 3), np.float32)
    if method == "malvar":
        g_rb, row, col, diag = (_filt(mosaic, k) for k in (_MHC_G_AT_RB, _MHC_ROW, _MHC_COL, _MHC_DIAG))
        out[..., 1] = np.where(m[1], mosaic, g_rb)
        for c, other in ((0, 2), (2, 0)):
            # At a green site, this colour is either in the same row or the same column.
            in_row = np.broadcast_to(m[c].any(axis=1, keepdims=True), (h, w))
            at_g = np.where(in_row, row, col)
            out[..., c] = np.where(m[c], mosaic, np.where(m[other], diag, at_g))
        return out
    for c in range(3):
        out[..., c] = _filt(mosaic * m[c], _BIL_G if c == 1 else _BIL_RB)
    if method == "freeman":
        # Freeman (1988): median-filter the colour differences to suppress zipper/false colour.
        for c in (0, 2):
            out[..., c] = out[..., 1] + median_filter(out[..., c] - out[..., 1], size=3, mode="mirror")
    return out


def optics(cam: CameraModel, radiance: np.ndarray) -> np.ndarray:
    """Pixel integration + lens: radiance float32 (2H)x(2W)x3 -> irradiance float32 HxWx3."""
    h, w = cam.height, cam.width
    r = radiance
    # 100 % fill-factor photosites: each integrates a 2x2 block (strided sums beat reshape-mean).
    img = (r[0::2, 0::2] + r[1::2, 0::2] + r[0::2, 1::2] + r[1::2, 1::2]) * np.float32(0.25)
    if cam.lens_blur > 0.05:
        img = gaussian_filter(img, (cam.lens_blur, cam.lens_blur, 0), mode="nearest", truncate=3.0)
    if cam.vignetting > 0:
        y = np.linspace(-1, 1, h, dtype=np.float32)[:, None] * (h / w)
        x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
        img = img * (1 - cam.vignetting * (x * x + y * y) / (1 + (h / w) ** 2))[..., None]
    return img.astype(np.float32, copy=False)


def sensor(cam: CameraModel, irradiance: np.ndarray, iso: int, gain: float, rng: np.random.Generator) -> np.ndarray:
    """Expose, sample through the CFA and add noise: float32 HxWx3 -> raw float32 HxW in [0, 1].

    ``gain`` is the exposure relative to metered-correct (2.0 = one stop over).  Noise in
    full-scale units at analogue gain a = ISO/base: shot var = v*a/FW, read std = read*a/FW.
    """
    inv_ccm = np.linalg.inv(np.asarray(cam.ccm, np.float64))
    to_raw = (inv_ccm / np.asarray(cam.wb_daylight)[:, None]).astype(np.float32)
    scale = np.float32(gain * 2.0**cam.exposure_offset)
    cam_rgb = np.maximum(irradiance @ (to_raw.T * scale), 0)
    h, w = cam.height, cam.width
    m = _cfa_masks(cam.cfa, h, w)
    mosaic = np.where(m[0], cam_rgb[..., 0], np.where(m[1], cam_rgb[..., 1], cam_rgb[..., 2]))
    prnu, cols = _fixed_pattern(cam.seed, cam.index, h, w)
    mosaic = mosaic * (1 + cam.prnu * prnu)
    a = iso / cam.base_iso
    fw = cam.full_well_e / a  # electrons at full scale once the amplifier gain is applied
    sigma = np.sqrt(np.clip(mosaic, 0, 1) / fw + (cam.read_noise_e / fw) ** 2 + cam.adc_noise**2)
    mosaic = mosaic + sigma * rng.standard_normal((h, w), np.float32)
    mosaic += (cam.column_fpn * a**0.5) * cols[None, :]
    levels = float(2**cam.raw_bits - 1)
    return (np.round(np.clip(mosaic, 0, 1) * levels) / levels).astype(np.float32)


def render(cam: CameraModel, raw: np.ndarray, iso: int) -> np.ndarray:
    """Camera ISP: raw mosaic float32 HxW in [0, 1] -> sRGB uint8 HxWx3."""
    rgb = demosaic(raw, cam.cfa, cam.demosaic)
    daylight = np.asarray(cam.wb_daylight, np.float64)
    if cam.awb_strength > 0:
        # Grey-world estimate on the central crop, pulled towards daylight by the camera's trust.
        h, w = raw.shape
        mean = rgb[h // 8 : -h // 8, w // 8 : -w // 8].reshape(-1, 3).mean(axis=0).astype(np.float64) + 1e-6
        # Raw was divided by the daylight gains, so grey-world gains already include them.
        grey = np.clip(mean[1] / mean, daylight * 0.4, daylight * 2.5)
        gains = daylight ** (1 - cam.awb_strength) * grey**cam.awb_strength
    else:
        gains = daylight
    gains = gains / gains[1]
    mat = (np.asarray(cam.ccm) * gains[None, :]).astype(np.float32)
    lin = np.clip(rgb @ mat.T, 0, 1)
    lut = _tone_lut(cam.gamma, cam.s_curve)
    disp = lut[(lin * (len(lut) - 1) + 0.5).astype(np.int32)]
    return finish(cam, disp, iso)


def finish(cam: CameraModel, disp: np.ndarray, iso: int) -> np.ndarray:
    """Noise reduction and unsharp masking in luma/chroma: float32 HxWx3 [0,1] -> uint8 HxWx3."""
    y = disp @ _Y
    chroma = disp - y[..., None]
    if cam.chroma_nr > 0.2:
        chroma = gaussian_filter(chroma, (cam.chroma_nr, cam.chroma_nr, 0), truncate=3.0)
    # Cameras denoise harder at high ISO; this never fully removes the noise, as real ones don't.
    # Some smoothing even at base ISO (the camera's "look"), more as the gain goes up.
    w_nr = cam.luma_nr * (0.3 + 0.7 * float(np.clip(np.log2(iso / cam.base_iso) / 6, 0, 1)))
    if w_nr > 0.01:
        y = (1 - w_nr) * y + w_nr * gaussian_filter(y, 0.8, truncate=3.0)
    if cam.sharpen_amount > 0:
        y = y + cam.sharpen_amount * (y - gaussian_filter(y, cam.sharpen_radius, truncate=3.0))
    out = np.clip(y[..., None] + chroma, 0, 1)
    return (out * 255 + 0.5).astype(np.uint8)


def capture(cam: CameraModel, radiance: np.ndarray, iso: int, gain: float, rng: np.random.Generator) -> np.ndarray:
    """Full chain: scene radiance float32 (2H)x(2W)x3 linear -> sRGB uint8 HxWx3."""
    return render(cam, sensor(cam, optics(cam, radiance), iso, gain, rng), iso)


def encode_jpeg(cam: CameraModel, rgb: np.ndarray) -> bytes:
    """JPEG bytes of uint8 HxWx3 with the camera's qtables (used as-is) and subsampling."""
    buf = io.BytesIO()
    # No `quality=`: with `qtables=` Pillow would rescale the tables by it.
    Image.fromarray(rgb).save(
        buf, "JPEG", qtables=[list(t) for t in cam.qtables], subsampling=cam.subsampling, optimize=cam.jpeg_optimize
    )
    return buf.getvalue()
