"""layers, experiments, experiment revisions, exposures

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('experiment_revisions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_key', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('diff', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('experiment_key', 'version')
    )
    with op.batch_alter_table('experiment_revisions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_experiment_revisions_experiment_key'), ['experiment_key'], unique=False)

    op.create_table('experiments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('flag_key', sa.String(length=128), nullable=False),
    sa.Column('layer_key', sa.String(length=128), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.Column('ranges', sa.JSON(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_experiments_flag_key'), ['flag_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_experiments_layer_key'), ['layer_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_experiments_status'), ['status'], unique=False)

    op.create_table('exposures',
    sa.Column('experiment_key', sa.String(length=128), nullable=False),
    sa.Column('unit', sa.String(length=256), nullable=False),
    sa.Column('variant', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('layer_key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('assigned_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('aggregated', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.PrimaryKeyConstraint('experiment_key', 'unit'),
    # clustered by experiment on SQLite: counting an experiment's units reads contiguous rows
    sqlite_with_rowid=False,
    )
    with op.batch_alter_table('exposures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exposures_unit'), ['unit'], unique=False)
        batch_op.create_index('ix_exposures_pending', ['experiment_key', 'unit'], unique=False,
                              sqlite_where=sa.text('NOT aggregated'),
                              postgresql_where=sa.text('NOT aggregated'))

    op.create_table('layers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('salt', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )


def downgrade() -> None:
    op.drop_table('layers')
    with op.batch_alter_table('exposures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exposures_unit'))

    op.drop_table('exposures')
    with op.batch_alter_table('experiments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_experiments_status'))
        batch_op.drop_index(batch_op.f('ix_experiments_layer_key'))
        batch_op.drop_index(batch_op.f('ix_experiments_flag_key'))

    op.drop_table('experiments')
    with op.batch_alter_table('experiment_revisions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_experiment_revisions_experiment_key'))

    op.drop_table('experiment_revisions')
