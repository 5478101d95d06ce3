"""Experiment reports: the page, JSON and CSV against /results; the forest plot; every 4xx."""
from __future__ import annotations

import csv
import io
import json
import math
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from flagship import jobs
from flagship.experiments import report
from flagship.experiments.ingest import ingest
from flagship.experiments.api.results import blp

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
V = "/api/v1"
HYPOTHESIS = 'A one-page checkout lifts purchases by 10% <script>alert("x")</script> & keeps latency'


def test_the_app_registers_the_report(app: Any) -> None:
    assert app.blueprints["results"] is blp


@pytest.fixture
def experiment(client: Any, admin: dict[str, str], runtime: Any) -> Any:
    runtime.clock = lambda: T0
    for metric in [{"key": "converted", "event": "purchase", "kind": "conversion"},
                   {"key": "revenue", "event": "purchase", "kind": "sum"},
                   {"key": "latency", "event": "page", "kind": "mean", "direction": "decrease"}]:
        assert client.post(V + "/metrics", json=metric, headers=admin).status_code == 201
    client.post(V + "/layers", json={"key": "main"}, headers=admin)
    doc = {"key": "exp", "name": "One-page checkout", "hypothesis": HYPOTHESIS, "owner": "pm@example.org",
           "flag": "f", "layer": "main", "success_metrics": ["converted", "revenue"],
           "guardrail_metrics": [{"metric": "latency", "margin": 0.1}], "minimum_sample_size": 100000,
           "variants": [{"variant": "a", "value": 1, "is_control": True}, {"variant": "b", "value": 2},
                        {"variant": "c", "value": 3}]}
    assert client.post(V + "/experiments", json=doc, headers=admin).status_code == 201
    assert client.post(V + "/experiments/exp/start", headers=admin).status_code == 200
    return runtime


def simulate(runtime: Any, per_variant: int = 600) -> None:
    """b converts more (0.30 vs 0.20); c is like a; latency is lognormal."""
    rng = np.random.default_rng(11)
    items = []
    for variant, rate in {"a": 0.20, "b": 0.30, "c": 0.20}.items():
        for i in range(per_variant):
            unit, at = f"{variant}{i}", T0 + timedelta(minutes=int(rng.integers(0, 300)))
            items.append({"event_id": f"x-{unit}", "unit": unit, "event": "$exposure", "experiment": "exp",
                          "variant": variant, "timestamp": at.isoformat()})
            if rng.random() < rate:
                items.append({"event_id": f"p-{unit}", "unit": unit, "event": "purchase",
                              "value": round(float(rng.gamma(2.0, 15.0)), 2),
                              "timestamp": (at + timedelta(hours=1)).isoformat()})
            items.append({"event_id": f"l-{unit}", "unit": unit, "event": "page",
                          "value": round(float(rng.lognormal(5.0, 0.3)), 1),
                          "timestamp": (at + timedelta(minutes=5)).isoformat()})
    for start in range(0, len(items), 2000):
        assert not ingest(runtime, items[start:start + 2000], now=T0 + timedelta(days=1)).rejected
    jobs.aggregate(runtime)


def _number(text: str) -> float | None:
    return float(text) if text else None


def test_report_formats_agree_with_results(experiment: Any, client: Any, admin: dict[str, str]) -> None:
    simulate(experiment)
    expected = client.get(V + "/experiments/exp/results", headers=admin).json

    started = time.perf_counter()
    page = client.get(V + "/experiments/exp/report", headers=admin)
    assert time.perf_counter() - started < 5.0  # a sanity bound, not a benchmark
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; keeps latency" in html
    assert "Keep running:" in html and expected["decision"]["reason"] in html  # an early look
    assert "<svg" in html and "</svg>" in html
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert 'class="box srm-alert"' not in html and "do not trust these results" not in html
    assert "The traffic split matches the configured weights" in html
    assert "pm@example.org" in html and "How to read this" in html

    body = client.get(V + "/experiments/exp/report?format=json", headers=admin).json
    # reading is not a look: the same data give exactly the same answer, however often read
    again = json.loads(json.dumps(report.build_report(experiment, "exp")))
    assert body == again
    assert body["results"] == expected
    assert body["generated_at"] == T0.isoformat()
    assert body["setup"]["hypothesis"] == HYPOTHESIS

    sheet = client.get(V + "/experiments/exp/report?format=csv", headers=admin)
    assert sheet.mimetype == "text/csv"
    assert sheet.headers["Content-Disposition"] == 'attachment; filename="exp-report.csv"'
    rows = list(csv.DictReader(io.StringIO(sheet.get_data(as_text=True))))
    assert [(r["metric"], r["variant"]) for r in rows] == [
        (m, v) for m in ("converted", "revenue", "latency") for v in ("b", "c")]
    metrics = {m["metric"]: m for m in expected["metrics"]}
    for row in rows:
        metric = metrics[row["metric"]]
        c = next(c for c in metric["comparisons"] if c["variant"] == row["variant"])
        assert (row["role"], row["kind"], row["test"]) == (metric["role"], metric["kind"], c["test"])
        assert _number(row["control_mean"]) == metric["variants"]["a"]["mean"]
        assert _number(row["treatment_mean"]) == metric["variants"][row["variant"]]["mean"]
        assert [_number(row[k]) for k in ("difference", "ci_low", "ci_high", "p_value")] == \
            [c["difference"], *c["ci"], c["p_value"]]
        assert [_number(row["relative_lift"]), _number(row["relative_ci_low"]),
                _number(row["relative_ci_high"])] == [c["relative_lift"], *(c["relative_ci"] or [None, None])]
        assert _number(row["adjusted_p_value"]) == c.get("adjusted_p_value")
        assert _number(row["always_valid_p"]) == c["always_valid"]["p_value"]
        assert row["significant"] == ("true" if c["significant"] else "false")
        assert row["guardrail_status"] == c.get("guardrail", {}).get("status", "")
    assert rows[0]["significant"] == "true" and rows[1]["significant"] == "false"

    by_accept = client.get(V + "/experiments/exp/report", headers={**admin, "Accept": "application/json"}).json
    assert by_accept == body
    chosen = client.get(V + "/experiments/exp/report", headers={**admin, "Accept": "text/csv"})
    assert chosen.mimetype == "text/csv" and chosen.headers["Vary"] == "Accept"
    browser = {**admin, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    assert client.get(V + "/experiments/exp/report", headers=browser).mimetype == "text/html"
    explicit = client.get(V + "/experiments/exp/report?format=html", headers={**admin, "Accept": "text/csv"})
    assert explicit.mimetype == "text/html"


def test_srm_mismatch_is_shown_loudly(experiment: Any, client: Any, admin: dict[str, str]) -> None:
    items = [{"event_id": f"x{i}", "unit": f"u{i}", "event": "$exposure", "experiment": "exp",
              "variant": "a" if i % 10 else "b", "timestamp": T0.isoformat()} for i in range(900)]
    ingest(experiment, items, now=T0 + timedelta(hours=1))
    jobs.aggregate(experiment)
    html = client.get(V + "/experiments/exp/report", headers=admin).get_data(as_text=True)
    assert 'class="box srm-alert"' in html and "Sample ratio mismatch" in html
    assert "SAMPLE RATIO MISMATCH (p = " in html
    assert "Do not act on these numbers" in html and "do not trust these results" in html


def test_report_without_data_renders(experiment: Any, client: Any, admin: dict[str, str]) -> None:
    page = client.get(V + "/experiments/exp/report", headers=admin)
    assert page.status_code == 200 and "Keep running" in page.get_data(as_text=True)
    assert "Not checked yet" in page.get_data(as_text=True)
    rows = list(csv.DictReader(io.StringIO(
        client.get(V + "/experiments/exp/report?format=csv", headers=admin).get_data(as_text=True))))
    assert len(rows) == 6 and all(r["note"].startswith("not estimable") and r["p_value"] == "" for r in rows)


def test_bad_requests(experiment: Any, client: Any, admin: dict[str, str], sdk: dict[str, str]) -> None:
    bad = client.get(V + "/experiments/exp/report?format=xml", headers=admin)
    assert bad.status_code == 422
    assert "format" in bad.json["message"] and "format" in bad.json["errors"]["query"]
    for fmt in ("html", "json", "csv"):
        missing = client.get(V + f"/experiments/nope/report?format={fmt}", headers=admin)
        assert missing.status_code == 404 and "nope" in missing.json["message"]
    assert client.get(V + "/experiments/exp/report").status_code == 401
    assert client.get(V + "/experiments/exp/report", headers=sdk).status_code == 403


# -- the pure functions, on hand-made reports ---------------------------------------------

def _comparison(variant: str, diff: float, ci: list, rel: float | None, rel_ci: list | None,
                significant: bool) -> dict[str, Any]:
    return {"variant": variant, "test": "welch_t", "difference": diff, "ci": ci, "relative_lift": rel,
            "relative_ci": rel_ci, "p_value": 0.01 if significant else 0.4,
            "adjusted_p_value": 0.02 if significant else 0.5, "significant": significant,
            "always_valid": {"p_value": 0.05}}


def _report(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    return {"experiment": "x", "generated_at": T0.isoformat(), "setup": {},
            "results": {"control": "a", "significance_level": 0.1, "metrics": metrics}}


def _metric(key: str, comparisons: list[dict[str, Any]], direction: str = "increase",
            role: str = "success") -> dict[str, Any]:
    return {"metric": key, "kind": "mean", "direction": direction, "role": role,
            "variants": {"a": {"units": 10, "mean": 1.0}, "b": {"units": 10, "mean": 1.2}},
            "comparisons": comparisons}


def test_forest_plot_rows_colours_fallback_and_escaping() -> None:
    doc = _report([
        _metric("<m&1>", [_comparison("b", 0.2, [0.1, 0.3], 0.2, [0.1, 0.3], True)]),
        _metric("latency", [_comparison("b", 5.0, [1.0, 9.0], 0.05, None, True)], direction="decrease",
                role="guardrail"),
        _metric("flat", [_comparison("b", 0.1, [-0.2, None], 0.1, None, False),
                         {"variant": "c", "error": "not estimable: no data"}]),
    ])
    svg = report.forest_plot_svg(doc)
    root = ET.fromstring(svg)  # well-formed, so every text was escaped
    texts = ["".join(t.itertext()) for t in root.iter("text")]
    assert "<m&1> · b" in texts and "&lt;m&amp;1&gt;" in svg
    assert "latency · b (guardrail)" in texts and "not estimable" in texts
    assert "+20.0% [+10.0%, +30.0%]" in texts  # relative lift with its CI
    assert "Δ +5 [+1, +9] abs." in texts  # no relative CI: the absolute difference instead
    fills = [t.get("fill") for t in root.iter("text") if t.text in ("+20.0% [+10.0%, +30.0%]",
                                                                    "Δ +5 [+1, +9] abs.")]
    assert fills == [report.GOOD, report.BAD]  # latency went up, and lower is better
    assert "relative lift vs control (90% CI)" in texts
    assert any(p.get("d", "").endswith("z") and "l-7" in p.get("d", "") for p in root.iter("path"))
    assert "http" not in svg and "href" not in svg  # nothing to fetch
    zero = [line for line in root.iter("line") if line.get("stroke-width") == "1.5"]
    assert len(zero) == 1
    for element in root.iter():
        for name in ("x", "x1", "x2", "cx"):
            if element.get(name):
                assert math.isfinite(float(element.get(name)))
    assert "no comparisons" in report.forest_plot_svg(_report([]))


def test_csv_is_full_precision_and_safe_for_spreadsheets() -> None:
    comparison = _comparison("b", 1 / 3, [0.1, 0.5], None, None, False)
    comparison["relative_note"] = "=HYPERLINK(1)"
    text = report.render_csv(_report([_metric("m", [comparison])]))
    row = next(csv.DictReader(io.StringIO(text)))
    assert float(row["difference"]) == 1 / 3 and row["relative_lift"] == ""
    assert row["note"] == "'=HYPERLINK(1)" and row["significant"] == "false"
    assert list(row) == list(report.CSV_COLUMNS)
