"""The splice detector's settings: one typed object, built once (from a CLI or the API) and passed down.

Light on purpose (no torch, no numpy): the commands' ``--help`` and argument defaults read the
constants here without importing the model code.  docs/design.md §6 has where the numbers come from.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

PAPER_PER_SIDE = 25  # what the paper says; the authors' code ran with 30 (docs/design.md §6)
CODE_PER_SIDE = 30
PATCH = 124


@dataclass(frozen=True)
class DetectorConfig:
    """How :class:`exiflang.eval.forensics.detector.Detector` runs on a photo.

    ``patch``: patch side in pixels (124).  ``per_side``: patches along the photo's longest side
    (30 = the authors' code, 25 = the paper).  ``device``: ``auto`` (CUDA when present), ``cpu``,
    ``cuda:N``.  ``batch_size``: patches per forward pass.  ``ncuts``: also compute the
    normalized-cuts mask.  ``tau``: temperature of ``score_exp`` (None = ``1 / logit_scale`` of the
    model).  ``iterations`` / ``percentile``: the mean-shift's rounds and bandwidth percentile.
    ``legacy_negative``: reproduce the authors' evaluator bug (patches become negatives).
    """

    patch: int = PATCH
    per_side: int = CODE_PER_SIDE
    device: str = "auto"
    batch_size: int = 256
    ncuts: bool = True
    tau: float | None = None
    iterations: int = 5
    percentile: float = 10.0
    legacy_negative: bool = False

    def __post_init__(self) -> None:
        if self.patch <= 0 or self.per_side <= 0 or self.batch_size <= 0:
            raise ValueError(
                f"patch {self.patch}, per_side {self.per_side}, batch_size {self.batch_size}: must be positive"
            )
        if self.tau is not None and not self.tau > 0:
            raise ValueError(f"tau {self.tau}: must be positive")

    def replace(self, **changes: Any) -> DetectorConfig:
        """A copy with ``changes`` (field name -> value); TypeError names an unknown field."""
        return dataclasses.replace(self, **changes)


def add_detector_arguments(p: argparse.ArgumentParser, *, ncuts_default: bool = True) -> None:
    """Declare the detector's options (``--grid``, ``--patches-per-side``, ``--patch-size``,
    ``--batch-size``, ``--device``, and ``--no-ncuts`` when normalized cuts is on by default)."""
    p.add_argument(
        "--grid",
        choices=("code", "paper"),
        default=None,
        help=f"code: {CODE_PER_SIDE} patches along the longest side (default); paper: {PAPER_PER_SIDE}",
    )
    p.add_argument("--patches-per-side", type=int, default=None, help="patches along the longest side")
    p.add_argument("--patch-size", type=int, default=PATCH, help=f"patch size in pixels (default {PATCH})")
    p.add_argument("--batch-size", type=int, default=256, help="patches per forward pass")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    if ncuts_default:
        p.add_argument("--no-ncuts", action="store_true", help="skip the normalized-cuts mask")


def detector_config(args: argparse.Namespace, **changes: Any) -> DetectorConfig:
    """The :class:`DetectorConfig` of parsed :func:`add_detector_arguments` options (+ ``changes``).

    One-line ValueError for ``--grid`` and ``--patches-per-side`` that disagree, or a value the
    config refuses (e.g. a patch size of 0).
    """
    grid_n = PAPER_PER_SIDE if args.grid == "paper" else CODE_PER_SIDE
    if args.patches_per_side is not None and args.grid is not None and args.patches_per_side != grid_n:
        raise ValueError(
            f"--grid {args.grid} means {grid_n} patches per side, --patches-per-side says {args.patches_per_side}"
        )
    per_side = args.patches_per_side if args.patches_per_side is not None else grid_n
    values: dict[str, Any] = {
        "patch": args.patch_size,
        "per_side": per_side,
        "device": args.device,
        "batch_size": args.batch_size,
        "ncuts": not getattr(args, "no_ncuts", True),
    }
    for name in ("tau", "legacy_negative"):
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    values.update(changes)
    return DetectorConfig(**values)
