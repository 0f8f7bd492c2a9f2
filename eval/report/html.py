"""The demo report: one self-contained HTML page (inline CSS, SVG charts, base64 images).

:func:`write_report` assembles whatever parts it is given, each optional ("not run" otherwise):

- ``run_dir``: a training run folder — ``metrics.jsonl`` (loss and held-out ``eval/*`` curves
  against the step, drawn by :mod:`exiflang.eval.report.svg_plot`), ``result.json`` (final numbers) and
  ``config.yaml`` (folded away);
- ``lookup``: the records of ``exiflang lookup --json`` (``file`` or ``path``, ``neighbours``,
  ``predictions``, or ``error``), each optionally with ``truth`` ``{tag: value}``: the query
  photo as a JPEG thumbnail (long side <= 320 px), the nearest photos and the predicted tags;
- ``detections``: records like ``exiflang detect``'s (``name``, ``scores``, ``timings``, and the
  overlay under ``overlay_png`` or ``outputs.png``; optional ``truth_mask_png`` and ``metrics``):
  the overlay at <= 900 px wide (PNG when that stays under 400 kB, else JPEG);
- ``metrics``: ``{section: {name: value}}`` tables; a section whose values are all dicts becomes
  one row per name with a column per inner key (e.g. per-dataset benchmark results);
- ``notes``: lines shown under the title.

Every text is HTML-escaped; nothing outside the file is referenced.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from exiflang.errors import CommandError, check_out_file, naming, run_main
from exiflang.eval.images import ImageError, load_rgb
from exiflang.eval.report.svg_plot import Series, line_chart

NOT_RUN = '<p class="missing">not run</p>'
EVAL_SKIP = {"eval/metric", "eval/cameras", "eval/images"}  # duplicates and counts, not curves
CSS = """body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 12px}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
h3{margin:22px 0 8px}table{border-collapse:collapse;margin:8px 0 14px;font-size:.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}.missing{color:#888;font-style:italic}
.err{color:#b00020}.ok{color:#137333;font-weight:bold}.bad{color:#b00020;font-weight:bold}
.row{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}img{border:1px solid #ccc;max-width:100%}
.muted{color:#666;font-size:.9em}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:.85em}"""
PathLike = str | Path


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A table cell's text: floats to 4 significant digits, None as a dash, containers as JSON."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 120 else text[:117] + "..."
    return str(value)


class Raw(str):
    """Markup already escaped, placed in a table cell as is."""


def table(headers: Iterable[Any], rows: Iterable[Iterable[Any]]) -> str:
    """An HTML table; numeric cells right-aligned; cells are escaped unless wrapped in :class:`Raw`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{v if isinstance(v, Raw) else esc(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def image_data_uri(
    source: PathLike | np.ndarray,
    max_width: int,
    max_height: int | None = None,
    kind: str = "auto",
    png_limit: int = 400_000,
) -> str:
    """A photo, overlay or mask -> ``data:`` URI, downscaled to fit ``max_width`` x ``max_height``.

    ``kind``: ``jpeg``, ``png`` or ``auto`` (PNG if it stays under ``png_limit`` bytes, else JPEG).
    Files are read with :func:`exiflang.eval.images.load_rgb` (so failures are one-line ``ImageError``).
    """
    rgb = load_rgb(source) if not isinstance(source, np.ndarray) else source
    img = Image.fromarray(np.ascontiguousarray(rgb))
    img.thumbnail((max_width, max_height or max_width * 4), Image.Resampling.LANCZOS)
    if kind in ("png", "auto"):
        buf = io.BytesIO()
        img.save(buf, "PNG", optimize=True)
        if kind == "png" or buf.tell() <= png_limit:
            return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img_tag(
    source: PathLike | np.ndarray, alt: str, max_width: int, max_height: int | None = None, kind: str = "auto"
) -> str:
    """``<img>`` with the embedded image, or a one-line note saying why there is none."""
    try:
        uri = image_data_uri(source, max_width, max_height, kind)
    except (ImageError, OSError, ValueError) as exc:
        return f'<p class="err">image unavailable: {esc(" ".join(str(exc).split()))}</p>'
    return f'<img src="{uri}" alt="{esc(alt)}">'


def read_jsonl(path: PathLike) -> list[dict]:
    """The JSON objects of a JSON Lines file, broken or non-object lines skipped."""
    rows = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def training_section(run_dir: PathLike | None) -> str:
    """Loss and held-out curves, final numbers and the resolved config of a run folder."""
    if run_dir is None or not (Path(run_dir) / "metrics.jsonl").is_file():
        return NOT_RUN
    run = Path(run_dir)
    rows = read_jsonl(run / "metrics.jsonl")
    loss = [(r["step"], r["loss"]) for r in rows if "step" in r and "loss" in r]
    held = [(r["step"], r["eval/loss"]) for r in rows if "step" in r and "eval/loss" in r]
    lines = [Series("training loss", [s for s, _ in loss], [v for _, v in loss])]
    if held:  # the held-out loss (exiflang.train.heldout) on the same axes as the training loss
        lines.append(Series("held-out loss", [s for s, _ in held], [v for _, v in held]))
    parts = [line_chart(lines, title="Training loss", x_label="step", y_label="loss")]
    keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k not in EVAL_SKIP | {"eval/loss"}})
    if keys:
        curves = [
            Series(
                k[5:], [r["step"] for r in rows if k in r], [r[k] for r in rows if k in r], dashed=k == "eval/chance"
            )
            for k in keys
        ]
        parts.append(
            line_chart(curves, title="Held-out evaluation", x_label="step", y_label="score", y_range=(0.0, 1.0))
        )
    result_path = run / "result.json"
    if result_path.is_file():
        try:
            result = json.loads(result_path.read_text())
            parts.append("<h3>Final numbers</h3>" + table(["name", "value"], sorted(result.items())))
        except ValueError as exc:
            parts.append(f'<p class="err">{esc(result_path)}: not JSON ({esc(exc)})</p>')
    cfg = run / "config.yaml"
    if cfg.is_file():
        parts.append(
            f"<details><summary>config.yaml</summary><pre>{esc(cfg.read_text(errors='replace'))}</pre></details>"
        )
    speed = [r["samples_per_s"] for r in rows if isinstance(r.get("samples_per_s"), (int, float))]
    summary = f"{len(loss)} logged steps, last step {loss[-1][0]}, final loss {loss[-1][1]:.4g}" if loss else ""
    if speed:
        summary += f", median {float(np.median(speed)):.1f} samples/s"
    return f'<p class="muted">{esc(summary)}</p>' + "".join(parts)


def _exif_cell(exif: Any, tag: str) -> str:
    return str(exif.get(tag, "")) if isinstance(exif, dict) else ""


def lookup_section(records: list[dict] | None, max_neighbours: int = 10) -> str:
    """Per query photo: thumbnail, nearest training photos, predicted tags (with truth if given)."""
    if not records:
        return NOT_RUN
    parts = []
    for rec in records:
        path = rec.get("file") or rec.get("path") or "?"
        parts.append(f"<h3>{esc(Path(str(path)).name)}</h3>")
        if rec.get("error"):
            parts.append(f'<p class="err">{esc(rec["error"])}</p>')
            continue
        truth = rec.get("truth") or {}
        nb = list(rec.get("neighbours") or [])[:max_neighbours]
        nb_rows = [
            [
                n.get("rank", i + 1),
                n.get("similarity"),
                n.get("key", ""),
                _exif_cell(n.get("exif"), "Make"),
                _exif_cell(n.get("exif"), "Model"),
            ]
            for i, n in enumerate(nb)
        ]
        preds = rec.get("predictions") or {}
        order = [t for t in ("Make", "Model") if t in preds] + [t for t in preds if t not in ("Make", "Model")]
        pred_rows, hits, scored = [], 0, 0
        for tag in order:
            p = preds[tag] if isinstance(preds[tag], dict) else {"value": preds[tag]}
            row = [tag, p.get("value"), p.get("share"), p.get("n_with_tag", p.get("votes"))]
            if truth:
                true = truth.get(tag)
                mark = ""
                if true is not None:
                    scored += 1
                    hit = str(p.get("value")) == str(true)
                    hits += hit
                    mark = Raw('<span class="ok">✓</span>' if hit else '<span class="bad">✗</span>')
                row += [true, mark]
            pred_rows.append(row)
        head = ["tag", "predicted", "vote share", "neighbours with tag"] + (["truth", ""] if truth else [])
        size = f"{rec['width']}x{rec['height']} px, " if rec.get("width") and rec.get("height") else ""
        score = f"; {hits} of {scored} tags with a known truth predicted right" if scored else ""
        parts.append(
            f'<p class="muted">{esc(size)}{len(nb)} nearest training photos{esc(score)}</p>'
            f'<div class="row">{img_tag(path, "query photo", 320, 320, "jpeg")}'
            f"<div>{table(['#', 'similarity', 'key', 'Make', 'Model'], nb_rows)}</div></div>"
            + (table(head, pred_rows) if pred_rows else '<p class="missing">no predictions</p>')
        )
    return "".join(parts)


def _resolve(path: Any, bases: list[Path]) -> Path | None:
    if not path:
        return None
    p = Path(str(path))
    if p.is_absolute() or p.exists():
        return p
    return next((b / p for b in bases if (b / p).exists()), p)


def detection_section(records: list[dict] | None, bases: list[Path]) -> str:
    """Per image: the overlay PNG, scores, timings, and the truth mask and metrics when given."""
    if not records:
        return NOT_RUN
    parts = []
    for rec in records:
        name = rec.get("name") or Path(str(rec.get("overlay_png", "?"))).stem
        parts.append(f"<h3>{esc(name)}</h3>")
        if rec.get("error"):
            parts.append(f'<p class="err">{esc(rec["error"])}</p>')
            continue
        overlay = _resolve(rec.get("overlay_png") or (rec.get("outputs") or {}).get("png"), bases)
        parts.append(img_tag(overlay, f"{name} overlay", 900) if overlay else '<p class="missing">no overlay</p>')
        info = []
        for label, key in (("scores", "scores"), ("seconds", "timings"), ("metrics", "metrics")):
            if isinstance(rec.get(key), dict) and rec[key]:
                info.append(f"<div><b>{label}</b>{table(['name', 'value'], rec[key].items())}</div>")
        if rec.get("splice_fraction") is not None:
            info.append(f"<div><b>predicted splice area</b><p>{100 * float(rec['splice_fraction']):.1f}%</p></div>")
        mask = _resolve(rec.get("truth_mask_png"), bases)
        if mask:
            info.append(f"<div><b>ground-truth mask</b><br>{img_tag(mask, 'truth mask', 300, 300, 'png')}</div>")
        parts.append(f'<div class="row">{"".join(info)}</div>')
    return "".join(parts)


def metrics_section(metrics: dict[str, dict] | None) -> str:
    """``{section: {name: value}}`` as tables (all-dict sections as one wide table)."""
    if not metrics:
        return NOT_RUN
    parts = []
    for title, values in metrics.items():
        parts.append(f"<h3>{esc(title)}</h3>")
        if not isinstance(values, dict) or not values:
            parts.append(NOT_RUN if not values else f"<p>{esc(fmt(values))}</p>")
        elif all(isinstance(v, dict) for v in values.values()):
            cols = list(dict.fromkeys(k for v in values.values() for k in v))
            parts.append(table([""] + cols, [[name] + [v.get(c) for c in cols] for name, v in values.items()]))
        else:
            parts.append(table(["name", "value"], values.items()))
    return "".join(parts)


def write_report(
    out_html: PathLike,
    *,
    title: str,
    run_dir: PathLike | None = None,
    lookup: list[dict] | None = None,
    detections: list[dict] | None = None,
    metrics: dict[str, dict] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write the report to ``out_html`` (temp file, then rename) and return its path."""
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    bases = [out.parent] + ([Path(run_dir)] if run_dir else [])
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sections = [
        ("training", "Training", training_section(run_dir)),
        ("lookup", "Metadata lookup", lookup_section(lookup)),
        ("detection", "Splice detection", detection_section(detections, bases)),
        ("metrics", "Metrics", metrics_section(metrics)),
    ]
    nav = " · ".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name, _ in sections)
    note_html = "".join(f"<li>{esc(n)}</li>" for n in notes or [])
    body = "".join(f'<h2 id="{sid}">{esc(name)}</h2>{content}' for sid, name, content in sections)
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style>'
        f'</head><body><h1>{esc(title)}</h1><p class="muted">generated {esc(stamp)} · {nav}</p>'
        f"{'<ul>' + note_html + '</ul>' if note_html else ''}{body}</body></html>\n"
    )
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m exiflang.eval.report.html``: a report from files (JSON Lines for lookup/detections, JSON metrics).

    Exit status: 0 written, 2 a missing or damaged input file or an unwritable ``--out`` (one line;
    :func:`exiflang.errors.run_main`).
    """
    return run_main("exiflang report", _main, argv)


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m exiflang.eval.report.html", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the HTML file to write")
    ap.add_argument("--title", default="exiflang report")
    ap.add_argument("--run", help="training run folder (metrics.jsonl, result.json, config.yaml)")
    ap.add_argument("--lookup", help="JSON Lines of `exiflang lookup --json`")
    ap.add_argument("--detections", help="JSON Lines of detection records (e.g. detect's results.jsonl)")
    ap.add_argument("--metrics", help="JSON file {section: {name: value}}")
    ap.add_argument("--note", action="append", default=[], help="a line under the title (repeatable)")
    args = ap.parse_args(argv)
    check_out_file(args.out)
    for name in ("lookup", "detections", "metrics"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            raise CommandError(path, f"not found (--{name})")
    metrics = None
    if args.metrics:
        with naming(args.metrics):  # json's errors do not say which file
            metrics = json.loads(Path(args.metrics).read_text())
    if metrics is not None and not isinstance(metrics, dict):
        raise CommandError(args.metrics, "expected a JSON object {section: {name: value}}")
    out = write_report(
        args.out,
        title=args.title,
        run_dir=args.run,
        notes=args.note,
        metrics=metrics,
        lookup=read_jsonl(args.lookup) if args.lookup else None,
        detections=read_jsonl(args.detections) if args.detections else None,
    )
    print(f"report: {out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
