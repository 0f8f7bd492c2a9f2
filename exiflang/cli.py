"""The `exiflang` console script: one command, subcommands dispatched to each stage's Command.

Each entry of :data:`COMMANDS` names a module whose ``COMMAND`` (:class:`exiflang.command.Command`)
parses, configures logging and maps errors to exit codes: an expected failure is one line
``exiflang COMMAND: error: FILE: reason`` and exit code 2, a bug one line and exit 1, Ctrl-C exit
130.  ``--debug`` before the command (``exiflang --debug detect ...``) or among its arguments
(``exiflang detect --debug ...``), or ``EXIFLANG_DEBUG=1``, prints the traceback too.  The flag is
taken out of the arguments before the command parses them, unless the command declares it
(``Command(accepts_debug=True)``: it then gets it, also when given before the command).  A failed
import of the command's module is reported the same way (one line, by this dispatcher).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

from exiflang.errors import DEBUG_FLAG, EXIT_BAD_INPUT, run_main

# name -> (module defining COMMAND, one-line help).  Imported lazily so that `exiflang shards`
# never imports torch, and `pipeline` stays free of `train` / `eval`.
COMMANDS: dict[str, tuple[str, str]] = {
    "shards": ("exiflang.pipeline.build_shards", "build WebDataset shards + Parquet tables from photos"),
    "synth": ("exiflang.pipeline.synth.corpus", "write a synthetic camera corpus (real JPEGs with EXIF)"),
    "select-tags": ("exiflang.pipeline.shards.tags", "re-select the tag vocabulary from the Parquet tables"),
    "convert-authors": ("exiflang.train.convert_authors", "convert the authors' released checkpoint"),
    "train": ("exiflang.train.main", "train the image + text encoders (one process; torchrun for DDP)"),
    "embed": ("exiflang.eval.embed.command", "embed the samples of shards with a trained model (npy + Parquet)"),
    "index": ("exiflang.eval.index.command", "build a FAISS index over embeddings, tuned to a recall target"),
    "lookup": ("exiflang.commands.lookup", "nearest training photos and predicted EXIF for photos"),
    "eval-tags": ("exiflang.eval.tags.command", "per-tag accuracy: k-NN, zero-shot text, linear probe, majority"),
    "detect": ("exiflang.commands.detect", "zero-shot splice detection and localization maps for images"),
    "calibrate": ("exiflang.commands.calibrate", "reference detection scores on authentic photos (verdicts)"),
    "make-splices": ("exiflang.eval.benchmark.splices", "build a spliced/authentic test set from real photos"),
    "benchmark": (
        "exiflang.eval.benchmark.command",
        "forensic benchmark: p-mAP, cIoU, detection AP, with NOI baseline",
    ),
    "check-exif": ("exiflang.commands.check_exif", "do the pixels agree with the claimed EXIF? (zero-shot)"),
    "eval-check-exif": (
        "exiflang.commands.eval_check_exif",
        "check-exif as a detector: true vs swapped EXIF, ROC-AUC / AP",
    ),
    "demo": ("exiflang.demo", "run the main job end to end on the offline default"),
    "serve": ("exiflang.serve.main", "HTTP service + analyst's page: detect, lookup, check-exif"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: exiflang [--debug] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "`exiflang COMMAND --help` for a command's options; --debug (or EXIFLANG_DEBUG=1) "
        "shows the traceback of an error.",
    ]
    return "\n".join(lines)


def _call(name: str, argv: list[str], debug: bool = False) -> int:
    """Import command ``name``'s module (inside the error contract: a failed import is one line)
    and run its :class:`exiflang.command.Command` on ``argv``."""
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.COMMAND.main(argv, debug=debug))


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``); returns the command's exit code (0..2, 130)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    debug = False
    while argv and argv[0] == DEBUG_FLAG:  # the global form: exiflang --debug COMMAND ...
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"exiflang: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return run_main(
        f"exiflang {name}", functools.partial(_call, name, debug=debug), rest, debug=debug, keep_debug_flag=True
    )


if __name__ == "__main__":
    sys.exit(main())
