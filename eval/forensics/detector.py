"""The zero-shot splice detector: one photo's pixels -> heatmap, masks and detection scores.

:class:`Detector` holds a trained model's image tower and runs docs/design.md §6 on one
``uint8 [H,W,3]`` photo: the authors' patch grid (:func:`exiflang.eval.embed.patches.splice_grid`, P = 124,
n = 30), batched patch embeddings from the image normalised once, the cosine affinity, the
vectorised vote averaging + EXIF-SC mean shift (+ normalized cuts) of
:func:`exiflang.eval.forensics.localize.localize`, and both detection scores of
:func:`exiflang.eval.forensics.scores.detection_scores`.
No metadata is read: only pixels.

``legacy_negative=True`` reproduces the authors' evaluator, which pushed float 0..255 patches
through ``ToPILImage``: ``mul(255).byte()`` wraps every pixel ``v`` to ``(-v) mod 256`` (a
photographic negative).  It is off by default and exists only to compare with their numbers.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exiflang.eval.embed.patches import Grid, PatchEmbedder, splice_grid
from exiflang.eval.forensics.affinity import patch_affinity
from exiflang.eval.forensics.calibration import Reference, judge, load_reference
from exiflang.eval.forensics.localize import localize
from exiflang.eval.forensics.scores import detection_scores
from exiflang.eval.forensics.settings import CODE_PER_SIDE, PAPER_PER_SIDE, PATCH, DetectorConfig

__all__ = ["CODE_PER_SIDE", "PAPER_PER_SIDE", "PATCH", "DetectionResult", "Detector", "DetectorConfig"]


def legacy_negative(rgb: np.ndarray) -> np.ndarray:
    """``uint8 [H,W,3]`` -> the authors' accidental negative ``(-v) mod 256`` (0 stays 0, 1 -> 255)."""
    return (np.uint8(0) - rgb).astype(np.uint8)  # uint8 arithmetic wraps, as torch's .byte() did


@dataclass
class DetectionResult:
    """One photo's detection.

    ``heatmap``: ``float32 [H,W]`` in 0..1, higher = more likely spliced (the mean-shift map,
    oriented so the smaller region is high).  ``mask``: ``bool [H,W]``, True = spliced (mean-shift).
    ``ncuts_mask``: ``bool [H,W]`` (True = the smaller normalized-cuts segment) or None when off.
    ``scores``: ``score_exp`` and ``score_mean_dist``, higher = more likely spliced.
    ``cell_map``: ``float32 [rows, cols]`` the heatmap on the grid's cells before resizing.
    ``ncuts_heatmap``: ``float32 [H,W]`` 0..1, the soft normalized-cuts map (high = the ncuts
    splice side; :mod:`exiflang.eval.forensics.localize`), or None when ncuts is off.
    ``timings``: seconds per stage (``embed``, ``votes``, ``meanshift``, ``resize``, ``ncuts``,
    ``scores``, ``total``; the ``detect`` command adds ``load`` and ``write`` and re-totals).
    ``settings``: the detector's :attr:`Detector.settings` that produced it.
    ``ncuts_cells``: ``bool [rows, cols]`` and ``ncuts_cell_map``: ``float32 [rows, cols]`` 0..1,
    the ncuts mask and soft map on the grid's cells (None when ncuts is off).
    ``percentile``: 0..100, the default score's rank among the model's authentic reference photos
    (:mod:`exiflang.eval.forensics.calibration`), None without a usable reference.  ``verdict``:
    ``"spliced"``, ``"inconclusive"``, ``"authentic"`` or ``"unknown"``; ``verdict_reason`` says why.
    """

    heatmap: np.ndarray
    mask: np.ndarray
    ncuts_mask: np.ndarray | None
    scores: dict[str, float]
    grid: Grid
    timings: dict[str, float]
    cell_map: np.ndarray | None = None
    ncuts_heatmap: np.ndarray | None = None
    settings: dict[str, object] = field(default_factory=dict)
    ncuts_cells: np.ndarray | None = None
    ncuts_cell_map: np.ndarray | None = None
    percentile: float | None = None
    verdict: str = "unknown"
    verdict_reason: str = ""
    reference: dict[str, object] = field(default_factory=dict)

    @property
    def splice_fraction(self) -> float:
        """Fraction of the image's pixels in ``mask`` (0..1)."""
        return float(self.mask.mean()) if self.mask.size else 0.0


class Detector:
    """A trained model folder's image tower, ready to run on photos of any size.

    ``config``: a :class:`~exiflang.eval.forensics.settings.DetectorConfig` (default settings when
    None); keyword ``overrides`` change single fields of it (``Detector(m, per_side=3)``).
    ``use_reference``: judge detections against the folder's ``calibration.json``
    (:attr:`reference`; settable).
    """

    # Authentic-photo scores the verdicts rank against (Detector(model_dir) reads the folder's).
    reference: Reference | None

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        config: DetectorConfig | None = None,
        *,
        use_reference: bool = True,
        **overrides: Any,
    ) -> None:
        from exiflang.train.model import ExifClip  # here, not at the top: importing DetectionResult stays light

        config = (config or DetectorConfig()).replace(**overrides)  # checks the values before loading
        self._configure(ExifClip.from_pretrained(Path(model_dir)).model, Path(model_dir), config)
        if use_reference:  # the folder's calibration.json, if any (calibrate itself replaces it)
            self.reference = load_reference(model_dir)

    @classmethod
    def from_model(cls, model: Any, config: DetectorConfig | None = None, **overrides: Any) -> Detector:
        """A detector around an in-memory :class:`exiflang.train.model.ExifClip` (no folder needed)."""
        self = cls.__new__(cls)
        self._configure(model, None, (config or DetectorConfig()).replace(**overrides))
        return self

    def _configure(self, model: Any, model_dir: Path | None, config: DetectorConfig) -> None:
        self.model_dir, self.config = model_dir, config
        # The model's logit scale is the temperature it was trained with: exp(A/tau) then matches
        # the logits of its contrastive loss.
        self.tau = float(config.tau) if config.tau is not None else 1.0 / float(model.logit_scale.detach())
        self.embedder = PatchEmbedder(model, device=config.device, batch_size=config.batch_size)
        self.patch, self.per_side, self.ncuts = config.patch, config.per_side, config.ncuts
        self.iterations, self.percentile = config.iterations, config.percentile
        self.legacy_negative = config.legacy_negative
        self.reference = None

    @property
    def settings(self) -> dict[str, object]:
        """What determines the output (a rerun with other settings is not 'already done')."""
        return {
            "model": str(self.model_dir) if self.model_dir else None,
            "patch": self.patch,
            "per_side": self.per_side,
            "ncuts": self.ncuts,
            "tau": self.tau,
            "iterations": self.iterations,
            "percentile": self.percentile,
            "legacy_negative": self.legacy_negative,
        }

    def grid_for(self, height: int, width: int) -> Grid:
        """The splice grid for an ``height x width`` photo (ValueError when smaller than a patch)."""
        return splice_grid(height, width, self.patch, self.per_side)

    def embed(self, rgb: np.ndarray) -> tuple[Grid, torch.Tensor]:
        """``uint8 [H,W,3]`` -> (its splice grid, ``float32 [N,D]`` L2-normalised patch embeddings).

        ValueError for a wrong dtype/shape or an image smaller than one patch.
        """
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected uint8 [H,W,3] pixels, got {rgb.dtype} {tuple(rgb.shape)}")
        grid = self.grid_for(rgb.shape[0], rgb.shape[1])
        pixels = legacy_negative(rgb) if self.legacy_negative else rgb
        return grid, self.embedder.embed_grid(pixels, grid)

    def analyse(self, emb: torch.Tensor, grid: Grid) -> DetectionResult:
        """Patch embeddings ``[N,D]`` on ``grid`` -> maps at the image's size and both scores (no ``embed`` timing)."""
        t_start = time.perf_counter()
        loc = localize(emb, grid, ncuts=self.ncuts, iterations=self.iterations, percentile=self.percentile)
        t0 = time.perf_counter()
        scores = {k: float(v) for k, v in detection_scores(patch_affinity(emb), tau=self.tau).items()}
        timings = {**{k: float(v) for k, v in loc.timings.items()}, "scores": time.perf_counter() - t0}
        timings["total"] = time.perf_counter() - t_start
        pct, verdict, why = judge(scores, self.reference, self.settings)
        return DetectionResult(
            heatmap=np.asarray(loc.heatmap, dtype=np.float32),
            mask=np.asarray(loc.mask, dtype=bool),
            ncuts_mask=None if loc.ncuts_mask is None else np.asarray(loc.ncuts_mask, dtype=bool),
            scores=scores,
            grid=grid,
            timings=timings,
            cell_map=np.asarray(loc.cell_map, dtype=np.float32),
            settings=self.settings,
            ncuts_heatmap=None if loc.ncuts_heatmap is None else np.asarray(loc.ncuts_heatmap, dtype=np.float32),
            ncuts_cells=None if loc.ncuts_cells is None else np.asarray(loc.ncuts_cells, dtype=bool),
            ncuts_cell_map=None if loc.ncuts_cell_map is None else np.asarray(loc.ncuts_cell_map, dtype=np.float32),
            percentile=pct,
            verdict=verdict,
            verdict_reason=why,
            reference={} if self.reference is None else self.reference.info(),
        )

    def detect(self, rgb: np.ndarray) -> DetectionResult:
        """``uint8 [H,W,3]`` (0..255) -> :class:`DetectionResult` at the image's size.

        ValueError for a wrong dtype/shape or an image smaller than one patch.
        """
        t0 = time.perf_counter()
        grid, emb = self.embed(rgb)
        t_embed = time.perf_counter() - t0
        result = self.analyse(emb, grid)
        result.timings = {"embed": t_embed, **result.timings, "total": time.perf_counter() - t0}
        return result
