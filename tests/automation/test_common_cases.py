"""Common cases of issue 10, end to end through the webhooks, a real RQ worker and Redis, on both databases:
a caller who hangs up before the voicemail beep, the first calls after a tenant's first `rules load`, and
which tenant number a text comes from."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.cli import simulate
from app.core import caches, db, tenants
from app.core.interactions import RECORDING_GRACE, settled
from app.core.models import ActionRun, Interaction, User
from app.web import create_app
from emulators.twilio import TwilioEmulator
from tests.automation.test_automations import JORDAN, OUR, World
from tests.conftest import count
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN

REP = "+15555550198"


@pytest.fixture(scope="module")
def twilio_api() -> Any:
    emu = TwilioEmulator()
    emu.base_url = emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def world(twilio_api, settings, tenant, redis_conn, run_worker) -> World:
    twilio_api.reset()
    twilio_api.create_account(FIXTURE_ACCOUNT, FIXTURE_TOKEN)
    twilio_api.add_number(FIXTURE_ACCOUNT, OUR)
    app = create_app(settings.with_(twilio_api_base=twilio_api.base_url))
    with db.transaction() as s:
        casey = s.scalar(select(User).where(User.email == "casey@acme.example"))
        tenants.set_teams(s, casey, ["csm"])
    caches.clear_all()
    return World(app, twilio_api, tenant, redis_conn, run_worker, settings)


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
