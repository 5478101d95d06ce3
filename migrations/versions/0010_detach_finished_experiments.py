"""finished experiments leave their flags

From this version an experiment that is stopped or reaches its end without a release
takes its (by then inert) experiment rule off its flag, so a finished experiment never
pins the flag: before, such a flag could not be deleted (its experiment could not be
deleted either, being kept for its results) nor could the rule be edited away. This
migration does the same for experiments that finished before: their rules leave the
current flag documents as a change like any other (the flag's version moves on, a
revision and an audit record by `system:migration`), and the store revision moves so
every snapshot is rebuilt. No schema change.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""
from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

from flagship.diff import json_diff

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

FINISHED = ("completed", "terminated")
ACTOR = "system:migration"


def upgrade() -> None:
    conn = op.get_bind()
    experiments = sa.table("experiments", sa.column("key", sa.String), sa.column("environment", sa.String),
                           sa.column("flag_key", sa.String), sa.column("status", sa.String))
    flags = sa.table("flags", sa.column("id", sa.Integer), sa.column("environment", sa.String),
                     sa.column("key", sa.String), sa.column("document", sa.JSON),
                     sa.column("version", sa.Integer), sa.column("updated_at", sa.DateTime(timezone=True)),
                     sa.column("updated_by", sa.String))
    revisions = sa.table("flag_revisions", sa.column("environment", sa.String), sa.column("flag_key", sa.String),
                         sa.column("version", sa.Integer), sa.column("action", sa.String),
                         sa.column("actor", sa.String), sa.column("created_at", sa.DateTime(timezone=True)),
                         sa.column("document", sa.JSON), sa.column("diff", sa.JSON))
    audit = sa.table("audit_log", sa.column("at", sa.DateTime(timezone=True)), sa.column("actor", sa.String),
                     sa.column("action", sa.String), sa.column("target_type", sa.String),
                     sa.column("target_key", sa.String), sa.column("environment", sa.String),
                     sa.column("before", sa.JSON), sa.column("after", sa.JSON))
    now = datetime.now(timezone.utc)
    finished: dict[tuple[str, str], set[str]] = {}
    for row in conn.execute(sa.select(experiments.c.environment, experiments.c.flag_key, experiments.c.key)
                            .where(experiments.c.status.in_(FINISHED))):
        finished.setdefault((row.environment, row.flag_key), set()).add(row.key)
    if not finished:
        return
    changed = 0
    for row in conn.execute(sa.select(flags.c.id, flags.c.environment, flags.c.key, flags.c.document,
                                      flags.c.version)).all():
        dead = finished.get((row.environment, row.key))
        document = row.document
        if not dead or not isinstance(document, dict):
            continue
        rules = document.get("rules") or []
        kept = [r for r in rules if not (isinstance(r, dict) and r.get("kind") == "experiment"
                                         and (r.get("params") or {}).get("experiment") in dead)]
        if len(kept) != len(rules):
            after, version = {**document, "rules": kept}, row.version + 1
            conn.execute(sa.update(flags).where(flags.c.id == row.id).values(
                document=after, version=version, updated_at=now, updated_by=ACTOR))
            conn.execute(sa.insert(revisions).values(
                environment=row.environment, flag_key=row.key, version=version, action="experiment",
                actor=ACTOR, created_at=now, document=after, diff=json_diff(document, after)))
            conn.execute(sa.insert(audit).values(
                at=now, actor=ACTOR, action="flag.experiment", target_type="flag", target_key=row.key,
                environment=row.environment, before=document, after=after))
            changed += 1
    if changed:
        conn.execute(sa.text("UPDATE meta SET snapshot_revision = snapshot_revision + 1 WHERE id = 1"))


def downgrade() -> None:
    pass  # the rules were inert; nothing to put back
