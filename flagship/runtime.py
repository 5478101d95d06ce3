"""The runtime every front door (HTTP, UI, jobs, CLI) works against, and `make_runtime`.

`make_runtime(settings)` builds the store, the plugin manager, the operator table, the
compiled-snapshot cache, the sticky-assignment store and the evaluator, with nothing
from Flask: the CLI and the job workers use it directly, `create_app` wraps one. It
starts no threads; periodic work is started by `flagship serve` / `flagship worker`
through `flagship.jobs`.
"""
from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from sqlalchemy.orm import Session

from flagship.db import Database, utcnow
from flagship.store import AuditRecord, OutboxRecord, audit_to_dict

if TYPE_CHECKING:  # pragma: no cover
    import pluggy

    from flagship.auth import KeyCache
    from flagship.experiments.assignment import AssignmentStore
    from flagship.flags.operators import Operator
    from flagship.serving.cache import SnapshotCache
    from flagship.serving.evaluator import Evaluator

log = logging.getLogger(__name__)
# a serving process re-reads the store revision at most this often (the kill switch must
# reach every process within 1 s; see Database.snapshot_revision)
REVISION_CHECK_SECONDS = 0.25
# the change set open on this thread (or task), if any: (its runtime, its transaction)
_CHANGE_SET: ContextVar[tuple[Any, Any] | None] = ContextVar("flagship_change_set", default=None)


@dataclass
class Tx:
    """One write transaction: its session, who acts, when, and the audit records made."""

    session: Session
    actor: str
    now: datetime
    events: list[AuditRecord] = field(default_factory=list)

    def emit(self, type: str, payload: dict[str, Any], environment: str | None = None) -> str:
        """Queue a notification in this transaction (delivered after commit, at least once);
        return its event id (the receivers' idempotency key)."""
        event_id = uuid.uuid4().hex
        self.session.add(OutboxRecord(event_id=event_id, type=type, at=self.now, environment=environment,
                                      payload={"id": event_id, "type": type, "at": self.now.isoformat(),
                                               "actor": self.actor, "environment": environment,
                                               **payload}))
        return event_id

    def audit(self, action: str, target_type: str, target_key: str,
              before: Any = None, after: Any = None, environment: str | None = None) -> AuditRecord:
        """Record a mutation in the audit log, inside this transaction."""
        record = AuditRecord(at=self.now, actor=self.actor, action=action,
                             target_type=target_type, target_key=target_key,
                             before=before, after=after, environment=environment)
        self.session.add(record)
        self.events.append(record)
        return record


@dataclass(eq=False)
class Runtime:
    """Everything a service call needs; built once per process by `make_runtime`."""

    config: dict[str, Any]
    db: Database
    plugins: pluggy.PluginManager
    operators: Mapping[str, Operator]
    snapshots: SnapshotCache
    assignments: AssignmentStore
    evaluator: Evaluator
    keys: KeyCache
    guardrails: Mapping[str, Any]
    clock: Callable[[], datetime] = utcnow
    # checks a flag's new definition must pass, from the domains above flags (which flags
    # may not import): (session, flag key, document before, document after) -> None or raise
    flag_checks: tuple[Callable[[Session, str, dict[str, Any], dict[str, Any]], None], ...] = ()

    @contextmanager
    def change(self, actor: str) -> Iterator[Tx]:
        """A write transaction; `track_event` hooks fire after it commits. Inside a
        `change_set` of this runtime (same thread), the change joins that transaction."""
        joined = _CHANGE_SET.get()
        if joined is not None and joined[0] is self:
            yield joined[1]
            joined[1].session.flush()
            return
        with self.db.write() as session:
            tx = Tx(session=session, actor=actor, now=self.clock())
            yield tx
            session.flush()
            events = [audit_to_dict(record) for record in tx.events]
            for event in events:  # every change is a notification too (webhooks on flag.update...)
                tx.emit(event["action"], {"audit": event}, environment=event.get("environment"))
        for event in events:
            self._notify(event)

    @contextmanager
    def change_set(self, actor: str) -> Iterator[Tx]:
        """One write transaction for many service calls: every `change` made inside it
        joins it, so they commit (or roll back) together; hooks fire after the commit."""
        with self.change(actor) as tx:
            token = _CHANGE_SET.set((self, tx))
            try:
                yield tx
            finally:
                _CHANGE_SET.reset(token)

    def _notify(self, event: dict[str, Any]) -> None:
        try:
            self.plugins.hook.track_event(event=event)
        except Exception:  # a notifier must never undo or block a committed write
            log.exception("track_event hook failed for %s", event.get("action"))

    def close(self) -> None:
        """Release connections (a forked child or a finished command)."""
        self.db.dispose()


def make_runtime(settings: Mapping[str, Any] | None = None, *, server: bool = False) -> Runtime:
    """Build a runtime from FLAGSHIP_* settings plus `settings` overrides.

    `server` tunes a long-running serving process (background WAL checkpoints, compiled
    snapshots kept out of GC scans); it starts nothing by itself.
    """
    from flagship.auth import KeyCache
    from flagship.config import load_config
    from flagship.experiments.service import check_flag_definition
    from flagship.experiments.store.assignments import make_assignment_store
    from flagship.plugins import guardrail_table, make_plugin_manager, operator_table
    from flagship.serving.cache import SnapshotCache
    from flagship.serving.evaluator import Evaluator

    config = load_config(settings)
    plugins = make_plugin_manager(config["PLUGINS"].split(","),
                                  entry_points=config.get("ENTRY_POINTS", True))
    operators = operator_table(plugins)
    db = Database(config["DATABASE_URL"], background_checkpoint=server,
                  revision_check=REVISION_CHECK_SECONDS if server else 0.0,
                  synchronous=config["SQLITE_SYNCHRONOUS"])
    snapshots = SnapshotCache(db, operators, settle_gc=server)
    assignments = make_assignment_store(db, config["REDIS_URL"])
    runtime = Runtime(config=config, db=db, plugins=plugins, operators=operators,
                      snapshots=snapshots, assignments=assignments,
                      evaluator=Evaluator(snapshots, assignments, utcnow), keys=KeyCache(),
                      guardrails=guardrail_table(plugins), flag_checks=(check_flag_definition,))
    # the evaluator reads runtime.clock at call time, so tests (and jobs) can move the clock
    runtime.evaluator.clock = lambda: runtime.clock()
    return runtime
