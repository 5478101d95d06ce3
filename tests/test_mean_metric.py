"""`mean` metrics are the average event value (issue 8, "`mean` metrics count units with no
event as 0"): per variant, total value / number of events over the units with at least one
event, compared by the delta method over per-unit sums."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy import stats

from flagship import jobs
from flagship.experiments.ingest import ingest

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def simulate(seed=17, per_variant=200):
    """Exposures and purchases: 40 % of units buy nothing, buyers buy 1-4 times (b pays more);
    some units also bought before their exposure (not part of the metric)."""
    rng = np.random.default_rng(seed)
    items, truth = [], {}
    for variant, mu in (("a", 3.0), ("b", 3.15)):
        for i in range(per_variant):
            unit = f"{variant}-{i}"
            exposed = T0 + timedelta(minutes=int(rng.integers(0, 120)))
            items.append({"event_id": f"x-{unit}", "unit": unit, "event": "$exposure", "experiment": "exp",
                          "variant": variant, "timestamp": exposed.isoformat()})
            values = []
            if rng.random() >= 0.4:
                for j in range(int(rng.integers(1, 5))):
                    value = round(float(rng.lognormal(mu, 0.6)), 2)
                    at = exposed + timedelta(minutes=0 if j == 0 and i % 7 == 0 else int(rng.integers(1, 600)))
                    items.append({"event_id": f"p-{unit}-{j}", "unit": unit, "event": "purchase",
                                  "value": value, "timestamp": at.isoformat()})
                    values.append(value)
            if i % 5 == 0:  # a purchase before the exposure: pre-period data only
                items.append({"event_id": f"pre-{unit}", "unit": unit, "event": "purchase", "value": 99.0,
                              "timestamp": (exposed - timedelta(minutes=1)).isoformat()})
            truth[unit] = (variant, values)
    return items, truth


def by_hand(truth, variant):
    buyers = [values for v, values in truth.values() if v == variant and values]
    y = np.array([sum(values) for values in buyers])  # per-unit sums
    c = np.array([len(values) for values in buyers], dtype=float)  # per-unit event counts
    n = y.size
    ratio = y.sum() / c.sum()
    cov = np.cov(y, c, ddof=1)
    variance = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio ** 2 * cov[1, 1]) / (n * c.mean() ** 2)
    return {"n": n, "ratio": ratio, "variance": variance, "y": y, "c": c,
            "exposed": sum(1 for v, _ in truth.values() if v == variant)}


def test_mean_is_the_average_event_value_with_the_delta_method(api, runtime):
    runtime.clock = lambda: T0
    api("post", "/metrics", {"key": "basket", "event": "purchase", "kind": "mean"}, 201)
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", {"key": "exp", "flag": "f", "layer": "main", "success_metrics": ["basket"],
                                 "variants": [{"variant": "a", "value": 1, "is_control": True},
                                              {"variant": "b", "value": 2}]}, 201)
    api("post", "/experiments/exp/start")
    items, truth = simulate()
    for start in range(0, len(items), 500):
        result = ingest(runtime, items[start:start + 500], now=T0 + timedelta(days=1))
        assert not result.rejected, result.rejected[:2]
    jobs.aggregate(runtime)

    a, b = by_hand(truth, "a"), by_hand(truth, "b")
    # the three readings of "mean" differ on these data, so the check below tells them apart
    for h in (a, b):
        assert h["n"] < h["exposed"]  # some exposed units have no purchase
        assert abs(h["y"].sum() / h["exposed"] - h["ratio"]) > 1  # not zeros for non-buyers
        assert abs((h["y"] / h["c"]).mean() - h["ratio"]) > 0.01  # not the mean of unit means

    body = api("get", "/experiments/exp/results")
    metric = next(m for m in body["metrics"] if m["metric"] == "basket")
    assert metric["kind"] == "mean"
    for name, h in (("a", a), ("b", b)):
        assert metric["variants"][name]["units"] == h["n"]
        assert metric["variants"][name]["mean"] == pytest.approx(h["ratio"], rel=1e-9)
    (comparison,) = metric["comparisons"]
    assert comparison["variant"] == "b" and comparison["test"] == "ratio_delta_method"
    difference = b["ratio"] - a["ratio"]
    se = np.sqrt(a["variance"] + b["variance"])
    assert comparison["difference"] == pytest.approx(difference, rel=1e-9)
    assert comparison["se"] == pytest.approx(se, rel=1e-6)
    assert comparison["p_value"] == pytest.approx(2 * stats.norm.sf(abs(difference) / se), rel=1e-6)
    z = stats.norm.ppf(0.975)
    assert comparison["ci"] == pytest.approx([difference - z * se, difference + z * se], rel=1e-6)

    monitor = api("get", "/experiments/exp/monitor")
    row = next(m for m in monitor["metrics"] if m["metric"] == "basket")
    assert row["variants"]["a"]["units"] == a["n"] and row["variants"]["b"]["units"] == b["n"]
    assert row["variants"]["b"]["mean"] == pytest.approx(b["ratio"], rel=1e-9)
    assert sum(monitor["exposures"]["total"].values()) == a["exposed"] + b["exposed"]


def test_units_without_events_do_not_dilute_the_mean(api, runtime):
    """A case to read: a1 buys 10 and 20, a2 buys 60, a3 and a4 nothing; b1 buys 40, b2 buys
    20, 30 and 10, b3 nothing."""
    runtime.clock = lambda: T0
    api("post", "/metrics", {"key": "basket", "event": "purchase", "kind": "mean"}, 201)
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", {"key": "exp", "flag": "f", "layer": "main", "success_metrics": ["basket"],
                                 "variants": [{"variant": "a", "value": 1, "is_control": True},
                                              {"variant": "b", "value": 2}]}, 201)
    api("post", "/experiments/exp/start")
    at = T0 + timedelta(minutes=5)
    items = [{"event_id": f"x-{u}", "unit": u, "event": "$exposure", "experiment": "exp", "variant": u[0],
              "timestamp": at.isoformat()} for u in ("a1", "a2", "a3", "a4", "b1", "b2", "b3")]
    for n, (unit, value) in enumerate([("a1", 10), ("a1", 20), ("a2", 60), ("b1", 40), ("b2", 20),
                                       ("b2", 30), ("b2", 10)]):
        items.append({"event_id": f"p{n}", "unit": unit, "event": "purchase", "value": value,
                      "timestamp": (at + timedelta(minutes=n)).isoformat()})
    assert not ingest(runtime, items, now=T0 + timedelta(hours=1)).rejected
    jobs.aggregate(runtime)
    metric = api("get", "/experiments/exp/results")["metrics"][0]
    variants = metric["variants"]
    # a: 90 / 3 events = 30 (zeros for a3, a4 would give 22.5; the mean of unit means 37.5;
    # per-buyer sums 45)
    assert (variants["a"]["units"], variants["a"]["mean"]) == (2, pytest.approx(30.0))
    # b: 100 / 4 events = 25 (zeros: 33.3; unit means: 30; per-buyer sums: 50)
    assert (variants["b"]["units"], variants["b"]["mean"]) == (2, pytest.approx(25.0))
    assert metric["comparisons"][0]["difference"] == pytest.approx(-5.0)
