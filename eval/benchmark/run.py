"""The forensic harness: every image of a dataset through each method, scored against its mask.

The engine of ``exiflang benchmark`` (the command line, the methods, the metrics and the files
written: :mod:`exiflang.eval.benchmark.command`): :func:`run_benchmark` runs one
:class:`exiflang.eval.benchmark.settings.BenchmarkConfig` over a dataset
(:mod:`exiflang.eval.benchmark.datasets`), resumably, and writes the per-image rows and the summary
(:mod:`exiflang.eval.benchmark.report`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from exiflang.eval.benchmark.datasets import CONVENTION, Item, MaskError, load_mask, read_dataset
from exiflang.eval.benchmark.metrics import ciou, pixel_ap, threshold_metrics
from exiflang.eval.benchmark.report import (
    NOTES,
    lacks_threshold_metrics,
    read_rows,
    summarize_methods,
    write_markdown,
    write_rows,
)
from exiflang.eval.benchmark.settings import METHODS, BenchmarkConfig
from exiflang.eval.forensics.detector import DetectionResult
from exiflang.eval.forensics.noi import NoiDetector
from exiflang.eval.images import ImageError, load_rgb

# What a per-image row means; rows of another format in --out are redone, not resumed.
# 2: pixel_ap_ncuts/ciou_ncuts score the soft ncuts map (1: the binary ncuts mask).
ROW_FORMAT = 2


def interleave(items: list[Item]) -> list[Item]:
    """Spliced and authentic items alternated (each class keeps its order), the longer tail last."""
    spliced = [i for i in items if i.spliced]
    authentic = [i for i in items if not i.spliced]
    out: list[Item] = []
    for k in range(max(len(spliced), len(authentic))):
        out += spliced[k : k + 1] + authentic[k : k + 1]
    return out


def build_detectors(model_dir: str | Path | None, config: BenchmarkConfig) -> dict[str, Any]:
    """Method name -> an object with ``detect(rgb) -> DetectionResult`` and ``settings``, for ``config.methods``."""
    detectors: dict[str, Any] = {}
    for method in config.methods:
        if method == "exif":
            if model_dir is None:
                raise ValueError("method exif needs --model MODEL_DIR")
            from exiflang.eval.forensics.detector import Detector  # imports torch + transformers: only when asked

            detectors[method] = Detector(model_dir, config.detector)
        elif method == "noi":
            detectors[method] = NoiDetector(block=config.noi_block)
        else:
            raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    return detectors


def score_row(
    item: Item, method: str, result: DetectionResult, mask: np.ndarray | None, seconds: float, note: str
) -> dict[str, Any]:
    """One per-image CSV row (see :data:`exiflang.eval.benchmark.report.CSV_COLUMNS`)."""
    row: dict[str, Any] = {
        "name": item.name,
        "method": method,
        "spliced": int(item.spliced),
        "image": str(item.image),
        "height": result.heatmap.shape[0],
        "width": result.heatmap.shape[1],
        "seconds": round(seconds, 4),
        "note": note,
        **result.scores,
    }
    if mask is not None:
        row["pixel_ap"], row["ciou"] = pixel_ap(result.heatmap, mask), ciou(result.heatmap, mask)
        row.update(threshold_metrics(result.heatmap, mask))
        soft = result.ncuts_heatmap
        if soft is not None:
            row["pixel_ap_ncuts"], row["ciou_ncuts"] = pixel_ap(soft, mask), ciou(soft, mask)
    return row


def write_maps(result: DetectionResult, rgb: np.ndarray, folder: Path, name: str, method: str) -> None:
    """``folder/NAME.npz`` + ``.png``: the detect command's writer for exif, the same keys for NOI."""
    if method == "exif":
        from exiflang.eval.forensics.detect import write_outputs

        write_outputs(result, rgb, folder, name, full_maps=True)  # benchmark maps are for measuring
        return
    from exiflang.eval.forensics.overlay import write_overlay

    folder.mkdir(parents=True, exist_ok=True)
    main_score = next(iter(result.scores.values()))
    np.savez_compressed(
        folder / f"{name}.npz",
        heatmap=result.heatmap.astype(np.float32),
        mask=result.mask.astype(bool),
        detection=np.float32(main_score),
        **{f"scores_{k}": np.float64(v) for k, v in result.scores.items()},
    )
    write_overlay(folder / f"{name}.png", rgb, result.heatmap, result.mask, None, f"{name}   {method} {main_score:.4g}")


def _mask_for(item: Item, rgb: np.ndarray, convention: str) -> tuple[np.ndarray | None, str]:
    """The item's ground truth (or None) and a note saying why localization is skipped."""
    if not item.spliced:
        return None, ""
    if item.mask is None:
        return None, f"{item.image}: no ground-truth mask found; localization skipped"
    try:
        return load_mask(item.mask, rgb.shape, convention), ""
    except MaskError as err:
        return None, f"{err}; localization skipped"


def _check_settings(out: Path, settings: dict[str, Any], force: bool) -> bool:
    """Refuse to mix rows made with other settings into ``out``; record the merged settings.

    Returns True when the rows there are of an older :data:`ROW_FORMAT` (to be redone).
    """
    path = out / "settings.json"
    old: dict[str, Any] = {}
    stale = False
    if path.exists() and not force:
        old = json.loads(path.read_text())
        if old.get("row_format", 1) != ROW_FORMAT:
            print(f"{out}: rows of an older format (row_format {old.get('row_format', 1)}): redone", file=sys.stderr)
            old, stale = {}, True  # its rows are all redone: nothing to keep or clash with
        # Methods and --limit may change between runs (rows are per image and method); a
        # setting absent on one side (no model for a NOI-only run) is no clash either.
        differ = sorted(
            k
            for k, v in settings.items()
            if k not in ("methods", "limit") and v is not None and old.get(k) is not None and old[k] != v
        )
        if differ:
            raise ValueError(
                f"{out}: holds results made with other settings ({', '.join(differ)}); "
                "pass --force or choose another --out"
            )
    merged = {**old, **{k: v for k, v in settings.items() if v is not None}}
    merged["methods"] = sorted(set(old.get("methods", [])) | set(settings["methods"]))
    merged["row_format"] = ROW_FORMAT
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return stale


def evaluate_item(
    item: Item, todo: Sequence[str], detectors: dict[str, Any], convention: str, maps_dir: Path | None
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Run the ``todo`` methods on one item -> (its CSV rows, its problems as {name, method, reason}).

    Problems are printed to stderr as they happen (one line each); an unreadable image gives
    one problem and no rows, a method that refuses the image (e.g. smaller than one patch) one
    problem for that method.
    """
    rows, bad = [], []
    try:
        rgb = load_rgb(item.image)
    except ImageError as err:
        print(err, file=sys.stderr)
        return [], [{"name": item.name, "method": ",".join(todo), "reason": str(err)}]
    mask, note = _mask_for(item, rgb, convention)
    if note:
        print(note, file=sys.stderr)
    for method in todo:
        t0 = time.perf_counter()
        try:
            result = detectors[method].detect(rgb)
        except ValueError as exc:
            reason = f"{item.image}: {method}: {' '.join(str(exc).split())}"
            print(reason, file=sys.stderr)
            bad.append({"name": item.name, "method": method, "reason": reason})
            continue
        rows.append(score_row(item, method, result, mask, time.perf_counter() - t0, note))
        if maps_dir is not None:
            write_maps(result, rgb, maps_dir / method, item.name, method)
    return rows, bad


def run_benchmark(
    model_dir: str | Path | None,
    dataset: str,
    root: str | Path,
    out: str | Path,
    config: BenchmarkConfig | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run the methods over ``dataset`` at ``root``; write the outputs under ``out`` and return metrics.json's dict.

    ``model_dir``: the trained model (the ``exif`` method needs it).  How: ``config`` (default
    :class:`BenchmarkConfig`'s defaults) with ``overrides`` applied (:meth:`BenchmarkConfig.replace`:
    detector settings such as ``per_side`` or ``device`` by name too).  ValueError (one line) for
    bad options, a missing dataset layout or a settings clash.
    """
    config = (config or BenchmarkConfig()).replace(**overrides)
    methods, limit, det = config.methods, config.limit, config.detector
    items = read_dataset(dataset, root)
    if limit is not None:
        items = interleave(items)[: max(0, limit)]
    detectors = build_detectors(model_dir, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "dataset": dataset,
        "root": str(Path(root).resolve()),
        "model": str(Path(model_dir).resolve()) if model_dir and "exif" in methods else None,
        "methods": list(methods),
        "per_side": det.per_side,
        "patch": det.patch,
        "ncuts": det.ncuts,
        "noi_block": config.noi_block,
        "limit": limit,
    }
    stale = _check_settings(out, settings, config.force)
    csv_path = out / "per_image.csv"
    # Rows from a CSV older than the F1/IoU/MCC/AUC columns are redone (the maps are not kept, so
    # the new metrics cannot be computed from the row), the rest resumed.
    rows = (
        {}
        if config.force or stale
        else {(r["name"], r["method"]): r for r in read_rows(csv_path) if not lacks_threshold_metrics(r)}
    )
    bad: list[dict[str, str]] = []
    for item in tqdm(items, desc=f"benchmark {dataset}", unit="img", disable=not config.progress):
        todo = [m for m in methods if (item.name, m) not in rows]
        if todo:
            new, problems = evaluate_item(
                item, todo, detectors, CONVENTION[dataset], out / "maps" if config.save_maps else None
            )
            rows.update({(r["name"], r["method"]): r for r in new})
            bad += problems
            write_rows(csv_path, rows.values())  # after every image: a killed run keeps its work
    write_rows(csv_path, rows.values())
    names = {i.name for i in items}
    current = [r for r in rows.values() if r["name"] in names]
    skipped = {r["name"]: r["note"] for r in current if r.get("note")}
    metrics = {
        "dataset": dataset,
        "root": settings["root"],
        "model": settings["model"],
        "settings": settings,
        "images": len(items),
        "methods": summarize_methods(current, methods),
        "unusable": bad,
        "localization_skipped": [{"name": k, "reason": v} for k, v in sorted(skipped.items())],
        "notes": NOTES,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_markdown(out / "metrics.md", metrics)
    return metrics
