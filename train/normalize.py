"""CLIP pixel normalisation shared by training and evaluation (docs/design.md §4)."""

from __future__ import annotations

import numpy as np
import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_clip_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 ``[H,W,3]`` RGB in 0..255 -> float32 ``[3,H,W]`` CLIP-normalised (about -1.8..2.1)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std
