"""`exiflang eval-tags`: per-tag accuracy of predicting EXIF from pixels, averaged over tags (paper Table 5, "EXIF").

    exiflang eval-tags --model MODEL_DIR --train SHARDS --test SHARDS --out DIR [-k 10]
                       [--train-emb EMB --test-emb EMB --index INDEX] [--per-side 4]
                       [--single-patch] [--patch-size 124] [--text-format F] [--probe-c 1.0|cv]
                       [--weighted] [--min-frac 0.01] [--min-count 2] [--max-bins 8]

Tag values are quantised into classes fitted on the train set (:mod:`exiflang.eval.tags.classes`: rare
values dropped, numeric tags binned); a test photo counts for a tag when its true value falls in
a class.  Four predictors, all from the image embedding alone:

(a) **kNN** — the ``k`` nearest train photos through the FAISS index vote with their classes
    (:func:`exiflang.eval.index.votes.vote_classes`; neighbours whose value is rare or absent do not vote; when
    none votes, the majority class is predicted);
(b) **zero-shot** — one candidate EXIF sentence per class ranked through the text encoder
    (:mod:`exiflang.eval.tags.zero_shot`); ``n/a`` for a CropCLR model (no text tower);
(c) **linear probe** — logistic regression on the frozen train embeddings (:mod:`exiflang.eval.tags.probe`);
(d) **majority** — the most frequent train class.

The train and test shards are embedded into ``OUT/emb_train`` and ``OUT/emb_test`` (resumable:
a rerun reuses finished shards) and the index is built into ``OUT/index`` (reused when it holds
exactly the train embeddings); ``--train-emb``/``--test-emb``/``--index`` take ones already built
(their grid is used, whatever ``--per-side``/``--patch-size`` say; train and test must agree).
Results: ``OUT/tag_eval.json`` and ``OUT/tag_eval.md`` (:mod:`exiflang.eval.tags.report`); the Markdown
is printed.  Exit status: 0 done, 2 bad input or usage (one line on stderr, ``exiflang eval-tags:
error: FILE: reason``; :mod:`exiflang.errors`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from exiflang.command import Command
from exiflang.errors import CommandError, check_out_dir
from exiflang.eval.embed.settings import add_grid_arguments
from exiflang.eval.tags.settings import TagEvalConfig

PROG = "exiflang eval-tags"


def _probe_c(text: str) -> float | None:
    if text.lower() == "cv":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: C must be positive")
    return value


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Declare eval-tags' arguments."""
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--train", help="train shards (the index and the classes are built from them)")
    ap.add_argument("--test", help="held-out shards")
    ap.add_argument("--out", required=True, help="output folder (embeddings, index, tag_eval.json/.md)")
    ap.add_argument("--train-emb", help="train embeddings already made (`exiflang embed`)")
    ap.add_argument("--test-emb", help="test embeddings already made")
    ap.add_argument("--index", help="index of the train embeddings already built (`exiflang index`)")
    ap.add_argument("-k", type=int, default=10, help="neighbours per vote (default 10)")
    ap.add_argument("--weighted", action="store_true", help="similarity-weighted kNN votes")
    add_grid_arguments(ap)
    ap.add_argument(
        "--text-format",
        choices=("paper", "code", "values", "shuffled"),
        help="zero-shot text format (default: the training run's config.yaml, else paper)",
    )
    ap.add_argument("--probe-c", type=_probe_c, default=1.0, help="probe's C, or 'cv' (default 1.0)")
    ap.add_argument("--min-frac", type=float, default=0.01, help="a class needs this share of train images")
    ap.add_argument("--min-count", type=int, default=2, help="... and at least this many (default 2)")
    ap.add_argument("--max-bins", type=int, default=8, help="bins per numeric tag (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Evaluate, then print the Markdown table and the files written."""
    check_out_dir(args.out)  # before anything is embedded: a bad --out costs nothing
    config = TagEvalConfig.from_args(args)
    from exiflang.eval.tags.evaluate import eval_tags  # numpy, pandas, faiss: --help stays light
    from exiflang.eval.tags.report import markdown

    try:
        report = eval_tags(
            args.model,
            args.train,
            args.test,
            args.out,
            config,
            train_emb=args.train_emb,
            test_emb=args.test_emb,
            index=args.index,
        )
    except RuntimeError as exc:  # torch or faiss: a device it cannot use, weights that do not fit
        raise CommandError(None, str(exc)) from exc
    print(markdown(report), end="")
    print(f"written: {Path(args.out) / 'tag_eval.json'}, {Path(args.out) / 'tag_eval.md'}")
    return 0


COMMAND = Command(prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run, log_level=logging.WARNING)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
