"""The per-app runtime that services work against: store, plugins, caches, clock."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterator

import pluggy
from sqlalchemy.orm import Session

from flagship.audit import AuditRecord, audit_to_dict
from flagship.db import Database, utcnow

log = logging.getLogger(__name__)


@dataclass
class Tx:
    """One write transaction: its session, who acts, when, and the audit records made."""

    session: Session
    actor: str
    now: datetime
    events: list[AuditRecord] = field(default_factory=list)

    def audit(self, action: str, target_type: str, target_key: str,
              before: Any = None, after: Any = None) -> AuditRecord:
        """Record a mutation in the audit log, inside this transaction."""
        record = AuditRecord(at=self.now, actor=self.actor, action=action,
                             target_type=target_type, target_key=target_key,
                             before=before, after=after)
        self.session.add(record)
        self.events.append(record)
        return record


@dataclass
class Runtime:
    """Everything a service call needs; built once per app by `create_app`."""

    db: Database
    plugins: pluggy.PluginManager
    operators: dict[str, Any]
    config: dict[str, Any]
    clock: Callable[[], datetime] = utcnow
    caches: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def change(self, actor: str) -> Iterator[Tx]:
        """A write transaction; `track_event` hooks fire after it commits."""
        with self.db.write() as session:
            tx = Tx(session=session, actor=actor, now=self.clock())
            yield tx
            session.flush()
            events = [audit_to_dict(record) for record in tx.events]
        for event in events:
            self._notify(event)

    def _notify(self, event: dict[str, Any]) -> None:
        try:
            self.plugins.hook.track_event(event=event)
        except Exception:  # a notifier must never undo or block a committed write
            log.exception("track_event hook failed for %s", event.get("action"))
