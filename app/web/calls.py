"""The dialer's API (`/api/v1`, the dialer contract): place, follow, hang up and disposition a rep's
bridged calls, send texts and read the conversation, the rep's profile and incoming-call events.

Every route takes a rep session (app.web.reps: tenant and user from the signed token) or the tenant API key
(`Authorization: Bearer`; then the rep is `user_id` in the body or query). The web request never talks to
a CRM: calls and texts go to Twilio and onto the ledger, and the worker syncs them like any other.
Errors are JSON {"error", "field"?}: 400 bad input, 401 no or expired session, 403 CSRF, 404 not yours,
409 opted out (or a conflicting engagement), 422 not allowed, 502 Twilio refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import requests
from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twilio.base.exceptions import TwilioRestException

from app.channels import twilio as twilio_channel
from app.core import calls, db, optouts
from app.core.db import utcnow
from app.core.interactions import derive
from app.core.models import Interaction, LocalContact, LocalContactPhone, Tenant, User
from app.core.phones import pretty, to_e164
from app.core.settings import Settings
from app.core.tenants import tenant_for_api_key
from app.web import reps

log = logging.getLogger(__name__)

dialer_api = Blueprint("dialer_api", __name__, url_prefix="/api/v1")

MAX_SMS_BODY = 1600  # Twilio's limit for a message body
MAX_NOTES = 10_000
MAX_ID = 2**63 - 1
MAX_SMALL_ID = 2**31 - 1
RINGING_WINDOW = timedelta(minutes=2)  # a fresh page still pops a call that started ringing this recently


def _digits(raw: str) -> bool:
    """ASCII digits only (str.isdigit also accepts superscripts and other scripts' digits, which int()
    refuses or reads as something else)."""
    return raw.isascii() and raw.isdigit()


class ApiError(Exception):
    """An answer other than success: JSON {"error", "field"?} with `status`."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dialer_api.errorhandler(ApiError)
def _api_error(exc: ApiError) -> tuple[Response, int]:
    body = {"error": exc.message}
    if exc.field:
        body["field"] = exc.field
    return jsonify(body), exc.status


@dialer_api.errorhandler(calls.Refused)
def _refused(exc: calls.Refused) -> tuple[Response, int]:
    return _api_error(ApiError(exc.status, exc.message, exc.field))


@dataclass(frozen=True)
class Caller:
    """Who is asking: the tenant, and the rep (None for an API key request naming no user)."""

    tenant: Tenant
    user: User | None
    rep: reps.Rep | None


def _settings() -> Settings:
    return current_app.extensions["switchboard"]  # type: ignore[no-any-return]


@dialer_api.before_request
def _authenticate() -> None:
    found = reps.token_from(request)
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        with db.transaction() as s:
            tenant = tenant_for_api_key(s, key.strip())
            if tenant is None:
                raise ApiError(401, "missing or invalid API key")
            s.expunge(tenant)
        g.caller = Caller(tenant, _user_named(tenant), None)
        return
    if found is None:
        raise ApiError(401, "sign in to the dialer (a rep session) or use the tenant API key")
    rep = reps.load(_settings(), *found)
    if rep is None:
        raise ApiError(401, "session expired")
    if not reps.csrf_ok(rep, request):
        raise ApiError(403, "missing or wrong X-CSRF-Token for this session")
    with db.transaction() as s:
        tenant = s.get(Tenant, rep.tenant_id)
        user = s.get(User, rep.user_id)
        if tenant is None or user is None or user.tenant_id != tenant.id:
            raise ApiError(401, "session expired")
        s.expunge(tenant)
        s.expunge(user)
    g.caller = Caller(tenant, user, rep)


def _user_named(tenant: Tenant) -> User | None:
    """An API key request's rep: user_id in the JSON body or the query (None if it names nobody)."""
    raw: Any = request.args.get("user_id")
    if raw is None and request.is_json:
        body = request.get_json(silent=True)
        raw = body.get("user_id") if isinstance(body, dict) else None
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not (isinstance(raw, int) or (isinstance(raw, str) and _digits(raw))):
        raise ApiError(400, "user_id must be a user's id", "user_id")
    user_id = int(raw)
    with db.transaction() as s:
        user = s.get(User, user_id) if user_id <= MAX_SMALL_ID else None
        if user is None or user.tenant_id != tenant.id:
            raise ApiError(400, "user_id is not a user of this account", "user_id")
        s.expunge(user)
    return user


def _caller() -> Caller:
    return g.caller  # type: ignore[no-any-return]


def _rep(required_for: str) -> User:
    user = _caller().user
    if user is None:
        raise ApiError(400, f"user_id is required to {required_for} with an API key", "user_id")
    return user


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str, *, limit: int, required: bool = True) -> str:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise ApiError(400, f"{name} is required", name)
        return ""
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string", name)
    if "\x00" in value:
        raise ApiError(400, f"{name} contains a NUL character", name)
    if len(value) > limit:
        raise ApiError(400, f"{name} is longer than {limit} characters", name)
    return value


# --- the call's public shape -----------------------------------------------------------------------------


def _contact_url(tenant: Tenant, contact_id: str) -> str | None:
    """A link to the contact in the tenant's CRM (the dialer opens it; nothing here calls the CRM)."""
    if tenant.crm == "hubspot" and tenant.crm_account_id:
        return f"https://app.hubspot.com/contacts/{tenant.crm_account_id}/record/0-1/{contact_id}"
    if tenant.crm == "salesforce":
        try:
            instance = json.loads(tenant.crm_secrets or "{}").get("instance_url")
        except ValueError:
            instance = None
        return f"{instance.rstrip('/')}/lightning/r/{contact_id}/view" if instance else None
    if tenant.crm == "local":
        return f"{_settings().public_base_url or ''}/?contact={contact_id}"
    return None


def _contact(s: Session, tenant: Tenant, contact_id: str | None, phone: str | None, name: str | None) -> Any:
    """{name, url} of the call's contact from our own data: the contact the rep clicked or the sync matched,
    else (a number we have synced before, or the built-in CRM's phone index) the contact of that number."""
    if not contact_id and phone:
        if tenant.crm == "local":
            found = s.scalar(
                select(LocalContactPhone.contact_id)
                .where(LocalContactPhone.tenant_id == tenant.id, LocalContactPhone.e164 == phone)
                .order_by(LocalContactPhone.id)
            )
            contact_id = str(found) if found is not None else None
        else:
            contact_id = s.scalar(
                select(Interaction.crm_contact_id)
                .where(
                    Interaction.tenant_id == tenant.id,
                    Interaction.party_phone == phone,
                    Interaction.crm_contact_id.is_not(None),
                )
                .order_by(Interaction.id.desc())
                .limit(1)
            )
    if not contact_id:
        return None
    if tenant.crm == "local" and _digits(contact_id) and int(contact_id) <= MAX_SMALL_ID:
        local = s.get(LocalContact, int(contact_id))
        if local is not None and local.tenant_id == tenant.id:
            name = local.name
    return {
        "id": contact_id,
        "name": name or (pretty(phone) if phone else None),
        "url": _contact_url(tenant, contact_id),
    }


def call_json(s: Session, tenant: Tenant, row: Interaction) -> dict[str, Any]:
    """The dialer's view of a call (either direction)."""
    facts = row.facts or {}
    dialer = calls.dialer_of(facts)
    disposition = facts.get("disposition") or {}
    inbound = row.direction == "inbound"
    ours = dialer.get("from") or row.our_number
    caller_name = (facts.get("call") or {}).get("caller_name")
    return {
        "id": row.id,
        "call_sid": row.provider_id,
        "state": calls.state_of(facts),
        "status": row.status,
        "direction": row.direction,
        "to": ours if inbound else (dialer.get("to") or row.party_phone),
        "from": row.party_phone if inbound else ours,
        "started_at": row.occurred_at.isoformat() if row.occurred_at else None,
        "duration": row.duration_seconds,
        "recording": bool(dialer.get("record")) if dialer else row.recording_url is not None,
        "outcome": disposition.get("outcome"),
        "outcome_label": disposition.get("label"),
        "notes": disposition.get("notes"),
        "engagement_id": (facts.get("engagement") or {}).get("id"),
        "contact": _contact(
            s, tenant, dialer.get("contact_id") or row.crm_contact_id, row.party_phone, caller_name
        ),
        "crm": {"state": row.sync_state, "record_id": row.crm_record_id},
    }


def _own_call(s: Session, call_id: int) -> Interaction:
    """The call, if it is the caller's tenant's and (for a rep session) the rep's own."""
    caller = _caller()
    row = s.get(Interaction, call_id) if call_id <= MAX_ID else None
    if row is None or row.tenant_id != caller.tenant.id or row.channel != "call":
        raise ApiError(404, "no such call")
    if caller.rep is not None and row.user_id != caller.rep.user_id:
        raise ApiError(404, "no such call")
    return row


# --- calls -----------------------------------------------------------------------------------------------


def _contact_id(s: Session, tenant: Tenant, body: dict[str, Any]) -> str | None:
    raw = body.get("contact_id")
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise ApiError(400, "contact_id must be the CRM record's id", "contact_id")
    value = str(raw).strip()
    if (
        not value
        or len(value) > 64
        or not (value.isascii() and value.replace("-", "").replace("_", "").isalnum())
    ):
        raise ApiError(400, "contact_id must be the CRM record's id", "contact_id")
    if tenant.crm == "local":
        local = s.get(LocalContact, int(value)) if _digits(value) and int(value) <= MAX_SMALL_ID else None
        if local is None or local.tenant_id != tenant.id:
            raise ApiError(400, "contact_id is not a contact of this account", "contact_id")
    return value


@dialer_api.post("/calls")
def place_call() -> tuple[Response, int]:
    """Ring the rep's phone, then bridge the customer (`to`); the call is on the ledger at once."""
    caller = _caller()
    body = _body()
    tenant = caller.tenant
    user = _rep("place a call")
    await_engagement = body.get("await_engagement")
    if await_engagement is not None and not isinstance(await_engagement, bool):
        raise ApiError(400, "await_engagement must be true or false", "await_engagement")
    with db.transaction() as s:
        to = calls.destination(s, tenant, body.get("to"))
        contact_id = _contact_id(s, tenant, body)
        if not user.phone:
            raise ApiError(422, "your user has no phone number for Twilio to ring first")
        from_ = calls.caller_id(s, tenant, user, to)
    recording = calls.recording_for(tenant, to)
    if await_engagement is None:
        # HubSpot's dialer creates its own call engagement (createEngagement) and tells us its id: the sync
        # waits briefly for it so it updates that record instead of creating a second one.
        await_engagement = tenant.crm == "hubspot" and caller.rep is not None
    try:
        _sid, recorded = twilio_channel.place_call(
            tenant,
            _settings(),
            user_id=user.id,
            rep_phone=user.phone,
            to=to,
            caller_id=from_,
            recording=recording,
            contact_id=contact_id,
            await_engagement=await_engagement,
            base=_settings().public_base_url or request.host_url.rstrip("/"),
        )
    except TwilioRestException as exc:
        log.warning("dialer.call_refused tenant=%s code=%s status=%s", tenant.id, exc.code, exc.status)
        raise ApiError(502, f"Twilio refused the call: {exc.msg}") from None
    except requests.RequestException as exc:
        log.warning("dialer.twilio_unreachable tenant=%s error=%s", tenant.id, type(exc).__name__)
        raise ApiError(502, "Twilio could not be reached; try again") from None
    log.info(
        "dialer.call_placed tenant=%s user=%s interaction=%s recording=%s",
        tenant.id,
        user.id,
        recorded.interaction_id,
        recording.reason,
    )
    with db.transaction() as s:
        row = s.get(Interaction, recorded.interaction_id)
        assert row is not None
        out = call_json(s, tenant, row)
    out = {k: out[k] for k in ("id", "call_sid", "state", "to", "from", "contact", "recording")}
    return jsonify(out), 201


@dialer_api.get("/calls/<int:call_id>")
def get_call(call_id: int) -> Response:
    """One call: its state, the customer, duration, the rep's outcome and notes, HubSpot's engagement."""
    with db.transaction() as s:
        return jsonify(call_json(s, _caller().tenant, _own_call(s, call_id)))


@dialer_api.get("/calls")
def list_calls() -> Response:
    """The rep's recent calls, both directions, newest first (`limit`, default 20, at most 100)."""
    caller = _caller()
    raw = request.args.get("limit") or "20"
    if not _digits(raw) or not 1 <= int(raw) <= 100:
        raise ApiError(400, "limit must be an integer from 1 to 100", "limit")
    query = select(Interaction).where(
        Interaction.tenant_id == caller.tenant.id, Interaction.channel == "call"
    )
    if caller.user is not None:
        query = query.where(Interaction.user_id == caller.user.id)
    with db.transaction() as s:
        rows = list(s.scalars(query.order_by(Interaction.id.desc()).limit(int(raw))))
        return jsonify({"calls": [call_json(s, caller.tenant, r) for r in rows]})


@dialer_api.delete("/calls/<int:call_id>")
def hang_up(call_id: int) -> tuple[Response, int]:
    """Hang up through Twilio; the completed callback that follows ends the call on the ledger."""
    tenant = _caller().tenant
    with db.transaction() as s:
        row = _own_call(s, call_id)
        sid, state = row.provider_id, calls.state_of(row.facts or {})
    if state in ("ended", "failed"):
        return jsonify({"state": state}), 202
    try:
        twilio_channel.hang_up(tenant, _settings(), sid)
    except TwilioRestException as exc:
        raise ApiError(502, f"Twilio refused to hang up: {exc.msg}") from None
    except requests.RequestException:
        raise ApiError(502, "Twilio could not be reached; try again") from None
    at = utcnow().isoformat()
    twilio_channel.record_call_event(
        tenant,
        _settings(),
        sid,
        f"hangup:{sid}",
        calls.hangup_facts(at),
        {"CallSid": [sid], "source": ["dialer"]},
    )
    with db.transaction() as s:
        row = _own_call(s, call_id)
        return jsonify({"state": calls.state_of(row.facts or {})}), 202


@dialer_api.post("/calls/<int:call_id>/disposition")
def set_disposition(call_id: int) -> Response:
    """The rep's outcome (one of the tenant's) and notes; they sync to the same CRM record."""
    tenant = _caller().tenant
    with db.transaction() as s:
        sid = _own_call(s, call_id).provider_id
    body = _body()
    outcome = _text(body, "outcome", limit=100)
    label = calls.outcome_label(tenant, outcome)
    if label is None:
        raise ApiError(
            400, "outcome is not one of this account's call outcomes (GET /api/v1/dispositions)", "outcome"
        )
    notes = _text(body, "notes", limit=MAX_NOTES, required=False)
    facts = calls.disposition_facts(outcome, label, notes)
    rev = facts["disposition"]["rev"]
    twilio_channel.record_call_event(
        tenant, _settings(), sid, f"disposition:{sid}:{rev}", facts, {"CallSid": [sid], "source": ["dialer"]}
    )
    with db.transaction() as s:
        return jsonify(call_json(s, tenant, _own_call(s, call_id)))


@dialer_api.post("/calls/<int:call_id>/engagement")
def set_engagement(call_id: int) -> Response:
    """HubSpot's own call engagement for this call (the SDK's createEngagement): the sync updates it."""
    tenant = _caller().tenant
    with db.transaction() as s:
        _own_call(s, call_id)
    body = _body()
    raw = body.get("engagement_id")
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not _digits(raw) or len(raw) > 32:
        raise ApiError(400, "engagement_id must be HubSpot's numeric engagement id", "engagement_id")
    with db.transaction() as s:
        row = _own_call(s, call_id)
        sid, facts = row.provider_id, row.facts or {}
    known = (facts.get("engagement") or {}).get("id")
    if known and known != raw:
        raise ApiError(409, f"this call already has engagement {known}", "engagement_id")
    # An id that arrives after the sync logged the call itself (the wait ran out): the sync moves the call
    # onto HubSpot's engagement and archives its own record, so the call still has one.
    twilio_channel.record_call_event(
        tenant,
        _settings(),
        sid,
        f"engagement:{sid}:{raw}",
        calls.engagement_facts(raw),
        {"CallSid": [sid], "source": ["dialer"]},
    )
    with db.transaction() as s:
        return jsonify(call_json(s, tenant, _own_call(s, call_id)))


@dialer_api.get("/dispositions")
def dispositions() -> Response:
    """The tenant's call outcomes (HubSpot's standard GUIDs unless the tenant set its own)."""
    return jsonify({"outcomes": calls.outcomes(_caller().tenant)})


# --- texts -----------------------------------------------------------------------------------------------


@dialer_api.post("/messages")
def send_message() -> tuple[Response, int]:
    """A text from the rep (opt-outs respected; quiet hours are for automations, not a person typing)."""
    caller = _caller()
    tenant = caller.tenant
    body = _body()
    user = _rep("send a text")
    text = _text(body, "body", limit=MAX_SMS_BODY)
    with db.transaction() as s:
        to = calls.destination(s, tenant, body.get("to"))
        from_ = calls.caller_id(s, tenant, user, to)
    try:
        sid = twilio_channel.send_sms(
            tenant, _settings(), to=to, from_=from_, body=text, user_id=user.id, source="dialer"
        )
    except TwilioRestException as exc:
        code = twilio_channel.error_code(exc)
        if code == twilio_channel.OPTED_OUT:
            optouts.set_opt_out(tenant.id, to, True, "21610")
            raise ApiError(409, f"{to} has opted out of texts from this number", "to") from None
        if code in twilio_channel.PERMANENT_CODES:
            raise ApiError(400, f"Twilio refused the text: {exc.msg}", "to") from None
        raise ApiError(502, f"Twilio refused the text: {exc.msg}") from None
    except requests.RequestException:
        raise ApiError(502, "Twilio could not be reached; try again") from None
    with db.transaction() as s:
        interaction_id = s.scalar(
            select(Interaction.id).where(
                Interaction.tenant_id == tenant.id,
                Interaction.channel == "sms",
                Interaction.provider_id == sid,
            )
        )
    return jsonify({"id": interaction_id, "sid": sid, "to": to, "from": from_}), 201


@dialer_api.get("/conversation")
def conversation() -> Response:
    """The texts between the tenant and a number, oldest first (the latest 200)."""
    tenant = _caller().tenant
    phone = to_e164(request.args.get("phone"), tenant.region)
    if phone is None:
        raise ApiError(400, "phone is required (a phone number)", "phone")
    with db.transaction() as s:
        rows = list(
            s.scalars(
                select(Interaction)
                .where(
                    Interaction.tenant_id == tenant.id,
                    Interaction.channel == "sms",
                    Interaction.party_phone == phone,
                )
                .order_by(Interaction.occurred_at.desc(), Interaction.id.desc())
                .limit(200)
            )
        )
    messages = [
        {"direction": r.direction, "body": r.body, "at": r.occurred_at.isoformat(), "status": r.status}
        for r in reversed(rows)
    ]
    return jsonify({"phone": phone, "messages": messages})


# --- the rep -------------------------------------------------------------------------------------------


@dialer_api.get("/rep/me")
def me() -> Response:
    """The signed-in rep, their tenant and the CRM hosts that may frame the dialer."""
    caller = _caller()
    user = _rep("read a rep's profile")
    tenant = caller.tenant
    return jsonify(
        {
            "user": {"id": user.id, "name": user.name, "email": user.email, "phone": user.phone},
            "tenant": {"id": tenant.id, "name": tenant.name, "crm": tenant.crm},
            "crm_hosts": reps.crm_hosts(tenant.crm),
        }
    )


@dialer_api.get("/rep/events")
def events() -> Response:
    """Incoming calls routed to the rep since `after` (a cursor from the previous answer; without one, the
    calls ringing now). Polled every 2 s by the dialer page, which pops who is calling."""
    caller = _caller()
    user = _rep("read a rep's events")
    tenant = caller.tenant
    raw = request.args.get("after")
    if raw not in (None, "") and not (_digits(raw) and int(raw) <= MAX_ID):
        raise ApiError(400, "after must be a cursor from a previous answer", "after")
    query = select(Interaction).where(
        Interaction.tenant_id == tenant.id,
        Interaction.channel == "call",
        Interaction.direction == "inbound",
        Interaction.user_id == user.id,
    )
    with db.transaction() as s:
        newest = s.scalar(select(func.max(Interaction.id)).where(Interaction.tenant_id == tenant.id)) or 0
        if raw:
            query = query.where(Interaction.id > int(raw), Interaction.id <= newest)
        else:
            query = query.where(
                Interaction.occurred_at >= utcnow() - RINGING_WINDOW, Interaction.id <= newest
            )
        rows = list(s.scalars(query.order_by(Interaction.id).limit(50)))
        out = []
        for row in rows:
            facts = row.facts or {}
            if not raw and calls.state_of(facts) != "ringing_rep":
                continue
            name = (facts.get("call") or {}).get("caller_name")
            out.append(
                {
                    "kind": "incoming_call",
                    "call_id": row.id,
                    "from": row.party_phone or derive("call", facts).from_addr,
                    "contact": _contact(s, tenant, row.crm_contact_id, row.party_phone, name),
                    "at": row.occurred_at.isoformat(),
                    "state": calls.state_of(facts),
                }
            )
    # A full page leaves the rest for the next poll; otherwise everything up to the newest id was seen.
    cursor = rows[-1].id if len(rows) == 50 else max(int(raw or 0), newest)
    return jsonify({"events": out, "cursor": str(cursor)})
