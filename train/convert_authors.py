"""`exiflang convert-authors`: write the authors' released checkpoint as an exiflang model folder.

    exiflang convert-authors CKPT --out MODEL_DIR [--tags tags.json] [--tokenizer DIR] [--force]

The mapping (their CLIP-wrapped ResNet-50 + DistilBERT -> the ``paper`` preset) is
:mod:`exiflang.train.authors`.  The checkpoint is read with ``torch.load(weights_only=True)``:
no pickled code runs unless ``--unsafe-load`` says so (trusted files only).  The folder gets a
model card saying it is the authors' model, trained on real YFCC100M photos.

Exit status: 0 written; 2 with one line naming the file for a missing, damaged or unrecognised
checkpoint, an existing ``--out`` (without ``--force``) or an unreadable ``--tags``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (`python train/convert_authors.py`): make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exiflang.command import Command

PROG = "exiflang convert-authors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare convert-authors' arguments."""
    p.add_argument("ckpt", type=Path, help="the authors' checkpoint, e.g. wrapper_75_new.pth")
    p.add_argument("--out", type=Path, required=True, help="model folder to write")
    p.add_argument("--tags", type=Path, help="tags.json to store beside the model")
    p.add_argument("--tokenizer", help="local tokenizer folder (default: packaged BERT uncased)")
    p.add_argument("--allow-unknown", action="store_true", help="drop unrecognised keys")
    p.add_argument(
        "--unsafe-load",
        action="store_true",
        help="torch.load with weights_only=False (runs pickled code: trusted files only)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")


def run(args: argparse.Namespace) -> int:
    """Convert; bad input raises (one line naming the file, exit 2)."""
    if args.out.exists() and not args.force:
        raise ValueError(f"{args.out}: exists (pass --force to replace it)")
    if not args.ckpt.is_file():
        raise FileNotFoundError(f"{args.ckpt}: checkpoint not found")
    tags = json.loads(args.tags.read_text()) if args.tags else None
    # torch and transformers are imported only now, so --help stays light.
    from exiflang.train.authors import convert, load_checkpoint
    from exiflang.train.card import authors_card, write_model_card
    from exiflang.train.tokenizer import build_tokenizer

    model, split = convert(load_checkpoint(args.ckpt, args.unsafe_load), allow_unknown=args.allow_unknown)
    tokenizer = build_tokenizer("folder" if args.tokenizer else "bert-uncased", path=args.tokenizer)
    model.save_pretrained(args.out, tokenizer=tokenizer, tags=tags)
    write_model_card(args.out, authors_card())  # says: the authors' model, real YFCC100M photos
    print(f"converted {len(split.tensors)} tensors from {args.ckpt} -> {args.out}")
    print(f"dropped {len(split.ignored)} unused keys: {', '.join(split.ignored)}")
    if split.unknown:
        print(f"dropped {len(split.unknown)} unrecognised keys: {', '.join(split.unknown)}")
    if tags is None:
        print(
            "note: no --tags given; the authors' tag vocabulary is unpublished, so text "
            "rendering with this model needs a tags.json of your own",
            file=sys.stderr,
        )
    return 0


COMMAND = Command(prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
