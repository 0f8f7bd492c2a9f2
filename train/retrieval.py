"""Held-out zero-shot camera identification: image -> which camera's EXIF text, among K.

For each held-out photo, K candidate sentences are built from its own EXIF with the
camera-constant tags (those with one value per camera model in the held-out set: Make,
Model, Software, resolutions, ...) replaced by each camera's values; the image embedding
(mean over a fixed grid of crops) picks the most similar.  Top-1 accuracy against chance
1/K says whether the image encoder learned camera traces.  The held-out shards are a local
folder or a URL (:mod:`exiflang.train.data.shard_store`).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from exiflang.pipeline.exif.text import render_text
from exiflang.pipeline.image_policy import ImagePolicy, decode, default_policy, pil_to_rgb
from exiflang.train.data.crops import normalise
from exiflang.train.data.samples import IMAGE_EXTS, read_groups, read_member
from exiflang.train.data.shard_store import ReadPolicy, store_for
from exiflang.train.normalize import to_clip_tensor

CAMERA_TAG = "Model"


def _decode_rgb(data: bytes, policy: ImagePolicy) -> Image.Image:
    """The image policy's header check, then a full decode to RGB (the trainer's conversion)."""
    with policy.open(data) as img:
        decode(img)
        return Image.fromarray(pil_to_rgb(img))


def iter_samples(
    data: Path | str, limit: int = 10_000, policy: ReadPolicy | None = None, storage_options: dict | None = None
) -> Iterator[tuple[str, Image.Image, dict[str, str]]]:
    """(key, decoded RGB image, exif) for the samples of the tars in ``data`` (a folder or a URL;
    sorted tar order, up to ``limit``); corrupt or policy-refused samples are left out."""
    policy_img, n = default_policy(), 0
    store = store_for(data, policy, storage_options)
    for name in store.tar_names():
        with store.open(name) as fh:
            for key, members in read_groups(fh):
                img_ext = next((e for e in IMAGE_EXTS if e in members), None)
                if img_ext is None or "exif.json" not in members:
                    continue
                try:
                    img = _decode_rgb(read_member(fh, members[img_ext]), policy_img)
                    exif = json.loads(read_member(fh, members["exif.json"]))
                except Exception:  # noqa: BLE001 - a corrupt or policy-refused held-out sample is left out
                    continue
                yield key, img, exif
                n += 1
                if n >= limit:
                    return


def read_samples(data: Path | str, limit: int = 10_000) -> list[tuple[Image.Image, dict[str, str]]]:
    """(decoded RGB image, exif) for the samples of the tars in ``data`` (sorted, up to ``limit``)."""
    return [(img, exif) for _, img, exif in iter_samples(data, limit)]


def grid_patches(img: Image.Image, patch: int, per_side: int = 2) -> np.ndarray:
    """``per_side**2`` patches on a regular grid at native resolution -> uint8 ``[n,P,P,3]``."""
    arr = np.asarray(img)
    h, w = arr.shape[:2]
    ys = np.linspace(0, h - patch, per_side).astype(int)
    xs = np.linspace(0, w - patch, per_side).astype(int)
    return np.stack([arr[y : y + patch, x : x + patch] for y in ys for x in xs])


def grid_crops(img: Image.Image, patch: int, per_side: int = 2) -> torch.Tensor:
    """``per_side**2`` patches on a regular grid at native resolution -> ``[n,3,P,P]``."""
    arr = np.asarray(img)
    h, w = arr.shape[:2]
    ys = np.linspace(0, h - patch, per_side).astype(int)
    xs = np.linspace(0, w - patch, per_side).astype(int)
    return torch.stack([to_clip_tensor(arr[y : y + patch, x : x + patch]) for y in ys for x in xs])


def camera_constant_tags(exifs: Sequence[dict[str, str]], vocab: Sequence[str]) -> list[str]:
    """Vocabulary tags whose value never varies within a camera model (given >= 2 cameras)."""
    values: dict[str, dict[str | None, set]] = defaultdict(lambda: defaultdict(set))
    for exif in exifs:
        cam = exif.get(CAMERA_TAG)
        for tag in vocab:
            values[tag][cam].add(exif.get(tag))
    return [t for t in vocab if all(len(v) == 1 for v in values[t].values())]


@torch.no_grad()
def camera_top1(
    model: Any,
    tokenizer: Any,
    vocab: Sequence[str],
    data: Path | str,
    *,
    patch: int = 124,
    fmt: str = "paper",
    device: str = "cpu",
) -> dict[str, float]:
    """Top-1 accuracy of picking the photo's own camera among the K held-out cameras."""
    items = [(grid_patches(i, patch), e) for _, i, e in iter_samples(data) if CAMERA_TAG in e and min(i.size) >= patch]
    model.eval()
    emb = grid_embeddings(model, [g for g, _ in items], device)
    return camera_top1_emb(model, tokenizer, vocab, emb, [e for _, e in items], fmt=fmt, device=device, where=str(data))


@torch.no_grad()
def grid_embeddings(model: Any, grids: Sequence[np.ndarray], device: str = "cpu") -> torch.Tensor:
    """One embedding per photo: uint8 ``[n,P,P,3]`` patch stacks -> ``[N, D]``, each the mean of
    its patches' embeddings, L2-normalised (the model in eval mode)."""
    rows = []
    for grid in grids:
        emb = model.encode_image(normalise(list(grid)).to(device)).mean(0)
        rows.append(emb / emb.norm())
    return torch.stack(rows)


@torch.no_grad()
def camera_top1_emb(
    model: Any,
    tokenizer: Any,
    vocab: Sequence[str],
    image_emb: torch.Tensor,
    exifs: Sequence[dict[str, str]],
    *,
    fmt: str = "paper",
    device: str = "cpu",
    where: str = "held-out set",
) -> dict[str, float]:
    """:func:`camera_top1` from photo embeddings ``[N, D]`` (:func:`grid_embeddings`) and their
    exifs (each with a ``Model``)."""
    cams = sorted({e[CAMERA_TAG] for e in exifs})
    if len(cams) < 2:
        raise ValueError(f"{where}: need held-out photos of at least 2 cameras, found {len(cams)}")
    const = camera_constant_tags(exifs, vocab)
    proto = {e[CAMERA_TAG]: {t: e[t] for t in const if t in e} for e in exifs}
    model.eval()
    correct = 0
    for n, (emb, exif) in enumerate(zip(image_emb, exifs)):
        # Random-order formats: one fixed order per photo, the same for each camera's sentence.
        texts = [render_text({**exif, **proto[c]}, vocab, fmt, rng=random.Random(n)) for c in cams]
        tok = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        txt = model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device))
        correct += int(cams[int((txt @ emb.to(device)).argmax())] == exif[CAMERA_TAG])
    acc = correct / len(exifs)
    return {
        "camera_top1": acc,
        "chance": 1 / len(cams),
        "cameras": float(len(cams)),
        "images": float(len(exifs)),
        "metric": acc,
    }
