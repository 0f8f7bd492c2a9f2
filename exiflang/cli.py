"""The `exiflang` console script: one command, subcommands dispatched to each stage's main()."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Optional

# name -> ("module:function", one-line help).  Imported lazily so that `exiflang shards`
# never imports torch, and `pipeline` stays free of `train` / `eval`.
COMMANDS: dict[str, tuple[str, str]] = {
    "shards": ("pipeline.build_shards:main", "build WebDataset shards + Parquet tables from photos"),
    "synth": ("pipeline.synth:main", "write a synthetic camera corpus (real JPEGs with EXIF)"),
    "select-tags": ("pipeline.tags:main", "re-select the tag vocabulary from the Parquet tables"),
    "convert-authors": ("train.convert_authors:main", "convert the authors' released checkpoint"),
    "train": ("train.main:main", "train the image + text encoders (one process; torchrun for DDP)"),
    "embed": ("eval.embed:main", "embed the samples of shards with a trained model (npy + Parquet)"),
    "index": ("eval.index:main", "build a FAISS index over embeddings, tuned to a recall target"),
    "lookup": ("eval.lookup:main", "nearest training photos and predicted EXIF for photos"),
    "eval-tags": ("eval.eval_tags:main", "per-tag accuracy: k-NN, zero-shot text, linear probe, majority"),
    "detect": ("eval.detect:main", "zero-shot splice detection and localization maps for images"),
    "make-splices": ("eval.splices:main", "build a spliced/authentic test set from real photos"),
    "benchmark": ("eval.benchmark:main", "forensic benchmark: p-mAP, cIoU, detection AP, with NOI baseline"),
    "demo": ("exiflang.demo:main", "run the main job end to end on the offline default"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: exiflang COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`exiflang COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"exiflang: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func = COMMANDS[name][0].split(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
