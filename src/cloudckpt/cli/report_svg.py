"""Inline SVG charts for ``cloudckpt report``: no scripts, no fonts, no network. Every text that
goes into the markup passes through :func:`esc` (names and values come from storage and are
untrusted). Pure functions; any caller.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["PALETTE", "Cell", "Lane", "Series", "esc", "lanes_chart", "line_chart", "nice_ticks"]

#: distinguishable on white and for common colour-vision deficiencies (Okabe-Ito, then greys)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000", "#999999", "#666666")
_W, _H = 880, 250
_L, _R, _T, _B = 78, 16, 34, 40  # margins: left, right, top, bottom
_MAX_TEXT = 120


def esc(text: object, limit: int = _MAX_TEXT) -> str:
    """``text`` as HTML/SVG text or attribute value: escaped, and cut to ``limit`` chars."""
    s = str(text)
    if len(s) > limit:
        s = s[: limit - 1] + "\u2026"
    return html.escape(s, quote=True)


@dataclass(frozen=True)
class Series:
    """One line: ``points`` are ``(step, value)``, finite, in step order."""

    name: str
    points: tuple[tuple[float, float], ...]
    color: str
    dashed: bool = False


def nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw)
    if integer:
        step = max(1.0, math.ceil(step))
    first = math.ceil(lo / step - 1e-9) * step
    count = math.floor((hi - first) / step + 1e-9) + 1
    return [first + i * step for i in range(max(0, min(count, 50)))]


class _Scale:
    def __init__(self, lo: float, hi: float, a: float, b: float) -> None:
        if hi <= lo:
            lo, hi = lo - 1.0, hi + 1.0
        self.lo, self.hi, self.a, self.b = lo, hi, a, b

    def __call__(self, v: float) -> float:
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)


def _frame(title: str, kind: str, body: str, note: str = "") -> str:
    extra = f'<p class="note">{esc(note, 400)}</p>' if note else ""
    return (f'<figure class="chart" data-chart="{esc(kind)}"><figcaption>{esc(title, 200)}'
            f'</figcaption>{body}{extra}</figure>')


def _fmt_step(v: float) -> str:
    return f"{v:,.0f}"


def line_chart(title: str, kind: str, series: Sequence[Series], *, y_label: str,
               y_fmt: Callable[[float], str], zero: bool = True, y_integer: bool = False,
               marks: Sequence[tuple[float, str]] = (), note: str = "",
               empty: str = "nothing recorded") -> str:
    """A line chart over steps, with a point (and a tooltip) per value. ``marks`` are
    ``(step, label)`` drawn as dashed red verticals (damaged checkpoints). ``zero``: the y
    axis starts at 0; ``y_integer``: only whole-number ticks."""
    pts = [p for s in series for p in s.points]
    if not pts:
        return _frame(title, kind, f'<p class="empty">{esc(empty, 300)}</p>', note)
    xs = [p[0] for p in pts] + [m[0] for m in marks]
    ys = [p[1] for p in pts]
    ylo, yhi = (min(0.0, min(ys)) if zero else min(ys)), max(ys)
    if yhi == ylo:  # one value: a band around it (from 0 up when the axis starts at 0)
        pad = abs(yhi) * 0.1 or 1.0
        ylo, yhi = (ylo if zero and ylo >= 0 else ylo - pad), yhi + pad
    elif not zero:
        pad = (yhi - ylo) * 0.08
        ylo, yhi = ylo - pad, yhi + pad
    yt = nice_ticks(ylo, yhi, integer=y_integer)
    if yt:
        ylo, yhi = min(ylo, yt[0]), max(yhi, yt[-1])
    xlo, xhi = min(xs), max(xs)
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    sx, sy = _Scale(xlo, xhi, _L, _W - _R), _Scale(ylo, yhi, _H - _B, _T)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" '
           f'height="{_H}" role="img" aria-label="{esc(title)}">',
           f'<rect class="bg" x="{_L}" y="{_T}" width="{_W - _L - _R}" height="{_H - _T - _B}"/>']
    for t in yt:
        y = sy(t)
        out.append(f'<line class="grid" x1="{_L}" x2="{_W - _R}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{_L - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{esc(y_fmt(t))}</text>')
    for t in nice_ticks(xlo, xhi, 8, integer=True):
        x = sx(t)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{_T}" y2="{_H - _B}"/>'
                   f'<text class="tick" x="{x:.1f}" y="{_H - _B + 16}" text-anchor="middle">'
                   f'{esc(_fmt_step(t))}</text>')
    out.append(f'<text class="axis" x="{(_L + _W - _R) / 2:.0f}" y="{_H - 6}" '
               f'text-anchor="middle">step</text>'
               f'<text class="axis" x="14" y="{(_T + _H - _B) / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(_T + _H - _B) / 2:.0f})">{esc(y_label)}</text>')
    for step, label in marks:
        x = sx(step)
        out.append(f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{_T}" y2="{_H - _B}">'
                   f'<title>{esc(f"step {step:,.0f}: {label}", 300)}</title></line>')
    for s in series:
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        if len(s.points) > 1:
            out.append(f'<polyline class="line" points="{coords}" stroke="{esc(s.color)}"'
                       f'{dash}/>')
        for x, y in s.points:
            out.append(f'<circle class="pt" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" '
                       f'fill="{esc(s.color)}"><title>{esc(s.name, 80)} at step '
                       f'{x:,.0f}: {esc(y_fmt(y))}</title></circle>')
    out.append(_legend(series))
    out.append("</svg>")
    return _frame(title, kind, "".join(out), note)


def _legend(series: Sequence[Series]) -> str:
    out, x = [], float(_L)
    for s in series:
        name = esc(s.name, 40)
        out.append(f'<rect x="{x:.0f}" y="10" width="12" height="12" fill="{esc(s.color)}"/>'
                   f'<text class="legend" x="{x + 16:.0f}" y="20">{name}</text>')
        x += 30 + 7 * min(len(s.name), 40)
        if x > _W - 120:
            break
    return "".join(out)


@dataclass(frozen=True)
class Cell:
    """One checkpoint's cell in a lane: a category (legend entry) and a tooltip."""

    category: str
    tip: str


@dataclass(frozen=True)
class Lane:
    """A row of cells, one per checkpoint, in the order of the chart's steps."""

    name: str
    cells: tuple[Cell, ...]


def lanes_chart(title: str, kind: str, steps: Sequence[int], lanes: Sequence[Lane],
                colors: dict[str, str], note: str = "") -> str:
    """Categorical lanes (tier, retention, lineage): one column per checkpoint, in step
    order, each cell coloured by its category; a legend of the categories used."""
    if not steps:
        return _frame(title, kind, '<p class="empty">no checkpoints</p>', note)
    lane_h, left = 30, 110
    cw = max(2.0, min(40.0, (_W - left - _R) / len(steps)))
    used = list(dict.fromkeys(c.category for lane in lanes for c in lane.cells))
    legend_rows = math.ceil(len(used) / 4)
    top = 8
    h = top + lane_h * len(lanes) + 24 + 18 * legend_rows
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {h}" width="{_W}" '
           f'height="{h}" role="img" aria-label="{esc(title)}">']
    for i, lane in enumerate(lanes):
        y = top + i * lane_h
        out.append(f'<text class="axis" x="{left - 8}" y="{y + 19}" text-anchor="end">'
                   f'{esc(lane.name, 20)}</text>')
        for j, cell in enumerate(lane.cells):
            color = colors.get(cell.category, "#999999")
            out.append(f'<rect class="cell" x="{left + j * cw:.1f}" y="{y + 4}" '
                       f'width="{max(1.0, cw - 2):.1f}" height="{lane_h - 8}" '
                       f'fill="{esc(color)}"><title>{esc(cell.tip, 300)}</title></rect>')
    every = max(1, math.ceil(len(steps) * 48 / (_W - left - _R)))
    y = top + lane_h * len(lanes) + 14
    for j in range(0, len(steps), every):
        out.append(f'<text class="tick" x="{left + j * cw + cw / 2:.1f}" y="{y}" '
                   f'text-anchor="middle">{esc(f"{steps[j]:,}")}</text>')
    for k, cat in enumerate(used):
        lx, ly = left + (k % 4) * 190, y + 12 + 18 * (k // 4)
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" '
                   f'fill="{esc(colors.get(cat, "#999999"))}"/>'
                   f'<text class="legend" x="{lx + 16}" y="{ly}">{esc(cat, 26)}</text>')
    out.append("</svg>")
    return _frame(title, kind, "".join(out), note)
