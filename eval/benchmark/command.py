"""`exiflang benchmark`: the forensic harness — every image of a dataset through each method, scored against its mask.

    exiflang benchmark --model MODEL_DIR --dataset {columbia,dso1,rt,inthewild,hays,folder}
        --root PATH --out DIR [--method exif,noi] [--limit N] [--grid code|paper]
        [--patches-per-side N] [--patch-size P] [--batch-size B] [--device auto|cpu|cuda]
        [--no-ncuts] [--save-maps] [--force]

Methods: ``exif`` — the zero-shot detector of a trained model (:class:`exiflang.eval.forensics.detector.Detector`:
mean-shift heatmap, normalized-cuts mask, ``score_exp`` and ``score_mean_dist``); ``noi`` — the
hand-crafted noise-inconsistency baseline (:class:`exiflang.eval.forensics.noi.NoiDetector`, ``score_noi``), run by
the same harness so every number has a non-learned reference beside it.

Per image and method: p-AP, cIoU and the metrics other benchmarks print (pixel F1, IoU and MCC at
the best and at the 0.5 threshold, pixel ROC-AUC: :func:`exiflang.eval.benchmark.metrics.threshold_metrics`)
of the heatmap (spliced images with a usable mask; for
``exif`` also of the soft normalized-cuts map, as ``pixel_ap_ncuts``/``ciou_ncuts``), each detection score and
the seconds the method took (pixels loaded, not counting the load).  Outputs in ``--out``:

- ``per_image.csv`` — one row per (image, method), columns
  :data:`exiflang.eval.benchmark.report.CSV_COLUMNS`; rewritten after every image, so an interrupted run
  keeps what it did.  A rerun skips (image, method) pairs already there unless ``--force`` (a
  scored row from before the F1/IoU/MCC columns is redone); ``settings.json`` records what the
  rows were made with and a rerun with other settings is refused (use ``--force`` or another ``--out``);
- ``metrics.json`` — per method :func:`exiflang.eval.benchmark.metrics.summarize` (p-mAP and cIoU over spliced
  images, the threshold metrics under ``localization``, detection AP and ROC-AUC (image AUROC) per
  score over spliced + authentic), counts, and every
  unusable image or mask with its reason; ``metrics.md`` — the same as a Markdown table;
- ``maps/METHOD/NAME.npz`` + ``.png`` with ``--save-maps``.

``--limit N`` keeps the first N images of an interleaved order (spliced, authentic, spliced,
...), so a short run still has both classes.  A spliced image whose mask is missing or unusable
(size unlike its image's, unreadable, empty) still counts for detection, not for localization.
Exit status: 0 all answered; 1 some images could not be read or run (listed), the rest answered;
2 bad usage, no dataset at ``--root``, an unusable model folder, or nothing answered.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from exiflang.command import Command
from exiflang.errors import CommandError, check_out_dir
from exiflang.eval.benchmark.datasets import DATASETS
from exiflang.eval.benchmark.settings import METHODS, BenchmarkConfig
from exiflang.eval.forensics.settings import add_detector_arguments, detector_config

PROG = "exiflang benchmark"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare benchmark's arguments (the detector's from :mod:`exiflang.eval.forensics.settings`)."""
    p.add_argument("--model", help="trained model folder (needed by the exif method)")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True, help="the dataset's folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", default=",".join(METHODS), help="comma list of exif,noi (default both)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (classes interleaved)")
    add_detector_arguments(p)
    p.add_argument("--noi-block", type=int, default=8, help="NOI block side in wavelet samples (8 = 16 px)")
    p.add_argument("--save-maps", action="store_true", help="write maps/METHOD/NAME.npz and .png")
    p.add_argument("--force", action="store_true", help="redo images already in per_image.csv")
    p.add_argument("--no-progress", action="store_true")


def benchmark_config(args: argparse.Namespace) -> BenchmarkConfig:
    """The :class:`BenchmarkConfig` of parsed :func:`add_arguments` options."""
    return BenchmarkConfig(
        methods=tuple(m.strip() for m in args.method.split(",") if m.strip()),
        limit=args.limit,
        detector=detector_config(args),
        noi_block=args.noi_block,
        save_maps=args.save_maps,
        force=args.force,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    """Benchmark, print metrics.md; the exit status of the module docstring."""
    check_out_dir(args.out)  # before the dataset is read: a bad --out costs nothing
    config = benchmark_config(args)
    from exiflang.eval.benchmark.run import run_benchmark  # the detectors import torch: --help stays light

    try:
        metrics = run_benchmark(args.model, args.dataset, args.root, args.out, config)
    except RuntimeError as exc:  # torch: a device it cannot use, weights that do not fit
        raise CommandError(None, str(exc)) from exc
    print((Path(args.out) / "metrics.md").read_text(), end="")
    answered = sum(m["images"] for m in metrics["methods"].values())
    if answered == 0:
        print(f"{PROG}: error: no image was answered", file=sys.stderr)
        return 2
    return 1 if metrics["unusable"] else 0


COMMAND = Command(prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run, log_level=logging.WARNING)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
