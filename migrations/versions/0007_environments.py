"""environments: per-environment flag targeting, segments, layers, experiments and events

Everything that exists moves into the environment `production`, which a fresh install
also starts with, so every current behaviour and URL keeps working. Flags, their
revisions and segments are unique per environment (their tables are rebuilt with the
new keys); layers, experiments and events gain an environment column; API keys may be
bound to one; audit records name the environment of the change.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""
from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

ENV = sa.String(length=128)


def _environments() -> None:
    table = op.create_table(
        'environments',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(length=128), nullable=False),
        sa.Column('name', sa.String(), nullable=False),
        sa.Column('colour', sa.String(length=16), nullable=False),
        sa.Column('requires_approval', sa.Boolean(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_by', sa.String(), nullable=False),
        sa.PrimaryKeyConstraint('id'), sa.UniqueConstraint('key'))
    now = datetime.now(timezone.utc)
    op.bulk_insert(table, [{"id": 1, "key": "production", "name": "Production", "colour": "#cf222e",
                            "requires_approval": False, "position": 0, "version": 1,
                            "created_at": now, "updated_at": now, "updated_by": "migration"}])


def _rebuild(name: str, columns: list[sa.Column], constraints: list, copy: list[str],
             indexes: list[tuple[str, list[str]]]) -> None:
    """Recreate `name` with an environment column (PostgreSQL and SQLite alike)."""
    op.create_table(f'{name}_new', *columns, *constraints)
    names = ", ".join(copy)
    op.execute(f"INSERT INTO {name}_new (environment, {names}) SELECT 'production', {names} FROM {name}")
    op.drop_table(name)
    op.rename_table(f'{name}_new', name)
    for index, cols in indexes:
        op.create_index(index, name, cols)


def _flags() -> None:
    common = ['id', 'key', 'version', 'document', 'created_at', 'updated_at', 'updated_by']
    _rebuild('flags', [
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('environment', ENV, nullable=False),
        sa.Column('key', sa.String(length=128), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('tags', sa.String(), nullable=False),
        sa.Column('description', sa.String(), nullable=False),
        sa.Column('document', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_by', sa.String(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_by', sa.String(), nullable=False)],
        [sa.PrimaryKeyConstraint('id', name='pk_flags'),
         sa.UniqueConstraint('environment', 'key', name='uq_flags_environment_key')],
        common + ['enabled', 'tags', 'description', 'created_by'], [('ix_flags_key', ['key'])])
    _rebuild('flag_revisions', [
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('environment', ENV, nullable=False),
        sa.Column('flag_key', sa.String(length=128), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('action', sa.String(), nullable=False),
        sa.Column('actor', sa.String(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('document', sa.JSON(), nullable=False),
        sa.Column('diff', sa.JSON(), nullable=False)],
        [sa.PrimaryKeyConstraint('id', name='pk_flag_revisions'),
         sa.UniqueConstraint('environment', 'flag_key', 'version', name='uq_flag_revisions_version')],
        ['id', 'flag_key', 'version', 'action', 'actor', 'created_at', 'document', 'diff'],
        [('ix_flag_revisions_flag_key', ['flag_key'])])
    _rebuild('segments', [
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('environment', ENV, nullable=False),
        sa.Column('key', sa.String(length=128), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('document', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_by', sa.String(), nullable=False)],
        [sa.PrimaryKeyConstraint('id', name='pk_segments'),
         sa.UniqueConstraint('environment', 'key', name='uq_segments_environment_key')],
        ['id', 'key', 'version', 'document', 'created_at', 'updated_at', 'updated_by'], [])


def _columns() -> None:
    for table in ('layers', 'experiments', 'events'):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column('environment', ENV, nullable=False, server_default='production'))
            batch_op.create_index(f'ix_{table}_environment', ['environment'])
    for table in ('api_keys', 'audit_log'):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column('environment', ENV, nullable=True))


def _sequences() -> None:
    # the rebuilt tables keep their ids; PostgreSQL's new sequences must start after them
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table in ('flags', 'flag_revisions', 'segments', 'environments'):
        op.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                   f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)")


def upgrade() -> None:
    _environments()
    _flags()
    _columns()
    _sequences()


def downgrade() -> None:
    conn = op.get_bind()
    extra = conn.execute(sa.text("SELECT count(*) FROM flags WHERE environment <> 'production'")).scalar()
    if extra:
        raise RuntimeError("cannot downgrade: environments other than production hold flags; "
                           "delete those environments first")
    for table in ('api_keys', 'audit_log', 'layers', 'experiments', 'events'):
        with op.batch_alter_table(table) as batch_op:
            if table in ('layers', 'experiments', 'events'):
                batch_op.drop_index(f'ix_{table}_environment')
            batch_op.drop_column('environment')
    for table, unique in (('flags', 'key'), ('segments', 'key')):
        with op.batch_alter_table(table, recreate='always') as batch_op:
            batch_op.drop_constraint(f'uq_{table}_environment_key', type_='unique')
            batch_op.drop_column('environment')
            batch_op.create_unique_constraint(f'uq_{table}_{unique}', [unique])
    with op.batch_alter_table('flag_revisions', recreate='always') as batch_op:
        batch_op.drop_constraint('uq_flag_revisions_version', type_='unique')
        batch_op.drop_column('environment')
        batch_op.create_unique_constraint('uq_flag_revisions_key_version', ['flag_key', 'version'])
    op.drop_table('environments')
