"""Training entry point: `torchrun --nproc_per_node N train/main.py ...` and `exiflang train ...`.

    train/main.py --data DIR_OR_URL --out RUN [--config PRESET_OR_YAML] [--resume latest]
                  [--eval-data DIR_OR_URL] [--debug] [key=value ...]

``--data`` / ``--eval-data``: a local folder or an fsspec URL (``s3://bucket/shards``, ``gs://…``,
``file:///…``), streamed (docs/training.md, "Data from object storage").

Expected failures (bad data, config, output folder, checkpoint or model file) print one line
naming the file and exit 2; ``--debug`` or ``EXIFLANG_DEBUG=1`` also prints the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (torchrun train/main.py): make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exiflang.command import Command
from exiflang.train.config import PRESETS, load_config, save_config
from exiflang.train.data.shard_store import is_url, store_for
from exiflang.train.logger import check_wandb

log = logging.getLogger("exiflang.train")
PROG = "exiflang train"


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Declare train's arguments (``--debug`` too: under torchrun there is no dispatcher to take it)."""
    ap.add_argument(
        "--data", required=True, help="dataset written by `exiflang shards`: a folder or a URL (s3://, gs://, file://)"
    )
    ap.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints, model)")
    ap.add_argument("--config", default="paper", help=f"preset ({', '.join(PRESETS)}) or a YAML file")
    ap.add_argument("--resume", help="`latest` (this run's newest checkpoint) or a checkpoint folder")
    ap.add_argument(
        "--eval-data",
        help="held-out shards (folder or URL): loss and retrieval every run.eval_every steps and at the end",
    )
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error (also EXIFLANG_DEBUG=1)")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.lr=3e-4")


def _check_data(data: str, cfg: Any) -> None:
    """A folder or URL with ``*.tar`` shards (listed with the loader's retry discipline)."""
    if not is_url(data) and not Path(data).is_dir():
        raise FileNotFoundError(f"{data}: data folder not found")
    if not store_for(data, cfg.data.read_policy(), cfg.data.storage_options).tar_names():
        raise FileNotFoundError(f"{data}: no shards (*.tar) in the data folder")


def _check_out(run: Path) -> None:
    """``--out`` must be a folder or creatable as one: not a file, nor under one."""
    for path in (run, *run.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == run else f"is a file, so {run} cannot be created under it"
                raise NotADirectoryError(f"{path}: {what} (--out must be a folder)")
            return


def run(args: argparse.Namespace) -> int:
    """Train as the arguments say; 0 on success.  Bad input (data, config, output folder,
    checkpoint or model files) raises: the Command layer prints one line naming the file, exit 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    out = Path(args.out)
    cfg = load_config(args.config, args.overrides, data=args.data)
    if args.eval_data:
        cfg.run.eval_data = args.eval_data
    _check_data(cfg.data.data, cfg)
    if cfg.run.eval_data:
        _check_data(cfg.run.eval_data, cfg)
    check_wandb(cfg.run.wandb)
    _check_out(out)
    # torch is imported only now: the checks above and --help stay light.
    from exiflang.train.distributed import init_distributed, shutdown
    from exiflang.train.engine import train
    from exiflang.train.heldout import HeldOutEvaluator

    env = init_distributed(cfg.run.device)  # e.g. device=cuda on a machine without one: ValueError
    try:
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        # Rank 0 reads the held-out set before the first step: a bad one fails the run now.
        evaluate = HeldOutEvaluator(cfg).load() if cfg.run.eval_data and env.is_main else None
        result = train(cfg, out, env, resume=args.resume, evaluate=evaluate)
        if env.is_main:
            (out / "result.json").write_text(json.dumps(result, indent=2))
    finally:
        shutdown(env)
    if env.is_main:
        print(f"trained {result['step']} steps -> {out / 'model'}")
    return 0


# `exiflang --debug train ...` hands --debug through: this command declares it itself.
COMMAND = Command(prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run, accepts_debug=True)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
