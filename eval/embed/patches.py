"""Patch grids over a full-resolution photo and batched patch embeddings from a model's image tower.

Two grids:

- :func:`splice_grid` — the forensic grid of the authors' code (docs/design.md §6): patch ``P``
  (124), ``stride = max((max(H, W) - P) // n, 1)`` with ``n`` = 30 (the paper says 25), the same
  stride along both axes, top-left corners ``0, stride, 2*stride, ... <= side - P``, raster order;
- :func:`even_grid` — ``per_side x per_side`` patches spread evenly from edge to edge (the
  embedding/lookup grid; ``per_side=1`` is the centre patch).

:class:`PatchEmbedder` normalises the image once (CLIP mean/std) and cuts the patches from the
normalised tensor in batches, under ``torch.no_grad`` (and bf16 autocast on CUDA).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exiflang.train.normalize import CLIP_MEAN, CLIP_STD


@dataclass(frozen=True)
class Grid:
    """Patch positions on an ``height x width`` image: ``ys`` x ``xs`` top-left corners, raster order."""

    height: int
    width: int
    patch: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of patches."""
        return len(self.ys), len(self.xs)

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    def corners(self) -> np.ndarray:
        """``int64 [N, 2]`` (y, x) top-left corners in raster order (row-major over ys, xs)."""
        yy, xx = np.meshgrid(np.asarray(self.ys), np.asarray(self.xs), indexing="ij")
        return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.int64)

    def mask_share(self, mask: np.ndarray) -> np.ndarray:
        """``float64 [N]`` in 0..1: the share of each patch's pixels inside ``mask`` (``bool [H,W]``),
        raster order — how far a patch lies in a splice."""
        p = self.patch
        return np.array([mask[y : y + p, x : x + p].mean() for y, x in self.corners().tolist()])


def _check_size(height: int, width: int, patch: int) -> None:
    if patch <= 0:
        raise ValueError(f"patch size {patch}: must be positive")
    if min(height, width) < patch:
        raise ValueError(f"image {width}x{height} is smaller than one {patch}x{patch} patch")


def splice_grid(height: int, width: int, patch: int = 124, per_side: int = 30) -> Grid:
    """The authors' grid: one stride ``(max(H,W) - P) // per_side`` (at least 1) for both axes."""
    _check_size(height, width, patch)
    if per_side <= 0:
        raise ValueError(f"patches per side {per_side}: must be positive")
    stride = max((max(height, width) - patch) // per_side, 1)
    return Grid(
        height, width, patch, tuple(range(0, height - patch + 1, stride)), tuple(range(0, width - patch + 1, stride))
    )


def even_grid(height: int, width: int, patch: int = 124, per_side: int = 4) -> Grid:
    """``per_side**2`` patches, corners spread evenly from edge to edge (1 -> the centre patch)."""
    _check_size(height, width, patch)
    if per_side <= 0:
        raise ValueError(f"patches per side {per_side}: must be positive")
    if per_side == 1:
        return Grid(height, width, patch, ((height - patch) // 2,), ((width - patch) // 2,))
    ys = np.linspace(0, height - patch, per_side).round().astype(int)
    xs = np.linspace(0, width - patch, per_side).round().astype(int)
    return Grid(height, width, patch, tuple(int(v) for v in ys), tuple(int(v) for v in xs))


def normalise_image(rgb: np.ndarray) -> torch.Tensor:
    """``uint8 [H,W,3]`` (0..255) -> CLIP-normalised ``float32 [3,H,W]`` (about -1.8..2.2), once per image."""
    # Pixels decoded by Pillow are often a read-only buffer, which torch.from_numpy warns about.
    arr = np.ascontiguousarray(rgb) if rgb.flags.writeable else np.array(rgb, order="C")
    x = torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(255.0)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def cut_patches(image: torch.Tensor, corners: np.ndarray, patch: int) -> torch.Tensor:
    """``[3,H,W]`` + ``[N,2]`` (y, x) corners -> ``[N,3,P,P]`` (a copy)."""
    return torch.stack([image[:, y : y + patch, x : x + patch] for y, x in corners.tolist()])


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class PatchEmbedder:
    """Batched, gradient-free patch embeddings from ``model.encode_image``.

    ``model``: an :class:`exiflang.train.model.ExifClip` (or anything with ``encode_image([B,3,P,P]) ->
    [B,D]``).  Output rows are L2-normalised ``float32`` on the CPU.
    """

    def __init__(
        self, model: Any, device: str | torch.device = "auto", batch_size: int = 256, precision: str = "auto"
    ) -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.batch_size = max(1, int(batch_size))
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"precision {precision!r}: expected auto, bf16 or fp32")
        self.precision = precision

    def _batches(self, image: torch.Tensor, corners: np.ndarray, patch: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(corners), self.batch_size):
            yield cut_patches(image, corners[start : start + self.batch_size], patch)

    @torch.no_grad()
    def embed_tensor(self, patches: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised ``[B,3,P,P]`` -> L2-normalised ``float32 [B,D]`` on the CPU."""
        x = patches.to(self.device, non_blocking=True)
        use_bf16 = self.precision == "bf16" and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            emb = self.model.encode_image(x)
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_grid(self, rgb: np.ndarray, grid: Grid, normalised: torch.Tensor | None = None) -> torch.Tensor:
        """Every patch of ``grid`` over ``rgb`` (``uint8 [H,W,3]``) -> ``float32 [N,D]``, raster order."""
        if rgb.shape[:2] != (grid.height, grid.width):
            raise ValueError(f"grid is for {grid.width}x{grid.height}, image is {rgb.shape[1]}x{rgb.shape[0]}")
        image = normalise_image(rgb) if normalised is None else normalised
        parts = [self.embed_tensor(b) for b in self._batches(image, grid.corners(), grid.patch)]
        return torch.cat(parts)

    def embed_photo(self, rgb: np.ndarray, patch: int = 124, per_side: int = 4) -> torch.Tensor:
        """One photo's embedding: the mean of an :func:`even_grid`'s patch embeddings, re-normalised -> ``[D]``."""
        grid = even_grid(rgb.shape[0], rgb.shape[1], patch, per_side)
        return torch.nn.functional.normalize(self.embed_grid(rgb, grid).mean(0), dim=0)
