"""Splice-detection latency per image: patch embedding, vote averaging, mean shift, ncuts, total.

Our path (:class:`exiflang.eval.forensics.detector.Detector`: batched embeddings, one-matmul votes, vectorised mean
shift, dense-eigh ncuts) against the authors' approach in the same run on the same embeddings:
the per-pair Python loop for the votes (``cell_consistency_loop``), the loop + KD-tree mean shift
(``mean_shift_map_reference``; both test oracles in ``tests/eval/reference_forensics.py``), and scikit-learn's
``SpectralClustering`` for the two-way cut.  The embedding stage is the same network in both
columns and is run once.  Each baseline output is checked against ours (max |difference|).

Model: a random-init ``paper`` image tower (ResNet-50, 768-d; weights do not change the time),
images: uniform noise, grid n = 30 patches along the longest side (713 patches at 4000x3000).
Target: everything but the embeddings <= 10 % of the total on CPU; < 0.5 s per 4000x3000 on GPU.

    python benchmarks/detect_latency.py [--sizes 1024x768,4000x3000] [--repeats 1]
        [--loop-max-patches 0] [--device auto] [--json out.json]

``--loop-max-patches M`` times the per-pair loop on the first grid rows holding at most M
patches and extrapolates by the pair count (N/n)^2 (marked ``*`` in the table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from exiflang.eval.embed.patches import Grid  # noqa: E402
from exiflang.eval.forensics.affinity import cell_consistency, coverage, patch_affinity  # noqa: E402
from exiflang.eval.forensics.detector import Detector  # noqa: E402
from exiflang.eval.forensics.localize import ncuts_similarity  # noqa: E402
from exiflang.eval.forensics.meanshift import mean_shift_map  # noqa: E402
from exiflang.eval.forensics.ncuts import ncuts_split  # noqa: E402
from exiflang.train.model import ExifClip, ModelConfig  # noqa: E402
from tests.eval.reference_forensics import cell_consistency_loop, mean_shift_map_reference  # noqa: E402


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def sub_grid(grid: Grid, max_patches: int) -> Grid:
    """The first rows of ``grid`` holding at most ``max_patches`` patches (at least one row)."""
    rows = max(1, min(len(grid.ys), max_patches // max(1, len(grid.xs))))
    return Grid(grid.height, grid.width, grid.patch, grid.ys[:rows], grid.xs)


def loop_votes(affinity: torch.Tensor, grid: Grid, max_patches: int) -> tuple[float, float, bool]:
    """The authors' per-pair loop -> (max |loop - ours| on the grid it ran on, seconds, extrapolated?)."""
    if max_patches > 0 and grid.count > max_patches:
        sub = sub_grid(grid, max_patches)
        aff = affinity[: sub.count, : sub.count]  # raster order: the first rows' patches come first
        loop_map, sec = timed(lambda: cell_consistency_loop(aff, sub))
        diff = float((loop_map - cell_consistency(aff, coverage(sub))).abs().max())
        return diff, sec * (grid.count / sub.count) ** 2, True
    loop_map, sec = timed(lambda: cell_consistency_loop(affinity, grid))
    return float((loop_map - cell_consistency(affinity, coverage(grid))).abs().max()), sec, False


def sklearn_ncuts(similarity: torch.Tensor) -> tuple[np.ndarray, float]:
    """scikit-learn's spectral clustering (2 clusters, precomputed affinity): the library baseline."""
    from sklearn.cluster import SpectralClustering

    w = similarity.double().numpy()
    sc = SpectralClustering(n_clusters=2, affinity="precomputed", random_state=0, assign_labels="discretize")
    labels, sec = timed(lambda: sc.fit_predict(w))
    side = labels.astype(bool)
    return (~side if side.sum() * 2 > side.size else side), sec


def bench_size(detector: Detector, height: int, width: int, repeats: int, loop_max: int) -> dict[str, Any]:
    """One image size: per-stage seconds (median over ``repeats``) for ours and the baseline."""
    rgb = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ours: list[dict[str, float]] = []
    for _ in range(repeats):
        (grid, emb), t_embed = timed(lambda: detector.embed(rgb))
        res = detector.analyse(emb, grid)
        ours.append({"embed": t_embed, **{k: v for k, v in res.timings.items() if k != "total"}})
    ours_med = {k: float(np.median([o[k] for o in ours])) for k in ours[0]}
    ours_med["total"] = sum(ours_med.values())
    affinity = patch_affinity(emb)
    cov = coverage(grid)
    cell_map = cell_consistency(affinity, cov)
    votes_diff, t_votes, extrapolated = loop_votes(affinity, grid, loop_max)
    ms_ref, t_ms = timed(lambda: mean_shift_map_reference(cell_map))
    ncut_ref, t_nc = sklearn_ncuts(ncuts_similarity(cell_map))
    base = {
        "embed": ours_med["embed"],
        "votes": t_votes,
        "meanshift": t_ms,
        "ncuts": t_nc,
        "resize": ours_med.get("resize", 0.0),
        "scores": ours_med.get("scores", 0.0),
    }  # shared stages
    base["total"] = sum(base.values())
    ours_split = ncuts_split(ncuts_similarity(cell_map))
    return {
        "size": f"{width}x{height}",
        "patches": grid.count,
        "cells": cov.count,
        "ours": ours_med,
        "authors": base,
        "votes_extrapolated": extrapolated,
        "check": {
            "votes_max_abs_diff": votes_diff,
            "meanshift_max_abs_diff": float((ms_ref - mean_shift_map(cell_map)).abs().max()),
            "ncuts_agreement": float(max((ours_split == ncut_ref).mean(), (ours_split != ncut_ref).mean())),
        },
    }


def table(r: dict[str, Any]) -> str:
    lines = [
        f"\n{r['size']}: {r['patches']} patches, {r['cells']} cells",
        f"{'stage':<10} | {'ours s':>9} | {'authors-style s':>15} | {'ratio':>7}",
        "-" * 51,
    ]
    for stage in ("embed", "votes", "meanshift", "ncuts", "resize", "scores", "total"):
        o, a = r["ours"].get(stage, 0.0), r["authors"].get(stage, 0.0)
        mark = "*" if stage == "votes" and r["votes_extrapolated"] else " "
        ratio = f"{a / o:7.1f}" if o > 0 and stage not in ("embed", "resize", "scores") else "      -"
        lines.append(f"{stage:<10} | {o:9.3f} | {a:14.3f}{mark} | {ratio}")
    for who in ("ours", "authors"):
        t = r[who]
        share = 100 * (t["total"] - t["embed"]) / t["total"]
        lines.append(f"non-embedding share of total ({who}): {share:.1f}%  (target <= 10%)")
    c = r["check"]
    lines.append(
        f"check: votes max|diff| {c['votes_max_abs_diff']:.2e}, mean shift max|diff| "
        f"{c['meanshift_max_abs_diff']:.2e}, ncuts label agreement {c['ncuts_agreement']:.3f}"
    )
    if r["votes_extrapolated"]:
        lines.append(
            "* per-pair loop timed on the first grid rows (its check is on those) and extrapolated by the pair count"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1024x768,4000x3000", help="comma-separated WIDTHxHEIGHT")
    p.add_argument("--per-side", type=int, default=30)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default="paper", help="model preset (paper = ResNet-50)")
    p.add_argument("--loop-max-patches", type=int, default=0, help="0: time the full per-pair loop")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = ExifClip(ModelConfig.preset(args.preset, cropclr=True)).eval()  # the image tower alone
    detector = Detector.from_model(model, per_side=args.per_side, device=args.device, batch_size=args.batch_size)
    dev = detector.embedder.device
    print(
        f"device {dev} ({torch.get_num_threads()} CPU threads), preset {args.preset}, n = {args.per_side}, "
        f"repeats {args.repeats}"
    )
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    results = []
    for width, height in sizes:
        r = bench_size(detector, height, width, max(1, args.repeats), args.loop_max_patches)
        r.update(device=str(dev), threads=torch.get_num_threads(), preset=args.preset)
        results.append(r)
        print(table(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
