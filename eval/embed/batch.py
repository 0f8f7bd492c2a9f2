"""Photo and EXIF-text embeddings in batches that span photos (the compute half of ``exiflang embed``).

- :class:`PhotoEncoder` — several decoded photos -> one float32 ``[n, D]`` row each: the mean of
  the L2-normalised embeddings of a fixed patch grid (``mode="grid"``: :func:`even_grid`
  ``per_side x per_side``; ``mode="single"``: the centre patch), re-normalised.  The patches of
  many photos go through the model together (a batch of 256 holds sixteen 4x4 grids), which is
  what keeps a GPU busy; only the patches are cut and normalised, never the whole photo (a
  12-megapixel image as float32 would be 144 MB for 16 patches of 124 px).
- :class:`TextEncoder` — EXIF dicts -> float32 ``[n, D]`` through the model's text tower, rendered
  exactly as the trainer renders them (format, value cleaning, vocabulary, max length).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from exiflang.eval.embed.patches import Grid, PatchEmbedder, even_grid
from exiflang.pipeline.exif.text import render_text
from exiflang.train.normalize import CLIP_MEAN, CLIP_STD

MODES = ("grid", "single")


def photo_grid(height: int, width: int, patch: int, per_side: int, mode: str) -> Grid:
    """The grid one photo is embedded with; ``ValueError`` when it is smaller than one patch."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    return even_grid(height, width, patch, 1 if mode == "single" else per_side)


def crop_patches(rgb: np.ndarray, grid: Grid) -> np.ndarray:
    """``uint8 [H,W,3]`` -> ``uint8 [N,P,P,3]``, the grid's patches in raster order (a copy)."""
    p = grid.patch
    return np.stack([rgb[y : y + p, x : x + p] for y, x in grid.corners().tolist()])


def normalise_patches(patches: np.ndarray) -> torch.Tensor:
    """``uint8 [N,P,P,3]`` (0..255) -> CLIP-normalised ``float32 [N,3,P,P]``.

    The same float operations, in the same order, as :func:`exiflang.eval.embed.patches.normalise_image`
    (divide by 255, subtract the mean, divide by the std), so the values are identical to
    cutting the patches from a normalised whole image.
    """
    x = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


class PhotoEncoder:
    """Batched photo embeddings (see the module docstring); ``embedder.batch_size`` patches per forward."""

    def __init__(self, embedder: PatchEmbedder, patch: int = 124, per_side: int = 4, mode: str = "grid") -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {MODES}")
        self.embedder, self.patch, self.per_side, self.mode = embedder, patch, per_side, mode

    @property
    def patches_per_photo(self) -> int:
        return 1 if self.mode == "single" else self.per_side**2

    @property
    def photos_per_batch(self) -> int:
        """How many photos' grids fill one forward batch (at least 1)."""
        return max(1, self.embedder.batch_size // self.patches_per_photo)

    def patches(self, rgb: np.ndarray) -> np.ndarray:
        """One photo's grid patches, ``uint8 [N,P,P,3]`` (``ValueError`` when smaller than a patch)."""
        return crop_patches(rgb, photo_grid(rgb.shape[0], rgb.shape[1], self.patch, self.per_side, self.mode))

    def embed_patches(self, per_photo: Sequence[np.ndarray]) -> np.ndarray:
        """Each photo's ``uint8 [N_i,P,P,3]`` patches -> float32 ``[len, D]``, rows L2-normalised."""
        if not per_photo:
            return np.zeros((0, 0), np.float32)
        owner = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(per_photo)])
        allp = np.concatenate(per_photo)
        bs = self.embedder.batch_size
        parts = [self.embedder.embed_tensor(normalise_patches(allp[s : s + bs])) for s in range(0, len(allp), bs)]
        emb = torch.cat(parts)
        sums = torch.zeros(len(per_photo), emb.shape[1], dtype=torch.float32).index_add_(0, owner, emb)
        return torch.nn.functional.normalize(sums, dim=1).numpy()

    def embed(self, photos: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded photos ``uint8 [H,W,3]`` -> float32 ``[len(photos), D]``, rows L2-normalised."""
        return self.embed_patches([self.patches(p) for p in photos])


def stable_seed(text: str) -> int:
    """A per-key seed that does not change between processes (Python's ``hash`` is salted)."""
    return zlib.crc32(text.encode())


class TextEncoder:
    """EXIF dicts -> the model's text embeddings, rendered as in training.

    ``vocab``: tag order of the model's ``tags.json``; ``fmt``/``clean``/``max_length``: the
    run's ``data.text_format`` / ``data.clean_values`` / ``data.max_text_len``.  The ``shuffled``
    format is seeded by the sample key, so a rerun gives the same rows.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        vocab: Sequence[str],
        fmt: str = "paper",
        *,
        clean: bool = False,
        max_length: int | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if getattr(model, "text", None) is None or tokenizer is None:
            raise ValueError("this model has no text tower or no tokenizer: --text is not available")
        self.model, self.tokenizer, self.vocab = model, tokenizer, list(vocab)
        self.fmt, self.clean = fmt, clean
        self.max_length = int(max_length or tokenizer.model_max_length)
        self.device = torch.device(device)
        self.batch_size = max(1, batch_size)

    def render(self, exif: dict, key: str) -> str:
        return render_text(exif, self.vocab, self.fmt, clean=self.clean, rng=random.Random(stable_seed(key)))

    @torch.no_grad()
    def embed(self, exifs: Sequence[dict], keys: Sequence[str]) -> np.ndarray:
        """``{tag: value}`` dicts (with their sample keys) -> float32 ``[n, D]``, rows L2-normalised."""
        texts = [self.render(e, k) for e, k in zip(exifs, keys)]
        out = []
        for s in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(
                texts[s : s + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            use_bf16 = self.device.type == "cuda"
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
                emb = self.model.encode_text(tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device))
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
