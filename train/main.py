"""Training entry point: `torchrun --nproc_per_node N train/main.py ...` and `exiflang train ...`.

    train/main.py --data DIR --out RUN [--config PRESET_OR_YAML] [--resume latest] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):
    # Run as a script (torchrun train/main.py): make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.config import PRESETS, load_config, save_config  # noqa: E402
from train.distributed import init_distributed, shutdown  # noqa: E402

log = logging.getLogger("exiflang.train")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="exiflang train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset folder written by `exiflang shards`")
    ap.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints, model)")
    ap.add_argument("--config", default="paper", help=f"preset ({', '.join(PRESETS)}) or a YAML file")
    ap.add_argument("--resume", help="`latest` (this run's newest checkpoint) or a checkpoint folder")
    ap.add_argument("--eval-data", help="held-out shards: camera retrieval accuracy during training")
    ap.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.lr=3e-4")
    return ap


def _check_data(data: Path) -> None:
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: data folder not found")
    if not list(data.glob("*.tar")):
        raise FileNotFoundError(f"{data}: no shards (*.tar) in the data folder")


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        cfg = load_config(args.config, args.overrides, data=args.data)
        if args.eval_data:
            cfg.run.eval_data = args.eval_data
        _check_data(Path(cfg.data.data))
    except (ValueError, FileNotFoundError) as exc:
        print(f"exiflang train: error: {exc}", file=sys.stderr)
        return 2
    from train.engine import train
    from train.retrieval import camera_evaluator
    env = init_distributed(cfg.run.device)
    run = Path(args.out)
    try:
        if env.is_main:
            run.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run / "config.yaml")
        evaluate = camera_evaluator(cfg) if cfg.run.eval_data else None
        result = train(cfg, run, env, resume=args.resume, evaluate=evaluate)
    except (ValueError, FileNotFoundError) as exc:
        print(f"exiflang train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown(env)
    if env.is_main:
        (run / "result.json").write_text(json.dumps(result, indent=2))
        print(f"trained {result['step']} steps -> {run / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
