"""Alerts: each kind fires once (edge-triggered) and resolves; SRM and guardrails through real
exposures and events; silence by moving the clock; default rules; acknowledging; rollouts."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import numpy as np
import pytest

from flagship import jobs
from flagship.experiments.ingest import ingest
from flagship.rollout.alerting import evaluate_alerts
from flagship.rollout.notifications import pending_events
from tests.conftest import make_app

T0 = datetime(2030, 3, 2, 0, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


@pytest.fixture
def app(database_url: str) -> Iterator[Any]:
    """The app with the alert endpoints (registered here until the app registers them)."""
    from flagship.rollout.api import alerts

    app = make_app(database_url)
    if alerts.blp.name not in app.blueprints:
        app.extensions["flask-smorest"]["apis"][""]["ext_obj"].register_blueprint(alerts.blp)
    yield app
    app.extensions["flagship"].db.dispose()


@pytest.fixture
def experiment(api: Any, runtime: Any) -> Any:
    """A running a/b experiment `exp` (started at T0) with a latency guardrail."""
    runtime.clock = lambda: T0
    api("post", "/metrics", {"key": "converted", "event": "purchase", "kind": "conversion"}, 201)
    api("post", "/metrics", {"key": "latency", "event": "page", "kind": "mean", "direction": "decrease"}, 201)
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", {
        "key": "exp", "flag": "f", "layer": "main", "success_metrics": ["converted"],
        "guardrail_metrics": [{"metric": "latency", "margin": 0.1}],
        "variants": [{"variant": "a", "value": 1, "is_control": True}, {"variant": "b", "value": 2}]}, 201)
    api("post", "/experiments/exp/start")
    return runtime


def expose(runtime: Any, counts: dict[str, int], at: datetime, prefix: str = "u") -> None:
    """Real exposures through ingestion, then an aggregation round."""
    items = [{"event_id": f"x-{prefix}-{v}{i}", "unit": f"{prefix}-{v}{i}", "event": "$exposure",
              "experiment": "exp", "variant": v, "timestamp": at.isoformat()}
             for v, n in counts.items() for i in range(n)]
    for start in range(0, len(items), 2000):
        assert not ingest(runtime, items[start:start + 2000], now=at).rejected
    jobs.aggregate(runtime)


def changes(runtime: Any, when: datetime) -> list[tuple[str, str]]:
    runtime.clock = lambda: when
    return [(c["change"], c["alert"]["kind"]) for c in evaluate_alerts(runtime) if "alert" in c]


def events_of(runtime: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in pending_events(runtime) if e["type"] == kind]


def test_a_running_experiment_gets_the_default_rules(api, experiment):
    shown = api("get", "/experiments/exp/alerts")
    assert [(r["kind"], r["id"], r["default"]) for r in shown["rules"]] == [
        ("srm", None, True), ("guardrail_breach", None, True), ("no_exposures", None, True)]
    assert changes(experiment, T0 + timedelta(minutes=1)) == []
    stored = api("get", "/experiments/exp/alerts")["rules"]
    assert [(r["kind"], r["created_by"]) for r in stored] == [("srm", "system:alerts")] * 1 + [
        ("guardrail_breach", "system:alerts"), ("no_exposures", "system:alerts")]
    assert stored[2]["hours"] == 24 and stored[0]["p_value"] == 0.001
    assert changes(experiment, T0 + timedelta(minutes=2)) == []
    assert len(api("get", "/alert-rules?subject_type=experiment&subject_key=exp")) == 3  # added once


def test_srm_fires_once_from_real_exposures_is_acknowledged_and_resolves(api, experiment):
    expose(experiment, {"a": 600, "b": 400}, T0 + timedelta(minutes=10))
    assert changes(experiment, T0 + HOUR) == [("opened", "srm")]
    assert changes(experiment, T0 + 2 * HOUR) == []  # still mismatched: no second alert
    [alert] = api("get", "/alerts?status=open")["items"]
    assert (alert["subject_type"], alert["subject_key"], alert["environment"]) == ("experiment", "exp", "production")
    assert alert["evidence"]["observed"] == {"a": 600, "b": 400} and alert["evidence"]["p_value"] < 1e-6
    assert "sample ratio mismatch" in alert["message"]
    acked = api("post", f"/alerts/{alert['id']}/ack")
    assert acked["status"] == "acknowledged" and acked["acknowledged_by"] == "key:test-admin"
    assert api("post", f"/alerts/{alert['id']}/ack")["acknowledged_at"] == acked["acknowledged_at"]
    assert changes(experiment, T0 + 3 * HOUR) == []  # acknowledged is not re-opened
    expose(experiment, {"b": 200}, T0 + 3 * HOUR, prefix="more")
    assert changes(experiment, T0 + 4 * HOUR) == [("resolved", "srm")]
    resolved = api("get", f"/alerts/{alert['id']}")
    assert resolved["status"] == "resolved" and resolved["resolution"] == "condition cleared"
    api("post", f"/alerts/{alert['id']}/ack", None, 409)
    assert [e["type"] for e in pending_events(experiment) if e["type"].startswith("alert.")] == [
        "alert.opened", "alert.acknowledge", "alert.resolved"]
    assert api("get", "/alerts?status=open")["total"] == 0
    assert api("get", "/alerts?subject=experiment:exp")["total"] == 1
    assert api("get", "/alerts?subject=rollout:exp")["total"] == 0


def test_guardrail_breach_fires_from_real_events_and_resolves_when_the_experiment_stops(api, experiment):
    rng = np.random.default_rng(3)
    at = T0 + timedelta(minutes=30)
    items = []
    for variant, mu in (("a", 5.0), ("b", 5.6)):  # b is ~80 % slower: far past the 10 % margin
        for i in range(300):
            unit = f"{variant}{i}"
            items.append({"event_id": f"x-{unit}", "unit": unit, "event": "$exposure", "experiment": "exp",
                          "variant": variant, "timestamp": at.isoformat()})
            items.append({"event_id": f"l-{unit}", "unit": unit, "event": "page",
                          "value": round(float(rng.lognormal(mu, 0.3)), 1),
                          "timestamp": (at + timedelta(minutes=1)).isoformat()})
    assert not ingest(experiment, items, now=at + timedelta(minutes=2)).rejected
    jobs.aggregate(experiment)
    assert changes(experiment, T0 + HOUR) == [("opened", "guardrail_breach")]
    assert changes(experiment, T0 + HOUR + timedelta(minutes=5)) == []
    [alert] = api("get", "/alerts?status=open")["items"]
    [breach] = alert["evidence"]["breaches"]
    assert (breach["metric"], breach["variant"], breach["status"]) == ("latency", "b", "breached")
    assert breach["difference"] > 0
    api("post", "/experiments/exp/stop")
    assert changes(experiment, T0 + 2 * HOUR) == [("resolved", "guardrail_breach")]
    assert api("get", f"/alerts/{alert['id']}")["resolution"] == "subject not running"


def test_no_exposures_fires_after_n_hours_of_silence_and_resolves_on_the_next_exposure(api, experiment):
    assert changes(experiment, T0 + 23 * HOUR) == []  # counted from the start
    assert changes(experiment, T0 + 24 * HOUR) == [("opened", "no_exposures")]
    [alert] = api("get", "/alerts?status=open")["items"]
    assert alert["evidence"]["last_exposure_by"] is None and alert["evidence"]["hours"] == 24
    expose(experiment, {"a": 1}, T0 + 25 * HOUR)
    assert changes(experiment, T0 + 25 * HOUR + timedelta(minutes=1)) == [("resolved", "no_exposures")]
    assert changes(experiment, T0 + 48 * HOUR) == []  # the last exposure's hour ends at 26 h
    assert changes(experiment, T0 + 50 * HOUR) == [("opened", "no_exposures")]
    assert len(events_of(experiment, "alert.opened")) == 2


def test_configured_volume_rules_drop_and_spike_against_the_hourly_baseline(api, experiment):
    rules = [{"kind": "volume_drop", "baseline_hours": 24, "min_baseline_hours": 12, "severity": "critical"},
             {"kind": "volume_spike", "source": "events", "event": "page", "baseline_hours": 24,
              "min_baseline_hours": 12}]
    configured = api("post", "/experiments/exp/alerts", {"rules": rules})
    assert [r["kind"] for r in configured["rules"]] == ["volume_drop", "volume_spike"]  # defaults removed
    rng = np.random.default_rng(7)
    for hour in range(14):
        start = T0 + hour * HOUR
        n = int(rng.poisson(40))
        expose(experiment, {"a": n // 2, "b": n - n // 2}, start + timedelta(minutes=5), prefix=f"h{hour}")
        pages = 400 if hour == 13 else int(rng.poisson(50))
        items = [{"event_id": f"p-{hour}-{i}", "unit": f"h{hour}-a0", "event": "page", "value": 1.0,
                  "timestamp": (start + timedelta(minutes=6)).isoformat()} for i in range(pages)]
        assert not ingest(experiment, items, now=start + timedelta(minutes=6)).rejected
    # hour 13 has exposures as usual and 8x the page events; hour 14 will have no exposures
    assert sorted(changes(experiment, T0 + 14 * HOUR + timedelta(minutes=1))) == [("opened", "volume_spike")]
    assert changes(experiment, T0 + 15 * HOUR + timedelta(minutes=1)) == [
        ("opened", "volume_drop"), ("resolved", "volume_spike")]
    drop = api("get", "/alerts?status=open")["items"][0]
    assert drop["severity"] == "critical" and drop["evidence"]["value"] == 0 and drop["evidence"]["z"] < -3.5
    expose(experiment, {"a": 20, "b": 20}, T0 + 15 * HOUR + timedelta(minutes=5), prefix="back")
    assert changes(experiment, T0 + 16 * HOUR + timedelta(minutes=1)) == [("resolved", "volume_drop")]


def test_rule_crud_validation_and_disabling_resolves(api, experiment):
    api("post", "/alert-rules", {"subject_type": "experiment", "subject_key": "nope", "kind": "srm"}, 404)
    error = api("post", "/alert-rules", {"subject_type": "experiment", "subject_key": "exp",
                                         "kind": "no_exposures", "hours": -1}, 422)
    assert "hours" in error["errors"]["json"]
    error = api("post", "/alert-rules", {"subject_type": "experiment", "subject_key": "exp",
                                         "kind": "srm", "hours": 3}, 422)
    assert "hours" in error["errors"]["json"]
    error = api("post", "/experiments/exp/alerts", {"rules": [{"kind": "srm"}, {"kind": "bogus"}]}, 422)
    assert "rules.1.kind" in error["errors"]["json"]
    rule = api("post", "/alert-rules", {"subject_type": "experiment", "subject_key": "exp",
                                        "kind": "no_exposures", "hours": 2}, 201)
    assert rule["hours"] == 2 and not rule["default"]
    assert len(api("get", "/experiments/exp/alerts")["rules"]) == 4  # the defaults plus this one
    assert changes(experiment, T0 + 3 * HOUR) == [("opened", "no_exposures")]
    patched = api("patch", f"/alert-rules/{rule['id']}", {"enabled": False, "version": 1})
    assert patched["enabled"] is False and patched["version"] == 2
    [alert] = api("get", "/alerts?status=resolved")["items"]
    assert alert["resolution"] == "rule disabled"
    api("patch", f"/alert-rules/{rule['id']}", {"kind": "srm"}, 422)
    api("patch", f"/alert-rules/{rule['id']}", {"enabled": True, "version": 1}, 409)
    api("patch", f"/alert-rules/{rule['id']}", {"enabled": True})
    assert changes(experiment, T0 + 4 * HOUR) == [("opened", "no_exposures")]
    api("delete", f"/alert-rules/{rule['id']}", None, 204)
    api("get", f"/alert-rules/{rule['id']}", None, 404)
    assert api("get", "/alerts?status=open")["total"] == 0
    api("post", "/experiments/exp/alerts", {"rules": []})
    assert api("get", "/experiments/exp/alerts")["rules"] == []  # turned off, no defaults again
    assert changes(experiment, T0 + 100 * HOUR) == []


def test_rollout_rules_read_the_latest_evaluation_and_the_arms(api, runtime):
    from flagship.experiments.store.tables import ExposureCountRecord
    from flagship.rollout.store import RolloutEvaluationRecord, RolloutRecord

    runtime.clock = lambda: T0
    api("post", "/flags", {"key": "f", "type": "boolean", "variants": {"on": True, "off": False},
                           "default_variant": "off"}, 201)
    policy = {"checks": [{"id": "errors", "type": "metric_threshold"}, {"id": "smoke", "type": "webhook"}]}
    with runtime.db.write() as session:
        session.add(RolloutRecord(environment="production", flag_key="f", rule_id="r", variant="on",
                                  policy=policy, status="running", attempt=1, state={}, version=1,
                                  attempt_started_at=T0, created_at=T0, created_by="t", updated_at=T0,
                                  updated_by="t"))
    for kind in ("guardrail_breach", "srm"):
        api("post", "/alert-rules", {"subject_type": "rollout", "subject_key": "1", "kind": kind}, 201)

    def evaluation(slot: int, outcome: str) -> None:
        with runtime.db.write() as session:
            session.add(RolloutEvaluationRecord(
                rollout_id=1, attempt=1, slot=slot, evaluated_at=T0, decision="hold", reasons=[],
                results=[{"check_id": "errors", "outcome": outcome, "severity": "blocking", "message": "",
                          "evidence": {"value": 0.2}},
                         {"check_id": "smoke", "outcome": "fail", "severity": "signal", "message": "",
                          "evidence": {}}]))
    evaluation(1, "fail")
    with runtime.db.write() as session:
        for arm, count in (("treatment", 1000), ("control", 800)):
            session.add(ExposureCountRecord(experiment_key="rollout:1:1", variant=arm, epoch=1, period=1,
                                            count=count))
    assert sorted(changes(runtime, T0 + HOUR)) == [("opened", "guardrail_breach"), ("opened", "srm")]
    breach = api("get", "/alerts?subject=rollout:1&status=open")["items"]
    assert {a["kind"] for a in breach} == {"guardrail_breach", "srm"}
    [guard] = [a for a in breach if a["kind"] == "guardrail_breach"]
    assert [r["check_id"] for r in guard["evidence"]["results"]] == ["errors"]  # the signal check is not blocking
    evaluation(2, "pass")
    assert changes(runtime, T0 + 2 * HOUR) == [("resolved", "guardrail_breach")]
    with runtime.db.write() as session:
        session.get(RolloutRecord, 1).status = "rolled_back"
    assert changes(runtime, T0 + 3 * HOUR) == [("resolved", "srm")]


def test_two_evaluations_at_once_open_one_alert(api, experiment):
    import threading

    expose(experiment, {"a": 600, "b": 400}, T0 + timedelta(minutes=10))
    experiment.clock = lambda: T0 + HOUR
    results: list[Any] = []
    start = threading.Barrier(3)

    def run() -> None:
        start.wait()
        results.append(evaluate_alerts(experiment))
    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    opened = [c for batch in results for c in batch if c.get("change") == "opened"]
    assert len(opened) == 1 and api("get", "/alerts")["total"] == 1
    assert len(api("get", "/alert-rules")) == 3
    assert len(events_of(experiment, "alert.opened")) == 1
