"""Sending email through SendGrid (the `sendgrid` SDK, v3 mail/send) or Mailgun (`requests`, the Messages
API), exactly once per id of ours, with the outbound email on the ledger from the moment we send it.

Every email we send has our id (`switchboard_id`, "sb" + 32 hex) and a Message-ID we make from it
(`<sb...@sender's domain>`). SendGrid gets the id as a custom arg, which it copies into every event of the
message (https://www.twilio.com/docs/sendgrid/for-developers/sending-email/custom-arguments); Mailgun as a
`v:switchboard_id` variable (the events' user-variables) and an `h:X-Switchboard-Id` header, plus our
Message-ID as `h:Message-Id`, which Mailgun keeps. The ledger's email is keyed by our id, and the webhooks
fold a provider's events into it by that id (webhooks/sendgrid.py, webhooks/mailgun.py).

Exactly once: neither send API takes an idempotency key, so `send` writes an *attempt* ("sending") on the
ledger before the call and the outcome after it (accepted, or refused when the provider answered with an
error). An attempt with no outcome is one whose worker died or whose connection broke after the request
went out: the provider may have the mail. The next `send` with the same id then asks the provider before
sending again:
- the ledger first: an event webhook carrying our id (SendGrid's `processed`, Mailgun's `accepted` ...)
  has already moved the email past "sending";
- SendGrid: the Email Activity API, `GET /v3/messages?query=unique_args['switchboard_id']="sb..."` (a paid
  add-on; without it, 403, we can only rely on the Event Webhook);
- Mailgun: the Events API, `GET /v3/<domain>/events?message-id=<our Message-ID>`.
Found: the attempt is recorded as accepted and nothing is sent. Not found: both lookups are eventually
consistent, so we wait until LOOKUP_GRACE has passed since the attempt (`Pending`) and then send. When
the provider cannot be asked at all (SendGrid without the add-on) and no event arrived within the grace,
the outcome stays unknown: `Unknown`, never a second send (at most once; someone must look).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import secrets
import urllib.error
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import CustomArg, From, Header, Mail, To
from sqlalchemy import or_, select

from app.automation import rules
from app.automation.store import active_rules
from app.core import db, ledger, mail
from app.core.db import utcnow
from app.core.interactions import Event
from app.core.models import Interaction, Tenant, WebhookEvent
from app.core.queue import enqueue_automation, enqueue_sync
from app.core.settings import Settings

log = logging.getLogger(__name__)

PROVIDERS = ("sendgrid", "mailgun")
ID_ARG = "switchboard_id"  # the custom arg / user variable that carries our id
ID_HEADER = "X-Switchboard-Id"
LOOKUP_GRACE = timedelta(minutes=5)  # how long a provider's lookup may lag behind an accepted send
TIMEOUT = 15.0
# A request that went out and got no answer: the provider may or may not have the email.
_NO_ANSWER = (
    TimeoutError,
    ConnectionError,
    requests.ConnectionError,
    requests.Timeout,
    urllib.error.URLError,
    http.client.HTTPException,
)


# --- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SenderConfig:
    """How a tenant sends: the provider, its API key, the Mailgun domain, the tenant's own From address."""

    provider: str
    api_key: str
    default_from: str | None = None
    mailgun_domain: str | None = None
    mailgun_region: str = "us"  # "eu": the domain lives in Mailgun's EU region (api.eu.mailgun.net)


def sender_config(tenant: Tenant) -> SenderConfig | None:
    """The tenant's sending set-up (stored encrypted with its email keys), or None if it has none."""
    keys = mail.email_secrets(tenant)
    provider = keys.get("send_provider")
    api_key = keys.get(f"{provider}_api_key") if provider in PROVIDERS else None
    if not provider or not api_key or (provider == "mailgun" and not keys.get("mailgun_domain")):
        return None
    return SenderConfig(
        provider,
        api_key,
        keys.get("email_from") or None,
        keys.get("mailgun_domain") or None,
        "eu" if keys.get("mailgun_region") == "eu" else "us",
    )


# --- what we send -----------------------------------------------------------------------------------


def new_id() -> str:
    """A fresh id of ours for an email (a rep's send)."""
    return "sb" + secrets.token_hex(16)


def id_for(tenant_id: int, key: str) -> str:
    """Our id for an email that must go out once per `key` (an automation step): the same key, the same id."""
    return "sb" + hashlib.sha256(f"{tenant_id}\x00{key}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Outgoing:
    """One email to send."""

    switchboard_id: str
    to: str
    from_addr: str
    subject: str
    text: str
    html: str | None = None
    from_name: str | None = None
    in_reply_to: str | None = None  # a Message-ID (no brackets): a reply in that thread
    references: tuple[str, ...] = ()
    contact_id: str | None = None  # the CRM contact the sender named (else matched by address)

    @property
    def message_id(self) -> str:
        """Our Message-ID (without brackets), on the sender's domain as RFC 5322 suggests."""
        return f"{self.switchboard_id}@{self.from_addr.rsplit('@', 1)[-1]}"

    def headers(self) -> dict[str, str]:
        """The headers we set: Message-ID and, for a reply, In-Reply-To and References."""
        out = {"Message-ID": f"<{self.message_id}>"}
        if self.in_reply_to:
            out["In-Reply-To"] = f"<{self.in_reply_to}>"
            out["References"] = " ".join(f"<{r}>" for r in (*self.references, self.in_reply_to))
        return out


@dataclass(frozen=True)
class Sent:
    """An email the provider has: our id, its ledger interaction and the provider's message id."""

    switchboard_id: str
    interaction_id: int
    message_id: str
    provider: str
    provider_message_id: str | None
    recovered: bool = False  # an earlier attempt had sent it; nothing was sent this time


class SendError(Exception):
    """Why an email was not sent."""


class NotConfigured(SendError):
    """The tenant has no sending provider (`switchboard email set-sender`)."""


class OptedOut(SendError):
    """The address unsubscribed, complained or hard-bounced: no more email to it."""


class Rejected(SendError):
    """The provider refused the email (a 4xx other than 429); trying again changes nothing."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unavailable(SendError):
    """The provider could not take it now (429, 5xx, network): try again, after `retry_after` if given."""

    def __init__(self, message: str, retry_after: float | None = None, status: int = 0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class Pending(SendError):
    """An earlier attempt's outcome is not known yet (the provider's lookup may lag): ask again at `until`."""

    def __init__(self, message: str, until: datetime) -> None:
        super().__init__(message)
        self.until = until


class Unknown(SendError):
    """An earlier attempt may have been sent and the provider cannot tell us: not sent again."""


# --- sending ------------------------------------------------------------------------------------------


def send(
    tenant: Tenant, settings: Settings, out: Outgoing, *, source: str, grace: timedelta = LOOKUP_GRACE
) -> Sent:
    """Send `out` once per its switchboard_id, whatever the number of calls (see the module docstring).

    Raises NotConfigured, OptedOut, Rejected (permanent), Unavailable (retry), Pending (retry at `until`),
    Unknown (an earlier attempt's outcome cannot be known).
    """
    config = sender_config(tenant)
    if config is None:
        raise NotConfigured("the tenant has no email provider to send with (switchboard email set-sender)")
    past = _past(tenant.id, config.provider, out.switchboard_id)
    if past.rejected:
        raise Rejected(past.rejected)
    if past.status not in (None, "sending"):  # an attempt was accepted (our record, or one of its events)
        return past.sent(config.provider, out, recovered=True)
    if past.open:
        found, can_tell = _lookup(config, settings, out)
        if found is not None:
            interaction_id = record_accepted(tenant, settings, config.provider, out, found or None)
            log.info("email.recovered provider=%s interaction=%s", config.provider, interaction_id)
            return Sent(
                out.switchboard_id, interaction_id, out.message_id, config.provider, found or None, True
            )
        due = past.open[-1] + grace
        if utcnow() < due:
            raise Pending("an earlier attempt may still show up at the provider", due)
        if not can_tell:
            raise Unknown(
                f"an earlier attempt may have been sent and {config.provider} cannot be asked (the Email "
                "Activity API needs its add-on); not sent again"
            )
    # Consent is checked right before a new attempt (after the look at earlier ones, so an email that did go
    # out is reported as sent even if its address opted out since).
    reason = mail.opted_out(tenant.id, out.to)
    if reason:
        raise OptedOut(reason)
    # Attempts are numbered, and the ledger's unique event key lets only one caller record attempt n: two
    # requests with the same Idempotency-Key at once cannot both send.
    attempt = str(past.attempts + 1)
    if not _record_attempt(tenant, config.provider, out, attempt, source):
        raise Pending("another attempt to send this email is under way", utcnow() + timedelta(seconds=30))
    try:
        provider_id = _call(config, settings, out)
    except _Refused as exc:
        _record_refused(tenant, settings, config.provider, out, attempt, exc)
        raise exc.error from None
    interaction_id = record_accepted(tenant, settings, config.provider, out, provider_id)
    return Sent(out.switchboard_id, interaction_id, out.message_id, config.provider, provider_id)


class _Refused(Exception):
    """The provider answered and did not take the email (so this attempt is closed)."""

    def __init__(self, error: Rejected | Unavailable) -> None:
        super().__init__(str(error))
        self.error = error


def _call(config: SenderConfig, settings: Settings, out: Outgoing) -> str | None:
    """Send through the provider; the provider's message id. _Refused when it answered with an error;
    Unavailable (the attempt stays open) when we cannot know whether it took the email."""
    try:
        if config.provider == "sendgrid":
            return _sendgrid_send(config, settings, out)
        return _mailgun_send(config, settings, out)
    except _NO_ANSWER as exc:
        raise Unavailable(
            f"{config.provider}: no answer ({type(exc).__name__}); the outcome is unknown"
        ) from None


def _sendgrid_client(config: SenderConfig, settings: Settings) -> SendGridAPIClient:
    client = SendGridAPIClient(api_key=config.api_key, host=settings.sendgrid_api_base)
    client.client.timeout = TIMEOUT
    return client


def _sendgrid_send(config: SenderConfig, settings: Settings, out: Outgoing) -> str | None:
    """v3 mail/send with the SDK's Mail helper: https://www.twilio.com/docs/sendgrid/api-reference/mail-send"""
    message = Mail(
        from_email=From(out.from_addr, out.from_name),
        to_emails=To(out.to),
        subject=out.subject,
        plain_text_content=out.text,
        html_content=out.html,
    )
    message.custom_arg = CustomArg(ID_ARG, out.switchboard_id)
    for name, value in out.headers().items():
        message.header = Header(name, value)
    try:
        response = _sendgrid_client(config, settings).send(message)
    except HTTPError as exc:
        raise _answered(
            _http_error("sendgrid", exc.status_code, _sendgrid_message(exc), exc.headers)
        ) from None
    return response.headers.get("X-Message-Id")


def _sendgrid_message(exc: HTTPError) -> str:
    try:
        errors = json.loads(exc.body or b"{}").get("errors") or []
        return "; ".join(
            f"{e.get('field')}: {e.get('message')}" if e.get("field") else str(e.get("message"))
            for e in errors
        )[:500]
    except (ValueError, AttributeError):
        return str(exc.reason)[:500]


MAILGUN_US, MAILGUN_EU = "https://api.mailgun.net", "https://api.eu.mailgun.net"


def mailgun_base(config: SenderConfig, settings: Settings) -> str:
    """The Mailgun API host of the tenant's domain: EU domains answer only on the EU host
    (https://documentation.mailgun.com/docs/mailgun/api-reference/#base-url); MAILGUN_API_BASE, when set
    to anything else (the emulator), wins for every tenant."""
    if settings.mailgun_api_base != MAILGUN_US:
        return settings.mailgun_api_base
    return MAILGUN_EU if config.mailgun_region == "eu" else MAILGUN_US


def _mailgun_send(config: SenderConfig, settings: Settings, out: Outgoing) -> str | None:
    """The Messages API: https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/messages"""
    sender = f'"{out.from_name}" <{out.from_addr}>' if out.from_name else out.from_addr
    data: dict[str, str] = {"from": sender, "to": out.to, "subject": out.subject, "text": out.text}
    if out.html:
        data["html"] = out.html
    data.update({f"h:{k}": v for k, v in out.headers().items()})
    data[f"h:{ID_HEADER}"] = out.switchboard_id
    data[f"v:{ID_ARG}"] = out.switchboard_id
    with requests.Session() as http_session:
        http_session.trust_env = False  # never send the API key through an environment proxy
        response = http_session.post(
            f"{mailgun_base(config, settings)}/v3/{config.mailgun_domain}/messages",
            auth=("api", config.api_key),
            data=data,
            timeout=TIMEOUT,
        )
    if response.status_code != 200:
        raise _answered(
            _http_error("mailgun", response.status_code, _mailgun_message(response), response.headers)
        )
    try:
        return mail.message_id(str(response.json().get("id") or "")) or out.message_id
    except ValueError:
        return out.message_id


def _mailgun_message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message") or response.reason)[:500]
    except ValueError:
        return (response.text or response.reason or "")[:500]


def _answered(error: Rejected | Unavailable) -> Exception:
    """A 4xx (429 included: the rate limiter sits in front of the send) means the provider did not take the
    email, so this attempt is closed (_Refused). A 5xx may come from a gateway after the provider took it
    (a 504 behind a slow backend), so the attempt stays open and the next one asks the provider first."""
    if isinstance(error, Unavailable) and error.status >= 500:
        return error
    return _Refused(error)


def _http_error(provider: str, status: int, detail: str, headers: Any) -> Rejected | Unavailable:
    """A provider's HTTP error as permanent (4xx) or worth retrying (429, 5xx, with its Retry-After)."""
    text = f"{provider} HTTP {status}: {detail}".strip()
    if status == 429 or status >= 500:
        retry_after = None
        raw = headers.get("Retry-After") if headers is not None else None
        if raw and str(raw).strip().isdigit():
            retry_after = float(str(raw).strip())
        return Unavailable(text, retry_after, status)
    return Rejected(text, status)


# --- asking the provider whether an earlier attempt went out ----------------------------------------


def _lookup(config: SenderConfig, settings: Settings, out: Outgoing) -> tuple[str | None, bool]:
    """(the provider's message id if it has our email, else None; whether the provider could be asked).
    "" when it has it but gave no id. Unavailable when the lookup itself failed for now."""
    try:
        if config.provider == "sendgrid":
            return _sendgrid_lookup(config, settings, out)
        return _mailgun_lookup(config, settings, out)
    except (*_NO_ANSWER, requests.RequestException) as exc:
        raise Unavailable(
            f"{config.provider}: cannot look up an earlier attempt ({type(exc).__name__})"
        ) from None


def _sendgrid_lookup(config: SenderConfig, settings: Settings, out: Outgoing) -> tuple[str | None, bool]:
    query = f"unique_args['{ID_ARG}']=\"{out.switchboard_id}\""
    try:
        response = _sendgrid_client(config, settings).client.messages.get(
            query_params={"query": query, "limit": 1}
        )
    except HTTPError as exc:
        if exc.status_code in (401, 403, 404):  # no Email Activity add-on: only our events can tell
            return None, False
        raise Unavailable(f"sendgrid lookup HTTP {exc.status_code}") from None
    messages = json.loads(response.body or b"{}").get("messages") or []
    if not messages:
        return None, True
    return str(messages[0].get("msg_id") or "").split(".", 1)[0], True


def _mailgun_lookup(config: SenderConfig, settings: Settings, out: Outgoing) -> tuple[str | None, bool]:
    with requests.Session() as http_session:
        http_session.trust_env = False
        response = http_session.get(
            f"{mailgun_base(config, settings)}/v3/{config.mailgun_domain}/events",
            auth=("api", config.api_key),
            params={"message-id": out.message_id, "limit": 1},
            timeout=TIMEOUT,
        )
    if response.status_code != 200:
        raise Unavailable(f"mailgun lookup HTTP {response.status_code}")
    items = response.json().get("items") or []
    return (out.message_id if items else None), True


# --- the ledger -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Past:
    interaction_id: int | None
    status: str | None
    provider_message_id: str | None
    open: list[datetime]  # when each attempt without an outcome started, oldest first
    rejected: str | None = None  # why the send API refused it for good
    attempts: int = 0  # how many were recorded

    def sent(self, provider: str, out: Outgoing, recovered: bool) -> Sent:
        assert self.interaction_id is not None
        pid = self.provider_message_id
        return Sent(out.switchboard_id, self.interaction_id, out.message_id, provider, pid, recovered)


def _past(tenant_id: int, provider: str, switchboard_id: str) -> _Past:
    """What the ledger knows of earlier attempts to send this email."""
    with db.transaction() as s:
        row = s.execute(
            select(Interaction.id, Interaction.status, Interaction.facts).where(
                Interaction.tenant_id == tenant_id,
                Interaction.provider == provider,
                Interaction.channel == "email",
                Interaction.provider_id == switchboard_id,
            )
        ).first()
        events = s.execute(
            select(WebhookEvent.event_key, WebhookEvent.received_at).where(
                WebhookEvent.tenant_id == tenant_id,
                WebhookEvent.provider == provider,
                or_(
                    WebhookEvent.event_key.like(f"attempt:{switchboard_id}:%"),
                    WebhookEvent.event_key.like(f"refused:{switchboard_id}:%"),
                ),
            )
        ).all()
    refused = {k.split(":", 2)[2] for k, _at in events if k.startswith("refused:")}
    open_ = sorted(at for k, at in events if k.startswith("attempt:") and k.split(":", 2)[2] not in refused)
    attempts = sum(1 for k, _at in events if k.startswith("attempt:"))
    if row is None:
        return _Past(None, None, None, open_, attempts=attempts)
    facts = row.facts or {}
    status = facts.get("email_status") or {}
    rejected = status.get("reason") or "refused" if status.get("severity") == "rejected" else None
    provider_id = (facts.get("email") or {}).get("provider_message_id")
    return _Past(row.id, row.status, provider_id, open_, rejected, attempts)


def _facts(provider: str, out: Outgoing, source: str) -> dict[str, Any]:
    now = utcnow().isoformat()
    return {
        "email": {
            "direction": "outbound",
            "from": out.from_addr,
            "from_name": out.from_name,
            "to": out.to,
            "subject": out.subject,
            "text": out.text,
            "full_text": out.text,
            "message_id": out.message_id,
            "in_reply_to": out.in_reply_to,
            "references": list(out.references),
            "provider": provider,
            "switchboard_id": out.switchboard_id,
            "source": source,
        },
        "email_status": {"status": "sending"},
        "email_seen": {"sending": now},
        "started_at": now,
    }


def _event(provider: str, out: Outgoing, key: str, facts: dict[str, Any]) -> Event:
    raw = {"switchboard_id": [out.switchboard_id], "step": [key.split(":", 1)[0]]}
    return Event(provider, "api", key, "email", out.switchboard_id, "", facts, raw)


def _record_attempt(tenant: Tenant, provider: str, out: Outgoing, attempt: str, source: str) -> bool:
    """Status "sending", committed before the request goes out (not synced yet: it is about to change);
    False when this attempt number was recorded already (by a concurrent caller)."""
    recorded = ledger.record(
        tenant,
        _event(provider, out, f"attempt:{out.switchboard_id}:{attempt}", _facts(provider, out, source)),
    )
    if recorded.duplicate:
        return False
    if out.contact_id and recorded.interaction_id:
        ledger.save_contacts([(recorded.interaction_id, out.contact_id, "named by the sender", None)])
    return True


def record_accepted(
    tenant: Tenant, settings: Settings, provider: str, out: Outgoing, provider_message_id: str | None
) -> int:
    """The provider has the email: status sent, its message id; the email goes to the CRM."""
    facts: dict[str, Any] = {
        "email": {"provider_message_id": provider_message_id},
        "email_status": {"status": "sent"},
        "email_seen": {"accepted": utcnow().isoformat()},
    }
    recorded = ledger.record(tenant, _event(provider, out, f"accepted:{out.switchboard_id}", facts))
    if recorded.changed:
        enqueue_sync(settings, recorded.interaction_id, recorded.version)
        if active_rules(tenant.id) is not None:  # email.sent starts email.no_reply_within
            enqueue_automation(settings, recorded.interaction_id, recorded.version)
    return recorded.interaction_id


def _record_refused(
    tenant: Tenant, settings: Settings, provider: str, out: Outgoing, attempt: str, exc: _Refused
) -> None:
    """The provider answered with an error: this attempt is closed; a permanent refusal fails the email."""
    facts: dict[str, Any] = {}
    if isinstance(exc.error, Rejected):
        facts = {
            "email_status": {
                "status": "failed",
                "severity": "rejected",  # by the send API, not a bounce: the address is not opted out
                "reason": str(exc.error)[:500],
                "code": str(exc.error.status or "")[:16] or None,
            },
            "email_seen": {"rejected": utcnow().isoformat()},
        }
    recorded = ledger.record(tenant, _event(provider, out, f"refused:{out.switchboard_id}:{attempt}", facts))
    if recorded.changed:
        enqueue_sync(settings, recorded.interaction_id, recorded.version)


# --- resolving an email left "may have been sent" --------------------------------------------------------


class NotResolvable(SendError):
    """No such email, or it is not waiting for someone to say whether it went out."""


@dataclass(frozen=True)
class Undecided:
    """An email whose attempt has no outcome (see `Unknown`)."""

    tenant_id: int
    interaction_id: int
    switchboard_id: str
    provider: str
    to: str


def undecided(ident: str) -> Undecided:
    """The email named by our id (sb...) or its interaction id, if it is still "sending" with an attempt
    that has no outcome; NotResolvable says why not."""
    ident = ident.strip()
    by = Interaction.id == int(ident) if ident.isdigit() else Interaction.provider_id == ident
    with db.transaction() as s:
        row = s.execute(
            select(
                Interaction.id,
                Interaction.tenant_id,
                Interaction.provider,
                Interaction.provider_id,
                Interaction.status,
                Interaction.party_email,
            ).where(by, Interaction.channel == "email", Interaction.direction == "outbound")
        ).first()
    if row is None or not mail.our_id(row.provider_id):
        raise NotResolvable(f"no email of ours is {ident}")
    past = _past(row.tenant_id, row.provider, row.provider_id)
    if row.status != "sending" or not past.open or past.rejected:
        raise NotResolvable(f"email {row.provider_id} is {row.status}, not waiting to be resolved")
    return Undecided(row.tenant_id, row.id, row.provider_id, row.provider, row.party_email or "")


def resolve(tenant: Tenant, settings: Settings, email: Undecided, *, sent: bool) -> None:
    """Someone looked (the provider's console, the recipient): `sent` records the email as accepted (its
    events fold in later, as usual); otherwise every open attempt is closed, so the next `send` with this id
    sends it afresh (after its own opt-out check)."""
    past = _past(tenant.id, email.provider, email.switchboard_id)
    if sent:
        facts: dict[str, Any] = {
            "email": {"provider_message_id": None},
            "email_status": {"status": "sent"},
            "email_seen": {"accepted": utcnow().isoformat(), "resolved_sent": utcnow().isoformat()},
        }
        key = f"accepted:{email.switchboard_id}"
        recorded = ledger.record(tenant, _resolution(email, key, facts))
        if recorded.changed:
            enqueue_sync(settings, recorded.interaction_id, recorded.version)
            if active_rules(tenant.id) is not None:  # email.sent starts email.no_reply_within
                enqueue_automation(settings, recorded.interaction_id, recorded.version)
        return
    # Close each attempt (the numbers are 1..attempts) as refused-without-a-reason: no status changes.
    seen = {"email_seen": {"resolved_resend": utcnow().isoformat()}}
    for attempt in range(1, past.attempts + 1):
        ledger.record(tenant, _resolution(email, f"refused:{email.switchboard_id}:{attempt}", seen))


def _resolution(email: Undecided, key: str, facts: dict[str, Any]) -> Event:
    raw = {"switchboard_id": [email.switchboard_id], "resolved_by": ["cli"]}
    return Event(email.provider, "api", key, "email", email.switchboard_id, "", facts, raw)


# --- the send_email automation step ----------------------------------------------------------------------


def recipient(party_email: str | None, template: dict[str, Any]) -> str | None:
    """Whom a send_email step writes to: the trigger's party, else the CRM contact's address."""
    return party_email or (template.get("contact") or {}).get("email") or None


def run_step(
    tenant: Tenant,
    settings: Settings,
    *,
    key: str,
    party_email: str | None,
    spec: dict[str, Any],
    template: dict[str, Any],
) -> tuple[str, dict[str, Any], str | None]:
    """Run one send_email step (jobs.automations dispatches here): (outcome, result, reason) as the other
    actions return them. Our id comes from the step's key, so a retried or recovered step finds its earlier
    attempt (see `send`). Raises Unavailable for the job to retry."""
    to = recipient(party_email, template)
    if not to:
        return "skipped", {}, "the contact has no email address"
    config = sender_config(tenant)
    if config is None:
        return "failed", {}, "the tenant has no email provider to send with (switchboard email set-sender)"
    owner = template.get("owner") or {}
    use_owner = spec.get("from_", "owner") == "owner" and bool(owner.get("email"))
    from_addr = owner.get("email") if use_owner else config.default_from
    if not from_addr:
        return "failed", {}, "no From address: the owner has none and the tenant has none (set-sender --from)"
    out = Outgoing(
        switchboard_id=id_for(tenant.id, key),
        to=to,
        from_addr=from_addr,
        from_name=(owner.get("name") if use_owner else (template.get("tenant") or {}).get("name")) or None,
        subject=rules.render(spec["subject"], template),
        text=rules.render(spec["body"], template),
        html=rules.render(spec["html"], template) if spec.get("html") else None,
    )
    try:
        sent = send(tenant, settings, out, source="automation")
    except OptedOut as exc:
        return "skipped", {}, str(exc)
    except NotConfigured as exc:
        return "failed", {}, str(exc)
    except Rejected as exc:
        return "failed", {"switchboard_id": out.switchboard_id, "status": exc.status}, str(exc)[:500]
    except Pending as exc:
        return "reschedule", {"due_at": exc.until}, str(exc)
    except Unknown as exc:
        return "failed", {"switchboard_id": out.switchboard_id}, str(exc)
    result = {
        "switchboard_id": out.switchboard_id,
        "message_id": out.message_id,
        "provider": sent.provider,
        "provider_message_id": sent.provider_message_id,
        "interaction_id": sent.interaction_id,
        "from": from_addr,
    }
    if sent.recovered:
        result["recovered"] = True
    return "done", result, None
