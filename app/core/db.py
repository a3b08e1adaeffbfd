"""Database engine and sessions (SQLAlchemy 2), shared by the web app, the worker and the CLI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.types import TypeDecorator

from app.core.settings import database_url_for_sqlalchemy


class Base(DeclarativeBase):
    """Declarative base for every table."""


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite forgets the zone, PostgreSQL keeps it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


_engine: Engine | None = None
_url: str | None = None


def _sqlite_pragmas(engine: Engine) -> None:
    # Several gunicorn and RQ processes share one SQLite file: WAL lets readers run beside the writer, the
    # busy timeout makes writers queue instead of failing, and BEGIN IMMEDIATE takes the write lock up front
    # so a read-then-write transaction cannot fail half way with SQLITE_BUSY_SNAPSHOT.
    # https://docs.sqlalchemy.org/en/20/dialects/sqlite.html#serializable-isolation-savepoints-transactional-ddl
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


PING_AFTER_IDLE = 10.0  # seconds a pooled connection may sit unused before checkout tests it


def _ping_when_idle(engine: Engine) -> None:
    # pool_pre_ping costs a round trip on every checkout (every webhook); a connection used within the last
    # PING_AFTER_IDLE seconds is taken as alive, and one that died anyway fails its statement, which
    # invalidates the pool (SQLAlchemy's disconnect handling) and the ledger's retry gets a fresh one.
    # https://docs.sqlalchemy.org/en/20/core/pooling.html#disconnect-handling-pessimistic
    import time

    from sqlalchemy import exc

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["last_used"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("last_used", 0.0) < PING_AFTER_IDLE:
            return
        try:
            cur = dbapi_conn.cursor()
            cur.execute("SELECT 1")
            cur.close()
            dbapi_conn.rollback()
        except Exception as err:
            raise exc.DisconnectionError() from err  # the pool retries with a new connection


def configure(url: str) -> Engine:
    """Point the shared engine and session factory at `url` (idempotent for the same URL)."""
    global _engine, _url
    if _engine is not None and _url == url:
        return _engine
    dispose()
    sa_url = database_url_for_sqlalchemy(url)
    if sa_url.startswith("sqlite"):
        _ensure_sqlite_dir(sa_url)
        engine = create_engine(sa_url, connect_args={"check_same_thread": False, "timeout": 10})
        _sqlite_pragmas(engine)
    else:
        engine = create_engine(sa_url, pool_size=5, max_overflow=10, pool_recycle=1800)
        _ping_when_idle(engine)
    _engine, _url = engine, url
    return engine


def _ensure_sqlite_dir(sa_url: str) -> None:
    from pathlib import Path

    path = sa_url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


class NotConfigured(RuntimeError):
    """The database was used before the process's entry point configured it."""


def engine() -> Engine:
    """The configured engine (NotConfigured if the process's entry point has not configured one)."""
    if _engine is None:
        raise NotConfigured(
            "the database is not configured: the entry point must call app.core.bootstrap.configure()"
        )
    return _engine


def _after_fork_in_child() -> None:
    # RQ forks a work horse per job: the child must not reuse the parent's pooled sockets. Dropping the
    # pool without closing leaves the parent's connections intact.
    # https://docs.sqlalchemy.org/en/20/core/pooling.html#using-connection-pools-with-multiprocessing-or-os-fork
    if _engine is not None:
        _engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def dispose() -> None:
    """Drop all pooled connections (tests switch databases; forked workers must not share sockets)."""
    global _engine, _url
    if _engine is not None:
        _engine.dispose()
    _engine, _url = None, None


@contextmanager
def transaction() -> Iterator[Session]:
    """A short unit of work on a fresh session: commit on success, roll back on error."""
    s = Session(bind=engine(), expire_on_commit=False)
    try:
        yield s
        s.commit()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()
