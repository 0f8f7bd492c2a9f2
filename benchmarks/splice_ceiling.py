"""The p-mAP a splice set allows at all: localization from ideal patch embeddings, per grid density.

Usage: python benchmarks/splice_ceiling.py SET [SET ...] [--per-side 10 20 30] [--noise 0 0.3]

Each SET is `exiflang make-splices` output (manifest.csv, masks).  For every spliced image the
patch grid of `exiflang.eval.embed.patches.splice_grid` (P = 124) is laid out and each patch gets the embedding
a perfect camera model would give: the unit mix ``(1 - s) * host + s * donor`` of two orthogonal
directions, ``s`` = the share of the patch's pixels inside the mask, plus isotropic Gaussian
noise of std ``--noise`` per dimension (64 dims).  `exiflang.eval.forensics.localize.localize` then runs unchanged
(votes, mean shift) and p-mAP is averaged over the spliced images.  What a trained model scores
on the same set can be read against this ceiling: on small photos a 124-px patch straddles the
splice boundary so often that even ideal embeddings cannot outline it.
The first set is the baseline of the "ratio" column.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exiflang.eval.benchmark.metrics import pixel_ap
from exiflang.eval.embed.patches import Grid, splice_grid
from exiflang.eval.forensics.localize import localize

DIM = 64


def ideal_embeddings(
    mask: np.ndarray, per_side: int, noise: float, rng: np.random.Generator, patch: int = 124
) -> tuple[torch.Tensor, Grid]:
    """``bool [H,W]`` mask -> (``float32 [N, 64]`` unit embeddings of the grid's patches, the grid)."""
    grid = splice_grid(mask.shape[0], mask.shape[1], patch, per_side)
    share = grid.mask_share(mask)
    emb = np.zeros((len(share), DIM))
    emb[:, 0], emb[:, 1] = 1 - share, share
    emb += noise * rng.standard_normal(emb.shape)
    return torch.nn.functional.normalize(torch.tensor(emb, dtype=torch.float32), dim=1), grid


def ceiling(root: Path, per_side: int, noise: float, seed: int = 0) -> tuple[float, int]:
    """Mean pixel AP over the spliced images of ``root`` (0..1) and their count."""
    rng = np.random.default_rng(seed)
    with (root / "manifest.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "spliced"]
    aps = []
    for r in rows:
        mask = np.asarray(Image.open(root / r["mask"]).convert("L")) > 127
        emb, grid = ideal_embeddings(mask, per_side, noise, rng)
        aps.append(pixel_ap(localize(emb, grid, ncuts=False).heatmap, mask))
    return float(np.mean(aps)), len(aps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+", type=Path)
    ap.add_argument("--per-side", type=int, nargs="+", default=[10, 20, 30])
    ap.add_argument("--noise", type=float, nargs="+", default=[0.05, 0.3])
    args = ap.parse_args(argv)
    print("| set | spliced | n | noise | ideal p-mAP | ratio to first set |")
    print("|---|---|---|---|---|---|")
    base: dict[tuple[int, float], float] = {}
    for root in args.sets:
        for n in args.per_side:
            for z in args.noise:
                value, count = ceiling(root, n, z)
                base.setdefault((n, z), value)
                print(f"| {root} | {count} | {n} | {z} | {value:.3f} | {value / base[(n, z)]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
