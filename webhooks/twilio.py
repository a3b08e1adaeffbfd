"""Twilio voice and messaging webhooks: verify the signature, parse into Events, answer with TwiML.

Configure in the Twilio console, per phone number (replace the host with your PUBLIC_BASE_URL):
  Voice "A call comes in"        POST https://HOST/webhooks/twilio/voice
  Voice "Call status changes"    POST https://HOST/webhooks/twilio/call-status
  Messaging "A message comes in" POST https://HOST/webhooks/twilio/sms
and give https://HOST/webhooks/twilio/sms-status as StatusCallback when sending messages. The TwiML we
return points <Dial>, <Number> and <Record> callbacks at call-status, recording and transcription; the
dialer's bridged calls play the recording announcement to the customer from `announce`.

The tenant is found from AccountSid and the request is checked with that tenant's auth token using the
SDK's RequestValidator: https://www.twilio.com/docs/usage/webhooks/webhooks-security
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import ParseResult, urlparse

from flask import Request, Response
from twilio.request_validator import (
    HMAC_SHA1,
    RequestValidator,
    add_port,
    get_signature_algorithm,
    remove_port,
)
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse

from app.automation import compliance, rules
from app.core.db import utcnow
from app.core.interactions import Consent, Event
from app.core.ledger import Recorded
from app.core.models import Tenant
from app.core.phones import to_e164
from app.core.tenants import settings_of, tenant_for_twilio_account
from webhooks.base import (
    Forbidden,
    Malformed,
    OneEventPerRequest,
    Receiver,
    RoutedUser,
    absolute,
    first_values,
    form_lists,
    optional_int,
    optional_rfc2822,
    public_url,
    reject_nul,
    require,
)

log = logging.getLogger(__name__)

PROVIDER = "twilio"
STREAMS = ("voice", "call-status", "recording", "transcription", "sms", "sms-status", "announce")

_ACCOUNT = re.compile(r"AC[0-9a-fA-F]{32}")
_CALL = re.compile(r"CA[0-9a-fA-F]{32}")
_MESSAGE = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
_RECORDING = re.compile(r"RE[0-9a-fA-F]{32}")
_TRANSCRIPTION = re.compile(r"TR[0-9a-fA-F]{32}")
_ERROR_CODE = re.compile(r"[0-9]{1,10}")
_CALL_STATUSES = {
    "queued",
    "initiated",
    "ringing",
    "in-progress",
    "answered",
    "completed",
    "busy",
    "no-answer",
    "failed",
    "canceled",
}
_SMS_STATUSES = {
    "accepted",
    "scheduled",
    "queued",
    "sending",
    "sent",
    "failed",
    "delivered",
    "undelivered",
    "receiving",
    "received",
    "read",
    "canceled",
    "partially_delivered",
}
_RECORDING_STATUSES = {
    "in-progress",
    "completed",
    "absent",
    "failed",
    "paused",
    "stopped",
    "processing",
    "deleted",
}


# --- verify ----------------------------------------------------------------------------------------


def verify(request: Request) -> Tenant:
    """Find the tenant from AccountSid and check X-Twilio-Signature with its auth token (403 otherwise)."""
    signature = request.headers.get("X-Twilio-Signature")
    if not signature:
        raise Forbidden("missing X-Twilio-Signature")
    algorithm = get_signature_algorithm(request.headers.get("X-Twilio-Webhooks-Signature-Settings"))
    if algorithm != HMAC_SHA1:
        # SharedKey (Webhook Rules) signatures need a key we are not given yet; refuse rather than guess.
        raise Forbidden(f"unsupported signature algorithm {algorithm}")
    fields = form_lists(request)
    account = (fields.get("AccountSid") or [""])[0]
    if not _ACCOUNT.fullmatch(account):
        raise Forbidden("unknown account")
    parsed = urlparse(public_url(request))
    params = _Params(fields)
    for fresh in (False, True):
        tenant = tenant_for_twilio_account(account, fresh=fresh)
        if tenant is None or not tenant.twilio_auth_token:
            raise Forbidden("unknown account")
        if _signed(RequestValidator(tenant.twilio_auth_token), parsed, params, signature):
            return tenant
    raise Forbidden("invalid signature")


def _signed(validator: RequestValidator, url: ParseResult, params: _Params, signature: str) -> bool:
    """RequestValidator.validate for a form post, with the SDK's own signature: the URL without its port,
    then with it (Twilio signs either way), but the second only when the first does not match (the SDK
    always computes both; this check is a tenth of the ack's CPU, issue 9)."""
    expected = signature.encode()
    for candidate in (remove_port(url), add_port(url)):
        if hmac.compare_digest(validator.compute_signature(candidate, params).encode(), expected):
            return True
    return False


class _Params(dict[str, list[str]]):
    """The form's fields as compute_signature reads a multi-valued mapping (`getall`; a plain dict of lists
    would be read as one value per field): every value of every field, as sent."""

    def getall(self, name: str) -> list[str]:
        """Every value of the field."""
        return self[name]


# --- parse -----------------------------------------------------------------------------------------


def parse(stream: str, request: Request, tenant: Tenant) -> Event:
    """Turn a verified Twilio request into an Event (Malformed names the offending field)."""
    raw = form_lists(request)
    reject_nul(raw)
    form = first_values(raw)
    return parse_form(stream, request.args.get("event", ""), form, raw, tenant.region)


def parse_form(
    stream: str, kind: str, form: dict[str, str], raw: dict[str, list[str]], region: str = "US"
) -> Event:
    """Parse a Twilio form; pure, so the dry run parses recorded webhooks with it too."""
    event = _parse_form(stream, kind, form, raw)
    consent = _consent(event, region)
    return replace(event, consent=consent) if consent else event


def _parse_form(stream: str, kind: str, form: dict[str, str], raw: dict[str, list[str]]) -> Event:
    account = require(form, "AccountSid", _ACCOUNT)
    if stream == "voice":
        return _incoming_call(form, raw, account)
    if stream == "call-status":
        if kind == "dial" or "DialCallStatus" in form:
            return _dial_action(form, raw, account)
        if kind == "record":
            return _record_action(form, raw, account)
        return _call_status(form, raw, account)
    if stream == "recording":
        return _recording(form, raw, account)
    if stream == "transcription":
        return _transcription(form, raw, account)
    if stream == "sms":
        return _inbound_message(form, raw, account)
    if stream == "announce":
        return _announce(form, raw, account)
    return _message_status(form, raw, account)


def _event(
    stream: str,
    key: str,
    channel: str,
    sid: str,
    account: str,
    facts: dict[str, Any],
    raw: dict[str, list[str]],
) -> Event:
    return Event(PROVIDER, stream, key, channel, sid, account, facts, raw)


def _call_status_field(form: dict[str, str], name: str) -> str:
    status = require(form, name)
    if status not in _CALL_STATUSES:
        raise Malformed(f"unknown {name} {status!r}", field=name)
    return status


def _call_facts(form: dict[str, str]) -> dict[str, Any]:
    return {
        "direction": form.get("Direction"),
        "from": form.get("From"),
        "to": form.get("To"),
        "caller_name": form.get("CallerName"),
    }


def _incoming_call(form: dict[str, str], raw: dict[str, list[str]], account: str) -> Event:
    sid = require(form, "CallSid", _CALL)
    status = _call_status_field(form, "CallStatus")
    require(form, "From")
    require(form, "To")
    facts: dict[str, Any] = {
        "call": _call_facts(form),
        "parent_status": {"status": status, "seq": -1},
        "started_at": utcnow().isoformat(),
    }
    return _event("voice", f"voice:{sid}", "call", sid, account, facts, raw)


def _call_status(form: dict[str, str], raw: dict[str, list[str]], account: str) -> Event:
    sid = require(form, "CallSid", _CALL)
    status = _call_status_field(form, "CallStatus")
    seq = optional_int(form, "SequenceNumber")
    duration = optional_int(form, "CallDuration")
    at = optional_rfc2822(form, "Timestamp")
    parent = form.get("ParentCallSid")
    key = f"status:{sid}:{status}:{seq if seq is not None else '-'}"
    facts: dict[str, Any]
    if parent:
        if not _CALL.fullmatch(parent):
            raise Malformed("malformed field ParentCallSid", field="ParentCallSid")
        # A child leg (<Dial><Number>) folds into its parent call.
        leg = {
            "status": status,
            "seq": seq if seq is not None else -1,
            "to": form.get("To"),
            "duration": duration,
        }
        facts = {"legs": {sid: leg}}
        return _event("call-status", key, "call", parent, account, facts, raw)
    terminal = status in ("completed", "busy", "no-answer", "failed", "canceled")
    facts = {
        "call": _call_facts(form),
        "parent_status": {"status": status, "seq": seq if seq is not None else -1},
        "started_at": _started_at(status, at, duration),
        "ended_at": at if terminal else None,
        "call_duration": duration,
    }
    rec_sid = form.get("RecordingSid")
    if rec_sid:  # REST calls created with Record=true report the recording on the completed callback
        facts["recordings"] = {rec_sid: _recording_fact(form, "completed", "OutboundAPI")}
    return _event("call-status", key, "call", sid, account, facts, raw)


def _started_at(status: str, at: str | None, duration: int | None) -> str | None:
    """When the call began: the initiated callback's time, or a terminal callback's time minus CallDuration.

    A ringing or answered callback adds no start time, so a late one cannot change a finished call.
    """
    if at is None:
        return None
    if status in ("queued", "initiated"):
        return at
    if status in ("completed", "busy", "no-answer", "failed", "canceled") and duration is not None:
        return (datetime.fromisoformat(at) - timedelta(seconds=duration)).isoformat()
    return None


def _dial_action(form: dict[str, str], raw: dict[str, list[str]], account: str) -> Event:
    sid = require(form, "CallSid", _CALL)
    status = _call_status_field(form, "DialCallStatus")
    dial_sid = form.get("DialCallSid") or "dial"
    if dial_sid != "dial" and not _CALL.fullmatch(dial_sid):
        raise Malformed("malformed field DialCallSid", field="DialCallSid")
    dial = {
        "status": status,
        "duration": optional_int(form, "DialCallDuration"),
        "bridged": form.get("DialBridged") == "true",
    }
    # The action request reports the *parent* CallStatus (in-progress), not the dialled party's outcome.
    facts: dict[str, Any] = {"dials": {dial_sid: dial}}
    if status not in ("completed", "answered") and form.get("Direction") == "inbound":
        facts["voicemail_prompted"] = True
    return _event("call-status", f"dial:{sid}:{dial_sid}", "call", sid, account, facts, raw)


def _record_action(form: dict[str, str], raw: dict[str, list[str]], account: str) -> Event:
    sid = require(form, "CallSid", _CALL)
    rec_sid = form.get("RecordingSid")
    if rec_sid and not _RECORDING.fullmatch(rec_sid):
        raise Malformed("malformed field RecordingSid", field="RecordingSid")
    facts: dict[str, Any] = {"voicemail_prompted": True}
    if rec_sid and (optional_int(form, "RecordingDuration") or 0) > 0:
        facts["recordings"] = {rec_sid: _recording_fact(form, "completed", "RecordVerb")}
    elif rec_sid:  # <Record> ran, its recording is not final yet: the recording callback is still to come
        facts["recording_pending"] = {rec_sid: True}
    return _event("call-status", f"record:{sid}:{rec_sid or '-'}", "call", sid, account, facts, raw)


def _announce(form: dict[str, str], raw: dict[str, list[str]], account: str) -> Event:
    """The customer answered a dialer call that needs their consent to record: Twilio asks the <Number url>
    for TwiML to play them before the bridge (app.channels.twilio.bridge_twiml). It names the child leg and
    its parent, so it folds into the parent call as that leg, answered."""
    sid = require(form, "CallSid", _CALL)
    parent = require(form, "ParentCallSid", _CALL)
    status = form.get("CallStatus") or "in-progress"
    if status not in _CALL_STATUSES:
        raise Malformed(f"unknown CallStatus {status!r}", field="CallStatus")
    leg = {"status": status, "seq": -1, "to": form.get("To"), "duration": None}
    facts = {"legs": {sid: leg}, "dialer": {"announced": True}}
    return _event("announce", f"announce:{sid}", "call", parent, account, facts, raw)


def _recording_fact(form: dict[str, str], status: str, source: str) -> dict[str, Any]:
    return {
        "status": status,
        "url": form.get("RecordingUrl"),
        "duration": optional_int(form, "RecordingDuration"),
        "source": form.get("RecordingSource") or source,
        "channels": optional_int(form, "RecordingChannels"),
    }


def _recording(form: dict[str, str], raw: dict[str, list[str]], account: str) -> Event:
    # CallSid on recording callbacks always names the parent leg:
    # https://www.twilio.com/docs/voice/twiml/dial#recordingstatuscallback
    sid = require(form, "CallSid", _CALL)
    rec_sid = require(form, "RecordingSid", _RECORDING)
    status = require(form, "RecordingStatus")
    if status not in _RECORDING_STATUSES:
        raise Malformed(f"unknown RecordingStatus {status!r}", field="RecordingStatus")
    if status == "completed":
        require(form, "RecordingUrl")
    fact = _recording_fact(form, status, "DialVerb")
    return _event(
        "recording",
        f"recording:{rec_sid}:{status}",
        "call",
        sid,
        account,
        {"recordings": {rec_sid: fact}},
        raw,
    )


def _transcription(form: dict[str, str], raw: dict[str, list[str]], account: str) -> Event:
    sid = require(form, "CallSid", _CALL)
    status = require(form, "TranscriptionStatus")
    tsid = require(form, "TranscriptionSid", _TRANSCRIPTION)
    facts: dict[str, Any] = {}
    if status == "completed":
        facts["transcription"] = {"text": form.get("TranscriptionText", ""), "sid": tsid}
    return _event("transcription", f"transcription:{tsid}:{status}", "call", sid, account, facts, raw)


def _inbound_message(form: dict[str, str], raw: dict[str, list[str]], account: str) -> Event:
    sid = require(form, "MessageSid", _MESSAGE)
    require(form, "From")
    require(form, "To")
    count = optional_int(form, "NumMedia") or 0
    if count < 0 or count > 10:
        raise Malformed("NumMedia must be between 0 and 10", field="NumMedia")
    # Media URLs are kept as data; they are never fetched in the request path.
    media = [
        {"url": require(form, f"MediaUrl{i}"), "content_type": form.get(f"MediaContentType{i}")}
        for i in range(count)
    ]
    facts = {
        "msg": {
            "direction": "inbound",
            "from": form.get("From"),
            "to": form.get("To"),
            "body": form.get("Body", ""),
            "media": media,
        },
        "msg_status": {"status": "received"},
        "started_at": utcnow().isoformat(),
    }
    return _event("sms", f"sms:{sid}", "sms", sid, account, facts, raw)


def _message_status(form: dict[str, str], raw: dict[str, list[str]], account: str) -> Event:
    sid = require(form, "MessageSid", _MESSAGE)
    status = form.get("MessageStatus") or form.get("SmsStatus")
    if not status:
        raise Malformed("missing required field MessageStatus", field="MessageStatus")
    if status not in _SMS_STATUSES:
        raise Malformed(f"unknown MessageStatus {status!r}", field="MessageStatus")
    error = form.get("ErrorCode") or None
    if error is not None and not _ERROR_CODE.fullmatch(error):
        raise Malformed("malformed field ErrorCode", field="ErrorCode")
    facts = {
        "msg": {"direction": "outbound", "from": form.get("From"), "to": form.get("To")},
        "msg_status": {"status": status, "error_code": error},
    }
    return _event("sms-status", f"sms-status:{sid}:{status}", "sms", sid, account, facts, raw)


# --- plan and reply ------------------------------------------------------------------------------


def caller(stream: str, event: Event) -> str | None:
    """An incoming call is routed by the caller's number (to the owner of their contact)."""
    return (event.facts.get("call") or {}).get("from") if stream == "voice" else None


def plan(event: Event, user: RoutedUser | None) -> Event:
    """Put who rings into the call's facts, so the TwiML and the ledger agree on it."""
    if user is None:
        return event
    return replace(event, facts={**event.facts, "routed_user_id": user.id, "routed_phone": user.phone})


def reply(stream: str, request: Request, tenant: Tenant, event: Event, recorded: Recorded) -> Response:
    """The response Twilio expects: TwiML for call control and inbound texts, 204 for pure callbacks."""
    if stream == "voice":
        return _twiml(_ring(request, tenant, event))
    if stream == "call-status" and "dials" in event.facts:
        # Only an inbound caller nobody answered is offered voicemail; a rep whose click-to-call customer
        # did not pick up is simply hung up on.
        if event.facts.get("voicemail_prompted"):
            return _twiml(_voicemail(request, tenant))
        vr = VoiceResponse()
        vr.hangup()
        return _twiml(vr)
    if stream == "call-status" and request.args.get("event") == "record":
        vr = VoiceResponse()
        vr.hangup()
        return _twiml(vr)
    if stream == "announce":
        vr = VoiceResponse()
        vr.say(settings_of(tenant)["recording_announcement"])
        return _twiml(vr)
    if stream == "sms":
        if _consent_signal(event) != "help":
            return Response(_EMPTY_MESSAGING, status=200, mimetype="text/xml")
        reply = MessagingResponse()
        reply.message(_help_text(tenant))
        return _twiml(reply)
    return Response(status=204)


# The answer to nearly every inbound text, rendered once instead of through the TwiML builder per request.
_EMPTY_MESSAGING = str(MessagingResponse())


def _consent_signal(event: Event) -> str | None:
    """opt_out / opt_in / help for an inbound text that is one of the keywords (or carries Twilio's
    OptOutType from Advanced Opt-Out, custom keywords included), else None."""
    optout_type = (event.raw.get("OptOutType") or [""])[0].upper()
    if optout_type:
        return {"STOP": "opt_out", "START": "opt_in", "HELP": "help"}.get(optout_type)
    return compliance.keyword((event.facts.get("msg") or {}).get("body"))


def _help_text(tenant: Tenant) -> str:
    from app.automation.store import active_rules

    found = active_rules(tenant.id)
    return (found[1] if found else rules.RuleSet()).settings.help_reply


def _consent(event: Event, region: str) -> Consent | None:
    """The consent change an event carries: STOP/START keywords on inbound texts, error 21610 on a status
    callback (the carrier says the number opted out). Recorded with the event, so no automated text can
    slip out after a STOP: https://www.twilio.com/docs/errors/21610"""
    msg = event.facts.get("msg") or {}
    if event.stream == "sms":
        signal = _consent_signal(event)
        if signal not in ("opt_out", "opt_in"):
            return None
        phone = to_e164(msg.get("from"), region)
        return Consent(phone, signal == "opt_out", "keyword") if phone else None
    if event.stream == "sms-status" and (event.facts.get("msg_status") or {}).get("error_code") == "21610":
        phone = to_e164(msg.get("to"), region)
        return Consent(phone, True, "21610") if phone else None
    return None


def _twiml(doc: VoiceResponse | MessagingResponse) -> Response:
    return Response(str(doc), status=200, mimetype="text/xml")


def _ring(request: Request, tenant: Tenant, event: Event) -> VoiceResponse:
    settings = settings_of(tenant)
    phone = event.facts.get("routed_phone")
    if not phone:
        return _voicemail(request, tenant)
    vr = VoiceResponse()
    dial_kwargs: dict[str, Any] = {
        "action": absolute(request, "/webhooks/twilio/call-status?event=dial"),
        "method": "POST",
        "timeout": settings["ring_timeout"],
        "answer_on_bridge": True,
    }
    if settings["record_calls"]:
        dial_kwargs.update(
            record="record-from-answer-dual",
            recording_status_callback=absolute(request, "/webhooks/twilio/recording"),
            recording_status_callback_event="completed absent",
        )
    dial = vr.dial(**dial_kwargs)
    dial.number(
        phone,
        status_callback=absolute(request, "/webhooks/twilio/call-status"),
        status_callback_event="initiated ringing answered completed",
    )
    return vr


def _voicemail(request: Request, tenant: Tenant) -> VoiceResponse:
    settings = settings_of(tenant)
    vr = VoiceResponse()
    vr.say(settings["voicemail_greeting"])
    record_kwargs: dict[str, Any] = {
        "action": absolute(request, "/webhooks/twilio/call-status?event=record"),
        "method": "POST",
        "max_length": settings["voicemail_max_seconds"],
        "play_beep": True,
        "recording_status_callback": absolute(request, "/webhooks/twilio/recording"),
        "recording_status_callback_event": "completed absent",
    }
    if settings["transcribe_voicemail"]:
        record_kwargs.update(
            transcribe=True, transcribe_callback=absolute(request, "/webhooks/twilio/transcription")
        )
    vr.record(**record_kwargs)
    return vr


class TwilioReceiver(OneEventPerRequest):
    """The Receiver for Twilio voice and messaging webhooks."""

    provider = PROVIDER
    streams = STREAMS
    token_in_path = False
    verify = staticmethod(verify)
    parse = staticmethod(parse)
    caller = staticmethod(caller)
    plan = staticmethod(plan)
    reply = staticmethod(reply)


RECEIVER: Receiver = TwilioReceiver()
