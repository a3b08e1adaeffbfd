"""Texts and the rep's bridged calls through Twilio's REST API with the official SDK (or its emulator).

The SDK has no base-URL setting, so a small TwilioHttpClient subclass rewrites https://api.twilio.com to
TWILIO_API_BASE when that points elsewhere (see ../shared/reference/sdk-feasibility.md, Twilio option A).
Every text we send and every call the dialer places is also recorded on the ledger as an outbound
interaction, so it reaches the CRM like any other, and its status callbacks update it.

A click-to-call is bridged agent first (../shared/reference/api-facts.md 1.7): Twilio calls the rep; when
the rep answers, the inline TwiML `<Dial answerOnBridge callerId=...>`s the customer, recording both legs
from answer per the tenant's policy, with an announcement played to the customer first where consent is
required (`<Number url>` runs on the called party before the parties are connected:
https://www.twilio.com/docs/voice/twiml/number#url). Status and recording callbacks come to our webhooks,
and fold into the rep leg's CallSid like any call's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from app.core import calls, ledger
from app.core.interactions import Event
from app.core.ledger import Recorded
from app.core.models import Tenant
from app.core.queue import enqueue_sync
from app.core.settings import Settings
from app.core.tenants import settings_of

TWILIO = "https://api.twilio.com"
# Errors that will not change on a retry: https://www.twilio.com/docs/errors/21211 and friends.
PERMANENT_CODES = {21211, 21212, 21214, 21408, 21602, 21606, 21610, 21612, 21614, 21617, 30004, 30005, 30006}
OPTED_OUT = 21610


class RoutedHttpClient(TwilioHttpClient):
    """Twilio's HTTP client, with the API host replaced by TWILIO_API_BASE and a timeout."""

    def __init__(self, base: str, timeout: float = 10.0) -> None:
        super().__init__(timeout=timeout)
        self.base = urlsplit(base)
        self.session.trust_env = False  # never send the auth token through an environment proxy

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        """Send to the configured base instead of api.twilio.com."""
        parts = urlsplit(url)
        if url.startswith(TWILIO):
            url = urlunsplit((self.base.scheme, self.base.netloc, parts.path, parts.query, ""))
        return super().request(method, url, *args, **kwargs)


def client_for(tenant: Tenant, settings: Settings) -> Client:
    """A Twilio client for the tenant's account."""
    http = RoutedHttpClient(settings.twilio_api_base) if settings.twilio_api_base != TWILIO else None
    return Client(tenant.twilio_account_sid, tenant.twilio_auth_token, http_client=http)


def send_sms(
    tenant: Tenant,
    settings: Settings,
    *,
    to: str,
    from_: str,
    body: str,
    user_id: int | None = None,
    source: str = "automation",
) -> str:
    """Send a text and record it on the ledger (owned by `user_id`, a rep, when given); returns the
    MessageSid. Raises TwilioRestException."""
    callback = f"{settings.public_base_url}/webhooks/twilio/sms-status" if settings.public_base_url else None
    message = client_for(tenant, settings).messages.create(
        to=to, from_=from_, body=body, status_callback=callback
    )
    record_sent(
        tenant,
        settings,
        sid=message.sid,
        to=to,
        from_=from_,
        body=body,
        status=message.status or "queued",
        user_id=user_id,
        source=source,
    )
    return str(message.sid)


def record_sent(
    tenant: Tenant,
    settings: Settings,
    *,
    sid: str,
    to: str,
    from_: str,
    body: str,
    status: str,
    user_id: int | None = None,
    source: str = "automation",
) -> Recorded:
    """Put a text we sent on the ledger (idempotent on its MessageSid) and sync it to the CRM."""
    event = Event(
        provider="twilio",
        stream="api",
        event_key=f"api:{sid}",
        channel="sms",
        provider_id=sid,
        account=tenant.twilio_account_sid or "",
        facts={
            "msg": {"direction": "outbound", "from": from_, "to": to, "body": body, "media": []},
            "msg_status": {"status": status},
            "started_at": datetime.now(UTC).isoformat(),
            "routed_user_id": user_id,
        },
        raw={"To": [to], "From": [from_], "MessageSid": [sid], "source": [source]},
    )
    recorded = ledger.record(tenant, event)
    if recorded.changed:
        enqueue_sync(settings, recorded.interaction_id, recorded.version)
    return recorded


def error_code(exc: TwilioRestException) -> int | None:
    """Twilio's numeric error code of a failed request."""
    return int(exc.code) if exc.code is not None else None


# --- the rep's bridged calls ---------------------------------------------------------------------------

CALL_EVENTS = ["initiated", "ringing", "answered", "completed"]


def bridge_twiml(
    *, base: str, to: str, caller_id: str, recording: calls.Recording, timeout: int, announce_token: str = ""
) -> str:
    """The TwiML Twilio runs when the rep answers: dial the customer from `caller_id`, ringing until they
    answer (answerOnBridge), recording both legs from answer if the policy says so, with the announcement
    played to the customer first when consent is required. Every callback URL is absolute (inline TwiML)."""
    vr = VoiceResponse()
    dial_kwargs: dict[str, Any] = {
        "action": f"{base}/webhooks/twilio/call-status?event=dial",
        "method": "POST",
        "caller_id": caller_id,
        "answer_on_bridge": True,
        "timeout": timeout,
    }
    if recording.record:
        dial_kwargs.update(
            record="record-from-answer-dual",
            recording_status_callback=f"{base}/webhooks/twilio/recording",
            recording_status_callback_event="completed absent",
        )
    number_kwargs: dict[str, Any] = {
        "status_callback": f"{base}/webhooks/twilio/call-status",
        "status_callback_event": " ".join(CALL_EVENTS),
    }
    if recording.record and recording.announce:
        number_kwargs.update(url=f"{base}/webhooks/twilio/announce", method="POST")
    vr.dial(**dial_kwargs).number(to, **number_kwargs)
    return str(vr)


def place_call(
    tenant: Tenant,
    settings: Settings,
    *,
    user_id: int,
    rep_phone: str,
    to: str,
    caller_id: str,
    recording: calls.Recording,
    contact_id: str | None,
    await_engagement: bool,
    base: str | None = None,
) -> tuple[str, Recorded]:
    """Ring the rep, then bridge the customer; record the call on the ledger as one outbound interaction
    owned by the rep (Twilio's callbacks fold into it by CallSid). `base` is the public URL of our webhooks
    (PUBLIC_BASE_URL by default). Returns (CallSid, the ledger outcome). Raises TwilioRestException when
    Twilio refuses the call (nothing is recorded then)."""
    base = (base or settings.public_base_url or "").rstrip("/")
    timeout = int(_ring_timeout(tenant))
    twiml = bridge_twiml(base=base, to=to, caller_id=caller_id, recording=recording, timeout=timeout)
    call = client_for(tenant, settings).calls.create(
        to=rep_phone,
        from_=caller_id,
        twiml=twiml,
        status_callback=f"{base}/webhooks/twilio/call-status",
        status_callback_event=CALL_EVENTS,
        status_callback_method="POST",
        timeout=timeout,
    )
    sid = str(call.sid)
    facts = calls.placement_facts(
        user_id=user_id,
        rep_phone=rep_phone,
        to=to,
        from_=caller_id,
        contact_id=contact_id,
        recording=recording,
        await_engagement=await_engagement,
        at=datetime.now(UTC).isoformat(),
    )
    raw = {"CallSid": [sid], "To": [rep_phone], "From": [caller_id], "Customer": [to], "source": ["dialer"]}
    recorded = record_call_event(tenant, settings, sid, f"dialer:{sid}", facts, raw)
    return sid, recorded


def record_call_event(
    tenant: Tenant, settings: Settings, sid: str, key: str, facts: dict[str, Any], raw: dict[str, list[str]]
) -> Recorded:
    """Fold a dialer event (placement, hang-up, disposition, engagement id) into the call, idempotent on
    `key`, and sync it."""
    event = Event(
        provider="twilio",
        stream="dialer",
        event_key=key,
        channel="call",
        provider_id=sid,
        account=tenant.twilio_account_sid or "",
        facts=facts,
        raw=raw,
    )
    recorded = ledger.record(tenant, event)
    if recorded.changed:
        enqueue_sync(settings, recorded.interaction_id, recorded.version, tenant.id)
    return recorded


def hang_up(tenant: Tenant, settings: Settings, sid: str) -> str:
    """End the call at Twilio (status=completed hangs up a live call and cancels one still ringing:
    https://www.twilio.com/docs/voice/api/call-resource#update-a-call-resource); returns Twilio's status."""
    call = client_for(tenant, settings).calls(sid).update(status="completed")
    return str(call.status or "completed")


def _ring_timeout(tenant: Tenant) -> int:
    try:
        return max(5, min(600, int(settings_of(tenant)["dialer_ring_timeout"])))
    except (TypeError, ValueError):
        return 30
