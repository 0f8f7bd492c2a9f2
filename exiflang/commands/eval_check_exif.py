"""check-exif measured like a detector: held-out photos with their own EXIF vs with another camera's.

    exiflang eval-check-exif --model MODEL_DIR --photos HELDOUT_DIR --reference REF --out FILE.json
                             [--limit N] [--seed 0]

For every held-out photo ``p`` (its camera = its EXIF Make + Model):

- a **true** pair: ``p`` with its own EXIF (label 1);
- an **other camera** pair: ``p`` with the whole EXIF of a held-out photo of another camera
  model, drawn at random (label 0);
- a **same make** pair: ``p`` with the EXIF of a held-out photo of *another model of the same
  make*, when the held-out set has one (label 0) — the hard case: shared firmware, names, lens
  ranges.

Each pair is scored by :class:`exiflang.eval.consistency.score.Checker` (the calibrated score, the
percentile, the raw similarity and ``z``); ROC-AUC and average precision (scikit-learn) of true vs
each kind of swap, and the verdicts' counts.  Photos whose claims are unusable (no vocabulary tag)
are left out and counted.  The JSON written holds the settings, the counts and the metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exiflang.command import Command
from exiflang.errors import CommandError, check_out_file

PROG = "exiflang eval-check-exif"
KINDS = ("other_camera", "same_make")
SCORES = ("score", "percentile", "similarity", "z")


def camera_of(exif: dict) -> tuple[str, str]:
    return str(exif.get("Make", "")).strip(), str(exif.get("Model", "")).strip()


def swap_pairs(cameras: Sequence[tuple[str, str]], seed: int = 0) -> dict[str, list[tuple[int, int]]]:
    """Per kind, ``(photo, donor)`` index pairs: the donor's EXIF is claimed for the photo.

    ``other_camera``: a donor of another (Make, Model); ``same_make``: a donor of the same Make
    and another Model (photos whose make has a single model in the set get none).
    """
    rng = np.random.default_rng(seed)
    by_cam: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, cam in enumerate(cameras):
        by_cam[cam].append(i)
    out: dict[str, list[tuple[int, int]]] = {k: [] for k in KINDS}
    for i, cam in enumerate(cameras):
        other = [j for c, js in by_cam.items() if c != cam for j in js]
        same = [j for c, js in by_cam.items() if c[0] == cam[0] and c != cam for j in js]
        if other:
            out["other_camera"].append((i, int(rng.choice(other))))
        if same:
            out["same_make"].append((i, int(rng.choice(same))))
    return out


def metrics(pos: np.ndarray, neg: np.ndarray) -> dict[str, float]:
    """ROC-AUC and average precision of positives (label 1) vs negatives; higher score = positive."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    s = np.concatenate([pos, neg])
    return {
        "auc": round(float(roc_auc_score(y, s)), 4),
        "ap": round(float(average_precision_score(y, s)), 4),
        "n_pos": int(len(pos)),
        "n_neg": int(len(neg)),
    }


def evaluate(model: Any, photos: Sequence[Path], reference: Any, *, seed: int = 0) -> dict[str, Any]:
    """Score true vs swapped EXIF of ``photos`` (their own EXIF read from the files) -> the report dict.

    ``model``: an :class:`exiflang.api.Model`; ``reference``: what :meth:`Model.checker` takes.
    """
    from exiflang.api import ImageInputError, read_image, read_own_exif

    checker = model.checker(reference)
    vecs, exifs, names = [], [], []
    skipped: defaultdict[str, int] = defaultdict(int)
    for p in photos:
        try:
            exif, _ = read_own_exif(p)
            if not checker.used_tags(exif):
                skipped["no_exif"] += 1
                continue
            vecs.append(model._embed_rgb(read_image(p), checker.reference.grid, str(p)))
        except ImageInputError:
            skipped["unreadable"] += 1
            continue
        exifs.append(exif)
        names.append(str(p))
    if len(exifs) < 2:
        raise ValueError(f"{len(exifs)} usable photos with EXIF: need at least 2 of two cameras")
    vec = np.stack(vecs)
    cams = [camera_of(e) for e in exifs]
    true = checker.score_many(vec, exifs)
    pairs = swap_pairs(cams, seed)
    report: dict[str, Any] = {
        "photos": len(exifs),
        "skipped": dict(skipped),
        "cameras": len(set(cams)),
        "reference": checker.info(),
        "seed": seed,
        "metrics": {},
        "verdicts": {},
    }
    report["verdicts"]["true"] = _counts(true)
    for kind, kp in pairs.items():
        if not kp:
            continue
        swapped = checker.score_many(vec[[i for i, _ in kp]], [exifs[j] for _, j in kp])
        report["verdicts"][kind] = _counts(swapped)
        report["metrics"][kind] = {
            name: metrics(np.array([getattr(c, name) for c in true]), np.array([getattr(c, name) for c in swapped]))
            for name in SCORES
        }
    return report


def _counts(checks: Sequence[Any]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for c in checks:
        out[c.verdict] += 1
    return dict(out)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Declare eval-check-exif's arguments."""
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--photos", required=True, nargs="+", help="held-out photos or folders (with their EXIF)")
    ap.add_argument("--reference", help="index, embeddings or shards folder (default: the training shards)")
    ap.add_argument("--out", required=True, help="the JSON report")
    ap.add_argument("--limit", type=int, help="at most this many photos (the first, sorted)")
    ap.add_argument("--seed", type=int, default=0, help="which donors are drawn (default 0)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--threads", type=int, help="CPU threads for torch")


def command_line(args: argparse.Namespace) -> str:
    """The command that repeats this run (every option given or defaulted), as the report records it."""
    words = [PROG, "--model", str(args.model), "--photos", *map(str, args.photos)]
    for flag in ("reference", "out", "limit", "seed", "device", "threads"):
        value = getattr(args, flag)
        if value is not None:
            words += [f"--{flag}", str(value)]
    return " ".join(words)


def run(args: argparse.Namespace) -> int:
    """Score the held-out photos, write the JSON report, print one line per kind of swap."""
    from exiflang.eval.images import expand_inputs

    out = check_out_file(args.out)
    files = expand_inputs(args.photos)[: args.limit] if args.limit else expand_inputs(args.photos)
    if not files:
        raise CommandError(None, "no photos found in " + ", ".join(args.photos))
    import exiflang.api as api

    t0 = time.time()
    model = api.load(args.model, device=args.device, threads=args.threads)
    report = evaluate(model, files, args.reference, seed=args.seed)
    report.update(
        model=str(args.model),
        command=command_line(args),
        seconds=round(time.time() - t0, 1),
        date=time.strftime("%Y-%m-%d", time.gmtime()),
        machine=f"{platform.machine()} Python {platform.python_version()}",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for kind, m in report["metrics"].items():
        print(
            f"{kind:<13} score AUC {m['score']['auc']:.3f} AP {m['score']['ap']:.3f}   "
            f"percentile AUC {m['percentile']['auc']:.3f}   "
            f"(n {m['score']['n_pos']} true, {m['score']['n_neg']} swapped)"
        )
    return 0


COMMAND = Command(prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run, log_level=logging.WARNING)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
