"""Contrastive losses: symmetric InfoNCE with multi-positive targets, its exact distributed form, CropCLR.

Single process — :func:`clip_loss`.  ``logits = scale * img @ txt.T``; the loss is the mean of the
image->text and text->image cross-entropies, each averaged over rows.  With ``text_ids`` a row's
target is uniform over every column whose text id equals its own (identical EXIF text is not a
negative), so the row loss is the mean of ``-log softmax`` over its positives.

Distributed — :class:`DistributedClipLoss`.  The normalisation rule, for N ranks each holding b
rows (equal b on every rank; use ``drop_last``), global batch B = N*b:

1. features are gathered *with* gradients (:func:`gather_with_grad`): the backward of the gather
   sums, into each rank's own features, the gradient of every rank's loss;
2. each rank computes the loss of its b local rows against all B columns and divides by **b**
   (not B) — i.e. ``N * (sum of local row losses) / B``;
3. DDP averages gradients over the N ranks.

Then every parameter gradient equals the gradient of the single-process loss on the concatenated
batch: the sum over ranks of the local sums is the global sum, step 2's factor N cancels DDP's
1/N.  The *value* each rank sees is its local-row mean; the global loss is their average
(``all_reduce(loss) / N``).  Replacing only the own slice of a plain all_gather (open_clip's
``gather_with_grad=False``) is exact only with the full B x B loss on every rank; with local rows
it drops the cross-rank gradient terms, hence the autograd gather here.

CropCLR — :func:`cropclr_loss`: the same loss with the text side replaced by the second crop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def text_ids_from_strings(texts: Iterable[str]) -> torch.Tensor:
    """Stable int64 id per text (blake2b, same on every rank and run): ``[B]`` long.

    Equal strings get equal ids; a collision between different strings has probability ~B²/2⁶⁴.
    """
    ids = [
        int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little", signed=True) for t in texts
    ]
    return torch.tensor(ids, dtype=torch.long)


def _row_losses(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Per-row soft cross-entropy, target uniform over the row's positives.

    ``logits`` ``[R,C]``; ``positives`` bool ``[R,C]`` with at least one True per row -> ``[R]``,
    each >= 0 (the mean of ``-log softmax`` over the row's positive columns).
    """
    log_prob = F.log_softmax(logits.float(), dim=-1)
    target = positives.float()
    return -(target * log_prob).sum(-1) / target.sum(-1)


def _local_rows_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    all_img: torch.Tensor,
    all_txt: torch.Tensor,
    scale: torch.Tensor,
    offset: int,
    ids: torch.Tensor | None,
    all_ids: torch.Tensor | None,
) -> torch.Tensor:
    """Mean over the local rows of (image->text + text->image) / 2, against all columns.

    ``img``/``txt`` ``[b,D]`` are rows ``offset .. offset+b`` of ``all_img``/``all_txt`` ``[B,D]``;
    ``ids`` ``[b]`` / ``all_ids`` ``[B]`` the text ids, or None for one positive per row.
    """
    logits_i2t = (scale * img @ all_txt.T).float()  # [b, B]
    logits_t2i = (scale * txt @ all_img.T).float()  # [b, B]
    if ids is None:
        labels = torch.arange(len(img), device=img.device) + offset
        return (F.cross_entropy(logits_i2t, labels) + F.cross_entropy(logits_t2i, labels)) / 2
    if all_ids is None:
        raise ValueError("ids given without all_ids: both or neither")
    ids, all_ids = ids.to(logits_i2t.device), all_ids.to(logits_i2t.device)  # loaders give CPU ids
    positives = ids[:, None] == all_ids[None, :]  # a symmetric relation: same mask both ways
    return (_row_losses(logits_i2t, positives).mean() + _row_losses(logits_t2i, positives).mean()) / 2


def clip_loss(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, *, text_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE on one process.

    ``img``, ``txt``: ``[B,D]`` L2-normalised embeddings, row i of each from sample i.
    ``logit_scale``: scalar tensor (e.g. 100).  ``text_ids``: optional ``[B]`` integer id of each
    sample's EXIF text (equal id = identical text -> multi-positive target).
    Returns a scalar >= 0; ``log(B)`` at chance with distinct texts.
    """
    if img.shape != txt.shape:
        raise ValueError(f"clip_loss: img {tuple(img.shape)} and txt {tuple(txt.shape)} differ")
    return _local_rows_loss(img, txt, img, txt, logit_scale, 0, text_ids, text_ids)


def cropclr_loss(view1: torch.Tensor, view2: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CropCLR: :func:`clip_loss` between two crops of the same images (``[B,D]`` each)."""
    return clip_loss(view1, view2, logit_scale)


def crop_consistency_loss(img: torch.Tensor, groups: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """InfoNCE between crops of one photo: ``img`` ``[B,D]`` L2-normalised, ``groups`` ``[B]`` photo
    index per row.  Each row's positives are the other crops of its photo, its negatives the rest
    of the batch (itself excluded); rows whose photo has no other crop are left out.  >= 0."""
    groups = groups.to(img.device)
    self_mask = torch.eye(len(img), dtype=torch.bool, device=img.device)
    positives = (groups[:, None] == groups[None, :]) & ~self_mask
    keep = positives.any(1)
    if not keep.any():
        return img.sum() * 0.0
    # The lowest finite value, not -inf: a row's own column then gets softmax weight exactly 0
    # and _row_losses' "0 x log p" for it stays 0 instead of NaN.
    logits = (logit_scale * img @ img.T).float().masked_fill(self_mask, torch.finfo(torch.float32).min)
    return _row_losses(logits[keep], positives[keep]).mean()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the sum over ranks of its slice's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group, ctx.rows = group, x.shape[0]
        return gather_no_grad(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # Every rank's loss depends on every slice: sum the full gradient over ranks (one
        # all_reduce, supported by gloo and NCCL alike), then keep this rank's rows.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = dist.get_rank(ctx.group) * ctx.rows
        return grad[start : start + ctx.rows], None


def gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """All-gather ``[b, ...]`` from every rank into ``[N*b, ...]`` (rank order), differentiable.

    The backward sums the gradients that every rank's loss sends to each slice and returns a
    rank its own slice's total.  All ranks must pass the same shape.
    """
    return _GatherWithGrad.apply(x, group)


def gather_no_grad(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """All-gather without autograd (for ``text_ids``): ``[b, ...]`` -> ``[N*b, ...]``."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=0)


class DistributedClipLoss(nn.Module):
    """:func:`clip_loss` across ranks, normalised so that N ranks + DDP = 1 process (see module doc).

    Outside an initialised process group (or with world size 1) it is exactly :func:`clip_loss`.
    Returns the loss of the local rows (a scalar tensor); average it over ranks for logging.
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.group = group

    def forward(
        self, img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, *, text_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``img``, ``txt`` ``[b,D]`` local L2-normalised embeddings; ``text_ids`` ``[b]`` or None."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(self.group) == 1:
            return clip_loss(img, txt, logit_scale, text_ids=text_ids)
        rank = dist.get_rank(self.group)
        all_img = gather_with_grad(img, self.group)
        all_txt = gather_with_grad(txt, self.group)
        if text_ids is not None:
            text_ids = text_ids.to(img.device)  # NCCL gathers device tensors only
        all_ids = None if text_ids is None else gather_no_grad(text_ids, self.group)
        return _local_rows_loss(img, txt, all_img, all_txt, logit_scale, rank * len(img), text_ids, all_ids)
