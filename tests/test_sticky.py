"""Sticky assignment stores: memory, SQL (exposures table) and real Redis, one contract."""
from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
import redis
import sqlalchemy as sa

from flagship.experiments.assignment import Assignment, MemoryAssignments
from flagship.experiments.store.assignments import ExposureRecord, RedisAssignments, SqlAssignments
from tests.conftest import make_app

AT = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["memory", "sql", "redis"])
def store(request, runtime):
    db = runtime.db
    if request.param == "memory":
        return MemoryAssignments()
    if request.param == "sql":
        return SqlAssignments(db)
    return RedisAssignments(request.getfixturevalue("redis_client"), db)


def test_first_assignment_wins_and_is_listed(store):
    first, created = store.assign(Assignment("exp", "u1", "blue", "main", AT))
    assert created and first.variant == "blue"
    second, created = store.assign(Assignment("exp", "u1", "red", "main", AT))
    assert not created and second.variant == "blue" and second.assigned_at == AT
    store.assign(Assignment("other", "u1", "x", "l2", AT))
    mine = store.for_unit("u1")
    assert {k: a.variant for k, a in mine.items()} == {"exp": "blue", "other": "x"}
    assert mine["other"].layer == "l2"
    assert store.for_unit("nobody") == {}


def test_concurrent_first_assignments_agree(store):
    results = []

    def race(variant):
        results.append(store.assign(Assignment("exp", "racer", variant, "main", AT)))

    threads = [threading.Thread(target=race, args=(f"v{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r[0].variant for r in results}) == 1
    assert sum(created for _, created in results) == 1


def test_redis_store_also_writes_the_exposure_to_sql(runtime, redis_client):
    store = RedisAssignments(redis_client, runtime.db)
    store.assign(Assignment("exp", "u9", "blue", "main", AT))
    store.assign(Assignment("exp", "u9", "red", "main", AT))
    with runtime.db.engine.connect() as conn:
        rows = conn.execute(sa.select(ExposureRecord.__table__)).all()
    assert [(r.experiment_key, r.unit, r.variant) for r in rows] == [("exp", "u9", "blue")]


def test_app_uses_redis_when_configured(database_url, redis_client, redis_url):
    app = make_app(database_url, REDIS_URL=redis_url, AUTH=False)
    try:
        client = app.test_client()
        client.post("/api/v1/layers", json={"key": "main"})
        client.post("/api/v1/experiments", json={
            "key": "e", "flag": "f", "layer": "main", "variants": [
                {"variant": "a", "value": "A", "is_control": True}, {"variant": "b", "value": "B"}]})
        assert client.post("/api/v1/experiments/e/start").status_code == 200
        assigned = client.post("/api/v1/experiments/e/assign", json={"context": {"key": "u1"}}).json
        assert assigned["in_experiment"]
        assert redis_client.hget("flagship:assign:u1", "e").decode().split("\t")[0] == assigned["variant"]
        listed = client.get("/api/v1/experiments/user/u1").json["assignments"]
        assert [a["variant"] for a in listed] == [assigned["variant"]]
    finally:
        app.extensions["flagship"].db.dispose()
