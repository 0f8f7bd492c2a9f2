"""Checkpoints (model folders + a plain-data training state: atomic, pruned, resumable) and safe weight readers.

Layout under ``RUN/checkpoints/``: ``step-0000100/`` is a model folder loadable on its own
(``config.json``, ``model.safetensors``, tokenizer files, ``tags.json``) with
``train_state.pt`` beside them (optimizer, scheduler, step, epoch, batch position, RNG states
keyed by rank, best metric); ``latest.json`` names the newest complete one.  Rank 0 writes;
the last ``keep_last`` and the best are kept.

**Loading never runs code.**  ``train_state.pt`` holds only tensors and plain values (dict, list,
tuple, str, int, float, bool, None; checked when saving) and is read with
``torch.load(weights_only=True)``, whose unpickler refuses every other global.  A file that
needs more (a crafted pickle, or one written before the state was plain) is refused with a
one-line :class:`CheckpointError` naming it.  Weights are safetensors (no code at all).

**Resume is explicit** (:func:`resolve`): ``latest`` is the newest *complete* checkpoint folder
(state + weights + config present), whatever ``latest.json`` says; a run with no checkpoint
folder starts at step 0; folders that are all incomplete are an error, never a silent restart.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE = "train_state.pt"
WEIGHTS = "model.safetensors"
COMPLETE = (STATE, WEIGHTS, "config.json")  # what a checkpoint folder needs to be resumed from
STATE_FORMAT = "exiflang-train-state"
STATE_VERSION = 2  # 2: plain data, RNG keyed by rank
_REQUIRED = ("optimizer", "scheduler", "position", "rng", "step")
_STEP_DIR = re.compile(r"^step-(\d+)$")
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)

log = logging.getLogger("exiflang.train")


class CheckpointError(ValueError):
    """A checkpoint or run folder that cannot be resumed from; the message is one line naming the file."""


def rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch, cuda) as plain data: lists of ints and tensors."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(words), "gauss_next": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(w) for w in py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            np.asarray(npy["keys"], dtype=np.uint32),
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float(npy["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_for_rank(state: dict[str, Any], rank: int) -> dict[str, Any]:
    """The RNG state saved for ``rank``; a rank without its own entry takes rank 0's (what every
    rank restored when only rank 0's state was saved)."""
    rngs = state["rng"]
    own = rngs.get(str(rank), rngs.get("0"))
    if not isinstance(own, dict):
        raise KeyError(f"no RNG state for rank {rank} or rank 0")
    return own


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:07d}"


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the key path when ``obj`` holds anything that
    ``torch.load(weights_only=True)`` would refuse (only tensors and plain values pass)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"training state {where}: key {key!r} is not a str or int")
            check_plain(value, f"{where}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"training state {where}: {type(obj).__name__} is not plain data")


def save(
    run: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    tags: dict | None,
    state: dict[str, Any],
    keep_last: int,
    metric: float | None = None,
    rngs: dict[int, dict[str, Any]] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest.json`` at it, prune old ones.

    ``rngs``: RNG states by rank (default: this process's, as rank 0).
    """
    doc = {
        **state,
        "format": STATE_FORMAT,
        "format_version": STATE_VERSION,
        "step": step,
        "rng": {str(r): s for r, s in (rngs or {0: rng_state()}).items()},
    }
    check_plain(doc)  # before writing anything: a non-plain state could not be resumed from
    ckdir = run / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    tmp = ckdir / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, tokenizer=tokenizer, tags=tags)
    torch.save(doc, tmp / STATE)
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
    """``latest.json`` as a dict; an unreadable or damaged one is ``{}`` (the folders are the truth)."""
    path = ckdir / "latest.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); ignored", path, " ".join(str(exc).split()))
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_index(ckdir: Path, index: dict[str, Any]) -> None:
    tmp = ckdir / "latest.json.tmp"
    tmp.write_text(json.dumps(index, indent=2))
    tmp.replace(ckdir / "latest.json")


def _step_folders(ckdir: Path) -> list[Path]:
    """``step-N`` folders of ``ckdir`` in step order (temporary ``.step-N.tmp`` ones excluded)."""
    found = [(int(m.group(1)), p) for p in ckdir.glob("step-*") if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _prune(ckdir: Path, keep_last: int, best: str | None) -> None:
    steps = _step_folders(ckdir)
    for p in steps[: max(0, len(steps) - keep_last)]:
        if p.name != best:
            shutil.rmtree(p, ignore_errors=True)


def missing_files(path: Path) -> list[str]:
    """The files of :data:`COMPLETE` that checkpoint folder ``path`` lacks ([] = complete)."""
    return [name for name in COMPLETE if not (path / name).is_file()]


def resolve(run: Path, which: str) -> Path | None:
    """The checkpoint folder to resume ``run`` from, or None to start at step 0.

    ``which``: ``latest`` -> the newest complete ``RUN/checkpoints/step-N`` (``latest.json`` is
    only a hint: a broken index or one naming a missing/incomplete folder falls back to the scan,
    logged); None when ``RUN/checkpoints`` has no step folder and no index.  Anything else is a
    checkpoint folder path, which must be complete.  Raises :class:`CheckpointError` /
    ``FileNotFoundError`` with one line naming the folder; never returns None over checkpoints.
    """
    if which != "latest":
        return _explicit(Path(which))
    ckdir = run / "checkpoints"
    folders, named = _step_folders(ckdir), _read_index(ckdir).get("latest")
    if not folders:
        if named:
            raise CheckpointError(
                f"{ckdir / 'latest.json'}: names {named}, but no checkpoint folder "
                f"is left; refusing to start over (remove {ckdir} to train from step 0)"
            )
        return None
    complete = [p for p in folders if not missing_files(p)]
    if not complete:
        raise CheckpointError(
            f"{ckdir}: {len(folders)} checkpoint folder(s), none complete (each needs "
            f"{', '.join(COMPLETE)}); refusing to start over (pass --resume FOLDER "
            f"or remove {ckdir} to train from step 0)"
        )
    newest = complete[-1]
    if named != newest.name:
        log.warning(
            "%s: names %r, the newest complete checkpoint is %s: resuming from it",
            ckdir / "latest.json",
            named,
            newest.name,
        )
    return newest


def _explicit(path: Path) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint folder not found")
    missing = missing_files(path)
    if missing:
        raise CheckpointError(f"{path}: not a complete checkpoint (no {', '.join(missing)})")
    return path


def load_plain(file: Path, hint: str = "") -> Any:
    """``torch.load(file, weights_only=True)``: tensors and plain values only, never code.

    A missing or damaged file, or one holding any other pickled object (refused before it is
    built), is a one-line :class:`CheckpointError` naming ``file``; ``hint`` is appended to a
    refusal (e.g. where such files come from).
    """
    try:
        with warnings.catch_warnings():  # torch warns about a pickle protocol it may not read: moot
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except Exception as exc:
        problem, refused = load_problem(exc)
        raise CheckpointError(f"{file}: {problem}{hint if refused else ''}") from exc


def read_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (the format holds no code); a missing or damaged
    file is a one-line ``FileNotFoundError`` / ``ValueError`` naming ``path``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise ValueError(f"{path}: not a readable safetensors file ({msg})") from exc


def load_problem(exc: BaseException) -> tuple[str, bool]:
    """(one line saying why a ``weights_only=True`` load failed — ours or transformers' — and
    whether it was a refusal of a non-plain pickle rather than a damaged file)."""
    text = " ".join(str(exc).split())
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found or (isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text):
        what = found.group(1) if found else "object that is not plain data"
        return (
            f"refused: it holds a pickled {what}, not only tensors and plain values, and unpickling it could run code",
            True,
        )
    return f"unreadable ({type(exc).__name__}: {text[:200]})", False


def load_state(path: Path) -> dict[str, Any]:
    """The training state of checkpoint folder ``path``, read without arbitrary unpickling.

    One-line :class:`CheckpointError` naming ``path/train_state.pt`` when it is missing,
    unreadable, holds non-plain pickled objects, or lacks the keys of a training state.
    """
    file = path / STATE
    state = load_plain(
        file,
        hint=" (a crafted file, or one from an older exiflang that pickled "
        "numpy RNG state: it cannot be resumed from; remove its folder)",
    )
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: not an exiflang training state (a {type(state).__name__})")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{file}: not an exiflang training state (no {', '.join(missing)})")
    version = state.get("format_version", 1)
    if not isinstance(version, int) or version > STATE_VERSION:
        raise CheckpointError(f"{file}: format_version {version!r} is not one this exiflang reads")
    return state


def apply_state(state: dict[str, Any], path: Path, opt: Any, sched: Any, rank: int = 0) -> dict[str, int]:
    """Load optimizer, scheduler and ``rank``'s RNG from a :func:`load_state` dict; returns its
    position (``step``, ``epoch``, ``batch``, ``nan_skipped``).  A state that does not fit this
    run (another model or recipe) is a one-line :class:`CheckpointError` naming the file."""
    file = path / STATE
    try:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(rng_for_rank(state, rank))
        position = {k: int(v) for k, v in dict(state["position"]).items()}
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{file}: does not fit this run ({type(exc).__name__}: {msg})") from exc
    return position
