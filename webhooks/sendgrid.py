"""SendGrid email webhooks: Inbound Parse (emails received) and the Event Webhook (what became of emails
sent through SendGrid).

Configure (replace the host with your PUBLIC_BASE_URL and TOKEN with the tenant's route token from
`switchboard email set-sendgrid TENANT --route-token-new`):
  Settings > Inbound Parse, "Destination URL"  https://HOST/webhooks/sendgrid/inbound?token=TOKEN
      (parsed mode or "POST the raw, full MIME message"; MX of the receiving subdomain -> mx.sendgrid.net)
  Settings > Mail Settings > Event Webhook      https://HOST/webhooks/sendgrid/events?token=TOKEN
      with "Signed Event Webhook" on; its verification key goes to `email set-sendgrid --verification-key`

Inbound Parse is unsigned by default: the route token is the credential (constant-time compared via its
hash; keep the URL secret), plus HTTP basic auth when the tenant turns it on (`switchboard email
sendgrid-inbound-auth TENANT --new`; SendGrid sends the user:password written in the Destination URL), plus
the ECDSA signature when the tenant attached a signing security policy to its Parse setting (`switchboard
email sendgrid-inbound-signature TENANT --verification-key KEY`, the policy's public_key). Event batches must
carry a valid ECDSA signature (X-Twilio-Email-Event-Webhook-Signature over timestamp + raw body, checked
with the sendgrid package's EventWebhook helper) and a timestamp within app.core.mail.FRESHNESS_SECONDS,
which the helper does not check. Each event is one ledger row, keyed by sg_event_id (SendGrid sends
duplicates), folded into the email we sent that its `switchboard_id` custom arg names, else into the
outbound email its sg_message_id names (the part before the first "." is the X-Message-Id of the send),
or into an email of its own when nothing matches:
https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from datetime import UTC, datetime
from email import message_from_string, policy
from email.message import EmailMessage
from email.parser import HeaderParser
from hashlib import sha256
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Request, Response
from sendgrid.helpers.eventwebhook import EventWebhook

from app.core import mail
from app.core.db import utcnow
from app.core.interactions import Event
from app.core.ledger import Recorded
from app.core.models import Tenant
from webhooks.base import (
    Forbidden,
    Malformed,
    NothingToRoute,
    Receiver,
    reject_nul,
    route_token,
    upload_size,
    url_stream,
)

log = logging.getLogger(__name__)

PROVIDER = "sendgrid"
STREAMS = ("inbound", "events")
SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_EVENTS = 10_000  # SendGrid batches up to ~1,000 events or 3 MB per POST

# SendGrid event -> (our status, severity)
_STATUS: dict[str, tuple[str | None, str | None]] = {
    "processed": ("sent", None),
    "deferred": ("deferred", "temporary"),
    "delivered": ("delivered", None),
    "open": ("opened", None),
    "click": ("clicked", None),
    "bounce": ("bounced", "permanent"),
    "blocked": ("bounced", "permanent"),
    "dropped": ("failed", "permanent"),
    "spamreport": ("complained", None),
    "unsubscribe": ("unsubscribed", None),
    "group_unsubscribe": ("unsubscribed", None),
    "group_resubscribe": (None, None),  # kept in the ledger, changes no status
}
_MESSAGE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EVENT_ID = re.compile(r"[A-Za-z0-9_=+/.-]{1,150}")


# --- verify ----------------------------------------------------------------------------------------


def verify(request: Request) -> Tenant:
    """The tenant of the route token; for events also the ECDSA signature and its freshness (403)."""
    tenant = mail.tenant_for_route_token(route_token(request))
    if tenant is None:
        raise Forbidden("unknown route token")
    if url_stream(request) == "events":
        _verify_signature(request, mail.email_secrets(tenant).get("sendgrid_verification_key"))
        return tenant
    # Inbound Parse is unsigned unless the tenant gave us its security policy's key; a tenant may also
    # require the basic auth written in its URL.
    inbound_key = mail.email_secrets(tenant).get("sendgrid_inbound_verification_key")
    if inbound_key:
        _verify_inbound_signature(request, inbound_key)
    auth = request.authorization
    basic = auth if auth is not None and auth.type == "basic" else None
    if not mail.inbound_basic_auth_ok(
        tenant, basic.username if basic else None, basic.password if basic else None
    ):
        raise Forbidden("missing or wrong basic auth")
    return tenant


def _verify_signature(request: Request, key: str | None) -> None:
    if not key:
        raise Forbidden("no SendGrid verification key for this tenant")
    signature = request.headers.get(SIGNATURE)
    timestamp = request.headers.get(TIMESTAMP)
    if not signature or not timestamp:
        raise Forbidden(f"missing {SIGNATURE} or {TIMESTAMP}")
    if not mail.fresh(timestamp):
        raise Forbidden("stale or malformed timestamp")
    try:
        payload = request.get_data(cache=True).decode("utf-8")
        ok = EventWebhook(key).verify_signature(payload, signature, timestamp)
    except (UnicodeDecodeError, ValueError, TypeError, binascii.Error):
        ok = False
    if not ok:
        raise Forbidden("invalid signature")


def _verify_inbound_signature(request: Request, key: str) -> None:
    """Signed Inbound Parse: SendGrid's security policy signs Parse POSTs "with the same ECDSA mechanism as
    the Event Webhook" (https://www.twilio.com/docs/sendgrid/for-developers/parsing-email/securing-your-parse-webhooks,
    /work/shared/reference/api-facts.md 6.1, [2ND]). [UNVERIFIED] that the headers are the Event Webhook's
    (X-Twilio-Email-Event-Webhook-Signature / -Timestamp) and that the signed bytes are timestamp + the raw
    multipart body: the page says only "the signature included in the HTTP headers"; check against a real
    account. The body is verified as bytes (attachments need not be UTF-8, which the helper assumes)."""
    signature = request.headers.get(SIGNATURE)
    timestamp = request.headers.get(TIMESTAMP)
    if not signature or not timestamp:
        raise Forbidden(f"missing {SIGNATURE} or {TIMESTAMP}")
    if not mail.fresh(timestamp):
        raise Forbidden("stale or malformed timestamp")
    try:
        public_key = EventWebhook(key).public_key
        public_key.verify(
            base64.b64decode(signature, validate=True),
            timestamp.encode() + request.get_data(cache=True),
            ec.ECDSA(hashes.SHA256()),
        )
    except (InvalidSignature, ValueError, TypeError, binascii.Error):
        raise Forbidden("invalid signature") from None


# --- parse -----------------------------------------------------------------------------------------


def parse(stream: str, request: Request, tenant: Tenant) -> Event:
    """One event: the inbound email, or the only event of an event batch (the view uses parse_batch)."""
    events = parse_batch(stream, request, tenant)
    if len(events) != 1:
        raise Malformed("expected one event")
    return events[0]


def parse_batch(stream: str, request: Request, tenant: Tenant) -> list[Event]:
    """Every event of the request (Malformed naming the field); pure."""
    if stream == "inbound":
        raw = request.form.to_dict(flat=False)
        reject_nul(raw)
        files = [
            mail.attachment(f.filename, f.mimetype, upload_size(f))
            for _name, f in sorted(request.files.items(multi=True))
        ]
        return [parse_inbound(request.form.to_dict(flat=True), raw, files)]
    try:
        items = json.loads(request.get_data(cache=True))
    except ValueError:
        raise Malformed("body is not JSON", field="body") from None
    return parse_events(items)


def parse_inbound(form: dict[str, str], raw: dict[str, list[str]], files: list[dict[str, Any]]) -> Event:
    """An Inbound Parse post (parsed mode, or raw mode's full MIME in `email`) as an inbound email."""
    original = raw
    if form.get("email"):
        msg = message_from_string(form["email"], policy=policy.default)
        assert isinstance(msg, EmailMessage)
        text_part = msg.get_body(preferencelist=("plain",))
        full_text = text_part.get_content() if text_part is not None else ""
        headers: Any = msg
        attachments = [
            mail.attachment(p.get_filename(), p.get_content_type(), len(p.get_payload(decode=True) or b""))
            for p in msg.iter_attachments()
        ]
        if attachments:
            raw = {**raw, "email": [_without_attachment_content(msg)]}
    else:
        headers = HeaderParser(policy=policy.default).parsestr(form.get("headers", ""))
        full_text = form.get("text", "")
        attachments = files or _attachment_info(form)
    sender = form.get("from") or str(headers.get("From") or "")
    if not mail.address(sender):
        envelope = _envelope(form)
        sender = envelope.get("from") or ""
    if not mail.address(sender):
        raise Malformed("missing required field from", field="from")
    to = form.get("to") or str(headers.get("To") or "")
    if not mail.addresses(to):
        raise Malformed("missing required field to", field="to")
    msg_id = mail.message_id(str(headers.get("Message-ID") or ""))
    ident = msg_id or "body:" + sha256(json.dumps(original, sort_keys=True).encode()).hexdigest()
    key = mail.interaction_key(ident)
    facts = {
        "email": {
            "direction": "inbound",
            "from": mail.address(sender),
            "from_name": mail.display_name(sender),
            "to": ", ".join(mail.addresses(to)),
            "cc": ", ".join(mail.addresses(form.get("cc") or str(headers.get("Cc") or ""))),
            "subject": form.get("subject") or str(headers.get("Subject") or ""),
            "text": mail.new_text(full_text),
            "full_text": full_text,
            "message_id": msg_id,
            "in_reply_to": mail.message_id(str(headers.get("In-Reply-To") or "")),
            "references": mail.message_ids(str(headers.get("References") or "")),
            "attachments": attachments,
            "provider": PROVIDER,
            "spf": (form.get("SPF") or "").strip().lower() or None,
            "dkim": (form.get("dkim") or "").strip() or None,
        },
        "email_status": {"status": "received"},
        "started_at": utcnow().isoformat(),
    }
    return Event(PROVIDER, "inbound", f"inbound:{key}", "email", key, "", facts, raw)


def _without_attachment_content(msg: EmailMessage) -> str:
    """The raw message as kept on the ledger: every attachment's content emptied, its headers (name, type)
    kept. Attachments are metadata only (issue 12): raw mode would otherwise store them in the event row."""
    for part in msg.iter_attachments():
        size = len(part.get_payload(decode=True) or b"")
        del part["Content-Transfer-Encoding"]
        part.set_payload("")
        part["X-Switchboard-Removed"] = f"attachment content not stored ({size} bytes)"
    return msg.as_string()


def _envelope(form: dict[str, str]) -> dict[str, Any]:
    try:
        value = json.loads(form.get("envelope") or "{}")
    except ValueError:
        raise Malformed("field envelope is not JSON", field="envelope") from None
    return value if isinstance(value, dict) else {}


def _attachment_info(form: dict[str, str]) -> list[dict[str, Any]]:
    try:
        info = json.loads(form.get("attachment-info") or "{}")
    except ValueError:
        raise Malformed("field attachment-info is not JSON", field="attachment-info") from None
    if not isinstance(info, dict):
        raise Malformed("field attachment-info is not an object", field="attachment-info")
    return [
        mail.attachment(v.get("filename") or v.get("name"), v.get("type"), None)
        for _k, v in sorted(info.items())
        if isinstance(v, dict)
    ]


def parse_events(items: Any) -> list[Event]:
    """An Event Webhook batch: one Event per SendGrid event, keyed by sg_event_id."""
    if not isinstance(items, list) or not items:
        raise Malformed("body must be a non-empty JSON array of events", field="body")
    if len(items) > MAX_EVENTS:
        raise Malformed(f"more than {MAX_EVENTS} events")
    return [_event(i, item) for i, item in enumerate(items)]


def _event(i: int, item: Any) -> Event:
    if not isinstance(item, dict):
        raise Malformed(f"event {i} is not an object", field=f"[{i}]")
    kind = item.get("event")
    if kind not in _STATUS:
        raise Malformed(f"event {i}: unknown event {kind!r}", field=f"[{i}].event")
    event_id = item.get("sg_event_id")
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        raise Malformed(f"event {i}: missing or malformed sg_event_id", field=f"[{i}].sg_event_id")
    sg_message = item.get("sg_message_id")
    prefix = sg_message.split(".", 1)[0] if isinstance(sg_message, str) else ""
    if not _MESSAGE.fullmatch(prefix):
        raise Malformed(f"event {i}: missing or malformed sg_message_id", field=f"[{i}].sg_message_id")
    ts = item.get("timestamp")
    if not isinstance(ts, int | float) or not 946684800 <= ts <= 7258118400:  # 2000 .. 2200
        raise Malformed(f"event {i}: missing or malformed timestamp", field=f"[{i}].timestamp")
    at = datetime.fromtimestamp(ts, UTC).isoformat()
    status, severity = _STATUS[kind]
    if kind == "bounce" and item.get("type") == "blocked":
        kind = "blocked"
    facts: dict[str, Any] = {
        "email": {
            "direction": "outbound",
            "to": mail.address(str(item.get("email") or "")),
            "message_id": mail.message_id(str(item.get("smtp-id") or "")),
            "provider": PROVIDER,
        },
        "email_seen": {kind: at},
        "started_at": at,
    }
    if status is not None:
        facts["email_status"] = {
            "status": status,
            "severity": severity,
            "reason": str(item.get("reason") or "")[:500] or None,
            "code": str(item.get("status") or "")[:16] or None,
        }
    # An email we sent carries our id as a custom arg (SendGrid copies custom args into every event): it
    # folds into the email recorded at send time; other events by the send's X-Message-Id.
    ours = mail.our_id(item.get("switchboard_id"))
    if ours:
        facts["email"]["provider_message_id"] = prefix
    raw: Any = item
    return Event(PROVIDER, "events", f"event:{event_id}", "email", ours or prefix, "", facts, raw)


# --- reply ------------------------------------------------------------------------------


def reply(stream: str, request: Request, tenant: Tenant, event: Event, recorded: Recorded) -> Response:
    """SendGrid wants any 2xx (anything else is retried, for up to 3 days on Inbound Parse)."""
    return Response(status=200)


class SendGridReceiver(NothingToRoute):
    """The Receiver for SendGrid's Inbound Parse and Event Webhook."""

    provider = PROVIDER
    streams = STREAMS
    token_in_path = True
    verify = staticmethod(verify)
    parse = staticmethod(parse)
    parse_batch = staticmethod(parse_batch)
    reply = staticmethod(reply)


RECEIVER: Receiver = SendGridReceiver()
