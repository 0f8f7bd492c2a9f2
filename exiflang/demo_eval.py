"""`make demo`'s evaluation half: embeddings, index and lookup, splice detection and benchmark, the report.

Each step takes the demo folder and what training produced, reuses finished outputs, prints a
short readable summary, and returns what the HTML report (:mod:`exiflang.eval.report.html`) shows.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exiflang.eval.forensics.settings import DetectorConfig

CAMERA_TAGS = ("Make", "Model")


def _step(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.perf_counter()


def _truth(path: Path) -> dict[str, str]:
    """The photo's own EXIF (for scoring the lookup only; the lookup itself reads pixels alone)."""
    from exiflang.pipeline.exif.parse import ExifReadError, read_exif

    try:
        return read_exif(path.read_bytes())
    except (ExifReadError, OSError):
        return {}


def lookup_step(
    out: Path, model: Path, shards: Path, held_photos: list[Path], k: int = 10
) -> tuple[list[dict], dict[str, float]]:
    """Embed the training shards, index them, look up every held-out photo; Make/Model accuracy."""
    from exiflang import api
    from exiflang.commands.lookup import answer
    from exiflang.eval.embed.run import embed_shards
    from exiflang.eval.embed.store import load_embeddings
    from exiflang.eval.index.lookup import format_lookup
    from exiflang.eval.index.run import build_index

    t = _step(f"embeddings and index of the training shards -> {out / 'emb'}, {out / 'index'}")
    embed_shards(model, shards, out / "emb", progress=True)
    if not (out / "index" / "index.json").is_file():
        build_index(load_embeddings(out / "emb"), out / "index")
    info = json.loads((out / "index" / "index.json").read_text())
    print(f"{info.get('n')} vectors, {info.get('kind')} index ({time.perf_counter() - t:.1f} s)")

    t = _step(f"lookup: {len(held_photos)} held-out photos, k={k} (pixels only, no EXIF read)")
    # Through the Python API, as `exiflang lookup` and `exiflang serve` answer.
    loaded, index = api.load(model), api.load_index(out / "index")
    results: list[dict[str, Any]] = []
    for path in held_photos:
        try:
            results.append(answer(path, loaded.lookup(path, index, k)))
        except api.ImageInputError as exc:
            results.append({"file": str(path), "error": str(exc)})
    hits = {tag: [0, 0] for tag in CAMERA_TAGS}
    for res, path in zip(results, held_photos):
        res["truth"] = {tag: v for tag, v in _truth(path).items() if tag in res.get("predictions", {})}
        for tag in CAMERA_TAGS:
            pred, true = res.get("predictions", {}).get(tag, {}).get("value"), res["truth"].get(tag)
            if true is not None:
                hits[tag][0] += int(pred == true)
                hits[tag][1] += 1
    (out / "lookup.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    if results:
        print(format_lookup(results[0], max_neighbours=5))
    acc = {f"{tag} accuracy": h[0] / h[1] for tag, h in hits.items() if h[1]}
    print(
        "held-out "
        + ", ".join(f"{k_} {v:.3f}" for k_, v in acc.items())
        + f" ({time.perf_counter() - t:.1f} s; all answers in {out / 'lookup.jsonl'})"
    )
    return results, acc


def _cut_from(manifest: Path, photos: list[Path]) -> bool:
    """True when every host and donor photo of a make-splices ``manifest`` is one of ``photos``."""
    allowed = {p.resolve() for p in photos}
    with manifest.open(newline="") as fh:
        used = {r[k] for r in csv.DictReader(fh) for k in ("host_file", "donor_file") if r.get(k)}
    return all(Path(u).resolve() in allowed for u in used)


def splice_step(
    out: Path, model: Path, held_photos: list[Path], count: int, seed: int, per_side: int | None = None
) -> tuple[list[dict], dict[str, Any]]:
    """make-splices from held-out photos, the benchmark (EXIF model and NOI), one detection overlay;
    ``per_side``: the detector's patches per side in all three (None: the authors' grid)."""
    from exiflang import api
    from exiflang.eval.benchmark.run import run_benchmark
    from exiflang.eval.benchmark.splices import make_splices
    from exiflang.eval.forensics.detect import write_outputs

    t = _step(f"splices between held-out photos of different cameras -> {out / 'splices'}")
    manifest = out / "splices" / "manifest.csv"
    if manifest.is_file() and not _cut_from(manifest, held_photos):
        # e.g. a demo folder from before the synthetic splices moved to larger photos
        print("the splice set there was cut from other photos: rebuilt, with its benchmark and overlay")
        for name in ("splices", "benchmark", "detect"):
            shutil.rmtree(out / name, ignore_errors=True)
    if not manifest.is_file():
        try:
            make_splices(held_photos, out / "splices", count, seed=seed, progress=False)
        except ValueError as exc:  # e.g. the user's photos come from one camera model
            print(f"splice test skipped: {exc}")
            return [], {}
    grid = api.DetectorConfig() if per_side is None else api.DetectorConfig(per_side=per_side)
    metrics = run_benchmark(model, "folder", out / "splices", out / "benchmark", progress=True, per_side=grid.per_side)
    print((out / "benchmark" / "metrics.md").read_text().rstrip())
    print(f"({time.perf_counter() - t:.1f} s; per image: {out / 'benchmark' / 'per_image.csv'})")

    calibrate_step(model, held_photos, detector=grid)
    t = _step("detect on one generated splice")
    spliced = sorted((out / "splices" / "spliced").glob("*.png"))
    if not spliced:
        return [], metrics
    rgb = api.read_image(spliced[0])
    # As `exiflang detect` (on the grid the reference was calibrated on, so that it is judged).
    result = api.load(model, detector=grid).detect(rgb, max_side=None, name=str(spliced[0])).result
    rec = write_outputs(result, rgb, out / "detect", spliced[0].stem)
    truth = out / "splices" / "masks" / spliced[0].name
    det = {
        "name": rec["name"],
        "overlay_png": rec["outputs"]["png"],
        "scores": rec["scores"],
        "timings": rec["timings"],
        "truth_mask_png": str(truth) if truth.is_file() else None,
    }
    print(
        f"{spliced[0].name}: verdict {rec['verdict']} (percentile {rec['percentile']}), "
        + ", ".join(f"{k} {v:.4f}" for k, v in rec["scores"].items())
        + f"; overlay {rec['outputs']['png']} ({time.perf_counter() - t:.1f} s)"
    )
    return [det], metrics


def calibrate_step(model: Path, photos: list[Path], limit: int = 60, detector: DetectorConfig | None = None) -> None:
    """The model's reference of authentic detection scores (``calibration.json``: detection
    verdicts), from up to ``limit`` of the held-out photos the splices are cut from, on
    ``detector``'s grid (an :class:`exiflang.api.DetectorConfig`; None: the default); kept when done."""
    from exiflang import api
    from exiflang.eval.forensics.calibrate import pick_photos
    from exiflang.eval.forensics.calibration import load_reference

    if load_reference(model) is not None:
        return
    t = _step(f"reference detection scores of authentic held-out photos -> {model / 'calibration.json'}")
    picked = pick_photos([str(p) for p in photos], limit, seed=0)
    try:  # as `exiflang calibrate`: scored by the API's detector, saved to the model folder
        cal = api.load(model, detector=detector).calibrate(picked, source="demo: held-out photos")
    except ValueError as exc:  # too few usable photos: detections stay "unknown"
        print(f"no reference, verdicts stay 'unknown': {exc}")
        return
    print(f"{cal.reference.photos} authentic photos scored ({time.perf_counter() - t:.1f} s)")


def _benchmark_rows(metrics: dict[str, Any]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for method, s in (metrics.get("methods") or {}).items():
        det = (s.get("detection") or {}).get(s.get("default_score") or "", {})
        rows[f"{method}: p-mAP"] = s.get("p_map")
        rows[f"{method}: cIoU"] = s.get("ciou")
        rows[f"{method}: detection AP ({s.get('default_score')})"] = det.get("ap")
    return rows


def report_step(
    out: Path,
    run: Path,
    lookup: list[dict],
    lookup_acc: dict[str, float],
    detections: list[dict],
    bench: dict[str, Any],
    notes: list[str] | None = None,
) -> Path:
    """The self-contained HTML report of the whole demo."""
    from exiflang.eval.report.html import write_report

    result = json.loads((run / "result.json").read_text()) if (run / "result.json").is_file() else {}
    metrics: dict[str, dict] = {
        "held-out camera retrieval (image -> EXIF text)": {
            "top-1": result.get("eval/camera_top1"),
            "chance": result.get("eval/chance"),
        },
        "lookup (k-NN vote over the training photos)": lookup_acc,
        "splice benchmark (generated splices of held-out photos)": _benchmark_rows(bench),
    }
    return write_report(
        out / "report.html",
        title="exiflang demo",
        run_dir=run,
        lookup=lookup[:3],
        detections=detections,
        metrics=metrics,
        notes=notes,
    )
