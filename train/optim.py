"""Optimiser and learning-rate schedule: decay only on weights, linear warm-up then cosine."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from exiflang.train.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices/conv kernels decay; norms, biases, embeddings' scale and the logit
    scale do not (decaying them only fights the normalisation they implement)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    kwargs: dict[str, Any] = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    if cfg.name == "adam":
        # The authors' code: Adam with L2 weight decay folded into the gradient.
        return torch.optim.Adam(groups, **kwargs)
    raise ValueError(f"optim.name {cfg.name!r}: expected adamw or adam")


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Learning rate at optimiser step ``step`` (0-based): linear warm-up, cosine to min_lr."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * t))


def build_scheduler(opt: torch.optim.Optimizer, total: int, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    base = cfg.lr if cfg.lr > 0 else 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, cfg) / base)
