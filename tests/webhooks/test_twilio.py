"""One test per Twilio fixture: post the exact captured body, signed, and check what the service did with it.

Zulip-style: CASES maps every file in tests/fixtures/twilio to the endpoint Twilio would post it to and the
outcome we expect (HTTP answer, the ledger row, the interaction it folds into). A fixture added without an
entry here fails test_every_fixture_has_a_case. Each test starts from empty tables, so the interaction is
derived from that single webhook; the stories across webhooks live in test_interactions.py.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest
from redis import Redis
from rq import Queue
from sqlalchemy import select

from app.core import db
from app.core.models import Interaction, Tenant, User, WebhookEvent
from app.core.settings import Settings
from tests.conftest import PUBLIC_BASE, count
from tests.signing import FIXTURES, TwilioPoster, fixture_body

HOOKS = f"{PUBLIC_BASE}/webhooks/twilio"
VOICE = "/webhooks/twilio/voice"
CALL_STATUS = "/webhooks/twilio/call-status"
DIAL_ACTION = "/webhooks/twilio/call-status?event=dial"
RECORDING = "/webhooks/twilio/recording"
TRANSCRIPTION = "/webhooks/twilio/transcription"
SMS = "/webhooks/twilio/sms"
SMS_STATUS = "/webhooks/twilio/sms-status"

OUR_NUMBER = "+15555550100"
CUSTOMER = "+15555550123"
AVERY = "avery@acme.example"  # default user, phone +15555550199 (the rep leg of the click-to-call)
SAM = "sam@acme.example"  # owns Jordan Rivera in the built-in CRM, phone +15555550198

INBOUND_CALL = "CA00000000000000000000000000000011"
AGENT_LEG = "CA00000000000000000000000000000021"
OUTBOUND_SMS = "SM00000000000000000000000000000041"
TWIML_EMPTY_SMS = '<?xml version="1.0" encoding="UTF-8"?><Response />'


def recording_url(sid: str) -> str:
    """The RecordingUrl in the fixtures."""
    return f"https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000001/Recordings/{sid}"


def at(hh: int, mm: int, ss: int) -> datetime:
    """A time on the fixtures' day (2025-03-11, UTC)."""
    return datetime(2025, 3, 11, hh, mm, ss, tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    """Where a fixture is posted and what must come of it."""

    path: str
    http: int
    stream: str
    channel: str
    provider_id: str
    status: str
    twiml: str | None = None  # a fragment the TwiML answer must contain (None: 204, empty body)
    user: str | None = None  # email of the user the interaction is attributed to
    party_phone: str | None = None
    our_number: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # further Interaction columns


def outbound_leg(status: str, sid: str = AGENT_LEG, **fields: Any) -> Case:
    """A status callback of an outbound-api call to Avery's phone from our number (no <Dial>)."""
    return Case(
        CALL_STATUS,
        204,
        "call-status",
        "call",
        sid,
        status,
        user=AVERY,
        our_number=OUR_NUMBER,
        fields={"direction": "outbound", "from_addr": OUR_NUMBER, "to_addr": "+15555550199", **fields},
    )


def sms_status(status: str, error_code: str | None = None) -> Case:
    """An outbound message status callback."""
    return Case(
        SMS_STATUS,
        204,
        "sms-status",
        "sms",
        OUTBOUND_SMS,
        status,
        party_phone=CUSTOMER,
        our_number=OUR_NUMBER,
        fields={
            "direction": "outbound",
            "error_code": error_code,
            "from_addr": OUR_NUMBER,
            "to_addr": CUSTOMER,
        },
    )


def sms_inbound(sid: str, body: str, media: list[dict[str, Any]] | None = None) -> Case:
    """An incoming message: answered with empty TwiML."""
    return Case(
        SMS,
        200,
        "sms",
        "sms",
        sid,
        "received",
        twiml=TWIML_EMPTY_SMS,
        party_phone=CUSTOMER,
        our_number=OUR_NUMBER,
        fields={"direction": "inbound", "body": body, "media": media or [], "error_code": None},
    )


MMS_MEDIA = "https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000001/Messages/"
MMS_MEDIA += "MM00000000000000000000000000000032/Media/"

CASES: dict[str, Case] = {
    # An inbound call from Jordan: the voice webhook rings Jordan's owner, Sam.
    "voice__incoming": Case(
        VOICE,
        200,
        "voice",
        "call",
        INBOUND_CALL,
        "ringing",
        twiml="<Number",
        user=SAM,
        party_phone=CUSTOMER,
        our_number=OUR_NUMBER,
        fields={
            "direction": "inbound",
            "from_addr": CUSTOMER,
            "to_addr": OUR_NUMBER,
            "duration_seconds": None,
        },
    ),
    # The click-to-call rep leg (outbound-api parent) on its own: no <Dial> seen, so answered = in progress.
    "voice__status_initiated": outbound_leg("initiated", occurred_at=at(16, 5, 4), ended_at=None),
    "voice__status_ringing": outbound_leg("ringing", ended_at=None),
    "voice__status_answered": outbound_leg("in-progress", ended_at=None),
    "voice__status_completed": outbound_leg(
        "completed", duration_seconds=109, occurred_at=at(16, 5, 12), ended_at=at(16, 7, 1)
    ),
    "voice__status_busy": outbound_leg(
        "busy",
        "CA00000000000000000000000000000041",
        duration_seconds=None,
        occurred_at=at(16, 20, 9),
        ended_at=at(16, 20, 9),
    ),
    "voice__status_no_answer": outbound_leg(
        "no-answer",
        "CA00000000000000000000000000000042",
        duration_seconds=None,
        occurred_at=at(16, 31, 37),
        ended_at=at(16, 31, 37),
    ),
    "voice__status_canceled": outbound_leg(
        "canceled",
        "CA00000000000000000000000000000043",
        duration_seconds=None,
        occurred_at=at(16, 40, 15),
        ended_at=at(16, 40, 15),
    ),
    "voice__status_failed": outbound_leg(
        "failed",
        "CA00000000000000000000000000000044",
        duration_seconds=None,
        occurred_at=at(16, 45, 2),
        ended_at=at(16, 45, 2),
    ),
    # The customer's child leg folds into the parent CallSid; answered, but the parent has not ended yet.
    "voice__child_leg_completed": Case(
        CALL_STATUS,
        204,
        "call-status",
        "call",
        AGENT_LEG,
        "in-progress",
        party_phone=CUSTOMER,
        fields={"direction": None, "duration_seconds": 100, "ended_at": None},
    ),
    "voice__dial_action_completed": Case(
        DIAL_ACTION,
        200,
        "call-status",
        "call",
        AGENT_LEG,
        "in-progress",
        twiml="<Hangup />",
        fields={"duration_seconds": 100, "recording_url": None},
    ),
    # The rep's click-to-call leg: the customer did not answer, so the rep is hung up on (no voicemail).
    # No call facts yet, so the direction is unknown and the outcome is the <Dial> outcome itself.
    "voice__dial_action_no_answer": Case(
        DIAL_ACTION,
        200,
        "call-status",
        "call",
        AGENT_LEG,
        "no-answer",
        twiml="<Hangup />",
        fields={"duration_seconds": None, "recording_url": None},
    ),
    # A DialVerb recording alone says nothing about the call's progress.
    "voice__recording_completed": Case(
        RECORDING,
        204,
        "recording",
        "call",
        AGENT_LEG,
        "initiated",
        fields={"recording_url": recording_url("RE00000000000000000000000000000021")},
    ),
    "voice__recording_voicemail": Case(
        RECORDING,
        204,
        "recording",
        "call",
        INBOUND_CALL,
        "voicemail",
        fields={
            "recording_url": recording_url("RE00000000000000000000000000000011"),
            "duration_seconds": None,
        },
    ),
    "voice__transcription_completed": Case(
        TRANSCRIPTION,
        204,
        "transcription",
        "call",
        INBOUND_CALL,
        "initiated",
        fields={
            "body": "Hi, this is Jordan calling about the quote you sent this morning. "
            "Please call me back at your convenience. Thanks.",
            "recording_url": None,
        },
    ),
    "sms__inbound": sms_inbound(
        "SM00000000000000000000000000000031", "Hi, can someone call me back about my order? Thanks - Jordan"
    ),
    "sms__inbound_mms": sms_inbound(
        "MM00000000000000000000000000000032",
        "",
        [
            {"url": MMS_MEDIA + "ME00000000000000000000000000000001", "content_type": "image/jpeg"},
            {"url": MMS_MEDIA + "ME00000000000000000000000000000002", "content_type": "image/png"},
        ],
    ),
    "sms__inbound_stop": sms_inbound("SM00000000000000000000000000000033", "STOP"),
    "sms__status_queued": sms_status("queued"),
    "sms__status_sent": sms_status("sent"),
    "sms__status_delivered": sms_status("delivered"),
    "sms__status_failed": sms_status("failed", "30007"),
    "sms__status_undelivered": sms_status("undelivered", "30003"),
}


def user_id(email: str | None) -> int | None:
    """The id of the tenant's user with that email."""
    if email is None:
        return None
    with db.transaction() as s:
        return s.scalar(select(User.id).where(User.email == email))


def only_interaction() -> Interaction:
    """The one interaction in the database."""
    with db.transaction() as s:
        rows = list(s.scalars(select(Interaction)))
    assert len(rows) == 1, rows
    return rows[0]


def only_event() -> WebhookEvent:
    """The one ledger row in the database."""
    with db.transaction() as s:
        rows = list(s.scalars(select(WebhookEvent)))
    assert len(rows) == 1, rows
    return rows[0]


def twiml(response: Any) -> ET.Element:
    """The TwiML document of a response, parsed."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/xml"
    return ET.fromstring(response.data)


# --- the mapping covers the folder --------------------------------------------------------------------


def test_every_fixture_has_a_case() -> None:
    files = sorted(p.name for p in FIXTURES.iterdir() if p.is_file())
    assert files, f"no fixtures in {FIXTURES}"
    assert all(name.endswith(".form") for name in files), files
    assert sorted(name.removesuffix(".form") for name in files) == sorted(CASES)


# --- one test per fixture -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture(name: str, tenant: Tenant, twilio: TwilioPoster) -> None:
    case = CASES[name]
    response = twilio.fixture(case.path, name)

    assert response.status_code == case.http, response.get_data(as_text=True)
    if case.twiml is None:
        assert response.data == b""
    else:
        assert response.mimetype == "text/xml"
        assert case.twiml in response.get_data(as_text=True)

    event = only_event()
    interaction = only_interaction()
    expected_payload = parse_qs(fixture_body(name), keep_blank_values=True, strict_parsing=True)
    assert isinstance(event.payload, dict)
    assert all(isinstance(v, list) for v in event.payload.values())
    assert event.payload == expected_payload
    assert event.provider == "twilio"
    assert event.stream == case.stream
    assert event.tenant_id == tenant.id
    assert event.interaction_id == interaction.id

    assert interaction.tenant_id == tenant.id
    assert interaction.provider == "twilio"
    assert interaction.channel == case.channel
    assert interaction.provider_id == case.provider_id
    assert interaction.status == case.status
    assert interaction.version == 1
    assert interaction.sync_state == "pending"
    assert interaction.user_id == user_id(case.user)
    assert interaction.party_phone == case.party_phone
    assert interaction.our_number == case.our_number
    for column, value in case.fields.items():
        assert getattr(interaction, column) == value, column


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_posted_twice_is_recorded_once(
    name: str, tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis
) -> None:
    case = CASES[name]
    first = twilio.fixture(case.path, name)
    assert first.status_code == case.http, first.get_data(as_text=True)
    before = only_interaction()
    queue = Queue(settings.queue_name, connection=redis_conn)
    jobs_after_first = queue.job_ids
    assert [j for j in jobs_after_first if j.startswith("sync-")] == [f"sync-{before.id}"]  # one CRM sync

    again = twilio.fixture(case.path, name)
    assert again.status_code == case.http, again.get_data(as_text=True)
    assert again.data == first.data

    assert count(WebhookEvent) == 1
    after = only_interaction()
    assert after.id == before.id
    assert after.version == before.version == 1
    assert after.status == before.status == case.status
    assert after.facts == before.facts
    assert after.updated_at == before.updated_at
    assert queue.job_ids == jobs_after_first  # and the duplicate asked for nothing more


# --- TwiML details ------------------------------------------------------------------------------------


def test_incoming_call_rings_the_contact_owner(tenant: Tenant, twilio: TwilioPoster) -> None:
    doc = twiml(twilio.fixture(VOICE, "voice__incoming"))
    assert doc.tag == "Response"
    dials = doc.findall("Dial")
    assert len(dials) == 1
    dial = dials[0]
    assert dial.get("action") == f"{HOOKS}/call-status?event=dial"
    assert dial.get("method") == "POST"
    assert dial.get("timeout") == "20"
    assert dial.get("answerOnBridge") == "true"
    assert dial.get("record") == "record-from-answer-dual"
    assert dial.get("recordingStatusCallback") == f"{HOOKS}/recording"
    numbers = dial.findall("Number")
    assert [n.text for n in numbers] == ["+15555550198"]  # Sam, who owns Jordan Rivera
    assert numbers[0].get("statusCallback") == f"{HOOKS}/call-status"
    assert numbers[0].get("statusCallbackEvent") == "initiated ringing answered completed"

    urls = [v for el in doc.iter() for k, v in el.attrib.items() if k in ("action",) or "allback" in k]
    urls = [u for u in urls if u.startswith("http")]
    assert len(urls) == 3
    assert all(u.startswith(f"{HOOKS}/") for u in urls), urls
    assert only_interaction().user_id == user_id(SAM)


def test_dial_no_answer_prompts_inbound_caller_for_voicemail(tenant: Tenant, twilio: TwilioPoster) -> None:
    twilio.fixture("/webhooks/twilio/voice", "voice__incoming")
    doc = twiml(
        twilio.fixture(
            DIAL_ACTION,
            "voice__dial_action_no_answer",
            CallSid="CA00000000000000000000000000000011",
            Direction="inbound",
        )
    )
    assert [el.tag for el in doc] == ["Say", "Record"]
    assert doc.findtext("Say") == (
        "Sorry, we can't take your call right now. Please leave a message after the tone."
    )
    record = doc.find("Record")
    assert record is not None
    assert record.get("action") == f"{HOOKS}/call-status?event=record"
    assert record.get("maxLength") == "120"
    assert record.get("playBeep") == "true"
    assert record.get("recordingStatusCallback") == f"{HOOKS}/recording"
    assert record.get("recordingStatusCallbackEvent") == "completed absent"
    assert doc.find("Hangup") is None
    assert only_interaction().facts["voicemail_prompted"] is True


def test_dial_completed_hangs_up(tenant: Tenant, twilio: TwilioPoster) -> None:
    doc = twiml(twilio.fixture(DIAL_ACTION, "voice__dial_action_completed"))
    assert [el.tag for el in doc] == ["Hangup"]
    assert "voicemail_prompted" not in only_interaction().facts


def test_inbound_sms_is_answered_with_empty_twiml(tenant: Tenant, twilio: TwilioPoster) -> None:
    doc = twiml(twilio.fixture(SMS, "sms__inbound"))
    assert doc.tag == "Response"
    assert list(doc) == []
