"""Small inline-SVG line charts (axes, 1-2-5 ticks, legend) for the HTML report; no plotting library.

:func:`line_chart` returns one ``<svg>`` element as a string, every text escaped, ready to drop
into an HTML page.  Non-finite points are left out; a series of one point is drawn as a dot.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")


@dataclass
class Series:
    """One line: ``xs`` and ``ys`` of equal length (non-finite pairs are dropped when drawn)."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: str | None = None
    dashed: bool = False
    points: list[tuple[float, float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.xs) != len(self.ys):
            raise ValueError(f"series {self.name!r}: {len(self.xs)} xs but {len(self.ys)} ys")
        self.points = [(float(x), float(y)) for x, y in zip(self.xs, self.ys) if _finite(x) and _finite(y)]


def _finite(v: object) -> bool:
    try:
        return math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps 1, 2 or 5 x 10^n) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range [{lo}, {hi}] is not finite")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:  # a flat line: a small symmetric range around it
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks, t = [], first
    while t < hi + step * 0.999:
        ticks.append(round(t, 12))
        t += step
    return ticks


def format_tick(value: float, step: float) -> str:
    """A tick label with just enough decimals for ``step``; 12000 -> ``12k``, 1.5e6 -> ``1.5M``."""
    if abs(value) >= 1e6 and step >= 1e5:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e4 and step >= 1e3:
        return f"{value / 1e3:g}k"
    if step >= 1 or value == 0:
        return f"{value:.0f}" if step >= 1 else "0"
    decimals = min(6, max(0, -int(math.floor(math.log10(step)))))
    return f"{value:.{decimals}f}"


def line_chart(
    series: Sequence[Series],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    width: int = 640,
    height: int = 300,
    y_range: tuple[float, float] | None = None,
) -> str:
    """An SVG line chart of ``series`` (colours from :data:`PALETTE` unless given).

    ``y_range`` fixes the y axis (e.g. ``(0, 1)`` for accuracies); otherwise it spans the data.
    With no finite point at all the chart says "no data".
    """
    esc = html.escape
    left, right, bottom = 64, 16, 44
    top = (28 if title else 8) + 18  # title row, then the legend row
    legend_x = [left + sum(40 + 6.5 * len(s.name) for s in series[:i]) for i in range(len(series))]
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title or y_label)}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
    ]
    if title:
        out.append(
            f'<text x="{width / 2:.1f}" y="17" text-anchor="middle" font-size="13" '
            f'font-weight="bold">{esc(title)}</text>'
        )
    pts = [p for s in series for p in s.points]
    if not pts:
        out.append(
            f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" fill="#888">no data</text></svg>'
        )
        return "".join(out)
    xt = nice_ticks(min(p[0] for p in pts), max(p[0] for p in pts))
    yt = nice_ticks(*y_range) if y_range else nice_ticks(min(p[1] for p in pts), max(p[1] for p in pts))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (min(max(y, y0), y1) - y0) / (y1 - y0) * ph

    out.append(_axes(xt, yt, sx, sy, left, top, pw, ph))
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{esc(x_label)}</text>')
    out.append(
        f'<text transform="translate(14,{top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">{esc(y_label)}</text>'
    )
    colours = [esc(s.colour or PALETTE[i % len(PALETTE)]) for i, s in enumerate(series)]
    out += [_polyline(s, c, sx, sy) for s, c in zip(series, colours)]
    for i, (s, colour) in enumerate(zip(series, colours)):  # legend: one row above the plot
        lx, ly = legend_x[i], top - 9
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        out.append(
            f'<line x1="{lx:.1f}" y1="{ly}" x2="{lx + 22:.1f}" y2="{ly}" '
            f'stroke="{colour}" stroke-width="2"{dash}/>'
            f'<text x="{lx + 26:.1f}" y="{ly + 4}">{esc(s.name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _axes(xt: list[float], yt: list[float], sx, sy, left: int, top: int, pw: int, ph: int) -> str:
    """Frame, grid lines and tick labels."""
    parts = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>']
    xstep, ystep = xt[1] - xt[0], yt[1] - yt[0]
    for t in xt:
        x = sx(t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#e4e4e4"/>'
            f'<text x="{x:.1f}" y="{top + ph + 15}" text-anchor="middle">'
            f"{html.escape(format_tick(t, xstep))}</text>"
        )
    for t in yt:
        y = sy(t)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{html.escape(format_tick(t, ystep))}</text>"
        )
    return "".join(parts)


def _polyline(s: Series, colour: str, sx, sy) -> str:
    """The series as a polyline (dots too when it has few points)."""
    coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
    dash = ' stroke-dasharray="5,3"' if s.dashed else ""
    parts = []
    if len(s.points) > 1:
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>')
    if len(s.points) <= 30:
        parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{colour}"/>' for x, y in s.points]
    return "".join(parts)
