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
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (torchrun train/main.py): make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# `exiflang --debug train ...` hands --debug through: this command parses it itself.
ACCEPTS_DEBUG = True

from exiflang.train.config import PRESETS, load_config, save_config  # noqa: E402
from exiflang.train.data.loader import read_policy  # noqa: E402
from exiflang.train.data.shard_store import is_url, store_for  # noqa: E402
from exiflang.train.distributed import init_distributed, shutdown  # noqa: E402
from exiflang.train.logger import check_wandb  # noqa: E402

log = logging.getLogger("exiflang.train")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="exiflang train", description=__doc__.splitlines()[0])
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
    return ap


def _check_data(data: str, cfg: Any) -> None:
    """A folder or URL with ``*.tar`` shards (listed with the loader's retry discipline)."""
    if not is_url(data) and not Path(data).is_dir():
        raise FileNotFoundError(f"{data}: data folder not found")
    if not store_for(data, read_policy(cfg.data), cfg.data.storage_options).tar_names():
        raise FileNotFoundError(f"{data}: no shards (*.tar) in the data folder")


def _check_out(run: Path) -> None:
    """``--out`` must be a folder or creatable as one: not a file, nor under one."""
    for path in (run, *run.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == run else f"is a file, so {run} cannot be created under it"
                raise NotADirectoryError(f"{path}: {what} (--out must be a folder)")
            return


def _one_line(exc: BaseException) -> str:
    """The error as one line naming the file: an OSError's ``filename: reason``, else its message."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _fail(exc: BaseException, debug: bool) -> int:
    """Print ``exc`` as one line (after its traceback with ``debug``) on rank 0; returns 2."""
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: say it once
        if debug:
            traceback.print_exception(exc)
        print(f"exiflang train: error: {_one_line(exc)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Train as the arguments say; 0 on success, 2 with one line on stderr for bad input (data,
    config, output folder, checkpoint or model files)."""
    args = parser().parse_args(argv)
    debug = args.debug or os.environ.get("EXIFLANG_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    run = Path(args.out)
    try:
        cfg = load_config(args.config, args.overrides, data=args.data)
        if args.eval_data:
            cfg.run.eval_data = args.eval_data
        _check_data(cfg.data.data, cfg)
        if cfg.run.eval_data:
            _check_data(cfg.run.eval_data, cfg)
        check_wandb(cfg.run.wandb)
        _check_out(run)
    except (ValueError, OSError) as exc:
        return _fail(exc, debug)
    from exiflang.train.engine import train
    from exiflang.train.heldout import HeldOutEvaluator

    try:
        env = init_distributed(cfg.run.device)  # e.g. device=cuda on a machine without one
    except ValueError as exc:
        return _fail(exc, debug)
    try:
        if env.is_main:
            run.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run / "config.yaml")
        # Rank 0 reads the held-out set before the first step: a bad one fails the run now.
        evaluate = HeldOutEvaluator(cfg).load() if cfg.run.eval_data and env.is_main else None
        result = train(cfg, run, env, resume=args.resume, evaluate=evaluate)
        if env.is_main:
            (run / "result.json").write_text(json.dumps(result, indent=2))
    except (ValueError, OSError) as exc:  # CheckpointError, DataError are ValueErrors
        return _fail(exc, debug)
    finally:
        shutdown(env)
    if env.is_main:
        print(f"trained {result['step']} steps -> {run / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
