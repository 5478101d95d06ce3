"""hash salts, weight epochs, hourly sums, exposure counts, per-experiment data quality

Existing objects keep hashing as before: experiments get their salt (their key) written
out, release rules and layers already had theirs, and every salt in use is recorded in
hash_salts (the first owner wins where two objects shared one). The variant sums are
rebuilt hour by hour by the next aggregation round (aggregation_state is cleared);
exposure counts and per-experiment quality counters are filled from the history.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

SUMS = ("units", "sum", "sum_sq", "pre_sum", "pre_sum_sq", "cross", "den_sum", "den_sum_sq", "num_den")


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _utc(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _create_tables() -> None:
    op.create_table('hash_salts',
                    sa.Column('salt', sa.String(length=256), nullable=False),
                    sa.Column('owner_type', sa.String(length=32), nullable=False),
                    sa.Column('owner_key', sa.String(length=128), nullable=False),
                    sa.PrimaryKeyConstraint('salt'))
    op.create_table('exposure_counts',
                    sa.Column('experiment_key', sa.String(length=128), nullable=False),
                    sa.Column('variant', sa.String(length=64), nullable=False),
                    sa.Column('epoch', sa.Integer(), nullable=False),
                    sa.Column('period', sa.Integer(), nullable=False),
                    sa.Column('count', sa.Integer(), nullable=False),
                    sa.PrimaryKeyConstraint('experiment_key', 'variant', 'epoch', 'period'))
    op.create_table('experiment_quality',
                    sa.Column('experiment_key', sa.String(length=128), nullable=False),
                    sa.Column('hour', sa.DateTime(timezone=True), nullable=False),
                    sa.Column('kind', sa.String(length=16), nullable=False),
                    sa.Column('count', sa.Integer(), nullable=False),
                    sa.PrimaryKeyConstraint('experiment_key', 'hour', 'kind'))
    op.create_table('event_issues',
                    sa.Column('unit', sa.String(length=256), nullable=False),
                    sa.Column('hour', sa.DateTime(timezone=True), nullable=False),
                    sa.Column('kind', sa.String(length=16), nullable=False),
                    sa.Column('count', sa.Integer(), nullable=False),
                    sa.PrimaryKeyConstraint('unit', 'hour', 'kind'))
    op.drop_table('variant_sums')
    op.create_table('variant_sums',
                    sa.Column('experiment_key', sa.String(length=128), nullable=False),
                    sa.Column('metric_key', sa.String(length=128), nullable=False),
                    sa.Column('variant', sa.String(length=64), nullable=False),
                    sa.Column('period', sa.Integer(), nullable=False),
                    *[sa.Column(name, sa.Float(), nullable=False) for name in SUMS],
                    sa.PrimaryKeyConstraint('experiment_key', 'metric_key', 'variant', 'period'))
    op.drop_table('sequential_looks')
    with op.batch_alter_table('experiments') as batch_op:
        batch_op.add_column(sa.Column('epochs', sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
    with op.batch_alter_table('exposures') as batch_op:
        batch_op.add_column(sa.Column('epoch', sa.Integer(), nullable=False, server_default='1'))


def _salts(conn: sa.Connection) -> None:
    owners: dict[str, tuple[str, str]] = {}

    def claim(salt: str, kind: str, key: str) -> None:
        owners.setdefault(salt, (kind, key))

    for key, document in conn.execute(sa.text("SELECT key, document FROM flags ORDER BY key")):
        doc = _json(document)
        salt = doc.get("salt") or key
        claim(salt, "flag", key)
        for rule in doc.get("rules", []):
            if rule.get("kind") == "release":
                claim((rule.get("params") or {}).get("salt") or f"{salt}:release", "flag", key)
    for key, salt in conn.execute(sa.text("SELECT key, salt FROM layers ORDER BY key")):
        claim(salt, "layer", key)
    for key, document in conn.execute(sa.text("SELECT key, document FROM experiments ORDER BY key")):
        claim(_json(document).get("salt") or key, "experiment", key)
    if owners:
        conn.execute(sa.text("INSERT INTO hash_salts (salt, owner_type, owner_key) VALUES (:s, :t, :k)"),
                     [{"s": s, "t": t, "k": k} for s, (t, k) in owners.items()])


def _experiments(conn: sa.Connection) -> None:
    rows = conn.execute(sa.text("SELECT id, key, document, started_at FROM experiments")).all()
    for id_, key, document, started_at in rows:
        doc = _json(document)
        doc.setdefault("salt", key)  # what the variant hash used until now
        epochs = []
        if started_at is not None:
            epochs = [{"epoch": 1, "since": _utc(started_at).isoformat(),
                       "weights": {v["variant"]: v["weight"] for v in doc["variants"]}}]
        conn.execute(sa.text("UPDATE experiments SET document = :d, epochs = :e WHERE id = :i"),
                     {"d": json.dumps(doc), "e": json.dumps(epochs), "i": id_})


def _history(conn: sa.Connection) -> None:
    counts: dict[tuple, int] = {}
    for key, variant, at in conn.execute(sa.text(
            "SELECT experiment_key, variant, assigned_at FROM exposures WHERE aggregated")):
        slot = (key, variant, int(_utc(at).timestamp() // 3600))
        counts[slot] = counts.get(slot, 0) + 1
    if counts:
        conn.execute(sa.text("INSERT INTO exposure_counts (experiment_key, variant, epoch, period, count) "
                             "VALUES (:k, :v, 1, :p, :n)"),
                     [{"k": k, "v": v, "p": p, "n": n} for (k, v, p), n in counts.items()])
    quality: dict[tuple, int] = {}
    pairs = conn.execute(sa.text(
        "SELECT x.experiment_key, e.timestamp, e.received_at, x.assigned_at FROM events e "
        "JOIN exposures x ON x.unit = e.unit WHERE e.aggregated AND x.aggregated"))
    for key, ts, received, assigned in pairs:
        ts, received = _utc(ts), _utc(received)
        if ts < _utc(assigned):
            continue
        hour = received.replace(minute=0, second=0, microsecond=0)
        for kind in (("accepted", "late") if (received - ts).total_seconds() > 3600 else ("accepted",)):
            quality[(key, hour, kind)] = quality.get((key, hour, kind), 0) + 1
    if quality:
        table = sa.table("experiment_quality", sa.column("experiment_key"),
                         sa.column("hour", sa.DateTime(timezone=True)), sa.column("kind"), sa.column("count"))
        conn.execute(table.insert(), [{"experiment_key": k, "hour": h, "kind": kind, "count": n}
                                      for (k, h, kind), n in quality.items()])
    conn.execute(sa.text("DELETE FROM aggregation_state"))  # rebuild unit rows and hourly sums


def upgrade() -> None:
    _create_tables()
    conn = op.get_bind()
    _salts(conn)
    _experiments(conn)
    _history(conn)


def downgrade() -> None:
    # the hourly sums collapse back into one row per variant; epochs and salts are dropped
    # (experiments keep "salt" in their document, which 0005 ignores)
    op.create_table('variant_sums_old',
                    sa.Column('experiment_key', sa.String(length=128), nullable=False),
                    sa.Column('metric_key', sa.String(length=128), nullable=False),
                    sa.Column('variant', sa.String(length=64), nullable=False),
                    *[sa.Column(name, sa.Float(), nullable=False) for name in SUMS[1:]],
                    sa.PrimaryKeyConstraint('experiment_key', 'metric_key', 'variant'))
    columns = ", ".join(f'"{name}"' for name in SUMS[1:])
    totals = ", ".join(f'SUM("{name}")' for name in SUMS[1:])
    op.execute(f"INSERT INTO variant_sums_old (experiment_key, metric_key, variant, {columns}) "
               f"SELECT experiment_key, metric_key, variant, {totals} FROM variant_sums "
               "GROUP BY experiment_key, metric_key, variant")
    op.drop_table('variant_sums')
    op.rename_table('variant_sums_old', 'variant_sums')
    op.create_table('sequential_looks',
                    sa.Column('experiment_key', sa.String(length=128), nullable=False),
                    sa.Column('metric_key', sa.String(length=128), nullable=False),
                    sa.Column('variant', sa.String(length=64), nullable=False),
                    sa.Column('tau2', sa.Float(), nullable=False),
                    sa.Column('p_value', sa.Float(), nullable=False),
                    sa.Column('ci_low', sa.Float(), nullable=False),
                    sa.Column('ci_high', sa.Float(), nullable=False),
                    sa.Column('looks', sa.Integer(), nullable=False),
                    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
                    sa.PrimaryKeyConstraint('experiment_key', 'metric_key', 'variant'))
    with op.batch_alter_table('exposures') as batch_op:
        batch_op.drop_column('epoch')
    with op.batch_alter_table('experiments') as batch_op:
        batch_op.drop_column('epochs')
    for table in ('event_issues', 'experiment_quality', 'exposure_counts', 'hash_salts'):
        op.drop_table(table)
