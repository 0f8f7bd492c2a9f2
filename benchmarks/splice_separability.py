"""Why a model's splice maps fail: host/donor separability vs the host's own spread, per image.

Usage: python benchmarks/splice_separability.py SET MODEL_DIR [MODEL_DIR ...] [--per-side 10]
       [--random-init cpu-small]

SET is `exiflang make-splices` output.  For every spliced image and model the patch grid of the
detector (P = 124) is embedded and, with ``D = 1 - cosine`` between patches and "pure" patches
those with at most 5 % / at least 95 % of their pixels inside the mask:

- ``sep_auc``: ROC-AUC of ``mean D to pure host - mean D to pure donor`` (each patch left out
  of its own group) for telling pure donor from pure host patches — what an oracle that knew
  one patch of each side would get from these embeddings;
- ``spread``: the share of pure host-host pairs farther apart than the mean host-donor
  distance — how often content inside the host looks more different than the other camera;
- ``p_ap``: the pixel AP of the mean-shift map `exiflang.eval.forensics.localize` makes (the benchmark's p-AP).

An image with ``sep_auc`` near 1 and a low ``p_ap`` fails in the unsupervised step; ``spread``
says why.  The table prints the means per model and the ratio of each to the first model's
(``--random-init`` adds an untrained model of that preset as the first, the baseline).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exiflang.eval.benchmark.datasets import CONVENTION, load_mask, read_dataset
from exiflang.eval.benchmark.metrics import pixel_ap, roc_auc
from exiflang.eval.forensics.detector import Detector
from exiflang.eval.forensics.localize import localize
from exiflang.eval.images import load_rgb

PURE = 0.05


def image_stats(det: Detector, rgb: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """``uint8 [H,W,3]`` + ``bool [H,W]`` -> sep_auc, spread (0..1, NaN without pure patches of
    both sides) and p_ap (0..1) of one spliced image."""
    grid, emb = det.embed(rgb)
    share = grid.mask_share(mask)
    host, donor = share <= PURE, share >= 1 - PURE
    loc = localize(emb, grid, ncuts=False, iterations=det.iterations, percentile=det.percentile)
    out = {"p_ap": pixel_ap(loc.heatmap, mask), "sep_auc": float("nan"), "spread": float("nan")}
    if host.sum() < 2 or donor.sum() < 2:
        return out
    dist = 1.0 - (emb @ emb.T).double().numpy()
    np.fill_diagonal(dist, np.nan)  # a patch is not evidence about its own group
    score = np.nanmean(dist[:, host], 1) - np.nanmean(dist[:, donor], 1)  # high = donor-like
    pure = host | donor
    out["sep_auc"] = roc_auc(donor[pure], score[pure])
    host_host = dist[np.ix_(host, host)]
    host_host = host_host[~np.isnan(host_host)]
    out["spread"] = float((host_host > np.nanmean(dist[np.ix_(host, donor)])).mean())
    return out


def detectors(models: list[str], random_init: str | None, per_side: int) -> list[tuple[str, Detector]]:
    """(label, detector) per model; an untrained ``random_init`` preset first when asked."""
    out = []
    if random_init:
        from exiflang.train.model import ExifClip, ModelConfig

        torch.manual_seed(0)
        model = ExifClip(ModelConfig.preset(random_init)).eval()
        out.append(
            (f"untrained {random_init}", Detector.from_model(model, per_side=per_side, device="cpu", ncuts=False))
        )
    out += [(m, Detector(m, per_side=per_side, device="cpu", ncuts=False)) for m in models]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set", type=Path)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--per-side", type=int, default=10)
    ap.add_argument("--random-init", default=None, help="add an untrained model of this preset as the baseline")
    args = ap.parse_args(argv)
    rows = [item for item in read_dataset("folder", args.set) if item.spliced]
    means = []
    for label, det in detectors(args.models, args.random_init, args.per_side):
        stats = []
        for item in rows:
            rgb = load_rgb(item.image)
            stats.append(image_stats(det, rgb, load_mask(item.mask, rgb.shape, CONVENTION["folder"])))
            s = stats[-1]
            print(
                f"{label}  {item.name}: sep_auc {s['sep_auc']:.3f}  spread {s['spread']:.2f}  p_ap {s['p_ap']:.2f}",
                file=sys.stderr,
            )
        means.append(
            (
                label,
                {k: float(np.nanmean([s[k] for s in stats])) for k in stats[0]},
                float(np.mean([s["p_ap"] < 0.5 for s in stats])),
            )
        )
    base = means[0][1]
    print(f"\n{len(rows)} spliced images of {args.set}, n = {args.per_side}\n")
    print("| model | sep_auc | spread | p-mAP | share p-AP < 0.5 | p-mAP / first |")
    print("|---|---|---|---|---|---|")
    for label, m, failed in means:
        print(
            f"| {label} | {m['sep_auc']:.3f} | {m['spread']:.3f} | {m['p_ap']:.3f} | {failed:.2f} | "
            f"{m['p_ap'] / base['p_ap']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
