"""`exiflang embed`: embed every sample of a shards folder (or a plain photo folder) with a trained model, resumably.

    exiflang embed --model MODEL_DIR (--data SHARDS | --images FOLDER [--per-part 500]) --out EMB
                   [--per-side 4] [--single-patch] [--patch-size 124] [--text] [--text-format F]
                   [--device auto] [--batch-size 256] [--workers 2] [--limit N] [--no-progress]
    torchrun --nproc_per_node N -m exiflang embed ...      (the same output, N ranks; no --limit)

``--images``: the photos under FOLDER, without building shards (:mod:`exiflang.eval.embed.folder`);
rows are keyed by the path below FOLDER.  Under torchrun each rank embeds its share of the parts
and rank 0 finishes ``meta.json`` (:mod:`exiflang.eval.embed.distributed`); the parts are the bytes one process
writes, because batches never span two parts.

Image side: per photo, the mean of the L2-normalised embeddings of a ``per_side x per_side``
grid of full-resolution patches spread evenly over the photo, re-normalised (``--single-patch``:
the centre patch alone).  Text side (``--text``): the photo's EXIF rendered as the model was
trained (``data.text_format`` / ``clean_values`` / ``max_text_len`` from the run's
``config.yaml`` beside the model folder when there is one; ``--text-format`` overrides) through
the text tower.  Output: :mod:`exiflang.eval.embed.store`; one shard: :mod:`exiflang.eval.embed.shard`.

Resume: parts (shards) whose ``done.json`` exists are skipped, the rest redone from scratch,
whatever the number of ranks, and rows come back in sorted-shard, tar order either way.
Rerunning into an ``EMB`` made with another model (weights, dimension or vocabulary), grid, text
setting, data folder (photo listing, ``--per-part``) or ``--limit`` is a one-line error.  The data
folder's ``tags.json`` may differ from the model's (a test set keeps its own vocabulary); both are
recorded in ``meta.json``.

Exit status: 0 done; 2 bad input or usage, an unusable model or output folder (one line on
stderr, ``exiflang embed: error: FILE: reason``; :mod:`exiflang.errors`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from exiflang.command import Command
from exiflang.errors import check_out_dir
from exiflang.eval.embed.settings import PER_PART, EmbedConfig, add_grid_arguments, grid_settings

PROG = "exiflang embed"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Declare embed's arguments."""
    ap.add_argument("--model", required=True, help="model folder (from `exiflang train`)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="shards folder (from `exiflang shards`)")
    src.add_argument("--images", help="a plain folder of photos (walked recursively), embedded without shards")
    ap.add_argument(
        "--per-part",
        type=int,
        default=PER_PART,
        help=f"--images: photos per part (default {PER_PART}, as `exiflang shards --rows-per-shard`)",
    )
    ap.add_argument("--out", required=True, help="embeddings folder to write (resumable)")
    add_grid_arguments(ap)
    ap.add_argument("--text", action="store_true", help="also embed the EXIF text with the text tower")
    ap.add_argument("--text-format", help="text format (default: the training run's, else paper)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--batch-size", type=int, default=256, help="patches per forward pass (default 256)")
    ap.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    ap.add_argument("--limit", type=int, help="embed at most N samples (sorted shards, tar order)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")


def embed_config(args: argparse.Namespace) -> EmbedConfig:
    """The :class:`EmbedConfig` of parsed :func:`add_arguments` options."""
    return EmbedConfig(
        **grid_settings(args),
        text=args.text,
        text_format=args.text_format,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        limit=args.limit,
        images=args.images is not None,
        per_part=args.per_part,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    """Embed, then print one summary line (counts and skips)."""
    check_out_dir(args.out)  # before the model loads: a bad --out costs nothing
    from exiflang.eval.embed.run import embed_shards  # the engine imports torch: --help stays light
    from exiflang.eval.embed.store import read_meta

    out = embed_shards(args.model, args.data or args.images, args.out, embed_config(args))
    counts = read_meta(out)["counts"]
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(counts["skipped"].items())) or "none"
    print(f"embedded {counts['rows']} photos from {counts['shards']} shards (skipped: {skipped}) -> {out}")
    return 0


COMMAND = Command(prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run, log_level=logging.INFO)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
