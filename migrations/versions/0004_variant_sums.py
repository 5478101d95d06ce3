"""variant sums

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('variant_sums',
    sa.Column('experiment_key', sa.String(length=128), nullable=False),
    sa.Column('metric_key', sa.String(length=128), nullable=False),
    sa.Column('variant', sa.String(length=64), nullable=False),
    sa.Column('sum', sa.Float(), nullable=False),
    sa.Column('sum_sq', sa.Float(), nullable=False),
    sa.Column('pre_sum', sa.Float(), nullable=False),
    sa.Column('pre_sum_sq', sa.Float(), nullable=False),
    sa.Column('cross', sa.Float(), nullable=False),
    sa.Column('den_sum', sa.Float(), nullable=False),
    sa.Column('den_sum_sq', sa.Float(), nullable=False),
    sa.Column('num_den', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('experiment_key', 'metric_key', 'variant')
    )


def downgrade() -> None:
    op.drop_table('variant_sums')
