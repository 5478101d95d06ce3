"""The explainer: it never disagrees with evaluate, and its numbers are the real hashes."""
from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

import mmh3
import pytest
from hypothesis import given, settings, strategies as st

from flagship import Snapshot
from flagship.flags import evaluate as evaluate_module, model
from flagship.flags.bucketing import bucket
from flagship.flags.evaluate import EvalState, Evaluation
from flagship.flags.explain import checked
from flagship.flags.operators import Operator, default_operators

START, END = "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00"
INSIDE = datetime(2026, 1, 10, tzinfo=timezone.utc).timestamp()
AFTER = datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()
MISSING = object()
# Layer L1 (salt "layer-one"): A [0, 4000), B [4000, 7000), P paused [7000, 8000),
# C completed [8000, 9000) (owns nothing), the rest free.
OWNER_BY_RANGE = [(4000, "A"), (7000, "B"), (8000, "P"), (10000, None)]


def _match_explosive(value: Any, prepared: Any) -> bool:
    if value == "explode":
        raise RuntimeError("operator blew up")
    if value == "typeerr":
        raise TypeError("cannot compare")  # counted as no match, not an error
    return value == prepared[0]


OPERATORS = {**default_operators(),
             "explosive": Operator("explosive", lambda values: values, _match_explosive)}


def cond(attribute: str, operator: str, *values: Any, negate: bool = False) -> dict:
    return {"attribute": attribute, "operator": operator, "values": list(values),
            "negate": negate}


def exp_rule(key: str, *conditions: dict) -> dict:
    return {"id": f"exp-{key}", "kind": "experiment", "params": {"experiment": key},
            "conditions": list(conditions)}


def experiment(key: str, flag: str, layer: str, ranges: list, status: str = "running",
               weights: tuple = (50, 50), **extra: Any) -> dict:
    names = ["control", "treatment", "third", "ghost"][:len(weights)]
    return {"key": key, "flag": flag, "layer": layer, "status": status, "ranges": ranges,
            "variants": [{"variant": n, "weight": w} for n, w in zip(names, weights)], **extra}


def string_flag(key: str, rules: list, **extra: Any) -> dict:
    return {"key": key, "type": "string", "default_variant": "off", "rules": rules,
            "variants": {v: v for v in ("control", "treatment", "third", "off")}, **extra}


DOC = {
    "revision": 7,
    "segments": [
        {"key": "beta", "conditions": [cond("plan", "eq", "pro")], "included": ["vip"],
         "excluded": ["banned"]},
        {"key": "staff", "included": ["vip", "s1"], "excluded": ["banned"]},
    ],
    "layers": [{"key": "L1", "salt": "layer-one"}, {"key": "L2"}, {"key": "L3"}],
    "experiments": [
        experiment("A", "checkout", "L1", [[0, 4000]], allowlist={"qa": "treatment"},
                   blocklist=["bot"], start_at=START, end_at=END),
        experiment("B", "search", "L1", [[4000, 7000]], weights=(20, 30, 50)),
        experiment("P", "paused", "L1", [[7000, 8000]], status="paused"),
        experiment("C", "done", "L1", [[8000, 9000]], status="completed"),
        experiment("D", "search", "L2", [[0, 10000]], status="draft"),
        experiment("E", "search", "L2", [[0, 10000]], weights=(1, 1, 0, 5),
                   allowlist={"qa": "nope", "s1": "third"}),
        experiment("F", "fragile", "L3", [[0, 5000]]),
    ],
    "flags": [
        string_flag("checkout", [
            {"id": "fr", "kind": "force", "variant": "treatment",
             "conditions": [cond("country", "neq", "FR", negate=True)]},
            {"id": "staff", "kind": "force", "variant": "control",
             "conditions": [{"segment": "staff"}, {"segment": "beta", "negate": True}]},
            exp_rule("A", cond("country", "in", "US", "CA")),
            {"id": "rel", "kind": "release", "variant": "treatment", "percentage": 50,
             "params": {"experiment": "A"}, "conditions": [{"segment": "beta"}]},
            {"id": "adults", "kind": "rollout", "variant": "control", "percentage": 30,
             "conditions": [cond("age", "gte", 18)]},
        ], allowlist={"alice": "treatment"}, blocklist=["mallory"], salt="checkout-salt"),
        string_flag("search", [exp_rule("B"), exp_rule("E"), exp_rule("D"),
                               {"id": "tail", "kind": "rollout", "variant": "treatment",
                                "percentage": 10}]),
        string_flag("paused", [exp_rule("P"),
                               {"id": "ramp", "kind": "release", "variant": "treatment",
                                "percentage": 25.5,
                                "params": {"experiment": "P", "salt": "custom-salt"}}]),
        string_flag("done", [exp_rule("C"), exp_rule("ghost"), exp_rule("B"),
                             {"id": "u1s", "kind": "rollout", "variant": "third",
                              "percentage": 100,
                              "conditions": [cond("key", "starts_with", "u1")]}]),
        {"key": "kill", "type": "boolean", "variants": {"on": True, "off": False},
         "default_variant": "on", "off_variant": "off", "enabled": False},
        {"key": "num", "type": "number", "variants": {"low": 1, "high": 2.5},
         "default_variant": "low", "rules": [
             {"id": "noscore", "kind": "force", "variant": "high",
              "conditions": [cond("score", "exists", negate=True), cond("age", "gt", 30)]},
             {"kind": "rollout", "variant": "high", "percentage": 50,
              "conditions": [cond("targetingKey", "exists")]}]},
        {"key": "fragile", "type": "boolean", "variants": {"on": True, "off": False},
         "default_variant": "off", "rules": [
             {"id": "pro", "kind": "force", "variant": "on",
              "conditions": [cond("plan", "eq", "pro"), cond("flavour", "explosive", "x")]},
             {"id": "half", "kind": "rollout", "variant": "on", "percentage": 50,
              "conditions": [cond("flavour", "explosive", "y")]},
             exp_rule("F", cond("flavour", "explosive", "z"))]},
    ],
}
SNAP = Snapshot.from_dict(DOC, OPERATORS)


class RaisingContext(Mapping):
    """A context whose `country` cannot be read: evaluate reports GENERAL."""

    def __init__(self, key: str) -> None:
        self._data = {"key": key, "plan": "free"}

    def __getitem__(self, name: str) -> Any:
        if name == "country":
            raise RuntimeError("country lookup failed")
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


KEYS = ["qa", "bot", "alice", "mallory", "vip", "banned", "s1", "", None, True, [1], {"a": 1},
        math.nan, math.inf, 3.0, 2.5, -7, 0, 12, 10**20, "u1"]
ATTRIBUTES = {
    "country": ["US", "CA", "FR", "NL", None, 5],
    "plan": ["pro", "free", None],
    "age": [17, 18, 40, "42", "x", None, True, 35.5],
    "flavour": ["x", "y", "z", "explode", "typeerr"],
    "score": [1, None],
}
STATES = [None, EvalState(INSIDE), EvalState(AFTER), EvalState(INSIDE, {"A": "control"}),
          EvalState(INSIDE, {"A": "bogus"}), EvalState(INSIDE, {"B": "third"}),
          EvalState(AFTER, {"P": "treatment"}), EvalState(INSIDE, {"C": "control"}),
          EvalState(INSIDE, {"E": "treatment", "A": "treatment"}),
          EvalState(INSIDE, {"E": "ghost", "B": "nope"}),
          EvalState("soon")]  # type: ignore[arg-type]  # a bad clock: both report GENERAL


def random_context(rng: random.Random) -> Any:
    """A context mixing good, odd and malformed shapes."""
    roll = rng.random()
    if roll < 0.03:
        return rng.choice([None, [], "ctx", 5, RaisingContext(f"u{rng.randrange(50)}")])
    unit = rng.choice(KEYS) if roll < 0.3 else f"u{rng.randrange(3000)}"
    ctx: dict[str, Any] = {}
    where = rng.random()
    if where < 0.7:
        ctx["key"] = unit
    elif where < 0.85:
        ctx["targetingKey"] = unit
    elif where < 0.95:
        ctx.update(key=None, targetingKey=unit)
    for name, values in ATTRIBUTES.items():
        if rng.random() < 0.8:
            ctx[name] = rng.choice(values)
    return ctx


def fields(evaluation: Evaluation) -> dict[str, Any]:
    doc = evaluation.to_dict()
    del doc["flag_key"]
    return doc


def assert_consistent(doc: dict[str, Any], evaluation: Evaluation) -> None:
    """The explanation agrees with evaluate and its steps tell the same story."""
    assert "mismatch" not in doc, doc
    assert doc["result"] == fields(evaluation)
    json.dumps(doc, allow_nan=False)
    steps, result = doc["steps"], doc["result"]
    assert steps[0]["step"] == "enabled"
    rules = [s for s in steps if s["step"] == "rule"]
    assert [s["index"] for s in rules] == list(range(len(rules)))
    assert not any(s["matched"] for s in rules[:-1])
    last = steps[-1]
    if result["error_code"] == "GENERAL":
        assert last["step"] == "error" and last["error"] == result["error_message"]
    elif result["rule_id"] is not None:
        assert last["step"] == "rule" and last["matched"] and last["rule_id"] == result["rule_id"]
    elif result["reason"] == "DEFAULT":
        assert last["step"] in ("default", "blocklist")
    assert "why" in last


def test_explain_agrees_with_evaluate_on_generated_contexts() -> None:
    rng = random.Random(20260110)
    reasons: set[tuple[str, str | None]] = set()
    for _ in range(4000):
        ctx, state = random_context(rng), rng.choice(STATES)
        for key in SNAP.flags:
            evaluation = SNAP.evaluate(key, ctx, state)
            assert_consistent(SNAP.explain(key, ctx, state), evaluation)
            reasons.add((evaluation.reason, evaluation.error_code))
    # the sweep reached every kind of outcome, errors included
    assert reasons >= {("DISABLED", None), ("TARGETING_MATCH", None), ("SPLIT", None),
                       ("DEFAULT", None), ("ERROR", "INVALID_CONTEXT"), ("ERROR", "GENERAL")}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3), max_leaves=5)


@settings(max_examples=300, deadline=None)
@given(ctx=st.dictionaries(st.sampled_from(["key", "targetingKey", *ATTRIBUTES]),
                           json_values | st.sampled_from(KEYS[:7]) | st.sampled_from(
                               [v for vs in ATTRIBUTES.values() for v in vs])),
       state=st.sampled_from(STATES))
def test_explain_agrees_with_evaluate_on_arbitrary_json(ctx: dict, state: Any) -> None:
    for key in SNAP.flags:
        assert_consistent(SNAP.explain(key, ctx, state), SNAP.evaluate(key, ctx, state))


def rule_step(doc: dict[str, Any], rule_id: str) -> dict[str, Any]:
    return next(s for s in doc["steps"] if s["step"] == "rule" and s["rule_id"] == rule_id)


def murmur(text: str) -> int:
    return mmh3.hash(text, 0, signed=False) % 10000


def expected_owner(layer_bucket: int) -> str | None:
    return next(owner for end, owner in OWNER_BY_RANGE if layer_bucket < end)


def test_experiment_numbers_are_the_real_hashes() -> None:
    seen_owners = set()
    for i in range(400):
        unit = f"user-{i}"
        doc = SNAP.explain("checkout", {"key": unit, "country": "US"}, EvalState(INSIDE))
        step = rule_step(doc, "exp-A")
        layer_bucket = murmur(f"layer-one:{unit}")
        assert step["layer_bucket"] == layer_bucket == bucket("layer-one", unit)
        assert step["bucket_owner"] == expected_owner(layer_bucket)
        assert step["variant_bucket"] == murmur(f"A:{unit}")
        assert step["variant_cutoffs"] == [{"variant": "control", "up_to": 5000},
                                           {"variant": "treatment", "up_to": 10000}]
        assert (step["layer"], step["layer_salt"], step["status"]) == ("L1", "layer-one", "running")
        assert step["matched"] == (step["bucket_owner"] == "A")
        if step["matched"]:
            assert step["variant"] == ("control" if murmur(f"A:{unit}") < 5000 else "treatment")
            assert doc["result"]["variant"] == step["variant"]
        seen_owners.add(step["bucket_owner"])
    assert seen_owners == {"A", "B", "P", None}


def test_uneven_cutoffs_and_variants_missing_from_the_flag() -> None:
    search = SNAP.explain("search", {"key": "u7"}, EvalState(INSIDE))
    assert rule_step(search, "exp-B")["variant_cutoffs"] == [
        {"variant": "control", "up_to": 2000}, {"variant": "treatment", "up_to": 5000},
        {"variant": "third", "up_to": 10000}]
    # E's "ghost" variant is not on the flag: its weight is dropped before normalising
    assert rule_step(search, "exp-E")["variant_cutoffs"] in ([
        {"variant": "control", "up_to": 5000}, {"variant": "treatment", "up_to": 10000},
        {"variant": "third", "up_to": 10000}], [])


def test_rollout_and_release_numbers_are_the_real_hashes() -> None:
    checked_rules = set()
    for i in range(300):
        unit = f"member-{i}"
        doc = SNAP.explain("checkout", {"key": unit, "plan": "pro", "age": 40}, EvalState(AFTER))
        paused = SNAP.explain("paused", {"key": unit}, EvalState(AFTER))
        for d, rule_id, salt, cutoff in [(doc, "rel", "checkout-salt:release", 5000),
                                         (doc, "adults", "checkout-salt", 3000),
                                         (paused, "ramp", "custom-salt", 2550)]:
            steps = [s for s in d["steps"] if s.get("rule_id") == rule_id]
            if not steps:
                continue  # an earlier rule decided
            step, number = steps[0], murmur(f"{salt}:{unit}")
            assert (step["salt"], step["bucket"], step["threshold"]) == (salt, number, cutoff)
            assert step["bucket"] == bucket(salt, unit)
            assert step["in_rollout"] == (number < cutoff) == step["matched"]
            checked_rules.add((rule_id, step["matched"]))
    assert checked_rules == {(r, m) for r in ("rel", "adults", "ramp") for m in (True, False)}


def test_a_bucket_equal_to_the_threshold_is_out() -> None:
    number = bucket("edge-salt", "edge")
    snap = Snapshot.from_dict({"revision": 1, "flags": [string_flag("f", [
        {"id": "at", "kind": "rollout", "variant": "third", "percentage": number / 100},
        {"id": "above", "kind": "rollout", "variant": "control",
         "percentage": (number + 1) / 100}], salt="edge-salt")]})
    doc = snap.explain("f", {"key": "edge"})
    at, above = rule_step(doc, "at"), rule_step(doc, "above")
    assert (at["bucket"], at["threshold"], at["in_rollout"]) == (number, number, False)
    assert (above["threshold"], above["in_rollout"]) == (number + 1, True)
    assert doc["result"] == fields(snap.evaluate("f", {"key": "edge"}))


def unit_where(predicate: Any) -> str:
    return next(u for u in (f"w{i}" for i in range(100_000)) if predicate(u))


def layer_owner(unit: str) -> str | None:
    return expected_owner(murmur(f"layer-one:{unit}"))


def why(flag: str, ctx: Any, state: EvalState | None = None, rule_id: str = "exp-A") -> str:
    doc = SNAP.explain(flag, ctx, state)
    assert doc["result"] == fields(SNAP.evaluate(flag, ctx, state))
    return rule_step(doc, rule_id)["why"]


def test_deciding_steps_say_why() -> None:
    in_a = unit_where(lambda u: layer_owner(u) == "A")
    in_b = unit_where(lambda u: layer_owner(u) == "B")
    us, now = {"country": "US"}, EvalState(INSIDE)
    assert why("checkout", {"key": in_b, **us}, now) == (
        f"bucket {murmur(f'layer-one:{in_b}')} belongs to experiment B")
    assert why("checkout", {"key": in_a, "country": "NL"}, now) == (
        "filtered: targeting did not match; not handed to another experiment")
    assert why("checkout", {"key": in_b, **us}, EvalState(INSIDE, {"A": "control"})) == (
        "sticky: first assigned control")
    assert why("checkout", {"key": in_a, **us}, EvalState(INSIDE, {"B": "third"})).startswith(
        "held by experiment B")
    assert "no clock" in why("checkout", {"key": in_a, **us})
    assert "outside the experiment window" in why("checkout", {"key": in_a, **us}, EvalState(AFTER))
    assert "blocklisted" in why("checkout", {"key": "bot", **us}, now)
    assert "allowlisted" in why("checkout", {"key": "qa"}, EvalState(AFTER))
    assert "paused" in why("paused", {"key": "u1"}, now, "exp-P")
    assert why("done", {"key": "u1"}, EvalState(INSIDE, {"C": "control"}), "exp-C").startswith(
        "inert: experiment is completed")
    assert "no experiment 'ghost'" in why("done", {"key": "u1"}, now, "exp-ghost")
    assert "belongs to flag 'search'" in why("done", {"key": "u1"}, now, "exp-B")
    assert "variant bucket" in why("checkout", {"key": in_a, **us}, now)
    nobody = rule_step(SNAP.explain("checkout", {"country": "US"}, now), "exp-A")
    assert (nobody["layer_bucket"], nobody["matched"]) == (None, False)
    assert nobody["why"].startswith("no unit key")


def test_flag_level_steps_say_why() -> None:
    killed = SNAP.explain("kill", {"key": "u1"})
    assert [s["step"] for s in killed["steps"]] == ["enabled"]
    assert "kill switch" in killed["steps"][0]["why"]
    allowed = SNAP.explain("checkout", {"key": "alice"})["steps"][-1]
    assert (allowed["step"], allowed["hit"], allowed["variant"]) == ("allowlist", True, "treatment")
    blocked = SNAP.explain("checkout", {"key": "mallory", "country": "FR"})
    last = blocked["steps"][-1]
    assert last["step"] == "blocklist" and "blocklisted" in last["why"]
    assert blocked["result"]["reason"] == "DEFAULT"
    bad = SNAP.explain("checkout", {"key": True})
    assert bad["steps"][-1]["step"] == "unit_key" and "error" in bad["steps"][-1]
    assert bad["result"]["error_code"] == "INVALID_CONTEXT" and bad["context_key"] is None
    assert SNAP.explain("num", {"key": 12.0})["context_key"] == "12"
    default = SNAP.explain("done", {"key": "w5"}, EvalState(INSIDE, {"C": "control"}))
    assert default["steps"][-1]["why"] == "no rule matched: serving the default 'off'"
    assert [s["rule_id"] for s in default["steps"] if s["step"] == "rule"] == [
        "exp-C", "exp-ghost", "exp-B", "u1s"]


def test_conditions_show_values_segments_and_negation() -> None:
    doc = SNAP.explain("checkout", {"key": "banned", "country": "NL", "plan": "pro"})
    fr = rule_step(doc, "fr")["conditions"][0]
    assert (fr["attribute_value"], fr["present"], fr["matched"]) == ("NL", True, False)
    missing = rule_step(SNAP.explain("checkout", {"key": "u5"}), "fr")["conditions"][0]
    assert (missing["present"], missing["matched"]) == (False, False)
    assert "missing" in missing["why"]
    staff, beta = rule_step(doc, "staff")["conditions"]
    assert staff["segment"] == {"key": "staff", "member": False, "via": "excluded"}
    assert beta["evaluated"] is False  # evaluation stopped at the first failed condition
    assert beta["segment"]["via"] == "excluded" and beta["segment"]["member"] is False
    vip = rule_step(SNAP.explain("checkout", {"key": "vip"}), "staff")["conditions"]
    assert [c["segment"]["via"] for c in vip] == ["included", "included"]
    assert [c["matched"] for c in vip] == [True, False]  # beta is negated
    pro = rule_step(SNAP.explain("checkout", {"key": "w1", "plan": "pro", "country": "NL"}),
                    "rel")["conditions"][0]["segment"]
    assert pro["member"] is True and pro["via"] == "conditions"
    assert pro["conditions"][0]["attribute_value"] == "pro"


def test_operator_errors_match_evaluate_reached_or_not() -> None:
    crash = SNAP.explain("fragile", {"key": "u1", "plan": "pro", "flavour": "explode"})
    assert crash["result"]["error_code"] == "GENERAL"
    assert [s["step"] for s in crash["steps"]][-2:] == ["rule", "error"]
    assert crash["steps"][-2]["rule_id"] == "pro"
    # plan is not "pro", so evaluation never runs the exploding condition of rule "pro";
    # rule "half" does, and fails
    second = SNAP.explain("fragile", {"key": "u1", "plan": "free", "flavour": "explode"})
    pro = rule_step(second, "pro")["conditions"][1]
    assert pro["evaluated"] is False and "RuntimeError" in pro["error"]
    assert second["steps"][-2]["rule_id"] == "half"
    odd = SNAP.explain("checkout", RaisingContext("u1"))
    assert odd["result"] == fields(SNAP.evaluate("checkout", RaisingContext("u1")))
    assert odd["result"]["error_code"] == "GENERAL"


def test_output_is_json_even_for_odd_contexts() -> None:
    ctx = {"key": "u1", "country": datetime(2026, 1, 1), "plan": {1, 2}, "age": math.nan,
           "flavour": b"bytes", "score": object()}
    for key in SNAP.flags:
        doc = SNAP.explain(key, ctx, EvalState(INSIDE))
        json.loads(json.dumps(doc, allow_nan=False))
        assert doc["result"] == fields(SNAP.evaluate(key, ctx, EvalState(INSIDE)))
    fr = rule_step(SNAP.explain("checkout", ctx), "fr")["conditions"][0]
    assert fr["attribute_value"] == "datetime.datetime(2026, 1, 1, 0, 0)"


def test_unknown_flags_never_raise() -> None:
    for key in ("nope", ["unhashable"], None):
        doc = SNAP.explain(key, {"key": "u1"})  # type: ignore[arg-type]
        assert (doc["result"]["reason"], doc["result"]["error_code"]) == ("ERROR", "FLAG_NOT_FOUND")
        json.dumps(doc)


def test_result_value_is_a_copy() -> None:
    snap = Snapshot.from_dict({"revision": 1, "flags": [
        {"key": "j", "type": "json", "variants": {"a": {"x": [1]}}, "default_variant": "a"}]})
    snap.explain("j", {})["result"]["value"]["x"].append(2)
    assert snap.evaluate("j", {}).value == {"x": [1]}


def test_a_disagreement_is_reported_not_hidden() -> None:
    doc = SNAP.explain("search", {"key": "u1"})
    wrong = Evaluation("search", "third", "third", "SPLIT", "exp-B", experiment="B")
    if doc["result"]["variant"] == "third":
        wrong = Evaluation("search", "off", "off", "DEFAULT")
    explained = doc["result"]
    flagged = checked(doc, wrong)
    assert flagged["result"] == fields(wrong)
    assert flagged["mismatch"]["explained"] == explained


def test_plugin_rule_kinds_fall_back_to_their_compiled_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def fields_of(doc: Mapping, variants: Mapping, path: str) -> model.KindFields:
        return doc.get("variant"), None, {}

    def compile_odd(rule: model.Rule, env: evaluate_module.RuleEnv) -> evaluate_module.RuleFn:
        hit = env.result(rule.variant or "", "TARGETING_MATCH", rule.id)
        return lambda ctx, unit, state: hit if unit and unit.endswith("7") else None

    from flagship.flags.rules import RULE_KINDS, RuleKind

    monkeypatch.setitem(RULE_KINDS, "odd", RuleKind("odd", fields_of, compile_odd))
    snap = Snapshot.from_dict({"revision": 1, "flags": [string_flag("f", [
        {"id": "o", "kind": "odd", "variant": "third"}])]})
    for unit in ("u7", "u8"):
        doc = snap.explain("f", {"key": unit})
        assert doc["result"] == fields(snap.evaluate("f", {"key": unit}))
        assert "no explainer" in rule_step(doc, "o")["why"]
