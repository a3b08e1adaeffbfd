"""Nothing lost, nothing duplicated: Redis down at ack time, retries, permanent errors, crashes mid-write."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry
from sqlalchemy import select

import connectors
from app.cli import main
from app.core import db, ledger
from app.core.models import Interaction, LocalActivity, Tenant, WebhookEvent
from app.core.queue import enqueue_sync
from app.web import create_app
from jobs.sync import sweep
from tests import flaky_connector
from tests.conftest import PUBLIC_BASE, count
from tests.signing import FIXTURE_TOKEN, TwilioPoster


@pytest.fixture(autouse=True)
def _register_flaky() -> Any:
    connectors.register("flaky", "tests.flaky_connector:PROVIDER")
    flaky_connector.ATTEMPTS.clear()
    flaky_connector.BATCHES.clear()
    yield
    connectors.REGISTRY.pop("flaky", None)


def set_plan(tenant: Tenant, **plan: Any) -> None:
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        row.crm = "flaky"
        row.settings = {"flaky": plan}


def the_interaction() -> Interaction:
    with db.transaction() as s:
        [row] = list(s.scalars(select(Interaction)))
        return row


def test_redis_down_at_ack_then_sweeper_delivers_exactly_once(settings, tenant, redis_conn, run_worker):
    dead = create_app(settings.with_(redis_url="redis://127.0.0.1:1/0"))
    poster = TwilioPoster(dead.test_client(), PUBLIC_BASE, FIXTURE_TOKEN)
    r = poster.fixture("/webhooks/twilio/sms", "sms__inbound")
    assert r.status_code == 200  # Twilio gets its answer even though the queue is gone
    row = the_interaction()
    assert row.sync_state == "pending" and count(WebhookEvent) == 1
    assert Queue(settings.queue_name, connection=redis_conn).count == 0

    create_app(settings)  # Redis is back (the worker and sweeper run with working settings)
    assert sweep() == 1
    assert sweep() == 0  # already queued: the deterministic job id dedupes
    assert run_worker() == 1
    assert sweep() == 0  # synced: nothing left to sweep
    assert run_worker() == 0
    assert count(LocalActivity) == 1
    assert the_interaction().sync_state == "synced"


def test_sweeper_replaces_a_finished_job_whose_row_is_still_pending(settings, tenant, twilio, run_worker):
    """A worker died after RQ marked the job done but before our commit: the sweeper runs it again."""
    twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    row = the_interaction()
    run_worker()
    with db.transaction() as s:  # roll the row back to pending as if the commit had been lost
        s.get(Interaction, row.id).sync_state = "pending"
    assert sweep() == 1
    assert run_worker() == 1
    assert count(LocalActivity) == 1
    assert the_interaction().sync_state == "synced"


def test_retryable_errors_are_retried_then_succeed(settings, tenant, twilio, run_worker):
    set_plan(tenant, retryable=2)
    twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    assert run_worker() == 1  # one drain: two failures, then success (backoff is 0 s in tests)
    row = the_interaction()
    assert (row.sync_state, row.attempts, row.last_error) == ("synced", 3, None)
    assert count(LocalActivity) == 1


def test_retries_exhausted_marks_failed_with_reason_and_cli_replays(
    app, settings, tenant, twilio, run_worker, redis_conn: Redis
):
    set_plan(tenant, retryable=100)
    twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    assert run_worker() == 1
    row = the_interaction()
    assert row.sync_state == "failed" and row.attempts == 1 + len(settings.job_retry_intervals)
    assert row.last_error == "gave up after 4 attempts: retryable: HTTP 503 from CRM"
    assert (
        len(FailedJobRegistry(settings.queue_name, connection=redis_conn)) == 0
    )  # the row failed, not the job
    assert sweep() == 0  # failed rows wait for a person
    assert count(LocalActivity) == 0

    set_plan(tenant)  # the CRM recovered
    result = app.test_cli_runner().invoke(main, args=["failed", "retry", "--all"])
    assert result.exit_code == 0, result.output
    assert "retrying 1" in result.output
    assert run_worker() == 1
    assert the_interaction().sync_state == "synced"
    assert count(LocalActivity) == 1


def test_permanent_error_fails_at_once(tenant, twilio, run_worker):
    set_plan(tenant, permanent=True)
    twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    assert run_worker() == 1  # not retried
    row = the_interaction()
    assert row.sync_state == "failed" and row.last_error.startswith("permanent: HTTP 400")
    assert row.attempts == 1


def test_crash_after_crm_write_does_not_duplicate(tenant, twilio, run_worker):
    set_plan(tenant, crash_after_write=1)
    twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    assert run_worker() == 1
    assert the_interaction().attempts == 2
    assert count(LocalActivity) == 1  # the retry found the activity by our external id
    assert the_interaction().sync_state == "synced"


def test_duplicate_enqueue_of_same_version_runs_once(settings, tenant, twilio, run_worker):
    twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    row = the_interaction()
    assert [enqueue_sync(settings, row.id, row.version) for _ in range(3)] == ["duplicate"] * 3
    assert run_worker() == 1
    assert count(LocalActivity) == 1


def test_failed_list_shows_reason(app, tenant, twilio, run_worker):
    set_plan(tenant, permanent=True)
    twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    result = app.test_cli_runner().invoke(main, args=["failed", "list"])
    assert result.exit_code == 0
    row = the_interaction()
    assert f"{row.id}\ttenant {tenant.id}\tsms\treceived\t1 attempts\tpermanent: HTTP 400" in result.output
    ledger.reset_failed(ids=[row.id])
    assert the_interaction().sync_state == "pending"


def test_burst_of_callbacks_coalesces_into_one_job(tenant, twilio, run_worker, settings, redis_conn):
    from app.cli import simulate
    from tests.signing import FIXTURE_ACCOUNT

    scenario = simulate.inbound_call(
        FIXTURE_ACCOUNT, "+15555550123", "+15555550100", "+15555550198", "answered"
    )
    for post in scenario.deliveries():
        assert twilio.post(post.path, post.params).status_code in (200, 204)
    assert len(Queue(settings.queue_name, connection=redis_conn).job_ids) == 1
    assert run_worker() == 1  # nine callbacks, one CRM write of the final state
    row = the_interaction()
    assert (row.status, row.sync_state, row.synced_version) == ("completed", "synced", row.version)
    assert count(LocalActivity) == 1


def test_new_version_while_job_runs_gets_a_follow_up(tenant, twilio, run_worker, settings, redis_conn):
    from rq.job import Job, JobStatus

    from app.core.queue import release_trigger

    twilio.fixture("/webhooks/twilio/voice", "voice__incoming")
    q = Queue(settings.queue_name, connection=redis_conn)
    [primary] = q.job_ids
    # As if a worker had picked it up: the drain job leaves the queue and, starting, releases the trigger.
    q.remove(primary)
    Job.fetch(primary, connection=redis_conn).set_status(JobStatus.STARTED)
    release_trigger(redis_conn, tenant.id, primary)
    twilio.fixture("/webhooks/twilio/recording", "voice__recording_voicemail")
    [follow_up] = q.job_ids
    assert follow_up.startswith(f"{primary}-")  # a new trigger; the STARTED job's id is never reused
    assert run_worker() == 1
    assert the_interaction().status == "voicemail" and the_interaction().sync_state == "synced"
    assert count(LocalActivity) == 1
