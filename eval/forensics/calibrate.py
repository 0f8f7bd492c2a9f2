"""The ``exiflang calibrate`` command: a model's detection scores on authentic photos, stored as its reference.

    exiflang calibrate --model MODEL_DIR --photos AUTHENTIC_IMAGE_OR_FOLDER... [--limit 200]
        [--grid code|paper] [--patches-per-side N] [--patch-size P] [--batch-size B]
        [--device auto] [--band 90,99] [--seed 0]

Every photo named must be authentic (not edited or spliced): its detection scores become the
distribution new detections are ranked against (``MODEL_DIR/calibration.json``;
:mod:`exiflang.eval.forensics.calibration`).  Only the scores are computed (patch embeddings and
their affinity; no maps), with the grid ``detect`` will use: a reference measured on another grid
does not judge its detections.  Files named like ground-truth masks are left out; ``--limit``
draws that many photos (seeded) from a larger folder.

Exit codes: 0 written; 2 bad usage, an unusable model folder, or fewer than
:data:`~exiflang.eval.forensics.calibration.MIN_PHOTOS` photos answered (one line; :mod:`exiflang.errors`).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

from exiflang.errors import CommandError, run_main
from exiflang.eval.forensics.calibration import BAND, MIN_PHOTOS, Reference, reference_from_scores, save_reference
from exiflang.eval.forensics.detector import CODE_PER_SIDE, PAPER_PER_SIDE, PATCH, Detector

PROG = "exiflang calibrate"


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

    ValueError when fewer than :data:`MIN_PHOTOS` photos could be scored.
    """
    scores, errors = authentic_scores(detector, paths)
    if len(scores) < MIN_PHOTOS:
        raise ValueError(
            f"only {len(scores)} of {len(paths)} photos could be scored; a reference needs at least {MIN_PHOTOS}"
        )
    return reference_from_scores(scores, detector.settings, source, band=band), errors


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Reference detection scores of authentic photos.")
    p.add_argument("--model", required=True, help="model folder; calibration.json is written into it")
    p.add_argument(
        "--photos",
        nargs="+",
        required=True,
        metavar="IMAGE_OR_FOLDER",
        help="authentic photos, or folders searched recursively",
    )
    p.add_argument("--limit", type=int, default=200, help="at most this many photos, drawn with --seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--grid",
        choices=("code", "paper"),
        default=None,
        help=f"code: {CODE_PER_SIDE} patches along the longest side (default); paper: {PAPER_PER_SIDE}",
    )
    p.add_argument("--patches-per-side", type=int, default=None)
    p.add_argument("--patch-size", type=int, default=PATCH)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--band",
        default=f"{BAND[0]:g},{BAND[1]:g}",
        help="percentiles LOW,HIGH: below LOW authentic, from HIGH spliced, between inconclusive",
    )
    return p


def _band(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--band {text}: expected two percentiles LOW,HIGH, e.g. 90,99") from None
    if not 0 <= lo <= hi <= 100:
        raise ValueError(f"--band {text}: expected 0 <= LOW <= HIGH <= 100")
    return lo, hi


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


def main(argv: list[str] | None = None) -> int:
    """Entry point (exit codes in the module docstring), under :func:`exiflang.errors.run_main`."""
    return run_main(PROG, _main, argv)


def _main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.limit < 1:
        raise ValueError(f"--limit {args.limit}: at least 1")
    band = _band(args.band)
    per_side = args.patches_per_side or (PAPER_PER_SIDE if args.grid == "paper" else CODE_PER_SIDE)
    paths = pick_photos(args.photos, args.limit, args.seed)
    if not paths:
        raise CommandError(None, f"no images found in {' '.join(args.photos)}")
    try:
        detector = Detector(
            args.model,
            patch=args.patch_size,
            per_side=per_side,
            device=args.device,
            batch_size=args.batch_size,
            ncuts=False,
            use_reference=False,
        )
    except RuntimeError as exc:
        raise CommandError(args.model, f"cannot load the model ({exc})") from exc
    ref, errors = calibrate(detector, paths, source=", ".join(args.photos), band=band)
    for err in errors:
        print(f"{PROG}: skipped {err}", file=sys.stderr)
    out = save_reference(args.model, ref)
    q = np.percentile(ref.scores[ref.score], [50, band[0], band[1]])
    print(f"{ref.photos} authentic photos scored ({len(errors)} skipped) -> {out}")
    print(
        f"{ref.score}: median {q[0]:.4g}, {band[0]:g}th percentile {q[1]:.4g} (above: inconclusive), "
        f"{band[1]:g}th {q[2]:.4g} (above: spliced)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
