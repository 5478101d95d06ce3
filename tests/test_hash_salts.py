"""Hash streams of different objects never collide (issue 8, "Hash streams collide across
objects"): layers, experiment variant splits, flag rollouts and release rules each hash in
their own namespace; an explicit salt another object uses is a 409 naming it; and the
salts of objects that existed before the fix are kept by the migration, so nothing running
reshuffles.
"""
from __future__ import annotations

import bisect
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mmh3
import numpy as np
import pytest
import sqlalchemy as sa
from scipy import stats

from flagship.flags.evaluate import EvalState
from tests.conftest import BACKENDS, POSTGRES_ADMIN_URL, boolean_flag, make_app

V = "/api/v1"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
UNITS = [f"user-{i}" for i in range(20_000)]


def bucket(salt: str, unit: str) -> int:
    """The pinned bucketing formula: murmur3 x86_32 of "salt:unit", unsigned, mod 10,000."""
    return mmh3.hash(f"{salt}:{unit}", 0, False) % 10_000


def server_snapshot(runtime):
    """The compiled snapshot the server itself evaluates with (no sticky records involved)."""
    return runtime.snapshots.get().snapshot


def two_variant_experiment(key, flag, layer, traffic, **extra):
    doc = {"key": key, "flag": flag, "layer": layer, "traffic_percentage": traffic,
           "variants": [{"variant": "a", "value": "A", "is_control": True},
                        {"variant": "b", "value": "B"}]}
    doc.update(extra)
    return doc


# -- (a) an experiment keyed like its layer ----------------------------------------------------

def test_variant_split_is_independent_of_the_layer_bucket(api, client, sdk, runtime):
    """Before the fix layer `lz` and experiment `lz` both hashed "lz:unit": a 50 % experiment
    owned layer buckets [0, 5000) and its 1:1 split cut at variant bucket 5000, so every
    enrolled unit got the control."""
    runtime.clock = lambda: T0
    assert api("post", "/layers", {"key": "lz"}, 201)["salt"] == "layer:lz"
    created = api("post", "/experiments", two_variant_experiment("lz", "lzf", "lz", 50), 201)
    assert created["salt"] == "experiment:lz"
    assert api("post", "/experiments/lz/start")["ranges"] == [[0, 5000]]
    layer_salt = api("get", "/layers/lz")["salt"]
    snapshot = server_snapshot(runtime)
    assert snapshot.experiments["lz"].variant_salt == "experiment:lz"
    state = EvalState(now=T0.timestamp())

    enrolled = []  # (layer bucket, variant)
    for i, unit in enumerate(UNITS):
        result = snapshot.evaluate("lzf", {"key": unit}, state)
        if i < 50:  # the HTTP front door answers the same
            served = client.post(V + "/evaluate", json={"context": {"key": unit}, "flags": ["lzf"]},
                                 headers=sdk).json["flags"]["lzf"]
            assert (served["variant"], served.get("experiment")) == (result.variant, result.experiment)
        layer_bucket = bucket(layer_salt, unit)
        inside = result.experiment == "lz"
        assert inside == (layer_bucket < 5000), unit  # membership: the layer's own hash
        if inside:
            enrolled.append((layer_bucket, result.variant))
    assert 0.48 < len(enrolled) / len(UNITS) < 0.52
    share_b = sum(v == "b" for _, v in enrolled) / len(enrolled)
    assert 0.47 < share_b < 0.53, share_b  # old code: 0.0 (everyone in the control)

    # the variant is no function of where the unit sits in the layer: halves and fifths of
    # the experiment's bucket range all split about 1:1 (chi-square test of independence)
    for bins in (2, 5):
        table = np.zeros((bins, 2))
        for layer_bucket, variant in enrolled:
            table[layer_bucket * bins // 5000, variant == "b"] += 1
        assert (table > 0).all(), table
        assert stats.chi2_contingency(table).pvalue > 1e-4, table
        shares = table[:, 1] / table.sum(axis=1)
        assert (abs(shares - 0.5) < 0.05).all(), shares


# -- (b) a flag rollout and a layer keyed alike ----------------------------------------------

def test_a_rollout_is_not_the_membership_of_a_layer_keyed_like_its_flag(api, runtime):
    """Before the fix a 50 % rollout on flag `l1` ("l1:unit" < 5000) was exactly the
    membership of a 50 % experiment in layer `l1` (the same hash and cut)."""
    runtime.clock = lambda: T0
    api("post", "/flags", boolean_flag("l1", rules=[
        {"id": "half", "kind": "rollout", "variant": "on", "percentage": 50, "conditions": []}]), 201)
    api("post", "/layers", {"key": "l1"}, 201)
    api("post", "/experiments", two_variant_experiment("e1", "e1f", "l1", 50), 201)
    assert api("post", "/experiments/e1/start")["ranges"] == [[0, 5000]]
    snapshot = server_snapshot(runtime)
    state = EvalState(now=T0.timestamp())

    rolled, member = [], []
    for unit in UNITS:
        rollout = snapshot.evaluate("l1", {"key": unit}, state)
        on = rollout.variant == "on"
        # the rollout formula is pinned by the conformance vectors: it must not move
        assert on == (bucket("l1", unit) < 5000), unit
        rolled.append(on)
        member.append(snapshot.evaluate("e1f", {"key": unit}, state).experiment == "e1")
    rolled_arr, member_arr = np.array(rolled, float), np.array(member, float)
    assert 0.48 < rolled_arr.mean() < 0.52 and 0.48 < member_arr.mean() < 0.52
    phi = np.corrcoef(rolled_arr, member_arr)[0, 1]
    assert abs(phi) < 0.04, phi  # old code: phi == 1.0 (the same units)
    both = (rolled_arr * member_arr).mean()
    assert 0.22 < both < 0.28, both  # about a quarter in both, as independent halves give


# -- (c) explicit salts that clash ----------------------------------------------------------

def _names(body, kind, key):
    """The 409 names the other object, in the message and in errors.salt."""
    assert f"{kind} {key!r}" in body["message"], body
    assert body["errors"]["salt"] == [f"used by {kind} {key}"], body


def test_a_layer_salt_may_not_be_a_flags(api):
    api("post", "/flags", boolean_flag("checkout"), 201)
    _names(api("post", "/layers", {"key": "l2", "salt": "checkout"}, 409), "flag", "checkout")
    api("get", "/layers/l2", status=404)  # nothing was written
    api("post", "/layers", {"key": "l2", "salt": "l2-own"}, 201)
    _names(api("patch", "/layers/l2", {"version": api("get", "/layers/l2")["version"], "salt": "checkout"}, 409), "flag", "checkout")
    assert api("get", "/layers/l2")["salt"] == "l2-own"
    # and the other way round: a flag may not take a layer's salt
    _names(api("post", "/flags", boolean_flag("x", salt="l2-own"), 409), "layer", "l2")
    api("post", "/flags", boolean_flag("y", salt="layer:main2"), 201)
    _names(api("post", "/layers", {"key": "main2"}, 409), "flag", "y")  # even its default salt
    # a layer keeping its own salt is no clash
    assert api("patch", "/layers/l2", {"version": api("get", "/layers/l2")["version"], "salt": "l2-own", "name": "Two"})["name"] == "Two"


def test_an_experiment_salt_may_not_be_a_layers_or_another_experiments(api):
    api("post", "/layers", {"key": "main"}, 201)
    body = api("post", "/experiments", two_variant_experiment("ex", "exf", "main", 50, salt="layer:main"), 409)
    _names(body, "layer", "main")
    api("get", "/experiments/ex", status=404)
    api("get", "/flags/exf", status=404)  # the flag it would have created is rolled back too
    api("post", "/experiments", two_variant_experiment("ex", "exf", "main", 50, salt="ex-salt"), 201)
    api("post", "/experiments", two_variant_experiment("ey", "eyf", "main", 50), 201)
    _names(api("patch", "/experiments/ey", {"salt": "ex-salt", "version": 1}, 409), "experiment", "ex")
    _names(api("post", "/layers", {"key": "l9", "salt": "experiment:ey"}, 409), "experiment", "ey")
    _names(api("post", "/layers", {"key": "l9", "salt": "ex-salt"}, 409), "experiment", "ex")


def test_a_flag_salt_may_not_be_a_release_rules(api):
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", two_variant_experiment("exp-a", "colour", "main", 50), 201)
    api("post", "/experiments/exp-a/start")
    api("post", "/experiments/exp-a/release", {"variant": "b", "percentage": 20})
    # the release ramp hashes "colour:release"; no flag may take that salt
    _names(api("post", "/flags", boolean_flag("sneaky", salt="colour:release"), 409), "flag", "colour")
    _names(api("post", "/layers", {"key": "l3", "salt": "colour:release"}, 409), "flag", "colour")
    # and a hand-written release rule may not hash with another flag's salt
    api("post", "/flags", boolean_flag("checkout"), 201)
    flag = api("post", "/flags", boolean_flag("sizes"), 201)
    rule = {"id": "rel-x", "kind": "release", "variant": "on", "percentage": 10,
            "params": {"experiment": "x", "salt": "checkout"}, "conditions": []}
    _names(api("patch", "/flags/sizes", {"rules": [rule], "version": flag["version"]}, 409), "flag", "checkout")
    assert api("get", "/flags/sizes")["rules"] == []
    # its default salt ("sizes:release") is its own
    rule["params"] = {"experiment": "x"}
    api("patch", "/flags/sizes", {"rules": [rule], "version": flag["version"]})
    _names(api("post", "/layers", {"key": "l4", "salt": "sizes:release"}, 409), "flag", "sizes")


def test_a_flags_release_salt_is_reserved_before_any_release(api):
    """A flag that took `colour:release` as its salt before colour's experiment released
    blocked that release with a 409 naming the other flag."""
    api("post", "/flags", boolean_flag("colour"), 201)
    _names(api("post", "/flags", boolean_flag("sneaky", salt="colour:release"), 409), "flag", "colour")
    api("post", "/flags", boolean_flag("fine", salt="colour:releases"), 201)
    api("delete", "/flags/colour", status=204)  # deleting frees both
    api("post", "/flags", boolean_flag("later", salt="colour:release"), 201)


def test_a_layer_that_ran_experiments_keeps_its_salt(api):
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", two_variant_experiment("exp-a", "colour", "main", 40), 201)
    api("patch", "/layers/main", {"version": api("get", "/layers/main")["version"], "salt": "fresh"})  # drafts only: still allowed
    assert api("get", "/layers/main")["salt"] == "fresh"
    api("post", "/layers", {"key": "other", "salt": "layer:main"}, 201)  # the old salt was freed
    api("post", "/experiments/exp-a/start")
    body = api("patch", "/layers/main", {"version": api("get", "/layers/main")["version"], "salt": "fresher"}, 409)
    assert body["errors"]["salt"] == ["in use"] and "reshuffle" in body["message"]
    api("post", "/experiments/exp-a/stop", {"outcome": "completed"})
    assert api("patch", "/layers/main", {"version": api("get", "/layers/main")["version"], "salt": "fresher"}, 409)["errors"]["salt"] == ["in use"]
    assert api("get", "/layers/main")["salt"] == "fresh"


def test_deleting_an_object_frees_its_salt(api):
    api("post", "/layers", {"key": "temp", "salt": "custom"}, 201)
    api("post", "/flags", boolean_flag("checkout"), 201)
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", two_variant_experiment("ex", "exf", "main", 50, salt="exp-salt"), 201)
    for salt in ("custom", "checkout", "exp-salt"):
        api("post", "/layers", {"key": "probe", "salt": salt}, 409)
    api("delete", "/layers/temp", status=204)
    api("delete", "/flags/checkout", status=204)
    api("delete", "/experiments/ex", status=204)
    for i, salt in enumerate(("custom", "checkout", "exp-salt")):
        assert api("post", "/layers", {"key": f"probe{i}", "salt": salt}, 201)["salt"] == salt
    # and a salt freed by a change of salt
    api("post", "/layers", {"key": "moved", "salt": "before"}, 201)
    api("patch", "/layers/moved", {"version": api("get", "/layers/moved")["version"], "salt": "after"})
    api("post", "/layers", {"key": "taker", "salt": "before"}, 201)
    _names(api("post", "/layers", {"key": "taker2", "salt": "after"}, 409), "layer", "moved")


# -- (d) the migration keeps the salts of existing objects ------------------------------------

OLD_EXPERIMENT_DEFAULTS = {
    "description": "", "hypothesis": "", "owner": "", "targeting": [], "allowlist": {}, "blocklist": [],
    "start_at": None, "end_at": None, "minimum_sample_size": 0, "significance_level": 0.05,
    "power": 0.8, "success_metrics": [], "guardrail_metrics": [], "metadata": {}, "rule_position": 0,
    "multiple_testing": "holm"}
# (key, flag, layer, ranges, weights): `lz` shares its key with its layer, as in the issue
OLD_EXPERIMENTS = [("exp-old", "colour", "main", [[0, 6000]], {"red": 1.0, "blue": 3.0}),
                   ("lz", "size", "lz", [[2000, 7000]], {"s": 1.0, "m": 1.0})]


def _old_flag(key, variants, default, rules):
    return {"key": key, "type": "string" if default != "off" else "boolean", "description": "",
            "tags": [], "enabled": True, "variants": variants, "default_variant": default,
            "off_variant": default, "salt": key, "allowlist": {}, "blocklist": [], "rules": rules}


def _write_0005_rows(url: str) -> None:
    """Rows as the code of schema 0005 wrote them: layer salt = key, no experiment salt."""
    started = T0 - timedelta(days=3)
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        with engine.begin() as conn:
            meta.reflect(conn, only=["layers", "flags", "experiments", "meta"])
            t = meta.tables
            conn.execute(t["layers"].insert(), [
                {"key": k, "name": k, "description": "", "salt": k, "version": 1, "created_at": started,
                 "updated_at": started, "updated_by": "key:old"} for k in ("main", "lz")])
            flags = [
                _old_flag("colour", {"red": "#f00", "blue": "#00f"}, "red", [
                    {"id": "exp-exp-old", "kind": "experiment", "conditions": [],
                     "params": {"experiment": "exp-old"}}]),
                _old_flag("size", {"s": "S", "m": "M"}, "s", [
                    {"id": "exp-lz", "kind": "experiment", "conditions": [], "params": {"experiment": "lz"}}]),
                _old_flag("ramp", {"on": True, "off": False}, "off", [
                    {"id": "rel-done", "kind": "release", "variant": "on", "percentage": 40.0,
                     "conditions": [], "params": {"experiment": "done"}},
                    {"id": "thirty", "kind": "rollout", "variant": "on", "percentage": 30.0,
                     "conditions": []}]),
            ]
            conn.execute(t["flags"].insert(), [
                {"key": f["key"], "version": 2, "enabled": True, "tags": "", "description": "",
                 "document": f, "created_at": started, "created_by": "key:old", "updated_at": started,
                 "updated_by": "key:old"} for f in flags])
            rows = []
            for key, flag, layer, ranges, weights in OLD_EXPERIMENTS:
                doc = {**OLD_EXPERIMENT_DEFAULTS, "key": key, "name": key, "flag": flag, "layer": layer,
                       "traffic_percentage": (ranges[0][1] - ranges[0][0]) / 100,
                       "variants": [{"variant": v, "weight": w, "is_control": i == 0}
                                    for i, (v, w) in enumerate(weights.items())]}
                assert "salt" not in doc
                rows.append({"key": key, "flag_key": flag, "layer_key": layer, "status": "running",
                             "version": 2, "document": doc, "ranges": ranges, "started_at": started,
                             "ended_at": None, "created_at": started, "created_by": "key:old",
                             "updated_at": started, "updated_by": "key:old"})
            conn.execute(t["experiments"].insert(), rows)
            conn.execute(t["meta"].update().values(snapshot_revision=7))
    finally:
        engine.dispose()


def _old_evaluation(unit: str) -> dict[str, tuple[str, str | None]]:
    """flag -> (variant, experiment) by the formulas the 0005 code used (salt = key)."""
    out = {}
    defaults = {"colour": "red", "size": "s"}
    for key, flag, layer, ranges, weights in OLD_EXPERIMENTS:
        layer_bucket = bucket(layer, unit)  # the layer's salt was its key
        if not any(lo <= layer_bucket < hi for lo, hi in ranges):
            out[flag] = (defaults[flag], None)
            continue
        total, running, cutoffs = sum(weights.values()), 0.0, []
        for w in weights.values():
            running += w
            cutoffs.append(int(round(running / total * 10_000)))
        names = list(weights)
        out[flag] = (names[bisect.bisect_right(cutoffs, bucket(key, unit))], key)  # salt: its key
    on = bucket("ramp:release", unit) < 4000 or bucket("ramp", unit) < 3000
    out["ramp"] = ("on" if on else "off", None)
    return out


def _alembic_upgrade(url: str, revision: str) -> None:
    from flagship.db import upgrade

    upgrade(url, revision)


@pytest.fixture(params=BACKENDS)
def database_at_0005(request: pytest.FixtureRequest, tmp_path: Path):
    """An empty database of our own migrated to 0005 only (dropped at the end)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
        _alembic_upgrade(url, "0005")
        yield url
        return
    name = f"flagship_mig_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        _alembic_upgrade(url, "0005")
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_the_migration_keeps_the_salts_of_existing_objects(database_at_0005):
    from flagship.auth import create_key

    _write_0005_rows(database_at_0005)
    _alembic_upgrade(database_at_0005, "head")
    app = make_app(database_at_0005)
    runtime = app.extensions["flagship"]
    try:
        runtime.clock = lambda: T0
        client = app.test_client()
        admin = {"Authorization": f"Bearer {create_key(runtime, 'test', 'admin', 'admin')}"}
        sdk = {"Authorization": f"Bearer {create_key(runtime, 'test', 'sdk', 'sdk')}"}

        def get(path):
            response = client.get(V + path, headers=admin)
            assert response.status_code == 200, (path, response.json)
            return response.json

        for key, *_ in OLD_EXPERIMENTS:
            shown = get(f"/experiments/{key}")
            assert shown["salt"] == key  # written out by the migration, not the new default
            assert shown["status"] == "running" and len(shown["weight_epochs"]) == 1
        assert {l["key"]: l["salt"] for l in get("/layers")} == {"main": "main", "lz": "lz"}
        published = client.get(V + "/sdk/snapshot", headers=sdk).json
        assert {e["key"]: e["salt"] for e in published["experiments"]} == {"exp-old": "exp-old", "lz": "lz"}
        assert {l["key"]: l["salt"] for l in published["layers"]} == {"main": "main", "lz": "lz"}

        snapshot = server_snapshot(runtime)
        state = EvalState(now=T0.timestamp())
        units = [f"old-user-{i}" for i in range(2000)]
        seen = {"colour": set(), "size": set()}
        for unit in units:
            want = _old_evaluation(unit)
            for flag, (variant, experiment) in want.items():
                got = snapshot.evaluate(flag, {"key": unit}, state)
                assert (got.variant, got.experiment) == (variant, experiment), (unit, flag)
                if experiment:
                    seen[flag].add(variant)
        assert seen == {"colour": {"red", "blue"}, "size": {"s", "m"}}
        for unit in units[:100]:  # and through the HTTP front door, which records exposures
            flags = client.post(V + "/evaluate", json={"context": {"key": unit}}, headers=sdk).json["flags"]
            for flag, (variant, experiment) in _old_evaluation(unit).items():
                assert (flags[flag]["variant"], flags[flag].get("experiment")) == (variant, experiment)

        # every salt in use was recorded: new objects cannot take them
        def refused(salt, kind, key):
            response = client.post(V + "/layers", json={"key": "probe", "salt": salt}, headers=admin)
            assert response.status_code == 409, (salt, response.json)
            assert response.json["errors"]["salt"] == [f"used by {kind} {key}"]

        refused("exp-old", "experiment", "exp-old")
        refused("main", "layer", "main")
        refused("lz", "layer", "lz")  # shared before the fix: the first owner (the layer) holds it
        refused("colour", "flag", "colour")
        refused("ramp:release", "flag", "ramp")
        # while new objects get their own namespaces
        response = client.post(V + "/layers", json={"key": "fresh"}, headers=admin)
        assert response.status_code == 201 and response.json["salt"] == "layer:fresh"
        response = client.post(V + "/experiments", headers=admin, json={
            "key": "new-exp", "flag": "colour2", "layer": "main",
            "variants": [{"variant": "x", "value": 1, "is_control": True}, {"variant": "y", "value": 2}]})
        assert response.status_code == 201 and response.json["salt"] == "experiment:new-exp"
    finally:
        runtime.db.dispose()
