"""Inline SVG charts for the static site, drawn by hand (no matplotlib, no JavaScript, no network).

Two charts, both returned as :class:`markupsafe.Markup` so Jinja2 embeds them unescaped; every text
that comes from the caller (title, axis labels, series names, ``data_curve``) is escaped here:

* :func:`line_chart`: one ``<polyline data-series="NAME">`` per series (accuracy vs eps, vs steps, ...),
  a circle marker per point, axes with ~5 "nice" ticks, a legend and a ``<title>``;
* :func:`ecdf_chart`: the empirical CDF (step lines, y = % of samples) of per-sample minimal
  adversarial distances per attack; an infinite distance (nothing found) counts in the denominator
  but is never reached, so the curve levels off below 100%.

The root is ``<svg class="curve" data-curve=... role="img" viewBox=... width=... height=...>``. It also
states its mapping, so a test can invert any point: ``data-plot="left top right bottom"`` (pixels),
``data-x-domain``/``data-y-domain`` ("lo hi", data units) and ``data-x-scale`` ("linear" or "log", base
10). NaN points are skipped (and non-positive x on a log axis); with nothing to draw the SVG says
"no data". Example::

    line_chart([("pgd-ce", [(0.1, 80.0), (0.2, 41.5)])], x_label="eps", y_label="accuracy (%)",
               title="Accuracy vs eps", data_curve="eps")
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

COLORS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
          "#bab0ac")
DASHES = ("", "6 3", "2 2", "8 3 2 3")  # after ten series the colours repeat with another dash pattern
FONT = 11
LEGEND_ROW = 14

Point = tuple[float, float]


def line_chart(series: Sequence[tuple[str, Sequence[Point]]], *, x_label: str, y_label: str, title: str,
               data_curve: str, y_range: tuple[float, float] | None = (0.0, 100.0), x_log: bool = False,
               width: int = 440, height: int = 260) -> Markup:
    """One line with markers per series; ``y_range`` fixes the y axis (widened if data lie outside it)."""
    clean = [(name, [(float(x), float(y)) for x, y in pts if _plottable(float(x), float(y), x_log)])
             for name, pts in series]
    return _render(clean, x_label=x_label, y_label=y_label, title=title, data_curve=data_curve, y_range=y_range,
                   x_log=x_log, width=width, height=height, markers=True)


def ecdf_chart(series: Sequence[tuple[str, Sequence[float]]], *, x_label: str, title: str, data_curve: str,
               y_label: str = "samples (%)", x_log: bool = False, width: int = 440, height: int = 260) -> Markup:
    """Empirical CDF per series: y(x) = % of the series' non-NaN values <= x, drawn as steps."""
    kept = [(name, [float(v) for v in values if not math.isnan(float(v))]) for name, values in series]
    finite = [v for _, vs in kept for v in vs if math.isfinite(v) and (v > 0 or not x_log)]
    if not finite:
        return _render([], x_label=x_label, y_label=y_label, title=title, data_curve=data_curve, y_range=(0.0, 100.0),
                       x_log=x_log, width=width, height=height, markers=False)
    lo, hi, _ = _axis(min(finite), max(finite), log=x_log)
    steps = [(name, _ecdf_steps(vs, lo, hi, x_log)) for name, vs in kept]
    return _render(steps, x_label=x_label, y_label=y_label, title=title, data_curve=data_curve, y_range=(0.0, 100.0),
                   x_log=x_log, width=width, height=height, markers=False, x_domain=(lo, hi))


def _ecdf_steps(values: list[float], lo: float, hi: float, log: bool) -> list[Point]:
    """Vertices of the step curve from ``lo`` to ``hi``; values below the axis (<= 0 on a log axis) start it."""
    n = len(values)
    if n == 0:
        return []
    shown = sorted(v for v in values if math.isfinite(v) and (v > 0 or not log))
    below = sum(1 for v in values if v == -math.inf or (log and v <= 0))
    level = 100.0 * below / n
    pts: list[Point] = [(lo, level)]
    i = 0
    while i < len(shown):
        v = shown[i]
        while i < len(shown) and shown[i] == v:
            i += 1
        new = 100.0 * (below + i) / n
        pts += [(v, level), (v, new)]
        level = new
    pts.append((hi, level))
    return pts


def _plottable(x: float, y: float, log: bool) -> bool:
    return math.isfinite(x) and math.isfinite(y) and (x > 0 or not log)


def _nice_step(span: float, n: int = 5) -> float:
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))


def _axis(dmin: float, dmax: float, *, log: bool, fixed: tuple[float, float] | None = None) \
        -> tuple[float, float, list[float]]:
    """Domain (lo, hi) and tick values for data in [dmin, dmax]; ``fixed`` is kept if the data fit in it."""
    if log:  # domain and ticks on the 1-2-5 sequence; only powers of ten are labelled when that gives too many
        a, b = math.floor(math.log10(dmin) + 1e-9), math.ceil(math.log10(dmax) - 1e-9)
        nice = [_clean(m * 10.0 ** k) for k in range(a - 1, b + 1) for m in (1, 2, 5)]
        lo = max(v for v in nice if v <= dmin * (1 + 1e-9))
        hi = min(v for v in nice if v >= dmax * (1 - 1e-9))
        if hi <= lo:
            hi = nice[nice.index(lo) + 1]
        ticks = [v for v in nice if lo <= v <= hi]
        if len(ticks) > 7:
            ticks = [v for v in ticks if _clean(10.0 ** round(math.log10(v))) == v]
            every = max(1, math.ceil((len(ticks) - 1) / 5))
            ticks = ticks[::every]
        return lo, hi, ticks
    if fixed is not None and fixed[0] <= dmin and dmax <= fixed[1] and fixed[0] < fixed[1]:
        lo, hi = fixed
        step = _nice_step(hi - lo)
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        return lo, hi, [_clean(k * step) for k in range(first, last + 1)]
    if fixed is not None:
        dmin, dmax = min(dmin, fixed[0]), max(dmax, fixed[1])
    if dmax - dmin <= 0:
        pad = abs(dmin) * 0.1 or 1.0
        dmin, dmax = dmin - pad, dmax + pad
    step = _nice_step(dmax - dmin)
    first, last = math.floor(dmin / step + 1e-9), math.ceil(dmax / step - 1e-9)
    return _clean(first * step), _clean(last * step), [_clean(k * step) for k in range(first, last + 1)]


def _clean(v: float) -> float:
    return float(f"{v:.12g}")


def _label(v: float) -> str:
    return f"{v:.6g}"


def _f(v: float) -> str:
    return f"{v:.2f}"


class _Frame:
    """The pixel box of the plot and the mapping from data to pixels."""

    def __init__(self, box: tuple[float, float, float, float], xd: tuple[float, float], yd: tuple[float, float],
                 log: bool) -> None:
        self.left, self.top, self.right, self.bottom = box
        self.xd, self.yd, self.log = xd, yd, log

    def px(self, x: float) -> float:
        lo, hi = self.xd
        t = (math.log10(x) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) if self.log else (x - lo) / (hi - lo)
        return self.left + t * (self.right - self.left)

    def py(self, y: float) -> float:
        lo, hi = self.yd
        return self.bottom - (y - lo) / (hi - lo) * (self.bottom - self.top)


def _render(series: list[tuple[str, list[Point]]], *, x_label: str, y_label: str, title: str, data_curve: str,
            y_range: tuple[float, float] | None, x_log: bool, width: int, height: int, markers: bool,
            x_domain: tuple[float, float] | None = None) -> Markup:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="curve" data-curve="{escape(data_curve)}" role="img" '
            f'aria-label="{escape(title)}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="{FONT}"')
    pts = [p for _, ps in series for p in ps]
    if not pts:
        return Markup(f'{head}><title>{escape(title)}</title>'
                      f'<text class="chart-title" x="{width / 2:.1f}" y="14" text-anchor="middle" font-weight="600">'
                      f'{escape(title)}</text><text class="no-data" x="{width / 2:.1f}" y="{height / 2:.1f}" '
                      f'text-anchor="middle" fill="#57606a">no data</text></svg>')
    if x_domain is not None:
        x0, x1 = x_domain
        x_ticks = _axis(x0, x1, log=x_log)[2]
    else:
        x0, x1, x_ticks = _axis(min(p[0] for p in pts), max(p[0] for p in pts), log=x_log)
    y0, y1, y_ticks = _axis(min(p[1] for p in pts), max(p[1] for p in pts), log=False, fixed=y_range)
    legend = _legend_layout([name for name, _ in series], width - 16)
    rows = max(r for r, _ in legend) + 1 if legend else 0
    top, left, right = 24.0, 52.0, width - 12.0
    bottom = max(top + 40.0, height - 36.0 - rows * LEGEND_ROW)
    fr = _Frame((left, top, right, bottom), (x0, x1), (y0, y1), x_log)
    out = [f'{head} data-plot="{left:g} {top:g} {right:g} {bottom:g}" data-x-domain="{x0!r} {x1!r}" '
           f'data-y-domain="{y0!r} {y1!r}" data-x-scale="{"log" if x_log else "linear"}">',
           f'<title>{escape(title)}</title>',
           f'<text class="chart-title" x="{width / 2:.1f}" y="14" text-anchor="middle" font-weight="600">'
           f'{escape(title)}</text>']
    for v in x_ticks:
        x = fr.px(v)
        out.append(f'<g class="tick x-tick" data-value="{v!r}"><line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(top)}" '
                   f'y2="{_f(bottom + 4)}" stroke="#eaeef2"/><text x="{_f(x)}" y="{_f(bottom + 15)}" '
                   f'text-anchor="middle">{_label(v)}</text></g>')
    for v in y_ticks:
        y = fr.py(v)
        out.append(f'<g class="tick y-tick" data-value="{v!r}"><line x1="{_f(left - 4)}" x2="{_f(right)}" '
                   f'y1="{_f(y)}" y2="{_f(y)}" stroke="#eaeef2"/><text x="{_f(left - 6)}" y="{_f(y + 4)}" '
                   f'text-anchor="end">{_label(v)}</text></g>')
    out += [f'<line class="axis x-axis" x1="{_f(left)}" x2="{_f(right)}" y1="{_f(bottom)}" y2="{_f(bottom)}" '
            f'stroke="#57606a"/>',
            f'<line class="axis y-axis" x1="{_f(left)}" x2="{_f(left)}" y1="{_f(top)}" y2="{_f(bottom)}" '
            f'stroke="#57606a"/>',
            f'<text class="x-label" x="{_f((left + right) / 2)}" y="{_f(bottom + 29)}" text-anchor="middle">'
            f'{escape(x_label)}</text>',
            f'<text class="y-label" transform="translate(12 {_f((top + bottom) / 2)}) rotate(-90)" '
            f'text-anchor="middle">{escape(y_label)}</text>']
    for i, (name, ps) in enumerate(series):
        color, dash = COLORS[i % len(COLORS)], DASHES[(i // len(COLORS)) % len(DASHES)]
        style = f' stroke-dasharray="{dash}"' if dash else ""
        coords = " ".join(f"{_f(fr.px(x))},{_f(fr.py(y))}" for x, y in ps)
        out.append(f'<polyline class="line" data-series="{escape(name)}" points="{coords}" fill="none" '
                   f'stroke="{color}" stroke-width="1.8"{style}/>')
        if markers and ps:
            out.append(f'<g class="markers" fill="{color}">')
            out += [f'<circle cx="{_f(fr.px(x))}" cy="{_f(fr.py(y))}" r="2.8"><title>{escape(name)}: '
                    f'{_label(x)}, {_label(y)}</title></circle>' for x, y in ps]
            out.append("</g>")
    out.append('<g class="legend">')
    for i, ((name, _), (row, x)) in enumerate(zip(series, legend, strict=True)):
        color, dash = COLORS[i % len(COLORS)], DASHES[(i // len(COLORS)) % len(DASHES)]
        y = bottom + 44 + row * LEGEND_ROW
        style = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{_f(x)}" x2="{_f(x + 14)}" y1="{_f(y - 4)}" y2="{_f(y - 4)}" stroke="{color}" '
                   f'stroke-width="2"{style}/><text x="{_f(x + 18)}" y="{_f(y)}">{escape(_short(name))}</text>')
    out.append("</g></svg>")
    return Markup("".join(out))


def _short(name: str, n: int = 36) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _legend_layout(names: list[str], avail: float) -> list[tuple[int, float]]:
    """(row, x) of each legend entry, flowing left to right (text width estimated at 0.6 em a character)."""
    out, row, x = [], 0, 8.0
    for name in names:
        w = 18 + 0.6 * FONT * len(_short(name)) + 12
        if x > 8.0 and x + w > avail:
            row, x = row + 1, 8.0
        out.append((row, x))
        x += w
    return out
