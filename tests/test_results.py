"""End to end: events from known distributions -> /results equal to scipy/statsmodels."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportions_ztest
from statsmodels.stats.multitest import multipletests

from flagship.experiments.ingest import ingest

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
V = "/api/v1"


@pytest.fixture
def experiment(client, admin, runtime):
    runtime.clock = lambda: T0
    for metric in [{"key": "converted", "event": "purchase", "kind": "conversion"},
                   {"key": "revenue", "event": "purchase", "kind": "sum"},
                   {"key": "latency", "event": "page", "kind": "mean", "direction": "decrease"}]:
        assert client.post(V + "/metrics", json=metric, headers=admin).status_code == 201
    client.post(V + "/layers", json={"key": "main"}, headers=admin)
    doc = {"key": "exp", "flag": "f", "layer": "main", "success_metrics": ["converted", "revenue"],
           "guardrail_metrics": [{"metric": "latency", "margin": 0.1}], "minimum_sample_size": 100000,
           "variants": [{"variant": "a", "value": 1, "is_control": True}, {"variant": "b", "value": 2},
                        {"variant": "c", "value": 3}]}
    assert client.post(V + "/experiments", json=doc, headers=admin).status_code == 201
    assert client.post(V + "/experiments/exp/start", headers=admin).status_code == 200
    return runtime


def simulate(runtime, seed=5, per_variant=800):
    """Known distributions: b converts more; latency is lognormal; c is like a."""
    rng = np.random.default_rng(seed)
    rates = {"a": 0.20, "b": 0.30, "c": 0.20}
    truth = {}
    items = []
    for variant, rate in rates.items():
        for i in range(per_variant):
            unit = f"{variant}{i}"
            at = T0 + timedelta(minutes=int(rng.integers(0, 300)))
            items.append({"event_id": f"x-{unit}", "unit": unit, "event": "$exposure", "experiment": "exp",
                          "variant": variant, "timestamp": at.isoformat()})
            purchases = rng.random() < rate
            revenue = round(float(rng.gamma(2.0, 15.0)), 2) if purchases else 0.0
            if purchases:
                items.append({"event_id": f"p-{unit}", "unit": unit, "event": "purchase", "value": revenue,
                              "timestamp": (at + timedelta(hours=1)).isoformat()})
            latency = round(float(rng.lognormal(5.0 if variant != "c" else 5.02, 0.3)), 1)
            items.append({"event_id": f"l-{unit}", "unit": unit, "event": "page", "value": latency,
                          "timestamp": (at + timedelta(minutes=5)).isoformat()})
            truth[unit] = (variant, float(purchases), revenue, latency)
    for start in range(0, len(items), 1000):
        assert not ingest(runtime, items[start:start + 1000], now=T0 + timedelta(days=1)).rejected
    return truth


def by_variant(truth, column):
    return {v: np.array([row[column] for row in truth.values() if row[0] == v]) for v in "abc"}


def test_results_equal_scipy_and_statsmodels(experiment, client, admin):
    truth = simulate(experiment)
    body = client.get(V + "/experiments/exp/results", headers=admin).json
    assert body["srm"]["checked"] and not body["srm"]["mismatch"]
    metrics = {m["metric"]: m for m in body["metrics"]}

    revenue = by_variant(truth, 2)
    family = []
    for comparison in metrics["revenue"]["comparisons"]:
        b = revenue[comparison["variant"]]
        reference = stats.ttest_ind(b, revenue["a"], equal_var=False)
        assert comparison["test"] == "welch_t"
        assert comparison["p_value"] == pytest.approx(reference.pvalue, rel=1e-6)
        assert comparison["difference"] == pytest.approx(b.mean() - revenue["a"].mean(), rel=1e-9)
        ci = reference.confidence_interval(0.95)
        assert comparison["ci"] == pytest.approx([ci.low, ci.high], rel=1e-6)
    assert metrics["revenue"]["variants"]["b"]["variance"] == pytest.approx(revenue["b"].var(ddof=1), rel=1e-9)

    converted = by_variant(truth, 1)
    for comparison in metrics["converted"]["comparisons"]:
        b, a = converted[comparison["variant"]], converted["a"]
        _, p = proportions_ztest([b.sum(), a.sum()], [b.size, a.size])
        assert comparison["test"] == "proportions_z"
        assert comparison["p_value"] == pytest.approx(p, rel=1e-6)
        pa, pb = a.mean(), b.mean()
        se = np.sqrt(pa * (1 - pa) / a.size + pb * (1 - pb) / b.size)
        z = stats.norm.ppf(0.975)
        assert comparison["ci"] == pytest.approx([pb - pa - z * se, pb - pa + z * se], rel=1e-6)
        family.append(comparison)
    family = metrics["converted"]["comparisons"] + metrics["revenue"]["comparisons"]
    holm = multipletests([c["p_value"] for c in family], method="holm")[1]
    assert [c["adjusted_p_value"] for c in family] == pytest.approx(list(holm), rel=1e-9)

    b_conv = metrics["converted"]["comparisons"][0]
    assert b_conv["variant"] == "b" and b_conv["significant"]
    assert 0 < b_conv["always_valid"]["p_value"] <= 1 and b_conv["always_valid"]["p_value"] >= b_conv["p_value"]
    assert 0 <= b_conv["power"] <= 1 and b_conv["sample_needed_per_variant"] >= 0
    guard = metrics["latency"]["comparisons"]
    assert all(c["guardrail"]["status"] in ("ok", "breached", "inconclusive") for c in guard)
    assert body["decision"]["action"] == "ship" and body["decision"]["variant"] == "b"


def test_srm_mismatch_is_a_loud_warning(experiment, client, admin):
    items = [{"event_id": f"x{i}", "unit": f"u{i}", "event": "$exposure", "experiment": "exp",
              "variant": "a" if i % 10 else "b", "timestamp": T0.isoformat()} for i in range(900)]
    ingest(experiment, items, now=T0 + timedelta(hours=1))
    body = client.get(V + "/experiments/exp/results", headers=admin).json
    assert body["srm"]["mismatch"] and "SAMPLE RATIO MISMATCH" in body["srm"]["warning"]
    assert body["decision"]["action"] == "investigate"


def test_results_without_data_do_not_fail(experiment, client, admin):
    body = client.get(V + "/experiments/exp/results", headers=admin).json
    assert body["decision"]["action"] == "keep_running"
    assert all("error" in c for m in body["metrics"] for c in m["comparisons"])
    assert client.get(V + "/experiments/nope/results", headers=admin).status_code == 404



def test_metric_series_is_cumulative_and_ends_at_the_results(experiment, client, admin):
    truth = simulate(experiment, per_variant=300)
    experiment.clock = lambda: T0 + timedelta(days=3, hours=5)
    body = client.get(V + "/experiments/exp/metrics/revenue", headers=admin).json
    assert body["metric"] == "revenue" and body["srm"]["checked"]
    series = body["series"]
    assert len(series) == 4 and series[-1]["at"].startswith("2026-11-23T17:00")
    units = [sum(look["variants"][v]["units"] for v in "abc") for look in series]
    assert units == sorted(units) and units[-1] == len(truth)
    final = {c["variant"]: c for c in series[-1]["comparisons"]}
    for comparison in body["comparisons"]:
        assert final[comparison["variant"]]["p_value"] == pytest.approx(comparison["p_value"], rel=1e-9)
    for variant in "bc":
        ps = [next(c for c in look["comparisons"] if c["variant"] == variant).get("always_valid", {}).get("p_value")
              for look in series]
        ps = [p for p in ps if p is not None]
        assert ps == sorted(ps, reverse=True)  # the always-valid p never rises
    assert client.get(V + "/experiments/exp/metrics/nope", headers=admin).status_code == 404


def test_always_valid_p_never_rises_between_looks(experiment, client, admin):
    simulate(experiment, per_variant=300)
    first = client.get(V + "/experiments/exp/results", headers=admin).json
    before = {(m["metric"], c["variant"]): c["always_valid"] for m in first["metrics"]
              for c in m["comparisons"] if "always_valid" in c}
    # more units with no purchases at all: the evidence weakens, the instant p would rise
    quiet = [{"event_id": f"x-late-{v}{i}", "unit": f"late-{v}{i}", "event": "$exposure", "experiment": "exp",
              "variant": v, "timestamp": (T0 + timedelta(hours=2)).isoformat()}
             for v in "abc" for i in range(300)]
    assert not ingest(experiment, quiet, now=T0 + timedelta(days=1)).rejected
    second = client.get(V + "/experiments/exp/results", headers=admin).json
    for m in second["metrics"]:
        for c in m["comparisons"]:
            if (m["metric"], c["variant"]) not in before:
                continue
            old, new = before[(m["metric"], c["variant"])], c["always_valid"]
            assert new["p_value"] <= old["p_value"] and new["tau2"] == old["tau2"]
            assert new["looks"] == old["looks"] + 1
            lo, hi = new["confidence_sequence"]
            assert old["confidence_sequence"][0] <= lo <= hi <= old["confidence_sequence"][1]
