"""What ``exiflang detect`` leaves per photo, and how a rerun knows what is already done.

The command itself is :mod:`exiflang.commands.detect` (it detects through the Python API,
:meth:`exiflang.api.Model.detect`); this module is the part of it that benchmarks and the demo
share: :func:`write_outputs` (``NAME.npz`` with the keys of :func:`npz_arrays`, ``NAME.png``
through :mod:`exiflang.eval.forensics.overlay`, and the JSON record), ``results.jsonl``
(:func:`read_results`), one unique output name per input (:func:`assign_names`), the
"already done" test (:func:`is_done`), the inputs of a run (:func:`find_inputs`: folders
expanded, files named like ground-truth masks left out) and the summary table (:func:`fmt_table`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from exiflang.eval.benchmark.datasets import is_mask_file
from exiflang.eval.embed.patches import Grid
from exiflang.eval.forensics.detector import DetectionResult
from exiflang.eval.forensics.overlay import write_overlay
from exiflang.eval.forensics.scores import DEFAULT_SCORE
from exiflang.eval.images import expand_inputs

RESULTS = "results.jsonl"


def write_outputs(
    result: DetectionResult,
    rgb: np.ndarray,
    out_dir: Path,
    name: str,
    max_side: int = 1600,
    compress: bool = True,
    full_maps: bool = False,
) -> dict[str, Any]:
    """Write ``out_dir/NAME.npz`` and ``out_dir/NAME.png``; return the JSON record.

    ``result``: a :class:`DetectionResult` (or any object with ``heatmap``, ``mask``, ``scores``,
    ``timings`` and optionally ``grid``/``ncuts_mask``/``ncuts_heatmap``/``cell_map``, e.g. a
    baseline's result).
    npz keys: see :func:`npz_arrays` (``full_maps`` adds the image-size maps).
    The record: ``name``, ``height``, ``width``, ``patches``, ``grid``, ``scores``,
    ``percentile`` (0..100 or None), ``verdict``, ``verdict_reason``, ``reference``,
    ``splice_fraction`` (0..1, of the mean-shift mask whatever the verdict), ``maps`` ("cells" or
    "full"), ``timings`` (seconds; adds ``write`` and ``total`` = load + detect + write, the
    detector's own total kept as ``detect``), ``outputs`` (npz, png paths).  ``compress=False``
    writes a plain npz (only worth it with ``full_maps``: a 12-MP heatmap is 48 MB raw).
    """
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    npz, png = out_dir / f"{name}.npz", out_dir / f"{name}.png"
    tmp = out_dir / f".{name}.npz.tmp"
    with open(tmp, "wb") as fh:
        # numpy's stubs read **kwds as savez's allow_pickle flag; they are the named arrays.
        (np.savez_compressed if compress else np.savez)(fh, **npz_arrays(result, full_maps))  # type: ignore[arg-type]
    tmp.replace(npz)  # renamed into place: a killed run never leaves a half-written npz
    fraction = float(result.mask.mean()) if result.mask.size else 0.0
    verdict, pct = getattr(result, "verdict", "unknown"), getattr(result, "percentile", None)
    judged = f"verdict {verdict}" + (f" (percentile {pct:.1f})" if pct is not None else "")
    caption = "   ".join(
        [name, judged, *(f"{k} {v:.4g}" for k, v in result.scores.items()), f"splice {100 * fraction:.1f}%"]
    )
    # Outline only a splice the verdict stands behind: the mean-shift mask always finds a "smaller
    # side", on an authentic photo too, and an outline reads as a finding.
    write_overlay(
        png,
        rgb,
        result.heatmap,
        result.mask,
        getattr(result, "ncuts_mask", None),
        caption,
        max_side,
        outlines=verdict == "spliced",
    )
    timings = {k: round(float(v), 6) for k, v in result.timings.items()}
    timings["detect"] = timings.pop("total", round(sum(v for k, v in timings.items() if k != "load"), 6))
    timings["write"] = round(time.perf_counter() - t0, 6)
    timings["total"] = round(timings.get("load", 0.0) + timings["detect"] + timings["write"], 6)
    rec: dict[str, Any] = {"name": name, "height": int(result.heatmap.shape[0]), "width": int(result.heatmap.shape[1])}
    g = getattr(result, "grid", None)
    if g is not None:
        rec["patches"] = g.count
        rec["grid"] = {"patch": g.patch, "rows": g.shape[0], "cols": g.shape[1], "stride": _stride(g)}
    return {
        **rec,
        "scores": {k: float(v) for k, v in result.scores.items()},
        "percentile": pct,
        "verdict": verdict,
        "verdict_reason": getattr(result, "verdict_reason", ""),
        "reference": getattr(result, "reference", {}),
        "splice_fraction": round(fraction, 6),
        "maps": "full" if full_maps or getattr(result, "cell_map", None) is None else "cells",
        "timings": timings,
        "outputs": {"npz": str(npz), "png": str(png)},
    }


def npz_arrays(result: DetectionResult, full_maps: bool = False) -> dict[str, np.ndarray]:
    """The npz content of :func:`write_outputs` (optional parts only when the result has them).

    Always: ``detection`` float32 [] (= ``score_mean_dist``, else the first score; higher =
    spliced), ``scores_score_exp``/``scores_score_mean_dist`` float64 [], ``percentile`` float64
    [] (0..100, NaN without a reference), ``verdict`` str [], ``image_size`` int64 [2] (H, W).
    On the grid's cells: ``cell_map`` float32 [rows, cols] 0..1 (the mean-shift heatmap),
    ``ncuts_cell_map`` float32 [rows, cols] 0..1 and ``ncuts_cells`` bool [rows, cols] (both
    absent with ``--no-ncuts``), ``grid_ys``/``grid_xs`` int64 (patch top-left corners),
    ``patch`` int64 []; :func:`exiflang.eval.forensics.maps.full_maps` expands them to [H,W].
    With ``full_maps`` (or a result without a cell map, e.g. a baseline's), also PhotoHolmes'
    ``heatmap`` float32 [H,W] 0..1 and ``mask`` bool [H,W], and ``ncuts_mask`` bool [H,W] /
    ``ncuts_heatmap`` float32 [H,W] 0..1 when the result has them.
    """
    scores = result.scores
    main_score = scores[DEFAULT_SCORE] if DEFAULT_SCORE in scores else next(iter(scores.values()), float("nan"))
    pct = getattr(result, "percentile", None)
    arrays: dict[str, np.ndarray] = {
        "detection": np.float32(main_score),
        "percentile": np.float64(np.nan if pct is None else pct),
        "verdict": np.array(getattr(result, "verdict", "unknown")),
        "image_size": np.asarray(result.heatmap.shape[:2], dtype=np.int64),
    }
    arrays.update({f"scores_{k}": np.float64(v) for k, v in scores.items()})
    cells = {
        "cell_map": getattr(result, "cell_map", None),
        "ncuts_cell_map": getattr(result, "ncuts_cell_map", None),
        "ncuts_cells": getattr(result, "ncuts_cells", None),
    }
    arrays.update(
        {k: np.asarray(v, dtype=bool if k == "ncuts_cells" else np.float32) for k, v in cells.items() if v is not None}
    )
    if full_maps or cells["cell_map"] is None:
        arrays.update(heatmap=result.heatmap.astype(np.float32), mask=result.mask.astype(bool))
        if (ncuts_mask := getattr(result, "ncuts_mask", None)) is not None:
            arrays["ncuts_mask"] = ncuts_mask.astype(bool)
        if getattr(result, "ncuts_heatmap", None) is not None:
            arrays["ncuts_heatmap"] = np.asarray(result.ncuts_heatmap, dtype=np.float32)
    g = getattr(result, "grid", None)
    if g is not None:
        arrays.update(
            grid_ys=np.asarray(g.ys, dtype=np.int64), grid_xs=np.asarray(g.xs, dtype=np.int64), patch=np.int64(g.patch)
        )
    return arrays


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """``results.jsonl`` -> name -> record (the last line of a name wins; broken lines ignored)."""
    records: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return records
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # e.g. the half-written last line of a killed run: that image is redone
        if isinstance(rec, dict) and isinstance(rec.get("name"), str):
            records.pop(rec["name"], None)
            records[rec["name"]] = rec
    return records


def write_results(path: Path, earlier: dict[str, dict[str, Any]], records: Iterable[dict[str, Any]]) -> None:
    """Rewrite ``results.jsonl`` with one line per name: ``earlier`` lines kept, ``records`` (this
    run's) replacing those of the same name, in first-seen order; written to a temp name, then renamed."""
    merged = dict(earlier)
    merged.update({r["name"]: r for r in records})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in merged.values()))
    tmp.replace(path)


def assign_names(paths: list[Path], earlier: dict[str, dict[str, Any]]) -> list[str]:
    """One output name per input: its stem, ``stem-2``, ``stem-3``... when taken.

    Taken = used by an earlier input of this run or by an earlier run's record for another file
    (compared case-insensitively, for case-insensitive file systems).  A file an earlier run
    already named keeps its name, so reruns write to the same outputs.
    """
    by_path = {rec.get("path"): name for name, rec in earlier.items()}
    taken = {name.lower(): rec.get("path") for name, rec in earlier.items()}
    names: list[str] = []
    used: set[str] = set()
    for p in paths:
        key = source_key(p)
        name = by_path.get(key)
        if name is None or name.lower() in used:
            stem, i = p.stem or "image", 1
            name = stem
            while name.lower() in used or taken.get(name.lower(), key) != key:
                i += 1
                name = f"{stem}-{i}"
        names.append(name)
        used.add(name.lower())
    return names


def source_key(path: Path) -> str:
    """The absolute path (symlinks kept) that identifies an input across runs."""
    return os.path.abspath(path)


def _stride(g: Grid) -> int:
    return g.ys[1] - g.ys[0] if len(g.ys) > 1 else g.xs[1] - g.xs[0] if len(g.xs) > 1 else 0


def source_stamp(path: Path) -> dict[str, int]:
    """Size and mtime of the input file: a changed file is not 'already done'."""
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_done(
    rec: dict[str, Any] | None, path: Path, settings: dict[str, Any], expect: dict[str, Any] | None = None
) -> bool:
    """True when ``rec`` answered this very file with these settings and its outputs exist
    (and its record has the values of ``expect``, e.g. the map format and the reference)."""
    if not rec or rec.get("status") != "ok" or rec.get("path") != source_key(path):
        return False
    try:
        same_source = rec.get("source") == source_stamp(path)
    except OSError:
        return False
    outs = rec.get("outputs", {})
    if any(rec.get(k) != v for k, v in (expect or {}).items()):
        return False
    return (
        same_source and rec.get("settings") == settings and all(Path(outs.get(k, "")).is_file() for k in ("npz", "png"))
    )


def fmt_table(records: Iterable[dict[str, Any]], states: dict[str, str]) -> str:
    """The terminal summary: name | size | patches | score_exp | score_mean_dist | percentile | verdict |
    splice area % | seconds | status."""
    head = [
        "name",
        "size",
        "patches",
        "score_exp",
        "score_mean_dist",
        "percentile",
        "verdict",
        "splice area %",
        "seconds",
        "status",
    ]
    rows = []
    for r in records:
        if r.get("status") == "ok":
            s = r["scores"]
            pct = r.get("percentile")
            rows.append(
                [
                    r["name"],
                    f"{r['width']}x{r['height']}",
                    str(r["patches"]),
                    f"{s['score_exp']:.4g}",
                    f"{s['score_mean_dist']:.4f}",
                    "-" if pct is None else f"{pct:.1f}",
                    str(r.get("verdict", "unknown")),
                    f"{100 * r['splice_fraction']:.1f}",
                    f"{r['timings']['total']:.2f}",
                    states.get(r["name"], "done"),
                ]
            )
        else:
            rows.append([r["name"], "-", "-", "-", "-", "-", "-", "-", "-", "error"])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), "-+-".join("-" * w for w in widths), *map(line, rows)])


def find_inputs(items: list[str], out_dir: Path, include_masks: bool = False) -> tuple[list[Path], int]:
    """(inputs to run, how many mask-named files in the named folders were left out).

    Folders are expanded (:func:`exiflang.eval.images.expand_inputs`); duplicates are dropped, and so is
    anything inside the output folder (our own PNGs).
    """
    out_real = out_dir.resolve()
    seen, paths, masks = set(), [], 0
    for item in items:
        root = Path(item).expanduser()
        skip_masks = not include_masks and root.is_dir()  # a file named by hand always runs
        for p in expand_inputs([item]):
            real = p.resolve()
            if real in seen or (p.is_file() and out_real in real.parents):
                continue
            seen.add(real)
            if skip_masks and is_mask_file(p, root):
                masks += 1
                continue
            paths.append(p)
    return paths, masks
