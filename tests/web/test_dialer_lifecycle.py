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


def test_another_rep_cannot_hang_up_or_disposition_a_call(live, tenant, twilio_emu, run_worker):
    placed, headers = place(live, tenant)
    sam = session_for(live.settings, tenant, "sam@acme.example")
    url = f"/api/v1/calls/{placed['id']}"
    assert live.client.delete(url, headers=sam).status_code == 404
    body = {"outcome": CONNECTED, "notes": "not my call"}
    assert live.client.post(f"{url}/disposition", json=body, headers=sam).status_code == 404
    assert live.client.post(f"{url}/engagement", json={"engagement_id": "42"}, headers=sam).status_code == 404
    # nothing changed: Twilio was not told to hang up, and the call has no outcome, notes or engagement
    [call] = twilio_emu.calls(FIXTURE_ACCOUNT)
    assert call["status"] not in ("completed", "canceled")
    detail = ok(live.client.get(url, headers=headers))
    assert (detail["state"], detail["outcome"], detail["notes"], detail["engagement_id"]) == (
        "ringing_rep",
        None,
        None,
        None,
    )


# --- the emulator's calls: update (hang up) and the lifecycle control ------------------------------------


def sdk(twilio_emu: Any) -> Any:
    from twilio.rest import Client

    from app.channels.twilio import RoutedHttpClient

    token = twilio_emu.accounts[FIXTURE_ACCOUNT].auth_token
    return Client(FIXTURE_ACCOUNT, token, http_client=RoutedHttpClient(twilio_emu.base_url))


def test_emulator_update_cancels_a_ringing_call_and_completes_an_answered_one(twilio_emu):
    from tests.web.dialer_support import reset_emulator

    reset_emulator(twilio_emu)
    client = sdk(twilio_emu)
    twiml = f"<Response><Dial><Number>{JORDAN}</Number></Dial></Response>"
    ringing = client.calls.create(to=REP_PHONE, from_=OUR, twiml=twiml)
    assert client.calls(ringing.sid).update(status="completed").status == "canceled"
    answered = client.calls.create(to=REP_PHONE, from_=OUR, twiml=twiml)
    assert twilio_emu.advance_call(answered.sid, "bridged") == []  # no callback URLs: nothing to post
    assert client.calls(answered.sid).update(status="completed").status == "completed"
    assert twilio_emu.settle()
    statuses = {
        c["sid"]: (c["status"], (c.get("child") or {}).get("status"))
        for c in twilio_emu.calls(FIXTURE_ACCOUNT)
    }
    assert statuses == {ringing.sid: ("canceled", None), answered.sid: ("completed", "completed")}
    assert client.calls(answered.sid).update(status="completed").status == "completed"  # ended: unchanged


def test_emulator_advance_control_endpoint(twilio_emu):
    import requests

    from tests.web.dialer_support import reset_emulator

    reset_emulator(twilio_emu)
    call = sdk(twilio_emu).calls.create(
        to=REP_PHONE,
        from_=OUR,
        twiml="<Response><Say>hi</Say></Response>",
        status_callback="http://127.0.0.1:9/unreachable",
        status_callback_event=["initiated", "answered", "completed"],
    )
    with requests.Session() as session:
        session.trust_env = False
        url = f"{twilio_emu.base_url}/_emulator/advance_call"
        answer = session.post(url, json={"sid": call.sid, "to": "completed"}, timeout=10).json()
        # initiated, answered and completed were asked for (not ringing); the receiver was down
        assert [d["status"] for d in answer["result"]] == [0, 0, 0]
        assert session.post(url, json={"sid": call.sid, "to": "sideways"}, timeout=10).status_code == 400
    assert twilio_emu.calls(FIXTURE_ACCOUNT)[0]["status"] == "completed"


def test_the_calls_callbacks_in_any_order_end_in_the_same_state(live, tenant, twilio_emu):
    """The callbacks of a real run, parsed as our webhooks parse them, folded into the placement's facts in
    shuffled orders with repeats: the same status, duration, recording and dialer state every time."""
    import random

    from app.core import calls
    from app.core.interactions import derive, merge_facts
    from webhooks.twilio import parse_form

    placed, _headers = place(live, tenant)
    deliveries = delivered(twilio_emu.advance_call(placed["call_sid"], "completed", talk=42))
    streams = {"call-status": "call-status", "recording": "recording", "announce": "announce"}
    events = []
    for d in deliveries:
        path, _, query = d["url"].removeprefix(f"{live.base}/webhooks/twilio/").partition("?")
        form = d["params"]
        raw = {k: [v] for k, v in form.items()}
        events.append(parse_form(streams[path], query.removeprefix("event="), form, raw).facts)
    placement = interaction(placed["id"]).facts
    base = {k: v for k, v in placement.items() if k in ("dialer", "routed_user_id")}
    base["call"] = placement["call"]
    results = set()
    rng = random.Random(5)
    for _ in range(20):
        order = events + rng.sample(events, 3)
        rng.shuffle(order)
        facts = dict(base)
        for f in order:
            facts = merge_facts(facts, f)
        d = derive("call", facts)
        results.add((d.status, d.duration_seconds, d.recording_url, d.to_addr, calls.state_of(facts)))
    [(status, duration, recording, to, state)] = results
    assert (status, duration, to, state) == ("completed", 42, JORDAN, "ended") and recording


def test_the_emulator_can_play_every_call_by_itself_for_demos(live, tenant, twilio_emu, run_worker):
    twilio_emu.auto_call, twilio_emu.auto_call_delay = ["ringing", "answered", "bridged", "completed"], 0.05
    try:
        placed, headers = place(live, tenant)
        assert twilio_emu.settle()
    finally:
        twilio_emu.auto_call = None
    assert state(live, placed["id"], headers) == "ended"
    run_worker()
    assert count(LocalActivity) == 1
