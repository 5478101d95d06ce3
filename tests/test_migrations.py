"""The migrations build exactly the schema the models declare, on SQLite and PostgreSQL."""
from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import flagship.db  # noqa: F401  (the imports register every table on SQLModel.metadata)
import flagship.experiments.store.tables  # noqa: F401
import flagship.flags.schedule_store  # noqa: F401
import flagship.flags.store  # noqa: F401
import flagship.rollout.notify_store  # noqa: F401
import flagship.rollout.store  # noqa: F401
import flagship.store  # noqa: F401


def test_models_and_migrations_agree(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_the_comparison_sees_a_difference(database_url: str) -> None:
    extra = sa.MetaData()
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(extra)
    sa.Table("not_migrated", extra, sa.Column("id", sa.Integer, primary_key=True))
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), extra)
    finally:
        engine.dispose()
    assert [d[0] for d in differences] == ["add_table"] and differences[0][1].name == "not_migrated"
