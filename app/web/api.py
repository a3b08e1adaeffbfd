"""Read API (`/api/v1`, Bearer API key) and health checks; every query is scoped to the key's tenant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, jsonify, request
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, selectinload

from app.automation import runs
from app.core import db, mail
from app.core.models import (
    Interaction,
    LocalActivity,
    LocalContact,
    LocalContactPhone,
    LocalTask,
    OptOut,
    Tenant,
    User,
)
from app.core.phones import to_e164
from app.core.queue import ping
from app.core.tenants import tenant_for_api_key

api = Blueprint("api", __name__, url_prefix="/api/v1")
health = Blueprint("health", __name__)

MAX_PAGE = 200
# Ids beyond their column's range cannot exist: answer 404 instead of overflowing the database driver.
MAX_ID = 2**63 - 1  # interactions (BIGINT)
MAX_SMALL_ID = 2**31 - 1  # other tables (INTEGER)


def _digits(raw: str) -> bool:
    return raw.isascii() and raw.isdigit()


class BadParam(Exception):
    """A query parameter we cannot use (400, naming it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@api.errorhandler(BadParam)
def _bad_param(exc: BadParam) -> tuple[Response, int]:
    return jsonify({"error": exc.message, "field": exc.field}), 400


@api.before_request
def _authenticate() -> tuple[Response, int] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        with db.transaction() as s:
            tenant = tenant_for_api_key(s, key.strip())
        if tenant is not None:
            g.tenant = tenant
            return None
    response = jsonify({"error": "missing or invalid API key"})
    response.headers["WWW-Authenticate"] = 'Bearer realm="switchboard"'
    return response, 401


@api.before_request
def _reject_nul() -> None:
    """Refuse NUL characters in any query parameter (as the webhooks do): PostgreSQL text cannot hold
    them, so they could never match, and the driver would fail with a 500."""
    for name, values in request.args.lists():
        if "\x00" in name or any("\x00" in v for v in values):
            field = name.replace("\x00", "")
            raise BadParam(field, f"{field} contains a NUL character")


def _tenant() -> Tenant:
    return g.tenant  # type: ignore[no-any-return]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _since(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadParam("since", "since must be an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise BadParam("since", "since must include a time zone (e.g. 2026-01-01T00:00:00Z)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise BadParam("since", "since is out of range") from None


def _int_param(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not _digits(raw) or not low <= int(raw) <= high:
        raise BadParam(name, f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _cursor() -> int | None:
    raw = request.args.get("cursor")
    if not raw:
        return None
    if not _digits(raw):
        raise BadParam("cursor", "cursor is not one we issued")
    return int(raw)


def _phone_param(tenant: Tenant) -> str | None:
    raw = request.args.get("phone")
    if not raw:
        return None
    e164 = to_e164(raw, tenant.region)
    if e164 is None:
        raise BadParam("phone", "phone is not a phone number")
    return e164


def interaction_json(s: Session, row: Interaction) -> dict[str, Any]:
    """The public shape of an interaction, with its CRM sync state."""
    user = s.get(User, row.user_id) if row.user_id else None
    return {
        "id": row.id,
        "channel": row.channel,
        "direction": row.direction,
        "status": row.status,
        "provider": row.provider,
        "provider_id": row.provider_id,
        "party": {"phone": row.party_phone, "email": row.party_email},
        "our_number": row.our_number,
        "user": {"id": user.id, "name": user.name, "email": user.email} if user else None,
        "from": row.from_addr,
        "to": row.to_addr,
        "body": row.body,
        "media": row.media or [],
        "duration_seconds": row.duration_seconds,
        "recording_url": row.recording_url,
        "error_code": row.error_code,
        "occurred_at": _iso(row.occurred_at),
        "ended_at": _iso(row.ended_at),
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "crm": {
            "state": row.sync_state,
            "contact_id": row.crm_contact_id,
            "record_id": row.crm_record_id,
            "match_reason": row.match_reason,
            "version": row.version,
            "synced_version": row.synced_version,
            "attempts": row.attempts,
            "last_error": row.last_error,
            "synced_at": _iso(row.synced_at),
        },
    }


@api.get("/interactions")
def list_interactions() -> Response:
    """Interactions newest first; filters phone, email, channel, status, since; cursor pagination."""
    tenant = _tenant()
    limit = _int_param("limit", 50, 1, MAX_PAGE)
    query = select(Interaction).where(Interaction.tenant_id == tenant.id)
    phone = _phone_param(tenant)
    if phone:
        query = query.where(Interaction.party_phone == phone)
    if email := request.args.get("email"):
        query = query.where(Interaction.party_email == email.strip().lower())
    if channel := request.args.get("channel"):
        if channel not in ("call", "sms", "email"):
            raise BadParam("channel", "channel must be call, sms or email")
        query = query.where(Interaction.channel == channel)
    if status := request.args.get("status"):
        query = query.where(Interaction.status == status)
    if state := request.args.get("crm_state"):
        query = query.where(Interaction.sync_state == state)
    if since := _since(request.args.get("since")):
        query = query.where(Interaction.occurred_at >= since)
    if (cursor := _cursor()) is not None:
        query = query.where(Interaction.id < min(cursor, MAX_ID))
    with db.transaction() as s:
        rows = list(s.scalars(query.order_by(Interaction.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        data = [interaction_json(s, r) for r in rows]
    return jsonify({"data": data, "next_cursor": str(rows[-1].id) if more and rows else None})


@api.get("/interactions/<int:interaction_id>")
def get_interaction(interaction_id: int) -> Response:
    """One interaction of the caller's tenant."""
    if interaction_id > MAX_ID:
        abort(404)
    with db.transaction() as s:
        row = s.get(Interaction, interaction_id)
        if row is None or row.tenant_id != _tenant().id:
            abort(404)
        out = interaction_json(s, row)
        out["automations"] = runs.steps_for(s, row.tenant_id, f"interaction:{row.id}")
        return jsonify(out)


def _require_local(tenant: Tenant) -> None:
    if tenant.crm != "local":
        abort(404, description="the contacts API serves tenants on the built-in CRM")


def _contact_json(contact: LocalContact, opted_out: set[str], email_out: set[str]) -> dict[str, Any]:
    numbers = [p.e164 for p in contact.phones]
    return {
        "id": contact.id,
        "name": contact.name,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "email": contact.email,
        "owner_id": contact.owner_id,
        "phones": [{"number": p.e164, "as_entered": p.raw, "label": p.label} for p in contact.phones],
        # The opt-out ledger (app.core.optouts): automated texts to these numbers are skipped.
        "sms_opt_out": any(n in opted_out for n in numbers),
        "sms_opted_out_numbers": [n for n in numbers if n in opted_out],
        # A hard bounce, spam complaint or unsubscribe of an email we sent (app.core.mail.opted_out):
        # automated email to this address is skipped until `switchboard email opt-in`.
        "email_opt_out": bool(contact.email) and (contact.email or "").strip().lower() in email_out,
        "created_at": _iso(contact.created_at),
        "last_activity_at": _iso(contact.last_activity_at),
    }


def _opted_out(s: Session, tenant_id: int, contacts: list[LocalContact]) -> set[str]:
    """Which of these contacts' numbers opted out of the tenant's texts (one query)."""
    numbers = {p.e164 for c in contacts for p in c.phones}
    if not numbers:
        return set()
    return set(
        s.scalars(
            select(OptOut.phone).where(
                OptOut.tenant_id == tenant_id, OptOut.phone.in_(numbers), OptOut.opted_out.is_(True)
            )
        )
    )


def activity_json(a: LocalActivity) -> dict[str, Any]:
    """The public shape of a built-in CRM activity."""
    return {
        "id": a.id,
        "kind": a.kind,
        "direction": a.direction,
        "status": a.status,
        "from": a.from_addr,
        "to": a.to_addr,
        "duration_seconds": a.duration_seconds,
        "recording_url": a.recording_url,
        "body": a.body,
        "media": a.media or [],
        "owner_id": a.owner_id,
        "occurred_at": _iso(a.occurred_at),
        "ended_at": _iso(a.ended_at),
        "external_id": a.external_id,
    }


def task_json(t: LocalTask) -> dict[str, Any]:
    """The public shape of a built-in CRM task."""
    return {
        "id": t.id,
        "subject": t.subject,
        "body": t.body,
        "due_at": _iso(t.due_at),
        "assignee_id": t.assignee_id,
        "priority": t.priority,
        "status": t.status,
        "external_id": t.external_id,
    }


@api.get("/contacts")
def list_contacts() -> Response:
    """Built-in CRM contacts, oldest first, optionally matched by phone (any format) or email; cursor
    pagination like the interactions."""
    tenant = _tenant()
    _require_local(tenant)
    limit = _int_param("limit", 50, 1, MAX_PAGE)
    query = (
        select(LocalContact)
        .where(LocalContact.tenant_id == tenant.id)
        .options(selectinload(LocalContact.phones))
        .order_by(LocalContact.id)
        .limit(limit + 1)
    )
    if (cursor := _cursor()) is not None:
        query = query.where(LocalContact.id > min(cursor, MAX_SMALL_ID))
    phone = _phone_param(tenant)
    if phone:
        query = query.where(
            LocalContact.id.in_(
                select(LocalContactPhone.contact_id).where(
                    LocalContactPhone.tenant_id == tenant.id, LocalContactPhone.e164 == phone
                )
            )
        )
    if email := request.args.get("email"):
        query = query.where(func.lower(LocalContact.email) == email.strip().lower())
    with db.transaction() as s:
        rows = list(s.scalars(query))
        more = len(rows) > limit
        rows = rows[:limit]
        opted_out = _opted_out(s, tenant.id, rows)
        email_out = mail.opted_out_among(s, tenant.id, [c.email for c in rows if c.email])
        data = [_contact_json(c, opted_out, email_out) for c in rows]
    return jsonify({"data": data, "next_cursor": str(rows[-1].id) if more and rows else None})


def contact_detail(s: Session, tenant_id: int, contact_id: int) -> dict[str, Any] | None:
    """A contact with its timeline (newest first) and tasks, or None if not the tenant's."""
    contact = s.get(LocalContact, contact_id) if contact_id <= MAX_SMALL_ID else None
    if contact is None or contact.tenant_id != tenant_id:
        return None
    activities = s.scalars(
        select(LocalActivity)
        .where(LocalActivity.tenant_id == tenant_id, LocalActivity.contact_id == contact.id)
        .order_by(LocalActivity.occurred_at.desc(), LocalActivity.id.desc())
    )
    tasks = s.scalars(
        select(LocalTask)
        .where(LocalTask.tenant_id == tenant_id, LocalTask.contact_id == contact.id)
        .order_by(LocalTask.id)
    )
    email_out = mail.opted_out_among(s, tenant_id, [contact.email] if contact.email else [])
    out = _contact_json(contact, _opted_out(s, tenant_id, [contact]), email_out)
    out["timeline"] = [activity_json(a) for a in activities]
    out["tasks"] = [task_json(t) for t in tasks]
    return out


@api.get("/contacts/<int:contact_id>")
def get_contact(contact_id: int) -> Response:
    """One built-in CRM contact with its activity timeline and tasks."""
    tenant = _tenant()
    _require_local(tenant)
    with db.transaction() as s:
        detail = contact_detail(s, tenant.id, contact_id)
    if detail is None:
        abort(404)
    return jsonify(detail)


@api.get("/automations")
def list_automations() -> Response:
    """The tenant's automation steps, newest first; filters state and rule; cursor pagination."""
    tenant = _tenant()
    limit = _int_param("limit", 50, 1, MAX_PAGE)
    state = request.args.get("state") or None
    if state is not None and state not in runs.STATES:
        raise BadParam("state", f"state must be one of {', '.join(runs.STATES)}")
    rule = request.args.get("rule") or None
    data, after = runs.list_steps(tenant.id, state=state, rule=rule, limit=limit, before=_cursor())
    return jsonify({"data": data, "next_cursor": str(after) if after is not None else None})


@api.get("/automations/<int:run_id>")
def get_automation(run_id: int) -> Response:
    """One automation step of the caller's tenant."""
    try:
        return jsonify(runs.show(run_id, _tenant().id))
    except runs.StepError:
        abort(404)


@health.get("/healthz")
def healthz() -> Response:
    """The process is up."""
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz() -> tuple[Response, int]:
    """The database and Redis answer."""
    checks = {"database": False, "redis": False}
    try:
        with db.transaction() as s:
            s.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:  # any driver error means "not ready"
        checks["database"] = False
    checks["redis"] = ping(current_app.extensions["switchboard"])
    ok = all(checks.values())
    return jsonify({"status": "ok" if ok else "unavailable", "checks": checks}), 200 if ok else 503
