"""The batching sync job: one drain per tenant writes everything pending in batches, retries per row."""

from __future__ import annotations

import time

from rq import Queue
from rq.registry import ScheduledJobRegistry
from rq.scheduler import RQScheduler
from sqlalchemy import select

from app.cli import simulate
from app.core import db
from app.core.models import Interaction, LocalActivity, LocalContact, Tenant
from jobs.sync import BATCH, drain
from tests import flaky_connector
from tests.conftest import count
from tests.jobs.test_resilience import _register_flaky, set_plan  # noqa: F401  (fixture and helper)
from tests.signing import FIXTURE_ACCOUNT


def texts_from(n: int) -> list[simulate.Post]:
    return [
        simulate.inbound_sms(FIXTURE_ACCOUNT, f"+1555555{1000 + i:04d}", "+15555550100", f"hi {i}").first[0]
        for i in range(n)
    ]


def test_backlog_is_written_in_batches(tenant, twilio, run_worker):
    set_plan(tenant)  # the counting connector, no failures
    for post in texts_from(BATCH * 2 + 30):
        assert twilio.post(post.path, post.params).status_code == 200
    run_worker()
    assert sorted(flaky_connector.BATCHES) == [30, BATCH, BATCH]  # the first job drained everything
    assert count(LocalActivity) == BATCH * 2 + 30
    assert count(LocalContact) == 1 + BATCH * 2 + 30
    assert count(Interaction, Interaction.sync_state != "synced") == 0


def test_trigger_leaves_when_another_worker_drains(tenant, twilio, run_worker, redis_conn):
    twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    lock = redis_conn.lock(f"switchboard:lock:drain:{tenant.id}", timeout=30)
    assert lock.acquire(blocking=False)  # someone else is draining this tenant
    run_worker()
    assert count(Interaction, Interaction.sync_state == "pending") == 1
    assert redis_conn.exists(f"switchboard:drain-dirty:{tenant.id}")  # ...and will be told to look again
    lock.release()
    assert drain(tenant.id) == "synced 1"  # what the other worker does after releasing its lock
    assert count(LocalActivity) == 1


def test_retry_waits_its_backoff_through_rq_scheduler(app, settings, tenant, twilio, redis_conn, run_worker):
    from app.web import create_app

    create_app(settings.with_(job_retry_intervals=(1,)))
    set_plan(tenant, retryable=1)
    twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    assert run_worker() == 1
    with db.transaction() as s:
        row = s.scalar(select(Interaction))
    assert (row.sync_state, row.attempts) == ("pending", 1) and row.next_attempt_at is not None
    registry = ScheduledJobRegistry(settings.queue_name, connection=redis_conn)
    assert len(registry) == 1  # a trigger waits in RQ's scheduler
    time.sleep(2.1)
    scheduler = RQScheduler([settings.queue_name], connection=redis_conn)
    assert scheduler.acquire_locks()
    scheduler.enqueue_scheduled_jobs()  # what `rq worker --with-scheduler` does every second
    scheduler.release_locks()
    assert Queue(settings.queue_name, connection=redis_conn).count == 1
    assert run_worker() == 1
    with db.transaction() as s:
        row = s.scalar(select(Interaction))
    assert (row.sync_state, row.attempts) == ("synced", 2)


def test_interaction_without_party_waits_then_is_skipped_when_final(tenant, twilio, run_worker):
    twilio.fixture("/webhooks/twilio/call-status", "voice__status_initiated")  # rep leg of a click-to-call
    run_worker()
    with db.transaction() as s:
        row = s.scalar(select(Interaction))
    assert row.sync_state == "pending" and row.next_attempt_at is not None  # waits for the customer leg
    twilio.fixture("/webhooks/twilio/call-status", "voice__status_busy")  # another call, rep busy: final
    run_worker()
    with db.transaction() as s:
        busy = s.scalar(select(Interaction).where(Interaction.status == "busy"))
    assert busy.sync_state == "skipped" and "no outside party" in busy.last_error


def test_tenant_needing_reinstall_fails_rows_with_the_reason(tenant, twilio, run_worker):
    with db.transaction() as s:
        t = s.get(Tenant, tenant.id)
        t.crm_status, t.crm_status_reason = "needs_reinstall", "HubSpot refresh token was revoked"
    twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    with db.transaction() as s:
        row = s.scalar(select(Interaction))
    assert row.sync_state == "failed" and "refresh token was revoked" in row.last_error
    assert count(LocalActivity) == 0
