"""detect's output per photo: npz size and time, maps on the grid's cells against full-size maps.

Cells are the default; full-size maps (``--full-maps``) were the old default.

One photo, one model: the detection is run once per repeat and both writers are timed on it,
alternating which goes first (A/B, B/A, ...); min and median over the repeats.  Also the whole
per-photo time of ``exiflang detect`` (decode + detect + write, :func:`exiflang.commands.detect.detect_one`)
for each mode, alternated the same way.

    python benchmarks/detect_npz.py --model MODEL_DIR --photo PHOTO.jpg [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import exiflang  # noqa: E402
from exiflang.commands.detect import detect_one  # noqa: E402
from exiflang.eval.forensics.detect import write_outputs  # noqa: E402
from exiflang.eval.images import load_rgb  # noqa: E402

MODES = {"cells (default)": False, "full maps (--full-maps)": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--photo", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rgb = load_rgb(Path(args.photo))
    model = exiflang.load(args.model, device="cpu")
    write_s = {m: [] for m in MODES}
    total_s = {m: [] for m in MODES}
    size = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for r in range(args.repeats):
            order = list(MODES) if r % 2 == 0 else list(MODES)[::-1]
            result = model.detect(rgb, max_side=None).result
            for mode in order:
                t0 = time.perf_counter()
                rec = write_outputs(result, rgb, out / "w", "x", full_maps=MODES[mode])
                write_s[mode].append(time.perf_counter() - t0)
                size[mode] = Path(rec["outputs"]["npz"]).stat().st_size
            for mode in order:
                t0 = time.perf_counter()
                detect_one(model, Path(args.photo), "y", out / "p", full_maps=MODES[mode])
                total_s[mode].append(time.perf_counter() - t0)
    h, w = rgb.shape[:2]
    print(f"photo {args.photo} ({w}x{h}, {w * h / 1e6:.1f} MP), model {args.model}, {args.repeats} repeats, CPU")
    base = "full maps (--full-maps)"
    head = (
        f"{'npz maps':<24} {'npz bytes':>12} {'size ratio':>10} {'write s min/med':>16} "
        f"{'photo s min/med':>16} {'time ratio min/med':>18}"
    )
    print(head)
    print("-" * len(head))
    for mode in MODES:
        wmin, wmed = min(write_s[mode]), statistics.median(write_s[mode])
        tmin, tmed = min(total_s[mode]), statistics.median(total_s[mode])
        print(
            f"{mode:<24} {size[mode]:>12,} {size[base] / size[mode]:>9.0f}x {wmin:>7.2f}/{wmed:<7.2f} "
            f"{tmin:>7.2f}/{tmed:<7.2f} {min(total_s[base]) / tmin:>8.2f}x/"
            f"{statistics.median(total_s[base]) / tmed:.2f}x"
        )
    print("ratios: full maps / this mode (size; min and median time per photo of `exiflang detect`)")


if __name__ == "__main__":
    main()
