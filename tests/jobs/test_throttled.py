"""Throttling is not failure: a CRM (or our guard of its daily API budget) that says "wait" holds the row for
that long without using up its retries, so a long hold never turns into a failed sync."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from rq.scheduler import RQScheduler

from app.core.db import utcnow
from tests.jobs.test_resilience import _register_flaky, set_plan, the_interaction  # noqa: F401  (fixture)


def _with_scheduler(settings: Any, redis_conn: Any, run_worker: Any) -> None:
    """One worker pass after RQ's scheduler moved the due retries in (as `rq worker --with-scheduler`)."""
    scheduler = RQScheduler([settings.queue_name], connection=redis_conn)
    scheduler.acquire_locks()
    scheduler.enqueue_scheduled_jobs()
    scheduler.release_locks()
    run_worker()


def test_throttled_writes_do_not_use_up_the_retries(
    tenant: Any, twilio: Any, run_worker: Any, settings: Any, redis_conn: Any
) -> None:
    set_plan(tenant, throttled=6)  # twice the test settings' three retry intervals
    assert twilio.fixture("/webhooks/twilio/sms", "sms__inbound").status_code == 200
    for _ in range(30):
        _with_scheduler(settings, redis_conn, run_worker)
        if the_interaction().sync_state != "pending":
            break
        time.sleep(0.2)
    row = the_interaction()
    assert row.sync_state == "synced", row.last_error
    assert row.attempts == 1  # only the attempt that wrote it counts


def test_a_long_hold_waits_its_retry_after(tenant: Any, twilio: Any, run_worker: Any) -> None:
    set_plan(tenant, throttled=1, retry_after=3600)
    assert twilio.fixture("/webhooks/twilio/sms", "sms__inbound").status_code == 200
    run_worker()
    row = the_interaction()
    assert row.sync_state == "pending" and row.attempts == 0
    assert row.last_error.startswith("throttled: ")
    assert timedelta(minutes=59) < row.next_attempt_at - utcnow() <= timedelta(hours=1)
