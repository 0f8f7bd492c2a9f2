"""Draw the K simulated cameras of a corpus (makes, models and every processing parameter) from its seed.

Two levels, as with real manufacturers: a *make* has a house style (CFA layout, demosaicing,
JPEG table family and subsampling, tone family, EXIF habits) and each *model* varies it (sensor
size and noise, lens, ISO range, quality, colour matrix, sharpening, vignetting).  So "Make"
and "Model" are different prediction tasks.  Camera ``c`` gets make ``c % M`` (M = ceil(K/3),
so every make has several models when K >= 4).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from exiflang.pipeline.synth.camera import CFA_PATTERNS, DEMOSAIC, CameraModel

STREAM_MAKE = 101
STREAM_MODEL = 102

# (make, model template, software template, image description or "")
MAKES: list[tuple[str, str, str, str]] = [
    ("Synthetica", "SYN-X{n}", "Ver.{a}.{b:02d}", "SYNTHETICA DIGITAL CAMERA"),
    ("Pixelon", "Pixelon P{n}", "P{n} Firmware {a}.{b}", ""),
    ("LUMORA", "LUMORA L{n}", "LUMORA Software {a}.{b}.{c}", ""),
    ("Kameradyne", "KD-{n}", "KD-{n} Ver.{a}.{b:02d}", ""),
    ("OPTICORE IMAGING CORP.", "Opticore OC{n}", "Version {a}.{b}{c}", "          "),
    ("Veridian", "Veridian V{n} Pro", "V{n}-{a}{b:02d}", ""),
    ("NORDLICHT", "NL {n}", "NORDLICHT NL {n} v{a}.{b}", ""),
    ("Hoshimi", "HOSHIMI HS-{n}", "Firmware Version {a}.{b}", "HOSHIMI DIGITAL"),
    ("Altair Optics", "Altair A{n}", "Altair Image {a}.{b}.{c}", ""),
    ("Quantia", "Q-{n}", "Q-{n} Ver {a}{b:02d}", ""),
]
ISO_THIRDS = (
    25,
    32,
    40,
    50,
    64,
    80,
    100,
    125,
    160,
    200,
    250,
    320,
    400,
    500,
    640,
    800,
    1000,
    1250,
    1600,
    2000,
    2500,
    3200,
    4000,
    5000,
    6400,
    8000,
    10000,
    12800,
    16000,
    20000,
    25600,
    32000,
    40000,
    51200,
)
KINDS = ("phone", "compact", "apsc", "fullframe")
EXTRAS = ("apex", "subsec", "thumbnail", "gain", "contrast")  # optional EXIF groups per make

# IJG (libjpeg) base tables, natural order: the family every camera's tables are warped from.
IJG_LUMA = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    float,
)
IJG_CHROMA = np.full(64, 99.0)
IJG_CHROMA[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 24, 25]] = [17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 47, 66]


def n_makes(k: int) -> int:
    """How many makes K cameras are spread over (several models per make once K >= 4)."""
    return max(1, min(len(MAKES), math.ceil(k / 3)))


def sensor_sizes(
    k: int, rng: np.random.Generator, size: tuple[int, int] | None, min_width: int, max_width: int
) -> list[tuple[int, int]]:
    """Per-camera (width, height): fixed ``size``, or 4:3 widths on a 32-px grid in range."""
    if size is not None:
        return [size] * k
    grid = list(range(-(-min_width // 32) * 32, max_width + 1, 32)) or [min_width]
    widths = rng.choice(grid, size=k)
    return [(int(w), int(round(w * 3 / 4))) for w in widths]


def qtables(warp: np.ndarray, quality: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Luma and chroma tables: IJG tables times a (2x64) warp, scaled for quality as libjpeg does."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    out = []
    for base, wp in ((IJG_LUMA, warp[0]), (IJG_CHROMA, warp[1])):
        out.append(tuple(int(v) for v in np.clip(np.round(base * wp * scale / 100), 1, 255)))
    return out[0], out[1]


def _house(seed: int, slot: int, make_id: int) -> dict[str, Any]:
    """A make's house style: the parameters all its models share or vary around."""
    rng = np.random.default_rng([seed, STREAM_MAKE, slot])
    return dict(
        make_id=make_id,
        cfa=str(rng.choice(CFA_PATTERNS)),
        demosaic=str(rng.choice(DEMOSAIC)),
        subsampling=int(rng.choice(3, p=[0.2, 0.4, 0.4])),
        optimize=bool(rng.random() < 0.5),
        warp=np.exp(rng.normal(0, 0.15, (2, 64))),
        quality=rng.uniform(74, 96),
        gamma=rng.uniform(2.0, 2.5),
        s_curve=rng.uniform(0.0, 0.3),
        sharpen=rng.uniform(0.1, 1.2),
        radius=rng.uniform(0.7, 1.8),
        chroma_nr=rng.uniform(0, 1.6),
        kinds=rng.dirichlet(np.ones(len(KINDS)) * 0.7),
        thirds=bool(rng.random() < 0.7),
        numbers=rng.permutation(np.arange(10, 1000, 10 if rng.random() < 0.5 else 5)),
        firmware=rng.integers(1, 4),
        dpi=int(rng.choice([72, 180, 300, 350])),
        ycbcr=int(rng.choice([1, 2])),
        exif_version=str(rng.choice(["0220", "0221", "0230", "0231", "0232"])),
        metering=int(rng.choice([5, 2, 3, 1], p=[0.6, 0.25, 0.1, 0.05])),
        extras=[e for e in EXTRAS if rng.random() < 0.6],
        wb_manual=float(rng.uniform(0, 0.3)),
        bias_den=int(rng.choice([3, 6, 10])),
    )


def _kind(rng: np.random.Generator, kind: str) -> dict[str, Any]:
    """Optics, sensor and exposure ranges typical of a phone / compact / APS-C / full frame."""
    if kind == "phone":
        f = round(rng.uniform(3.9, 6.0), 2)
        n = float(rng.choice([1.7, 1.8, 1.9, 2.0, 2.2, 2.4]))
        d = dict(
            crop=rng.uniform(5.6, 7.6),
            focal=(f, f),
            fnum=(n, n, n),
            iso=(50, 64, 3200, 6400),
            shutter=(1 / 8000, 1 / 4),
            fw=(6000, 12000),
            read=(1.5, 3.5),
            bits=10,
            blur=(0.3, 0.8),
            vig=(0.2, 0.45),
            programs=[2],
            lens="",
        )
    elif kind == "compact":
        w = round(rng.uniform(4.3, 6.2), 1)
        z = float(rng.choice([3, 4, 5, 10]))
        n = float(rng.choice([2.8, 3.1, 3.3, 3.5]))
        d = dict(
            crop=rng.uniform(4.5, 6.0),
            focal=(w, round(w * z, 1)),
            fnum=(n, round(n + rng.uniform(1.5, 2.6), 1), 8.0),
            iso=(64, 100, 3200, 6400),
            shutter=(1 / 2000, 4.0),
            fw=(10000, 20000),
            read=(2.5, 5.0),
            bits=12,
            blur=(0.2, 0.6),
            vig=(0.1, 0.3),
            programs=[2],
            lens="",
        )
    else:
        ff = kind == "fullframe"
        lenses = (
            [(24, 70, 2.8, 2.8), (24, 105, 4.0, 4.0), (50, 50, 1.8, 1.8)]
            if ff
            else [(18, 55, 3.5, 5.6), (18, 135, 3.5, 5.6), (35, 35, 1.8, 1.8)]
        )
        lo, hi, nw, nt = lenses[int(rng.integers(len(lenses)))]
        lens = f"{lo}mm F{nw:g}" if lo == hi else f"{lo}-{hi}mm F{nw:g}" + (f"-{nt:g}" if nt != nw else "")
        d = dict(
            crop=1.0 if ff else float(rng.choice([1.5, 1.6])),
            focal=(float(lo), float(hi)),
            fnum=(nw, nt, 22.0),
            iso=(100, 100, 12800 if not ff else 25600, 25600 if not ff else 51200),
            shutter=(1 / 4000 if not ff else 1 / 8000, 30.0),
            fw=(50000, 100000) if ff else (25000, 50000),
            read=(2.0, 6.0),
            bits=14,
            blur=(0.05, 0.5),
            vig=(0.03, 0.2),
            programs=[2, 2, 3, 3, 1],
            lens=lens,
        )
    return d


def _iso_set(rng: np.random.Generator, rng_iso: tuple[int, int, int, int], thirds: bool) -> tuple[int, ...]:
    lo = ISO_THIRDS.index(int(rng.choice(rng_iso[:2])))
    hi = ISO_THIRDS.index(int(rng.choice(rng_iso[2:])))
    return tuple(ISO_THIRDS[lo : hi + 1 : 1 if thirds else 3])


def _ccm(rng: np.random.Generator) -> tuple[tuple[float, ...], ...]:
    """A plausible camera->sRGB matrix: rows sum to 1 (white stays white), off-diagonals < 0."""
    off = -np.abs(rng.normal([[0, 0.45, 0.1], [0.25, 0, 0.3], [0.05, 0.5, 0]], 0.08))
    np.fill_diagonal(off, 0)
    m = off + np.diag(1 - off.sum(axis=1))
    return tuple(tuple(round(float(v), 4) for v in row) for row in m)


def _model(seed: int, index: int, house: dict[str, Any], ordinal: int, wh: tuple[int, int]) -> CameraModel:
    """One camera: the make's style plus this model's own draws."""
    rng = np.random.default_rng([seed, STREAM_MODEL, index])
    make, model_t, soft_t, desc = MAKES[house["make_id"]]
    kind = str(rng.choice(KINDS, p=house["kinds"]))
    k = _kind(rng, kind)
    n = int(house["numbers"][ordinal % len(house["numbers"])])
    model = model_t.format(n=n)
    software = soft_t.format(n=n, a=int(house["firmware"]), b=int(rng.integers(0, 20)), c=int(rng.integers(0, 10)))
    # Models of one make differ a lot in JPEG quality (a phone's "fine" is a DSLR's "normal").
    quality = int(np.clip(round(house["quality"] + rng.normal(0, 9)), 70, 98))
    # Most models keep the house subsampling; some (e.g. a make's high-end line) change it.
    subsampling = house["subsampling"] if rng.random() < 0.5 else int(rng.choice(3))
    awb = 0.0 if rng.random() < house["wb_manual"] else float(rng.uniform(0.5, 1.0))
    fw = float(rng.uniform(*k["fw"]))
    exif = dict(
        dpi=house["dpi"],
        ycbcr_positioning=house["ycbcr"],
        exif_version=house["exif_version"],
        metering_mode=house["metering"],
        extras=list(house["extras"]),
        description=desc,
        flash=int(rng.choice([0, 16, 24, 32] if kind != "fullframe" else [16, 32])),
        programs=k["programs"],
        lens_model=k["lens"],
        bias_den=house["bias_den"],
        date_start=int(rng.integers(1_230_768_000, 1_672_531_200)),  # 2009 .. 2023 UTC
        sharpness=0 if rng.random() < 0.7 else int(rng.choice([1, 2])),
    )
    return CameraModel(
        index=index,
        seed=seed,
        make=make,
        model=model,
        software=software,
        kind=kind,
        width=wh[0],
        height=wh[1],
        crop_factor=round(float(k["crop"]), 2),
        focal_range=k["focal"],
        fnum_range=k["fnum"],
        iso_set=_iso_set(rng, k["iso"], house["thirds"]),
        auto_iso_max=int(rng.choice([1600, 3200, 6400])),
        shutter_range=k["shutter"],
        continuous_shutter=kind == "phone",
        full_well_e=round(fw),
        read_noise_e=round(float(rng.uniform(*k["read"])), 2),
        adc_noise=round(float(rng.uniform(2e-4, 1.2e-3)), 5),
        prnu=round(float(rng.uniform(0.004, 0.02)), 4),
        column_fpn=round(float(rng.uniform(0, 4e-4)), 5),
        raw_bits=k["bits"],
        cfa=house["cfa"],
        demosaic=house["demosaic"] if rng.random() < 0.6 else str(rng.choice(DEMOSAIC)),
        wb_daylight=(round(float(rng.uniform(1.6, 2.4)), 3), 1.0, round(float(rng.uniform(1.3, 1.9)), 3)),
        awb_strength=round(awb, 3),
        ccm=_ccm(rng),
        exposure_offset=round(float(rng.normal(0, 0.2)), 3),
        gamma=round(float(house["gamma"] + rng.normal(0, 0.06)), 3),
        s_curve=round(float(np.clip(house["s_curve"] + rng.normal(0, 0.05), 0, 0.4)), 3),
        luma_nr=round(float(rng.uniform(0, 0.9)), 3),
        chroma_nr=round(float(house["chroma_nr"] * rng.uniform(0.5, 1.5)), 3),
        sharpen_amount=round(float(house["sharpen"] * rng.uniform(0.4, 1.8)), 3),
        sharpen_radius=round(float(house["radius"] * rng.uniform(0.75, 1.3)), 3),
        vignetting=round(float(rng.uniform(*k["vig"])), 3),
        lens_blur=round(float(rng.uniform(*k["blur"])), 3),
        jpeg_quality=quality,
        qtables=qtables(house["warp"] * np.exp(rng.normal(0, 0.04, (2, 64))), quality),
        subsampling=subsampling,
        jpeg_optimize=house["optimize"],
        exif=exif,
    )


def _make_tables_unique(cams: list[CameraModel]) -> list[CameraModel]:
    """At quality ~98 two cameras' tables can round to the same values; nudge later ones apart."""
    seen: set[tuple] = set()
    out = []
    for cam in cams:
        luma, chroma = list(cam.qtables[0]), list(cam.qtables[1])
        pos = cam.index % 64
        while (tuple(luma), tuple(chroma)) in seen:
            luma[pos] = min(255, luma[pos] + 1)  # a high-frequency coefficient, rarely visible
            pos = (pos + 7) % 64
        seen.add((tuple(luma), tuple(chroma)))
        out.append(dataclasses.replace(cam, qtables=(tuple(luma), tuple(chroma))))
    return out


def make_cameras(
    seed: int, k: int, size: tuple[int, int] | None = None, min_width: int = 384, max_width: int = 640
) -> list[CameraModel]:
    """The corpus's K cameras, deterministic in (seed, K, size options)."""
    if k < 1:
        raise ValueError("need at least one camera")
    rng = np.random.default_rng([seed, STREAM_MAKE])
    m = n_makes(k)
    make_ids = rng.permutation(len(MAKES))[:m]
    houses = [_house(seed, s, int(make_ids[s])) for s in range(m)]
    sizes = sensor_sizes(k, rng, size, min_width, max_width)
    cams = [_model(seed, c, houses[c % m], c // m, sizes[c]) for c in range(k)]
    return _make_tables_unique(cams)
