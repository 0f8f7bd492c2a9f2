"""Run logging on rank 0: metrics.jsonl (one JSON object per logged step) and TensorBoard."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("exiflang.train")


class RunLogger:
    """Appends metrics to ``RUN/metrics.jsonl`` and, if enabled, TensorBoard under ``RUN/tb``.

    Silent on ranks other than 0, so callers need not check.
    """

    def __init__(self, run: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self._fh = open(run / "metrics.jsonl", "a") if enabled else None
        self._tb: Optional[Any] = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(run / "tb"))
            except ImportError:  # tensorboard is in the lock file; stay usable without it
                log.warning("tensorboard not importable: metrics.jsonl only")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        assert self._fh is not None
        self._fh.write(json.dumps({"step": step, **metrics}) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._tb is not None:
            self._tb.close()
