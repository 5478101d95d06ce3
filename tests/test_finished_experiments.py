"""A finished experiment never pins its flag: stopping it (or reaching its end) takes its
inert rule off the flag, as a revision of the flag; releasing swaps in the release rule.
Migration 0010 does the same for experiments that finished before."""
from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from flagship.db import downgrade, upgrade
from flagship.experiments.service import complete_ended
from tests.test_experiments_api import colour_flag, experiment


def _started(api, key="exp-a", **extra):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/experiments", experiment(key, **extra), 201)
    api("post", f"/experiments/{key}/start")


@pytest.mark.parametrize("outcome", ["completed", "terminated"])
def test_stopping_takes_the_rule_off_and_the_flag_can_be_deleted(api, outcome):
    _started(api)
    assert [r["kind"] for r in api("get", "/flags/colour")["rules"]] == ["experiment"]
    api("delete", "/flags/colour", status=409)  # still running: it pins the flag
    api("post", "/experiments/exp-a/stop", {"outcome": outcome})
    flag = api("get", "/flags/colour")
    assert flag["rules"] == [] and flag["updated_by"] == "key:test-admin"
    revisions = api("get", "/flags/colour/revisions")["items"]
    assert revisions[0]["action"] == "experiment"  # the flag's history says why it changed
    assert api("get", "/experiments/exp-a")["status"] == outcome  # kept, with its results
    api("get", "/experiments/exp-a/results")
    api("delete", "/flags/colour", status=204)


def test_reaching_the_end_takes_the_rule_off(api, runtime):
    now = runtime.clock()
    _started(api, end_at=(now + timedelta(hours=1)).isoformat())
    assert complete_ended(runtime, now + timedelta(hours=2)) == ["exp-a"]
    assert api("get", "/flags/colour")["rules"] == []
    assert api("get", "/flags/colour")["updated_by"] == "system:schedule"


def test_a_release_keeps_its_release_rule(api):
    _started(api)
    api("post", "/experiments/exp-a/release", {"variant": "blue", "percentage": 100})
    assert [r["kind"] for r in api("get", "/flags/colour")["rules"]] == ["release"]
    api("delete", "/flags/colour", status=204)  # the released winner is the flag's own rule


def test_migration_0010_detaches_experiments_finished_before(api, runtime, database_url):
    _started(api)
    api("post", "/experiments/exp-a/stop", {"outcome": "completed"})
    rule = {"id": "exp-exp-a", "kind": "experiment", "params": {"experiment": "exp-a"}}
    runtime.db.dispose()
    downgrade(database_url, "0009")  # the schema an older version had ...
    with runtime.db.engine.begin() as conn:  # ... and the state it left behind
        flags = sa.table("flags", sa.column("key", sa.String), sa.column("document", sa.JSON))
        document = conn.execute(sa.select(flags.c.document).where(flags.c.key == "colour")).scalar()
        conn.execute(sa.update(flags).where(flags.c.key == "colour")
                     .values(document={**document, "rules": [rule]}))
        before = conn.execute(sa.text("SELECT snapshot_revision FROM meta")).scalar()
    runtime.db.dispose()
    upgrade(database_url)
    with runtime.db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT snapshot_revision FROM meta")).scalar() == before + 1
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() >= "0010"
    flag = api("get", "/flags/colour")
    assert flag["rules"] == [] and flag["updated_by"] == "system:migration"
    latest = api("get", "/flags/colour/revisions")["items"][0]
    assert (latest["version"], latest["actor"], latest["action"]) == (flag["version"], "system:migration", "experiment")
    assert api("get", "/audit?actor=system:migration")["items"][0]["target"] == "colour"
    api("post", f"/flags/colour/revisions/{latest['version']}/restore", {})  # history is consistent
    api("delete", "/flags/colour", status=204)


def test_history_never_brings_a_finished_experiments_rule_back(api):
    _started(api)
    during = api("get", "/flags/colour")["version"]  # a revision with the experiment's rule
    api("post", "/experiments/exp-a/stop", {"outcome": "completed"})
    restored = api("post", f"/flags/colour/revisions/{during}/restore", {})  # live flag
    assert restored["rules"] == []
    api("delete", "/flags/colour", status=204)
    recreated = api("post", f"/flags/colour/revisions/{during}/restore", {})  # re-created flag
    assert recreated["rules"] == []
    api("delete", "/flags/colour", status=204)  # not pinned


def test_restoring_an_older_revision_keeps_a_running_experiments_rule(api):
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    first = api("get", "/flags/colour")["version"]
    api("post", "/experiments", experiment(), 201)
    api("post", "/experiments/exp-a/start")
    restored = api("post", f"/flags/colour/revisions/{first}/restore", {})
    assert [r["kind"] for r in restored["rules"]] == ["experiment"]  # still running: kept


def test_one_experiment_that_cannot_end_does_not_stop_the_others(api, runtime, monkeypatch):
    from flagship.experiments import service

    now = runtime.clock()
    api("post", "/layers", {"key": "main"}, 201)
    colour_flag(api)
    api("post", "/flags", {"key": "size", "type": "string", "variants": {"s": "S", "l": "L"},
                           "default_variant": "s"}, 201)
    api("post", "/experiments", experiment("exp-a", traffic=10, end_at=(now + timedelta(hours=1)).isoformat()), 201)
    api("post", "/experiments", {**experiment("exp-b", flag="size", traffic=10,
                                              end_at=(now + timedelta(hours=1)).isoformat()),
                                 "variants": [{"variant": "s", "is_control": True}, {"variant": "l"}]}, 201)
    api("post", "/experiments/exp-a/start")
    api("post", "/experiments/exp-b/start")
    real = service._end

    def broken(tx, rt, record, outcome, at):
        if record.key == "exp-a":
            raise RuntimeError("its flag no longer validates")
        return real(tx, rt, record, outcome, at)
    monkeypatch.setattr(service, "_end", broken)
    assert complete_ended(runtime, now + timedelta(hours=2)) == ["exp-b"]
    assert api("get", "/experiments/exp-a")["status"] == "running"  # tried again next round
    monkeypatch.setattr(service, "_end", real)
    assert complete_ended(runtime, now + timedelta(hours=2)) == ["exp-a"]
