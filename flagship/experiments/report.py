"""Experiment reports: the setup and the results as a page, JSON or CSV, with a forest plot."""
from __future__ import annotations

import csv
import functools
import io
import math
from datetime import datetime
from html import escape
from typing import Any

import jinja2
from markupsafe import Markup

from flagship.experiments.results import results
from flagship.experiments.service import get_experiment
from flagship.runtime import Runtime

SETUP_FIELDS = ("name", "description", "hypothesis", "owner", "status", "flag", "layer",
                "traffic_percentage", "allocated_percentage", "targeting", "start_at", "end_at",
                "started_at", "ended_at", "minimum_sample_size", "significance_level", "power",
                "multiple_testing", "success_metrics", "guardrail_metrics", "version")
CSV_COLUMNS = ("metric", "role", "kind", "variant", "control_mean", "treatment_mean", "difference",
               "ci_low", "ci_high", "relative_lift", "relative_ci_low", "relative_ci_high",
               "p_value", "adjusted_p_value", "always_valid_p", "significant", "guardrail_status",
               "test", "note")
DECISIONS = {
    "ship": "Ship {variant}: it beats the control on the primary metric and no guardrail is breached.",
    "stop": "Stop the experiment: a guardrail metric got significantly worse.",
    "investigate": "Do not act on these numbers: the traffic split is broken (sample ratio mismatch). "
                   "Find the cause first.",
    "stop_for_futility": "Stop: the planned sample size was reached without a significant improvement.",
    "keep_running": "Keep running: there is not enough evidence to decide yet.",
}


def build_report(runtime: Runtime, key: str) -> dict[str, Any]:
    """The experiment's setup, its full results and when this report was generated."""
    experiment = get_experiment(runtime, key)  # NotFoundError first, before any aggregation
    setup = {name: experiment.get(name) for name in SETUP_FIELDS}
    total = sum(v["weight"] for v in experiment["variants"]) or 1.0
    setup["variants"] = [{"variant": v["variant"], "weight": v["weight"], "is_control": v["is_control"],
                          "share": v["weight"] / total} for v in experiment["variants"]]
    return {"experiment": key, "generated_at": runtime.clock().isoformat(), "setup": setup,
            "results": results(runtime, key)}


def comparison_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per metric x treatment comparison (the CSV rows; the plot's rows)."""
    control = report["results"]["control"]
    rows = []
    for metric in report["results"]["metrics"]:
        means = {v: s.get("mean") for v, s in metric["variants"].items()}
        for c in metric["comparisons"]:
            ci, rel_ci = c.get("ci") or [None, None], c.get("relative_ci") or [None, None]
            rows.append({
                "metric": metric["metric"], "role": metric["role"], "kind": metric["kind"],
                "direction": metric["direction"], "variant": c["variant"],
                "control_mean": means.get(control), "treatment_mean": means.get(c["variant"]),
                "difference": c.get("difference"), "ci_low": ci[0], "ci_high": ci[1],
                "relative_lift": c.get("relative_lift"), "relative_ci_low": rel_ci[0],
                "relative_ci_high": rel_ci[1], "p_value": c.get("p_value"),
                "adjusted_p_value": c.get("adjusted_p_value"),
                "always_valid_p": (c.get("always_valid") or {}).get("p_value"),
                "significant": c.get("significant"),
                "guardrail_status": (c.get("guardrail") or {}).get("status"),
                "test": c.get("test"), "note": c.get("error") or c.get("relative_note")})
    return rows


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # shortest text that reads back as the same float
    text = str(value)
    # a spreadsheet would run text starting with these as a formula
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def render_csv(report: dict[str, Any]) -> str:
    """The comparisons as CSV, one row per metric x treatment, numbers at full precision."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in comparison_rows(report):
        writer.writerow([_cell(row[column]) for column in CSV_COLUMNS])
    return out.getvalue()


# -- html ---------------------------------------------------------------------------------

def _num(value: Any, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _signed(value: Any, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:+.{digits}g}"


def _pct(value: Any, signed: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"


def _pval(value: Any) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _when(value: Any) -> str:
    if not value:
        return "—"
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return str(value)


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # not Flask's render_template: a report renders the same from the CLI or a job
    env = jinja2.Environment(loader=jinja2.PackageLoader("flagship", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, signed=_signed, pct=_pct, pval=_pval, when=_when)
    return env


def decision_text(decision: dict[str, Any]) -> str:
    """The decision as one plain sentence for a reader who does not read p-values."""
    template = DECISIONS.get(decision.get("action", ""), "No decision: {action}.")
    return template.format(variant=decision.get("variant", ""), action=decision.get("action", ""))


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page (inline CSS and SVG, no scripts, no external assets)."""
    return _environment().get_template("reports/experiment.html").render(
        report=report, setup=report["setup"], res=report["results"],
        decision_text=decision_text(report["results"]["decision"]),
        forest_plot=Markup(forest_plot_svg(report)))


# -- forest plot --------------------------------------------------------------------------

WIDTH, LABEL_W, VALUE_W, ROW_H, BOTTOM = 780, 210, 210, 30, 46
PLOT_X0, PLOT_X1 = LABEL_W + 12, WIDTH - VALUE_W - 12
GOOD, BAD, NEUTRAL = "#1a7f37", "#cf222e", "#57606a"
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"


def _finite(*values: Any) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _plot_row(row: dict[str, Any]) -> dict[str, Any]:
    """What one row draws: relative lift and CI when estimable, else the absolute difference."""
    if _finite(row["relative_lift"], row["relative_ci_low"], row["relative_ci_high"]):
        scale, est, lo, hi = "relative", row["relative_lift"], row["relative_ci_low"], row["relative_ci_high"]
        text = f"{_pct(est)} [{_pct(lo)}, {_pct(hi)}]"
    elif _finite(row["difference"]):
        scale, est, lo, hi = "absolute", row["difference"], row["ci_low"], row["ci_high"]
        text = f"Δ {_signed(est)} [{_signed(lo)}, {_signed(hi)}] abs."
    else:
        scale, est, lo, hi, text = "none", None, None, None, "not estimable"
    colour = NEUTRAL
    if row["significant"] and est is not None:
        better = est > 0 if row["direction"] == "increase" else est < 0
        colour = GOOD if better else BAD
    suffix = " (guardrail)" if row["role"] == "guardrail" else ""
    label = f"{row['metric']} · {row['variant']}"
    short = label if len(label + suffix) <= 32 else label[:31 - len(suffix)] + "…"
    return {"scale": scale, "est": est, "lo": lo, "hi": hi, "text": text, "colour": colour,
            "label": label + suffix, "short": short + suffix, "significant": bool(row["significant"])}


def _domain(rows: list[dict[str, Any]]) -> tuple[float, float]:
    values = [v for r in rows if r["scale"] == "relative" for v in (r["lo"], r["hi"], r["est"])]
    if not values:
        return -1.0, 1.0
    lo, hi = min(values + [0.0]), max(values + [0.0])
    if any(r["scale"] == "absolute" for r in rows):  # leave room on both sides of zero for them
        lo, hi = min(lo, -hi / 4), max(hi, -lo / 4)
    pad = (hi - lo) * 0.08 or 0.01
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float) -> list[float]:
    raw = (hi - lo) / 6
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step)
    return [i * step for i in range(first, int(math.floor(hi / step)) + 1)]


def _t(x: float, y: float, text: str, **attrs: Any) -> str:
    extra = "".join(f' {k.replace("_", "-")}="{escape(str(v))}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(text)}</text>'


def _interval_marks(r: dict[str, Any], y: float, to_x: Any) -> list[str]:
    """The CI line with caps (an arrow where an end is unbounded) and the point estimate."""
    x_lo = to_x(r["lo"]) if _finite(r["lo"]) else PLOT_X0
    x_hi = to_x(r["hi"]) if _finite(r["hi"]) else PLOT_X1
    x_lo, x_hi = max(PLOT_X0, x_lo), min(PLOT_X1, x_hi)
    dash = ' stroke-dasharray="5 3"' if r["scale"] == "absolute" else ""
    c = r["colour"]
    out = [f'<line x1="{x_lo:.1f}" y1="{y:.1f}" x2="{x_hi:.1f}" y2="{y:.1f}" stroke="{c}" stroke-width="2"{dash}/>']
    for x, bounded, sign in ((x_lo, _finite(r["lo"]), -1), (x_hi, _finite(r["hi"]), 1)):
        if bounded:
            out.append(f'<line x1="{x:.1f}" y1="{y - 5:.1f}" x2="{x:.1f}" y2="{y + 5:.1f}" stroke="{c}" stroke-width="2"/>')
        else:
            out.append(f'<path d="M{x:.1f},{y:.1f} l{-sign * 7},-4 v8 z" fill="{c}"/>')
    x = min(PLOT_X1, max(PLOT_X0, to_x(r["est"])))
    if r["scale"] == "absolute":
        out.append(f'<path d="M{x:.1f},{y - 6:.1f} l6,6 l-6,6 l-6,-6 z" fill="#fff" stroke="{c}" stroke-width="2"/>')
    else:
        fill = c if r["significant"] else "#fff"
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}" stroke="{c}" stroke-width="2"/>')
    return out


def _absolute_scale(r: dict[str, Any], zero: float) -> Any:
    """Absolute rows get their own scale around the shared zero line (units differ per metric)."""
    ends = [v for v in (r["lo"], r["hi"], r["est"]) if _finite(v)]
    neg, pos = max([0.0] + [-v for v in ends]), max([0.0] + ends)
    fits = [(zero - PLOT_X0) / neg if neg else math.inf, (PLOT_X1 - zero) / pos if pos else math.inf]
    k = min(fits) if min(fits) < math.inf else 1.0
    return lambda v: zero + v * k


def forest_plot_svg(report: dict[str, Any]) -> str:
    """Inline SVG: per metric x treatment the relative lift and its CI against a zero line."""
    rows = [_plot_row(r) for r in comparison_rows(report)]
    absolute = any(r["scale"] == "absolute" for r in rows)
    top = 58 if absolute else 40  # room for the second legend line
    height = top + max(len(rows), 1) * ROW_H + BOTTOM
    lo, hi = _domain(rows)

    def to_x(v: float) -> float:
        return PLOT_X0 + (v - lo) / (hi - lo) * (PLOT_X1 - PLOT_X0)

    zero = to_x(0.0)
    parts = [f'<svg viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-labelledby="forest-title" '
             f'font-family="{escape(FONT)}" font-size="12" style="max-width:{WIDTH}px">',
             '<title id="forest-title">Forest plot: estimated effect of each treatment with its '
             'confidence interval; intervals crossing zero are not conclusive</title>',
             f'<rect width="{WIDTH}" height="{height}" fill="#fff"/>']
    parts += _legend(absolute)
    for i, r in enumerate(rows):
        y = top + i * ROW_H + ROW_H / 2
        if i % 2 == 0:
            parts.append(f'<rect x="0" y="{y - ROW_H / 2:.1f}" width="{WIDTH}" height="{ROW_H}" fill="#f6f8fa"/>')
        parts.append(f'<g><title>{escape(r["label"])}: {escape(r["text"])}</title>'
                     + _t(LABEL_W, y + 4, r["short"], text_anchor="end", fill="#24292f") + "</g>")
        if r["scale"] != "none":
            scale = to_x if r["scale"] == "relative" else _absolute_scale(r, zero)
            parts += _interval_marks(r, y, scale)
        parts.append(_t(PLOT_X1 + 12, y + 4, r["text"], fill=r["colour"],
                        font_weight="bold" if r["significant"] else "normal"))
    if not rows:
        parts.append(_t(WIDTH / 2, top + ROW_H / 2 + 4, "no comparisons to plot yet",
                        text_anchor="middle", fill=NEUTRAL))
    level = 1 - report["results"]["significance_level"]
    parts += _axis(rows, (lo, hi), to_x, (top, height), f"relative lift vs control ({level * 100:g}% CI)")
    parts.append("</svg>")
    return "\n".join(parts)


def _legend(absolute: bool) -> list[str]:
    items = [(GOOD, "significant improvement"), (BAD, "significantly worse"), (NEUTRAL, "not significant")]
    out, x = [], 12.0
    for colour, text in items:
        out.append(f'<circle cx="{x + 5:.1f}" cy="16" r="5" fill="{colour}"/>')
        out.append(_t(x + 15, 20, text, fill="#24292f"))
        x += 30 + len(text) * 6.4
    if not absolute:
        return out
    out.append(f'<path d="M17,30 l6,6 l-6,6 l-6,-6 z" fill="#fff" stroke="{NEUTRAL}" stroke-width="2"/>')
    out.append(_t(27, 40, "dashed, diamond: absolute difference on its own scale (relative lift not "
                          "estimable); only its side of zero is comparable", fill="#24292f"))
    return out


def _axis(rows: list[dict[str, Any]], domain: tuple[float, float], to_x: Any,
          frame: tuple[float, float], title: str) -> list[str]:
    top, bottom, zero = frame[0], frame[1] - BOTTOM, to_x(0.0)
    out = [f'<line x1="{PLOT_X0}" y1="{bottom}" x2="{PLOT_X1}" y2="{bottom}" stroke="#8c959f"/>',
           f'<line x1="{zero:.1f}" y1="{top - 6}" x2="{zero:.1f}" y2="{bottom}" stroke="#24292f" stroke-width="1.5"/>']
    ticks = _ticks(*domain) if any(r["scale"] == "relative" for r in rows) else [0.0]
    decimals = 0 if all(abs(t * 100 - round(t * 100)) < 1e-9 for t in ticks) else 1
    for t in ticks:
        x = to_x(t)
        out.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#8c959f"/>')
        out.append(_t(x, bottom + 16, f"{t * 100:+.{decimals}f}%" if t else "0", text_anchor="middle",
                      fill="#57606a"))
    out.append(_t((PLOT_X0 + PLOT_X1) / 2, bottom + 34, title, text_anchor="middle", fill="#24292f"))
    return out
