"""Common cases of issue 10, end to end through the webhooks, a real RQ worker and Redis, on both databases:
a caller who hangs up before the voicemail beep, the first calls after a tenant's first `rules load`, and
which tenant number a text comes from."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

from app.automation import store
from app.cli import simulate
from app.core import db, tenants
from app.core.db import utcnow
from app.core.interactions import RECORDING_GRACE, settled
from app.core.models import ActionRun, Interaction, Tenant
from jobs import automations
from tests.automation.test_automations import (  # noqa: F401  (twilio_api: session fixture)
    JORDAN,
    OUR,
    World,
    make_world,
    rules_text,
    twilio_api,
)
from tests.conftest import count
from tests.signing import FIXTURE_ACCOUNT

REP = "+15555550198"


@pytest.fixture
def world(twilio_api, settings, tenant, redis_conn, run_worker) -> World:  # noqa: F811
    return make_world(twilio_api, settings, tenant, redis_conn, run_worker, rules=None)


def _until(world: World, done: Any, seconds: float) -> float:
    """Run the worker (and RQ's scheduler) until done() holds; how long it took."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        world.run()
        if done():
            return time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"not done after {seconds}s")


def _call(world: World) -> Interaction:
    with db.transaction() as s:
        row = s.scalar(select(Interaction).where(Interaction.channel == "call"))
        s.expunge(row)
        return row


# --- 1. a hang-up during the voicemail greeting ------------------------------------------------------


def test_hang_up_before_the_beep_gets_the_missed_call_text_within_seconds(world):
    world.rules(wait="2s")
    scenario = simulate.inbound_call(FIXTURE_ACCOUNT, JORDAN, OUR, REP, "missed")
    # <Record> never started: no record action and no recording callback, only the completed parent call.
    scenario.rest = [p for p in scenario.rest if not p.path.startswith("/webhooks/twilio/recording")]
    world.post(scenario)
    took = _until(world, lambda: bool(world.texts()), 40)
    assert took < RECORDING_GRACE.total_seconds() + 15  # seconds, not the 10 minutes of SETTLE_RECHECKs
    [text] = world.texts()
    assert (text["to"], text["from"]) == (JORDAN, OUR)
    assert "sorry we missed you" in text["body"]
    assert _call(world).status == "missed"


def test_voicemail_left_normally_is_a_voicemail_not_a_missed_call(world):
    world.rules(wait="0s")
    world.post(simulate.inbound_call(FIXTURE_ACCOUNT, JORDAN, OUR, REP, "voicemail"))
    world.run()
    assert _call(world).status == "voicemail"
    assert world.texts() == []
    assert [t.subject for t in world.tasks()] == ["Voicemail from Jordan Rivera"]


def test_recording_in_flight_waits_for_its_callback(world):
    """The record action named a recording (duration 0 so far): the call waits for its callback, past the
    grace, and then is a voicemail."""
    world.rules(wait="0s")
    scenario = simulate.inbound_call(FIXTURE_ACCOUNT, JORDAN, OUR, REP, "voicemail")
    record = next(p for p in scenario.rest if p.path.endswith("?event=record"))
    callback = next(p for p in scenario.rest if p.path.startswith("/webhooks/twilio/recording"))
    record.params["RecordingDuration"] = "0"
    scenario.rest.remove(callback)
    world.post(scenario)
    world.run()
    facts = _call(world).facts
    assert not settled("call", facts, datetime.now(UTC) + timedelta(hours=1))
    assert count(ActionRun) == 0 and world.texts() == []
    assert world.twilio.post(callback.path, callback.params).status_code in (200, 204)
    world.run()
    assert _call(world).status == "voicemail"
    assert [t.subject for t in world.tasks()] == ["Voicemail from Jordan Rivera"] and world.texts() == []


def test_settled_rules_for_a_prompted_call():
    ended = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    base = {
        "call": {"direction": "inbound"},
        "parent_status": {"status": "completed", "seq": 1},
        "ended_at": ended.isoformat(),
        "voicemail_prompted": True,
    }
    soon, later = ended + timedelta(seconds=1), ended + RECORDING_GRACE
    assert not settled("call", base, soon)  # a record action may still be on its way
    assert settled("call", base, later)  # nothing came: the caller hung up before the beep
    final = {**base, "recordings": {"RE1": {"status": "completed", "source": "RecordVerb", "duration": 9}}}
    assert settled("call", final, soon)
    in_flight = {**base, "recording_pending": {"RE1": True}}
    assert not settled("call", in_flight, later + timedelta(hours=1))
    both = {**in_flight, "recordings": {"RE1": {"status": "absent", "source": "RecordVerb"}}}
    assert settled("call", both, soon)
    ringing = {**base, "parent_status": {"status": "in-progress", "seq": 0}, "ended_at": None}
    assert not settled("call", ringing, later)


# --- 2. the first calls after a tenant's first `rules load` -------------------------------------------


def _scheduled(world: World) -> list[Any]:
    q = Queue(world.settings.queue_name, connection=world.redis)
    registry = ScheduledJobRegistry(queue=q)
    return [Job.fetch(job_id, connection=world.redis) for job_id in registry.get_job_ids()]


def _make_due(world: World, job: Any) -> None:
    """Move a scheduled job's time to now, as if its delay had passed (RQ's scheduler then enqueues it)."""
    registry = ScheduledJobRegistry(queue=Queue(world.settings.queue_name, connection=world.redis))
    world.redis.zadd(registry.key, {job.id: 0})


def test_calls_answered_from_a_stale_no_rules_cache_are_automated_by_the_catch_up(world):
    assert store.active_rules(world.tenant.id) is None  # the web process caches "no rules" ...
    loaded = datetime.now(UTC)
    store.store_rules(world.tenant.id, rules_text())  # ... while `rules load` runs in another process
    store._rules[world.tenant.id] = None  # that process cleared its own cache, not the web process's
    world.post(simulate.inbound_call(FIXTURE_ACCOUNT, JORDAN, OUR, REP, "missed"))
    world.run()
    assert world.texts() == [] and count(ActionRun) == 0  # the view enqueued no automation
    [job] = [j for j in _scheduled(world) if j.func_name == store.CATCH_UP_JOB]
    due = ScheduledJobRegistry(queue=Queue(world.settings.queue_name, connection=world.redis))
    at = due.get_scheduled_time(job)
    # it runs once every process's cache has expired
    assert loaded + store.CACHE_TTL <= at <= datetime.now(UTC) + store.CACHE_TTL + store.CATCH_UP_MARGIN
    _make_due(world, job)
    world.run()
    [text] = world.texts()
    assert text["to"] == JORDAN and "sorry we missed you" in text["body"]
    assert len(world.tasks()) == 1
    # running it again (a retried job, a second load) plans nothing twice
    assert automations.catch_up(world.tenant.id, job.args[1]).startswith("caught up")
    world.run()
    assert len(world.texts()) == 1 and len(world.tasks()) == 1


def test_catch_up_leaves_older_interactions_alone(world):
    world.post(simulate.inbound_call(FIXTURE_ACCOUNT, JORDAN, OUR, REP, "missed"))
    world.run()
    with db.transaction() as s:  # a call from before the load's cache window
        s.execute(Interaction.__table__.update().values(updated_at=utcnow() - timedelta(hours=1)))
    store.store_rules(world.tenant.id, rules_text())
    [job] = [j for j in _scheduled(world) if j.func_name == store.CATCH_UP_JOB]
    _make_due(world, job)
    world.run()
    assert world.texts() == [] and count(ActionRun) == 0


# --- 3. reply from the number they called -----------------------------------------------------------

SF_NUMBER, SF_CALLER = "+14155550100", "+14155550123"


def _second_number(world: World) -> None:
    world.emu.add_number(FIXTURE_ACCOUNT, SF_NUMBER)
    with db.transaction() as s:
        tenants.add_number(s, s.get(Tenant, world.tenant.id), SF_NUMBER)


def test_missed_call_text_comes_from_the_number_the_customer_called(world):
    _second_number(world)
    world.rules(wait="0s")
    # a San Francisco caller dials the 555 number: the reply comes from 555, not from the local 415 number
    world.post(simulate.inbound_call(FIXTURE_ACCOUNT, SF_CALLER, OUR, REP, "missed"))
    # and a 555 caller who dialled the 415 number hears back from 415
    world.post(simulate.inbound_call(FIXTURE_ACCOUNT, JORDAN, SF_NUMBER, REP, "missed"))
    world.run()
    sent = {t["to"]: t["from"] for t in world.texts()}
    assert sent == {SF_CALLER: OUR, JORDAN: SF_NUMBER}


def test_local_presence_is_for_outreach_or_when_the_rules_ask_for_it(world):
    _second_number(world)
    world.rules(wait="0s")
    # outreach (contact.created, CRM triggers): no conversation number, so the local one
    assert automations.choose_from_number(world.tenant.id, SF_CALLER, None) == SF_NUMBER
    assert automations.choose_from_number(world.tenant.id, "+12125550123", None) == OUR  # none local: first
    # a conversation: the number used, unless `reply_from: local`
    assert automations.choose_from_number(world.tenant.id, SF_CALLER, OUR) == OUR
    assert automations.choose_from_number(world.tenant.id, SF_CALLER, OUR, "local") == SF_NUMBER
    assert automations.choose_from_number(world.tenant.id, "+12125550123", SF_NUMBER, "local") == SF_NUMBER
    assert automations.choose_from_number(world.tenant.id, SF_CALLER, "+19995550100") == SF_NUMBER  # not ours


def test_reply_from_local_in_the_rules_file(world):
    _second_number(world)
    world.rules(wait="0s")
    store.store_rules(
        world.tenant.id, rules_text().replace("  quiet_hours:", "  reply_from: local\n  quiet_hours:", 1)
    )
    world.post(simulate.inbound_call(FIXTURE_ACCOUNT, SF_CALLER, OUR, REP, "missed"))
    world.run()
    [text] = world.texts()
    assert (text["to"], text["from"]) == (SF_CALLER, SF_NUMBER)
