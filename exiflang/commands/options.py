"""What the photo commands share: the ``--device`` check made before a model loads, and the model-card line.

Light at import (torch is imported only by :func:`check_device`).
"""

from __future__ import annotations

from typing import Any

from exiflang.train.card import describe


def check_device(device: str) -> None:
    """One-line ValueError naming ``--device`` for a device torch does not know or cannot use here."""
    import torch

    if device == "auto":
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device}: not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")


def model_line(card: dict[str, Any]) -> str:
    """The terminal's first line: what the model was trained on (its card), or that nothing says so."""
    line = describe(card)
    return f"model: {line}" if line else "model: no model card: what it was trained on is not recorded"
