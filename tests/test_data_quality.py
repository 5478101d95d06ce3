"""Data-quality counters per experiment (issue 8, "Data-quality counters on `/monitor` are
global"): an experiment's monitor counts the accepted / late events of its own exposed
units (at or after their exposure) and the duplicate / rejected events naming them; the
store-wide figures are on the admin endpoint `/events/quality`."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flagship import jobs
from flagship.experiments.ingest import ingest

V = "/api/v1"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
EXPOSED_AT = T0 + timedelta(minutes=10)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def exposures(experiment, units):
    return [{"event_id": f"x-{u}", "unit": u, "event": "$exposure", "experiment": experiment,
             "variant": "ab"[i % 2], "timestamp": EXPOSED_AT.isoformat()} for i, u in enumerate(units)]


def test_monitor_counts_only_the_experiments_own_units(api, client, sdk, runtime):
    runtime.clock = lambda: T0
    for layer, experiment, flag in (("la", "A", "fa"), ("lb", "B", "fb")):
        api("post", "/layers", {"key": layer}, 201)
        api("post", "/experiments", {"key": experiment, "flag": flag, "layer": layer, "traffic_percentage": 100,
                                     "variants": [{"variant": "a", "value": 1, "is_control": True},
                                                  {"variant": "b", "value": 2}]}, 201)
        api("post", f"/experiments/{experiment}/start")
    a_units = [f"a{i}" for i in range(10)]
    b_units = [f"b{i}" for i in range(5)]

    def send(items, now_minutes):
        return ingest(runtime, items, now=T0 + timedelta(minutes=now_minutes))

    r = send(exposures("A", a_units) + exposures("B", b_units), 15)
    assert (r.accepted, r.duplicates, r.rejected) == (15, 0, [])
    # A's units: one click each after exposure, three before it (not A's: before exposure),
    # a click of a unit no experiment exposed
    clicks = [{"event_id": f"c-{u}", "unit": u, "event": "click", "timestamp": at(20)} for u in a_units]
    before = [{"event_id": f"pre-{u}", "unit": u, "event": "click", "timestamp": at(5)} for u in a_units[:3]]
    stranger = [{"event_id": "z-1", "unit": "z1", "event": "click", "timestamp": at(20)}]
    # a duplicate inside the request (same event_id twice) naming a4
    repeat = [{"event_id": "r-a4", "unit": "a4", "event": "click", "timestamp": at(21)}] * 2
    r = send(clicks + before + stranger + repeat, 30)
    assert (r.accepted, r.duplicates, r.rejected) == (15, 1, [])

    # a resent event (a0's click): a duplicate naming a0
    r = send([{"event_id": "c-a0", "unit": "a0", "event": "click", "timestamp": at(20)}], 35)
    assert (r.accepted, r.duplicates, r.rejected) == (0, 1, [])
    # later: a late event (a3, received 2.5 h after it happened), rejected items naming a1
    # (bad value), a stranger, and no unit at all
    r = send([{"event_id": "late-a3", "unit": "a3", "event": "click", "timestamp": at(30)},
              {"event_id": "bad-a1", "unit": "a1", "event": "click", "value": "lots", "timestamp": at(170)},
              {"event_id": "bad-z", "unit": "z2", "event": "click", "value": "lots", "timestamp": at(170)},
              {"event_id": "bad-none", "event": "click", "timestamp": at(170)}], 180)
    assert (r.accepted, r.duplicates, len(r.rejected), r.late) == (1, 0, 3, 1)

    quality = api("get", "/events/quality")
    assert quality["pending"]["events"] > 0 and quality["pending"]["exposures"] == 15  # not yet aggregated
    jobs.aggregate(runtime)

    a = api("get", "/experiments/A/monitor")["data_quality"]
    b = api("get", "/experiments/B/monitor")["data_quality"]
    # A: 10 exposures + 10 clicks + 1 repeated click + the late click (the 3 early clicks and
    # the strangers are not A's); duplicates: the repeat inside a request and the resent c-a0
    assert a == {"accepted": 22, "duplicate": 2, "rejected": 1, "late": 1}
    # B: only its own 5 exposures, none of A's problems
    assert b == {"accepted": 5, "duplicate": 0, "rejected": 0, "late": 0}

    quality = api("get", "/events/quality")
    # every accepted event: 15 exposures, 15 in the second request, 1 late one
    assert quality["counters"] == {"accepted": 31, "duplicate": 2, "rejected": 3, "late": 1}
    assert quality["pending"] == {"events": 0, "exposures": 0}
    response = client.get(V + "/events/quality", headers=sdk)
    assert response.status_code in (401, 403)  # admin only


def test_issues_before_the_experiment_started_are_not_its_own(api, runtime):
    """Duplicate / rejected items naming a unit count for an experiment from its start on."""
    runtime.clock = lambda: T0
    api("post", "/layers", {"key": "la"}, 201)
    api("post", "/experiments", {"key": "A", "flag": "fa", "layer": "la", "traffic_percentage": 100,
                                 "variants": [{"variant": "a", "value": 1, "is_control": True},
                                              {"variant": "b", "value": 2}]}, 201)
    early = T0 - timedelta(hours=3)
    r = ingest(runtime, [{"event_id": "e1", "unit": "a0", "event": "click", "timestamp": early.isoformat()},
                         {"event_id": "e1", "unit": "a0", "event": "click", "timestamp": early.isoformat()},
                         {"unit": "a0", "event": "click", "value": "x", "timestamp": early.isoformat()}],
               now=early + timedelta(minutes=1))
    assert (r.accepted, r.duplicates, len(r.rejected)) == (1, 1, 1)
    runtime.clock = lambda: T0
    api("post", "/experiments/A/start")
    ingest(runtime, exposures("A", ["a0"]), now=EXPOSED_AT)
    jobs.aggregate(runtime)
    assert api("get", "/experiments/A/monitor")["data_quality"] == {
        "accepted": 1, "duplicate": 0, "rejected": 0, "late": 0}
    assert api("get", "/events/quality")["counters"] == {
        "accepted": 2, "duplicate": 1, "rejected": 1, "late": 0}


def test_a_late_duplicate_is_not_a_late_event(api, runtime):
    """`late` counts accepted events that arrived late (the per-experiment counter and
    `EventIn.is_late` say so): an old event resent by a retrying client is a duplicate only."""
    runtime.clock = lambda: T0
    event = {"event_id": "e1", "unit": "u1", "event": "click", "timestamp": at(0)}
    assert ingest(runtime, [event], now=T0 + timedelta(minutes=5)).accepted == 1
    resent = ingest(runtime, [event], now=T0 + timedelta(hours=3))
    assert (resent.accepted, resent.duplicates) == (0, 1)
    assert api("get", "/events/quality")["counters"] == {
        "accepted": 1, "duplicate": 1, "rejected": 0, "late": 0}
