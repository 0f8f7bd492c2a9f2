"""Quantise each vocabulary tag's EXIF values into a few common classes, fitted on the train set.

The paper's Table 5 "EXIF" column scores tag prediction on *classes*, not raw strings: rare
values are dropped and numeric tags are binned.  :func:`fit_tag_classes` decides, per tag:

- **numeric** when at least ``numeric_frac`` (0.9) of its present values parse as one number
  (:func:`parse_number`: "1/200 sec" -> 0.005, "f/8.0" -> 8.0, "55 mm" -> 55, "-2/3 EV" ->
  -0.667, "72 dots per inch" -> 72, "100" -> 100) *and* it has more distinct numbers than
  ``max_bins``.  Numeric tags get quantile bins (at most ``max_bins``, equal edges merged).
  The edges are order statistics of the train values, hence the same on a
  log or a linear scale: exposure times spread over decades get bins as balanced as focal
  lengths do, and every edge is a value cameras really write.  The few values of a numeric tag
  that do not parse are handled like categorical values (kept when frequent).
- **categorical** otherwise (a numeric tag with few distinct values, such as "X Resolution" or
  "Exif Version", is categorical too: each value is already a class).  A value is a class when
  it occurs in at least ``min_frac`` (1 %) of the train images carrying the tag and in at least
  ``min_count`` (2) of them; every other value is *rare* and is not scored (``classify`` gives
  ``None``), as the issue asks.

A tag with fewer than 2 classes is not evaluated (:attr:`TagClasses.evaluable` is False and
:attr:`TagClasses.reason` says why).  Each class keeps a ``representative``: the most common
raw train value inside it (zero-shot text ranking renders that value).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A whole value that is one number: optional "f/" prefix, a decimal or a rational, an optional
# unit made of letters and spaces ("sec", "mm", "EV", "dots per inch", "pixels").  Dates,
# versions like "Ver.1.00" and words do not match.
_NUMBER_VALUE = re.compile(r"^\s*(?:f/)?\s*([+-]?\d+(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?\s*([A-Za-z][A-Za-z ]*)?\s*$")


def parse_number(value: str | None) -> float | None:
    """The number one EXIF value states, or ``None``.

    ``"1/200 sec"`` -> 0.005, ``"f/8.0"`` -> 8.0, ``"55 mm"`` -> 55.0, ``"-2/3 EV"`` -> -0.667,
    ``"72 dots per inch"`` -> 72.0, ``"4.0"`` -> 4.0; ``"2009:01:12 21:14:28"``, ``"Ver.1.00"``,
    ``"Auto"`` and a zero denominator -> ``None``.
    """
    if value is None:
        return None
    m = _NUMBER_VALUE.match(str(value))
    if not m:
        return None
    num = float(m.group(1))
    if m.group(2) is not None:
        den = float(m.group(2))
        if den == 0:
            return None
        num /= den
    return num if math.isfinite(num) else None


def _unit(value: str) -> str:
    m = _NUMBER_VALUE.match(value)
    return (m.group(3) or "").strip() if m else ""


def format_number(x: float, fractions: bool) -> str:
    """A bin edge for a label: ``1/250`` below 0.5 when the tag's values are written as fractions,
    whole numbers without a decimal point, else 4 significant digits (never an exponent)."""
    if fractions and 0 < x <= 0.5:
        return f"1/{1 / x:.0f}"
    if float(x).is_integer() or abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.4g}"


@dataclass
class TagClasses:
    """The classes of one tag.

    ``kind``: ``"numeric"`` (bins, plus any frequent non-numeric values), ``"categorical"`` or
    ``"none"`` (no values).  ``labels[i]``/``representative[i]``/``counts[i]`` describe class
    ``i``: bins first (ascending), then kept categorical values (most frequent first).
    ``edges``: the inner bin edges, ascending (bin ``i`` is ``[edges[i-1], edges[i])``, the
    first bin open below and the last open above).
    """

    tag: str
    kind: str
    labels: list[str]
    representative: list[str]
    counts: list[int]
    edges: list[float] = field(default_factory=list)
    n_present: int = 0
    n_images: int = 0
    n_rare: int = 0
    values: dict[str, int] = field(default_factory=dict)  # kept categorical value -> class id

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 1 if self.kind == "numeric" else 0

    @property
    def evaluable(self) -> bool:
        """At least two classes: a tag with one class cannot be predicted wrongly."""
        return len(self.labels) >= 2

    @property
    def reason(self) -> str:
        """Why the tag is not evaluated (empty when it is)."""
        if self.evaluable:
            return ""
        if self.n_present == 0:
            return "no train image has this tag"
        if not self.labels:
            return "every value is rare"
        return "one class after dropping rare values"

    def classify(self, value: str | None) -> int | None:
        """Class id of a raw value, or ``None`` (tag absent, or a rare value: not scored)."""
        if value is None:
            return None
        value = str(value).strip()
        hit = self.values.get(value)
        if hit is not None:
            return hit
        if self.kind == "numeric":
            x = parse_number(value)
            if x is not None:
                return int(np.searchsorted(np.asarray(self.edges, dtype=np.float64), x, side="right"))
        return None

    def classify_many(self, values: Iterable[str | None]) -> np.ndarray:
        """``int64 [N]`` class ids, ``-1`` where :meth:`classify` gives ``None``."""
        return np.asarray([-1 if (c := self.classify(v)) is None else c for v in values], dtype=np.int64)

    def to_dict(self) -> dict:
        """JSON-ready description (for reports)."""
        return {
            "kind": self.kind,
            "labels": self.labels,
            "representative": self.representative,
            "train_counts": self.counts,
            "edges": self.edges,
            "n_present": self.n_present,
            "n_rare": self.n_rare,
        }


def _bin_edges(xs: np.ndarray, max_bins: int) -> list[float]:
    """Inner edges of at most ``max_bins`` quantile bins of ``xs`` ``float64 [n]`` (edges are data values).

    Edge ``i`` is the sorted value at index ``ceil(i * n / max_bins)``: with left-closed bins
    ``[e_i, e_i+1)`` exactly ``ceil(i * n / max_bins)`` values fall below it when values are
    distinct, so bins are balanced; tied values (cameras write few distinct shutter speeds)
    merge equal edges, and every bin holds at least its left edge.
    """
    ordered = np.sort(xs)
    idx = np.minimum(np.ceil(np.arange(1, max_bins) * len(ordered) / max_bins).astype(int), len(ordered) - 1)
    inner = np.unique(ordered[idx])
    return [float(e) for e in inner[inner > ordered[0]]]  # an edge at the minimum: empty first bin


def _bin_labels(edges: Sequence[float], unit: str, fractions: bool) -> list[str]:
    f = [format_number(e, fractions) for e in edges]
    suffix = f" {unit}" if unit else ""
    if not f:
        return [f"all{suffix}"]
    return [f"< {f[0]}{suffix}"] + [f"[{a}, {b}){suffix}" for a, b in itertools.pairwise(f)] + [f">= {f[-1]}{suffix}"]


def _kept(counter: Counter, n_present: int, min_frac: float, min_count: int) -> list[tuple[str, int]]:
    need = max(min_count, math.ceil(min_frac * n_present))
    # Most frequent first; equal counts by value, so the class order is deterministic.
    return sorted(((v, c) for v, c in counter.items() if c >= need), key=lambda vc: (-vc[1], vc[0]))


def fit_one(
    tag: str,
    raw: Sequence[str | None],
    *,
    min_frac: float = 0.01,
    min_count: int = 2,
    max_bins: int = 8,
    numeric_frac: float = 0.9,
) -> TagClasses:
    """Fit one tag's classes on its train values (``None`` = the image lacks the tag)."""
    present = [str(v).strip() for v in raw if v is not None]
    counter = Counter(present)
    numbers = {v: parse_number(v) for v in counter}
    n_num = sum(c for v, c in counter.items() if numbers[v] is not None)
    distinct = {x for x in numbers.values() if x is not None}
    base: dict[str, Any] = dict(tag=tag, n_present=len(present), n_images=len(raw))
    if not present:
        return TagClasses(kind="none", labels=[], representative=[], counts=[], **base)
    if n_num >= numeric_frac * len(present) and len(distinct) > max_bins:
        xs = np.asarray([numbers[v] for v in present if numbers[v] is not None], dtype=np.float64)
        edges = _bin_edges(xs, max_bins)
        units = Counter(_unit(v) for v in present if numbers[v] is not None)
        fractions = any("/" in v and not v.startswith("f/") for v in counter)
        labels = _bin_labels(edges, units.most_common(1)[0][0], fractions)
        bins = np.searchsorted(np.asarray(edges), xs, side="right")
        counts = np.bincount(bins, minlength=len(labels)).tolist()
        reps = []
        for b in range(len(labels)):
            inside = Counter(
                v
                for v in present
                if (x := numbers[v]) is not None and int(np.searchsorted(edges, x, side="right")) == b
            )
            reps.append(min(inside.items(), key=lambda vc: (-vc[1], vc[0]))[0])
        others = Counter({v: c for v, c in counter.items() if numbers[v] is None})
        kept = _kept(others, len(present), min_frac, min_count)
        values = {v: len(labels) + i for i, (v, _) in enumerate(kept)}
        n_rare = sum(others.values()) - sum(c for _, c in kept)
        return TagClasses(
            kind="numeric",
            labels=labels + [v for v, _ in kept],
            representative=reps + [v for v, _ in kept],
            counts=counts + [c for _, c in kept],
            edges=edges,
            n_rare=n_rare,
            values=values,
            **base,
        )
    kept = _kept(counter, len(present), min_frac, min_count)
    return TagClasses(
        kind="categorical",
        labels=[v for v, _ in kept],
        representative=[v for v, _ in kept],
        counts=[c for _, c in kept],
        n_rare=len(present) - sum(c for _, c in kept),
        values={v: i for i, (v, _) in enumerate(kept)},
        **base,
    )


def fit_tag_classes(exifs: Sequence[Mapping[str, str]], tags: Sequence[str], **options: Any) -> dict[str, TagClasses]:
    """Per tag of ``tags`` (in order), its :class:`TagClasses` fitted on the train ``exifs``.

    ``options``: ``min_frac``, ``min_count``, ``max_bins``, ``numeric_frac``
    (see :func:`fit_one` and the module docstring).
    """
    return {tag: fit_one(tag, [e.get(tag) for e in exifs], **options) for tag in tags}
