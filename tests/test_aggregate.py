"""Attribution and per-unit aggregation against a plain-Python computation, both backends."""
from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import sqlalchemy as sa

from flagship.experiments import results
from flagship.experiments.analysis.variants import from_sums
from flagship.experiments.ingest import ingest
from flagship.experiments.store import aggregates as aggregate
from flagship.experiments.store import reads
from flagship.experiments.store.config import metrics_by_key
from flagship.experiments.store.tables import EventRecord

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
V = "/api/v1"
METRICS = [
    {"key": "bought", "event": "purchase", "kind": "conversion"},
    {"key": "revenue", "event": "purchase", "kind": "sum"},
    {"key": "basket", "event": "purchase", "kind": "mean"},
    {"key": "clicks", "event": "click", "kind": "count"},
    {"key": "rev-per-visit", "event": "purchase", "kind": "ratio", "denominator_event": "visit"},
    {"key": "revenue-w", "event": "purchase", "kind": "sum", "winsorize_percentile": 95},
]


@pytest.fixture
def setup(app, client, admin, runtime):
    runtime.clock = lambda: T0
    for metric in METRICS:
        assert client.post(V + "/metrics", json=metric, headers=admin).status_code == 201
    client.post(V + "/layers", json={"key": "main"}, headers=admin)
    doc = {"key": "exp", "flag": "f", "layer": "main", "traffic_percentage": 100,
           "success_metrics": [m["key"] for m in METRICS[:4]],
           "guardrail_metrics": [{"metric": "rev-per-visit", "margin": 0.05}, {"metric": "revenue-w"}],
           "end_at": (T0 + timedelta(days=2)).isoformat(),
           "variants": [{"variant": "a", "value": 1, "is_control": True}, {"variant": "b", "value": 2},
                        {"variant": "c", "value": 3}]}
    assert client.post(V + "/experiments", json=doc, headers=admin).status_code == 201
    assert client.post(V + "/experiments/exp/start", headers=admin).status_code == 200
    return runtime


def generate(seed: int, units: int = 300):
    """Exposures (unit -> (variant, assigned_at)) and events around them."""
    rng = random.Random(seed)
    exposures, events = {}, []
    for i in range(units):
        unit = f"u{i}"
        assigned = T0 + timedelta(minutes=rng.randrange(0, 600))
        if i % 10 != 0:  # every tenth unit is never exposed
            exposures[unit] = (rng.choice("abc"), assigned)
        for j in range(rng.randrange(0, 6)):
            ts = assigned + timedelta(minutes=rng.randrange(-900, 3500))  # before, inside, after the window
            name = rng.choice(["purchase", "purchase", "click", "visit", "other"])
            value = round(rng.lognormvariate(3, 1), 2) if name == "purchase" else 1
            events.append({"event_id": f"{unit}-{j}", "unit": unit, "event": name, "value": value,
                           "timestamp": ts.isoformat()})
    return exposures, events


def expected(exposures, events, metric, start=T0, end=T0 + timedelta(days=2)):
    """The per-unit (variant, y, x) a reader would compute by hand."""
    out = {}
    for unit, (variant, assigned) in exposures.items():
        mine = [e for e in events if e["unit"] == unit]
        def pick(name, post):
            chosen = []
            for e in mine:
                ts = datetime.fromisoformat(e["timestamp"])
                if e["event"] != name:
                    continue
                if post and assigned <= ts and start <= ts < end:
                    chosen.append(e["value"])
                if not post and ts < assigned:
                    chosen.append(e["value"])
            return chosen
        values = {post: pick(metric["event"], post) for post in (True, False)}
        def kind(v):
            return {"conversion": 1.0 if v else 0.0, "sum": float(sum(v)), "count": float(len(v)),
                    "mean": float(sum(v)), "ratio": float(sum(v))}[metric["kind"]]
        if metric["kind"] == "mean":  # the unit's total value over its number of events
            den = float(len(values[True]))
        else:
            den = sum(pick(metric.get("denominator_event") or "-", True))
        out[unit] = (variant, kind(values[True]), kind(values[False]), den)
    return out


def send(runtime, exposures, events, exposures_first=True):
    exposure_events = [{"event_id": f"x-{u}", "unit": u, "event": "$exposure", "experiment": "exp",
                        "variant": v, "timestamp": at.isoformat()} for u, (v, at) in exposures.items()]
    now = T0 + timedelta(days=3)
    batches = [exposure_events, events] if exposures_first else [events, exposure_events]
    for batch in batches:
        for start in range(0, len(batch), 97):  # many small batches, with rounds in between
            result = ingest(runtime, batch[start:start + 97], now=now)
            assert not result.rejected, result.rejected[:2]
            aggregate.run_round(runtime.db, batch=50)


def check(runtime, exposures, events):
    aggregate.catch_up(runtime.db)
    data = results.read(runtime, "exp")
    with runtime.db.engine.connect() as conn:
        for spec in METRICS:
            metric = metrics_by_key(conn, [spec["key"]])[spec["key"]]
            want = expected(exposures, events, spec)
            got = {u: (v, y if metric.kind != "mean" else y, x) for u, (v, y, x, _) in
                   reads.unit_values(conn, "exp", metric).items()}
            if metric.kind == "mean":
                got = {u: (v, y, x) for u, (v, y, x, _) in reads.unit_values(conn, "exp", metric).items()}
                want_values = {u: (w[0], w[1], 0.0) for u, w in want.items()}
                for unit, (variant, y, _) in want_values.items():
                    g = got.get(unit, (variant, 0.0, 0.0))
                    assert g[0] == variant and g[1] == pytest.approx(y), (spec, unit)
            else:
                for unit, (variant, y, x, _) in want.items():
                    g = got.get(unit, (variant, 0.0, 0.0))
                    assert g[0] == variant and g[1] == pytest.approx(y) and g[2] == pytest.approx(x), (spec, unit)
            stats = data.stats[spec["key"]]
            if not spec.get("winsorize_percentile"):  # incremental sums == a fresh scan
                scanned = reads.scan_variant_stats(conn, "exp", metric, data.counts)
                for variant, kept in stats.items():
                    fresh = from_sums(variant, data.counts[variant], scanned[variant], metric)
                    for field in ("n", "sum", "sum_sq", "pre_sum", "pre_sum_sq", "cross", "den_sum",
                                  "den_sum_sq", "num_den"):
                        assert getattr(kept, field) == pytest.approx(getattr(fresh, field),
                                                                     rel=1e-9, abs=1e-9), (spec, field)
            for variant in "abc":
                mine = [w for w in want.values() if w[0] == variant]
                if metric.kind == "mean":  # only units with events count
                    mine = [w for w in mine if w[3] > 0]
                ys = np.array([w[1] for w in mine])
                xs = np.array([w[2] for w in mine])
                if spec.get("winsorize_percentile"):
                    cap = np.percentile([w[1] for w in want.values()], spec["winsorize_percentile"])
                    ys, xs = np.minimum(ys, cap), np.minimum(xs, cap)
                s = stats[variant]
                assert s.n == len(ys), (spec, variant)
                assert s.sum == pytest.approx(ys.sum()) and s.sum_sq == pytest.approx((ys ** 2).sum())
                assert s.pre_sum == pytest.approx(xs.sum()) and s.cross == pytest.approx((xs * ys).sum())
                if spec["kind"] in ("ratio", "mean"):
                    den = np.array([w[3] for w in mine])
                    assert s.den_sum == pytest.approx(den.sum()) and s.num_den == pytest.approx((ys * den).sum())
                if ys.size > 1:
                    assert s.variance == pytest.approx(ys.var(ddof=1))


@pytest.mark.parametrize("exposures_first", [True, False])
def test_every_metric_kind_matches_a_hand_computation(setup, exposures_first):
    exposures, events = generate(seed=7)
    send(setup, exposures, events, exposures_first)
    check(setup, exposures, events)


def test_attribution_edges(setup):
    at = T0 + timedelta(hours=1)
    exposures = {"early": ("a", at)}
    events = [
        {"event_id": "before", "unit": "early", "event": "purchase", "value": 5, "timestamp": (at - timedelta(minutes=1)).isoformat()},
        {"event_id": "same", "unit": "early", "event": "purchase", "value": 7, "timestamp": at.isoformat()},
        {"event_id": "after-end", "unit": "early", "event": "purchase", "value": 11,
         "timestamp": (T0 + timedelta(days=2, seconds=1)).isoformat()},
        {"event_id": "stranger", "unit": "never-exposed", "event": "purchase", "value": 13, "timestamp": at.isoformat()},
    ]
    send(setup, exposures, events)
    aggregate.catch_up(setup.db)
    with setup.db.engine.connect() as conn:
        metric = metrics_by_key(conn, ["revenue"])["revenue"]
        assert reads.unit_values(conn, "exp", metric) == {"early": ("a", 7.0, 5.0, 0.0)}
    assert results.read(setup, "exp").stats["revenue"]["a"].n == 1


def test_metrics_added_later_are_rebuilt_from_history(setup, client, admin):
    exposures, events = generate(seed=3, units=60)
    send(setup, exposures, events)
    aggregate.catch_up(setup.db)
    client.post(V + "/metrics", json={"key": "visits", "event": "visit", "kind": "count"}, headers=admin)
    version = client.get(V + "/experiments/exp", headers=admin).json["version"]
    response = client.patch(V + "/experiments/exp", json={"version": version, "success_metrics": [
        "bought", "revenue", "basket", "clicks", "visits"]}, headers=admin)
    assert response.status_code == 200, response.json
    aggregate.catch_up(setup.db)
    with setup.db.engine.connect() as conn:
        metric = metrics_by_key(conn, ["visits"])["visits"]
        got = reads.unit_values(conn, "exp", metric)
    want = expected(exposures, events, {"event": "visit", "kind": "count"})
    assert {u: y for u, (_, y, _, _) in want.items() if y} == {u: y for u, (_, y, _, _) in got.items() if y}


def test_monitor(setup, client, admin):
    exposures, events = generate(seed=11, units=120)
    send(setup, exposures, events)
    aggregate.catch_up(setup.db)
    body = client.get(V + "/experiments/exp/monitor", headers=admin).json
    assert sum(body["exposures"]["total"].values()) == len(exposures)
    assert sum(sum(h["by_variant"].values()) for h in body["exposures"]["per_hour"]) == len(exposures)
    assert body["srm"]["p_value"] > 0 and body["srm"]["mismatch"] in (True, False)
    revenue = next(m for m in body["metrics"] if m["metric"] == "revenue")
    want = expected(exposures, events, METRICS[1])
    for variant in "abc":
        ys = [w[1] for w in want.values() if w[0] == variant]
        assert revenue["variants"][variant]["units"] == len(ys)
        assert revenue["variants"][variant]["mean"] == pytest.approx(sum(ys) / len(ys))
    # the experiment's own counters: its units' events at or after their exposure ($exposure included)
    mine = [e for e in events if e["unit"] in exposures
            and datetime.fromisoformat(e["timestamp"]) >= exposures[e["unit"]][1]]
    assert body["data_quality"]["accepted"] == len(mine) + len(exposures)
    assert client.get(V + "/experiments/nope/monitor", headers=admin).status_code == 404


def test_concurrent_rounds_and_ingestion_count_every_pair_once(setup):
    import threading
    exposures, events = generate(seed=21, units=240)
    stop = threading.Event()
    errors = []

    def aggregator():
        while not stop.is_set():
            try:
                aggregate.run_round(setup.db, batch=37)
            except Exception as exc:  # surfaced below
                errors.append(exc)
                return

    workers = [threading.Thread(target=aggregator) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        send(setup, exposures, events, exposures_first=False)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert not errors, errors
    check(setup, exposures, events)


def _patch(client, admin, body):
    version = client.get(V + "/experiments/exp", headers=admin).json["version"]
    response = client.patch(V + "/experiments/exp", json={"version": version, **body}, headers=admin)
    assert response.status_code == 200, response.json


def test_metrics_emptied_and_restored_lose_nothing(setup, client, admin):
    exposures, events = generate(seed=5, units=80)
    half = len(events) // 2
    _patch(client, admin, {"success_metrics": [], "guardrail_metrics": []})
    send(setup, exposures, events[:half])
    aggregate.catch_up(setup.db)   # folded in while the experiment counted nothing
    send(setup, {}, events[half:])
    _patch(client, admin, {"success_metrics": [m["key"] for m in METRICS[:4]],
                           "guardrail_metrics": [{"metric": "rev-per-visit", "margin": 0.05},
                                                 {"metric": "revenue-w"}]})
    check(setup, exposures, events)


def test_a_changed_window_is_rebuilt(setup, client, admin):
    exposures, events = generate(seed=9, units=80)
    _patch(client, admin, {"end_at": (T0 + timedelta(hours=6)).isoformat()})
    send(setup, exposures, events)
    aggregate.catch_up(setup.db)
    _patch(client, admin, {"end_at": (T0 + timedelta(days=2)).isoformat()})
    check(setup, exposures, events)  # events after the old end now count


def test_a_round_marks_only_the_exposures_it_read(setup, monkeypatch):
    # Exposures committed between a round's read phase and its write phase stay pending for
    # the next round (on SQLite the round marks them by key, in one statement); keys with
    # quotes, brackets and non-ASCII travel through it intact.
    import sqlalchemy as sa

    from flagship.experiments.store.tables import ExposureRecord

    units = ['plain', 'quo"te', "it's", "[1, 2]", "ünï-ç✓de", "back\\slash"]
    exposures = {u: ("a", T0) for u in units}
    late = {f"late-{u}": ("b", T0) for u in units}
    send_exposures = lambda chosen: ingest(setup, [  # noqa: E731
        {"event_id": f"x-{u}", "unit": u, "event": "$exposure", "experiment": "exp", "variant": v,
         "timestamp": at.isoformat()} for u, (v, at) in chosen.items()], now=T0 + timedelta(hours=1))
    assert not send_exposures(exposures).rejected
    collect = aggregate._collect

    def collect_then_more_arrive(*args, **kwargs):
        work = collect(*args, **kwargs)
        assert not send_exposures(late).rejected
        return work
    monkeypatch.setattr(aggregate, "_collect", collect_then_more_arrive)
    taken = 2 * len(units)  # an exposure sent as an event is stored as both
    assert aggregate.run_round(setup.db) == taken
    monkeypatch.setattr(aggregate, "_collect", collect)
    x = ExposureRecord.__table__
    with setup.db.engine.connect() as conn:
        pending = dict(conn.execute(sa.select(x.c.unit, x.c.aggregated)).all())
    assert pending == {**{u: True for u in units}, **{u: False for u in late}}
    assert aggregate.run_round(setup.db) == taken
    assert results.read(setup, "exp").counts == {"a": len(units), "b": len(late), "c": 0}


def test_event_values_are_bounded_and_a_stored_huge_one_cannot_stall_aggregation(setup, client, admin):
    # two finite purchases of 1.5e308 made one unit's sums infinite, and every aggregation
    # round failed from then on, for every experiment: such values are refused at the door
    batch = [{"event_id": "h1", "unit": "u1", "event": "purchase", "value": 1.5e308},
             {"event_id": "h2", "unit": "u1", "event": "purchase", "value": 2 ** 70},
             {"event_id": "edge", "unit": "u1", "event": "purchase", "value": -1e15}]
    body = client.post(V + "/experiments/events/batch", json=batch, headers=admin).json
    assert body["accepted"] == 1 and [r["index"] for r in body["rejected"]] == [0, 1]
    assert body["rejected"][0]["errors"]["value"] == ["must be between -1e+15 and 1e+15"]
    single = client.post(V + "/experiments/events", json=batch[0], headers=admin)
    assert single.status_code == 422 and "value" in single.json["errors"]["json"]
    # a value stored before the bound is left out of the metrics; the round goes on
    at = T0 + timedelta(hours=1)
    send(setup, {"big": ("a", at), "small": ("b", at)}, [])
    table = EventRecord.__table__
    with setup.db.engine.begin() as conn:
        conn.execute(table.insert(), [
            {"event_id": f"old-{i}", "environment": "production", "unit": "big", "event": "purchase",
             "value": 1.5e308, "timestamp": at + timedelta(minutes=1), "received_at": at,
             "aggregated": False} for i in range(2)])
    ingest(setup, [{"event_id": "fine", "unit": "small", "event": "purchase", "value": 4,
                    "timestamp": (at + timedelta(minutes=2)).isoformat()}], now=T0 + timedelta(days=1))
    aggregate.catch_up(setup.db)
    with setup.db.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)
                            .where(sa.not_(table.c.aggregated))).scalar() == 0
        metric = metrics_by_key(conn, ["revenue"])["revenue"]
        values = reads.unit_values(conn, "exp", metric)
    assert values["small"] == ("b", 4.0, 0.0, 0.0) and values.get("big", ("a", 0.0, 0.0, 0.0))[1] == 0.0
    stats = results.read(setup, "exp").stats["revenue"]
    assert all(math.isfinite(s.sum) and math.isfinite(s.sum_sq) for s in stats.values())
