"""`exiflang check-exif`: do each photo's pixels agree with the EXIF it claims?

    exiflang check-exif PHOTO_OR_FOLDER... --model MODEL_DIR [--reference INDEX_EMB_OR_SHARDS]
                        [--exif CLAIM.json] [--out DIR] [--no-per-tag] [--device cpu] [--threads N]

Each photo's own EXIF (or, with ``--exif``, the JSON object of ``{tag: value}`` in that file, for
every photo) is rendered as the model's training text and compared with the photo's pixels
(:mod:`exiflang.eval.consistency.score`): a calibrated score 0..1, the claim's percentile among the
reference's EXIF texts, a verdict (consistent / inconsistent / inconclusive / no-exif) and, per
tag, which claimed values the pixels support least.  ``--reference``: an ``exiflang index`` folder,
an ``exiflang embed`` folder or a shards folder (default: the model's training shards, when its
model card or run config names a folder that still exists).

Output: one line per photo on stdout (``FILE: VERDICT score S, P-th percentile; least supported:
TAG=VALUE (prefers ALT)``); with ``--out DIR``, ``DIR/check_exif.jsonl`` (one JSON object per
photo: ``file`` plus :meth:`exiflang.api.ExifCheck.to_json`, or ``file`` and ``error``).

Exit status: 0 every photo answered; 1 some failed (each named on stderr); 2 bad usage, an unusable
model, reference or ``--exif`` file, an unusable ``--out``, or no photo answered (one line
``exiflang check-exif: error: FILE: reason``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from exiflang.command import Command
from exiflang.errors import CommandError, check_out_dir

PROG = "exiflang check-exif"
RESULTS = "check_exif.jsonl"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Declare check-exif's arguments."""
    ap.add_argument("photos", nargs="+", metavar="PHOTO", help="photos or folders (recursive)")
    ap.add_argument("--model", required=True, help="model folder (with a text tower)")
    ap.add_argument("--reference", help="index, embeddings or shards folder (default: the training shards)")
    ap.add_argument("--exif", help="a JSON file {tag: value}: the claim judged for every photo (default: its own)")
    ap.add_argument("--out", help="write DIR/check_exif.jsonl")
    ap.add_argument("--no-per-tag", action="store_true", help="skip the per-tag swaps (faster)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    ap.add_argument("--threads", type=int, help="CPU threads for torch")


def read_claim(path: str) -> dict[str, str]:
    """``--exif`` FILE -> ``{tag: value}``; one-line ValueError naming it when it is not that."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"{path}: expected a non-empty JSON object of tag -> value")
    return {str(k): str(v) for k, v in doc.items()}


def summary_line(file: str, rec: dict[str, Any]) -> str:
    """One readable line for a photo's result."""
    if rec["verdict"] == "no-exif":
        return f"{file}: no-exif (no tag of the model's vocabulary to check; {rec.get('exif_source', '')})"
    line = f"{file}: {rec['verdict']}  score {rec['score']:.2f}, percentile {rec['percentile']:.0f}"
    if rec.get("reason"):
        line += f" ({rec['reason']})"
    weak = next((t for t in rec.get("per_tag", []) if t.get("support") is not None and t["support"] < 0), None)
    if weak:
        line += f"; least supported: {weak['tag']}={weak['claimed']} (prefers {weak['best_alternative']})"
    return line


def run(args: argparse.Namespace) -> int:
    """Check every photo; see the module docstring for the exit status."""
    from exiflang.eval.images import expand_inputs

    out = check_out_dir(args.out) if args.out else None  # before any slow work
    claim = read_claim(args.exif) if args.exif else None
    files = expand_inputs(args.photos)
    if not files:
        raise CommandError(None, "no photos found in " + ", ".join(args.photos))
    import exiflang.api as api

    model = api.load(args.model, device=args.device, threads=args.threads)
    model.checker(args.reference)  # a bad reference fails here, once
    records = []
    for path in files:
        try:
            chk = model.check_exif(path, claim, reference=args.reference, per_tag=not args.no_per_tag)
        except api.ImageInputError as exc:
            records.append({"file": str(path), "error": str(exc)})
            print(f"{PROG}: {exc}", file=sys.stderr)
            continue
        rec = {"file": str(path), **chk.to_json()}
        records.append(rec)
        print(summary_line(str(path), rec), flush=True)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / RESULTS).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    answered = sum("error" not in r for r in records)
    if not answered:
        return 2
    return 1 if answered < len(records) else 0


COMMAND = Command(prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run, log_level=logging.WARNING)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
