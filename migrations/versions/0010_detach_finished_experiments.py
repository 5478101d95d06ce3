"""finished experiments leave their flags

From this version an experiment that is stopped or reaches its end without a release
takes its (by then inert) experiment rule off its flag, so a finished experiment never
pins the flag: before, such a flag could not be deleted (its experiment could not be
deleted either, being kept for its results) nor could the rule be edited away. This
migration does the same for experiments that finished before: their rules leave the
current flag documents (the flags' history is untouched), and the store revision moves so
every snapshot is rebuilt. No schema change.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

FINISHED = ("completed", "terminated")


def upgrade() -> None:
    conn = op.get_bind()
    experiments = sa.table("experiments", sa.column("key", sa.String), sa.column("environment", sa.String),
                           sa.column("flag_key", sa.String), sa.column("status", sa.String))
    flags = sa.table("flags", sa.column("id", sa.Integer), sa.column("environment", sa.String),
                     sa.column("key", sa.String), sa.column("document", sa.JSON))
    finished: dict[tuple[str, str], set[str]] = {}
    for row in conn.execute(sa.select(experiments.c.environment, experiments.c.flag_key, experiments.c.key)
                            .where(experiments.c.status.in_(FINISHED))):
        finished.setdefault((row.environment, row.flag_key), set()).add(row.key)
    if not finished:
        return
    changed = 0
    for row in conn.execute(sa.select(flags.c.id, flags.c.environment, flags.c.key, flags.c.document)).all():
        dead = finished.get((row.environment, row.key))
        document = row.document
        if not dead or not isinstance(document, dict):
            continue
        rules = document.get("rules") or []
        kept = [r for r in rules if not (isinstance(r, dict) and r.get("kind") == "experiment"
                                         and (r.get("params") or {}).get("experiment") in dead)]
        if len(kept) != len(rules):
            conn.execute(sa.update(flags).where(flags.c.id == row.id).values(document={**document, "rules": kept}))
            changed += 1
    if changed:
        conn.execute(sa.text("UPDATE meta SET snapshot_revision = snapshot_revision + 1 WHERE id = 1"))


def downgrade() -> None:
    pass  # the rules were inert; nothing to put back
