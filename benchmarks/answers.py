"""How often lookup abstains and what detection verdicts say, on real photos, for a model trained on synthetic cameras.

Lookup ("unknown camera", :mod:`exiflang.eval.index.abstain`): the share of photos answered
(``known``) among held-out photos of the index's own synthetic cameras (should be answered) and
among the real photos of ``../shared/data/photos`` (cameras the model never saw: should be
"unknown camera"); Make accuracy of the held-out photos, all vs answered only.

Detection verdicts (:mod:`exiflang.eval.forensics.calibration`): the default score of every real
photo and of the real tampered image (Realistic Tampering sample), judged against (a) a reference
of authentic synthetic photos (what ``make demo`` writes) and (b) a reference of authentic real
photos, two-fold: each half of the real photos judged against the other half's scores (the
tampered image against both halves).

    python benchmarks/answers.py --model RUN/model --index INDEX --heldout HELDOUT_DIR \\
        --synthetic-authentic DIR [--photos ../shared/data/photos] [--tampered FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from exiflang.eval.forensics.calibrate import authentic_scores  # noqa: E402
from exiflang.eval.forensics.calibration import judge, reference_from_scores  # noqa: E402
from exiflang.eval.forensics.detector import Detector  # noqa: E402
from exiflang.eval.images import expand_inputs  # noqa: E402
from exiflang.eval.index.lookup import Searcher  # noqa: E402
from exiflang.pipeline.exif.parse import read_exif  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def lookup_rates(model: str, index: str, heldout: list[Path], real: list[Path]) -> None:
    searcher = Searcher(model, index, device="cpu")
    print(f"lookup abstention ({searcher.familiarity.info()})")
    print(f"{'photos':<40} {'n':>4} {'answered':>9} {'unknown camera':>15} {'Make acc. all':>14} {'answered':>9}")
    for name, paths in (("held-out synthetic (known cameras)", heldout), ("real photos (unseen cameras)", real)):
        res = [r for r in searcher.lookup(paths, k=10, tags=["Make"]) if "error" not in r]
        known = np.array([r["known"] for r in res])
        truth = [read_exif(Path(r["file"]).read_bytes()).get("Make", "").strip() for r in res]
        hit = np.array([r["predictions"]["Make"]["value"] == t for r, t in zip(res, truth)])
        acc_known = f"{hit[known].mean():.3f}" if known.any() else "-"
        print(
            f"{name:<40} {len(res):>4} {known.mean():>9.3f} {1 - known.mean():>15.3f} "
            f"{hit.mean():>14.3f} {acc_known:>9}"
        )


def verdict_table(title: str, rows: list[tuple[str, dict]], ref) -> None:
    counts = Counter()
    for _, scores in rows:
        counts[judge(scores, ref, ref.settings)[1]] += 1
    n = len(rows)
    print(
        f"  {title:<58} n={n:<4} "
        + "  ".join(f"{v} {counts[v] / n:.2f}" for v in ("authentic", "inconclusive", "spliced", "unknown"))
    )


def detection_verdicts(model: str, synth_authentic: list[Path], real: list[Path], tampered: Path) -> None:
    det = Detector(model, device="cpu", ncuts=False, use_reference=False)
    synth, _ = authentic_scores(det, synth_authentic)
    real_scores, errors = authentic_scores(det, real)
    real_ok = [p for p in real if not any(str(p) in e for e in errors)]
    (tamp,), _ = authentic_scores(det, [tampered])
    key = "score_mean_dist"
    print(f"\ndetection verdicts (band 90-99th percentile; default score {key}; grid n=30)")
    print(
        f"  {key}: synthetic authentic median {np.median([s[key] for s in synth]):.4f}, real authentic median "
        f"{np.median([s[key] for s in real_scores]):.4f}, tampered {tamp[key]:.4f}"
    )
    ref_synth = reference_from_scores(synth, det.settings, "synthetic authentic")
    print(f"(a) reference: {len(synth)} authentic synthetic photos")
    verdict_table("real authentic photos", list(zip(real_ok, real_scores)), ref_synth)
    pct, verdict, _ = judge(tamp, ref_synth, det.settings)
    print(f"  real tampered image: percentile {pct}, verdict {verdict}")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(real_scores))
    halves = [order[: len(order) // 2], order[len(order) // 2 :]]
    print(f"(b) reference: real authentic photos, two-fold ({len(halves[0])} / {len(halves[1])})")
    judged = []
    for i, (ref_half, test_half) in enumerate((halves, halves[::-1])):
        ref = reference_from_scores([real_scores[j] for j in ref_half], det.settings, f"real half {i}")
        judged += [(real_ok[j], real_scores[j], ref) for j in test_half]
        pct, verdict, _ = judge(tamp, ref, det.settings)
        print(f"  real tampered image vs half {i}: percentile {pct}, verdict {verdict}")
    counts = Counter(judge(s, ref, det.settings)[1] for _, s, ref in judged)
    print(
        f"  real authentic photos, held-out half: n={len(judged)} "
        + "  ".join(f"{v} {counts[v] / len(judged):.2f}" for v in ("authentic", "inconclusive", "spliced"))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--heldout", required=True, help="held-out photos of the index's cameras")
    ap.add_argument("--synthetic-authentic", required=True, help="authentic synthetic photos for reference (a)")
    ap.add_argument("--photos", default=str(SHARED / "photos"))
    ap.add_argument("--tampered", default=str(SHARED / "forensics" / "realistic-tampering-sample" / "DSC06083.TIF"))
    ap.add_argument("--skip-lookup", action="store_true")
    ap.add_argument("--skip-detect", action="store_true")
    args = ap.parse_args()
    real = [p for p in expand_inputs([args.photos]) if p.suffix.lower() in (".jpg", ".jpeg")]
    if not args.skip_lookup:
        lookup_rates(args.model, args.index, expand_inputs([args.heldout]), real)
    if not args.skip_detect:
        detection_verdicts(args.model, expand_inputs([args.synthetic_authentic]), real, Path(args.tampered))


if __name__ == "__main__":
    main()
