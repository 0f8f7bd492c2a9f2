"""The training loop: batches -> contrastive loss -> guarded optimiser step, with logging,
held-out numbers, checkpoints and exact resume (same parameters as an uninterrupted run, for
one process or N).

Randomness: each process seeds python/numpy/torch from ``rank_seed(run.seed, rank)`` (rank 0:
the seed itself), so ranks draw their own dropout masks; DDP copies rank 0's initial weights to
every rank.  Each rank's RNG state is gathered into the checkpoint and restored on its rank.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from exiflang.train import checkpoint
from exiflang.train.card import training_card, write_model_card
from exiflang.train.config import TrainConfig
from exiflang.train.data.loader import build_loader
from exiflang.train.data.samples import load_vocabulary
from exiflang.train.data.shard_store import join, read_file
from exiflang.train.data.shuffle import rank_seed
from exiflang.train.distributed import DistEnv, all_reduce_mean, barrier, gather_to_all
from exiflang.train.encoders import text_init_folder
from exiflang.train.logger import RunLogger
from exiflang.train.loss import DistributedClipLoss, crop_consistency_loss
from exiflang.train.model import ExifClip, load_weights
from exiflang.train.optim import build_optimizer, build_scheduler
from exiflang.train.tokenizer import build_tokenizer

log = logging.getLogger("exiflang.train")


@dataclass
class Position:
    """Where a run is: optimiser steps taken, epoch, batches consumed in that epoch."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    nan_skipped: int = 0


def read_tags(cfg: TrainConfig) -> dict[str, Any]:
    """The dataset's vocabulary (``tags.json`` beside the shards, a folder or a URL), or the
    configured override."""
    path, policy = cfg.data.tags_file or join(cfg.data.data, "tags.json"), cfg.data.read_policy()
    load_vocabulary(path, policy, cfg.data.storage_options)  # one-line errors: missing, bad hash
    doc = json.loads(read_file(path, policy, cfg.data.storage_options))
    if cfg.data.tags:
        doc = {**doc, "tags": list(cfg.data.tags)}
    return doc


def build_model(cfg: TrainConfig, tokenizer: Any) -> ExifClip:
    pretrained = text_init_folder(cfg.model.text_init) is not None
    cfg.model.vocab_size = max(cfg.model.vocab_size if pretrained else 0, len(tokenizer))
    cfg.model.cropclr = cfg.model.cropclr or cfg.data.cropclr
    return ExifClip(cfg.model)


def make_tokenizer(cfg: TrainConfig) -> Any:
    """``run.tokenizer``: ``auto`` (the text_init folder's — ``minilm``'s is BERT uncased —, else
    the packaged BERT-uncased vocabulary), ``bert-uncased``, or a local tokenizer folder."""
    choice, n = cfg.run.tokenizer, cfg.data.max_text_len
    if choice == "auto":
        folder = text_init_folder(cfg.model.text_init)
        return build_tokenizer("auto", str(folder) if folder else None, max_length=n)
    if choice == "bert-uncased":
        return build_tokenizer("bert-uncased", max_length=n)
    return build_tokenizer("folder", choice, max_length=n)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device) in this process."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Batches:
    """Endless batches across epochs, tracking the position for exact resume."""

    def __init__(self, cfg: TrainConfig, tokenizer: Any, env: DistEnv, pos: Position) -> None:
        self.cfg, self.tokenizer, self.env, self.pos = cfg, tokenizer, env, pos
        self.loader = self._loader()
        self._it: Iterator[dict] = iter(self.loader)
        self.skipped_before = 0

    def _loader(self) -> Any:
        return build_loader(
            self.cfg.data,
            self.tokenizer,
            rank=self.env.rank,
            world_size=self.env.world_size,
            epoch=self.pos.epoch,
            start_batch=self.pos.batch,
        )

    def next(self) -> dict:
        try:
            batch = next(self._it)
        except StopIteration:
            self.skipped_before += self.loader.stats().get("skipped", 0)
            self.pos.epoch, self.pos.batch = self.pos.epoch + 1, 0
            self.loader = self._loader()
            self._it = iter(self.loader)
            batch = next(self._it)
        self.pos.batch += 1
        return batch

    def skipped(self) -> int:
        return self.skipped_before + self.loader.stats().get("skipped", 0)


def _autocast(env: DistEnv, precision: str) -> Any:
    bf16 = precision == "bf16" or (precision == "auto" and env.device.type == "cuda")
    return torch.autocast(env.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def _step(model: Any, loss_fn: Any, batch: dict, env: DistEnv, cfg: TrainConfig) -> torch.Tensor:
    """Forward + loss for one batch (tensors moved to the device)."""
    images = batch["images"].to(env.device, non_blocking=True)
    with _autocast(env, cfg.run.precision):
        if cfg.data.cropclr:
            a, b, scale = model(images, images2=batch["images2"].to(env.device, non_blocking=True))
            return loss_fn(a.float(), b.float(), scale.float())
        ids, mask = batch["input_ids"], batch["attention_mask"]
        inverse = None
        if cfg.data.group_crops:
            # Each distinct text is encoded once and its embedding reused for every crop that
            # shares it: the same loss and gradients as encoding every row (with text dropout 0;
            # with dropout, copies share one mask), at 1/K of the text cost.  Only when grouping:
            # elsewhere duplicates are rare and the dropout draws of existing recipes stay as they were.
            first, inverse = unique_rows(batch["text_ids"])
            ids, mask = ids[first], mask[first]
            length = max(1, int(mask.sum(1).max()))  # the longest kept text, not the batch's
            ids, mask = ids[:, :length], mask[:, :length]
        img, txt, scale = model(images, ids.to(env.device), mask.to(env.device))
        if inverse is not None:
            txt = txt[inverse.to(env.device)]
        loss = loss_fn(img.float(), txt.float(), scale.float(), text_ids=batch["text_ids"])
        if cfg.optim.crop_consistency > 0:
            _, photos = unique_rows(torch.tensor([hash(k) for k in batch["keys"]]))
            loss = loss + cfg.optim.crop_consistency * crop_consistency_loss(img.float(), photos, scale.float())
        return loss


def unique_rows(text_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B]`` text ids -> (``first [U]``: the first row of each distinct id, in row order;
    ``inverse [B]``: for each row, its position in ``first``).  ``first[inverse]`` picks, for
    every row, the first row with the same id."""
    ids = text_ids.cpu()
    seen: dict[int, int] = {}
    first: list[int] = []
    inverse = []
    for row, value in enumerate(ids.tolist()):
        if value not in seen:
            seen[value] = len(first)
            first.append(row)
        inverse.append(seen[value])
    return torch.tensor(first, dtype=torch.long), torch.tensor(inverse, dtype=torch.long)


def _restore(run: Path, resume: str | None, model: ExifClip, opt: Any, sched: Any, rank: int = 0) -> Position:
    """The position to start from: step 0 without ``resume`` (or ``latest`` in a run with no
    checkpoint), else the checkpoint's weights, optimizer, scheduler and RNG loaded (one-line
    errors naming the file; nothing in a checkpoint is unpickled beyond plain data)."""
    path = checkpoint.resolve(run, resume) if resume else None
    if path is None:
        return Position()
    # The weights only: the model is already built from the same config.
    load_weights(model, path / checkpoint.WEIGHTS)
    state = checkpoint.load_state(path)
    position = checkpoint.apply_state(state, path, opt, sched, rank)
    try:
        pos = Position(**position)
    except TypeError as exc:
        raise checkpoint.CheckpointError(f"{path / checkpoint.STATE}: bad position ({exc})") from exc
    log.info("resumed from %s at step %d", path, pos.step)
    return pos


def _optimise(
    ddp: Any,
    model: ExifClip,
    loss_fn: Any,
    batch: dict,
    opt: Any,
    sched: Any,
    pos: Position,
    env: DistEnv,
    cfg: TrainConfig,
) -> torch.Tensor:
    """One guarded optimiser step: backward, clip, skip on a non-finite loss or gradient."""
    ddp.train()
    loss = _step(ddp, loss_fn, batch, env, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    # DDP has averaged the gradients, so every rank sees the same norm and skips alike.
    if torch.isfinite(norm) and torch.isfinite(loss):
        opt.step()
    else:
        pos.nan_skipped += 1
        log.warning("step %d: non-finite loss/gradient, step skipped", pos.step)
    sched.step()
    pos.step += 1
    return loss


def train(
    cfg: TrainConfig, run: Path, env: DistEnv, resume: str | None = None, evaluate: Any | None = None
) -> dict[str, Any]:
    """Train ``cfg.run.steps`` optimiser steps into ``run``; returns the final metrics.

    ``evaluate(model, tokenizer, tags) -> dict`` (rank 0) runs every ``eval_every`` steps and
    at the end; the most recent ``"metric"`` at a checkpoint ranks it for "best".
    """
    seed_everything(rank_seed(cfg.run.seed, env.rank))
    tags = read_tags(cfg)
    tokenizer = make_tokenizer(cfg)
    model = build_model(cfg, tokenizer).to(env.device)
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.run.steps, cfg.optim)
    pos = _restore(run, resume, model, opt, sched, env.rank)
    ddp = (
        torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.local_rank] if env.device.type == "cuda" else None
        )
        if env.distributed
        else model
    )
    loss_fn = DistributedClipLoss()
    batches = Batches(cfg, tokenizer, env, pos)
    logger = RunLogger(run, env.is_main, cfg.run.tensorboard, cfg.run.wandb, cfg.run.wandb_project, cfg.to_dict())
    bar = tqdm(
        total=cfg.run.steps, initial=pos.step, desc="train", unit="step", disable=not env.is_main, dynamic_ncols=True
    )
    window = {"t0": time.perf_counter(), "wait": 0.0, "n": 0, "loss": 0.0, "steps": 0}
    result: dict[str, Any] = {}
    last_metric: float | None = None
    try:  # the bar ends its line on failure too, so that an error is the last line printed
        while pos.step < cfg.run.steps:
            t_wait = time.perf_counter()
            batch = batches.next()
            window["wait"] += time.perf_counter() - t_wait
            loss = _optimise(ddp, model, loss_fn, batch, opt, sched, pos, env, cfg)
            window["n"] += len(batch["images"])
            window["loss"] += float(all_reduce_mean(loss.detach(), env))
            window["steps"] += 1
            bar.update(1)
            last = pos.step == cfg.run.steps
            if pos.step % cfg.run.log_every == 0 or last:
                result = _log(logger, window, pos, model, opt, batches, env, cfg)
                bar.set_postfix(loss=f"{result['loss']:.3f}")
            if (
                evaluate is not None
                and env.is_main
                and (last or (cfg.run.eval_every and pos.step % cfg.run.eval_every == 0))
            ):
                scores = {f"eval/{k}": v for k, v in evaluate(model, tokenizer, tags).items()}
                last_metric = scores.get("eval/metric", last_metric)
                logger.log(pos.step, scores)
                result.update(scores)
            if pos.step % cfg.run.ckpt_every == 0 or last:
                _checkpoint(run, pos, model, tokenizer, tags, opt, sched, env, cfg, last_metric)
    finally:
        bar.close()
    final = {**result, "step": pos.step, "nan_skipped": pos.nan_skipped}
    if env.is_main:
        model.save_pretrained(run / "model", tokenizer=tokenizer, tags=tags)
        _write_card(run / "model", cfg, tags, final)
    logger.close()
    return final


def _write_card(model_dir: Path, cfg: TrainConfig, tags: dict, result: dict[str, Any]) -> None:
    """The model card (what it was trained on, held-out numbers); a failure costs the card, not the run."""
    try:
        write_model_card(model_dir, training_card(cfg, tags, result))
    except (OSError, ValueError) as exc:
        log.warning("%s: model card not written (%s)", model_dir, exc)


def _checkpoint(
    run: Path,
    pos: Position,
    model: ExifClip,
    tokenizer: Any,
    tags: dict,
    opt: Any,
    sched: Any,
    env: DistEnv,
    cfg: TrainConfig,
    metric: float | None,
) -> None:
    """Rank 0 writes checkpoint ``pos.step`` with every rank's RNG state (each rank's own dropout
    stream, gathered from all ranks); all ranks wait for it."""
    rngs = dict(enumerate(gather_to_all(checkpoint.rng_state(), env)))
    if env.is_main:
        state = {
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "position": vars(pos).copy(),
            "config": cfg.to_dict(),
        }
        final = checkpoint.save(run, pos.step, model, tokenizer, tags, state, cfg.run.keep_last, metric, rngs=rngs)
        _write_card(final, cfg, tags, {"step": pos.step})  # a checkpoint is a model folder too
    barrier(env)


def _log(
    logger: RunLogger,
    window: dict,
    pos: Position,
    model: ExifClip,
    opt: Any,
    batches: Batches,
    env: DistEnv,
    cfg: TrainConfig,
) -> dict[str, Any]:
    elapsed = max(1e-9, time.perf_counter() - window["t0"])
    metrics = {
        "loss": window["loss"] / max(1, window["steps"]),
        "lr": opt.param_groups[0]["lr"],
        "logit_scale": float(model.logit_scale),
        "samples_per_s": window["n"] * env.world_size / elapsed,
        "data_wait_frac": window["wait"] / elapsed,
        "epoch": pos.epoch,
        "skipped_samples": batches.skipped(),
        "nan_skipped": pos.nan_skipped,
    }
    if not math.isfinite(metrics["loss"]):
        log.warning("step %d: loss is %s", pos.step, metrics["loss"])
    logger.log(pos.step, metrics)
    window.update(t0=time.perf_counter(), wait=0.0, n=0, loss=0.0, steps=0)
    return metrics
