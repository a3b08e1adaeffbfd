"""The dialer API: validation, the bridged call's TwiML (caller ID, recording and its announcement), opt-outs,
rep sessions (expiry, CSRF, the API key alternative), texts and the conversation, outcomes, engagements,
and the incoming-call events of the screen pop. Real SQLite and PostgreSQL, Redis, the Twilio emulator."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select

from app.automation import compliance, store
from app.channels.twilio import bridge_twiml
from app.core import calls, db, optouts, tenants
from app.core.db import utcnow
from app.core.models import Interaction, Tenant
from app.web import reps
from tests.conftest import make_tenant
from tests.signing import FIXTURE_ACCOUNT, TwilioPoster
from tests.web.dialer_support import (  # noqa: F401  (the live and twilio_emu fixtures)
    CONNECTED,
    JORDAN,
    OUR,
    REP_PHONE,
    live_fixture,
    ok,
    session_for,
    twilio_emu_fixture,
    user,
)
from tests.web.test_api import new_key

ROOT = Path(__file__).resolve().parents[2]
SF, NYC, CHICAGO = "+14155550100", "+12125550100", "+13125550100"


def avery(live: Any, tenant: Tenant) -> dict[str, str]:
    return session_for(live.settings, tenant, "avery@acme.example")


def error(response: Any, status: int, field: str | None = None) -> str:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    body = response.get_json()
    assert body.get("field") == field, body
    return str(body["error"])


def set_settings(tenant: Tenant, **values: Any) -> None:
    with db.transaction() as s:
        t = s.get(Tenant, tenant.id)
        t.settings = {**(t.settings or {}), **values}


def add_numbers(tenant: Tenant, *numbers: str) -> None:
    with db.transaction() as s:
        t = s.get(Tenant, tenant.id)
        for n in numbers:
            tenants.add_number(s, t, n)


def fresh(tenant: Tenant) -> Tenant:
    with db.transaction() as s:
        t = s.get(Tenant, tenant.id)
        s.expunge(t)
        return t


# --- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 400, "to"),
        ({"to": ""}, 400, "to"),
        ({"to": 5551234}, 400, "to"),
        ({"to": "call me maybe"}, 400, "to"),
        ({"to": "+1555"}, 400, "to"),
        ({"to": OUR}, 422, "to"),  # our own number
        ({"to": "+15555550198"}, 422, "to"),  # a colleague's phone
        ({"to": JORDAN, "contact_id": "99999"}, 400, "contact_id"),
        ({"to": JORDAN, "contact_id": {"id": 1}}, 400, "contact_id"),
        ({"to": JORDAN, "await_engagement": "yes"}, 400, "await_engagement"),
    ],
)
def test_place_call_validation(live, tenant, twilio_emu, body, status, field):
    error(live.client.post("/api/v1/calls", json=body, headers=avery(live, tenant)), status, field)
    assert twilio_emu.calls(FIXTURE_ACCOUNT) == []  # nothing reached Twilio
    with db.transaction() as s:
        assert s.scalar(select(Interaction.id)) is None  # nothing was recorded


def test_a_body_that_is_not_a_json_object_is_a_400(live, tenant):
    response = live.client.post("/api/v1/calls", data="to=+15555550123", headers=avery(live, tenant))
    assert "JSON object" in error(response, 400)
    assert live.client.post("/api/v1/calls", json=[JORDAN], headers=avery(live, tenant)).status_code == 400


def test_a_rep_without_a_phone_is_not_allowed_to_call(live, tenant):
    casey = session_for(live.settings, tenant, "casey@acme.example")
    assert "no phone" in error(live.client.post("/api/v1/calls", json={"to": JORDAN}, headers=casey), 422)


def test_twilio_refusing_the_call_is_a_502_and_records_nothing(live, tenant, twilio_emu):
    twilio_emu.fail_next(f"/2010-04-01/Accounts/{FIXTURE_ACCOUNT}/Calls.json", status=400, code=21215)
    response = live.client.post("/api/v1/calls", json={"to": JORDAN}, headers=avery(live, tenant))
    assert "Twilio refused" in error(response, 502)
    with db.transaction() as s:
        assert s.scalar(select(Interaction.id)) is None


def test_an_opted_out_number_is_refused_for_calls_and_texts(live, tenant, twilio_emu):
    optouts.set_opt_out(tenant.id, JORDAN, True, "keyword")
    headers = avery(live, tenant)
    assert "opted out" in error(
        live.client.post("/api/v1/calls", json={"to": JORDAN}, headers=headers), 409, "to"
    )
    response = live.client.post("/api/v1/messages", json={"to": JORDAN, "body": "hi"}, headers=headers)
    assert "opted out" in error(response, 409, "to")
    assert twilio_emu.calls(FIXTURE_ACCOUNT) == [] and twilio_emu.messages(FIXTURE_ACCOUNT) == []


# --- the bridged call's TwiML ----------------------------------------------------------------------------


def test_caller_id_is_the_number_local_to_the_customer(live, tenant, twilio_emu):
    add_numbers(tenant, SF, NYC)
    for number in (SF, NYC):
        twilio_emu.add_number(FIXTURE_ACCOUNT, number)
    headers = avery(live, tenant)
    assert (
        ok(live.client.post("/api/v1/calls", json={"to": "+14155550123"}, headers=headers), 201)["from"] == SF
    )
    assert (
        ok(live.client.post("/api/v1/calls", json={"to": "+12125550123"}, headers=headers), 201)["from"]
        == NYC
    )
    # no number in Chicago's area code: the tenant's first number, unless the rep or tenant chose a default
    assert ok(live.client.post("/api/v1/calls", json={"to": CHICAGO}, headers=headers), 201)["from"] == OUR
    set_settings(tenant, default_caller_id=NYC)
    assert ok(live.client.post("/api/v1/calls", json={"to": CHICAGO}, headers=headers), 201)["from"] == NYC
    set_settings(tenant, rep_caller_ids={"avery@acme.example": SF})
    assert ok(live.client.post("/api/v1/calls", json={"to": CHICAGO}, headers=headers), 201)["from"] == SF
    twiml = twilio_emu.calls(FIXTURE_ACCOUNT)[-1]["twiml"]
    assert f'callerId="{SF}"' in twiml and f">{CHICAGO}</Number>" in twiml
    assert [c["to"] for c in twilio_emu.calls(FIXTURE_ACCOUNT)] == [REP_PHONE] * 5  # the rep rings first


def test_recording_is_announced_where_every_party_must_consent(live, tenant, twilio_emu):
    headers = avery(live, tenant)
    placed = ok(live.client.post("/api/v1/calls", json={"to": "+14155550123"}, headers=headers), 201)
    assert placed["recording"] is True
    twiml = twilio_emu.calls(FIXTURE_ACCOUNT)[-1]["twiml"]
    assert 'record="record-from-answer-dual"' in twiml
    assert f'recordingStatusCallback="{live.base}/webhooks/twilio/recording"' in twiml
    assert f'url="{live.base}/webhooks/twilio/announce"' in twiml  # California: two-party consent
    ok(live.client.post("/api/v1/calls", json={"to": "+12125550123"}, headers=headers), 201)
    twiml = twilio_emu.calls(FIXTURE_ACCOUNT)[-1]["twiml"]
    assert 'record="record-from-answer-dual"' in twiml and "announce" not in twiml  # New York: one party


def test_recording_policies(tenant):
    ca, ny = "+14155550123", "+12125550123"
    policy = calls.recording_for(fresh(tenant), ca)
    assert (policy.record, policy.announce) == (True, True) and "CA" in policy.reason
    assert calls.recording_for(fresh(tenant), ny).announce is False
    assert calls.recording_for(fresh(tenant), JORDAN).announce is True  # 555: place unknown, announce
    set_settings(tenant, recording_consent_states=["ny"])
    assert (
        calls.recording_for(fresh(tenant), ny).announce,
        calls.recording_for(fresh(tenant), ca).announce,
    ) == (
        True,
        False,
    )
    set_settings(tenant, dialer_recording="always")
    assert (
        calls.recording_for(fresh(tenant), ca).record,
        calls.recording_for(fresh(tenant), ca).announce,
    ) == (
        True,
        False,
    )
    set_settings(tenant, dialer_recording="never")
    never = calls.recording_for(fresh(tenant), ca)
    twiml = bridge_twiml(base="https://sb.example", to=ca, caller_id=OUR, recording=never, timeout=30)
    assert "record=" not in twiml and "url=" not in twiml and 'answerOnBridge="true"' in twiml
    assert 'statusCallbackEvent="initiated ringing answered completed"' in twiml
    assert 'action="https://sb.example/webhooks/twilio/call-status?event=dial"' in twiml


def test_us_states_from_area_codes():
    assert [calls.us_state(n) for n in ("+14155550123", "+12065550100", "+16175550100", "+442079460000")] == [
        "CA",
        "WA",
        "MA",
        None,
    ]


# --- sessions ----------------------------------------------------------------------------------------------


def test_no_session_a_forged_one_or_an_expired_one_is_a_401(live, tenant):
    assert live.client.get("/api/v1/calls").status_code == 401
    forged = reps.issue("not-our-secret", tenant.id, user("avery@acme.example").id)
    assert error(live.client.get("/api/v1/calls", headers={"Authorization": f"Rep {forged}"}), 401) == (
        "session expired"
    )

    class NineHoursAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 9 * 3600

    old = URLSafeTimedSerializer(live.settings.secret_keys[0], salt=reps.SALT, signer=NineHoursAgo).dumps(
        {"t": tenant.id, "u": user("avery@acme.example").id, "c": "nonce"}
    )
    response = live.client.get("/api/v1/calls", headers={"Authorization": f"Rep {old}"})
    assert error(response, 401) == "session expired"
    fresh_token = reps.issue(live.settings.secret_keys[0], tenant.id, user("avery@acme.example").id)
    assert (
        live.client.get("/api/v1/calls", headers={"Authorization": f"Rep {fresh_token}"}).status_code == 200
    )


def test_a_cookie_session_needs_the_csrf_token_to_change_anything(live, tenant, twilio_emu):
    token = reps.issue(live.settings.secret_keys[0], tenant.id, user("avery@acme.example").id)
    rep = reps.load(live.settings, token)
    assert rep is not None
    live.client.set_cookie(reps.COOKIE, token)
    assert live.client.get("/api/v1/rep/me").status_code == 200  # reading needs no token
    response = live.client.post("/api/v1/calls", json={"to": JORDAN})
    assert "X-CSRF-Token" in error(response, 403)
    response = live.client.post("/api/v1/calls", json={"to": JORDAN}, headers={"X-CSRF-Token": "guess"})
    error(response, 403)
    assert twilio_emu.calls(FIXTURE_ACCOUNT) == []
    ok(live.client.post("/api/v1/calls", json={"to": JORDAN}, headers={"X-CSRF-Token": rep.csrf}), 201)


def test_set_cookie_is_httponly_secure_samesite_none(live):
    from flask import Response

    with live.app.test_request_context():
        response = reps.set_cookie(Response(), "tok")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=None" in cookie


def test_the_api_key_works_with_a_user_id(live, tenant, twilio_emu):
    key = {"Authorization": f"Bearer {new_key(tenant)}"}
    assert "user_id" in error(
        live.client.post("/api/v1/calls", json={"to": JORDAN}, headers=key), 400, "user_id"
    )
    sam = user("sam@acme.example")
    placed = ok(live.client.post("/api/v1/calls", json={"to": JORDAN, "user_id": sam.id}, headers=key), 201)
    assert twilio_emu.calls(FIXTURE_ACCOUNT)[0]["to"] == "+15555550198"  # Sam's phone rang
    with db.transaction() as s:
        assert s.get(Interaction, placed["id"]).user_id == sam.id
    assert ok(live.client.get(f"/api/v1/calls/{placed['id']}", headers=key))["id"] == placed["id"]
    other = make_tenant("globex", "AC" + "2" * 32, "f" * 32, number="+15555550111", rep_phone="+15555550112")
    with db.transaction() as s:
        stranger = s.scalar(select(tenants.User.id).where(tenants.User.tenant_id == other.id))
    error(
        live.client.post("/api/v1/calls", json={"to": JORDAN, "user_id": stranger}, headers=key),
        400,
        "user_id",
    )
    error(live.client.get(f"/api/v1/calls/{placed['id']}", headers={"Authorization": "Bearer nope"}), 401)


def test_rep_me(live, tenant):
    me = ok(live.client.get("/api/v1/rep/me", headers=avery(live, tenant)))
    assert me["user"] == {
        "id": user("avery@acme.example").id,
        "name": "Avery Reyes",
        "email": "avery@acme.example",
        "phone": REP_PHONE,
    }
    assert me["tenant"] == {"id": tenant.id, "name": "acme", "crm": "local"} and me["crm_hosts"] == []
    assert reps.crm_hosts("hubspot") == ["https://app.hubspot.com", "https://app-eu1.hubspot.com"]


# --- outcomes and engagements ----------------------------------------------------------------------------


def test_dispositions_default_to_hubspots_standard_outcomes(live, tenant):
    outcomes = ok(live.client.get("/api/v1/dispositions", headers=avery(live, tenant)))["outcomes"]
    assert {"id": CONNECTED, "label": "Connected"} in outcomes and len(outcomes) == 6
    set_settings(tenant, call_outcomes=[{"id": "won", "label": "Booked a demo"}])
    outcomes = ok(live.client.get("/api/v1/dispositions", headers=avery(live, tenant)))["outcomes"]
    assert outcomes == [{"id": "won", "label": "Booked a demo"}]


def test_disposition_and_engagement_validation(live, tenant):
    headers = avery(live, tenant)
    placed = ok(live.client.post("/api/v1/calls", json={"to": JORDAN}, headers=headers), 201)
    url = f"/api/v1/calls/{placed['id']}"
    error(live.client.post(f"{url}/disposition", json={"outcome": "great"}, headers=headers), 400, "outcome")
    error(live.client.post(f"{url}/disposition", json={"notes": "x"}, headers=headers), 400, "outcome")
    response = live.client.post(
        f"{url}/disposition", json={"outcome": CONNECTED, "notes": 3}, headers=headers
    )
    error(response, 400, "notes")
    body = {"outcome": CONNECTED, "notes": "x" * 10_001}
    error(live.client.post(f"{url}/disposition", json=body, headers=headers), 400, "notes")
    error(
        live.client.post(f"{url}/engagement", json={"engagement_id": "abc"}, headers=headers),
        400,
        "engagement_id",
    )
    assert (
        ok(live.client.post(f"{url}/engagement", json={"engagement_id": 987}, headers=headers))[
            "engagement_id"
        ]
        == "987"
    )
    ok(live.client.post(f"{url}/engagement", json={"engagement_id": "987"}, headers=headers))  # again: fine
    error(
        live.client.post(f"{url}/engagement", json={"engagement_id": "988"}, headers=headers),
        409,
        "engagement_id",
    )
    assert live.client.post("/api/v1/calls/999999/disposition", json={}, headers=headers).status_code == 404


# --- texts -------------------------------------------------------------------------------------------------


def test_a_rep_texts_and_reads_the_conversation(live, tenant, twilio_emu):
    headers = avery(live, tenant)
    error(live.client.post("/api/v1/messages", json={"to": JORDAN}, headers=headers), 400, "body")
    error(
        live.client.post("/api/v1/messages", json={"to": JORDAN, "body": "x" * 1601}, headers=headers),
        400,
        "body",
    )
    sent = ok(
        live.client.post("/api/v1/messages", json={"to": JORDAN, "body": "On my way"}, headers=headers), 201
    )
    [message] = twilio_emu.messages(FIXTURE_ACCOUNT)
    assert (sent["sid"], sent["to"], sent["from"]) == (message["sid"], JORDAN, OUR)
    assert message["status_callback"] == f"{live.base}/webhooks/twilio/sms-status"
    avery_id = user("avery@acme.example").id
    with db.transaction() as s:
        row = s.get(Interaction, sent["id"])
        assert (row.user_id, row.direction, row.body) == (avery_id, "outbound", "On my way")
    reply = {
        "AccountSid": FIXTURE_ACCOUNT,
        "MessageSid": "SM" + "7" * 32,
        "From": JORDAN,
        "To": OUR,
        "Body": "Great, thanks",
        "NumMedia": "0",
    }
    poster = TwilioPoster(live.client, live.base, twilio_emu.accounts[FIXTURE_ACCOUNT].auth_token)
    assert poster.post("/webhooks/twilio/sms", reply).status_code == 200
    thread = ok(live.client.get("/api/v1/conversation?phone=(555) 555-0123", headers=headers))["messages"]
    assert [(m["direction"], m["body"]) for m in thread] == [
        ("outbound", "On my way"),
        ("inbound", "Great, thanks"),
    ]
    error(live.client.get("/api/v1/conversation?phone=nope", headers=headers), 400, "phone")


def test_quiet_hours_hold_automated_texts_not_a_reps(live, tenant, twilio_emu):
    # The tenant's rules keep automated texts to a window that is closed now in the contact's time zone...
    now = utcnow()
    opens = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    window = f"{opens:%H:%M}-{opens + timedelta(hours=1):%H:%M}"
    rules = (ROOT / "app/automation/default_rules.yaml").read_text()
    rules = rules.replace('"08:00-21:00"', f'"{window}"').replace("America/New_York", "UTC", 1)
    store.store_rules(tenant.id, rules)
    active = store.active_rules(tenant.id, fresh=True)
    assert active is not None and active[1].settings.quiet_hours == window
    tz = compliance.time_zone_for(JORDAN, None, active[1].settings.default_time_zone)
    assert compliance.next_allowed(now, tz, *compliance.parse_window(window)) > now  # closed for robots
    # ... but a rep typing a text is a person, not an automation: it goes out at once.
    sent = ok(
        live.client.post(
            "/api/v1/messages",
            json={"to": JORDAN, "body": "Calling you back now"},
            headers=avery(live, tenant),
        ),
        201,
    )
    [message] = twilio_emu.messages(FIXTURE_ACCOUNT)
    assert (message["sid"], message["to"], message["body"]) == (sent["sid"], JORDAN, "Calling you back now")


def test_a_text_twilio_refuses_as_opted_out_is_a_409_and_recorded(live, tenant, twilio_emu):
    twilio_emu.opt_out(FIXTURE_ACCOUNT, JORDAN)  # Twilio knows; we did not yet
    response = live.client.post(
        "/api/v1/messages", json={"to": JORDAN, "body": "hi"}, headers=avery(live, tenant)
    )
    error(response, 409, "to")
    assert optouts.is_opted_out(tenant.id, JORDAN)


# --- the screen pop ----------------------------------------------------------------------------------------


def incoming_call(live: Any, twilio_emu: Any, sid: str) -> Any:
    poster = TwilioPoster(live.client, live.base, twilio_emu.accounts[FIXTURE_ACCOUNT].auth_token)
    params = {
        "AccountSid": FIXTURE_ACCOUNT,
        "CallSid": sid,
        "From": JORDAN,
        "To": OUR,
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    return poster.post("/webhooks/twilio/voice", params)


def test_an_incoming_call_pops_on_the_dialer_of_the_rep_it_rings(live, tenant, twilio_emu):
    sam = session_for(live.settings, tenant, "sam@acme.example")
    first = ok(live.client.get("/api/v1/rep/events", headers=sam))
    assert first["events"] == []
    assert incoming_call(live, twilio_emu, "CA" + "5" * 32).status_code == 200  # Jordan's owner Sam rings
    popped = ok(live.client.get(f"/api/v1/rep/events?after={first['cursor']}", headers=sam))
    [event] = popped["events"]
    assert (event["kind"], event["from"], event["contact"]["name"]) == (
        "incoming_call",
        JORDAN,
        "Jordan Rivera",
    )
    assert event["contact"]["url"] and event["call_id"]
    again = ok(live.client.get(f"/api/v1/rep/events?after={popped['cursor']}", headers=sam))
    assert again["events"] == []  # each call pops once
    # a page opened while it rings still pops it; another rep's dialer never does
    assert [e["call_id"] for e in ok(live.client.get("/api/v1/rep/events", headers=sam))["events"]] == [
        event["call_id"]
    ]
    assert (
        ok(live.client.get(f"/api/v1/rep/events?after={first['cursor']}", headers=avery(live, tenant)))[
            "events"
        ]
        == []
    )
    error(live.client.get("/api/v1/rep/events?after=x", headers=sam), 400, "after")
    detail = ok(live.client.get(f"/api/v1/calls/{event['call_id']}", headers=sam))
    assert (detail["direction"], detail["from"], detail["to"], detail["state"]) == (
        "inbound",
        JORDAN,
        OUR,
        "ringing_rep",
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("get", "/api/v1/calls?limit=%C2%B2", None, "limit"),  # a superscript two: isdigit, not int()
        ("get", "/api/v1/rep/events?after=%C2%B2%C2%B3", None, "after"),
        ("get", "/api/v1/rep/events?after=99999999999999999999999", None, "after"),
        ("get", "/api/v1/conversation?phone=%00", None, "phone"),
        ("post", "/api/v1/calls", {"to": "+1555555\x000123"}, "to"),
        ("post", "/api/v1/calls", {"to": JORDAN, "contact_id": "١٢٣"}, "contact_id"),
        ("post", "/api/v1/messages", {"to": JORDAN, "body": "a\x00b"}, "body"),
    ],
)
def test_odd_input_is_a_400_naming_the_field(live, tenant, method, path, body, field):
    headers = avery(live, tenant)
    response = (
        getattr(live.client, method)(path, json=body, headers=headers)
        if body
        else getattr(live.client, method)(path, headers=headers)
    )
    error(response, 400, field)


def test_odd_ids_are_refused_without_a_500(live, tenant):
    key = {"Authorization": f"Bearer {new_key(tenant)}"}
    error(live.client.get("/api/v1/calls?user_id=%C2%B2", headers=key), 400, "user_id")
    error(live.client.get("/api/v1/calls?user_id=99999999999999", headers=key), 400, "user_id")
    assert live.client.get("/api/v1/calls/99999999999999999999999", headers=key).status_code == 404
    headers = avery(live, tenant)
    placed = ok(live.client.post("/api/v1/calls", json={"to": JORDAN}, headers=headers), 201)
    response = live.client.post(
        f"/api/v1/calls/{placed['id']}/engagement", json={"engagement_id": "١٢٣"}, headers=headers
    )
    error(response, 400, "engagement_id")


def _facts(parent: str | None = None, legs: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {"call": {"direction": "outbound-api", "to": REP_PHONE}, "dialer": {"to": JORDAN}}
    if parent:
        facts["parent_status"] = {"status": parent, "seq": 1}
    if legs:
        facts["legs"] = {sid: {"status": st, "seq": 1} for sid, st in legs.items()}
    return {**facts, **extra}


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (_facts("queued"), "ringing_rep"),
        (_facts("ringing"), "ringing_rep"),
        (_facts("in-progress"), "connecting"),
        (_facts("in-progress", {"CA2": "ringing"}), "connecting"),
        (_facts("in-progress", {"CA2": "in-progress"}), "live"),
        (_facts("completed", {"CA2": "completed"}), "ended"),
        (_facts("in-progress", {"CA2": "no-answer"}), "ended"),  # the customer did not pick up
        (_facts("in-progress", {"CA2": "failed"}), "failed"),  # the customer's leg could not be placed
        (_facts("busy"), "failed"),  # the rep's phone was busy
        (_facts("no-answer"), "failed"),
        (_facts("canceled", dialer={"to": JORDAN, "hangup_at": "2026-12-02T15:00:00+00:00"}), "ended"),
        (
            {"call": {"direction": "inbound"}, "parent_status": {"status": "ringing", "seq": -1}},
            "ringing_rep",
        ),
        ({"call": {"direction": "inbound"}, "parent_status": {"status": "completed", "seq": 3}}, "ended"),
    ],
)
def test_dialer_states(facts, expected):
    assert calls.state_of(facts) == expected
