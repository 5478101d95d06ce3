"""The ramp decision and the manual actions: pure functions of policy, state, results and `now`.

``decide`` follows ROLLOUT.md §3.4; the first matching rule wins:

1. status not running/holding -> ``hold`` (reason ``inactive``), nothing changes;
2. rollback: a rollback check failed more than its ``failure_limit`` this step, no data past
   grace with action rollback, or a step timeout with action rollback;
3. blocked hold (status ``holding``, ``rollout.holding`` once): an acting check failed, an
   error streak above ``error_limit``, no data past grace (hold), step timeout (hold);
4. waiting hold (status unchanged, no event): dwell, sample gate, hysteresis, errors or no
   data within their limits, ``advance_on: pass`` not met, approval pending;
5. the last step done -> ``complete``, else ``advance`` one step.

Percent only rises one step per call or drops to 0 on rollback, and nothing leaves
``completed``, ``rolled_back`` or ``aborted`` without a human ``restart`` (a new attempt).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

from flagship.errors import ConflictError, ValidationError
from flagship.rollout.guardrails import CheckResult, applicable_checks, error_result
from flagship.rollout.model import ACTIVE, TERMINAL, CheckSpec, Policy, RolloutState

DECISIONS = ("advance", "hold", "rollback", "complete")
Seen = Sequence[tuple[CheckSpec, CheckResult]]


@dataclass(frozen=True)
class Reason:
    """Why a decision was taken (or what a notice is about); `code` is stable, `text` is for people."""

    code: str
    text: str
    check_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document."""
        return {"code": self.code, "text": self.text, "check_id": self.check_id}


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation: action, reasons, the new state and edge-triggered events.

    ``notices`` explain events that do not change the action (a signal check failing, a
    plugin error); ``state_patch`` holds the state fields that changed.
    """

    action: str
    reasons: tuple[Reason, ...]
    state: RolloutState
    events: tuple[str, ...] = ()
    notices: tuple[Reason, ...] = ()
    state_patch: Mapping[str, Any] = field(default_factory=dict)


def _step_name(state: RolloutState) -> str:
    return f"step {state.step_index + 1} ({state.percent_bp / 100:g} %)"


def _acts(check: CheckSpec) -> bool:
    """Whether the check may change the action: signal and notify checks never do."""
    return check.severity != "signal" and check.on_fail != "notify"


def _decision(before: RolloutState, action: str, reasons: Iterable[Reason], after: RolloutState,
              events: Iterable[str] = (), notices: Iterable[Reason] = ()) -> Decision:
    old, new = before.to_dict(), after.to_dict()
    patch = {name: value for name, value in new.items() if old[name] != value}
    return Decision(action, tuple(reasons), after, tuple(dict.fromkeys(events)), tuple(notices),
                    patch)


def _seen(policy: Policy, state: RolloutState, results: Iterable[CheckResult]) -> list[tuple[CheckSpec, CheckResult]]:
    """Applicable, non-dismissed checks with their result; a missing result counts as an error."""
    by_id: dict[str, CheckResult] = {}
    for result in results:
        by_id.setdefault(result.check_id, result)
    return [(check, by_id.get(check.id) or error_result(check, "no result was reported"))
            for check in applicable_checks(policy, state.percent_bp)
            if check.id not in state.dismissed]


def _count(state: RolloutState, seen: Seen) -> tuple[RolloutState, list[str], list[Reason]]:
    """Per-step failure counts and error streaks, with first-failure and first-error events."""
    fails, streaks = dict(state.fail_counts), dict(state.error_streak)
    events: list[str] = []
    notices: list[Reason] = []
    for check, result in seen:
        if result.outcome == "fail":
            fails[check.id] = fails.get(check.id, 0) + 1
            if not _acts(check):
                notices.append(Reason("check_failed", f"{check.id} failed: {result.message}",
                                      check.id))
                events += ["check.failed"] if fails[check.id] == 1 else []
        if result.outcome != "error":
            streaks.pop(check.id, None)
            continue
        streaks[check.id] = streaks.get(check.id, 0) + 1
        if streaks[check.id] == 1:
            events.append("check.error")
            notices.append(Reason("check_error", f"{check.id} errored: {result.message}", check.id))
    return replace(state, fail_counts=fails, error_streak=streaks), events, notices


def _no_data_clock(policy: Policy, state: RolloutState, seen: Seen,
                   now: float) -> tuple[RolloutState, list[str], list[Reason]]:
    """Start, keep or clear the no-data clock; with action notify, notify once per period."""
    if not any(r.outcome == "no_data" and _acts(c) for c, r in seen):
        return replace(state, first_no_data_at=None, notified=state.notified - {"no_data"}), [], []
    since = now if state.first_no_data_at is None else state.first_no_data_at
    state = replace(state, first_no_data_at=since)
    if (policy.no_data.action != "notify" or not _no_data_expired(policy, state, now)
            or "no_data" in state.notified):
        return state, [], []
    notice = Reason("no_data", f"no data for {now - since:g} s (grace {policy.no_data.grace:g} s)")
    return replace(state, notified=state.notified | {"no_data"}), ["check.no_data"], [notice]


def _no_data_expired(policy: Policy, state: RolloutState, now: float) -> bool:
    since = state.first_no_data_at
    return since is not None and now - since >= policy.no_data.grace


def _timeout_action(policy: Policy, state: RolloutState, now: float) -> str | None:
    timeout = policy.max_step_duration
    started = state.step_started_at
    if timeout is None or started is None or now - started < timeout.after:
        return None
    return timeout.action


def _policy_reasons(policy: Policy, state: RolloutState, now: float, action: str) -> list[Reason]:
    """No-data and timeout triggers whose configured action is `action`."""
    reasons = []
    if _no_data_expired(policy, state, now) and policy.no_data.action == action:
        reasons.append(Reason("no_data", f"checks have had no data for "
                                         f"{now - (state.first_no_data_at or now):g} s "
                                         f"(grace {policy.no_data.grace:g} s)"))
    if _timeout_action(policy, state, now) == action:
        reasons.append(Reason("step_timeout", f"{_step_name(state)} has run longer than "
                                              f"{policy.max_step_duration.after:g} s"))  # type: ignore[union-attr]
    return reasons


def _rollback(policy: Policy, state: RolloutState, seen: Seen, now: float) -> list[Reason]:
    reasons = []
    for check, result in seen:
        count = state.fail_counts.get(check.id, 0)
        if (_acts(check) and check.on_fail == "rollback" and result.outcome == "fail"
                and count > check.failure_limit):
            reasons.append(Reason("check_failed", f"{check.id} failed {count} times this step "
                                  f"(limit {check.failure_limit}): {result.message}", check.id))
    return reasons + _policy_reasons(policy, state, now, "rollback")


def _blocked(policy: Policy, state: RolloutState, seen: Seen, now: float) -> list[Reason]:
    reasons = []
    for check, result in seen:
        if not _acts(check):
            continue
        if result.outcome == "fail":
            reasons.append(Reason("check_failed", f"{check.id} failed: {result.message}", check.id))
        streak = state.error_streak.get(check.id, 0)
        if result.outcome == "error" and streak > policy.error_limit:
            reasons.append(Reason("check_errors", f"{check.id} errored {streak} times in a row "
                                  f"(limit {policy.error_limit}): {result.message}", check.id))
    return reasons + _policy_reasons(policy, state, now, "hold")


def _check_waits(policy: Policy, state: RolloutState, seen: Seen, now: float) -> list[Reason]:
    notify_past_grace = policy.no_data.action == "notify" and _no_data_expired(policy, state, now)
    reasons = []
    for check, result in seen:
        if not _acts(check):
            continue
        if result.outcome == "error":
            reasons.append(Reason("check_error", f"{check.id} errored: {result.message}", check.id))
        elif result.outcome == "no_data" and not notify_past_grace:
            reasons.append(Reason("no_data", f"{check.id}: {result.message}", check.id))
        elif (result.outcome == "inconclusive" and policy.advance_on == "pass"
              and check.severity == "blocking"):
            reasons.append(Reason("not_passed", f"{check.id} has not passed yet", check.id))
    return reasons


def _waiting(policy: Policy, state: RolloutState, seen: Seen, now: float,
             units: int | None) -> list[Reason]:
    step = policy.steps[state.step_index]
    reasons = []
    ran = None if state.step_started_at is None else now - state.step_started_at
    if ran is None or ran < step.min_duration:
        reasons.append(Reason("dwell", f"{_step_name(state)} has run {ran or 0:g} s of "
                                       f"{step.min_duration:g} s"))
    if step.min_units and (units is None or units < step.min_units):
        reasons.append(Reason("min_units", f"{units if units is not None else 'unknown'} units "
                                           f"per arm this step, {step.min_units} needed"))
    if state.consecutive_ok < policy.min_consecutive_ok:
        reasons.append(Reason("consecutive_ok", f"{state.consecutive_ok} clean evaluations in a "
                                                f"row, {policy.min_consecutive_ok} needed"))
    reasons += _check_waits(policy, state, seen, now)
    if step.approval and state.approved_step != state.step_index:
        reasons.append(Reason("approval", f"{_step_name(state)} needs an approval to move on"))
    return reasons


def _enter_step(state: RolloutState, index: int, percent_bp: int, now: float) -> RolloutState:
    """The state at the start of a step: the clock starts now and every counter is fresh."""
    return replace(state, step_index=index, percent_bp=percent_bp, step_started_at=now,
                   consecutive_ok=0, fail_counts={}, error_streak={}, first_no_data_at=None,
                   dismissed=frozenset(), awaiting_approval=False, notified=frozenset())


def _next(policy: Policy, state: RolloutState, now: float) -> tuple[RolloutState, str]:
    """One step up, or completion after the last step; returns the new state and its event."""
    index = state.step_index + 1
    if index >= len(policy.steps):
        done = replace(state, status="completed", percent_bp=policy.completion.percent_bp,
                       awaiting_approval=False)
        return done, "rollout.completed"
    return _enter_step(state, index, policy.steps[index].percent_bp, now), "step.advanced"


def _proceed(policy: Policy, before: RolloutState, state: RolloutState, seen: Seen, now: float,
             units: int | None, events: list[str], notices: list[Reason]) -> Decision:
    """Rules 4 and 5: wait, or advance/complete (a timeout with action advance skips the waits)."""
    waiting = _waiting(policy, state, seen, now, units)
    gates = [r for r in waiting if r.code == "approval"]  # a timeout never skips a human
    timed_out = _timeout_action(policy, state, now) == "advance"
    holding_up = gates if timed_out else waiting
    if holding_up:
        if gates and len(gates) == len(holding_up) and not state.awaiting_approval:
            state = replace(state, awaiting_approval=True)
            events = events + ["approval.required"]
        return _decision(before, "hold", holding_up, state, events, notices)
    reasons = (_policy_reasons(policy, state, now, "advance") if timed_out else
               [Reason("step_done", f"{_step_name(state)} met every gate")])
    after, event = _next(policy, state, now)
    action = "complete" if after.status == "completed" else "advance"
    return _decision(before, action, reasons, after, events + [event], notices)


def decide(policy: Policy, state: RolloutState, results: Iterable[CheckResult], now: float,
           *, units: int | None = None) -> Decision:
    """Decide advance | hold | rollback | complete for one evaluation (ROLLOUT.md §3.4).

    ``units`` is the sample gate: units first exposed in this step in the smaller compared
    arm (``guardrails.sample_units``); None means unknown, which never satisfies a gate.
    A rollout stuck holding or waiting for an approval is told about again
    (``rollout.reminder``) every ``policy.reminder_interval`` seconds.
    """
    decision = _decide(policy, state, results, now, units)
    return _remind(policy, state, decision, now) if state.status in ACTIVE else decision


def _remind(policy: Policy, state: RolloutState, decision: Decision, now: float) -> Decision:
    """Edge-triggered events tell a hold or a pending approval once; a hold that lasts is
    told again at most every ``reminder_interval`` (``reminded_at`` keeps the last time)."""
    after, events = decision.state, list(decision.events)
    stuck = decision.action == "hold" and (after.status == "holding" or after.awaiting_approval)
    if not stuck:
        reminded = None
    elif {"rollout.holding", "approval.required"} & set(events) or after.reminded_at is None:
        reminded = now  # just told (or stuck since before reminders existed): the clock starts
    elif policy.reminder_interval and now - after.reminded_at >= policy.reminder_interval:
        reminded, events = now, events + ["rollout.reminder"]
    else:
        return decision
    if reminded == after.reminded_at and events == list(decision.events):
        return decision
    return _decision(state, decision.action, decision.reasons, replace(after, reminded_at=reminded),
                     events, decision.notices)


def _decide(policy: Policy, state: RolloutState, results: Iterable[CheckResult], now: float,
            units: int | None) -> Decision:
    if state.status not in ACTIVE:
        return _decision(state, "hold", [Reason("inactive", f"the rollout is {state.status}")],
                         state)
    seen = _seen(policy, state, results)
    tally, events, notices = _count(state, seen)
    tally, clock_events, clock_notices = _no_data_clock(policy, tally, seen, now)
    events, notices = events + clock_events, notices + clock_notices
    rollback = _rollback(policy, tally, seen, now)
    if rollback:
        after = replace(tally, status="rolled_back", percent_bp=0, awaiting_approval=False)
        return _decision(state, "rollback", rollback, after, events + ["rollout.rolled_back"],
                         notices)
    blocked = _blocked(policy, tally, seen, now)
    if blocked:
        after = replace(tally, status="holding", consecutive_ok=0)
        edge = ["rollout.holding"] if state.status == "running" else []
        return _decision(state, "hold", blocked, after, events + edge, notices)
    tally = replace(tally, consecutive_ok=tally.consecutive_ok + 1)
    if tally.status == "holding":
        if tally.consecutive_ok < policy.min_consecutive_ok:
            reason = Reason("consecutive_ok", f"holding: {tally.consecutive_ok} clean evaluations "
                                              f"in a row, {policy.min_consecutive_ok} needed")
            return _decision(state, "hold", [reason], tally, events, notices)
        tally, events = replace(tally, status="running"), events + ["rollout.resumed"]
    return _proceed(policy, state, tally, seen, now, units, events, notices)


# -- manual actions --------------------------------------------------------------------

_LIVE = ("running", "holding", "paused")
_FROM: dict[str, tuple[str, ...]] = {
    "start": ("draft",), "pause": ACTIVE, "resume": ("paused", "holding"), "advance": ACTIVE,
    "approve": _LIVE, "dismiss": _LIVE, "rollback": _LIVE, "abort": ("draft",) + _LIVE,
    "restart": TERMINAL,
}
MANUAL_ACTIONS = tuple(_FROM)
_ACTION_EVENTS = {"start": "rollout.started", "restart": "rollout.started",
                  "pause": "rollout.paused", "resume": "rollout.resumed",
                  "rollback": "rollout.rolled_back", "abort": "rollout.aborted"}
Handler = Callable[[Policy, RolloutState, float, "str | None"], RolloutState]


def _start(policy: Policy, state: RolloutState, now: float, _: str | None) -> RolloutState:
    return _enter_step(replace(state, status="running"), 0, policy.steps[0].percent_bp, now)


def _resume(policy: Policy, state: RolloutState, now: float, _: str | None) -> RolloutState:
    if state.status == "paused":  # the step clock restarts: paused time proves nothing
        return replace(state, status="running", step_started_at=now, consecutive_ok=0,
                       first_no_data_at=None)
    return replace(state, status="running", consecutive_ok=0)


def _approve(policy: Policy, state: RolloutState, now: float, _: str | None) -> RolloutState:
    if not policy.steps[state.step_index].approval:
        raise ConflictError(f"{_step_name(state)} needs no approval")
    return replace(state, approved_step=state.step_index, awaiting_approval=False)


def _dismiss(policy: Policy, state: RolloutState, now: float, check_id: str | None) -> RolloutState:
    if check_id is None or policy.check(check_id) is None:
        raise ValidationError(f"unknown check {check_id!r}; checks: "
                              f"{', '.join(c.id for c in policy.checks)}", field="check_id")
    return replace(state, dismissed=state.dismissed | {check_id})


def _advance(policy: Policy, state: RolloutState, now: float, _: str | None) -> RolloutState:
    after, _event = _next(policy, state, now)
    return after if after.status == "completed" else replace(after, status="running")


def _restart(policy: Policy, state: RolloutState, now: float, _: str | None) -> RolloutState:
    fresh = RolloutState(status="running", attempt=state.attempt + 1)
    return _enter_step(fresh, 0, policy.steps[0].percent_bp, now)


_HANDLERS: dict[str, Handler] = {
    "start": _start, "resume": _resume, "approve": _approve, "dismiss": _dismiss,
    "advance": _advance, "restart": _restart,
    "pause": lambda p, s, now, _: replace(s, status="paused"),
    "rollback": lambda p, s, now, _: replace(s, status="rolled_back", percent_bp=0,
                                             awaiting_approval=False),
    "abort": lambda p, s, now, _: replace(s, status="aborted", awaiting_approval=False),
}


def apply_action(policy: Policy, state: RolloutState, action: str, now: float,
                 check_id: str | None = None) -> RolloutState:
    """Apply a manual action; ConflictError naming the status when it is not allowed from there."""
    allowed = _FROM.get(action)
    if allowed is None:
        raise ValidationError(f"unknown action {action!r}; use one of {', '.join(_FROM)}",
                              field="action")
    if state.status not in allowed:
        raise ConflictError(f"cannot {action} a rollout that is {state.status}",
                            errors={"status": [state.status]})
    return _HANDLERS[action](policy, state, now, check_id)


def action_events(action: str, before: RolloutState, after: RolloutState) -> tuple[str, ...]:
    """The events a manual action emits (approve and dismiss emit none)."""
    if action == "advance":
        return ("rollout.completed",) if after.status == "completed" else ("step.advanced",)
    event = _ACTION_EVENTS.get(action)
    return (event,) if event else ()
