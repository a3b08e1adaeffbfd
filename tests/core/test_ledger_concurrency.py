"""The ack path under races and cache changes: real connections, real threads, real Redis.

Two first callbacks of one call racing each other make one interaction with both facts folded; a
duplicate delivery racing itself leaves one event row; a tenant changed by another process (a direct
database change plus the Redis token that process's commit replaces) is seen within 1 s; a Redis
emptied under the app (FLUSHDB + SCRIPT FLUSH, what FLUSHALL does to our keys) still gets a 2xx.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from rq import Queue
from rq.job import Job, JobStatus
from sqlalchemy import create_engine, func, insert, select, update

from app.core import ledger, queue, tenants
from app.core.interactions import Event
from app.core.models import Interaction, Tenant, TenantNumber, WebhookEvent
from app.core.settings import database_url_for_sqlalchemy
from tests.signing import FIXTURE_ACCOUNT, fixture_params
from webhooks.twilio import parse_form


def _event(stream: str, fixture: str, kind: str = "", **changes: str) -> Event:
    form = {**fixture_params(fixture), **changes}
    return parse_form(stream, kind, form, {k: [v] for k, v in form.items()})


def _race(tenant: Tenant, events: list[Event]) -> list[ledger.Recorded]:
    """Record the events at the same moment, each on its own thread and database connection."""
    barrier = threading.Barrier(len(events))
    out: list[Any] = [None] * len(events)

    def run(i: int) -> None:
        barrier.wait()
        try:
            out[i] = ledger.record(tenant, events[i])
        except Exception as exc:  # surfaced by the assertion below
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(events))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(r, ledger.Recorded) for r in out), out
    return out


def _count(model: Any, *where: Any) -> int:
    from app.core import db

    with db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_two_first_callbacks_of_one_call_make_one_interaction(tenant: Tenant) -> None:
    call = "CA" + uuid.uuid4().hex
    for _round in range(5):  # a race is a matter of luck: run it a few times
        call = "CA" + uuid.uuid4().hex
        # the parent's status callback and its child leg's: each brings facts the other lacks
        parent = _event("call-status", "voice__status_answered", CallSid=call)
        child = _event(
            "call-status", "voice__child_leg_completed", ParentCallSid=call, CallSid="CA" + uuid.uuid4().hex
        )
        results = _race(tenant, [parent, child])
        assert {r.duplicate for r in results} == {False}
        assert len({r.interaction_id for r in results}) == 1
        assert sorted(r.version for r in results) == [1, 2]
        assert _count(Interaction, Interaction.provider_id == call) == 1
        assert _count(WebhookEvent, WebhookEvent.interaction_id == results[0].interaction_id) == 2
    from app.core import db

    with db.transaction() as s:
        row = s.scalar(select(Interaction).where(Interaction.provider_id == call))
        assert row is not None
        # both facts folded, whichever committed first
        assert row.facts["parent_status"]["status"] == "in-progress" and len(row.facts["legs"]) == 1
        assert row.version == 2 and row.sync_state == "pending"


def test_a_duplicate_delivery_racing_itself_is_recorded_once(tenant: Tenant) -> None:
    for _round in range(5):
        sid = "SM" + uuid.uuid4().hex
        text = _event("sms", "sms__inbound", MessageSid=sid, SmsMessageSid=sid, SmsSid=sid)
        results = _race(tenant, [text, text, text])
        assert sorted(r.duplicate for r in results) == [False, True, True]
        assert len({r.interaction_id for r in results}) == 1
        assert _count(WebhookEvent, WebhookEvent.event_key == f"sms:{sid}") == 1
        assert _count(Interaction, Interaction.provider_id == sid) == 1


def _other_process(database_url: str) -> Any:
    """A second engine, as another process (the CLI on another machine) would have."""
    return create_engine(database_url_for_sqlalchemy(database_url))


def test_tenant_cache_follows_an_auth_token_changed_in_another_process(
    tenant: Tenant, database_url: str, redis_conn: Any
) -> None:
    first = tenants.tenant_for_twilio_account(FIXTURE_ACCOUNT)
    assert first is not None
    assert tenants.tenant_for_twilio_account(FIXTURE_ACCOUNT) is first  # a cache: no reload while unchanged
    other = _other_process(database_url)
    with other.begin() as conn:
        conn.execute(
            update(Tenant.__table__)
            .where(Tenant.__table__.c.id == tenant.id)
            .values(twilio_auth_token="f" * 32)  # the column type encrypts it
        )
    other.dispose()
    assert tenants.tenant_for_twilio_account(FIXTURE_ACCOUNT) is first  # the other process has not told us
    redis_conn.set(tenants.config_key(tenant.id), uuid.uuid4().hex)  # ... its commit hook does
    changed = time.monotonic()
    # The bound (issue 9): a token read in the last TOKEN_MAX_AGE (1 s) is taken as current, so the change
    # is seen within 1 s of the commit, never later (the token this process holds was read before it).
    assert tenants.TOKEN_MAX_AGE == 1.0
    while True:
        asked = time.monotonic()
        now = tenants.tenant_for_twilio_account(FIXTURE_ACCOUNT)
        if now is not first:
            break
        assert asked - changed < tenants.TOKEN_MAX_AGE, "a change in another process unseen after 1 s"
        time.sleep(0.05)
    assert now is not None and now.twilio_auth_token == "f" * 32


def test_directory_cache_follows_numbers_added_in_another_process(
    tenant: Tenant, database_url: str, redis_conn: Any
) -> None:
    tenants.config_version(tenant.id)
    numbers, _users = tenants.cached_directory(tenant.id)
    assert "+15555550111" not in numbers
    other = _other_process(database_url)
    with other.begin() as conn:
        conn.execute(insert(TenantNumber.__table__).values(tenant_id=tenant.id, e164="+15555550111"))
    other.dispose()
    redis_conn.set(tenants.config_key(tenant.id), uuid.uuid4().hex)
    tenants.config_version(tenant.id)  # a read of the token (on the webhook path: at most 1 s old)
    numbers, _users = tenants.cached_directory(tenant.id)
    assert "+15555550111" in numbers


def test_an_orm_change_replaces_the_token(tenant: Tenant, redis_conn: Any) -> None:
    from app.core import db

    before = redis_conn.get(tenants.config_key(tenant.id))
    with db.transaction() as s:
        tenants.add_number(s, s.get(Tenant, tenant.id), "+15555550112")
    after = redis_conn.get(tenants.config_key(tenant.id))
    assert after is not None and after != before
    assert "+15555550112" in tenants.cached_directory(tenant.id)[0]


def test_a_webhook_after_redis_lost_everything_still_gets_a_2xx(
    tenant: Tenant, twilio: Any, redis_conn: Any
) -> None:
    assert twilio.fixture("/webhooks/twilio/voice", "voice__incoming").status_code == 200
    _lose_everything(redis_conn)
    r = twilio.fixture("/webhooks/twilio/call-status", "voice__status_completed")
    assert r.status_code < 300, r.get_data(as_text=True)
    assert _count(WebhookEvent) == 2


def test_coalescing_enqueue_in_one_round_trip(tenant: Tenant, settings: Any, redis_conn: Any) -> None:
    q = Queue(settings.queue_name, connection=redis_conn)
    assert queue.enqueue_automation(settings, 41, 1) == "queued"
    assert queue.enqueue_automation(settings, 41, 2) == "duplicate"  # waits: it will read the newest
    job = Job.fetch("auto-41", connection=redis_conn)
    assert job.func_name == queue.AUTOMATION_JOB and job.args == (41,) and job.retries_left == 3
    job.set_status(JobStatus.STARTED)  # a worker took it: a newer version needs a follow-up
    assert queue.enqueue_automation(settings, 41, 3) == "queued"
    assert queue.enqueue_automation(settings, 41, 3) == "duplicate"
    assert q.job_ids == ["auto-41", "auto-41-v3"]
    job.set_status(JobStatus.FINISHED)  # done: replaced by a fresh job under the same id
    redis_conn.delete(q.key)
    assert queue.enqueue_automation(settings, 41, 4) == "queued"
    assert q.job_ids == ["auto-41"] and Job.fetch("auto-41", connection=redis_conn).get_status() == "queued"
    _lose_everything(redis_conn)
    assert queue.enqueue_automation(settings, 41, 5) == "queued"


def _lose_everything(redis_conn: Any) -> None:
    """What FLUSHALL does to our keys and scripts, keeping this test session's claim on its database
    number (tests/conftest.py), so a concurrent session cannot take the same database meanwhile."""
    claim = redis_conn.get("switchboard-test-session")
    redis_conn.flushdb()
    redis_conn.script_flush()
    if claim is not None:
        redis_conn.set("switchboard-test-session", claim, ex=3600)
