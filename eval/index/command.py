"""`exiflang index`: build a FAISS index over embeddings, tuned to a recall target.

    exiflang index --emb EMB --out INDEX [--kind auto|flat|ivf-flat|ivf-pq|hnsw] [--recall 0.9]
                   [--memory-mb M] [--text] [--k 10] [--seed 0] [--threads N] [--no-thumbnails]

Files: ``INDEX/index.faiss`` (the index, search parameters set), ``INDEX/index.json`` (kind,
parameters, size, measured recall@k and query speed, tuning curve, build seconds, the model
signature and sources), ``INDEX/rows.parquet`` (the embeddings table, row i = index id i),
``INDEX/thumbs.*`` (a <= 128-px JPEG of each row's photo, ~3 kB, for the page:
:mod:`exiflang.eval.index.thumbnails`; ``--no-thumbnails`` skips them), written by
:func:`exiflang.eval.index.run.build_index` and read by :class:`exiflang.eval.index.run.VectorIndex`.
Which index (:mod:`exiflang.eval.index.build`) and how recall is measured and tuned
(:mod:`exiflang.eval.index.tune`) are documented there.  The folder is written beside its final name and
renamed, so a reader never sees half an index.

"Target met" means the one-sided 95 % lower confidence bound of recall@k over the held-out
queries reaches it (``recall_met`` in ``index.json``; the mean is ``recall_at_k``).

Exit status: 0 built and the recall target met; 1 built but the target was not met (the best
parameters found are kept, ``recall_met: false``); 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import logging
import sys

from exiflang.command import Command
from exiflang.errors import check_out_dir

PROG = "exiflang index"
# exiflang.eval.index.build.KINDS, repeated because that module imports faiss (--help stays
# light); build_index refuses any other kind itself, and a test checks the two agree.
KINDS = ("auto", "flat", "ivf-flat", "ivf-pq", "hnsw")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Declare index's arguments."""
    ap.add_argument("--emb", required=True, help="embeddings folder (from `exiflang embed`)")
    ap.add_argument("--out", required=True, help="index folder to write (replaced if it is one)")
    ap.add_argument("--kind", default="auto", choices=KINDS, help="index type (default auto: by size and memory)")
    ap.add_argument("--recall", type=float, default=0.9, help="recall@k target for tuning (default 0.9)")
    ap.add_argument("--memory-mb", type=float, help="memory budget for the index in MB (auto picks PQ above it)")
    ap.add_argument("--text", action="store_true", help="index the text embeddings instead of the image ones")
    ap.add_argument("--k", type=int, default=10, help="k of the recall target (default 10)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the training sample and held-out queries")
    ap.add_argument("--threads", type=int, help="FAISS threads (default: the cores available)")
    ap.add_argument(
        "--no-thumbnails",
        dest="thumbnails",
        action="store_false",
        help="do not store a small JPEG of each photo (~3 kB and ~10 ms of decoding per row; the page shows them)",
    )


def run(args: argparse.Namespace) -> int:
    """Build the index, print one summary line; 1 (and a warning) when the recall target is not met."""
    check_out_dir(args.out)  # before the vectors load: a bad --out costs nothing
    from exiflang.eval.index.run import build_index  # imports faiss: --help stays light

    # The folder's path, not its loaded arrays: build_index streams the parts from disk, so
    # memory is the index + one chunk + the training sample, whatever N is.
    info = build_index(
        args.emb,
        args.out,
        kind=args.kind,
        recall_target=args.recall,
        memory_budget_mb=args.memory_mb,
        k=args.k,
        seed=args.seed,
        side="text" if args.text else "image",
        threads=args.threads,
        thumbnails=args.thumbnails,
    )
    params = ", ".join(f"{k}={v}" for k, v in info["params"].items()) or "exact"
    print(
        f"{info['kind']} index of {info['n']} vectors ({info['dim']}-d; {params}): recall@{info['k']} "
        f"{info['recall_at_k']:.3f} (95% lower bound {info['recall_at_k_lower_95']:.3f}, target "
        f"{info['recall_target']}), {info['qps_batch']:.0f} queries/s batched, "
        f"{info['latency_ms_batch1']:.2f} ms single, {info['bytes'] / 2**20:.1f} MB -> {args.out}"
    )
    if not info["recall_met"]:
        print(
            f"{PROG}: warning: recall target {info['recall_target']} not met "
            f"(best {info['recall_at_k']:.3f}); index written with the best parameters found",
            file=sys.stderr,
        )
        return 1
    return 0


COMMAND = Command(prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run, log_level=logging.INFO)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
