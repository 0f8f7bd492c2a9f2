"""`exiflang lookup`: the nearest training photos of each query photo and the EXIF they vote for.

    exiflang lookup --model MODEL_DIR --index INDEX [-k 10] [--weighted] [--json] [--out FILE]
                    [--tags Make,Model] [--device auto] [--batch-size 256] IMAGE_OR_FOLDER...

Each photo is looked up by the Python API (``exiflang.load(MODEL).lookup(photo, index)``;
:mod:`exiflang.eval.index.lookup`): decoded from its pixels only (its own EXIF, if it has any, is
never read), embedded exactly as the index's embeddings were (the patch size, grid and mode
recorded with them; ``--per-side``, ``--patch-size``, ``--single-patch`` override them for
experiments), and searched for its ``k`` nearest training photos.  For every tag of the model's
vocabulary the neighbours vote: the predicted value, its vote share, and how many neighbours had
the tag.  A photo farther from its nearest index photos than the index's own photos are from
theirs is ``known: false``: the terminal says "unknown camera" instead of the votes.  The first
line says what the model was trained on (its model card).

Output: a table per photo on the terminal; ``--json`` prints JSON Lines instead (one object per
photo: ``file``, ``height``, ``width``, ``known``, ``familiarity`` {known, distance, threshold,
rank}, ``model_card`` (one line), ``neighbours`` [{rank, key, shard, similarity, exif}],
``predictions`` {tag: {value, share, votes, cast, n_with_tag, similarity}} (kept when not known:
read them as guesses); a photo that failed is ``{"file", "error"}``); ``--out FILE`` writes the
JSON Lines to a file as well.

Exit status: 0 every photo answered; 1 some photos failed (each named on stderr) and the rest
were answered; 2 bad usage, a model folder or index that is not one or does not match, an
unusable ``--out``, or no photo could be answered (one line ``exiflang lookup: error: FILE:
reason``; :mod:`exiflang.errors`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from exiflang.command import Command
from exiflang.commands.options import model_line
from exiflang.errors import CommandError, check_out_file

PROG = "exiflang lookup"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Declare lookup's arguments."""
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="photos or folders (recursive)")
    ap.add_argument("--model", required=True, help="model folder (the one the index was embedded with)")
    ap.add_argument("--index", required=True, help="index folder (`exiflang index`)")
    ap.add_argument("-k", type=int, default=10, help="neighbours per photo (default 10)")
    ap.add_argument("--weighted", action="store_true", help="similarity-weighted votes")
    ap.add_argument("--json", action="store_true", help="JSON Lines on stdout instead of tables")
    ap.add_argument("--out", help="also write the JSON Lines to this file")
    ap.add_argument("--tags", help="comma-separated tags to predict (default: the model's vocabulary)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    ap.add_argument("--batch-size", type=int, default=256, help="patches per forward pass")
    ap.add_argument("--per-side", type=int, help="override the grid the index was embedded with")
    ap.add_argument("--patch-size", type=int, help="override the patch size the index was embedded with")
    ap.add_argument("--single-patch", action="store_true", help="override: embed the centre patch only")


def answer(file: Path, res: Any) -> dict[str, Any]:
    """One photo's JSON Lines object from its :class:`exiflang.api.Lookup` (the neighbours' index
    ``row`` left out: the file names a neighbour by its ``key``)."""
    height, width = res.image_size
    return {
        "file": str(file),
        "height": height,
        "width": width,
        "known": res.known,
        "familiarity": res.familiarity,
        "model_card": res.model_card,
        "neighbours": [{k: v for k, v in n.items() if k != "row"} for n in res.neighbours],
        "predictions": res.predictions,
    }


def run(args: argparse.Namespace) -> int:
    """Look up every photo; see the module docstring for the exit status."""
    if args.out:
        check_out_file(args.out)  # before any work: the answers must have somewhere to go
    # The engine (torch, faiss) is imported here, not at the top: --help stays light.
    from exiflang import api
    from exiflang.eval.images import expand_inputs
    from exiflang.eval.index.lookup import format_lookup

    files = expand_inputs(args.images)
    if not files:
        raise CommandError(None, "no images found in " + ", ".join(args.images))
    tags = [t.strip() for t in args.tags.split(",") if t.strip()] if args.tags else None
    if args.k < 1:
        raise ValueError(f"-k {args.k}: must be at least 1")
    grid = {"patch": args.patch_size, "per_side": args.per_side, "mode": "single" if args.single_patch else None}
    try:
        model = api.load(args.model, device=args.device, batch_size=args.batch_size)
        index = api.load_index(args.index, grid=grid)
        model.searcher(index)  # a model and index that do not belong together: one error, here
    except RuntimeError as exc:  # torch or faiss: a device it cannot use, weights that do not fit
        raise CommandError(None, str(exc)) from exc
    if not args.json:
        print(model_line(model.card))
    results = []
    for path in files:
        try:
            results.append(answer(path, model.lookup(path, index, args.k, weighted=args.weighted, tags=tags)))
        except api.ImageInputError as exc:  # unreadable, refused, or smaller than one patch
            results.append({"file": str(path), "error": str(exc)})
    lines = [json.dumps(r, ensure_ascii=False) for r in results]
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(line + "\n" for line in lines))
    for r in results:
        if "error" in r:
            print(f"{PROG}: {r['error']}", file=sys.stderr)
    answered = [r for r in results if "error" not in r]
    if args.json:
        sys.stdout.write("".join(line + "\n" for line in lines))
    else:
        print("\n\n".join(format_lookup(r) for r in answered))
    if not answered:
        return 2
    return 1 if len(answered) < len(results) else 0


COMMAND = Command(prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run, log_level=logging.WARNING)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
