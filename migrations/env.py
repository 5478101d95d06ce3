"""Alembic environment: the URL comes from the caller (`flagship db upgrade`)."""
from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlmodel import SQLModel

import flagship.db  # noqa: F401  (each import registers its tables on SQLModel.metadata)
import flagship.experiments.store.tables  # noqa: F401
import flagship.flags.schedule_store  # noqa: F401
import flagship.flags.store  # noqa: F401
import flagship.rollout.notify_store  # noqa: F401
import flagship.rollout.store  # noqa: F401
import flagship.store  # noqa: F401

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(config.get_section(config.config_ini_section, {}),
                                     prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        # batch mode lets later migrations ALTER tables on SQLite too
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
