"""One shot's settings (auto-exposure) and the EXIF a simulated camera writes for it.

Exposure follows the APEX relation EV100 = log2(N^2 / t) - log2(ISO / 100): the camera picks an
aperture, raises ISO (from its own ISO set) until the shutter time is hand-holdable, and snaps
the time to its shutter stops; the image is then exposed by 2^(scene EV - set EV), so EXIF,
brightness and noise agree.  Fixed tags come from the camera's profile, varying ones (ISO, time,
aperture, focal length, bias, dates) from the shot.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction

import numpy as np
import pyexiv2
from PIL import Image

from exiflang.pipeline.synth.camera import CameraModel
from exiflang.pipeline.synth.scene import SceneInfo

STREAM_SHOT = 4
FSTOPS = (
    1.0,
    1.1,
    1.2,
    1.4,
    1.6,
    1.7,
    1.8,
    1.9,
    2.0,
    2.2,
    2.4,
    2.5,
    2.8,
    3.1,
    3.2,
    3.3,
    3.5,
    4.0,
    4.5,
    5.0,
    5.6,
    6.3,
    7.1,
    8.0,
    9.0,
    10.0,
    11.0,
    13.0,
    14.0,
    16.0,
    18.0,
    20.0,
    22.0,
)
SHUTTERS = tuple(
    [
        Fraction(1, d)
        for d in (
            8000,
            6400,
            5000,
            4000,
            3200,
            2500,
            2000,
            1600,
            1250,
            1000,
            800,
            640,
            500,
            400,
            320,
            250,
            200,
            160,
            125,
            100,
            80,
            60,
            50,
            40,
            30,
            25,
            20,
            15,
            13,
            10,
            8,
            6,
            5,
            4,
        )
    ]
    + [
        Fraction(s)
        for s in (
            "3/10",
            "2/5",
            "1/2",
            "3/5",
            "4/5",
            "1",
            "13/10",
            "8/5",
            "2",
            "5/2",
            "16/5",
            "4",
            "5",
            "6",
            "8",
            "10",
            "13",
            "15",
            "20",
            "25",
            "30",
        )
    ]
)


@dataclass(frozen=True)
class Shot:
    """Settings of one exposure.  ``gain``: exposure relative to metered-correct (2 = +1 EV)."""

    iso: int
    exposure_time: Fraction
    f_number: float
    focal_length: float
    bias_steps: int  # exposure compensation in thirds of a stop
    program: int  # EXIF ExposureProgram: 1 manual, 2 normal, 3 aperture priority
    gain: float
    scene_ev: float
    timestamp: int  # UTC seconds
    subsec: int
    scene_capture: int


def _snap_time(t: float, cam: CameraModel) -> Fraction:
    """Nearest shutter time the camera can set (log distance), inside its range."""
    fast, slow = cam.shutter_range
    t = min(max(t, fast), slow)
    if cam.continuous_shutter and t < 1:
        return Fraction(1, max(1, round(1 / t)))
    allowed = [s for s in SHUTTERS if fast * 0.99 <= s <= slow * 1.01]
    return min(allowed, key=lambda s: abs(math.log(float(s) / t)))


def _aperture(
    cam: CameraModel, rng: np.random.Generator, focal: float, program: int, ev: float
) -> tuple[float, list[float]]:
    """(chosen f-number, the stops the lens allows at this focal length)."""
    lo, hi = cam.focal_range
    frac = 0.0 if hi == lo else math.log(focal / lo) / math.log(hi / lo)
    widest = cam.fnum_range[0] + frac * (cam.fnum_range[1] - cam.fnum_range[0])
    stops = [s for s in FSTOPS if widest - 0.05 <= s <= cam.fnum_range[2]] or [cam.fnum_range[0]]
    if len(stops) == 1:
        return stops[0], stops
    if program == 2:  # program AE: brighter scene -> smaller aperture  # noqa: SIM108 -- one comment per branch
        i = int(round(0.8 * (ev - 9.0) + rng.normal(0, 0.8)))
    else:  # photographer's choice, mostly the wider stops
        i = int(rng.integers(0, min(len(stops), 10)))
    return stops[int(np.clip(i, 0, len(stops) - 1))], stops


def choose_shot(cam: CameraModel, info: SceneInfo, seed: int, index: int) -> Shot:
    """Auto-exposure of image ``index`` for ``cam``: deterministic in (seed, index, camera)."""
    rng = np.random.default_rng([seed, index, STREAM_SHOT])
    lo, hi = cam.focal_range
    focal = lo if hi == lo else round(float(np.exp(rng.uniform(math.log(lo), math.log(hi)))), 1)
    program = int(rng.choice(cam.exif["programs"]))
    bias_steps = int(rng.choice([0] * 7 + [-1, 1, -2, 2, -3, 3]))
    ev = info.ev100 - bias_steps / 3  # the EV the camera sets: +comp means more light
    n, stops = _aperture(cam, rng, focal, program, ev)

    def needed(iso: int, n: float) -> float:
        return n * n * 100.0 / (iso * 2.0**ev)

    handheld = min(1 / 30, 1 / (focal * cam.crop_factor))
    auto = [i for i in cam.iso_set if i <= max(cam.auto_iso_max, cam.base_iso)]
    k = 0
    while k < len(auto) - 1 and needed(auto[k], n) > handheld:
        k += 1
    if rng.random() < 0.25:  # the user set a higher ISO than auto would
        k = min(k + int(rng.integers(1, 5)), len(cam.iso_set) - 1)
    iso = cam.iso_set[k]
    # Too bright for the fastest shutter: stop down while the lens allows.
    while needed(iso, n) < cam.shutter_range[0] and n < stops[-1]:
        n = stops[stops.index(n) + 1]
    t = _snap_time(needed(iso, n), cam)
    ev_set = math.log2(n * n / float(t)) - math.log2(iso / 100)
    return Shot(
        iso=iso,
        exposure_time=t,
        f_number=n,
        focal_length=float(focal),
        bias_steps=bias_steps,
        program=program,
        gain=2.0 ** (info.ev100 - ev_set),
        scene_ev=info.ev100,
        timestamp=cam.exif["date_start"] + int(rng.integers(0, 3 * 365 * 86400)),
        subsec=int(rng.integers(0, 100)),
        scene_capture=int(rng.choice([0] * 12 + [1, 2, 3])),
    )


def _rational(x: float, den: int = 10) -> str:
    return f"{int(round(x * den))}/{den}"


def _ascii_bytes(version: str) -> str:
    """An EXIF UNDEFINED version field ("0231") as pyexiv2 writes it: byte values."""
    return " ".join(str(ord(c)) for c in version)


def exif_dict(cam: CameraModel, shot: Shot) -> dict[str, str]:
    """Raw pyexiv2 key -> value strings for one image (about 30-42 tags)."""
    p = cam.exif
    when = datetime.fromtimestamp(shot.timestamp, tz=timezone.utc).strftime("%Y:%m:%d %H:%M:%S")
    widest = cam.fnum_range[0]
    tags = {
        "Exif.Image.Make": cam.make,
        "Exif.Image.Model": cam.model,
        "Exif.Image.Software": cam.software,
        "Exif.Image.Orientation": "1",
        "Exif.Image.XResolution": f"{p['dpi']}/1",
        "Exif.Image.YResolution": f"{p['dpi']}/1",
        "Exif.Image.ResolutionUnit": "2",
        "Exif.Image.DateTime": when,
        "Exif.Image.YCbCrPositioning": str(p["ycbcr_positioning"]),
        "Exif.Photo.ExposureTime": f"{shot.exposure_time.numerator}/{shot.exposure_time.denominator}",
        "Exif.Photo.FNumber": _rational(shot.f_number),
        "Exif.Photo.ExposureProgram": str(shot.program),
        "Exif.Photo.ISOSpeedRatings": str(shot.iso),
        "Exif.Photo.ExifVersion": _ascii_bytes(p["exif_version"]),
        "Exif.Photo.DateTimeOriginal": when,
        "Exif.Photo.DateTimeDigitized": when,
        "Exif.Photo.ComponentsConfiguration": "1 2 3 0",
        "Exif.Photo.ExposureBiasValue": f"{round(shot.bias_steps * p['bias_den'] / 3)}/{p['bias_den']}",
        "Exif.Photo.MaxApertureValue": _rational(2 * math.log2(widest), 100),
        "Exif.Photo.MeteringMode": str(p["metering_mode"]),
        "Exif.Photo.LightSource": "0" if cam.awb_strength > 0 else "1",
        "Exif.Photo.Flash": str(p["flash"]),
        "Exif.Photo.FocalLength": _rational(shot.focal_length, 100 if cam.kind == "phone" else 10),
        "Exif.Photo.FlashpixVersion": _ascii_bytes("0100"),
        "Exif.Photo.ColorSpace": "1",
        "Exif.Photo.PixelXDimension": str(cam.width),
        "Exif.Photo.PixelYDimension": str(cam.height),
        "Exif.Photo.SensingMethod": "2",
        "Exif.Photo.FileSource": "3",
        "Exif.Photo.SceneType": "1",
        "Exif.Photo.CustomRendered": "0",
        "Exif.Photo.ExposureMode": "1" if shot.program == 1 else "0",
        "Exif.Photo.WhiteBalance": "0" if cam.awb_strength > 0 else "1",
        "Exif.Photo.DigitalZoomRatio": "1/1" if cam.kind in ("phone", "compact") else "0/1",
        "Exif.Photo.FocalLengthIn35mmFilm": str(int(round(shot.focal_length * cam.crop_factor))),
        "Exif.Photo.SceneCaptureType": str(shot.scene_capture),
    }
    extras = set(p["extras"])
    if p["description"]:
        tags["Exif.Image.ImageDescription"] = p["description"]
    if p["lens_model"]:
        tags["Exif.Photo.LensModel"] = p["lens_model"]
    if "apex" in extras:
        tv = -math.log2(float(shot.exposure_time))
        av = 2 * math.log2(shot.f_number)
        tags["Exif.Photo.ShutterSpeedValue"] = _rational(tv, 1000)
        tags["Exif.Photo.ApertureValue"] = _rational(av, 100)
        # Bv = Av + Tv - Sv, Sv = log2(ISO / 3.125): the scene's own brightness.
        tags["Exif.Photo.BrightnessValue"] = _rational(av + tv - math.log2(shot.iso / 3.125), 100)
    if "subsec" in extras:
        for key in ("SubSecTime", "SubSecTimeOriginal", "SubSecTimeDigitized"):
            tags[f"Exif.Photo.{key}"] = f"{shot.subsec:02d}"
    if "gain" in extras:
        up = shot.iso / cam.base_iso
        tags["Exif.Photo.GainControl"] = "0" if up <= 1 else ("1" if up <= 8 else "2")
    if "contrast" in extras:
        tags["Exif.Photo.Contrast"] = "0" if cam.s_curve < 0.2 else "2"
        tags["Exif.Photo.Saturation"] = "0"
        tags["Exif.Photo.Sharpness"] = str(p["sharpness"])
    return tags


def thumbnail(cam: CameraModel, rgb: np.ndarray) -> bytes | None:
    """A 160-px-wide JPEG thumbnail of uint8 HxWx3 for makes that embed one, else None."""
    if "thumbnail" not in cam.exif["extras"]:
        return None
    h, w = rgb.shape[:2]
    buf = io.BytesIO()
    Image.fromarray(rgb).resize((160, max(1, round(160 * h / w))), Image.Resampling.BILINEAR).save(
        buf, "JPEG", quality=80
    )
    return buf.getvalue()


def write_exif(jpeg: bytes, tags: dict[str, str], thumb: bytes | None) -> bytes:
    """JPEG bytes with ``tags`` (and a thumbnail) written by pyexiv2; pixels untouched."""
    with pyexiv2.ImageData(jpeg) as img:  # `with`: ImageData leaks its exiv2 buffer otherwise
        img.modify_exif(tags)
        if thumb is not None:
            img.modify_thumbnail(thumb)
        return img.get_bytes()
