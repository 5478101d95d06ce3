"""`decide` and the manual actions: every precedence rule of ROLLOUT.md §3.4 as a table, plus properties."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flagship.errors import ConflictError, ValidationError
from flagship.rollout.guardrails import OUTCOMES, CheckResult, Guardrail
from flagship.rollout.model import TERMINAL, Policy, RolloutState, policy_from_dict
from flagship.rollout.plan import MANUAL_ACTIONS, Decision, action_events, apply_action, decide


def _never(check: Any, window: Any) -> CheckResult:
    raise AssertionError("decide never runs checks")


FAKES = {"absolute": Guardrail("absolute", dict, _never),
         "comparative": Guardrail("comparative", dict, _never, comparative=True)}
CHECKS = [
    {"id": "errors", "type": "comparative", "on_fail": "rollback", "failure_limit": 1},
    {"id": "latency", "type": "absolute", "on_fail": "hold"},
    {"id": "srm", "type": "comparative", "severity": "health"},
    {"id": "signal", "type": "absolute", "severity": "signal"},
    {"id": "notify", "type": "absolute", "on_fail": "notify"},
]


def make_policy(**overrides: Any) -> Policy:
    doc: dict[str, Any] = {
        "evaluation_interval": 10,
        "steps": [{"percent": 10, "min_duration": 60, "min_units": 100},
                  {"percent": 25, "min_duration": 60, "min_units": 100},
                  {"percent": 50, "min_duration": 60, "min_units": 100}],
        "min_consecutive_ok": 2, "error_limit": 2, "no_data": {"grace": 300, "action": "hold"},
        "checks": CHECKS,
    }
    return policy_from_dict(doc | overrides, FAKES)


POLICY = make_policy()


def results(**outcomes: str) -> list[CheckResult]:
    """A result for every check of POLICY: `pass` unless named."""
    return [CheckResult(c["id"], outcomes.get(c["id"], "pass"), message=f"{c['id']} said so")
            for c in CHECKS]


def running(**fields: Any) -> RolloutState:
    """Step 1 of POLICY, started at t=0, one clean evaluation behind it."""
    base = dict(status="running", step_index=0, percent_bp=1000, step_started_at=0.0,
                consecutive_ok=1)
    return RolloutState(**(base | fields))


@dataclass
class Case:
    """One row: state and inputs -> action, status, reason codes, percent, events."""

    name: str
    state: RolloutState
    outcomes: dict[str, str]
    action: str
    status: str
    codes: set[str]
    percent_bp: int
    events: tuple[str, ...] = ()
    now: float = 100.0
    units: int | None = 500
    policy: Policy = POLICY


CASES = [
    # 2. rollback
    Case("rollback check beyond its failure limit", running(fail_counts={"errors": 1}),
         {"errors": "fail"}, "rollback", "rolled_back", {"check_failed"}, 0,
         ("rollout.rolled_back",)),
    Case("no data past grace, action rollback", running(first_no_data_at=0.0),
         {"latency": "no_data"}, "rollback", "rolled_back", {"no_data"}, 0,
         ("rollout.rolled_back",), now=400,
         policy=make_policy(no_data={"grace": 300, "action": "rollback"})),
    Case("step timeout, action rollback", running(), {}, "rollback", "rolled_back",
         {"step_timeout"}, 0, ("rollout.rolled_back",), now=500,
         policy=make_policy(max_step_duration={"after": 400, "action": "rollback"})),
    Case("health check configured to roll back", running(), {"health": "fail"}, "rollback",
         "rolled_back", {"check_failed"}, 0, ("rollout.rolled_back",),
         policy=make_policy(checks=[{"id": "health", "type": "absolute", "severity": "health",
                                     "on_fail": "rollback", "failure_limit": 0}])),
    Case("rollback beats a blocked hold and waiting", running(step_started_at=90.0),
         {"errors": "fail", "latency": "fail", "srm": "error"}, "rollback", "rolled_back",
         {"check_failed"}, 0, ("check.error", "rollout.rolled_back"), units=0,
         policy=make_policy(checks=[{"id": "errors", "type": "comparative"}, CHECKS[1], CHECKS[2]])),
    # 3. blocked hold
    Case("rollback check within its limit holds", running(), {"errors": "fail"}, "hold",
         "holding", {"check_failed"}, 1000, ("rollout.holding",)),
    Case("hold check failed", running(), {"latency": "fail"}, "hold", "holding",
         {"check_failed"}, 1000, ("rollout.holding",)),
    Case("health check failed holds, never rolls back", running(fail_counts={"srm": 5}),
         {"srm": "fail"}, "hold", "holding", {"check_failed"}, 1000, ("rollout.holding",)),
    Case("error streak above error_limit", running(error_streak={"latency": 2}),
         {"latency": "error"}, "hold", "holding", {"check_errors"}, 1000, ("rollout.holding",)),
    Case("no data past grace, action hold", running(first_no_data_at=0.0),
         {"latency": "no_data"}, "hold", "holding", {"no_data"}, 1000, ("rollout.holding",),
         now=400),
    Case("step timeout, action hold", running(), {}, "hold", "holding", {"step_timeout"}, 1000,
         ("rollout.holding",), now=500,
         policy=make_policy(max_step_duration={"after": 400, "action": "hold"})),
    Case("a blocked hold beats waiting", running(step_started_at=90.0), {"latency": "fail"},
         "hold", "holding", {"check_failed"}, 1000, ("rollout.holding",), units=0),
    # 4. waiting hold: status stays running, no event
    Case("dwell", running(step_started_at=50.0), {}, "hold", "running", {"dwell"}, 1000),
    Case("sample gate", running(), {}, "hold", "running", {"min_units"}, 1000, units=99),
    Case("unknown sample", running(), {}, "hold", "running", {"min_units"}, 1000, units=None),
    Case("hysteresis", running(consecutive_ok=0), {}, "hold", "running", {"consecutive_ok"}, 1000),
    Case("error within error_limit", running(error_streak={"latency": 1}), {"latency": "error"},
         "hold", "running", {"check_error"}, 1000),
    Case("no data within grace", running(first_no_data_at=0.0), {"latency": "no_data"}, "hold",
         "running", {"no_data"}, 1000, now=200),
    Case("advance_on pass needs blocking checks to pass", running(), {"latency": "inconclusive"},
         "hold", "running", {"not_passed"}, 1000, policy=make_policy(advance_on="pass")),
    Case("approval pending", running(), {}, "hold", "running", {"approval"}, 1000,
         ("approval.required",), policy=make_policy(steps=[
             {"percent": 10, "min_duration": 60, "min_units": 100, "approval": True},
             {"percent": 20, "min_duration": 60, "min_units": 100}])),
    Case("every waiting reason at once", running(step_started_at=90.0, consecutive_ok=0),
         {}, "hold", "running", {"dwell", "min_units", "consecutive_ok"}, 1000, units=3),
    # 5. advance / complete
    Case("advance one step", running(), {}, "advance", "running", {"step_done"}, 2500,
         ("step.advanced",)),
    Case("inconclusive does not stop no_fail", running(), {"errors": "inconclusive"}, "advance",
         "running", {"step_done"}, 2500, ("step.advanced",)),
    Case("signal and notify failures never change the action", running(),
         {"signal": "fail", "notify": "fail"}, "advance", "running", {"step_done"}, 2500,
         ("check.failed", "step.advanced")),
    Case("complete after the last step", running(step_index=2, percent_bp=5000), {}, "complete",
         "completed", {"step_done"}, 10000, ("rollout.completed",)),
    Case("timeout with action advance skips the waits", running(consecutive_ok=0), {}, "advance",
         "running", {"step_timeout"}, 2500, ("step.advanced",), now=500, units=0,
         policy=make_policy(max_step_duration={"after": 400, "action": "advance"})),
    Case("timeout never skips an approval", running(), {}, "hold", "running", {"approval"}, 1000,
         ("approval.required",), now=500, units=0, policy=make_policy(
             max_step_duration={"after": 400, "action": "advance"},
             steps=[{"percent": 10, "min_duration": 60, "min_units": 100, "approval": True},
                    {"percent": 20, "min_duration": 60, "min_units": 100}])),
    Case("dismissed checks are ignored", running(dismissed=frozenset({"errors", "latency"})),
         {"errors": "fail", "latency": "fail"}, "advance", "running", {"step_done"}, 2500,
         ("step.advanced",)),
    Case("approved step moves on", running(approved_step=0), {}, "advance", "running",
         {"step_done"}, 2000, ("step.advanced",), policy=make_policy(steps=[
             {"percent": 10, "min_duration": 60, "min_units": 100, "approval": True},
             {"percent": 20, "min_duration": 60, "min_units": 100}])),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_precedence_table(case: Case) -> None:
    outcomes = {c.id: case.outcomes.get(c.id, "pass") for c in case.policy.checks}
    given_results = [CheckResult(k, v) for k, v in outcomes.items()]
    decision = decide(case.policy, case.state, given_results, case.now, units=case.units)
    assert decision.action == case.action
    assert decision.state.status == case.status
    assert {r.code for r in decision.reasons} == case.codes
    assert decision.state.percent_bp == case.percent_bp
    assert decision.events == case.events


@pytest.mark.parametrize("status", ["draft", "paused", "completed", "rolled_back", "aborted"])
def test_inactive_states_never_move(status: str) -> None:
    state = running(status=status, percent_bp=2500 if status != "rolled_back" else 0)
    decision = decide(POLICY, state, results(errors="fail", latency="fail"), 10_000, units=0)
    assert (decision.action, decision.state, decision.events) == ("hold", state, ())
    assert [r.code for r in decision.reasons] == ["inactive"] and not decision.state_patch


def test_fail_error_and_no_data_are_distinct() -> None:
    strict = make_policy(checks=[{"id": "errors", "type": "comparative", "failure_limit": 0}])
    failed = decide(strict, running(), [CheckResult("errors", "fail")], 100, units=500)
    errored = decide(strict, running(), [CheckResult("errors", "error")], 100, units=500)
    empty = decide(strict, running(), [CheckResult("errors", "no_data")], 100, units=500)
    assert (failed.action, failed.state.fail_counts) == ("rollback", {"errors": 1})
    assert (errored.action, errored.state.status) == ("hold", "running")
    assert errored.state.fail_counts == {} and errored.state.error_streak == {"errors": 1}
    assert errored.events == ("check.error",) and errored.notices[0].check_id == "errors"
    assert (empty.action, empty.state.status, empty.state.first_no_data_at) == ("hold", "running", 100)
    assert empty.state.fail_counts == {} and empty.events == ()


def test_a_missing_result_counts_as_an_error_never_a_pass() -> None:
    decision = decide(POLICY, running(), results()[1:], 100, units=500)
    assert decision.action == "hold" and decision.state.error_streak == {"errors": 1}
    assert [r.check_id for r in decision.reasons] == ["errors"]


def test_comparative_checks_are_not_expected_above_half() -> None:
    policy = make_policy(steps=[{"percent": 50, "min_duration": 60, "min_units": 0},
                                {"percent": 80, "min_duration": 60, "min_units": 0}])
    state = running(step_index=1, percent_bp=8000)
    decision = decide(policy, state, [CheckResult(c, "pass") for c in ("latency", "signal",
                                                                       "notify")], 100)
    assert decision.action == "complete" and decision.state.error_streak == {}


def test_counters_reset_on_every_step() -> None:
    state = running(fail_counts={"signal": 3}, error_streak={"latency": 1}, notified=frozenset(
        {"no_data"}), dismissed=frozenset({"srm"}), approved_step=0)
    decision = decide(POLICY, state, results(), 100, units=500)
    after = decision.state
    assert decision.action == "advance" and after.step_started_at == 100
    assert (after.fail_counts, after.error_streak, after.consecutive_ok) == ({}, {}, 0)
    assert after.dismissed == frozenset() and after.notified == frozenset()
    assert decision.state_patch["step_index"] == 1 and decision.state_patch["percent_bp"] == 2500
    assert "attempt" not in decision.state_patch


def test_hysteresis_after_a_hold() -> None:
    held = decide(POLICY, running(consecutive_ok=5), results(latency="fail"), 100, units=500)
    assert held.state.status == "holding" and held.state.consecutive_ok == 0
    first = decide(POLICY, held.state, results(), 110, units=500)
    assert (first.action, first.state.status, first.events) == ("hold", "holding", ())
    assert [r.code for r in first.reasons] == ["consecutive_ok"]
    again = decide(POLICY, first.state, results(latency="fail"), 120, units=500)
    assert again.state.consecutive_ok == 0 and again.events == ()  # still holding: no new event
    one = decide(POLICY, again.state, results(), 130, units=500)
    two = decide(POLICY, one.state, results(), 140, units=500)
    assert one.state.status == "holding"
    assert (two.action, two.state.status) == ("advance", "running")
    assert two.events == ("rollout.resumed", "step.advanced")


def test_dwell_still_applies_when_leaving_a_hold() -> None:
    state = running(status="holding", consecutive_ok=1, step_started_at=50.0)
    decision = decide(POLICY, state, results(), 100, units=500)
    assert (decision.action, decision.state.status) == ("hold", "running")
    assert decision.events == ("rollout.resumed",)
    assert [r.code for r in decision.reasons] == ["dwell"]


def test_edge_triggered_events_fire_once() -> None:
    state, seen = running(), []
    for now in (100, 110, 120):
        decision = decide(POLICY, state, results(latency="fail", signal="fail"), now, units=500)
        seen.append(decision.events)
        state = decision.state
    assert seen == [("check.failed", "rollout.holding"), (), ()]
    assert state.fail_counts == {"latency": 3, "signal": 3}


def test_approval_required_fires_once_and_approve_releases() -> None:
    policy = make_policy(steps=[{"percent": 10, "min_duration": 60, "min_units": 0,
                                 "approval": True},
                                {"percent": 20, "min_duration": 60, "min_units": 0}])
    first = decide(policy, running(), results(), 100)
    second = decide(policy, first.state, results(), 110)
    assert first.events == ("approval.required",) and first.state.awaiting_approval
    assert second.events == () and second.action == "hold"
    approved = apply_action(policy, second.state, "approve", 115)
    assert approved.approved_step == 0 and not approved.awaiting_approval
    assert decide(policy, approved, results(), 120).action == "advance"


def test_no_data_clock_restarts_when_data_returns() -> None:
    state = decide(POLICY, running(), results(latency="no_data"), 100, units=500).state
    assert state.first_no_data_at == 100
    state = decide(POLICY, state, results(), 150, units=500).state
    assert state.first_no_data_at is None
    state = decide(POLICY, state, results(latency="no_data"), 200, units=500).state
    assert state.first_no_data_at == 200
    assert decide(POLICY, state, results(latency="no_data"), 450, units=500).state.status == "running"
    assert decide(POLICY, state, results(latency="no_data"), 500, units=500).state.status == "holding"


def test_no_data_with_action_notify_notifies_once_then_carries_on() -> None:
    policy = make_policy(no_data={"grace": 60, "action": "notify"})
    carried = decide(policy, running(first_no_data_at=0.0), results(latency="no_data"), 100,
                     units=500)
    assert (carried.action, carried.events) == ("advance", ("check.no_data", "step.advanced"))
    assert [n.code for n in carried.notices] == ["no_data"]
    dwelling = running(first_no_data_at=0.0, step_started_at=90.0)
    first = decide(policy, dwelling, results(latency="no_data"), 100, units=500)
    second = decide(policy, first.state, results(latency="no_data"), 110, units=500)
    assert first.events == ("check.no_data",) and second.events == ()
    assert [r.code for r in second.reasons] == ["dwell"]
    early = decide(policy, running(first_no_data_at=50.0), results(latency="no_data"), 100,
                   units=500)
    assert early.action == "hold" and {r.code for r in early.reasons} == {"no_data"}


def test_percent_climbs_one_step_per_call() -> None:
    state, seen = running(consecutive_ok=5), []
    for now in range(1000, 10_000, 1000):
        decision = decide(POLICY, state, results(), float(now), units=10**6)
        state = replace(decision.state, consecutive_ok=5)
        seen.append(decision.state.percent_bp)
    assert seen[:3] == [2500, 5000, 10000] and set(seen[3:]) == {10000}
    assert state.status == "completed"


# -- manual actions ------------------------------------------------------------------------

def test_start_and_restart() -> None:
    started = apply_action(POLICY, RolloutState(), "start", 5.0)
    assert (started.status, started.step_index, started.percent_bp, started.step_started_at) == \
        ("running", 0, 1000, 5.0)
    rolled = apply_action(POLICY, replace(started, fail_counts={"errors": 2}), "rollback", 6.0)
    assert (rolled.status, rolled.percent_bp) == ("rolled_back", 0)
    again = apply_action(POLICY, rolled, "restart", 7.0)
    assert again == RolloutState(status="running", attempt=2, percent_bp=1000, step_started_at=7.0)
    assert action_events("restart", rolled, again) == ("rollout.started",)


@pytest.mark.parametrize("action, status", [
    (action, status) for action in MANUAL_ACTIONS
    for status in ("draft", "running", "holding", "paused", "completed", "rolled_back", "aborted")
    if status not in {
        "start": ("draft",), "pause": ("running", "holding"), "resume": ("paused", "holding"),
        "advance": ("running", "holding"), "approve": ("running", "holding", "paused"),
        "dismiss": ("running", "holding", "paused"), "rollback": ("running", "holding", "paused"),
        "abort": ("draft", "running", "holding", "paused"), "restart": TERMINAL}[action]])
def test_illegal_moves_name_the_status(action: str, status: str) -> None:
    with pytest.raises(ConflictError, match=f"cannot {action} a rollout that is {status}"):
        apply_action(POLICY, running(status=status), action, 1.0, check_id="errors")


def test_pause_resume_restarts_the_step_clock() -> None:
    paused = apply_action(POLICY, running(consecutive_ok=3, first_no_data_at=4.0), "pause", 50.0)
    assert paused.status == "paused" and decide(POLICY, paused, results(), 999).action == "hold"
    resumed = apply_action(POLICY, paused, "resume", 80.0)
    assert (resumed.status, resumed.step_started_at, resumed.consecutive_ok,
            resumed.first_no_data_at) == ("running", 80.0, 0, None)
    unheld = apply_action(POLICY, running(status="holding", step_started_at=3.0), "resume", 80.0)
    assert (unheld.status, unheld.step_started_at) == ("running", 3.0)


def test_manual_advance_approve_dismiss_abort() -> None:
    last = running(step_index=2, percent_bp=5000)
    done = apply_action(POLICY, last, "advance", 9.0)
    assert (done.status, done.percent_bp) == ("completed", 10000)
    assert action_events("advance", last, done) == ("rollout.completed",)
    moved = apply_action(POLICY, running(status="holding"), "advance", 9.0)
    assert (moved.status, moved.step_index, moved.step_started_at) == ("running", 1, 9.0)
    with pytest.raises(ConflictError, match="needs no approval"):
        apply_action(POLICY, running(), "approve", 1.0)
    dismissed = apply_action(POLICY, running(), "dismiss", 1.0, check_id="errors")
    assert dismissed.dismissed == {"errors"} and action_events("dismiss", running(), dismissed) == ()
    with pytest.raises(ValidationError) as info:
        apply_action(POLICY, running(), "dismiss", 1.0, check_id="nope")
    assert info.value.field == "check_id"
    aborted = apply_action(POLICY, running(percent_bp=1000), "abort", 1.0)
    assert (aborted.status, aborted.percent_bp) == ("aborted", 1000)
    with pytest.raises(ValidationError):
        apply_action(POLICY, running(), "promote", 1.0)


# -- properties ------------------------------------------------------------------------------

STEP = st.fixed_dictionaries({c["id"]: st.sampled_from(OUTCOMES) for c in CHECKS})
MOVES = st.lists(st.tuples(STEP, st.floats(0, 400), st.none() | st.integers(0, 300),
                           st.none() | st.sampled_from(MANUAL_ACTIONS)), max_size=40)
POLICIES = [make_policy(max_step_duration={"after": 200, "action": a}) for a in
            ("hold", "rollback", "advance")] + [
    make_policy(no_data={"grace": 30, "action": a}, advance_on=o, min_consecutive_ok=1)
    for a, o in (("rollback", "pass"), ("notify", "no_fail"))]


def _check_decision(policy: Policy, before: RolloutState, decision: Decision) -> None:
    after = decision.state
    if before.status not in ("running", "holding"):
        assert after == before and decision.action == "hold"
        return
    bps = [s.percent_bp for s in policy.steps]
    allowed = {before.percent_bp}
    if decision.action == "advance":
        allowed = {bps[before.step_index + 1]}
    elif decision.action == "complete":
        allowed = {policy.completion.percent_bp}
        assert before.step_index == len(bps) - 1
    elif decision.action == "rollback":
        allowed = {0}
    assert after.percent_bp in allowed
    assert after.step_index - before.step_index in (0, 1)
    assert (decision.action == "rollback") == (after.status == "rolled_back")
    assert len(set(decision.events)) == len(decision.events)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(POLICIES), MOVES)
def test_random_evaluations_never_jump_and_never_leave_a_terminal_state(
        policy: Policy, moves: list[tuple[dict[str, str], float, int | None, str | None]]) -> None:
    state, now = apply_action(policy, RolloutState(), "start", 0.0), 0.0
    for outcomes, dt, units, manual in moves:
        now += dt
        if manual is not None:
            try:
                state = apply_action(policy, state, manual, now, check_id="latency")
            except ConflictError:
                pass
            if manual == "restart":
                continue
        given_results = [CheckResult(k, v) for k, v in outcomes.items()]
        decision = decide(policy, state, given_results, now, units=units)
        _check_decision(policy, state, decision)
        if state.status in TERMINAL:
            assert decision.state == state
        state = decision.state


# -- reminders: a hold that lasts is told again, at most every reminder_interval --------------

def test_a_lasting_hold_is_reminded_at_most_every_interval() -> None:
    policy = make_policy(reminder_interval="1h")
    first = decide(policy, running(), results(latency="fail"), 100.0, units=500)
    assert first.events[-1] == "rollout.holding" and first.state.reminded_at == 100.0
    quiet = decide(policy, first.state, results(latency="fail"), 100.0 + 3599, units=500)
    assert "rollout.reminder" not in quiet.events and quiet.state.reminded_at == 100.0
    reminded = decide(policy, quiet.state, results(latency="fail"), 100.0 + 3600, units=500)
    assert reminded.action == "hold" and reminded.events == ("rollout.reminder",)
    assert reminded.state.reminded_at == 3700.0 and reminded.state_patch["reminded_at"] == 3700.0
    again = decide(policy, reminded.state, results(latency="fail"), 3700.0 + 1800, units=500)
    assert "rollout.reminder" not in again.events


def test_a_pending_approval_is_reminded_and_leaving_the_hold_clears_the_clock() -> None:
    policy = make_policy(reminder_interval=3600, steps=[
        {"percent": 10, "min_duration": 60, "min_units": 100, "approval": True},
        {"percent": 50, "min_duration": 60, "min_units": 100}])
    asked = decide(policy, running(), results(), 100.0, units=500)
    assert asked.events == ("approval.required",) and asked.state.reminded_at == 100.0
    later = decide(policy, asked.state, results(), 100.0 + 3600, units=500)
    assert later.events == ("rollout.reminder",)
    approved = replace(later.state, approved_step=0)
    moved = decide(policy, approved, results(), 100.0 + 3700, units=500)
    assert moved.action == "advance" and moved.state.reminded_at is None


def test_reminders_can_be_turned_off_and_are_bounded() -> None:
    policy = make_policy(reminder_interval=0)
    held = decide(policy, running(), results(latency="fail"), 100.0, units=500)
    assert "rollout.reminder" not in decide(policy, held.state, results(latency="fail"), 10**7, units=500).events
    with pytest.raises(ValidationError, match="reminder_interval"):
        make_policy(reminder_interval="10s")
    assert make_policy().reminder_interval == 86400.0
