"""The tag-evaluation report: per-tag accuracies averaged over tags, written as JSON and Markdown.

``tag_eval.json``: the settings, ``tags`` {tag: {kind, n_classes, n_train, n_test, labels,
majority_class, probe_c, accuracy: {knn, zero_shot, probe, majority}}}, ``average`` (the same
four over the evaluated tags; ``zero_shot`` is ``null`` for a model without a text tower),
``n_tags_evaluated`` and ``skipped`` {tag: reason}.  ``tag_eval.md``: the table
``tag | classes | n | kNN | zero-shot | probe | majority``, the average in the last row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

METHODS = ("knn", "zero_shot", "probe", "majority")
HEADERS = {"knn": "kNN", "zero_shot": "zero-shot", "probe": "probe", "majority": "majority"}


def averages(tags: dict[str, dict]) -> dict[str, float | None]:
    """Per method, the mean accuracy over ``tags`` (``None`` when a method has no number for some tag)."""
    out: dict[str, float | None] = {}
    for m in METHODS:
        values = [t["accuracy"][m] for t in tags.values()]
        out[m] = (sum(values) / len(values)) if values and all(v is not None for v in values) else None
    return out


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(report: dict) -> str:
    """The Markdown table of a report (plus one line naming the tags not evaluated)."""
    cols = ["tag", "classes", "n"] + [HEADERS[m] for m in METHODS]
    lines = ["| " + " | ".join(cols) + " |", "|---|---:|---:|" + "---:|" * len(METHODS)]
    for tag, t in report["tags"].items():
        cells = [_escape(tag), str(t["n_classes"]), str(t["n_test"])] + [_cell(t["accuracy"][m]) for m in METHODS]
        lines.append("| " + " | ".join(cells) + " |")
    avg = report["average"]
    cells = [f"**average ({report['n_tags_evaluated']} tags)**", "", ""] + [f"**{_cell(avg[m])}**" for m in METHODS]
    lines.append("| " + " | ".join(cells) + " |")
    if report.get("skipped"):
        lines.append("")
        lines.append("Not evaluated: " + "; ".join(f"{_escape(t)} ({r})" for t, r in report["skipped"].items()) + ".")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """Write ``out/tag_eval.json`` and ``out/tag_eval.md``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / "tag_eval.json", out / "tag_eval.md"
    _atomic_write(jpath, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _atomic_write(mpath, markdown(report))
    return jpath, mpath
