"""`exiflang make-splices`: Columbia-style spliced and authentic test images cut from real photos.

A spliced image is a window of a *host* photo in which a random region (eval/benchmark/regions.py:
rectangle, ellipse or star-convex polygon, 5-40 % of the window) is replaced by the same-shaped
region of a *donor* photo taken with another camera model.  Nothing is scaled, rotated or
blended, and the result is saved as PNG, so each part keeps its own camera's demosaicing, noise
and JPEG traces.  Camera models come from the photos' EXIF (``Make`` + ``Model``), so a test set
can be built from cameras the model never saw.

Geometry (crops only, never a resize): the host window is the whole host photo, or a uniformly
placed ``max_side x max_side``-bounded crop of a larger one; the region is drawn in that window
with its bounding box small enough to fit in the donor photo too (another donor is drawn when
it cannot), and its pixels come from a uniformly placed box of the same size in the donor:
output pixel ``(y, x)`` of the region = donor pixel ``(dy + y - y0, dx + x - x0)`` with
``(y0, x0)`` the region box's top-left (manifest ``box``) and ``(dy, dx)`` the manifest's
``donor_origin``.  An *authentic* image is cut the same way from one photo: a host window,
saved as PNG, with no paste.  Host and authentic photos are taken from one shuffled order
without repetition (wrapping around only when more images are asked for than there are
photos); donors are drawn at random: a camera other than the host's, then one of its photos.

Output (``--out DIR``)::

    spliced/NAME.png    masks/NAME.png (255 = spliced, 0 = pristine)    authentic/NAME.png
    manifest.csv        one row per image (see MANIFEST_COLUMNS), written last
    settings.json       the options, the cameras found and every skipped photo with its reason

Photos that cannot be used (unreadable, no EXIF Model, shorter side below ``--min-side``) are
reported one line each on stderr and skipped.  Exit status: 0 done, 2 bad usage or too few
cameras (fewer than two models).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from exiflang.command import Command
from exiflang.errors import check_out_dir
from exiflang.eval.benchmark.regions import SHAPES, Region, draw_region
from exiflang.eval.images import ImageError, expand_inputs, load_rgb, open_checked
from exiflang.pipeline.exif.parse import ExifReadError, read_exif

MANIFEST_COLUMNS = [
    "name",
    "kind",
    "image",
    "mask",
    "width",
    "height",
    "host_file",
    "host_make",
    "host_model",
    "host_window",
    "donor_file",
    "donor_make",
    "donor_model",
    "donor_origin",
    "shape",
    "area_fraction",
    "box",
    "seed",
]
DEFAULT_MAX_SIDE = 1024
DEFAULT_MIN_SIDE = 256


@dataclass(frozen=True)
class Photo:
    """A usable source photo: path, EXIF Make/Model, stored pixel size."""

    path: Path
    make: str
    model: str
    width: int
    height: int

    @property
    def camera(self) -> str:
        """The camera key: Make and Model (two makers can share a model name), the make said once."""
        if self.model.lower().startswith(self.make.lower()):
            return self.model
        return f"{self.make} {self.model}".strip()


def scan_photo(path: Path, min_side: int) -> Photo:
    """EXIF camera and header size of one photo; :class:`ImageError` with the reason if unusable."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(path, f"unreadable ({exc.strerror or exc})") from None
    try:
        exif = read_exif(data)
    except ExifReadError as exc:
        raise ImageError(path, f"EXIF does not parse ({exc})") from None
    model = " ".join(exif.get("Model", "").split())
    if not model:
        raise ImageError(path, "no camera Model in its EXIF")
    with open_checked(data, path) as img:  # the image policy, from the header: size, plausibility, mode
        width, height = img.size
    if min(width, height) < min_side:
        raise ImageError(path, f"{width}x{height} is smaller than the minimum side {min_side}")
    return Photo(path, " ".join(exif.get("Make", "").split()), model, width, height)


def scan_photos(paths: list[Path], min_side: int, progress: bool = False) -> tuple[list[Photo], list[str]]:
    """Usable photos (input order) and one ``"PATH: reason"`` line per skipped file."""
    photos, skipped = [], []
    for path in tqdm(paths, desc="reading EXIF", unit="photo", disable=not progress):
        try:
            photos.append(scan_photo(path, min_side))
        except ImageError as err:
            skipped.append(str(err))
    return photos, skipped


class SpliceMaker:
    """Draws hosts, donors, windows and regions from one seeded generator (see module docstring)."""

    def __init__(
        self, photos: list[Photo], seed: int, max_side: int | None, area: tuple[float, float], shapes: tuple[str, ...]
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.photos = photos
        self.max_side, self.area, self.shapes = max_side, area, shapes
        self.bad: dict[Path, str] = {}  # photos whose pixels failed to decode
        self._order = [photos[i] for i in self.rng.permutation(len(photos))]
        self._next = 0

    def cameras(self) -> dict[str, list[Photo]]:
        """Camera -> its photos still usable, sorted by camera name (deterministic)."""
        out: dict[str, list[Photo]] = {}
        for p in self.photos:
            if p.path not in self.bad:
                out.setdefault(p.camera, []).append(p)
        return dict(sorted(out.items()))

    def _load(self, photo: Photo) -> np.ndarray | None:
        if photo.path in self.bad:
            return None
        try:
            return load_rgb(photo.path)
        except ImageError as err:
            self.bad[photo.path] = str(err)
            return None

    def next_source(self) -> tuple[Photo, np.ndarray]:
        """The next host/authentic photo of the shuffled order, with its pixels."""
        for _ in range(2 * len(self._order)):
            photo = self._order[self._next % len(self._order)]
            self._next += 1
            rgb = self._load(photo)
            if rgb is not None and len(self.cameras()) >= 2:
                return photo, rgb
        raise RuntimeError("fewer than two camera models have photos that decode")

    def partner(self, host: Photo) -> tuple[Photo, np.ndarray]:
        """A random photo of a camera other than ``host``'s, with its pixels."""
        for _ in range(10 * len(self.photos)):
            cams = [c for c in self.cameras() if c != host.camera]
            if not cams:
                break
            pool = self.cameras()[cams[int(self.rng.integers(len(cams)))]]
            photo = pool[int(self.rng.integers(len(pool)))]
            rgb = self._load(photo)
            if rgb is not None:
                return photo, rgb
        raise RuntimeError(f"no photo of another camera than {host.camera!r} decodes")

    def window(self, rgb: np.ndarray) -> tuple[int, int, int, int]:
        """A uniformly placed window ``(y, x, h, w)`` of ``rgb``, at most ``max_side`` per side."""
        cap = self.max_side or 1 << 30
        h, w = min(rgb.shape[0], cap), min(rgb.shape[1], cap)
        return (int(self.rng.integers(0, rgb.shape[0] - h + 1)), int(self.rng.integers(0, rgb.shape[1] - w + 1)), h, w)

    def _region_and_donor(self, host: Photo, h: int, w: int) -> tuple[Region, Photo, np.ndarray]:
        """A region of the ``h x w`` window whose box fits in a donor photo, and that donor."""
        for _ in range(20):
            donor, drgb = self.partner(host)
            try:
                return draw_region(self.rng, h, w, self.area, self.shapes, fit=drgb.shape[:2]), donor, drgb
            except ValueError:  # a donor much smaller than the window: draw another
                continue
        raise RuntimeError(f"no donor photo is large enough for a region of {w}x{h} images")

    def spliced(self) -> tuple[np.ndarray, Region, dict[str, Any]]:
        """One spliced image ``uint8 [h,w,3]``, its region and its manifest fields."""
        host, hrgb = self.next_source()
        hy, hx, h, w = self.window(hrgb)
        region, donor, drgb = self._region_and_donor(host, h, w)
        y0, x0, y1, x1 = region.box
        dy = int(self.rng.integers(0, drgb.shape[0] - (y1 - y0) + 1))
        dx = int(self.rng.integers(0, drgb.shape[1] - (x1 - x0) + 1))
        out = hrgb[hy : hy + h, hx : hx + w].copy()
        inside = region.mask[y0:y1, x0:x1]
        out[y0:y1, x0:x1][inside] = drgb[dy : dy + y1 - y0, dx : dx + x1 - x0][inside]
        row = _source_fields("host", host, hy, hx) | _source_fields("donor", donor, dy, dx)
        row |= {
            "shape": region.shape,
            "area_fraction": f"{region.area_fraction:.4f}",
            "box": " ".join(map(str, region.box)),
        }
        return out, region, row

    def authentic(self) -> tuple[np.ndarray, dict[str, Any]]:
        """One authentic image ``uint8 [h,w,3]``: a window of one photo cut as for a host, no paste."""
        photo, rgb = self.next_source()
        y, x, h, w = self.window(rgb)
        row = _source_fields("host", photo, y, x) | _source_fields("donor", None, 0, 0)
        return rgb[y : y + h, x : x + w].copy(), row | {"shape": "", "area_fraction": "0", "box": ""}


def _source_fields(role: str, photo: Photo | None, y: int, x: int) -> dict[str, Any]:
    """Manifest fields of a host (``host_window``: the window's top-left) or donor (``donor_origin``)."""
    where = f"{role}_window" if role == "host" else f"{role}_origin"
    if photo is None:
        return {f"{role}_file": "", f"{role}_make": "", f"{role}_model": "", where: ""}
    return {
        f"{role}_file": str(photo.path),
        f"{role}_make": photo.make,
        f"{role}_model": photo.model,
        where: f"{y} {x}",
    }


def _save_png(arr: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(arr).save(tmp, format="PNG", compress_level=4)
    os.replace(tmp, path)


def generate(
    maker: SpliceMaker, out: Path, count: int, authentic: int, seed: int, progress: bool = True
) -> Iterator[dict[str, Any]]:
    """Write ``count`` spliced then ``authentic`` authentic images under ``out``; yield manifest rows."""
    bar = tqdm(total=count + authentic, desc="make-splices", unit="img", disable=not progress)
    for i in range(count):
        rgb, region, row = maker.spliced()
        name = f"spliced_{i:04d}"
        _save_png(rgb, out / "spliced" / f"{name}.png")
        _save_png(region.mask.astype(np.uint8) * 255, out / "masks" / f"{name}.png")
        bar.update()
        yield {
            "name": name,
            "kind": "spliced",
            "image": f"spliced/{name}.png",
            "mask": f"masks/{name}.png",
            "height": rgb.shape[0],
            "width": rgb.shape[1],
            "seed": seed,
        } | row
    for i in range(authentic):
        rgb, row = maker.authentic()
        name = f"authentic_{i:04d}"
        _save_png(rgb, out / "authentic" / f"{name}.png")
        bar.update()
        yield {
            "name": name,
            "kind": "authentic",
            "image": f"authentic/{name}.png",
            "mask": "",
            "height": rgb.shape[0],
            "width": rgb.shape[1],
            "seed": seed,
        } | row
    bar.close()


def make_splices(
    photos: Sequence[str | Path],
    out: str | Path,
    count: int,
    seed: int = 0,
    *,
    authentic: int | None = None,
    max_side: int | None = DEFAULT_MAX_SIDE,
    min_side: int = DEFAULT_MIN_SIDE,
    area: tuple[float, float] = (0.05, 0.40),
    shapes: tuple[str, ...] = SHAPES,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build a test set under ``out`` (see the module docstring); returns the settings record.

    Raises ``ValueError`` (one-line message) for bad options, an existing set without ``force``,
    or fewer than two camera models among the usable photos.
    """
    out = Path(out)
    authentic = count if authentic is None else authentic
    if count < 0 or authentic < 0 or count + authentic == 0:
        raise ValueError(f"--count {count} / --authentic {authentic}: nothing to make")
    if not 0 < area[0] <= area[1] < 1:
        raise ValueError(f"area range {area[0]}..{area[1]}: expected 0 < min <= max < 1")
    if max_side is not None and max_side < min_side:
        raise ValueError(f"--max-side {max_side} is below --min-side {min_side}")
    if (out / "manifest.csv").exists() and not force:
        raise ValueError(f"{out}: already holds a test set (manifest.csv); pass --force to rebuild it")
    found, skipped = scan_photos(expand_inputs([str(p) for p in photos]), min_side, progress)
    for line in skipped:
        print(line, file=sys.stderr)
    maker = SpliceMaker(found, seed, max_side, area, tuple(shapes))
    if len(maker.cameras()) < 2:
        raise ValueError(
            f"{', '.join(map(str, photos))}: {len(found)} usable photos of "
            f"{len(maker.cameras())} camera model(s); a splice needs two models"
        )
    for sub in ("spliced", "masks", "authentic"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    (out / "manifest.csv").unlink(missing_ok=True)
    if count + authentic > len(found):
        print(
            f"make-splices: {count + authentic} images from {len(found)} photos: "
            "some photos are used more than once (different windows)",
            file=sys.stderr,
        )
    try:
        rows = list(generate(maker, out, count, authentic, seed, progress))
    except RuntimeError as exc:
        raise ValueError(f"{out}: {exc}") from None
    for line in maker.bad.values():
        print(line, file=sys.stderr)
    settings = {
        "photos": [str(p) for p in photos],
        "count": count,
        "authentic": authentic,
        "seed": seed,
        "max_side": max_side,
        "min_side": min_side,
        "area": list(area),
        "shapes": list(shapes),
        "cameras": {c: len(v) for c, v in maker.cameras().items()},
        "skipped": skipped + list(maker.bad.values()),
        "written": len(rows),
    }
    (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    tmp = out / "manifest.csv.tmp"
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "manifest.csv")  # last: its presence means the set is complete
    return settings


def _parse_shapes(text: str) -> tuple[str, ...]:
    shapes = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in shapes if s not in SHAPES]
    if not shapes or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma list of {','.join(SHAPES)}")
    return shapes


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare make-splices' arguments."""
    p.add_argument("--photos", nargs="+", required=True, help="folders or files of camera photos with EXIF")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--count", type=int, required=True, help="number of spliced images")
    p.add_argument("--authentic", type=int, default=None, help="number of authentic images (default: --count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        help=f"crop windows to at most this many pixels per side (default {DEFAULT_MAX_SIDE}; 0 = no limit)",
    )
    p.add_argument(
        "--min-side",
        type=int,
        default=DEFAULT_MIN_SIDE,
        help=f"skip photos whose shorter side is below this (default {DEFAULT_MIN_SIDE})",
    )
    p.add_argument("--min-area", type=float, default=0.05, help="smallest region share of the image")
    p.add_argument("--max-area", type=float, default=0.40, help="largest region share of the image")
    p.add_argument("--shapes", type=_parse_shapes, default=SHAPES, help="comma list of rectangle,ellipse,polygon")
    p.add_argument("--force", action="store_true", help="replace an existing test set in --out")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Write the test set, print one summary line: 0 written (bad input raises: exit 2)."""
    check_out_dir(args.out)  # before the photos are scanned: a bad --out costs nothing
    settings = make_splices(
        args.photos,
        args.out,
        args.count,
        args.seed,
        authentic=args.authentic,
        max_side=args.max_side or None,
        min_side=args.min_side,
        area=(args.min_area, args.max_area),
        shapes=args.shapes,
        force=args.force,
        progress=not args.no_progress,
    )
    print(
        f"make-splices: {settings['count']} spliced + {settings['authentic']} authentic images "
        f"from {len(settings['cameras'])} cameras -> {Path(args.out) / 'manifest.csv'}"
        f" ({len(settings['skipped'])} photos skipped)"
    )
    return 0


COMMAND = Command(
    prog="exiflang make-splices", doc=__doc__, add_arguments=add_arguments, run=run, log_level=logging.WARNING
)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
