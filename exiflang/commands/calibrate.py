"""The ``exiflang calibrate`` command: a model's detection scores on authentic photos, stored as its reference.

    exiflang calibrate --model MODEL_DIR --photos AUTHENTIC_IMAGE_OR_FOLDER... [--limit 200]
        [--grid code|paper] [--patches-per-side N] [--patch-size P] [--batch-size B]
        [--device auto] [--band 90,99] [--seed 0]

Every photo named must be authentic (not edited or spliced): its detection scores become the
distribution new detections are ranked against (``MODEL_DIR/calibration.json``;
:mod:`exiflang.eval.forensics.calibration`).  The photos are scored by the Python API
(``exiflang.load(MODEL, detector=...).calibrate``) exactly as ``detect`` scores a photo: at full
resolution, on the grid ``detect`` will use (a reference measured on another grid does not judge
its detections), scores only (no maps, so there is no ``--max-side``: nothing is drawn).  Files
named like ground-truth masks are left out; ``--limit`` draws that many photos (seeded) from a
larger folder.

Exit codes: 0 written; 2 bad usage, an unusable model folder, or fewer than 10 photos answered
(one line; :mod:`exiflang.errors`), and then nothing is replaced.
"""

from __future__ import annotations

import argparse
import logging
import sys

from exiflang.command import Command
from exiflang.commands.options import check_device
from exiflang.errors import CommandError
from exiflang.eval.forensics.calibration import BAND
from exiflang.eval.forensics.settings import add_detector_arguments, detector_config

PROG = "exiflang calibrate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare calibrate's arguments (the detector's grid and device from :func:`add_detector_arguments`)."""
    p.add_argument("--model", required=True, help="model folder; calibration.json is written into it")
    p.add_argument(
        "--photos",
        nargs="+",
        required=True,
        metavar="IMAGE_OR_FOLDER",
        help="authentic photos, or folders searched recursively",
    )
    p.add_argument("--limit", type=int, default=200, help="at most this many photos, drawn with --seed")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit draw")
    add_detector_arguments(p, ncuts_default=False)  # scores only: normalized cuts never runs
    p.add_argument(
        "--band",
        default=f"{BAND[0]:g},{BAND[1]:g}",
        help="percentiles LOW,HIGH: below LOW authentic, from HIGH spliced, between inconclusive",
    )


def parse_band(text: str) -> tuple[float, float]:
    """``"LOW,HIGH"`` -> (LOW, HIGH) percentiles; one-line ValueError naming ``--band`` otherwise."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--band {text}: expected two percentiles LOW,HIGH, e.g. 90,99") from None
    if not 0 <= lo <= hi <= 100:
        raise ValueError(f"--band {text}: expected 0 <= LOW <= HIGH <= 100")
    return lo, hi


def run(args: argparse.Namespace) -> int:
    """Score the photos and write the reference; see the module docstring for the exit codes."""
    if args.limit < 1:
        raise ValueError(f"--limit {args.limit}: at least 1")
    band = parse_band(args.band)
    config = detector_config(args)
    check_device(args.device)
    # The engine (torch, the detector) is imported here, not at the top: --help stays light.
    from exiflang import api
    from exiflang.eval.forensics.calibrate import pick_photos

    paths = pick_photos(args.photos, args.limit, args.seed)
    if not paths:
        raise CommandError(None, f"no images found in {' '.join(args.photos)}")
    try:
        model = api.load(args.model, device=args.device, batch_size=args.batch_size, detector=config)
    except RuntimeError as exc:  # torch: weights that do not fit the folder's config
        raise CommandError(args.model, f"cannot load the model ({exc})") from exc
    cal = model.calibrate(paths, source=", ".join(args.photos), band=band)
    for err in cal.skipped:
        print(f"{PROG}: skipped {err}", file=sys.stderr)
    ref = cal.reference
    median, lo, hi = cal.edges()
    print(f"{ref.photos} authentic photos scored ({len(cal.skipped)} skipped) -> {cal.path}")
    print(
        f"{ref.score}: median {median:.4g}, {band[0]:g}th percentile {lo:.4g} (above: inconclusive), "
        f"{band[1]:g}th {hi:.4g} (above: spliced)"
    )
    return 0


COMMAND = Command(prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run, log_level=logging.WARNING)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
