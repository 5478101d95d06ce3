"""Layers and experiments in the pure core: exclusion, orthogonality, filtering, stickiness."""
from __future__ import annotations

from collections import Counter

import pytest
from scipy import stats

from flagship import Snapshot
from flagship.flags.evaluate import EvalState
from flagship.flags.traffic import pick_variant, variant_cutoffs, VariantWeight

NOW = 1_790_000_000.0


def flag(key, rules, variants=("control", "treatment")):
    return {"key": key, "type": "string", "variants": {v: v for v in (*variants, "off")},
            "default_variant": "off", "rules": rules}


def exp_rule(key, conditions=()):
    return {"id": f"exp-{key}", "kind": "experiment", "params": {"experiment": key},
            "conditions": list(conditions)}


def experiment(key, flag_key, layer, ranges, status="running", weights=(50, 50), **extra):
    names = ["control", "treatment", "third"][:len(weights)]
    return {"key": key, "flag": flag_key, "layer": layer, "status": status, "ranges": ranges,
            "variants": [{"variant": n, "weight": w, "is_control": i == 0}
                         for i, (n, w) in enumerate(zip(names, weights))], **extra}


def snapshot(flags, experiments, layers=({"key": "L1"},)):
    return Snapshot.from_dict({"revision": 1, "flags": flags, "layers": list(layers),
                               "experiments": experiments})


def test_mutual_exclusion_and_shares_in_one_layer():
    snap = snapshot([flag("fa", [exp_rule("A")]), flag("fb", [exp_rule("B")], ("control", "treatment", "third"))],
                    [experiment("A", "fa", "L1", [[0, 4000]]),
                     experiment("B", "fb", "L1", [[4000, 7000]], weights=(20, 30, 50))])
    units = [f"user-{i}" for i in range(100_000)]
    a = [snap.evaluate("fa", {"key": u}) for u in units]
    b = [snap.evaluate("fb", {"key": u}) for u in units]
    in_a = {u for u, r in zip(units, a) if r.experiment == "A"}
    in_b = {u for u, r in zip(units, b) if r.experiment == "B"}
    assert not in_a & in_b
    assert abs(len(in_a) / 1000 - 40) < 1 and abs(len(in_b) / 1000 - 30) < 1
    b_variants = Counter(r.variant for r in b if r.experiment == "B")
    for name, weight in [("control", 20), ("treatment", 30), ("third", 50)]:
        assert abs(100 * b_variants[name] / len(in_b) - weight) < 1
    assert all(r.reason == "SPLIT" for r in a if r.experiment)
    assert all(r.variant == "off" and r.reason == "DEFAULT" for r in a if not r.experiment)


def test_orthogonal_layers_are_independent():
    snap = snapshot([flag("f1", [exp_rule("X")]), flag("f2", [exp_rule("Y")])],
                    [experiment("X", "f1", "L1", [[0, 10000]]), experiment("Y", "f2", "L2", [[0, 10000]])],
                    layers=({"key": "L1"}, {"key": "L2", "salt": "second-layer"}))
    table = Counter()
    for i in range(200_000):
        ctx = {"key": f"u{i}"}
        table[(snap.evaluate("f1", ctx).variant, snap.evaluate("f2", ctx).variant)] += 1
    counts = [[table[("control", "control")], table[("control", "treatment")]],
              [table[("treatment", "control")], table[("treatment", "treatment")]]]
    assert stats.chi2_contingency(counts).pvalue > 0.001


def test_filtering_after_allocation_never_hands_units_to_another_experiment():
    us_only = [{"attribute": "country", "operator": "eq", "values": ["US"]}]
    snap = snapshot([flag("fa", [exp_rule("A", us_only)]), flag("fb", [exp_rule("B")])],
                    [experiment("A", "fa", "L1", [[0, 5000]]), experiment("B", "fb", "L1", [[5000, 10000]])])
    in_a = in_b = non_us_in_a = 0
    for i in range(50_000):
        ctx = {"key": f"u{i}", "country": "US" if i % 4 == 0 else "NL"}
        ra, rb = snap.evaluate("fa", ctx), snap.evaluate("fb", ctx)
        in_a += ra.experiment == "A"
        in_b += rb.experiment == "B"
        assert not (ra.experiment and rb.experiment)
        non_us_in_a += ctx["country"] != "US" and ra.experiment == "A"
    assert non_us_in_a == 0
    assert abs(in_b / 50_000 - 0.5) < 0.01            # B keeps its own half, nothing more
    assert abs(in_a / 50_000 - 0.125) < 0.01          # A: its half of the 25 % that is US


def test_sticky_records_win_over_the_current_allocation():
    flags = [flag("fa", [exp_rule("A")]), flag("fc", [exp_rule("C")])]
    before = snapshot(flags, [experiment("A", "fa", "L1", [[0, 6000]])])
    units = [f"u{i}" for i in range(5000)]
    sticky = {u: r.variant for u in units if (r := before.evaluate("fa", {"key": u})).experiment}
    # A shrinks to 20 %, its freed buckets go to C, and A's weights change
    after = snapshot(flags, [experiment("A", "fa", "L1", [[0, 2000]], weights=(90, 10)),
                             experiment("C", "fc", "L1", [[2000, 10000]])])
    for u in units:
        state = EvalState(now=NOW, sticky={"A": sticky[u]} if u in sticky else {})
        ra, rc = after.evaluate("fa", {"key": u}, state), after.evaluate("fc", {"key": u}, state)
        if u in sticky:
            assert ra.variant == sticky[u] and rc.experiment is None
        else:
            assert ra.experiment is None  # never assigned: follows the new 20 % allocation
    fresh = [after.evaluate("fa", {"key": f"new{i}"}) for i in range(20_000)]
    share = sum(r.experiment == "A" for r in fresh) / 20_000
    assert abs(share - 0.2) < 0.01
    treated = sum(r.variant == "treatment" for r in fresh if r.experiment) / max(1, share * 20_000)
    assert abs(treated - 0.1) < 0.02


def test_paused_completed_window_allow_and_block():
    base = experiment("A", "fa", "L1", [[0, 10000]], allowlist={"qa": "treatment"}, blocklist=["bot"],
                      start_at="2026-01-01T00:00:00+00:00", end_at="2026-02-01T00:00:00+00:00")
    inside = EvalState(now=1_767_225_600.0 + 86400)  # 2026-01-02
    after_end = EvalState(now=1_769_904_000.0 + 86400)
    running = snapshot([flag("fa", [exp_rule("A")])], [base])
    assert running.evaluate("fa", {"key": "u1"}, inside).experiment == "A"
    assert running.evaluate("fa", {"key": "u1"}, after_end).experiment is None
    assert running.evaluate("fa", {"key": "u1"}).experiment is None  # no clock: no enrolment
    assert running.evaluate("fa", {"key": "bot"}, inside).experiment is None
    forced = running.evaluate("fa", {"key": "qa"}, after_end)
    assert (forced.variant, forced.reason) == ("treatment", "TARGETING_MATCH")
    paused = snapshot([flag("fa", [exp_rule("A")])], [{**base, "status": "paused"}])
    assert paused.evaluate("fa", {"key": "u1"}, inside).experiment is None
    kept = paused.evaluate("fa", {"key": "u1"}, EvalState(now=NOW, sticky={"A": "control"}))
    assert kept.variant == "control" and kept.experiment == "A"
    done = snapshot([flag("fa", [exp_rule("A")])], [{**base, "status": "completed"}])
    gone = done.evaluate("fa", {"key": "u1"}, EvalState(now=NOW, sticky={"A": "control"}))
    assert gone.experiment is None and gone.variant == "off"


def test_force_rules_before_the_experiment_still_win():
    rules = [{"id": "qa", "kind": "force", "variant": "treatment",
              "conditions": [{"attribute": "qa", "operator": "eq", "values": [True]}]}, exp_rule("A")]
    snap = snapshot([flag("fa", rules)], [experiment("A", "fa", "L1", [[0, 10000]])])
    result = snap.evaluate("fa", {"key": "u1", "qa": True})
    assert (result.rule_id, result.reason, result.experiment) == ("qa", "TARGETING_MATCH", None)


def test_release_rule_ramps_without_dropping_units():
    def rel(pct):
        return snapshot([flag("fa", [{"id": "rel", "kind": "release", "variant": "treatment",
                                      "percentage": pct, "params": {"experiment": "A"},
                                      "conditions": [{"attribute": "country", "operator": "eq",
                                                      "values": ["US"]}]}])], [])
    low, high = rel(20), rel(60)
    units = [{"key": f"u{i}", "country": "US"} for i in range(20_000)]
    served_low = {c["key"] for c in units if low.evaluate("fa", c).variant == "treatment"}
    served_high = {c["key"] for c in units if high.evaluate("fa", c).variant == "treatment"}
    assert served_low <= served_high
    assert abs(len(served_high) / 20_000 - 0.6) < 0.015
    assert low.evaluate("fa", {"key": "u1", "country": "NL"}).variant == "off"


def test_variant_pick_is_stable_and_weighted():
    cutoffs = variant_cutoffs((VariantWeight("a", 1), VariantWeight("b", 3)))
    assert cutoffs == [2500, 10000]
    assert pick_variant("exp", "unit-1", ["a", "b"], cutoffs) == pick_variant("exp", "unit-1", ["a", "b"], cutoffs)


@pytest.mark.parametrize("rule, field", [
    ({"kind": "experiment", "params": {}}, "params.experiment"),
    ({"kind": "experiment", "variant": "control", "params": {"experiment": "A"}}, "variant"),
    ({"kind": "release", "variant": "nope", "percentage": 5, "params": {"experiment": "A"}}, "variant"),
    ({"kind": "release", "variant": "control", "percentage": 500, "params": {"experiment": "A"}}, "percentage"),
])
def test_experiment_and_release_rules_validate(rule, field):
    from flagship.errors import ValidationError
    with pytest.raises(ValidationError) as err:
        snapshot([flag("fa", [rule])], [])
    assert field in str(err.value.errors)
