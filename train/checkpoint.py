"""Checkpoints: self-contained model folders plus a training-state file, atomic, pruned, resumable.

Layout under ``RUN/checkpoints/``: ``step-0000100/`` is a model folder loadable on its own
(``config.json``, ``model.safetensors``, tokenizer files, ``tags.json``) with
``train_state.pt`` beside them (optimizer, scheduler, scaler, step, epoch, batch position,
RNG states, best metric); ``latest.json`` names the newest complete one.  Rank 0 writes;
the last ``keep_last`` and the best are kept.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

STATE = "train_state.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:07d}"


def save(run: Path, step: int, model: Any, tokenizer: Any, tags: Optional[dict],
         state: dict[str, Any], keep_last: int, metric: Optional[float] = None) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest.json`` at it, prune old ones."""
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    tmp = ckdir / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, tokenizer=tokenizer, tags=tags)
    torch.save({**state, "rng": rng_state(), "step": step}, tmp / STATE)
    final = step_dir(run, step)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    index = _read_index(ckdir)
    if metric is not None and (index.get("best_metric") is None or metric > index["best_metric"]):
        index.update(best=final.name, best_metric=metric)
    index["latest"] = final.name
    _write_index(ckdir, index)
    _prune(ckdir, keep_last, index.get("best"))
    return final


def _read_index(ckdir: Path) -> dict[str, Any]:
    path = ckdir / "latest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_index(ckdir: Path, index: dict[str, Any]) -> None:
    tmp = ckdir / "latest.json.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    tmp.replace(ckdir / "latest.json")


def _prune(ckdir: Path, keep_last: int, best: Optional[str]) -> None:
    steps = sorted(p for p in ckdir.glob("step-*") if p.is_dir())
    for p in steps[: max(0, len(steps) - keep_last)]:
        if p.name != best:
            shutil.rmtree(p, ignore_errors=True)


def resolve(run: Path, which: str) -> Optional[Path]:
    """``latest`` -> the newest complete checkpoint of ``run`` (None if none); else a path."""
    if which != "latest":
        path = Path(which)
        if not (path / STATE).is_file():
            raise FileNotFoundError(f"{path}: not a checkpoint (no {STATE})")
        return path
    index = _read_index(run / "checkpoints")
    if "latest" not in index:
        return None
    path = run / "checkpoints" / index["latest"]
    return path if (path / STATE).is_file() else None


def load_state(path: Path) -> dict[str, Any]:
    """The training state of checkpoint ``path`` (weights are loaded from the model folder)."""
    # Our own file, holding optimizer state and RNG tuples: full unpickling is needed.
    return torch.load(path / STATE, map_location="cpu", weights_only=False)
