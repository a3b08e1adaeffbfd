"""A rep's click-to-call end to end, over real HTTP: POST /api/v1/calls -> the twilio SDK -> the Twilio
emulator rings the rep, bridges the customer from the TwiML and posts signed status, <Dial action> and
recording callbacks to our webhooks -> the ledger folds them into ONE outbound interaction owned by the rep
-> a real RQ worker -> exactly one CRM record. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.core import db
from app.core.models import Interaction, LocalActivity, WebhookEvent
from tests.conftest import count
from tests.signing import FIXTURE_ACCOUNT
from tests.web.dialer_support import (  # noqa: F401  (the live and twilio_emu fixtures)
    CONNECTED,
    JORDAN,
    NO_ANSWER,
    OUR,
    REP_PHONE,
    delivered,
    interaction,
    live_fixture,
    ok,
    session_for,
    twilio_emu_fixture,
    user,
)


def place(live: Any, tenant: Any, to: str = JORDAN, **extra: Any) -> tuple[dict[str, Any], dict[str, str]]:
    headers = session_for(live.settings, tenant, "avery@acme.example")
    placed = ok(live.client.post("/api/v1/calls", json={"to": to, **extra}, headers=headers), 201)
    return placed, headers


def state(live: Any, call_id: int, headers: dict[str, str]) -> str:
    return ok(live.client.get(f"/api/v1/calls/{call_id}", headers=headers))["state"]


def test_click_to_call_lifecycle_logs_one_activity_owned_by_the_rep(live, tenant, twilio_emu, run_worker):
    placed, headers = place(live, tenant, to="(555) 555-0123")  # national format, the tenant's region
    assert (placed["to"], placed["from"], placed["state"]) == (JORDAN, OUR, "ringing_rep")
    [call] = twilio_emu.calls(FIXTURE_ACCOUNT)
    assert (call["to"], call["from"], call["sid"]) == (REP_PHONE, OUR, placed["call_sid"])  # the rep first
    assert call["status_callback"] == f"{live.base}/webhooks/twilio/call-status"
    assert 'answerOnBridge="true"' in call["twiml"] and f'callerId="{OUR}"' in call["twiml"]

    delivered(twilio_emu.advance_call(call["sid"], "ringing"))
    assert state(live, placed["id"], headers) == "ringing_rep"
    delivered(twilio_emu.advance_call(call["sid"], "answered"))  # the rep picks up; Twilio dials Jordan
    assert state(live, placed["id"], headers) == "connecting"
    deliveries = delivered(twilio_emu.advance_call(call["sid"], "bridged"))
    # 555 numbers have no known state: the cautious consent policy announces the recording to Jordan first
    assert deliveries[0]["url"] == f"{live.base}/webhooks/twilio/announce"
    [stored] = twilio_emu.calls(FIXTURE_ACCOUNT)
    assert "<Say>This call may be recorded.</Say>" in stored["child"]["screening"]
    assert state(live, placed["id"], headers) == "live"
    delivered(twilio_emu.advance_call(call["sid"], "completed", talk=42))
    detail = ok(live.client.get(f"/api/v1/calls/{placed['id']}", headers=headers))
    assert (detail["state"], detail["direction"], detail["duration"]) == ("ended", "outbound", 42)
    assert detail["contact"]["name"] == "Jordan Rivera"

    ok(
        live.client.post(
            f"/api/v1/calls/{placed['id']}/disposition",
            json={"outcome": CONNECTED, "notes": "Wants a demo on Friday"},
            headers=headers,
        )
    )
    run_worker()

    with db.transaction() as s:
        [row] = list(s.scalars(select(Interaction)))
        [activity] = list(s.scalars(select(LocalActivity)))
    assert row.provider_id == call["sid"] and row.user_id == user("avery@acme.example").id
    assert (row.status, row.party_phone, row.our_number, row.to_addr) == ("completed", JORDAN, OUR, JORDAN)
    assert row.recording_url and row.sync_state == "synced"
    assert (activity.owner_id, activity.status, activity.duration_seconds) == (
        "avery@acme.example",
        "completed",
        42,
    )
    assert activity.body == "Outcome: Connected\n\nWants a demo on Friday"
    assert activity.external_id == f"switchboard-interaction-{row.id}"

    # the rep changes their mind: the same activity is updated, none is added
    ok(
        live.client.post(
            f"/api/v1/calls/{placed['id']}/disposition",
            json={"outcome": NO_ANSWER, "notes": "Voicemail after all"},
            headers=headers,
        )
    )
    run_worker()
    with db.transaction() as s:
        [activity] = list(s.scalars(select(LocalActivity)))
    assert activity.body == "Outcome: No answer\n\nVoicemail after all"
    detail = ok(live.client.get(f"/api/v1/calls/{placed['id']}", headers=headers))
    assert (detail["outcome"], detail["notes"]) == (NO_ANSWER, "Voicemail after all")
    assert count(Interaction) == 1


def test_callbacks_delivered_twice_change_nothing(live, tenant, twilio_emu, run_worker):
    placed, headers = place(live, tenant)
    deliveries = delivered(twilio_emu.advance_call(placed["call_sid"], "completed", talk=10))
    events = count(WebhookEvent)
    from tests.signing import TwilioPoster

    poster = TwilioPoster(live.client, live.base, twilio_emu.accounts[FIXTURE_ACCOUNT].auth_token)
    for d in deliveries:  # Twilio retries every one of them
        path = d["url"].removeprefix(live.base)
        assert poster.post(path, d["params"]).status_code in (200, 204)
    assert count(WebhookEvent) == events
    run_worker()
    assert count(LocalActivity) == 1
    assert state(live, placed["id"], headers) == "ended"


def test_hang_up_while_the_reps_phone_rings(live, tenant, twilio_emu, run_worker):
    placed, headers = place(live, tenant)
    delivered(twilio_emu.advance_call(placed["call_sid"], "ringing"))
    # Twilio's callbacks may beat the answer: the state is the one the ledger has at that moment
    hung = ok(live.client.delete(f"/api/v1/calls/{placed['id']}", headers=headers), 202)
    assert hung["state"] in ("ringing_rep", "ended")
    assert twilio_emu.settle()  # the emulator's callbacks after the hang-up
    [call] = twilio_emu.calls(FIXTURE_ACCOUNT)
    assert call["status"] == "canceled"
    assert state(live, placed["id"], headers) == "ended"  # the rep ended it: not a failure
    # hanging up a call that has ended answers its state and asks Twilio nothing
    before = twilio_emu.stats(FIXTURE_ACCOUNT)["total"]
    assert ok(live.client.delete(f"/api/v1/calls/{placed['id']}", headers=headers), 202)["state"] == "ended"
    assert twilio_emu.stats(FIXTURE_ACCOUNT)["total"] == before


def test_hang_up_a_live_call(live, tenant, twilio_emu, run_worker):
    placed, headers = place(live, tenant)
    delivered(twilio_emu.advance_call(placed["call_sid"], "bridged"))
    hung = ok(live.client.delete(f"/api/v1/calls/{placed['id']}", headers=headers), 202)
    assert hung["state"] in ("live", "ended")
    assert twilio_emu.settle()
    detail = ok(live.client.get(f"/api/v1/calls/{placed['id']}", headers=headers))
    assert detail["state"] == "ended" and detail["status"] == "completed"
    run_worker()
    assert count(LocalActivity) == 1


def test_the_rep_not_answering_is_a_failed_call(live, tenant, twilio_emu, run_worker):
    placed, headers = place(live, tenant)
    delivered(twilio_emu.advance_call(placed["call_sid"], "no-answer"))
    assert state(live, placed["id"], headers) == "failed"


def test_the_customer_not_answering_ends_the_call(live, tenant, twilio_emu, run_worker):
    placed, headers = place(live, tenant)
    delivered(twilio_emu.advance_call(placed["call_sid"], "unanswered"))
    detail = ok(live.client.get(f"/api/v1/calls/{placed['id']}", headers=headers))
    assert (detail["state"], detail["status"]) == ("ended", "no-answer")
    run_worker()
    [activity] = [interaction(placed["id"])]
    assert activity.sync_state == "synced"


def test_recent_calls_are_the_reps_own(live, tenant, twilio_emu, run_worker):
    placed, headers = place(live, tenant)
    sam = session_for(live.settings, tenant, "sam@acme.example")
    assert ok(live.client.get("/api/v1/calls", headers=headers))["calls"][0]["id"] == placed["id"]
    assert ok(live.client.get("/api/v1/calls", headers=sam))["calls"] == []
    assert live.client.get(f"/api/v1/calls/{placed['id']}", headers=sam).status_code == 404
