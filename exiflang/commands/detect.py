"""The ``exiflang detect`` command: splice heatmaps, masks and scores for photos, written per image.

    exiflang detect --model MODEL_DIR IMAGE_OR_FOLDER... --out DIR [--grid paper]
        [--patches-per-side N] [--patch-size P] [--batch-size B] [--device auto|cpu|cuda]
        [--no-ncuts] [--tau T] [--legacy-negative] [--max-side 1600] [--no-compress] [--force]
        [--include-masks] [--full-maps]

Every photo is detected by the Python API (``exiflang.load(MODEL, detector=...).detect``), at full
resolution; ``--max-side`` bounds only the PNG.  Per image (``NAME`` = the file stem, made unique
when two inputs share it): ``DIR/NAME.npz`` (maps on the grid's cells, a few kB; ``--full-maps``
adds the image-size maps, tens of MB for a 12-MP photo;
:func:`exiflang.eval.forensics.maps.full_maps` rebuilds them from the cells), ``DIR/NAME.png``
(the photo and its heatmap; the splice outline is drawn only when the verdict is "spliced") and
one line of ``DIR/results.jsonl`` (:func:`exiflang.eval.forensics.detect.write_outputs` has the
keys); a summary table at the end.  Each detection carries a ``verdict`` and ``percentile``
against the model folder's authentic reference scores (``exiflang calibrate``; "unknown" without
one), and the terminal's first line says what the model was trained on (its model card).
An image whose line says it was done with the same source file and settings, and whose npz and
png exist, is skipped unless ``--force``; ``results.jsonl`` is then rewritten with one line per
name (earlier lines kept, redone ones replaced, in first-seen order).  Failed images get a line
with ``"status": "error"`` and are retried on the next run.  Files found in a folder that are
named like ground-truth masks (``*_mask.*``, ``*_gt.*``, ``masks/``, ``ground-truth/``) are left
out, with a count on the terminal, unless ``--include-masks``; files named one by one are always run.

Exit codes: 0 every image answered (or skipped as done); 1 some images failed, the rest were
answered; 2 bad usage, an unusable model folder or output folder, no input images, or every image
failed (one line ``exiflang detect: error: FILE: reason``; :mod:`exiflang.errors`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from exiflang.command import Command
from exiflang.commands.options import check_device, model_line
from exiflang.errors import CommandError, check_out_dir
from exiflang.eval.forensics.settings import add_detector_arguments, detector_config
from exiflang.train.card import describe

PROG = "exiflang detect"
MIN_SIDE = 64  # the PNG's smallest --max-side: below it the legend does not fit


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare detect's arguments (the detector's from :func:`add_detector_arguments`)."""
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="images, or folders searched recursively")
    p.add_argument("--model", required=True, help="model folder (exiflang train's run/model)")
    p.add_argument("--out", required=True, help="output folder: NAME.npz, NAME.png, results.jsonl")
    add_detector_arguments(p)
    p.add_argument("--tau", type=float, default=None, help="score_exp temperature (default 1/logit scale)")
    p.add_argument(
        "--legacy-negative",
        action="store_true",
        help="reproduce the authors' evaluator bug: patches become photographic negatives",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=1600,
        help="long side of the PNG, pixels (the photo is analysed at full resolution)",
    )
    p.add_argument("--no-compress", action="store_true", help="plain npz: faster to write, larger")
    p.add_argument(
        "--full-maps",
        action="store_true",
        help="also store the image-size maps in the npz (tens of MB per 12-MP photo; "
        "by default the maps stay on the grid's cells, a few kB)",
    )
    p.add_argument("--force", action="store_true", help="redo images already done")
    p.add_argument(
        "--include-masks",
        action="store_true",
        help="also run on files in folders named like ground-truth masks (*_mask, masks/, ...)",
    )


def detect_one(
    model: Any,
    path: Path,
    name: str,
    out_dir: Path,
    *,
    max_side: int = 1600,
    compress: bool = True,
    full_maps: bool = False,
) -> dict[str, Any]:
    """Read, detect (``model``: an :class:`exiflang.api.Model`) and write one image -> its ``ok``
    record; :class:`exiflang.api.ImageInputError` (one line naming ``path``) for a bad image.

    ``max_side``: the PNG's longer side; ``compress``: deflate the npz; ``full_maps``: also the
    image-size maps in the npz (:func:`exiflang.eval.forensics.detect.write_outputs`).
    """
    from exiflang import api
    from exiflang.eval.forensics.detect import source_key, source_stamp, write_outputs

    t0 = time.perf_counter()
    stamp = source_stamp(path) if path.is_file() else None
    rgb = api.read_image(path)
    load_s = time.perf_counter() - t0
    # Maps at full size (max_side=None): the npz and the PNG are drawn from the detector's own maps.
    result = model.detect(rgb, max_side=None, name=str(path)).result
    result.timings["load"] = load_s
    rec = write_outputs(result, rgb, out_dir, name, max_side, compress, full_maps)
    return {
        "name": name,
        "path": source_key(path),
        "status": "ok",
        "source": stamp,
        **rec,
        "settings": result.settings,
        "model_card": describe(model.card),
    }


def detect_all(
    model: Any, paths: list[Path], out_dir: Path, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Detect ``paths`` into ``out_dir`` -> (this run's records in input order, name -> state:
    done / skipped / error).  ``args``: ``force``, ``max_side``, ``no_compress``, ``full_maps``."""
    from tqdm import tqdm

    from exiflang import api
    from exiflang.eval.forensics.detect import RESULTS, assign_names, is_done, read_results, source_key, write_results

    log_path = out_dir / RESULTS
    earlier = read_results(log_path)
    names = assign_names(paths, earlier)
    records, states = [], {}
    detector = model.detector()
    # A rerun asking for full maps, or judging against another reference, is not "already done".
    ref = detector.reference.info() if detector.reference is not None else {}
    expect = {"maps": "full" if args.full_maps else "cells", "reference": ref}
    with open(log_path, "a") as log, tqdm(total=len(paths), desc="detect", unit="img", disable=None) as bar:
        for path, name in zip(paths, names):
            if not args.force and is_done(earlier.get(name), path, detector.settings, expect):
                records.append(earlier[name])
                states[name] = "skipped"
            else:
                try:
                    rec = detect_one(
                        model,
                        path,
                        name,
                        out_dir,
                        max_side=args.max_side,
                        compress=not args.no_compress,
                        full_maps=args.full_maps,
                    )
                    states[name] = "done"
                except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
                    msg = str(exc) if isinstance(exc, api.ImageInputError) else f"{path}: {type(exc).__name__}: {exc}"
                    rec = {"name": name, "path": source_key(path), "status": "error", "error": " ".join(msg.split())}
                    states[name] = "error"
                    bar.write(f"{PROG}: {rec['error']}", file=sys.stderr)
                records.append(rec)
                log.write(json.dumps(rec) + "\n")
                log.flush()  # progress survives a kill: the next run skips what is done
            bar.update(1)
    write_results(log_path, earlier, records)
    return records, states


def run(args: argparse.Namespace) -> int:
    """Detect every input; see the module docstring for the exit codes."""
    out_dir = check_out_dir(args.out)  # before the model loads: a bad --out costs nothing
    config = detector_config(args)
    check_device(args.device)
    if args.max_side < MIN_SIDE:
        raise ValueError(f"--max-side {args.max_side}: at least {MIN_SIDE}")
    # The engine (torch, the detector) is imported here, not at the top: --help stays light.
    from exiflang import api
    from exiflang.eval.forensics.detect import RESULTS, find_inputs, fmt_table

    paths, masks = find_inputs(args.inputs, out_dir, args.include_masks)
    if masks:
        note = f"left out {masks} file(s) named like ground-truth masks (--include-masks runs them)"
        print(f"{PROG}: {note}", file=sys.stderr)
    if not paths:
        raise CommandError(None, f"no images found in {' '.join(args.inputs)}")
    try:
        model = api.load(args.model, device=args.device, batch_size=args.batch_size, detector=config)
        model.detector()  # a damaged calibration.json is one error here, not one per image
    except RuntimeError as exc:  # torch: weights that do not fit the folder's config
        raise CommandError(args.model, f"cannot load the model ({exc})") from exc
    print(model_line(model.card))
    out_dir.mkdir(parents=True, exist_ok=True)
    records, states = detect_all(model, paths, out_dir, args)
    print(fmt_table(records, states))
    failed = sum(s == "error" for s in states.values())
    print(
        f"{len(records) - failed} answered ({sum(s == 'skipped' for s in states.values())} skipped as done), "
        f"{failed} failed -> {out_dir / RESULTS}"
    )
    if failed == len(records):
        return 2
    return 1 if failed else 0


COMMAND = Command(prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run, log_level=logging.WARNING)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
