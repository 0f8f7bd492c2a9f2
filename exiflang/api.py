"""The Python API: load a model folder once, then detect splices, embed, look up cameras and check EXIF of photos.

    import exiflang
    model = exiflang.load("runs/demo/run/model")            # a trained run's or a converted model folder
    det = model.detect("photo.jpg")                          # det.score, det.verdict, det.heatmap ...
    vec = model.embed("photo.jpg")                           # float32 [D], unit length
    index = exiflang.load_index("runs/demo/index")
    res = model.lookup("photo.jpg", index, k=10)             # res.neighbours, res.votes, res.known
    chk = model.check_exif("photo.jpg")                      # chk.score, chk.verdict, chk.per_tag
    cal = model.calibrate(authentic_photo_paths)             # writes calibration.json: verdicts from now on

An ``image`` is a path (``str`` / ``Path``), the file's ``bytes``, a ``PIL.Image`` or a ``uint8
[H,W,3]`` array.  It is read with the pipeline's image policy (:mod:`exiflang.pipeline.image_policy`:
pixel limit, plausible size, pixel modes); pixels are never resized, re-encoded or rotated before
analysis.  A photo that cannot be used raises :class:`ImageInputError` (a ``ValueError``) whose
message is one line naming it and the reason.  A model folder or index that is not one raises a
one-line ``FileNotFoundError`` / ``ValueError`` naming the file.  Loading never executes code from
the folder (JSON, safetensors, tokenizer files).

Every result has ``to_json()`` (plain JSON types, no arrays).  The ``exiflang detect``,
``calibrate`` and ``lookup`` commands (:mod:`exiflang.commands`), ``check-exif`` and ``exiflang
serve`` run through this module: a command, a script and the service compute the same results.
How detection runs (patch grid, normalized cuts, temperature) is one
:class:`~exiflang.eval.forensics.settings.DetectorConfig` given to :func:`load`.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Union

import numpy as np

from exiflang.eval.forensics.settings import DetectorConfig

PathLike = Union[str, "os.PathLike[str]"]
ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, np.ndarray, Any]  # Any: PIL.Image

EMBED_GRID = {"patch": 124, "per_side": 4, "mode": "grid"}  # `exiflang embed`'s defaults
DETECT_VERDICTS = ("spliced", "authentic", "inconclusive", "unknown")
CHECK_VERDICTS = ("consistent", "inconsistent", "inconclusive", "no-exif")


class ImageInputError(ValueError):
    """A photo that cannot be used; ``str(err)`` is one line ``"NAME: reason"``."""


# -- images ---------------------------------------------------------------------------------------


def _name_of(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(image, np.ndarray):
        return "<array>"
    return getattr(image, "filename", "") or "<PIL image>"


def _from_pil(img: Any, name: str) -> np.ndarray:
    from exiflang.eval.images import to_rgb_array
    from exiflang.pipeline.image_policy import default_policy

    width, height = img.size
    limit = default_policy().max_pixels
    if width * height > limit:
        raise ImageInputError(
            f"{name}: too large: {width}x{height} is {width * height / 1e6:.1f} MP, over the {limit / 1e6:g} MP limit"
        )
    try:
        img.load()
        arr = to_rgb_array(img)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken images
        reason = " ".join(str(exc).split())
        raise ImageInputError(f"{name}: not a usable image ({type(exc).__name__}: {reason})") from None
    return np.ascontiguousarray(arr)


def _from_array(arr: np.ndarray) -> np.ndarray:
    from exiflang.pipeline.image_policy import default_policy

    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageInputError(f"<array>: expected uint8 [H,W,3] pixels, got {arr.dtype} {list(arr.shape)}")
    if arr.shape[0] * arr.shape[1] > default_policy().max_pixels:
        raise ImageInputError(
            f"<array>: too large: {arr.shape[1]}x{arr.shape[0]} is over the "
            f"{default_policy().max_pixels / 1e6:g} MP limit"
        )
    if 0 in arr.shape:
        raise ImageInputError(f"<array>: empty image {list(arr.shape)}")
    return np.ascontiguousarray(arr)


def read_image(image: ImageLike) -> np.ndarray:
    """Any accepted image -> ``uint8 [H,W,3]`` (0..255, the stored pixels, no rotation or resizing).

    :class:`ImageInputError` (one line naming the input) for a missing, unreadable, refused
    (too large, implausible size, pixel mode) or malformed image.
    """
    from PIL import Image

    from exiflang.eval.images import ImageError, load_rgb, load_rgb_bytes

    try:
        if isinstance(image, (str, os.PathLike)):
            return load_rgb(image)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return load_rgb_bytes(bytes(image))
    except ImageError as exc:
        raise ImageInputError(str(exc)) from None
    if isinstance(image, np.ndarray):
        return _from_array(image)
    if isinstance(image, Image.Image):
        return _from_pil(image, _name_of(image))
    raise ImageInputError(
        f"{type(image).__name__}: not an image (expected a path, bytes, a PIL image or a uint8 [H,W,3] array)"
    )


def read_own_exif(image: ImageLike) -> tuple[dict[str, str], str]:
    """The EXIF stored in a path's / bytes' file as ``{tag name: value}`` and where it came from.

    A PIL image opened from a file reads that file; an array (or a PIL image made in memory)
    has no file, hence no EXIF: ``({}, "no file: pixels only")``.  An unreadable EXIF block is
    ``({}, "EXIF unreadable: ...")`` (the pixels may still be fine).
    """
    from exiflang.pipeline.exif.parse import ExifReadError, read_exif

    if isinstance(image, (str, os.PathLike)):
        try:
            data = Path(image).read_bytes()
        except OSError as exc:
            raise ImageInputError(f"{image}: unreadable ({exc.strerror or exc})") from None
        source = str(image)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data, source = bytes(image), "<bytes>"
    elif filename := getattr(image, "filename", ""):
        return read_own_exif(filename)
    else:
        return {}, "no file: pixels only"
    try:
        return read_exif(data), source
    except ExifReadError as exc:
        return {}, f"EXIF unreadable: {' '.join(str(exc).split())[:200]}"


# -- results --------------------------------------------------------------------------------------


def _num(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), nd)


def _shrink(values: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """``[H,W]`` float or bool -> ``[h,w]`` (``size`` = (h, w)), bilinear (nearest for masks)."""
    from PIL import Image

    if values.shape == size:
        return values
    if values.dtype == bool:
        img = Image.fromarray(values.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)
        return np.asarray(img) > 127
    img = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(
        img.resize((size[1], size[0]), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR),
        dtype=np.float32,
    )


def map_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) of the returned maps: the photo's size scaled down so the longer side is <= ``max_side``
    (None: the photo's size; never scaled up)."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


@dataclass
class Detection:
    """One photo's splice detection.

    The photo is analysed at full resolution whatever its size (the patch grid spans it), so
    ``scores``, ``score``, ``verdict``, ``percentile`` and ``cell_map`` never depend on
    ``max_side``: it only bounds what comes back for viewing.  The maps below are ``[h,w]`` = the
    photo's ``image_size`` (H, W) scaled down so that the longer side is at most ``max_side``
    (equal when smaller, or when ``max_side`` is None); :meth:`heatmap_png` draws at most that
    size; ``result`` keeps the full-size maps and :meth:`save_npz` writes from it.

    ``heatmap``: ``float32 [h,w]`` 0..1, high = spliced (mean-shift map).
    ``mask``: ``bool [h,w]`` (True = spliced) only when ``verdict`` is ``spliced``, else None (an
    outline is shown only for a splice the verdict stands behind); ``raw_mask``: the mean-shift
    mask always.
    ``ncuts_heatmap``: ``float32 [h,w]`` 0..1 or None (ncuts off).  ``cell_map``: ``float32
    [rows, cols]`` on the patch grid.  ``scores``: every detection score (higher = spliced);
    ``score``: the default one.  ``verdict``: one of :data:`DETECT_VERDICTS`; ``percentile``:
    0..100 among the model's authentic reference photos (its ``calibration.json``, ``exiflang
    calibrate``), or None; without one the verdict is ``unknown``.  ``result``: the detector's
    full-size :class:`exiflang.eval.forensics.detector.DetectionResult`.
    """

    heatmap: np.ndarray
    mask: np.ndarray | None
    raw_mask: np.ndarray
    ncuts_heatmap: np.ndarray | None
    cell_map: np.ndarray
    scores: dict[str, float]
    score: float
    verdict: str
    percentile: float | None
    image_size: tuple[int, int]
    result: Any = field(repr=False, default=None)
    extra: dict[str, Any] = field(default_factory=dict)
    max_side: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Scores, verdict, sizes and the grid (no arrays)."""
        g = getattr(self.result, "grid", None)
        out = {
            "score": _num(self.score),
            "scores": {k: _num(v) for k, v in self.scores.items()},
            "verdict": self.verdict,
            "percentile": _num(self.percentile, 2),
            "image_size": list(self.image_size),
            "map_size": list(self.heatmap.shape),
            "splice_fraction": round(float(self.raw_mask.mean()), 6) if self.raw_mask.size else 0.0,
            "mask_shown": self.mask is not None,
            "grid": None if g is None else {"patch": g.patch, "rows": g.shape[0], "cols": g.shape[1]},
            "timings": {k: round(float(v), 4) for k, v in getattr(self.result, "timings", {}).items()},
        }
        return {**out, **self.extra}

    def heatmap_png(self, overlay_on: ImageLike | None = None, max_side: int | None = None) -> bytes:
        """PNG bytes: the heatmap in colour (``overlay_on=None``), or the photo beside the photo with
        the heatmap blended in, drawn as the ``detect`` command draws its PNG (the masks outlined
        only when the verdict is ``spliced``; the caption says verdict, score and percentile).

        ``max_side``: the PNG's longer side at most, in pixels (None: the ``max_side`` the detection
        was made with; None there too: the maps' size).  The overlay is drawn from the full-size
        maps when ``overlay_on`` is the photo analysed (else from the returned maps, the photo
        resized to them), so it is the same picture whatever ``max_side`` the maps came back at.
        """
        from PIL import Image

        from exiflang.eval.forensics.overlay import colorize, render_overlay

        bound = max_side if max_side is not None else self.max_side
        buf = io.BytesIO()
        if overlay_on is None:
            h, w = map_size(self.heatmap.shape[0], self.heatmap.shape[1], bound)
            Image.fromarray(colorize(_shrink(self.heatmap, (h, w)))).save(buf, format="PNG")
            return buf.getvalue()
        rgb = read_image(overlay_on)
        res = self.result
        if res is not None and rgb.shape[:2] == res.heatmap.shape:
            heat, mask, ncuts = res.heatmap, res.mask, res.ncuts_mask
        else:
            heat, mask, ncuts = self.heatmap, self.raw_mask, None
        if rgb.shape[:2] != heat.shape:
            rgb = np.asarray(Image.fromarray(rgb).resize(heat.shape[::-1], Image.Resampling.BILINEAR))
        caption = f"{self.verdict}  score {self.score:.4g}" + (
            f"  {self.percentile:.0f}th pct of authentic" if self.percentile is not None else ""
        )
        # No bound: render_overlay never scales up, so a bound past the photo's size keeps it.
        side = bound if bound is not None else 2 * rgb.shape[1] + rgb.shape[0] + 64
        img = render_overlay(rgb, heat, mask, ncuts, caption, side, outlines=self.verdict == "spliced")
        img.save(buf, format="PNG")
        return buf.getvalue()

    def save_npz(self, path: PathLike | IO[bytes], full_maps: bool = False) -> None:
        """The ``detect`` command's npz: scores, ``verdict``, ``percentile``, the maps on the grid's
        cells (:func:`exiflang.eval.forensics.maps.full_maps` expands them), and with ``full_maps``
        also the image-size ``heatmap`` / ``mask`` (/ ncuts maps)."""
        from exiflang.eval.forensics.detect import npz_arrays

        # numpy's stubs read **kwds as savez's allow_pickle flag; they are the named arrays.
        np.savez_compressed(path, **npz_arrays(self.result, full_maps=full_maps))  # type: ignore[arg-type]


@dataclass
class Lookup:
    """Nearest reference photos and per-tag votes for one photo.

    ``neighbours``: ``[{"row", "rank", "similarity" (cosine -1..1), "key", "exif"}]`` best first.
    ``votes``: ``{tag: [(value, share 0..1), ...]}`` most voted first (share = votes / neighbours
    having the tag).  ``known``: False = "unknown camera" (the photo is no closer to its
    neighbours than the index's photos are to theirs: do not trust the votes).
    ``predictions``: ``{tag: {"value", "share", "votes", "cast", "n_with_tag", "similarity"}}``
    (:mod:`exiflang.eval.index.votes`; similarity-weighted with ``weighted=True``).
    ``familiarity``: ``{"known", "distance", "threshold", "rank"}`` behind ``known``
    (:mod:`exiflang.eval.index.abstain`).  ``model_card``: one line, what the model was trained on.
    """

    neighbours: list[dict]
    votes: dict[str, list[tuple[str, float]]]
    known: bool
    image_size: tuple[int, int]
    predictions: dict[str, dict] = field(default_factory=dict)
    familiarity: dict[str, Any] = field(default_factory=dict)
    model_card: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "known": self.known,
            "image_size": list(self.image_size),
            "neighbours": self.neighbours,
            "votes": {t: [[v, round(s, 4)] for v, s in vs] for t, vs in self.votes.items()},
            "predictions": self.predictions,
            "familiarity": self.familiarity,
            "model_card": self.model_card,
            **self.extra,
        }


@dataclass
class ExifCheck:
    """Do the pixels agree with the claimed EXIF?  (:mod:`exiflang.eval.consistency.score`.)

    ``score``: 0..1, higher = the pixels agree with the claim (calibrated on the reference's own
    photos when ``calibrated``); NaN for ``no-exif``.  ``percentile``: 0..100, the claim's rank among
    the reference EXIF texts.  ``verdict``: one of :data:`CHECK_VERDICTS`.  ``per_tag``:
    ``[{"tag", "claimed", "support", "best_alternative"}]``, least supported first (support < 0:
    the pixels prefer ``best_alternative``).  ``claimed``: the EXIF judged; ``exif_source``: where it
    came from (a file name, ``given``, or why there is none); ``reason``: why the verdict is
    ``inconclusive`` or ``no-exif`` regardless of the score ("" otherwise), e.g. a claimed camera
    the reference has no photo of.
    """

    score: float
    percentile: float
    verdict: str
    per_tag: list[dict]
    claimed: dict
    similarity: float
    z: float
    calibrated: bool
    exif_source: str
    reference: dict
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "score": _num(self.score, 4),
            "percentile": _num(self.percentile, 2),
            "similarity": _num(self.similarity),
            "z": _num(self.z, 4),
            "calibrated": self.calibrated,
            "reason": self.reason,
            "per_tag": self.per_tag,
            "claimed": self.claimed,
            "exif_source": self.exif_source,
            "reference": self.reference,
        }


@dataclass
class Calibration:
    """A model's detection reference, measured on authentic photos (:meth:`Model.calibrate`).

    ``reference``: the :class:`exiflang.eval.forensics.calibration.Reference` (each score's sorted
    values over the photos, the detector settings that produced them, the verdict ``band`` in
    percentiles).  ``skipped``: one line per photo that could not be scored.  ``path``: the
    ``calibration.json`` written, None when not saved.
    """

    reference: Any
    skipped: list[str]
    path: Path | None

    def edges(self) -> tuple[float, float, float]:
        """The default score's median and its values at the band's two percentiles."""
        ref = self.reference
        lo, hi = ref.band
        q = np.percentile(ref.scores[ref.score], [50, lo, hi])
        return float(q[0]), float(q[1]), float(q[2])

    def to_json(self) -> dict[str, Any]:
        ref = self.reference
        median, lo, hi = self.edges()
        return {
            "photos": ref.photos,
            "score": ref.score,
            "band": list(ref.band),
            "median": _num(median),
            "edges": [_num(lo), _num(hi)],
            "settings": ref.settings,
            "skipped": self.skipped,
            "path": None if self.path is None else str(self.path),
        }


# -- index ----------------------------------------------------------------------------------------


class Index:
    """An ``exiflang index`` folder, loaded (vectors, rows, settings).  ``size``: photos in it.

    ``grid``: ``{"patch", "per_side", "mode"}`` queries are embedded on: the grid the index's
    vectors were embedded with (recorded in ``index.json``), with the overrides given to
    :func:`load_index`.
    """

    def __init__(self, index_dir: PathLike, *, grid: dict | None = None) -> None:
        from exiflang.eval.index.lookup import query_grid
        from exiflang.eval.index.run import VectorIndex
        from exiflang.eval.index.thumbnails import Thumbnails

        self.dir = Path(index_dir)
        self.vectors = VectorIndex.load(self.dir)
        self.info: dict = self.vectors.info
        self.grid: dict = query_grid(self.info, grid)
        self.thumbnails = Thumbnails.open(self.dir, len(self.vectors))  # None: built without them

    @property
    def size(self) -> int:
        return len(self.vectors)

    def thumbnail(self, row: int) -> bytes | None:
        """The JPEG thumbnail of the photo at index row ``row`` (a neighbour's ``"row"``; longer side
        <= 128 px, upright, no metadata), or None: the index was built without thumbnails, or its
        photo could not be read then (:mod:`exiflang.eval.index.thumbnails`)."""
        return None if self.thumbnails is None else self.thumbnails.get(int(row))

    def to_json(self) -> dict[str, Any]:
        return {
            "dir": str(self.dir),
            "name": self.dir.name,
            "size": self.size,
            "dim": self.vectors.dim,
            "kind": self.info.get("kind"),
            "grid": self.grid,
            "thumbnails": 0 if self.thumbnails is None else len(self.thumbnails),
        }


def load_index(index_dir: PathLike, *, grid: dict | None = None) -> Index:
    """Load an ``exiflang index`` folder (one-line ``ValueError`` naming the file when it is not one).

    ``grid``: ``{"patch", "per_side", "mode"}`` values (None: keep) put over the embedding grid the
    index records, for experiments only: queries embedded on another grid than the index's vectors
    are not comparable with them.
    """
    return Index(index_dir, grid=grid)


# -- model ----------------------------------------------------------------------------------------


def _text_settings(model_dir: Path, card: dict) -> dict:
    """How the run rendered EXIF as text: its ``config.yaml`` beside the folder, else the card."""
    from exiflang.eval.embed.run import run_config

    cfg = run_config(model_dir)
    fmt = cfg.get("text_format") or (card.get("training") or {}).get("text_format") or "paper"
    # A model trained on shuffled pairs saw every order; vocabulary order is one of them.
    return {
        "fmt": {"shuffled": "paper", "values_shuffled": "values"}.get(fmt, fmt),
        "clean": bool(cfg.get("clean_values", False)),
        "max_length": cfg.get("max_text_len"),
    }


def _read_card(model_dir: Path) -> dict:
    try:
        from exiflang.train.card import read_model_card
    except ImportError:  # a tree without model cards
        return {}
    return read_model_card(model_dir)


class Model:
    """A loaded model folder (see :func:`load`); thread-compatible, not re-entrant per call.

    ``detector_config``: the :class:`DetectorConfig` :meth:`detect` and :meth:`calibrate` run with
    (its ``device`` and ``batch_size`` are the model's).
    """

    def __init__(
        self,
        model_dir: PathLike,
        *,
        device: str = "cpu",
        threads: int | None = None,
        reference: Any = None,
        detector: DetectorConfig | None = None,
        batch_size: int | None = None,
    ) -> None:
        import torch

        from exiflang.eval.embed.patches import PatchEmbedder
        from exiflang.train.model import ExifClip

        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"threads={threads}: must be at least 1")
            torch.set_num_threads(int(threads))
        config = detector if detector is not None else DetectorConfig()
        # One model on one device: the config's device and batch size are replaced (and checked) first.
        self.detector_config = config.replace(device=device, batch_size=batch_size or config.batch_size)
        self.dir = Path(model_dir)
        self.device = device
        net, tokenizer, tags = ExifClip.from_pretrained(self.dir)
        self.card: dict = _read_card(self.dir)
        self.config = net.config
        self.vocab: list[str] = list(tags["tags"]) if tags and tags.get("tags") else []
        self._net, self._tokenizer = net, tokenizer
        self._embedder = PatchEmbedder(net, device=device, batch_size=self.detector_config.batch_size)
        self._detectors: dict[bool, Any] = {}
        self._searchers: dict[tuple, Any] = {}
        self._checkers: dict[str, Any] = {}
        self._reference = reference
        self._lock = threading.RLock()  # the caches below are filled once, also under a service's threads
        self.text = _text_settings(self.dir, self.card)

    # -- description
    def info(self) -> dict[str, Any]:
        """JSON-ready: name, folder, architecture summary, embed dim, vocabulary size, text format, card."""
        c = self.config
        return {
            "name": self.dir.name,
            "dir": str(self.dir),
            "preset": (self.card.get("training") or {}).get("preset"),
            "config": {
                "image_arch": c.image_arch,
                "text_arch": None if c.cropclr else c.text_arch,
                "text_size": c.text_size,
                "pooling": c.pooling,
                "logit_scale": c.logit_scale,
                "cropclr": c.cropclr,
            },
            "embed_dim": int(c.embed_dim),
            "tags": len(self.vocab),
            "text_format": self.text["fmt"],
            "has_text_tower": self._net.text is not None,
            "summary": self.card.get("summary", ""),
            "card": self.card,
        }

    def __repr__(self) -> str:
        return f"exiflang.api.Model({str(self.dir)!r}, embed_dim={self.config.embed_dim})"

    # -- detect
    def _new_detector(self, ncuts: bool) -> Any:
        """A detector of this model with the model's config (no reference attached)."""
        from exiflang.eval.forensics.detector import Detector

        det = Detector.from_model(self._net, self.detector_config.replace(ncuts=ncuts))
        det.model_dir = self.dir  # recorded in its settings, as `Detector(model_dir)` does
        return det

    def detector(self, ncuts: bool | None = None) -> Any:
        """The :class:`exiflang.eval.forensics.detector.Detector` behind :meth:`detect` (built once per
        ``ncuts``, None: the config's; cached): its ``settings`` and ``reference`` (the folder's
        ``calibration.json``, or None) are what a detection depends on.  One-line ValueError for a
        damaged ``calibration.json``."""
        from exiflang.eval.forensics.calibration import load_reference

        on = self.detector_config.ncuts if ncuts is None else bool(ncuts)
        with self._lock:
            if on not in self._detectors:
                det = self._new_detector(on)
                det.reference = load_reference(self.dir)
                self._detectors[on] = det
            return self._detectors[on]

    def detect(
        self, image: ImageLike, *, max_side: int | None = 1600, ncuts: bool | None = None, name: str | None = None
    ) -> Detection:
        """Zero-shot splice detection of one photo.

        The photo is analysed at full resolution, whatever ``max_side``: the patch grid of the
        model's :class:`DetectorConfig` (30 patches along the longer side by default) spans the
        whole photo, so scores, verdict and ``cell_map`` do not depend on ``max_side``.
        ``max_side`` bounds only what comes back for viewing: the maps (``heatmap``, ``mask``,
        ``raw_mask``, ``ncuts_heatmap``) are scaled so that their longer side is at most
        ``max_side`` pixels (None: the photo's size), and :meth:`Detection.heatmap_png` draws at
        most that size; :attr:`Detection.result` keeps the full-size maps and
        :meth:`Detection.save_npz` writes from it.  ``ncuts``: also the normalized-cuts map (None:
        the config's, on by default).  ``name``: how an error names the photo (default: its path,
        ``<bytes>`` or ``<array>``; give the file's name when passing pixels you decoded).
        """
        from exiflang.eval.forensics.scores import DEFAULT_SCORE

        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side={max_side}: must be at least 1 (None: the photo's size)")
        rgb = read_image(image)
        try:
            res = self.detector(ncuts).detect(rgb)
        except ValueError as exc:  # smaller than one patch
            raise ImageInputError(f"{name or _name_of(image)}: {exc}") from None
        size = map_size(rgb.shape[0], rgb.shape[1], max_side)
        raw = _shrink(res.mask, size)
        extra = {"verdict_reason": res.verdict_reason, "reference": res.reference}
        return Detection(
            heatmap=_shrink(res.heatmap, size),
            mask=raw if res.verdict == "spliced" else None,
            raw_mask=raw,
            ncuts_heatmap=None if res.ncuts_heatmap is None else _shrink(res.ncuts_heatmap, size),
            cell_map=np.asarray(res.cell_map, dtype=np.float32),
            scores=dict(res.scores),
            score=float(res.scores.get(DEFAULT_SCORE, next(iter(res.scores.values())))),
            verdict=res.verdict,
            percentile=None if res.percentile is None else float(res.percentile),
            image_size=(int(rgb.shape[0]), int(rgb.shape[1])),
            result=res,
            extra=extra,
            max_side=max_side,
        )

    def calibrate(
        self,
        photos: Sequence[PathLike],
        *,
        band: tuple[float, float] = (90.0, 99.0),
        source: str = "",
        save: bool = True,
    ) -> Calibration:
        """Measure the detection reference on ``photos``: files of photos known to be authentic
        (what ``exiflang calibrate`` does; docs/forensics.md).

        Each photo is scored as :meth:`detect` scores it (this model's config and grid, full
        resolution; scores only, no maps).  ``band``: percentiles (LOW, HIGH) of those scores: a
        detection below LOW is ``authentic``, from HIGH ``spliced``, between ``inconclusive``.
        ``source``: what the photos are, recorded in the reference.  With ``save`` the reference is
        written to the folder's ``calibration.json`` (replacing one there) and every later
        :meth:`detect` is judged against it.  One-line ValueError, nothing written, when fewer than
        :data:`exiflang.eval.forensics.calibration.MIN_PHOTOS` photos could be scored.
        """
        from exiflang.eval.forensics.calibrate import calibrate
        from exiflang.eval.forensics.calibration import save_reference

        # A fresh detector: an existing (even damaged) calibration.json plays no part in a new one.
        ref, skipped = calibrate(self._new_detector(False), [Path(p) for p in photos], source=source, band=band)
        path = None
        if save:
            path = save_reference(self.dir, ref)
            with self._lock:
                for det in self._detectors.values():
                    det.reference = ref
        return Calibration(reference=ref, skipped=skipped, path=path)

    # -- embed
    def _photo_encoder(self, grid: dict) -> Any:
        from exiflang.eval.embed.batch import PhotoEncoder

        return PhotoEncoder(self._embedder, int(grid["patch"]), int(grid["per_side"]), str(grid["mode"]))

    def _embed_rgb(self, rgb: np.ndarray, grid: dict, name: str = "<image>") -> np.ndarray:
        try:
            return self._photo_encoder(grid).embed([rgb])[0]
        except ValueError as exc:  # smaller than one patch
            raise ImageInputError(f"{name}: {exc}") from None

    def embed(self, image: ImageLike, *, patch: int = 124, per_side: int = 4, mode: str = "grid") -> np.ndarray:
        """``float32 [D]`` unit vector: the mean of the photo's patch embeddings (an even
        ``per_side x per_side`` grid of ``patch``-px patches, as ``exiflang embed``), re-normalised."""
        return self._embed_rgb(read_image(image), {"patch": patch, "per_side": per_side, "mode": mode}, _name_of(image))

    # -- lookup
    def searcher(self, index: Index | PathLike) -> Any:
        """The :class:`exiflang.eval.index.lookup.Searcher` :meth:`lookup` uses for ``index`` (built
        once per index folder and grid, cached; it shares this model's weights and the loaded
        index).  One-line ValueError naming the files when the index was built with another model
        (another tag vocabulary or dimension)."""
        from exiflang.eval.index.lookup import Searcher

        index = index if isinstance(index, Index) else load_index(index)
        key = (str(index.dir.resolve()), tuple(sorted(index.grid.items())))
        with self._lock:
            if key not in self._searchers:
                index.vectors.check_model(self.dir)
                self._searchers[key] = Searcher.from_parts(
                    index.vectors, self._embedder, self.vocab, self.card, index.grid
                )
            return self._searchers[key]

    def lookup(
        self,
        image: ImageLike,
        index: Index | PathLike,
        k: int = 10,
        *,
        weighted: bool = False,
        tags: Sequence[str] | None = None,
    ) -> Lookup:
        """The ``k`` nearest photos of ``index`` (the photo embedded as the index's photos were) and
        their per-tag votes.  ``weighted``: votes weighted by similarity; ``tags``: the tags voted
        on (default: the model's vocabulary)."""
        if k < 1:
            raise ValueError(f"k={k}: must be at least 1")
        index = index if isinstance(index, Index) else load_index(index)
        searcher = self.searcher(index)
        rgb = read_image(image)
        try:
            query = searcher.encoder.embed([rgb])
        except ValueError as exc:  # smaller than one patch
            raise ImageInputError(f"{_name_of(image)}: {exc}") from None
        wanted = list(tags) if tags else self.vocab
        ans = searcher.answer(query, k, weighted, wanted)[0]
        neighbours = [{"row": int(_row(index, n)), **n} for n in ans["neighbours"]]
        named = ("neighbours", "predictions", "known", "familiarity", "model_card")
        return Lookup(
            neighbours=neighbours,
            votes=_votes(neighbours, wanted),
            known=bool(ans.get("known", True)),
            image_size=(int(rgb.shape[0]), int(rgb.shape[1])),
            predictions=ans.get("predictions", {}),
            familiarity=ans.get("familiarity", {}),
            model_card=ans.get("model_card", ""),
            extra={key: v for key, v in ans.items() if key not in named},
        )

    # -- check-exif
    def _reference_source(self, reference: Any) -> Any:
        from exiflang.eval.consistency.reference import training_data

        ref = reference if reference is not None else self._reference
        if ref is not None:
            return ref
        found = training_data(self.dir, self.card)
        if found is None:
            raise ValueError(
                f"{self.dir}: no reference EXIF set: its training shards are not found; pass "
                "reference= (an index, embeddings or shards folder)"
            )
        return found

    def checker(self, reference: Any = None) -> Any:
        """The :class:`exiflang.eval.consistency.score.Checker` for ``reference`` (built once, cached)."""
        with self._lock:
            return self._checker_locked(reference)

    def _checker_locked(self, reference: Any) -> Any:
        from exiflang.eval.consistency.reference import DEFAULT_GRID, Reference, load_reference
        from exiflang.eval.consistency.score import Checker
        from exiflang.eval.embed.batch import TextEncoder

        ref = self._reference_source(reference)
        key = (
            str(Path(ref.dir).resolve())
            if isinstance(ref, Index)
            else f"ref:{id(ref)}"
            if isinstance(ref, Reference)
            else str(Path(ref).resolve())
        )
        if key not in self._checkers:
            if self._net.text is None or self._tokenizer is None:
                raise ValueError(f"{self.dir}: this model has no text tower: check-exif needs one")
            if isinstance(ref, Reference):
                loaded = ref
            else:
                path = ref.dir if isinstance(ref, Index) else Path(ref)
                enc = self._photo_encoder(DEFAULT_GRID)
                loaded = load_reference(path, embed=enc.embed, grid=DEFAULT_GRID)
            if loaded.vectors is not None and loaded.vectors.shape[1] != self.config.embed_dim:
                raise ValueError(
                    f"{loaded.source}: vectors of dimension {loaded.vectors.shape[1]}, this "
                    f"model's are {self.config.embed_dim}: not embedded with this model"
                )
            text = TextEncoder(
                self._net,
                self._tokenizer,
                self.vocab,
                self.text["fmt"],
                clean=self.text["clean"],
                max_length=self.text["max_length"],
                device=self._embedder.device,
            )
            self._checkers[key] = Checker(text, loaded)
        return self._checkers[key]

    def check_exif(
        self, image: ImageLike, exif: dict | None = None, *, reference: Any = None, per_tag: bool = True
    ) -> ExifCheck:
        """Do the pixels agree with ``exif`` (default: the EXIF stored in the path's / bytes' file)?"""
        checker = self.checker(reference)
        rgb = read_image(image)
        if exif is None:
            claimed, source = read_own_exif(image)
        else:
            if not isinstance(exif, dict):
                raise ValueError(f"exif: expected a dict of tag -> value, got {type(exif).__name__}")
            claimed, source = {str(k): str(v) for k, v in exif.items()}, "given"
        vec = self._embed_rgb(rgb, checker.reference.grid, _name_of(image))
        res = checker.check(vec, claimed, per_tag=per_tag)
        return ExifCheck(
            score=res.score,
            percentile=res.percentile,
            verdict=res.verdict,
            per_tag=res.per_tag,
            claimed=res.claimed,
            similarity=res.similarity,
            z=res.z,
            calibrated=res.calibrated,
            exif_source=source,
            reference=checker.info(),
            reason=res.reason,
        )


def _row(index: Index, neighbour: dict) -> int:
    """The index row of a neighbour (its key's row in ``rows.parquet``)."""
    if "row" in neighbour:
        return int(neighbour["row"])
    rows = getattr(index, "_row_of_key", None)
    if rows is None:
        rows = {str(k): i for i, k in enumerate(index.vectors.table["key"].tolist())}
        # A lazily built cache kept on the index object it describes.
        index._row_of_key = rows  # type: ignore[attr-defined]
    return rows.get(str(neighbour.get("key")), -1)


def _votes(neighbours: list[dict], vocab: list[str], top: int = 5) -> dict[str, list[tuple[str, float]]]:
    """Per tag, its ``top`` values among the neighbours with the share of those having the tag."""
    out = {}
    for tag in vocab:
        vals = [str(n["exif"][tag]).strip() for n in neighbours if n.get("exif", {}).get(tag) is not None]
        if vals:
            counts = sorted(Counter(vals).items(), key=lambda vc: (-vc[1], vc[0]))[:top]
            out[tag] = [(v, c / len(vals)) for v, c in counts]
    return out


def load(
    model_dir: PathLike,
    *,
    device: str = "cpu",
    threads: int | None = None,
    reference: Any = None,
    detector: DetectorConfig | None = None,
    batch_size: int | None = None,
) -> Model:
    """Load a model folder (a trained run's ``model/`` or a converted authors' checkpoint).

    ``device``: ``cpu`` | ``cuda`` | ``cuda:N`` | ``auto``; ``threads``: CPU threads torch may use
    (None: its default).  ``reference``: the default reference of :meth:`Model.check_exif` (an
    index, embeddings or shards folder, or an :class:`Index`); None -> the model's training
    shards when they can be found.  ``detector``: how :meth:`Model.detect` and
    :meth:`Model.calibrate` run (a :class:`DetectorConfig`: patch size, patches per side,
    normalized cuts, temperature, ...; default: the authors' grid of 30 patches per side); its
    ``device`` and ``batch_size`` are replaced by this call's, as the model runs on one device.
    ``batch_size``: patches per forward pass of every call (None: the config's, 256).
    """
    return Model(
        model_dir, device=device, threads=threads, reference=reference, detector=detector, batch_size=batch_size
    )
