"""Calibration: a detector's scores on authentic photos, made into the reference verdicts rank against.

:func:`calibrate` scores photos known to be authentic (:func:`authentic_scores`: patch embeddings
and their affinity only, no maps; the grid the detector will use for detection, since a reference
measured on another grid does not judge its detections) and builds the
:class:`~exiflang.eval.forensics.calibration.Reference`; :func:`pick_photos` chooses them from
folders (mask-named files left out, at most ``limit`` drawn with a seed).  ``exiflang calibrate``
(:mod:`exiflang.commands.calibrate`) runs it through :meth:`exiflang.api.Model.calibrate`.
"""

from __future__ import annotations

import random
from pathlib import Path

from exiflang.eval.forensics.calibration import BAND, MIN_PHOTOS, Reference, reference_from_scores
from exiflang.eval.forensics.detector import Detector


def authentic_scores(detector: Detector, paths: list[Path]) -> tuple[list[dict[str, float]], list[str]]:
    """(score dicts of the photos answered, one-line errors of those that failed)."""
    from tqdm import tqdm

    from exiflang.eval.forensics.affinity import patch_affinity
    from exiflang.eval.forensics.scores import detection_scores
    from exiflang.eval.images import ImageError, load_rgb

    scores, errors = [], []
    for path in tqdm(paths, desc="calibrate", unit="img", disable=None):
        try:
            _, emb = detector.embed(load_rgb(path))
        except (ImageError, ValueError) as exc:  # unreadable, or smaller than one patch
            errors.append(str(exc) if isinstance(exc, ImageError) else f"{path}: {exc}")
            continue
        scores.append(detection_scores(patch_affinity(emb), tau=detector.tau))
    return scores, errors


def calibrate(
    detector: Detector, paths: list[Path], source: str = "", band: tuple[float, float] = BAND
) -> tuple[Reference, list[str]]:
    """The reference of ``paths`` (authentic photos) under ``detector``'s settings, and the errors.

    ValueError when fewer than :data:`MIN_PHOTOS` photos could be scored -- said before any is
    scored when fewer are given (scoring one costs seconds: nothing is spent on a known refusal).
    """
    if len(paths) < MIN_PHOTOS:
        raise ValueError(f"only {len(paths)} photos given; a reference needs at least {MIN_PHOTOS}")
    scores, errors = authentic_scores(detector, paths)
    if len(scores) < MIN_PHOTOS:
        raise ValueError(
            f"only {len(scores)} of {len(paths)} photos could be scored; a reference needs at least {MIN_PHOTOS}"
        )
    return reference_from_scores(scores, detector.settings, source, band=band), errors


def pick_photos(items: list[str], limit: int, seed: int) -> list[Path]:
    """Images of ``items`` (mask-named files inside folders left out), at most ``limit`` drawn with ``seed``."""
    from exiflang.eval.benchmark.datasets import is_mask_file
    from exiflang.eval.images import expand_inputs

    paths = []
    for item in items:
        root = Path(item).expanduser()
        paths += [p for p in expand_inputs([item]) if not (root.is_dir() and is_mask_file(p, root))]
    paths = sorted(set(paths))
    if len(paths) > limit:
        paths = sorted(random.Random(seed).sample(paths, limit))
    return paths
