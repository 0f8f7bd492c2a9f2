"""Held-out zero-shot camera identification: image -> which camera's EXIF text, among K.

For each held-out photo, K candidate sentences are built from its own EXIF with the
camera-constant tags (those with one value per camera model in the held-out set: Make,
Model, Software, resolutions, ...) replaced by each camera's values; the image embedding
(mean over a fixed grid of crops) picks the most similar.  Top-1 accuracy against chance
1/K says whether the image encoder learned camera traces.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from pipeline.image_policy import ImagePolicy, decode, default_policy
from pipeline.text import render_text
from train.crops import pil_to_rgb
from train.normalize import to_clip_tensor
from train.samples import IMAGE_EXTS, read_groups, read_member

CAMERA_TAG = "Model"
log = logging.getLogger("exiflang.train")


def _decode_rgb(data: bytes, policy: ImagePolicy) -> Image.Image:
    """The image policy's header check, then a full decode to RGB (the trainer's conversion)."""
    with policy.open(data) as img:
        decode(img)
        return Image.fromarray(pil_to_rgb(img))


def read_samples(data: Path, limit: int = 10_000) -> list[tuple[Image.Image, dict[str, str]]]:
    """(decoded RGB image, exif) for the samples of the tars in ``data`` (sorted, up to ``limit``)."""
    out: list[tuple[Image.Image, dict[str, str]]] = []
    policy = default_policy()
    for tar_path in sorted(Path(data).glob("*.tar")):
        with open(tar_path, "rb") as fh:
            for _, members in read_groups(tar_path):
                img_ext = next((e for e in IMAGE_EXTS if e in members), None)
                if img_ext is None or "exif.json" not in members:
                    continue
                try:
                    img = _decode_rgb(read_member(fh, members[img_ext]), policy)
                except Exception:  # noqa: BLE001 - a corrupt or policy-refused held-out sample is left out
                    continue
                out.append((img, json.loads(read_member(fh, members["exif.json"]))))
                if len(out) >= limit:
                    return out
    return out


def grid_crops(img: Image.Image, patch: int, per_side: int = 2) -> torch.Tensor:
    """``per_side**2`` patches on a regular grid at native resolution -> ``[n,3,P,P]``."""
    arr = np.asarray(img)
    h, w = arr.shape[:2]
    ys = np.linspace(0, h - patch, per_side).astype(int)
    xs = np.linspace(0, w - patch, per_side).astype(int)
    return torch.stack([to_clip_tensor(arr[y:y + patch, x:x + patch]) for y in ys for x in xs])


def camera_constant_tags(exifs: Sequence[dict[str, str]], vocab: Sequence[str]) -> list[str]:
    """Vocabulary tags whose value never varies within a camera model (given >= 2 cameras)."""
    values: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for exif in exifs:
        cam = exif.get(CAMERA_TAG)
        for tag in vocab:
            values[tag][cam].add(exif.get(tag))
    return [t for t in vocab if all(len(v) == 1 for v in values[t].values())]


@torch.no_grad()
def camera_top1(model: Any, tokenizer: Any, vocab: Sequence[str], data: Path, *, patch: int = 124,
                fmt: str = "paper", device: str = "cpu") -> dict[str, float]:
    """Top-1 accuracy of picking the photo's own camera among the K held-out cameras."""
    samples = [(i, e) for i, e in read_samples(data) if CAMERA_TAG in e and min(i.size) >= patch]
    cams = sorted({e[CAMERA_TAG] for _, e in samples})
    if len(cams) < 2:
        raise ValueError(f"{data}: need held-out photos of at least 2 cameras, found {len(cams)}")
    const = camera_constant_tags([e for _, e in samples], vocab)
    proto = {e[CAMERA_TAG]: {t: e[t] for t in const if t in e} for _, e in samples}
    model.eval()
    correct = 0
    for img, exif in samples:
        emb = model.encode_image(grid_crops(img, patch).to(device)).mean(0)
        emb = emb / emb.norm()
        texts = [render_text({**exif, **proto[c]}, vocab, fmt) for c in cams]
        tok = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        txt = model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device))
        correct += int(cams[int((txt @ emb).argmax())] == exif[CAMERA_TAG])
    acc = correct / len(samples)
    return {"camera_top1": acc, "chance": 1 / len(cams), "cameras": float(len(cams)),
            "images": float(len(samples)), "metric": acc}


def camera_evaluator(cfg: Any) -> Callable[[Any, Any, dict], dict[str, float]]:
    """An ``evaluate(model, tokenizer, tags)`` for the engine, on ``cfg.run.eval_data``."""
    def evaluate(model: Any, tokenizer: Any, tags: dict) -> dict[str, float]:
        if getattr(model, "text", None) is None:
            return {}
        device = str(next(model.parameters()).device)
        try:
            return camera_top1(model, tokenizer, tags["tags"], Path(cfg.run.eval_data),
                               patch=cfg.data.patch_size, fmt=cfg.data.text_format, device=device)
        except ValueError as exc:  # e.g. a held-out set with one camera: report, keep training
            log.warning("held-out evaluation skipped: %s", exc)
            return {}
    return evaluate
