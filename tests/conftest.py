"""Test fixtures: real SQLite and PostgreSQL databases, a real Redis, signed Twilio requests.

Every database-backed test runs twice, once per backend. PostgreSQL comes from TEST_POSTGRES_URL
(default postgresql://postgres@127.0.0.1:5432/test); a fresh database is created per run. When it is not
reachable the PostgreSQL half is skipped locally but fails under CI (CI=true), so CI cannot pass without it.
Redis comes from TEST_REDIS_URL (default redis://127.0.0.1:6379); each test session claims a free database
number 1-15 with a lock key (so parallel runs do not flush each other's queues), flushed before each test.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from app.cli.migrate import upgrade
from app.core import db, tenants
from app.core.db import Base
from app.core.models import Tenant
from app.core.settings import Settings, database_url_for_sqlalchemy
from app.web import create_app
from connectors.local import LocalConnector
from jobs.worker import PromptUnsubscribe
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN, TwilioPoster

TEST_KEY = "x9-0L2yNRxbqhffA2mIuM2AHHVUAsp3ZmLmHtiU-Eo8="  # a Fernet key used only by tests
REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PUBLIC_BASE = "https://switchboard.example.com"


@contextlib.contextmanager
def scratch_postgres(prefix: str = "switchboard_test") -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards (skipped locally, required under CI)."""
    admin = create_engine(database_url_for_sqlalchemy(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is required in CI: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}")
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated, empty database of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
        upgrade(url)
        yield url
        db.dispose()
    else:
        with scratch_postgres() as url:
            upgrade(url)
            yield url
            db.dispose()  # before the database is dropped


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number this test session has to itself."""
    base = REDIS_BASE.rstrip("/")
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    for number in range(1, 16):
        conn = Redis.from_url(f"{base}/{number}")
        if conn.set("switchboard-test-session", token, nx=True, ex=3600):
            try:
                yield f"{base}/{number}"
            finally:
                if conn.get("switchboard-test-session") == token.encode():
                    conn.delete("switchboard-test-session")
                conn.close()
            return
        conn.close()
    pytest.fail("no free Redis database (1-15) for the test session")


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[Redis]:
    """A real Redis, emptied for the test (the session's claim on the database survives)."""
    conn = Redis.from_url(redis_url)
    _flush(conn)
    yield conn
    _flush(conn)
    conn.close()


def _flush(conn: Redis) -> None:
    keys = [k for k in conn.scan_iter(count=1000) if k != b"switchboard-test-session"]
    if keys:
        conn.delete(*keys)


@pytest.fixture
def settings(database_url: str, redis_url: str, redis_conn: Redis) -> Settings:
    """Settings for a test: the backend under test, the test Redis, retries without waiting."""
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        secret_keys=(TEST_KEY,),
        public_base_url=PUBLIC_BASE,
        sweep_after_seconds=0,
        job_retry_intervals=(0, 0, 0),
        job_timeout_seconds=30,
        log_level="WARNING",
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[Any]:
    """The Flask app on empty tables."""
    application = create_app(settings)
    with db.transaction() as s:
        for table in reversed(Base.metadata.sorted_tables):
            s.execute(table.delete())
    yield application


@pytest.fixture
def client(app: Any) -> Any:
    """A test client."""
    return app.test_client()


@pytest.fixture
def tenant(app: Any) -> Tenant:
    """The fixture tenant: Twilio account AC…01 with the fixtures' auth token, one number, three users,
    and Jordan Rivera (+15555550123, owned by Sam) in the built-in CRM."""
    return make_tenant("acme", FIXTURE_ACCOUNT, FIXTURE_TOKEN)


def make_tenant(
    name: str,
    account: str,
    token: str,
    crm: str = "local",
    number: str = "+15555550100",
    rep_phone: str = "+15555550199",
) -> Tenant:
    """Provision a tenant the way the CLI does."""
    with db.transaction() as s:
        t = tenants.add_tenant(s, name, account_sid=account, auth_token=token, crm=crm)
        tenants.add_number(s, t, number)
        tenants.add_user(
            s,
            t,
            name="Avery Reyes",
            email=f"avery@{name}.example",
            phone=rep_phone,
            default=True,
            crm_owner_id=f"avery@{name}.example",
        )
        tenants.add_user(
            s,
            t,
            name="Sam Patel",
            email=f"sam@{name}.example",
            phone="+15555550198",
            crm_owner_id=f"sam@{name}.example",
        )
        tenants.add_user(
            s,
            t,
            name="Casey Morgan",
            email=f"casey@{name}.example",
            phone=None,
            crm_owner_id=f"casey@{name}.example",
        )
    if crm in ("local", "flaky"):
        LocalConnector(t).add_contact(
            "Jordan Rivera", ["+15555550123"], "jordan.rivera@example.net", f"sam@{name}.example"
        )
    return t


@pytest.fixture
def twilio(client: Any) -> TwilioPoster:
    """Posts signed Twilio webhooks to the app."""
    return TwilioPoster(client, PUBLIC_BASE, FIXTURE_TOKEN)


class CountingWorker(PromptUnsubscribe, SimpleWorker):
    """RQ's in-process worker, counting the jobs it executes (retries included); its burst returns at once
    (PromptUnsubscribe: RQ's own could wait a minute for its pubsub thread)."""

    executed = 0

    def execute_job(self, job: Any, queue: Queue) -> Any:
        self.executed += 1
        return super().execute_job(job, queue)


@pytest.fixture
def run_worker(settings: Settings, redis_conn: Redis) -> Any:
    """Drain the queue with a real RQ worker (in this process) and return how many jobs it ran."""

    def drain() -> int:
        q = Queue(settings.queue_name, connection=redis_conn)
        worker = CountingWorker([q], connection=redis_conn)
        worker.work(burst=True, with_scheduler=False, logging_level="WARNING")
        return worker.executed

    return drain


def count(model: Any, *where: Any) -> int:
    """Rows of a table, optionally filtered."""
    with db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


FIXTURES = Path(__file__).parent / "fixtures" / "twilio"
