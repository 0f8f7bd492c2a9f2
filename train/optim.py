"""Optimiser and learning-rate schedule: decay only on weights, linear warm-up then cosine."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from exiflang.train.config import OptimConfig

TEXT_BACKBONE = "text.backbone."  # what optim.text_lr_scale applies to (a text projection keeps the full LR)


def param_groups(model: nn.Module, weight_decay: float, lr: float, text_lr_scale: float = 1.0) -> list[dict]:
    """Matrices/conv kernels decay; norms, biases, embeddings' scale and the logit scale do not
    (decaying them only fights the normalisation they implement).  Two groups at ``lr``; with
    ``text_lr_scale != 1`` two more for the text backbone at ``lr * text_lr_scale`` (a pretrained
    tower is fine-tuned gently while the image tower learns from scratch).  Group 0 is always the
    main decaying group at ``lr`` (what the run's log reports)."""
    split = text_lr_scale != 1.0
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") or "logit_scale" in name
        groups.setdefault((split and name.startswith(TEXT_BACKBONE), not no_decay), []).append(p)
    out = []
    for text in (False, True) if split else (False,):
        for decays in (True, False):
            out.append(
                {
                    "params": groups.get((text, decays), []),
                    "weight_decay": weight_decay if decays else 0.0,
                    "lr": lr * (text_lr_scale if text else 1.0),
                }
            )
    return out


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if not cfg.text_lr_scale >= 0:
        raise ValueError(f"optim.text_lr_scale {cfg.text_lr_scale}: must be >= 0")
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.text_lr_scale)
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
    """Every group follows :func:`lr_at`'s shape, scaled by its own initial LR (so a text group at
    ``lr * text_lr_scale`` keeps that ratio throughout)."""
    base = cfg.lr if cfg.lr > 0 else 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, total, cfg) / base)
