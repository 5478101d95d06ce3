"""events, event counters, metrics, unit metrics, aggregation state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('aggregation_state',
    sa.Column('experiment_key', sa.String(length=128), nullable=False),
    sa.Column('signature', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('experiment_key')
    )
    op.create_table('event_counters',
    sa.Column('hour', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('hour', 'kind')
    )
    op.create_table('events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('unit', sa.String(length=256), nullable=False),
    sa.Column('event', sa.String(length=128), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('timestamp', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('properties', sa.JSON(), nullable=True),
    sa.Column('aggregated', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id')
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        # the aggregator's queue: a partial index holds only the rows still to fold in
        batch_op.create_index('ix_events_pending', ['id'], unique=False,
                              sqlite_where=sa.text('NOT aggregated'),
                              postgresql_where=sa.text('NOT aggregated'))
        batch_op.create_index(batch_op.f('ix_events_event'), ['event'], unique=False)
        batch_op.create_index(batch_op.f('ix_events_unit'), ['unit'], unique=False)

    op.create_table('metrics',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('event', sa.String(length=128), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('denominator_event', sa.String(length=128), nullable=True),
    sa.Column('direction', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('winsorize_percentile', sa.Float(), nullable=True),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_metrics_event'), ['event'], unique=False)

    op.create_table('unit_metrics',
    sa.Column('experiment_key', sa.String(length=128), nullable=False),
    sa.Column('metric_key', sa.String(length=128), nullable=False),
    sa.Column('unit', sa.String(length=256), nullable=False),
    sa.Column('variant', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('post_sum', sa.Float(), nullable=False),
    sa.Column('post_count', sa.Integer(), nullable=False),
    sa.Column('den_sum', sa.Float(), nullable=False),
    sa.Column('den_count', sa.Integer(), nullable=False),
    sa.Column('pre_sum', sa.Float(), nullable=False),
    sa.Column('pre_count', sa.Integer(), nullable=False),
    sa.Column('pre_den_sum', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('experiment_key', 'metric_key', 'unit'),
    # clustered by (experiment, metric) on SQLite: sufficient statistics are one range scan
    sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table('unit_metrics')
    with op.batch_alter_table('metrics', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_metrics_event'))

    op.drop_table('metrics')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_events_unit'))
        batch_op.drop_index(batch_op.f('ix_events_event'))
        batch_op.drop_index('ix_events_pending')

    op.drop_table('events')
    op.drop_table('event_counters')
    op.drop_table('aggregation_state')
