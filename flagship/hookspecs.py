"""Hook specifications: the plugin reference for flagship.

A plugin is any module or object with functions decorated by ``@hookimpl`` whose names
match the specs below. Third-party plugins are found through the ``flagship``
entry-point group (``[options.entry_points] flagship = myplugin = my_pkg.plugin``) or
named in ``FLAGSHIP_PLUGINS``. The built-in operators are registered through exactly
the same hooks (see ``flagship/plugins/``).

No hook runs on the evaluation hot path: ``register_operators`` is collected once when
the app (or an SDK client) builds its operator table, and the engine then calls plain
functions from a dict. ``register_guardrails`` is collected the same way into the
guardrail table that policy validation and the rollout job use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from flagship.flags.operators import Operator
    from flagship.rollout.guardrails import Guardrail

hookspec = pluggy.HookspecMarker("flagship")
hookimpl = pluggy.HookimplMarker("flagship")


@hookspec
def register_operators() -> Iterable["Operator"]:
    """Return targeting operators this plugin provides.

    Returns:
        An iterable of :class:`flagship.flags.operators.Operator`. Each has a unique
        ``name`` (the string used in a condition's ``operator`` field), a ``compile``
        function that validates a condition's ``values`` list when a flag or segment is
        written (raise ``ValueError`` with a message a person can act on; the API turns
        it into a 422 naming the field) and returns a prepared form, and a ``match``
        function ``match(attribute_value, prepared) -> bool`` called during evaluation.
        ``match`` may raise ``TypeError``/``ValueError`` for an attribute it cannot
        compare; the engine treats that as "no match".

    Fires: once when the operator table is built (app start, SDK client start).
    Two plugins registering the same name is a start-up error.
    """


@hookspec
def track_event(event: dict[str, Any]) -> None:
    """Observe a committed change.

    Args:
        event: ``{"action": "flag.create" | "flag.update" | ..., "actor": str,
            "target_type": "flag" | "segment" | "api_key" | ..., "target": key,
            "before": dict | None, "after": dict | None, "at": ISO-8601 str}``,
            the same record the audit log stores.

    Fires: after the transaction that made the change has committed, once per audit
    record, in the process that made the change. Exceptions are logged and swallowed:
    a notifier can never undo or block a committed write.
    """


@hookspec
def register_guardrails() -> Iterable["Guardrail"]:
    """Return guardrail check types this plugin provides for progressive-delivery rollouts.

    Returns:
        An iterable of :class:`flagship.rollout.guardrails.Guardrail`, each with:

        - ``name``: unique; the value of a check's ``type`` in a ramp policy.
        - ``validate(params) -> dict``: called when a policy is saved with the check's
          type-specific fields (everything but ``id``, ``type``, ``severity``, ``on_fail``,
          ``failure_limit``). Raise ``ValueError`` (or ``guardrails.ParamError(field,
          message)`` to name the field) with a message a person can act on; the API answers
          422 naming ``checks.<n>.<field>``. Return the canonical params; they are stored
          with the policy and passed back to ``validate`` when the policy is read again, so
          ``validate`` must accept its own output.
        - ``evaluate(check, window) -> CheckResult``: called once per evaluation of every
          running rollout, with the :class:`CheckSpec` (``check.params`` as validated; for a
          blocking comparative check ``params["alpha"]`` is already the Bonferroni share)
          and a read-only :class:`Observations` window (treatment and mirrored control
          sufficient statistics, exposures, units this step, ``now``, ``extra``). Return an
          outcome among ``pass | fail | inconclusive | no_data | error`` with evidence.
          Never touch SQL, Flask or Redis; bound any network call by a timeout. An
          exception, or a return value that is not a ``CheckResult``, is recorded as
          ``error`` for that check only (never ``fail``): an erroring check holds a rollout
          after ``error_limit`` evaluations in a row and never rolls it back.
        - ``comparative``: true when the check needs the control arm; such checks only run
          at steps up to 50 % (the mirrored control stops existing beyond that).
        - ``description``: one line for the UI and ``flagship plugins``.

    Fires: once when the guardrail table is built (app start, worker start, or a CLI
    command that validates policies). Two plugins registering the same name is a start-up
    error; a policy naming a type nobody registers is rejected when it is saved.
    """


@hookspec
def notify(event: dict[str, Any], runtime: Any) -> None:
    """Deliver an event to people or systems (chat, pager, webhook): rollout transitions,
    alerts, failed scheduled changes and every audited change.

    Args:
        event: ``{"id": str, "type": str, "at": ISO-8601 str, "actor": str,
            "environment": str | None, ...}`` plus the fields of its type. ``id`` is the
            idempotency key (the outbox event id): the same event may be delivered more than
            once and receivers should drop repeats. ``type`` is an audit action for changes
            (``flag.update``, ``experiment.start``...; the event carries ``audit``, the audit
            record with ``before`` and ``after``), a rollout event (``rollout.started,
            step.advanced, rollout.holding, rollout.resumed, approval.required,
            rollout.reminder, rollout.rolled_back, rollout.completed, rollout.paused,
            rollout.aborted, check.failed, check.error, check.no_data``; with the rollout,
            the transition and the check evidence; ``rollout.reminder`` retells a hold or a
            pending approval every ``reminder_interval`` of the policy), ``alert.opened`` / ``alert.resolved`` (with ``alert``: rule,
            subject, kind, severity, evidence) or ``schedule.failed`` (with ``schedule``).
        runtime: the :class:`flagship.runtime.Runtime` of the delivering process (its
            database, clock and configuration), or None when called outside one. Declare
            only ``event`` if the notifier needs nothing else (pluggy passes the arguments
            an implementation names).

    Returns:
        Nothing. Filter by ``type``, ``environment`` or severity inside the implementation;
        raise to have the event offered to this notifier again later.

    Fires: after the transaction that produced the event has committed, from the outbox,
    in whichever process runs the delivery job (``flagship.rollout.notifications.dispatch``:
    the RQ worker or the in-process ticker). Unlike other hooks, the caller does not use
    ``pm.hook.notify(...)``: pluggy would abort the whole call at the first raising
    implementation. It calls every implementation one by one
    (``flagship.plugins.call_notifiers``), isolated: an exception is recorded for that
    notifier, never blocks the others or the transition, and the event is offered again,
    to the failed notifiers only, after an exponential backoff (10 s doubling, at most 1 h;
    at-least-once). The built-in notifiers are ``log`` and ``webhooks``
    (``flagship.plugins.default_notifiers``).
    """
