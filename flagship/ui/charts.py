"""Inline SVG charts of the UI: a layer's 10,000-bucket allocation bar, the monitor's
sparkline and the cumulative lift over time with its confidence band.

They reuse the experiment report's text helper (`_t`, which escapes every label) and its
colours, so the report and the UI escape and draw alike. Each returns Markup: the SVG is
built here from escaped pieces, never from raw user text.
"""
from __future__ import annotations

import math
from html import escape
from typing import Any, Sequence

from markupsafe import Markup

from flagship.experiments.report import BAD, FONT, GOOD, NEUTRAL, _pct, _t
from flagship.flags.bucketing import BUCKETS

PALETTE = ("#0969da", "#8250df", "#bf3989", "#bc4c00", "#1a7f37", "#9a6700", "#0550ae", "#6639ba")
FREE = "#eaeef2"


def colour_of(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def allocation_bar(layer: dict[str, Any], compact: bool = False) -> dict[str, Any]:
    """The layer's buckets as one bar (each experiment's ranges coloured, free ones grey),
    and the legend rows the page shows under it."""
    width, height = 1000, 18 if compact else 44
    scale = width / BUCKETS
    parts, legend = [], []
    for index, allocation in enumerate(layer["allocations"]):
        colour = colour_of(index)
        for start, end in allocation["ranges"]:
            parts.append(f'<rect x="{start * scale:.2f}" y="0" width="{max((end - start) * scale, 0.5):.2f}" '
                         f'height="{height}" fill="{colour}"><title>{escape(allocation["experiment"])}: '
                         f'buckets {start}–{end - 1}</title></rect>')
        legend.append({"experiment": allocation["experiment"], "status": allocation["status"],
                       "colour": colour, "percentage": allocation["percentage"],
                       "ranges": allocation["ranges"]})
    for start, end in layer["free_ranges"]:
        parts.append(f'<rect x="{start * scale:.2f}" y="0" width="{(end - start) * scale:.2f}" '
                     f'height="{height}" fill="{FREE}"><title>free: buckets {start}–{end - 1}</title></rect>')
    taken = ", ".join(f"{a['experiment']} {a['percentage']:g}%" for a in layer["allocations"]) or "no experiment"
    summary = f"Layer {layer['key']}: {taken}; free {layer['free_percentage']:g}%"
    svg = (f'<svg class="allocation" viewBox="0 0 {width} {height}" width="100%" height="{height}" '
           f'preserveAspectRatio="none" role="img" aria-label="{escape(summary)}">'
           + "".join(parts) + "</svg>")
    released = [e for e in layer.get("experiments", []) if e["status"] in ("completed", "terminated")]
    return {"svg": Markup(svg), "legend": legend, "summary": summary, "released": released}


def sparkline(values: Sequence[float], label: str, width: int = 220, height: int = 40) -> Markup:
    """A small line of `values` (oldest first) with its label as the accessible name."""
    if not values:
        return Markup(f'<span class="muted">{escape(label)}: no data yet</span>')
    top = max(values) or 1
    step = width / max(len(values) - 1, 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values))
    if len(values) == 1:
        points = f"0,{height / 2:.1f} {width},{height / 2:.1f}"
    return Markup(f'<svg class="sparkline" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
                  f'role="img" aria-label="{escape(label)}"><polyline points="{points}" fill="none" '
                  f'stroke="#0969da" stroke-width="2"/></svg>')


# -- cumulative lift over time --------------------------------------------------------------

W, H, LEFT, RIGHT, TOP, BOTTOM = 780, 260, 64, 20, 28, 44


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def lift_points(series: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """Per day: relative lift and its CI for `variant` (the always-valid sequence if there)."""
    points = []
    for day in series:
        c = next((c for c in day["comparisons"] if c.get("variant") == variant), None)
        if c is None or not _finite(c.get("relative_lift")):
            continue
        ci = c.get("relative_ci") or [None, None]
        points.append({"at": day["at"], "lift": c["relative_lift"], "lo": ci[0], "hi": ci[1]})
    return points


def lift_chart(series: list[dict[str, Any]], variant: str, metric: str, level: float) -> Markup:
    """Cumulative relative lift of `variant` by day with its confidence band and a zero line."""
    points = lift_points(series, variant)
    title = f"Cumulative relative lift of {variant} on {metric}, by day, with its {level:g}% confidence band"
    if not points:
        return Markup(f'<p class="muted">{escape(title)}: no daily data yet.</p>')
    values = [v for p in points for v in (p["lift"], p["lo"], p["hi"]) if _finite(v)] + [0.0]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.1 or 0.01
    lo, hi = lo - pad, hi + pad
    x0, x1, y0, y1 = LEFT, W - RIGHT, TOP, H - BOTTOM
    step = (x1 - x0) / max(len(points) - 1, 1)

    def x(i: int) -> float:
        return x0 + i * step if len(points) > 1 else (x0 + x1) / 2

    def y(v: float) -> float:
        return y1 - (v - lo) / (hi - lo) * (y1 - y0)

    parts = [f'<svg viewBox="0 0 {W} {H}" width="100%" role="img" aria-labelledby="lift-{escape(metric)}-{escape(variant)}" '
             f'font-family="{escape(FONT)}" font-size="12" style="max-width:{W}px">',
             f'<title id="lift-{escape(metric)}-{escape(variant)}">{escape(title)}</title>',
             f'<rect width="{W}" height="{H}" fill="#fff"/>']
    band = [(x(i), y(p["hi"])) for i, p in enumerate(points) if _finite(p["lo"], p["hi"])]
    band += [(x(i), y(p["lo"])) for i, p in reversed(list(enumerate(points))) if _finite(p["lo"], p["hi"])]
    if band:
        parts.append('<polygon fill="#0969da" fill-opacity="0.15" stroke="none" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b in band) + '"/>')
    parts.append(f'<line x1="{x0}" y1="{y(0):.1f}" x2="{x1}" y2="{y(0):.1f}" stroke="#24292f" stroke-width="1.5"/>')
    line = " ".join(f"{x(i):.1f},{y(p['lift']):.1f}" for i, p in enumerate(points))
    last = points[-1]
    colour = NEUTRAL
    if _finite(last["lo"], last["hi"]) and (last["lo"] > 0 or last["hi"] < 0):
        colour = GOOD if last["lift"] > 0 else BAD
    parts.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2.5"/>')
    for i, p in enumerate(points):
        if _finite(p["lo"], p["hi"]):  # each day's interval as an error bar (the band joins them)
            parts.append(f'<line x1="{x(i):.1f}" y1="{y(p["lo"]):.1f}" x2="{x(i):.1f}" y2="{y(p["hi"]):.1f}" '
                         f'stroke="{colour}" stroke-opacity="0.6" stroke-width="2"/>')
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(p["lift"]):.1f}" r="3" fill="{colour}">'
                     f'<title>{escape(p["at"][:10])}: {escape(_pct(p["lift"]))} '
                     f'[{escape(_pct(p["lo"]))}, {escape(_pct(p["hi"]))}]</title></circle>')
    for v in (lo, 0.0, hi):
        parts.append(_t(x0 - 6, y(v) + 4, _pct(v) if v else "0", text_anchor="end", fill="#57606a"))
    parts.append(_t(x0, H - BOTTOM + 18, points[0]["at"][:10], fill="#57606a"))
    if len(points) > 1:
        parts.append(_t(x1, H - BOTTOM + 18, last["at"][:10], text_anchor="end", fill="#57606a"))
    parts.append(_t((x0 + x1) / 2, H - 8, f"relative lift of {variant} vs control ({level:g}% CI band)",
                    text_anchor="middle", fill="#24292f"))
    parts.append("</svg>")
    return Markup("\n".join(parts))
