"""Audit log use cases: every mutation is recorded by `Tx.audit`; this reads them back."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from flagship import store
from flagship.runtime import Runtime


def list_audit(runtime: Runtime, *, page: int = 1, per_page: int = 50, actor: str | None = None,
               action: str | None = None, target_type: str | None = None, target: str | None = None,
               environment: str | None = None, since: datetime | None = None, until: datetime | None = None) -> tuple[list[dict[str, Any]], int]:
    """One page of audit records, newest first, and the total that match the filters."""
    with runtime.db.session() as session:
        rows, total = store.query_audit(session, actor=actor, action=action, target_type=target_type,
                                        target=target, environment=environment, since=since, until=until,
                                        offset=(page - 1) * per_page, limit=per_page)
        return [store.audit_to_dict(row) for row in rows], total
