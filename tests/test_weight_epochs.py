"""Weight epochs (issue 8, "SRM after a weight change raises a false alarm"): each assignment
records the weights in effect, and the sample-ratio test checks every epoch's units against
that epoch's weights, so a legal mid-run weight change is no mismatch while a real one
still is."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import sqlalchemy as sa
from scipy import stats

from flagship import jobs
from flagship.experiments.ingest import ingest

V = "/api/v1"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(hours=1)
PER_EPOCH = 400


def start_experiment(api, runtime):
    runtime.clock = lambda: T0
    api("post", "/layers", {"key": "main"}, 201)
    api("post", "/experiments", {"key": "exp", "flag": "f", "layer": "main", "traffic_percentage": 100,
                                 "variants": [{"variant": "a", "value": 1, "is_control": True},
                                              {"variant": "b", "value": 2}]}, 201)
    api("post", "/experiments/exp/start")


def change_weights(api, runtime, a, b):
    runtime.clock = lambda: T1
    version = api("get", "/experiments/exp")["version"]
    return api("patch", "/experiments/exp", {"version": version, "variants": [
        {"variant": "a", "weight": a, "is_control": True}, {"variant": "b", "weight": b}]})


def assign(client, sdk, unit):
    response = client.post(f"{V}/experiments/exp/assign", json={"context": {"key": unit}}, headers=sdk)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["in_experiment"], body
    return body["variant"]


def stored_exposures(runtime):
    with runtime.db.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT unit, variant, epoch FROM exposures WHERE experiment_key = 'exp'")).all()
    return {unit: (variant, epoch) for unit, variant, epoch in rows}


def test_a_weight_change_mid_run_is_no_sample_ratio_mismatch(api, client, sdk, runtime):
    start_experiment(api, runtime)
    first = {f"early-{i}": assign(client, sdk, f"early-{i}") for i in range(PER_EPOCH)}
    changed = change_weights(api, runtime, 1, 3)
    assert changed["weight_epochs"] == [
        {"epoch": 1, "since": T0.isoformat(), "weights": {"a": 1.0, "b": 1.0}},
        {"epoch": 2, "since": T1.isoformat(), "weights": {"a": 1.0, "b": 3.0}}]
    second = {f"late-{i}": assign(client, sdk, f"late-{i}") for i in range(PER_EPOCH)}
    for unit in list(first)[:50]:  # sticky units keep their variant and their epoch
        assert assign(client, sdk, unit) == first[unit]

    # each exposure carries the epoch it was assigned in
    exposures = stored_exposures(runtime)
    assert exposures == {**{u: (v, 1) for u, v in first.items()}, **{u: (v, 2) for u, v in second.items()}}

    jobs.aggregate(runtime)
    body = api("get", "/experiments/exp/results")
    srm = body["srm"]
    observed = {1: [sum(v == n for v in first.values()) for n in "ab"],
                2: [sum(v == n for v in second.values()) for n in "ab"]}
    assert 0.4 < observed[1][1] / PER_EPOCH < 0.6 and 0.68 < observed[2][1] / PER_EPOCH < 0.82

    # by hand: one goodness-of-fit test per epoch against that epoch's weights, summed
    per_epoch = [stats.chisquare(observed[1], [PER_EPOCH / 2] * 2),
                 stats.chisquare(observed[2], [PER_EPOCH / 4, PER_EPOCH * 3 / 4])]
    statistic = sum(r.statistic for r in per_epoch)
    p_value = stats.chi2.sf(statistic, 2)
    assert srm["checked"] and srm["dof"] == 2
    assert srm["statistic"] == pytest.approx(statistic, rel=1e-9)
    assert srm["p_value"] == pytest.approx(p_value, rel=1e-9, abs=1e-9)
    assert srm["observed"] == {"a": observed[1][0] + observed[2][0], "b": observed[1][1] + observed[2][1]}
    assert not srm["mismatch"] and srm["warning"] is None
    assert body["decision"]["action"] != "investigate"
    # the same units tested against the current weights only (the old behaviour) would alarm
    pooled = np.array(observed[1]) + np.array(observed[2])
    assert stats.chisquare(pooled, pooled.sum() * np.array([0.25, 0.75])).pvalue < 1e-10

    assert srm["weight_changes"] == [{"epoch": 2, "since": T1.isoformat(), "weights": {"a": 1.0, "b": 3.0}}]
    assert "changed 1 time" in srm["note"] and T1.isoformat() in srm["note"]

    monitor = api("get", "/experiments/exp/monitor")
    assert monitor["srm"]["p_value"] == pytest.approx(p_value, rel=1e-9, abs=1e-9)
    assert monitor["srm"]["expected"] == pytest.approx({"a": PER_EPOCH / 2 + PER_EPOCH / 4,
                                                        "b": PER_EPOCH / 2 + PER_EPOCH * 3 / 4}, rel=1e-12)


def test_no_weight_change_has_no_note(api, client, sdk, runtime):
    start_experiment(api, runtime)
    for i in range(40):
        assign(client, sdk, f"u{i}")
    api("patch", "/experiments/exp", {"version": api("get", "/experiments/exp")["version"],
                                      "hypothesis": "descriptive changes are no new epoch"})
    jobs.aggregate(runtime)
    srm = api("get", "/experiments/exp/results")["srm"]
    assert srm["checked"] and srm["dof"] == 1
    assert "weight_changes" not in srm and "note" not in srm
    assert len(api("get", "/experiments/exp")["weight_epochs"]) == 1


def test_a_real_mismatch_inside_one_epoch_is_still_flagged(api, runtime):
    """600 units split 1:1 before the change and 600 split 1:1 after it: overall the split
    matches the first weights, but the second epoch's units should have split 1:3."""
    start_experiment(api, runtime)

    def exposures(prefix, at):
        return [{"event_id": f"x-{prefix}{i}", "unit": f"{prefix}{i}", "event": "$exposure",
                 "experiment": "exp", "variant": "ab"[i % 2], "timestamp": at.isoformat()}
                for i in range(600)]

    result = ingest(runtime, exposures("one-", T0 + timedelta(minutes=10)), now=T0 + timedelta(minutes=11))
    assert result.accepted == 600 and not result.rejected
    change_weights(api, runtime, 1, 3)
    result = ingest(runtime, exposures("two-", T1 + timedelta(minutes=10)), now=T1 + timedelta(minutes=11))
    assert result.accepted == 600 and not result.rejected
    assert {epoch for unit, (_, epoch) in stored_exposures(runtime).items() if unit.startswith("two-")} == {2}
    assert {epoch for unit, (_, epoch) in stored_exposures(runtime).items() if unit.startswith("one-")} == {1}

    jobs.aggregate(runtime)
    body = api("get", "/experiments/exp/results")
    srm = body["srm"]
    statistic = stats.chisquare([300, 300], [150, 450]).statistic  # epoch 1 contributes 0
    assert srm["statistic"] == pytest.approx(statistic, rel=1e-9)
    assert srm["p_value"] == pytest.approx(stats.chi2.sf(statistic, 2), rel=1e-9)
    assert srm["mismatch"] and "SAMPLE RATIO MISMATCH" in srm["warning"]
    assert srm["weight_changes"][0]["epoch"] == 2
    assert body["decision"]["action"] == "investigate"
