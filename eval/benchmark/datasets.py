"""Forensic benchmark readers: each published folder layout (docs/design.md §6) and its mask convention.

Every reader lists ``Item(name, image, mask, spliced)`` tuples (``mask`` None for authentic
images, or when a spliced image's mask file is missing) in a sorted, deterministic order, and
:func:`load_mask` turns a mask file into ``bool [H,W]`` (True = spliced) by the dataset's rule:

============  =====================================================================  ==========
dataset       layout under ``--root``                                                 mask rule
============  =====================================================================  ==========
columbia      ``4cam_auth/*.tif`` (authentic), ``4cam_splc/*.tif`` (spliced), masks   columbia
              ``4cam_splc/edgemask/NAME_edgemask.jpg``
dso1          ``DSO-1/normal-XX.png`` (authentic), ``DSO-1/splicing-XX.png``          dso1
              (spliced), masks ``DSO-1-Fake-Images-Masks/splicing-XX.png``
rt            per camera folder (Canon_60D, Nikon_D90, Nikon_D7000, Sony_A57, or any  rt
              folder so laid out) ``pristine/*.TIF``, ``tampered-realistic/*.TIF``,
              masks ``ground-truth/NAME.PNG``
inthewild     ``images/*.jpg`` (all spliced), masks ``masks/NAME.png``                white
hays          ``NAME.ext`` (all spliced) beside ``NAME_mask.ext``                     white
folder        ``exiflang make-splices`` output: ``manifest.csv`` (or, without one,     white
              ``spliced/``, ``masks/NAME.png``, ``authentic/``)
============  =====================================================================  ==========

Mask rules (pixels as 8-bit RGB; a 1-bit or grey mask is read as grey repeated):

- ``columbia``: green marks the splice — (0,255,0) or (0,200,0) — but the edge masks are JPEGs,
  so a pixel is spliced when ``G > 150 and R < 100 and B < 100`` (compression noise and the
  blurred boundary stay out; the red pristine region stays out);
- ``dso1``: black marks the splice: every channel below 128 (the masks are white elsewhere);
- ``rt``: non-black marks the tampered region: any channel above 10 (tolerates near-black noise);
- ``white``: non-zero marks the splice; for a JPEG mask (lossy) the bar is a channel above 127.

The root may be the dataset folder itself or a folder one level above it (an archive's
wrapper folder, e.g. ``tifs-database/tifs-database``).  Errors are one line: ``ValueError``
naming the root for a layout that is not there, :class:`MaskError` (``"PATH: reason"``) for a
mask that cannot be used (unreadable, size unlike its image's, or marking no pixel).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from exiflang.eval.images import IMAGE_SUFFIXES, ImageError, load_rgb

DATASETS = ("columbia", "dso1", "rt", "inthewild", "hays", "folder")
RT_CAMERAS = ("Canon_60D", "Nikon_D90", "Nikon_D7000", "Sony_A57")
JPEG_SUFFIXES = {".jpg", ".jpeg"}


class Item(NamedTuple):
    """One benchmark image: a unique ``name``, its file, its mask file (or None), its label."""

    name: str
    image: Path
    mask: Path | None
    spliced: bool


class MaskError(ImageError):
    """A ground-truth mask that cannot be used; ``str(err)`` is ``"PATH: reason"``."""


def _columbia(rgb: np.ndarray, path: Path) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    return (g > 150) & (r < 100) & (b < 100)


def _dso1(rgb: np.ndarray, path: Path) -> np.ndarray:
    return rgb.max(axis=2) < 128


def _rt(rgb: np.ndarray, path: Path) -> np.ndarray:
    return rgb.max(axis=2) > 10


def _white(rgb: np.ndarray, path: Path) -> np.ndarray:
    return rgb.max(axis=2) > (127 if path.suffix.lower() in JPEG_SUFFIXES else 0)


# How the layouts above (and CASIA's ``*_gt``) name their ground-truth files: a folder of
# photos handed to ``detect`` often holds them beside the images (e.g. the RT sample).
MASK_SUFFIXES = ("_mask", "-mask", "_gt", "-gt", "_edgemask", "_groundtruth", "_ground_truth")
MASK_FOLDERS = {"mask", "masks", "gt", "ground-truth", "ground_truth", "groundtruth", "edgemask"}


def is_mask_file(path: Path, root: Path) -> bool:
    """True when ``path`` (a file found under the folder ``root``) is named like a ground-truth mask.

    Its stem ends with a mask suffix (``DSC06083_mask.PNG``, ``x_edgemask.jpg``, ``y_gt.png``;
    any case), or a folder between ``root`` and it is a mask folder (``masks/``,
    ``ground-truth/``, ...).  Folders above ``root`` do not count: naming ``.../masks`` itself
    lists what is in it.
    """
    stem = path.stem.lower()
    if stem.endswith(MASK_SUFFIXES):
        return True
    try:
        between = path.parent.relative_to(root).parts
    except ValueError:
        return False
    return any(part.lower() in MASK_FOLDERS for part in between)


MASK_RULES: dict[str, Callable[[np.ndarray, Path], np.ndarray]] = {
    "columbia": _columbia,
    "dso1": _dso1,
    "rt": _rt,
    "white": _white,
}
CONVENTION = {
    "columbia": "columbia",
    "dso1": "dso1",
    "rt": "rt",
    "inthewild": "white",
    "hays": "white",
    "folder": "white",
}


def load_mask(path: str | Path, image_shape: tuple[int, ...], convention: str) -> np.ndarray:
    """The mask file at ``path`` -> ``bool [H,W]`` (True = spliced) by ``convention``'s rule.

    ``image_shape``: the image's ``(H, W, ...)``; a mask of another size, an unreadable file or a
    mask with no spliced pixel raises :class:`MaskError`.
    """
    path = Path(path)
    if convention not in MASK_RULES:
        raise ValueError(f"mask convention {convention!r}: expected one of {sorted(MASK_RULES)}")
    try:
        rgb = load_rgb(path)
    except ImageError as err:
        raise MaskError(path, err.reason) from None
    height, width = image_shape[:2]
    if rgb.shape[:2] != (height, width):
        raise MaskError(path, f"mask is {rgb.shape[1]}x{rgb.shape[0]} but its image is {width}x{height}")
    mask = MASK_RULES[convention](rgb, path)
    if not mask.any():
        raise MaskError(path, f"mask marks no spliced pixel under the {convention} rule")
    return mask


def _images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (by suffix, any case), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _existing(*candidates: Path) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _locate(root: Path, marker: Callable[[Path], bool]) -> Path | None:
    """``root`` if ``marker(root)``, else the only sub-folder (one level down) for which it holds."""
    if marker(root):
        return root
    subs = [p for p in sorted(root.iterdir()) if p.is_dir() and marker(p)] if root.is_dir() else []
    return subs[0] if len(subs) == 1 else None


def read_columbia(root: Path) -> list[Item]:
    base = _locate(root, lambda p: (p / "4cam_auth").is_dir() and (p / "4cam_splc").is_dir())
    if base is None:
        return []
    items = [Item(p.stem, p, None, False) for p in _images(base / "4cam_auth")]
    for p in _images(base / "4cam_splc"):
        items.append(Item(p.stem, p, _existing(base / "4cam_splc" / "edgemask" / f"{p.stem}_edgemask.jpg"), True))
    return items


def read_dso1(root: Path) -> list[Item]:
    base = _locate(root, lambda p: (p / "DSO-1").is_dir())
    if base is None:
        return []
    items = []
    for p in _images(base / "DSO-1"):
        low = p.stem.lower()
        if low.startswith("splicing"):
            mask = _existing(
                base / "DSO-1-Fake-Images-Masks" / p.name, base / "DSO-1-Fake-Images-Masks" / f"{p.stem}.png"
            )
            items.append(Item(p.stem, p, mask, True))
        elif low.startswith("normal"):
            items.append(Item(p.stem, p, None, False))
    return items


def read_rt(root: Path) -> list[Item]:
    def is_camera(p: Path) -> bool:
        return (p / "tampered-realistic").is_dir() or (p / "pristine").is_dir()

    def cameras_in(p: Path) -> list[Path]:
        return [q for q in sorted(p.iterdir()) if q.is_dir() and is_camera(q)] if p.is_dir() else []

    cams = cameras_in(root) or ([root] if is_camera(root) else [])
    if not cams:  # an archive wrapper such as data-images/
        wrapped = _locate(root, lambda p: bool(cameras_in(p)))
        cams = cameras_in(wrapped) if wrapped else []
    items = []
    for cam in cams:
        for p in _images(cam / "pristine"):
            items.append(Item(f"{cam.name}_pristine_{p.stem}", p, None, False))
        for p in _images(cam / "tampered-realistic"):
            gt = cam / "ground-truth"
            items.append(
                Item(f"{cam.name}_tampered_{p.stem}", p, _existing(gt / f"{p.stem}.PNG", gt / f"{p.stem}.png"), True)
            )
    return items


def read_inthewild(root: Path) -> list[Item]:
    base = _locate(root, lambda p: (p / "images").is_dir())
    if base is None:
        return []
    return [
        Item(p.stem, p, _existing(base / "masks" / f"{p.stem}.png", base / "masks" / f"{p.stem}.PNG"), True)
        for p in _images(base / "images")
    ]


def read_hays(root: Path) -> list[Item]:
    files = _images(root)
    masks = {p.stem[: -len("_mask")]: p for p in files if p.stem.lower().endswith("_mask")}
    return [Item(p.stem, p, masks.get(p.stem), True) for p in files if not p.stem.lower().endswith("_mask")]


def read_folder(root: Path) -> list[Item]:
    manifest = root / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or not {"name", "kind", "image"} <= set(rows[0]):
            raise ValueError(f"{manifest}: not a make-splices manifest (needs name, kind, image columns)")
        return [
            Item(r["name"], root / r["image"], root / r["mask"] if r.get("mask") else None, r["kind"] == "spliced")
            for r in rows
        ]
    items = [Item(p.stem, p, _existing(root / "masks" / f"{p.stem}.png"), True) for p in _images(root / "spliced")]
    return items + [Item(p.stem, p, None, False) for p in _images(root / "authentic")]


READERS: dict[str, Callable[[Path], list[Item]]] = {
    "columbia": read_columbia,
    "dso1": read_dso1,
    "rt": read_rt,
    "inthewild": read_inthewild,
    "hays": read_hays,
    "folder": read_folder,
}
EXPECTED = {
    "columbia": "4cam_auth/*.tif and 4cam_splc/*.tif",
    "dso1": "DSO-1/normal-XX.png and DSO-1/splicing-XX.png",
    "rt": "CAMERA/pristine/*.TIF and CAMERA/tampered-realistic/*.TIF",
    "inthewild": "images/*.jpg and masks/*.png",
    "hays": "NAME.jpg beside NAME_mask.jpg",
    "folder": "manifest.csv from exiflang make-splices (or spliced/, masks/, authentic/)",
}


def read_dataset(name: str, root: str | Path) -> list[Item]:
    """All items of dataset ``name`` under ``root``; ValueError (one line) when none are found.

    Names are unique within a dataset (a repeated name raises, since outputs are keyed by it).
    """
    if name not in READERS:
        raise ValueError(f"dataset {name!r}: expected one of {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    items = READERS[name](root)
    if not items:
        raise ValueError(f"{root}: no {name} images found (expected {EXPECTED[name]})")
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise ValueError(f"{root}: two {name} images are both named {item.name!r}")
        seen.add(item.name)
    return items
