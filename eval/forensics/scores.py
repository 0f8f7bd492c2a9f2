"""Image-level splice detection scores from patch affinities, each oriented so higher = more likely spliced.

- ``score_exp``: the paper's consistency ``φ = Σ_{i≠j} exp(A_ij / τ)`` (high = consistent),
  reported as ``-τ · log(φ / (N(N-1)))``: decreasing in φ, so higher = spliced.  Dividing by
  the pair count keeps images with different patch counts comparable; multiplying by τ puts it
  on the scale of ``-A`` (about -1..1: minus a soft maximum of the pair similarities).  Computed
  with ``logsumexp`` because ``e^(1/0.01)`` overflows float32.  Self-pairs are left out: each
  contributes ``e^(1/τ)``, which at τ = 0.01 would outweigh every real pair and make φ a
  function of N alone.
- ``score_mean_dist``: the authors' code's mean pairwise distance ``1 - A`` over the ordered
  pairs ``i ≠ j`` (0..2; their code averaged the cell map, which weights pairs by coverage).

An image with a single patch has no pairs: both scores are 0.0.
"""

from __future__ import annotations

import math

import torch

SCORE_KEYS = ("score_exp", "score_mean_dist")
# The headline score (benchmark tables, the npz ``detection`` key): the authors' mean distance.
# It is the score behind their published detection numbers, and it detected better on all but
# one trained model measured here (detection AP, score_mean_dist vs score_exp): held-out
# synthetic splices 0.874 vs 0.759 (800 steps) and 0.889 vs 0.794 (2400 steps, n = 30);
# real-photo study 0.726 vs 0.647 (EXIF), 0.760 vs 0.753 (CropCLR), 0.687 vs 0.645 (Model tag);
# the exception, the 700-step demo model on 384-640 px splices: 0.776 vs 0.809.  At tau = 0.01,
# score_exp is a soft maximum of pair similarities, held near 1 by overlapping patches.
DEFAULT_SCORE = "score_mean_dist"


def detection_scores(affinity: torch.Tensor, tau: float = 0.01) -> dict[str, float]:
    """``[N,N]`` cosine affinity (-1..1) -> ``{"score_exp": float, "score_mean_dist": float}``."""
    if affinity.ndim != 2 or affinity.shape[0] != affinity.shape[1]:
        raise ValueError(f"affinity must be a square [N, N] matrix, got shape {tuple(affinity.shape)}")
    if tau <= 0:
        raise ValueError(f"temperature tau {tau}: must be positive")
    n = affinity.shape[0]
    if n < 2:
        return {"score_exp": 0.0, "score_mean_dist": 0.0}
    a = affinity.detach().to(torch.float64)
    off = ~torch.eye(n, dtype=torch.bool)
    pairs = a[off]  # [N(N-1)] ordered pairs i != j
    log_phi = torch.logsumexp(pairs / tau, dim=0)
    score_exp = -tau * (float(log_phi) - math.log(pairs.numel()))
    score_mean_dist = float((1.0 - pairs).mean())
    return {"score_exp": score_exp, "score_mean_dist": score_mean_dist}
