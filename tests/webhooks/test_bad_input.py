"""Bad webhook input: every refusal answers with the right status and a JSON body, and stores nothing.

"Stores nothing" means no ledger row, no interaction and no RQ job. Each case runs against SQLite and
PostgreSQL (the `database_url` fixture), with a real Redis, and with real Twilio signatures.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest
from redis import Redis
from rq import Queue
from twilio.request_validator import RequestValidator

from app.core.models import Interaction, Tenant, WebhookEvent
from app.core.settings import MAX_BODY_BYTES, Settings
from tests.conftest import PUBLIC_BASE, count, make_tenant
from tests.signing import FIXTURE_TOKEN, TwilioPoster, fixture_body, fixture_params

OTHER_ACCOUNT = "AC" + "b" * 32
OTHER_TOKEN = "fedcba9876543210fedcba9876543210"
OTHER_NUMBER = "+15555550200"
UNKNOWN_ACCOUNT = "AC" + "9" * 32

VOICE = "/webhooks/twilio/voice"
CALL_STATUS = "/webhooks/twilio/call-status"
DIAL = "/webhooks/twilio/call-status?event=dial"
RECORDING = "/webhooks/twilio/recording"
TRANSCRIPTION = "/webhooks/twilio/transcription"
SMS = "/webhooks/twilio/sms"
SMS_STATUS = "/webhooks/twilio/sms-status"


# --- helpers -----------------------------------------------------------------------------------------


def assert_nothing_stored(settings: Settings, redis_conn: Redis) -> None:
    """No ledger row, no interaction, no job in the queue (nor anywhere else in Redis)."""
    assert count(WebhookEvent) == 0
    assert count(Interaction) == 0
    assert Queue(settings.queue_name, connection=redis_conn).count == 0
    assert list(redis_conn.scan_iter("rq:job:*")) == []


def json_error(response: Any, status: int) -> dict[str, Any]:
    """Assert the status and a JSON error body; return the body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.headers.get("Content-Type")
    body = response.get_json()
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), str) and body["error"]
    return body


def without(name: str, *fields: str, **changes: str) -> dict[str, str]:
    """A fixture's parameters with some fields removed and others changed."""
    params = {**fixture_params(name), **changes}
    for field in fields:
        params.pop(field, None)
    return params


def signature_for(url: str, params: dict[str, str], token: str = FIXTURE_TOKEN) -> str:
    """What Twilio would send as X-Twilio-Signature for `params` posted to `url`."""
    return RequestValidator(token).compute_signature(url, params)


@pytest.fixture
def other_tenant(tenant: Tenant) -> Tenant:
    """A second tenant with its own Twilio account, auth token and number."""
    return make_tenant("globex", OTHER_ACCOUNT, OTHER_TOKEN, number=OTHER_NUMBER)


# --- sanity: the same fixtures are accepted when nothing is wrong ----------------------------------


def test_control_valid_fixture_is_accepted(tenant: Tenant, twilio: TwilioPoster) -> None:
    """The bad cases below differ from an accepted request only in what they break."""
    r = twilio.fixture(SMS, "sms__inbound")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert count(WebhookEvent) == 1
    assert count(Interaction) == 1


# --- 403: authentication --------------------------------------------------------------------------


def test_missing_signature_is_forbidden(
    tenant: Tenant, client: Any, settings: Settings, redis_conn: Redis
) -> None:
    r = client.post(
        VOICE,
        data=fixture_body("voice__incoming"),
        content_type="application/x-www-form-urlencoded",
        base_url=PUBLIC_BASE,
    )
    body = json_error(r, 403)
    assert "signature" in body["error"].lower()
    assert_nothing_stored(settings, redis_conn)


def test_empty_signature_is_forbidden(
    tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis
) -> None:
    r = twilio.post(VOICE, fixture_body("voice__incoming"), signature="")
    json_error(r, 403)
    assert_nothing_stored(settings, redis_conn)


@pytest.mark.parametrize(
    "signature",
    ["bm90IGEgcmVhbCBzaWduYXR1cmU=", "not base64 at all!", "A" * 500],
    ids=["base64-garbage", "not-base64", "very-long"],
)
def test_invalid_signature_is_forbidden(
    tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis, signature: str
) -> None:
    r = twilio.post(VOICE, fixture_body("voice__incoming"), signature=signature)
    body = json_error(r, 403)
    assert body["error"] == "invalid signature"
    assert_nothing_stored(settings, redis_conn)


@pytest.mark.parametrize(
    ("path", "name", "changes"),
    [
        (VOICE, "voice__incoming", {"From": "+15555550124"}),
        (SMS, "sms__inbound", {"Body": "Please wire the refund to account 1234"}),
        (CALL_STATUS, "voice__status_completed", {"CallDuration": "1"}),
        (SMS, "sms__inbound", {"Extra": "added after signing"}),
    ],
    ids=["voice-from", "sms-body", "status-duration", "added-param"],
)
def test_body_tampered_after_signing_is_forbidden(
    tenant: Tenant,
    twilio: TwilioPoster,
    settings: Settings,
    redis_conn: Redis,
    path: str,
    name: str,
    changes: dict[str, str],
) -> None:
    original = fixture_params(name)
    signature = signature_for(PUBLIC_BASE + path, original)
    r = twilio.post(path, {**original, **changes}, signature=signature)
    body = json_error(r, 403)
    assert body["error"] == "invalid signature"
    assert_nothing_stored(settings, redis_conn)


def test_dropped_param_after_signing_is_forbidden(
    tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis
) -> None:
    original = fixture_params("sms__inbound")
    signature = signature_for(PUBLIC_BASE + SMS, original)
    r = twilio.post(SMS, without("sms__inbound", "Body"), signature=signature)
    json_error(r, 403)
    assert_nothing_stored(settings, redis_conn)


@pytest.mark.parametrize(
    "account",
    [UNKNOWN_ACCOUNT, "AC" + "F" * 32],
    ids=["unknown-lower", "unknown-upper"],
)
def test_unknown_account_is_forbidden(
    tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis, account: str
) -> None:
    """A well-formed AccountSid that belongs to no tenant, correctly signed with some token."""
    r = twilio.post(VOICE, without("voice__incoming", AccountSid=account))
    body = json_error(r, 403)
    assert body["error"] == "unknown account"
    assert_nothing_stored(settings, redis_conn)


@pytest.mark.parametrize(
    "account",
    [None, "", "ACxyz", "AC" + "0" * 31, "AC" + "0" * 33, "XX" + "0" * 32],
    ids=["absent", "empty", "short-garbage", "31-hex", "33-hex", "wrong-prefix"],
)
def test_malformed_or_missing_account_is_forbidden(
    tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis, account: str | None
) -> None:
    """Without a usable AccountSid there is no tenant, so no token to check against: 403, not 400."""
    params = without("voice__incoming", "AccountSid")
    if account is not None:
        params["AccountSid"] = account
    r = twilio.post(VOICE, params)
    json_error(r, 403)
    assert_nothing_stored(settings, redis_conn)


def test_other_tenants_account_signed_with_our_token_is_forbidden(
    tenant: Tenant, other_tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis
) -> None:
    """Tenant isolation: B's AccountSid with A's auth token must not be accepted as B (nor as A)."""
    params = without("sms__inbound", AccountSid=OTHER_ACCOUNT, To=OTHER_NUMBER)
    r = twilio.post(SMS, params, token=FIXTURE_TOKEN)
    body = json_error(r, 403)
    assert body["error"] == "invalid signature"
    assert_nothing_stored(settings, redis_conn)


def test_our_account_signed_with_other_tenants_token_is_forbidden(
    tenant: Tenant, other_tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis
) -> None:
    """The reverse: A's AccountSid signed with B's auth token."""
    r = twilio.post(VOICE, fixture_body("voice__incoming"), token=OTHER_TOKEN)
    json_error(r, 403)
    assert_nothing_stored(settings, redis_conn)


def test_other_tenant_with_its_own_token_is_accepted_as_that_tenant(
    tenant: Tenant, other_tenant: Tenant, twilio: TwilioPoster
) -> None:
    """Control for the isolation cases: B's AccountSid signed with B's token is B's event."""
    params = without("sms__inbound", AccountSid=OTHER_ACCOUNT, To=OTHER_NUMBER)
    r = twilio.post(SMS, params, token=OTHER_TOKEN)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert count(WebhookEvent, WebhookEvent.tenant_id == other_tenant.id) == 1
    assert count(Interaction, Interaction.tenant_id == other_tenant.id) == 1
    assert count(Interaction, Interaction.tenant_id == tenant.id) == 0


@pytest.mark.parametrize(
    ("signed_url", "posted_path"),
    [
        ("http://switchboard.example.com" + VOICE, VOICE),
        ("https://evil.example.com" + VOICE, VOICE),
        ("https://switchboard.example.com:8443" + VOICE, VOICE),
        ("https://switchboard.example.com" + SMS, VOICE),
        ("https://switchboard.example.com" + VOICE + "?x=1", VOICE),
        ("https://switchboard.example.com/prefix" + VOICE, VOICE),
    ],
    ids=["http-not-https", "other-host", "other-port", "other-path", "extra-query", "other-prefix"],
)
def test_signature_for_another_url_is_forbidden(
    tenant: Tenant,
    twilio: TwilioPoster,
    settings: Settings,
    redis_conn: Redis,
    signed_url: str,
    posted_path: str,
) -> None:
    params = fixture_params("voice__incoming")
    r = twilio.post(posted_path, params, signature=signature_for(signed_url, params))
    body = json_error(r, 403)
    assert body["error"] == "invalid signature"
    assert_nothing_stored(settings, redis_conn)


def test_signature_over_the_url_with_its_default_port_is_accepted(
    tenant: Tenant, twilio: TwilioPoster
) -> None:
    """Twilio signs the URL with or without its port (the SDK checks both): the second form works too."""
    params = fixture_params("voice__incoming")
    signed = PUBLIC_BASE.replace("switchboard.example.com", "switchboard.example.com:443") + VOICE
    assert signed != PUBLIC_BASE + VOICE
    r = twilio.post(VOICE, params, signature=signature_for(signed, params))
    assert r.status_code == 200, r.get_data(as_text=True)


def test_query_string_added_after_signing_is_forbidden(
    tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis
) -> None:
    """The query string is part of the signed URL: ?event=dial cannot be bolted on."""
    params = fixture_params("voice__dial_action_no_answer")
    r = twilio.post(DIAL, params, signature=signature_for(PUBLIC_BASE + CALL_STATUS, params))
    json_error(r, 403)
    assert_nothing_stored(settings, redis_conn)


def test_shared_key_signature_algorithm_is_refused(
    tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis
) -> None:
    """A SharedKey (HMAC-SHA256) signature settings header is refused rather than guessed at."""
    r = twilio.post(
        VOICE,
        fixture_body("voice__incoming"),
        headers={"X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_x,algorithm=HMAC_SHA256"},
    )
    body = json_error(r, 403)
    assert "algorithm" in body["error"]
    assert_nothing_stored(settings, redis_conn)


def test_json_body_is_forbidden(tenant: Tenant, client: Any, settings: Settings, redis_conn: Redis) -> None:
    """A JSON body has no form AccountSid, so there is no tenant to verify against."""
    payload = fixture_params("voice__incoming")
    r = client.post(
        VOICE,
        json=payload,
        headers={"X-Twilio-Signature": signature_for(PUBLIC_BASE + VOICE, payload)},
        base_url=PUBLIC_BASE,
    )
    body = json_error(r, 403)
    assert body["error"] == "unknown account"
    assert_nothing_stored(settings, redis_conn)


def test_form_body_with_wrong_content_type_is_forbidden(
    tenant: Tenant, client: Any, settings: Settings, redis_conn: Redis
) -> None:
    """A form-encoded body labelled text/plain is not parsed as a form: no AccountSid, no tenant."""
    params = fixture_params("voice__incoming")
    r = client.post(
        VOICE,
        data=urlencode(params),
        content_type="text/plain",
        headers={"X-Twilio-Signature": signature_for(PUBLIC_BASE + VOICE, params)},
        base_url=PUBLIC_BASE,
    )
    json_error(r, 403)
    assert_nothing_stored(settings, redis_conn)


# --- 400: missing or malformed fields (signed correctly) -----------------------------------------

MISSING = [
    (VOICE, "voice__incoming", ("CallSid",), "CallSid"),
    (VOICE, "voice__incoming", ("CallStatus",), "CallStatus"),
    (VOICE, "voice__incoming", ("From",), "From"),
    (VOICE, "voice__incoming", ("To",), "To"),
    (SMS, "sms__inbound", ("MessageSid",), "MessageSid"),
    (SMS, "sms__inbound", ("From",), "From"),
    (SMS, "sms__inbound", ("To",), "To"),
    (SMS, "sms__inbound_mms", ("MediaUrl1",), "MediaUrl1"),
    (CALL_STATUS, "voice__status_ringing", ("CallStatus",), "CallStatus"),
    (CALL_STATUS, "voice__status_ringing", ("CallSid",), "CallSid"),
    (DIAL, "voice__dial_action_completed", ("DialCallStatus",), "DialCallStatus"),
    (RECORDING, "voice__recording_completed", ("RecordingSid",), "RecordingSid"),
    (RECORDING, "voice__recording_completed", ("RecordingStatus",), "RecordingStatus"),
    (RECORDING, "voice__recording_completed", ("RecordingUrl",), "RecordingUrl"),
    (RECORDING, "voice__recording_completed", ("CallSid",), "CallSid"),
    (TRANSCRIPTION, "voice__transcription_completed", ("TranscriptionSid",), "TranscriptionSid"),
    (TRANSCRIPTION, "voice__transcription_completed", ("TranscriptionStatus",), "TranscriptionStatus"),
    (SMS_STATUS, "sms__status_delivered", ("MessageStatus", "SmsStatus"), "MessageStatus"),
    (SMS_STATUS, "sms__status_delivered", ("MessageSid",), "MessageSid"),
]


@pytest.mark.parametrize(
    ("path", "name", "drop", "field"),
    MISSING,
    ids=[f"{p.rsplit('/', 1)[-1]}-{f}" for p, _, _, f in MISSING],
)
def test_missing_required_field_is_400_naming_it(
    tenant: Tenant,
    twilio: TwilioPoster,
    settings: Settings,
    redis_conn: Redis,
    path: str,
    name: str,
    drop: tuple[str, ...],
    field: str,
) -> None:
    r = twilio.post(path, without(name, *drop))
    body = json_error(r, 400)
    assert body["field"] == field
    assert field in body["error"]
    assert_nothing_stored(settings, redis_conn)


@pytest.mark.parametrize(
    ("path", "name", "field"),
    [(VOICE, "voice__incoming", "CallSid"), (SMS, "sms__inbound", "MessageSid")],
    ids=["voice-CallSid", "sms-MessageSid"],
)
def test_empty_required_field_counts_as_missing(
    tenant: Tenant,
    twilio: TwilioPoster,
    settings: Settings,
    redis_conn: Redis,
    path: str,
    name: str,
    field: str,
) -> None:
    r = twilio.post(path, without(name, **{field: ""}))
    body = json_error(r, 400)
    assert body["field"] == field
    assert_nothing_stored(settings, redis_conn)


MALFORMED = [
    (VOICE, "voice__incoming", "CallSid", "CAxyz"),
    (VOICE, "voice__incoming", "CallSid", "CA" + "0" * 31 + "g"),
    (VOICE, "voice__incoming", "CallStatus", "exploded"),
    (CALL_STATUS, "voice__status_ringing", "CallSid", "CAxyz"),
    (CALL_STATUS, "voice__status_ringing", "SequenceNumber", "abc"),
    (CALL_STATUS, "voice__status_ringing", "SequenceNumber", "1.5"),
    (CALL_STATUS, "voice__status_completed", "CallDuration", "long"),
    (CALL_STATUS, "voice__status_ringing", "CallStatus", "exploded"),
    (CALL_STATUS, "voice__status_ringing", "CallStatus", "RINGING"),
    (CALL_STATUS, "voice__status_ringing", "Timestamp", "yesterday"),
    (CALL_STATUS, "voice__status_ringing", "Timestamp", "2025-03-11T16:05:05Z"),
    (CALL_STATUS, "voice__status_ringing", "Timestamp", "1741709105"),
    (CALL_STATUS, "voice__status_ringing", "Timestamp", "Tue, 11 Mar 2025 16:05:05"),
    (CALL_STATUS, "voice__status_ringing", "Timestamp", "Tue, 32 Mar 2025 16:05:05 +0000"),
    (CALL_STATUS, "voice__child_leg_completed", "ParentCallSid", "CAxyz"),
    (DIAL, "voice__dial_action_completed", "DialCallStatus", "exploded"),
    (DIAL, "voice__dial_action_completed", "DialCallDuration", "x"),
    (RECORDING, "voice__recording_completed", "RecordingSid", "REnope"),
    (RECORDING, "voice__recording_completed", "RecordingStatus", "exploded"),
    (RECORDING, "voice__recording_completed", "RecordingDuration", "long"),
    (SMS, "sms__inbound", "MessageSid", "SMxyz"),
    (SMS, "sms__inbound", "MessageSid", "XX" + "0" * 32),
    (SMS, "sms__inbound", "NumMedia", "-1"),
    (SMS, "sms__inbound", "NumMedia", "x"),
    (SMS, "sms__inbound", "NumMedia", "11"),
    (SMS_STATUS, "sms__status_delivered", "MessageSid", "SMxyz"),
    (SMS_STATUS, "sms__status_delivered", "MessageStatus", "exploded"),
]


@pytest.mark.parametrize(
    ("path", "name", "field", "value"),
    MALFORMED,
    ids=[f"{p.rsplit('/', 1)[-1].split('?')[0]}-{f}-{v[:12]}" for p, _, f, v in MALFORMED],
)
def test_malformed_field_is_400_naming_it(
    tenant: Tenant,
    twilio: TwilioPoster,
    settings: Settings,
    redis_conn: Redis,
    path: str,
    name: str,
    field: str,
    value: str,
) -> None:
    r = twilio.post(path, without(name, **{field: value}))
    body = json_error(r, 400)
    assert body["field"] == field
    assert_nothing_stored(settings, redis_conn)


def test_refused_callback_adds_nothing_to_an_existing_call(
    tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis
) -> None:
    """A malformed status callback for a call we hold leaves the call, ledger and queue unchanged."""
    assert twilio.fixture(VOICE, "voice__incoming").status_code == 200
    queue = Queue(settings.queue_name, connection=redis_conn)
    assert (count(WebhookEvent), count(Interaction), queue.count) == (1, 1, 1)
    bad = without(
        "voice__status_completed", CallSid="CA00000000000000000000000000000011", SequenceNumber="abc"
    )
    r = twilio.post(CALL_STATUS, bad)
    assert json_error(r, 400)["field"] == "SequenceNumber"
    assert (count(WebhookEvent), count(Interaction), queue.count) == (1, 1, 1)
    assert count(Interaction, Interaction.status == "ringing", Interaction.version == 1) == 1


# --- 413 / 405 / 404 -------------------------------------------------------------------------------


def test_body_over_one_mebibyte_is_413(
    tenant: Tenant, twilio: TwilioPoster, settings: Settings, redis_conn: Redis
) -> None:
    params = without("sms__inbound", Body="x" * (MAX_BODY_BYTES + 1))
    r = twilio.post(SMS, params)
    json_error(r, 413)
    assert_nothing_stored(settings, redis_conn)


def test_body_just_under_the_limit_is_accepted(tenant: Tenant, twilio: TwilioPoster) -> None:
    """The limit is on the body size, not lower: a large but allowed text still gets through."""
    base = urlencode(without("sms__inbound", "Body"))
    body = base + "&Body=" + "x" * (MAX_BODY_BYTES - len(base) - len("&Body="))
    assert len(body.encode()) == MAX_BODY_BYTES
    r = twilio.post(SMS, body)
    assert r.status_code == 200, r.get_data(as_text=True)[:500]
    assert count(Interaction) == 1


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_other_methods_on_a_webhook_url_are_405(
    tenant: Tenant, client: Any, settings: Settings, redis_conn: Redis, method: str
) -> None:
    r = getattr(client, method)(VOICE + "?" + fixture_body("voice__incoming"), base_url=PUBLIC_BASE)
    json_error(r, 405)
    assert_nothing_stored(settings, redis_conn)


def test_405_names_the_allowed_method(tenant: Tenant, client: Any) -> None:
    """RFC 9110 section 15.5.6: a 405 response MUST carry an Allow header listing the allowed methods."""
    r = client.get(SMS, base_url=PUBLIC_BASE)
    json_error(r, 405)
    assert "POST" in r.headers.get("Allow", "")


@pytest.mark.parametrize(
    "path",
    [
        "/webhooks/twilio/nope",
        "/webhooks/twilio/VOICE",
        "/webhooks/plivo/voice",
        "/webhooks/nope/sms",
        "/webhooks/twilio",
        "/webhooks/twilio/voice/extra",
    ],
    ids=["unknown-stream", "stream-case", "unknown-provider", "unknown-provider-2", "no-stream", "deeper"],
)
def test_unknown_webhook_url_is_404(
    tenant: Tenant,
    twilio: TwilioPoster,
    settings: Settings,
    redis_conn: Redis,
    path: str,
) -> None:
    """Correctly signed for the URL it was sent to, but there is no such webhook."""
    r = twilio.post(path, fixture_body("voice__incoming"))
    json_error(r, 404)
    assert_nothing_stored(settings, redis_conn)


# --- never a 500 --------------------------------------------------------------------------------

# Signed, otherwise valid requests with one odd value. The only wrong answer is a server error: each is
# either refused with 400 naming the field (and nothing stored) or accepted. Values a column cannot hold
# (PostgreSQL enforces VARCHAR lengths and rejects NUL in text; SQLite does neither) must not crash.
ODD_VALUES = [
    (CALL_STATUS, "voice__status_ringing", "SequenceNumber", "9" * 250, {204, 400}),
    (CALL_STATUS, "voice__status_ringing", "SequenceNumber", "9" * 5000, {204, 400}),
    (CALL_STATUS, "voice__status_initiated", "Timestamp", "Fri, 31 Dec 9999 23:30:00 -0100", {204, 400}),
    (CALL_STATUS, "voice__status_ringing", "Timestamp", "Tue, 11 Mar 2025 16:05:05 +9999", {204, 400}),
    (SMS_STATUS, "sms__status_failed", "ErrorCode", "3" * 40, {204, 400}),
    (SMS, "sms__inbound", "Body", "nul\x00byte", {200, 400}),
    (VOICE, "voice__incoming", "From", "sip:" + "a" * 80 + "@pbx.example.com", {200, 400}),
    (VOICE, "voice__incoming", "To", "+1555555010" + "0" * 70, {200, 400}),
    (
        RECORDING,
        "voice__recording_voicemail",
        "RecordingUrl",
        "https://api.twilio.com/" + "r" * 600,
        {204, 400},
    ),
    (SMS, "sms__inbound", "Body", "\U0001f600" * 1000, {200}),
]


@pytest.mark.parametrize(
    ("path", "name", "field", "value", "allowed"),
    ODD_VALUES,
    ids=[
        "seq-250-digits",
        "seq-5000-digits",
        "timestamp-year-9999",
        "timestamp-offset-out-of-range",
        "error-code-40-chars",
        "body-nul-byte",
        "from-long-sip-uri",
        "to-80-chars",
        "recording-url-600-chars",
        "body-emoji",
    ],
)
def test_odd_values_never_cause_a_server_error(
    tenant: Tenant,
    twilio: TwilioPoster,
    settings: Settings,
    redis_conn: Redis,
    path: str,
    name: str,
    field: str,
    value: str,
    allowed: set[int],
) -> None:
    r = twilio.post(path, without(name, **{field: value}))
    assert r.status_code != 500, f"{field}={value[:40]!r} crashed the request: {r.get_data(as_text=True)}"
    assert r.status_code in allowed, r.get_data(as_text=True)[:500]
    if r.status_code == 400:
        assert json_error(r, 400)["field"] == field
        assert_nothing_stored(settings, redis_conn)
    else:
        assert count(WebhookEvent) == 1
        assert count(Interaction) == 1


BAD_REQUESTS = [
    ("no-signature", VOICE, "voice__incoming", {}, None, 403),
    ("bad-signature", VOICE, "voice__incoming", {}, "c2lnbmF0dXJl", 403),
    ("unknown-account", SMS, "sms__inbound", {"AccountSid": UNKNOWN_ACCOUNT}, "", 403),
    ("missing-callsid", VOICE, "voice__incoming", {"CallSid": ""}, "", 400),
    ("bad-nummedia", SMS, "sms__inbound", {"NumMedia": "x"}, "", 400),
    ("bad-timestamp", CALL_STATUS, "voice__status_completed", {"Timestamp": "soon"}, "", 400),
    ("unknown-status", SMS_STATUS, "sms__status_sent", {"MessageStatus": "lost"}, "", 400),
    ("unknown-stream", "/webhooks/twilio/nope", "voice__incoming", {}, "", 404),
]


@pytest.mark.parametrize(
    ("case", "path", "name", "changes", "signature", "status"),
    BAD_REQUESTS,
    ids=[c[0] for c in BAD_REQUESTS],
)
def test_a_stream_of_bad_requests_never_yields_500(
    tenant: Tenant,
    twilio: TwilioPoster,
    client: Any,
    settings: Settings,
    redis_conn: Redis,
    case: str,
    path: str,
    name: str,
    changes: dict[str, str],
    signature: str | None,
    status: int,
) -> None:
    """Each bad request is refused with its own status; repeating it changes nothing."""
    params = without(name, **changes)
    for _ in range(3):
        if signature is None:
            r = client.post(
                path,
                data=urlencode(params),
                content_type="application/x-www-form-urlencoded",
                base_url=PUBLIC_BASE,
            )
        else:
            r = twilio.post(path, params, signature=signature or None)
        assert r.status_code != 500, case
        json_error(r, status)
    assert_nothing_stored(settings, redis_conn)
