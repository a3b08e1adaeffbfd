"""`POST /api/v1/emails`: a rep (the dialer, the console) sends an email through the tenant's provider.

Authenticated like the rest of /api/v1 (the tenant's Bearer API key). The body is JSON:

    {"to": "jordan@example.net", "subject": "...", "text": "...",        required
     "html": "...", "from": "sam@acme.example", "contact_id": "...",    optional
     "in_reply_to": "<Message-ID of the email this answers>"}

`from` must be the address of one of the tenant's users or the tenant's own (`email set-sender --from`,
the default). An `Idempotency-Key` header makes a retried request send once (our id is derived from it;
app/channels/email.py asks the provider when an earlier attempt's outcome was lost). Answers: 201 with
the email (200 when the key had already sent it), 400 naming the field, 409 when the address opted out,
the tenant cannot send or the key's earlier attempt is still being checked, 422 when the provider
refused the email, 503 (with Retry-After) when it is unavailable.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import func, select

from app.channels import email
from app.core import db, mail
from app.core.models import Tenant, User
from app.web import api

emails = Blueprint("emails", __name__, url_prefix="/api/v1")
emails.before_request(api._authenticate)

MAX_SUBJECT = 998  # RFC 5322's line limit
MAX_KEY = 200


class _Bad(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


@emails.errorhandler(_Bad)
def _bad(exc: _Bad) -> tuple[Response, int]:
    return jsonify({"error": exc.message, "field": exc.field}), 400


def _text(body: dict[str, Any], name: str, *, required: bool, limit: int | None = None) -> str | None:
    value = body.get(name)
    if value is None or (value == "" and not required):
        if required:
            raise _Bad(name, f"{name} is required")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise _Bad(name, f"{name} must be a non-empty string")
    if "\x00" in value:
        raise _Bad(name, f"{name} contains a NUL character")
    if limit is not None and len(value) > limit:
        raise _Bad(name, f"{name} is longer than {limit} characters")
    return value


def _address(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    raw = _text(body, name, required=required, limit=320)
    if raw is None:
        return None
    found = mail.address(raw)
    if (
        found is None
        or len(mail.addresses(raw)) != 1
        or any(c in found for c in "\r\n,;")
        or found.count("@") != 1
    ):
        raise _Bad(name, f"{name} is not one email address")
    return found


def _tenant() -> Tenant:
    with db.transaction() as s:
        row = s.get(Tenant, g.tenant.id)
        assert row is not None
        _ = row.email_secrets, row.settings
        s.expunge(row)
    return row


def _sender(tenant: Tenant, wanted: str | None) -> tuple[str, str | None]:
    """(From address, display name): a user of the tenant, else the tenant's own address."""
    config = email.sender_config(tenant)
    if config is None:
        raise _Conflict("the tenant cannot send email yet (switchboard email set-sender)")
    if wanted is not None:
        with db.transaction() as s:
            user = s.scalar(
                select(User).where(User.tenant_id == tenant.id, func.lower(User.email) == wanted.lower())
            )
            if user is not None:
                return user.email, user.name
        if not config.default_from or wanted.lower() != config.default_from.lower():
            raise _Bad("from", "from must be the address of one of the tenant's users, or the tenant's")
    if not config.default_from:
        raise _Bad("from", "from is required: the tenant has no address of its own (set-sender --from)")
    return config.default_from, tenant.name


class _Conflict(Exception):
    pass


@emails.errorhandler(_Conflict)
def _conflict(exc: _Conflict) -> tuple[Response, int]:
    return jsonify({"error": str(exc)}), 409


@emails.post("/emails")
def send_email() -> tuple[Response, int]:
    """Send one email now; the email is on the ledger (and the CRM timeline) from the moment it is sent."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise _Bad("body", "the body must be a JSON object")
    to = _address(body, "to", required=True)
    subject = _text(body, "subject", required=True, limit=MAX_SUBJECT)
    text = _text(body, "text", required=True)
    html = _text(body, "html", required=False)
    wanted_from = _address(body, "from", required=False)
    in_reply_to = mail.message_id(_text(body, "in_reply_to", required=False, limit=998))
    contact_id = body.get("contact_id")
    if contact_id is not None and (
        not isinstance(contact_id, str | int) or isinstance(contact_id, bool) or not str(contact_id).strip()
    ):
        raise _Bad("contact_id", "contact_id must be a CRM contact id (a string or an integer)")
    key = request.headers.get("Idempotency-Key")
    if key is not None and (not key.strip() or len(key) > MAX_KEY or not key.isprintable()):
        raise _Bad("Idempotency-Key", f"Idempotency-Key must be 1 to {MAX_KEY} printable characters")
    assert to and subject and text
    tenant = _tenant()
    from_addr, from_name = _sender(tenant, wanted_from)
    out = email.Outgoing(
        switchboard_id=email.id_for(tenant.id, f"api:{key}") if key else email.new_id(),
        to=to,
        from_addr=from_addr,
        from_name=from_name,
        subject=subject,
        text=text,
        html=html,
        in_reply_to=in_reply_to,
        contact_id=str(contact_id)[:64] if contact_id is not None else None,
    )
    settings = current_app.extensions["switchboard"]
    try:
        sent = email.send(tenant, settings, out, source="api")
    except email.OptedOut as exc:
        return jsonify({"error": str(exc), "field": "to", "opted_out": True}), 409
    except email.NotConfigured as exc:
        return jsonify({"error": str(exc)}), 409
    except (email.Pending, email.Unknown) as exc:
        return jsonify({"error": str(exc), "switchboard_id": out.switchboard_id}), 409
    except email.Rejected as exc:
        return jsonify({"error": str(exc), "provider_status": exc.status}), 422
    except email.Unavailable as exc:
        response = jsonify({"error": str(exc), "switchboard_id": out.switchboard_id})
        response.headers["Retry-After"] = str(int(exc.retry_after or 5))
        return response, 503
    return jsonify(
        {
            "id": sent.interaction_id,
            "switchboard_id": sent.switchboard_id,
            "message_id": sent.message_id,
            "provider": sent.provider,
            "provider_message_id": sent.provider_message_id,
            "from": from_addr,
            "to": to,
            "contact_id": contact_id,
            "recovered": sent.recovered,
        }
    ), (200 if sent.recovered else 201)
