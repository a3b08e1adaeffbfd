"""Mailgun email webhooks: inbound routes (emails received) and HTTP webhooks (what became of emails sent
through Mailgun).

Configure (replace the host with your PUBLIC_BASE_URL and TOKEN with the tenant's route token from
`switchboard email set-mailgun TENANT --signing-key - --route-token-new`):
  Receiving > Routes, action forward("https://HOST/webhooks/mailgun/inbound?token=TOKEN")
  Sending > Webhooks (delivered, opened, clicked, permanent fail, temporary fail, spam complaints,
      unsubscribes)  https://HOST/webhooks/mailgun/events?token=TOKEN
and give `email set-mailgun --signing-key` the domain's "HTTP webhook signing key".

The tenant is the route token's (Mailgun's payloads name a domain, but one domain can serve several
tenants and a recipient address can be anything a route matches, so the token decides). Both streams are
signed the same way, in the body (form fields on routes, a `signature` object on webhooks):
hex(HMAC-SHA256(signing key, timestamp + token)) == signature, the timestamp within
app.core.mail.FRESHNESS_SECONDS, and each token used once (Redis SET NX with a TTL), since the signature
does not cover the body: https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks
"""

from __future__ import annotations

import hmac
import json
import logging
from datetime import UTC, datetime
from typing import Any

from flask import Request, Response

from app.core import mail
from app.core.db import utcnow
from app.core.interactions import Event
from app.core.ledger import Recorded
from app.core.models import Tenant
from webhooks.base import (
    Forbidden,
    Malformed,
    NothingToRoute,
    OneEventPerRequest,
    Receiver,
    reject_nul,
    require,
    route_token,
    upload_size,
    url_stream,
)

log = logging.getLogger(__name__)

PROVIDER = "mailgun"
STREAMS = ("inbound", "events")

# Mailgun event -> our status; "failed" depends on its severity (temporary: Mailgun retries).
_STATUS: dict[str, str | None] = {
    "accepted": "sent",
    "delivered": "delivered",
    "opened": "opened",
    "clicked": "clicked",
    "failed": "failed",
    "rejected": "failed",
    "complained": "complained",
    "unsubscribed": "unsubscribed",
    "stored": None,
    "list_member_uploaded": None,
}


# --- verify ----------------------------------------------------------------------------------------


def verify(request: Request) -> Tenant:
    """The tenant of the route token, and its signing key's signature: fresh and never seen before (403)."""
    tenant = mail.tenant_for_route_token(route_token(request))
    if tenant is None:
        raise Forbidden("unknown route token")
    key = mail.email_secrets(tenant).get("mailgun_signing_key")
    if not key:
        raise Forbidden("no Mailgun signing key for this tenant")
    if url_stream(request) == "events":
        body = _json(request)
        sig = body.get("signature") if isinstance(body.get("signature"), dict) else {}
    else:
        sig = request.form
    timestamp, token, signature = (str(sig.get(k) or "") for k in ("timestamp", "token", "signature"))
    if not (timestamp and token and signature):
        raise Forbidden("missing signature, timestamp or token")
    if not mail.fresh(timestamp):
        raise Forbidden("stale or malformed timestamp")
    if not hmac.compare_digest(mail.hmac_hex(key, timestamp + token), signature.lower()):
        raise Forbidden("invalid signature")
    if not mail.first_use(tenant.id, PROVIDER, token):
        raise Forbidden("replayed token")
    return tenant


def _json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.get_data(cache=True))
    except ValueError:
        raise Malformed("body is not JSON", field="body") from None
    if not isinstance(body, dict):
        raise Malformed("body must be a JSON object", field="body")
    return body


# --- parse -----------------------------------------------------------------------------------------


def parse(stream: str, request: Request, tenant: Tenant) -> Event:
    """The inbound email, or the webhook's event (Malformed naming the field); pure."""
    if stream == "inbound":
        raw = request.form.to_dict(flat=False)
        reject_nul(raw)
        files = [
            mail.attachment(f.filename, f.mimetype, upload_size(f))
            for _n, f in sorted(request.files.items(multi=True))
        ]
        return parse_inbound(request.form.to_dict(flat=True), raw, files)
    return parse_event(_json(request))


def parse_inbound(form: dict[str, str], raw: dict[str, list[str]], files: list[dict[str, Any]]) -> Event:
    """A route's forward() post as an inbound email."""
    sender = form.get("from") or form.get("From") or form.get("sender") or ""
    if not mail.address(sender):
        raise Malformed("missing required field from", field="from")
    to = form.get("To") or form.get("to") or require(form, "recipient")
    msg_id = mail.message_id(form.get("Message-Id") or form.get("Message-ID"))
    if not msg_id:
        raise Malformed("missing required field Message-Id", field="Message-Id")
    key = mail.interaction_key(msg_id)
    full_text = form.get("body-plain", "")
    stripped = form.get("stripped-text")
    headers = _headers(form)
    facts = {
        "email": {
            "direction": "inbound",
            "from": mail.address(sender),
            "from_name": mail.display_name(sender),
            "to": ", ".join(mail.addresses(to)),
            "cc": ", ".join(mail.addresses(form.get("Cc") or form.get("cc"))),
            "subject": form.get("subject") or form.get("Subject") or "",
            "text": stripped.strip() if stripped else mail.new_text(full_text),
            "full_text": full_text,
            "message_id": msg_id,
            "in_reply_to": mail.message_id(form.get("In-Reply-To")),
            "references": mail.message_ids(form.get("References")),
            "attachments": files,
            "provider": PROVIDER,
            "spf": (form.get("X-Mailgun-Spf") or headers.get("x-mailgun-spf") or "").lower() or None,
            "dkim": (
                form.get("X-Mailgun-Dkim-Check-Result") or headers.get("x-mailgun-dkim-check-result") or ""
            ).lower()
            or None,
        },
        "email_status": {"status": "received"},
        "started_at": utcnow().isoformat(),
    }
    return Event(PROVIDER, "inbound", f"inbound:{key}", "email", key, "", facts, raw)


def _headers(form: dict[str, str]) -> dict[str, str]:
    try:
        pairs = json.loads(form.get("message-headers") or "[]")
    except ValueError:
        raise Malformed("field message-headers is not JSON", field="message-headers") from None
    out: dict[str, str] = {}
    for pair in pairs if isinstance(pairs, list) else []:
        if isinstance(pair, list) and len(pair) == 2:
            out.setdefault(str(pair[0]).lower(), str(pair[1]))
    return out


def parse_event(body: dict[str, Any]) -> Event:
    """One HTTP webhook (event-data) as a status of the outbound email its Message-ID names."""
    data = body.get("event-data")
    if not isinstance(data, dict):
        raise Malformed("missing required field event-data", field="event-data")
    kind = data.get("event")
    if kind not in _STATUS:
        raise Malformed(f"unknown event {kind!r}", field="event-data.event")
    event_id = data.get("id")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 150:
        raise Malformed("missing or malformed event-data.id", field="event-data.id")
    headers = (data.get("message") or {}).get("headers") or {}
    msg_id = mail.message_id(str(headers.get("message-id") or ""))
    if not msg_id:
        raise Malformed("missing event-data.message.headers.message-id", field="event-data.message")
    ts = data.get("timestamp")
    if not isinstance(ts, int | float) or not 946684800 <= ts <= 7258118400:
        raise Malformed("missing or malformed event-data.timestamp", field="event-data.timestamp")
    at = datetime.fromtimestamp(ts, UTC).isoformat()
    status = _STATUS[kind]
    severity = data.get("severity") if kind == "failed" else None
    if kind == "failed" and severity == "temporary":
        status = "deferred"
    elif kind == "failed" and data.get("reason") in ("bounce", "suppress-bounce"):
        status = "bounced"
    delivery = data.get("delivery-status") or {}
    facts: dict[str, Any] = {
        "email": {
            "direction": "outbound",
            "from": mail.address(str(headers.get("from") or "")),
            "to": mail.address(str(data.get("recipient") or headers.get("to") or "")),
            "subject": headers.get("subject") or None,
            "message_id": msg_id,
            "provider": PROVIDER,
        },
        "email_seen": {f"{kind}:{severity}" if severity else kind: at},
        "started_at": at,
    }
    if status is not None:
        code = delivery.get("enhanced-code") or delivery.get("code")
        facts["email_status"] = {
            "status": status,
            "severity": severity or ("permanent" if status in ("failed", "bounced") else None),
            "reason": str(delivery.get("message") or data.get("reason") or "")[:500] or None,
            "code": str(code)[:16] if code else None,
        }
    # An email we sent carries our id as a user variable (v:switchboard_id): it folds into the email
    # recorded at send time; other events by their Message-ID.
    variables = data.get("user-variables")
    ours = mail.our_id(variables.get("switchboard_id") if isinstance(variables, dict) else None)
    key = ours or mail.interaction_key(msg_id)
    return Event(PROVIDER, "events", f"event:{event_id}", "email", key, "", facts, body)


# --- reply ------------------------------------------------------------------------------


def reply(stream: str, request: Request, tenant: Tenant, event: Event, recorded: Recorded) -> Response:
    """Mailgun wants a 200 (406 would mean "rejected, do not retry"; anything else is retried)."""
    return Response(status=200)


class MailgunReceiver(OneEventPerRequest, NothingToRoute):
    """The Receiver for Mailgun's inbound routes and HTTP webhooks."""

    provider = PROVIDER
    streams = STREAMS
    token_in_path = True
    verify = staticmethod(verify)
    parse = staticmethod(parse)
    reply = staticmethod(reply)


RECEIVER: Receiver = MailgunReceiver()
