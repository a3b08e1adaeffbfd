"""Alembic environment: runs migrations against the URL given by app.cli.migrate (never a hard-coded one)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from app.core import models  # noqa: F401  (registers every table on Base.metadata)
from app.core.db import Base
from app.core.settings import database_url_for_sqlalchemy

config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    """Emit SQL without a database connection (`alembic upgrade --sql`)."""
    url = database_url_for_sqlalchemy(config.get_main_option("sqlalchemy.url") or "")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Apply migrations over a connection."""
    url = database_url_for_sqlalchemy(config.get_main_option("sqlalchemy.url") or "")
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        # render_as_batch lets ALTERs work on SQLite, which rebuilds tables instead.
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True, compare_type=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
