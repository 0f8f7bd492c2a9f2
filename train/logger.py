"""Run logging on rank 0: metrics.jsonl (one JSON object per logged step), TensorBoard, and wandb when asked.

wandb is optional (never a dependency of exiflang): ``run.wandb=online|offline`` needs
``pip install wandb``; asking for it without the package is a one-line error before training
starts (:func:`check_wandb`).  ``offline`` writes under ``RUN/wandb`` and needs no network
(``wandb sync`` uploads it later).  The wandb run id is derived from the run folder, so a
resumed run continues the same wandb run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("exiflang.train")
WANDB_MODES = ("off", "online", "offline")


def check_wandb(mode: str) -> None:
    """Raise a one-line ``ValueError`` when ``run.wandb=mode`` cannot be honoured."""
    if mode not in WANDB_MODES:
        raise ValueError(f"run.wandb={mode!r}: choose from {', '.join(WANDB_MODES)}")
    if mode != "off" and importlib.util.find_spec("wandb") is None:
        raise ValueError(
            f"run.wandb={mode}: the wandb package is not installed (it is optional: "
            "pip install wandb, or leave run.wandb=off)"
        )


def _start_wandb(run: Path, mode: str, project: str, config: dict | None) -> Any:
    import wandb

    run_id = hashlib.sha1(str(run.resolve()).encode()).hexdigest()[:16]
    return wandb.init(
        project=project, name=run.name, id=run_id, resume="allow", mode=mode, dir=str(run), config=config or {}
    )


class RunLogger:
    """Appends metrics to ``RUN/metrics.jsonl`` and, if enabled, TensorBoard under ``RUN/tb``
    and wandb (``wandb``: ``off`` | ``online`` | ``offline``).

    Silent on ranks other than 0, so callers need not check.
    """

    def __init__(
        self,
        run: Path,
        enabled: bool,
        tensorboard: bool = True,
        wandb: str = "off",
        project: str = "exiflang",
        config: dict | None = None,
    ) -> None:
        self.enabled = enabled
        self._fh = open(run / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115 -- open for the run; close()
        self._tb: Any | None = None
        self._wandb: Any | None = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run / "tb"))
            except ImportError:  # tensorboard is in the lock file; stay usable without it
                log.warning("tensorboard not importable: metrics.jsonl only")
        if enabled and wandb != "off":
            self._wandb = _start_wandb(run, wandb, project, config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        assert self._fh is not None
        self._fh.write(json.dumps({"step": step, **metrics}) + "\n")
        self._fh.flush()
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
