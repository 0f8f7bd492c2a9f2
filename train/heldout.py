"""Held-out numbers while training: contrastive loss, image<->text retrieval and camera top-1 on fixed held-out shards.

The set is ``run.eval_data`` (a folder or a URL): its first ``run.eval_samples`` usable photos
in sorted tar order, decoded once when the run starts and kept as uint8 patches (a 2x2 grid
and the centre patch, ``5 * 3 * P * P`` bytes a photo).  Every ``run.eval_every`` steps (and at
the end) rank 0 computes, with the model in eval mode and no randomness drawn from the
training's generators:

- ``eval/loss``: the training loss (symmetric InfoNCE, identical texts as positives, the model's
  logit scale) on each photo's centre patch against its EXIF sentence, averaged over the full
  batches of ``data.batch_size`` photos in a fixed order (all photos when fewer);
- ``eval/i2t_r1``, ``eval/i2t_r5``, ``eval/t2i_r1``, ``eval/t2i_r5``: recall at 1 and 5 of
  retrieving a photo's own sentence among all held-out sentences (photo embedding: the mean of
  its grid patches) and the reverse; a sentence identical to the photo's own counts as a hit;
- ``eval/camera_top1`` against ``eval/chance`` (:mod:`exiflang.train.retrieval`) when the set holds
  photos of two or more cameras; ``eval/metric`` (which ranks the "best" checkpoint) is the
  camera top-1, else ``i2t_r1``.

Sentences use the run's ``data.text_format``; the random-order formats draw one fixed order
per photo (seeded by its key), so every evaluation reads the same sentences.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exiflang.pipeline.exif.text import render_text
from exiflang.train.data.crops import normalise
from exiflang.train.data.shuffle import stable_seed
from exiflang.train.loss import clip_loss, text_ids_from_strings
from exiflang.train.retrieval import CAMERA_TAG, camera_top1_emb, grid_embeddings, grid_patches, iter_samples

log = logging.getLogger("exiflang.train")
_CENTRE = 4  # index of the centre patch after the 2x2 grid
_TEXT_CHUNK = 64  # sentences per text-encoder call


@dataclass
class HeldOutSet:
    """The fixed held-out photos: ``patches`` uint8 ``[N, 5, P, P, 3]`` (2x2 grid, then centre)."""

    keys: list[str]
    exifs: list[dict[str, str]]
    patches: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def load_heldout(cfg: Any) -> HeldOutSet:
    """Read and cut ``cfg.run.eval_data``'s first ``cfg.run.eval_samples`` photos that are at
    least one patch on each side.  One-line ``OSError`` / ``ValueError`` for a set that cannot
    be read or holds no usable photo."""
    patch, keys, exifs, rows = cfg.data.patch_size, [], [], []
    for key, img, exif in iter_samples(
        cfg.run.eval_data, cfg.run.eval_samples, cfg.data.read_policy(), cfg.data.storage_options
    ):
        if min(img.size) < patch:
            continue
        w, h = img.size
        left, top = (w - patch) // 2, (h - patch) // 2
        centre = np.asarray(img.crop((left, top, left + patch, top + patch)))
        rows.append(np.concatenate([grid_patches(img, patch), centre[None]]))
        keys.append(key)
        exifs.append(exif)
    if not rows:
        raise ValueError(f"{cfg.run.eval_data}: no held-out photo of at least {patch} px a side")
    return HeldOutSet(keys, exifs, np.stack(rows))


@torch.no_grad()
def _text_embeddings(model: Any, tokenizer: Any, texts: Sequence[str], max_len: int, device: str) -> torch.Tensor:
    """``[N, D]`` L2-normalised sentence embeddings, in chunks."""
    out = []
    for i in range(0, len(texts), _TEXT_CHUNK):
        tok = tokenizer(
            list(texts[i : i + _TEXT_CHUNK]), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        out.append(model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device)))
    return torch.cat(out)


def recall_at(sim: torch.Tensor, same: torch.Tensor, k: int) -> float:
    """Share of query rows of ``sim [Q, C]`` whose top ``k`` columns hold one that ``same [Q, C]``
    (bool) marks as a right answer."""
    top = sim.topk(min(k, sim.shape[1]), dim=1).indices
    return float(same.gather(1, top).any(1).float().mean())


@torch.no_grad()
def _loss(model: Any, held: HeldOutSet, txt: torch.Tensor, ids: torch.Tensor, batch: int, device: str) -> float:
    """The training loss over full batches of centre patches (one batch of all when fewer)."""
    size = min(batch, len(held))
    losses = []
    for i in range(0, len(held) - size + 1, size):
        img = model.encode_image(normalise(list(held.patches[i : i + size, _CENTRE])).to(device))
        losses.append(
            float(
                clip_loss(img.float(), txt[i : i + size].float(), model.logit_scale.float(), text_ids=ids[i : i + size])
            )
        )
    return float(np.mean(losses))


@torch.no_grad()
def heldout_metrics(
    model: Any,
    tokenizer: Any,
    vocab: Sequence[str],
    held: HeldOutSet,
    *,
    fmt: str,
    clean: bool,
    batch: int,
    max_len: int,
    device: str = "cpu",
) -> dict[str, float]:
    """The numbers of the module docstring (keys without the ``eval/`` prefix)."""
    was_training = model.training
    model.eval()
    try:
        texts = [
            render_text(e, vocab, fmt, clean=clean, rng=random.Random(stable_seed("heldout", k)))
            for k, e in zip(held.keys, held.exifs)
        ]
        ids = text_ids_from_strings(texts)
        txt = _text_embeddings(model, tokenizer, texts, max_len, device)
        img = grid_embeddings(model, list(held.patches[:, :_CENTRE]), device)
        same = (ids[:, None] == ids[None, :]).to(img.device)
        sim = img @ txt.T
        out = {
            "loss": _loss(model, held, txt, ids, batch, device),
            "i2t_r1": recall_at(sim, same, 1),
            "i2t_r5": recall_at(sim, same, 5),
            "t2i_r1": recall_at(sim.T, same, 1),
            "t2i_r5": recall_at(sim.T, same, 5),
            "images": float(len(held)),
            "metric": 0.0,
        }
        out["metric"] = out["i2t_r1"]
        with_cam = [n for n, e in enumerate(held.exifs) if CAMERA_TAG in e]
        try:
            out.update(
                camera_top1_emb(
                    model, tokenizer, vocab, img[with_cam], [held.exifs[n] for n in with_cam], fmt=fmt, device=device
                )
            )
        except ValueError as exc:  # e.g. one camera in the held-out set: the rest still counts
            log.info("held-out camera top-1 skipped: %s", exc)
        return out
    finally:
        model.train(was_training)


class HeldOutEvaluator:
    """``evaluate(model, tokenizer, tags) -> {name: value}`` for the engine (rank 0); the set is
    read on :meth:`load` (call it before training: a bad set fails the run at once)."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.held: HeldOutSet | None = None

    def load(self) -> HeldOutEvaluator:
        self.held = load_heldout(self.cfg)
        log.info("held-out set: %d photos from %s", len(self.held), self.cfg.run.eval_data)
        return self

    def __call__(self, model: Any, tokenizer: Any, tags: dict) -> dict[str, float]:
        if getattr(model, "text", None) is None:  # CropCLR: no sentences to retrieve
            return {}
        if self.held is None:
            self.load()
        assert self.held is not None
        data = self.cfg.data
        return heldout_metrics(
            model,
            tokenizer,
            tags["tags"],
            self.held,
            fmt=data.text_format,
            clean=data.clean_values,
            batch=data.batch_size,
            max_len=data.max_text_len,
            device=str(next(model.parameters()).device),
        )
