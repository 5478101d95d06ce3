"""Data-quality counters per experiment (issue 8, "Data-quality counters on `/monitor` are
global"): an experiment's monitor counts the accepted / late events of its own exposed
units (at or after their exposure) and the duplicate / rejected events naming them; the
store-wide figures are on the admin endpoint `/events/quality`."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from flagship import jobs
from flagship.db import downgrade, upgrade
from flagship.experiments.ingest import ingest
from flagship.experiments.monitor import data_quality
from flagship.experiments.store import aggregates
from flagship.experiments.store.tables import EventCounterRecord

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
    # the store-wide counts do not wait for aggregation (pending events count as accepted)
    assert quality["counters"] == {"accepted": 31, "duplicate": 2, "rejected": 3, "late": 1}
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


def _stored_accepted(runtime) -> int:
    t = EventCounterRecord.__table__
    with runtime.db.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(t.c.count), 0))
                                .where(t.c.kind == "accepted")).scalar())


def _clicks(prefix, n, hour):
    return [{"event_id": f"{prefix}{i}", "unit": f"u{i}", "event": "click",
             "timestamp": (T0 + timedelta(hours=hour)).isoformat()} for i in range(n)]


def test_accepted_events_are_counted_once_whether_pending_or_aggregated(runtime):
    """A request writes no accepted counter; the aggregation round adds the events it folds
    in, and until then the pending events are the count: every event once, in its hour."""
    ingest(runtime, _clicks("a", 4, 0), now=T0 + timedelta(minutes=5))
    ingest(runtime, _clicks("b", 3, 1), now=T0 + timedelta(hours=1, minutes=5))
    assert _stored_accepted(runtime) == 0
    assert data_quality(runtime)["counters"]["accepted"] == 7
    assert data_quality(runtime, since=T0 + timedelta(hours=1, minutes=30))["counters"]["accepted"] == 3

    aggregates.run_round(runtime.db, batch=5)  # part of the pending events
    assert _stored_accepted(runtime) == 5
    assert data_quality(runtime)["counters"]["accepted"] == 7
    jobs.aggregate(runtime)
    assert _stored_accepted(runtime) == 7 and data_quality(runtime)["pending"]["events"] == 0
    assert data_quality(runtime)["counters"]["accepted"] == 7
    assert data_quality(runtime, since=T0 + timedelta(hours=1, minutes=30))["counters"]["accepted"] == 3


def test_the_migration_moves_pending_events_counts(runtime, database_url):
    """Revision 0012: events pending at the upgrade were counted by their requests (the
    old code), so the upgrade takes their counts off and the round adds them back; a
    downgrade puts them back. The store-wide figures stay right throughout."""
    ingest(runtime, _clicks("a", 4, 0), now=T0 + timedelta(minutes=5))
    jobs.aggregate(runtime)
    ingest(runtime, _clicks("b", 3, 0), now=T0 + timedelta(minutes=10))
    ingest(runtime, _clicks("c", 2, 2), now=T0 + timedelta(hours=2))
    runtime.db.dispose()
    downgrade(database_url, "0011")
    assert _stored_accepted(runtime) == 9  # as the old code keeps it: every accepted event
    runtime.db.dispose()
    upgrade(database_url)
    assert _stored_accepted(runtime) == 4  # the aggregated ones; the hour-2 row is gone
    assert data_quality(runtime)["counters"]["accepted"] == 9
    jobs.aggregate(runtime)
    assert _stored_accepted(runtime) == 9 and data_quality(runtime)["counters"]["accepted"] == 9


def test_single_events_count_alike_on_every_write_path(runtime):
    """One event per request (the writer's self-committing lane when it is an ordinary
    new event): accepted, a resent duplicate, a late one and a rejected one each count."""
    now = T0 + timedelta(hours=3)
    one = {"event_id": "s-1", "unit": "u1", "event": "click", "timestamp": (now - timedelta(minutes=1)).isoformat()}
    assert (ingest(runtime, [one], now=now).accepted, ingest(runtime, [one], now=now).duplicates) == (1, 1)
    late = {"event_id": "s-2", "unit": "u2", "event": "click", "timestamp": at(0)}
    assert ingest(runtime, [late], now=now).late == 1
    assert len(ingest(runtime, [{"event_id": "s-3", "unit": "u3", "event": ""}], now=now).rejected) == 1
    assert data_quality(runtime)["counters"] == {"accepted": 2, "duplicate": 1, "rejected": 1, "late": 1}
    jobs.aggregate(runtime)
    assert data_quality(runtime)["counters"] == {"accepted": 2, "duplicate": 1, "rejected": 1, "late": 1}
