"""A send_email step that SendGrid answers 429 waits the provider's Retry-After before its next try, and
429s do not use up the step's retries (jobs.automations._retry, as jobs.sync does for a throttled CRM):
run_action against the SendGrid emulator over real HTTP, on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from app.core import db
from app.core.db import utcnow
from app.core.models import ActionRun, Tenant
from app.core.settings import Settings
from emulators.sendgrid import SendGridEmulator
from jobs.automations import _retry, run_action
from tests.channels.conftest import TO

SPEC = {"subject": "Anything else?", "body": "Just checking in.", "from_": "tenant"}


def step(tenant: Tenant) -> int:
    now = utcnow()
    with db.transaction() as s:
        run = ActionRun(
            tenant_id=tenant.id, key="follow-up:email.sent:interaction:1:0", rule="follow-up",
            rules_version=1, trigger="email.sent", trigger_ref="interaction:1", trigger_at=now, step=0,
            action="send_email", party_email=TO, state="scheduled", due_at=now,
            context={"spec": SPEC, "unless": [], "template": {"tenant": {"name": "acme"}}},
        )  # fmt: skip
        s.add(run)
        s.flush()
        return run.id


def state(run_id: int) -> ActionRun:
    with db.transaction() as s:
        run = s.get(ActionRun, run_id)
        assert run is not None
        s.expunge(run)
        return run


def due_now(run_id: int) -> None:
    """Skip the wait (the test checked it): the step's job would run at due_at."""
    with db.transaction() as s:
        s.execute(update(ActionRun).where(ActionRun.id == run_id).values(due_at=utcnow()))


def test_429_waits_its_retry_after_and_does_not_use_up_the_retries(
    tenant: Tenant, sendgrid: dict[str, Any], sendgrid_emu: SendGridEmulator, settings: Settings
) -> None:
    assert len(settings.job_retry_intervals) == 3  # tests retry at once: (0, 0, 0)
    run_id = step(tenant)
    throttled = len(settings.job_retry_intervals) + 2  # more 429s than the step has retries
    sendgrid_emu.fail_next(status=429, count=throttled, retry_after=7)
    for attempt in range(1, throttled + 1):
        before = utcnow()
        assert run_action(run_id) == "retrying"
        run = state(run_id)
        assert run.state == "scheduled" and run.attempts == attempt and "HTTP 429" in (run.reason or "")
        waited = (run.due_at.replace(tzinfo=None) - before.replace(tzinfo=None)).total_seconds()
        assert 6.5 <= waited <= 8.0, waited  # SendGrid's Retry-After, not our 0 s interval
        due_now(run_id)
    assert run_action(run_id) == "done"
    [msg] = sendgrid_emu.messages()
    assert msg["subject"] == SPEC["subject"] and state(run_id).result["switchboard_id"]
    assert sendgrid_emu.stats()["POST /v3/mail/send 429"] == throttled


@pytest.mark.parametrize(
    ("attempts", "retry_after", "throttled", "outcome", "wait"),
    [
        (1, None, False, "retrying", 0.0),  # our interval (0 s in tests)
        (1, 5.0, False, "retrying", 5.0),  # a 5xx's Retry-After, longer than our interval
        (4, 5.0, False, "failed", None),  # not a 429: the retries run out as before
        (4, 5.0, True, "retrying", 5.0),  # a 429 (or the CRM's Throttled) never uses them up
        (4, None, True, "retrying", 0.0),  # throttled with no Retry-After: our last interval
    ],
)
def test_retry_schedule(
    tenant: Tenant,
    settings: Settings,
    attempts: int,
    retry_after: float | None,
    throttled: bool,
    outcome: str,
    wait: float | None,
) -> None:
    run_id = step(tenant)
    with db.transaction() as s:
        s.execute(update(ActionRun).where(ActionRun.id == run_id).values(state="running", attempts=attempts))
    before = utcnow()
    assert _retry(state(run_id), settings, "busy", retry_after, throttled) == outcome
    run = state(run_id)
    if wait is None:
        assert run.state == "failed" and "gave up after 4 attempts" in (run.reason or "")
        return
    waited = (run.due_at.replace(tzinfo=None) - before.replace(tzinfo=None)).total_seconds()
    assert run.state == "scheduled" and wait - 0.5 <= waited <= wait + 1.0, waited
