"""The mirrored control arm of a guarded rollout, in the evaluation core and the explainer."""
from __future__ import annotations

from flagship import Snapshot
from flagship.flags.bucketing import bucket


def flag(percentage: float, control: bool = True, rules_after: list | None = None) -> dict:
    guarded = {"id": "ramp", "kind": "rollout", "variant": "on", "percentage": percentage,
               "params": {"rollout": 7, "subject": "rollout:7:1", "control": control}}
    return {"key": "f", "type": "boolean", "variants": {"on": True, "off": False},
            "default_variant": "off", "rules": [guarded, *(rules_after or [])]}


def snap(*flags: dict) -> Snapshot:
    return Snapshot.from_dict({"revision": 1, "flags": list(flags)})


def arms(percentage: float, units: range, **kw) -> dict[str, str | None]:
    s = snap(flag(percentage, **kw))
    return {f"u{i}": s.evaluate("f", {"key": f"u{i}"}).arm for i in units}


def test_treatment_is_the_low_buckets_and_control_the_mirrored_high_ones():
    s = snap(flag(10))
    for i in range(3000):
        unit = f"u{i}"
        result = s.evaluate("f", {"key": unit})
        b = bucket("f", unit)
        if b < 1000:
            assert (result.arm, result.value, result.reason, result.experiment) == (
                "treatment", True, "SPLIT", "rollout:7:1")
        elif b >= 9000:
            assert (result.arm, result.value, result.reason, result.experiment) == (
                "control", False, "DEFAULT", "rollout:7:1")
        else:
            assert (result.arm, result.experiment, result.value) == (None, None, False)


def test_raising_the_percentage_up_to_half_never_moves_a_unit_between_arms():
    before = arms(5, range(4000))
    for percentage in (10, 25, 50):
        after = arms(percentage, range(4000))
        for unit, arm in before.items():
            if arm is not None:
                assert after[unit] == arm, (unit, percentage)
        before = after
    above_half = arms(60, range(4000))
    assert "control" not in above_half.values()  # no comparison above 50 %
    assert "control" not in arms(10, range(2000), control=False).values()


def test_the_control_arm_is_served_what_the_next_rules_give():
    forced = {"id": "nl", "kind": "force", "variant": "on",
              "conditions": [{"attribute": "country", "operator": "eq", "values": ["NL"]}]}
    s = snap(flag(10, rules_after=[forced]))
    unit = next(f"u{i}" for i in range(5000) if bucket("f", f"u{i}") >= 9000)
    nl = s.evaluate("f", {"key": unit, "country": "NL"})
    assert (nl.value, nl.reason, nl.rule_id, nl.arm) == (True, "TARGETING_MATCH", "nl", "control")
    us = s.evaluate("f", {"key": unit, "country": "US"})
    assert (us.value, us.reason, us.arm) == (False, "DEFAULT", "control")


def test_a_plain_rollout_rule_is_unchanged():
    plain = {"key": "f", "type": "boolean", "variants": {"on": True, "off": False}, "default_variant": "off",
             "rules": [{"id": "r", "kind": "rollout", "variant": "on", "percentage": 10}]}
    s = snap(plain)
    results = [s.evaluate("f", {"key": f"u{i}"}) for i in range(2000)]
    assert all(r.arm is None and r.experiment is None for r in results)
    assert sum(r.value for r in results) == sum(bucket("f", f"u{i}") < 1000 for i in range(2000))


def test_explain_shows_the_arm_and_agrees_with_evaluate():
    s = snap(flag(20))
    for i in range(400):
        doc = s.explain("f", {"key": f"u{i}"})
        assert "mismatch" not in doc, doc
        step = next(st for st in doc["steps"] if st.get("rule_id") == "ramp")
        assert step["arm"] == doc["result"]["arm"]
        assert step["control_from"] == 8000 and step["rollout_subject"] == "rollout:7:1"


def test_the_snapshot_lists_the_subjects():
    assert snap(flag(10)).subjects == {"rollout:7:1": ("f", "ramp")}
