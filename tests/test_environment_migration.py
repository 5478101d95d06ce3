"""Migration 0007 carries everything into `production`: every flag evaluates the same for
10,000 contexts before and after, on SQLite and PostgreSQL."""
from __future__ import annotations

import random
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from flagship import Snapshot
from flagship.flags.evaluate import EvalState
from flagship.flags.model import flag_from_dict, flag_to_dict, segment_from_dict, segment_to_dict
from flagship.flags.operators import default_operators
from tests.conftest import BACKENDS, POSTGRES_ADMIN_URL, make_app

AT = datetime(2026, 11, 1, tzinfo=timezone.utc)
OPS = default_operators()
COUNTRIES = ["NL", "BE", "US", "DE", "FR"]


def _condition(rng: random.Random) -> dict:
    return rng.choice([
        {"attribute": "country", "operator": "in", "values": rng.sample(COUNTRIES, 2)},
        {"attribute": "age", "operator": "gte", "values": [rng.randrange(18, 60)]},
        {"attribute": "plan", "operator": "eq", "values": [rng.choice(["pro", "free"])]},
        {"attribute": "app_version", "operator": "semver_gte", "values": ["2.1.0"]},
        {"attribute": "email", "operator": "ends_with", "values": [".org"], "negate": rng.random() < 0.3},
        {"segment": "staff"}])


def _flags(rng: random.Random) -> list[dict]:
    flags = []
    for i in range(24):
        rules = []
        for j in range(rng.randrange(0, 4)):
            conditions = [_condition(rng) for _ in range(rng.randrange(0, 3))]
            if rng.random() < 0.5:
                rules.append({"kind": "force", "variant": rng.choice("abc"), "conditions": conditions})
            else:
                rules.append({"kind": "rollout", "variant": rng.choice("abc"), "conditions": conditions,
                              "percentage": rng.randrange(0, 10001) / 100})
        doc = {"key": f"flag-{i}", "type": "string", "variants": {"a": "A", "b": "B", "c": "C"},
               "default_variant": "a", "off_variant": "b", "enabled": i % 7 != 0, "rules": rules,
               "allowlist": {"u-1": "c"} if i % 5 == 0 else {}, "blocklist": ["u-2"] if i % 6 == 0 else []}
        flags.append(flag_to_dict(flag_from_dict(doc, OPS, {"staff"})))
    return flags


def _upgrade(url: str, revision: str) -> None:
    from flagship.db import upgrade

    upgrade(url, revision)


@pytest.fixture(params=BACKENDS)
def database_at_0006(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        _upgrade(url, "0006")
        yield url
        return
    name = f"flagship_env_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        _upgrade(url, "0006")
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _write_0006_rows(url: str, flags: list[dict], segment: dict) -> None:
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        with engine.begin() as conn:
            meta.reflect(conn, only=["flags", "segments", "meta"])
            conn.execute(meta.tables["flags"].insert(), [
                {"key": f["key"], "version": 3, "enabled": f["enabled"], "tags": "", "description": "",
                 "document": f, "created_at": AT, "created_by": "key:old", "updated_at": AT,
                 "updated_by": "key:old"} for f in flags])
            conn.execute(meta.tables["segments"].insert(), [
                {"key": segment["key"], "version": 1, "document": segment, "created_at": AT,
                 "updated_at": AT, "updated_by": "key:old"}])
            conn.execute(meta.tables["meta"].update().values(snapshot_revision=40))
    finally:
        engine.dispose()


def _contexts(rng: random.Random) -> list[dict]:
    return [{"key": f"u-{i}", "country": rng.choice(COUNTRIES), "age": rng.randrange(10, 80),
             "plan": rng.choice(["pro", "free"]), "app_version": rng.choice(["1.9.0", "2.1.0", "3.0.1"]),
             "email": rng.choice(["a@x.org", "b@y.com"])} for i in range(10_000)]


def test_every_flag_evaluates_the_same_after_the_migration(database_at_0006):
    rng = random.Random(4)
    flags = _flags(rng)
    segment = segment_to_dict(segment_from_dict({"key": "staff", "included": ["u-3", "u-10"],
                                                 "conditions": [{"attribute": "email", "operator": "ends_with",
                                                                 "values": [".org"]}]}, OPS))
    _write_0006_rows(database_at_0006, flags, segment)
    before = Snapshot.from_dict({"revision": 40, "flags": flags, "segments": [segment]})
    _upgrade(database_at_0006, "head")
    app = make_app(database_at_0006)
    runtime = app.extensions["flagship"]
    try:
        after = runtime.snapshots.get("production").snapshot
        assert sorted(after.flags) == sorted(f["key"] for f in flags)
        state = EvalState(now=AT.timestamp())
        for context in _contexts(rng):
            for key in before.flags:
                assert after.evaluate(key, context, state) == before.evaluate(key, context, state), (key, context)
        client = app.test_client()
        from flagship.auth import create_key

        headers = {"Authorization": f"Bearer {create_key(runtime, 't', 'a', 'admin')}"}
        listed = client.get("/api/v1/environments", headers=headers).json
        assert [e["key"] for e in listed] == ["production"]
        flag = client.get("/api/v1/flags/flag-1", headers=headers).json
        assert flag["environment"] == "production" and flag["version"] == 3
        history = client.get("/api/v1/flags/flag-1/revisions", headers=headers)
        assert history.status_code in (200, 404)  # rows written by hand have no revisions
        created = client.post("/api/v1/flags", headers=headers, json={
            "key": "new", "type": "boolean", "variants": {"on": True, "off": False}, "default_variant": "off"})
        assert created.status_code == 201  # the id sequences continue after the copied rows
    finally:
        runtime.close()
