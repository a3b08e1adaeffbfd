"""What every webhook receiver shares: the receiver protocols, the error taxonomy, the public URL, and
field helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from flask import Request, Response, current_app

from app.core.crm_events import CrmEventIn
from app.core.interactions import Event
from app.core.ledger import Recorded
from app.core.models import Tenant
from app.core.settings import Settings


class WebhookError(Exception):
    """A request we refuse; the blueprint turns it into a JSON error and nothing is stored."""

    status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, str]:
        """The JSON body of the error response."""
        out = {"error": self.message}
        if self.field:
            out["field"] = self.field
        return out


class Forbidden(WebhookError):
    """Bad or missing signature, or an account we do not know (403)."""

    status = 403


class Malformed(WebhookError):
    """A required field is missing or has the wrong shape (400, naming the field)."""

    status = 400


def public_url(request: Request) -> str:
    """The URL the provider called, as the provider saw it (scheme, host, path and exact query).

    Signatures cover this URL, so behind a TLS-terminating proxy it must be rebuilt from PUBLIC_BASE_URL (or
    from X-Forwarded-* when TRUST_PROXY_HOPS is set); https://www.twilio.com/docs/usage/webhooks/webhooks-security
    """
    path = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not path:
        query = request.query_string.decode("latin-1")
        path = request.script_root + request.path + (f"?{query}" if query else "")
    base = current_app.config.get("PUBLIC_BASE_URL") or request.host_url.rstrip("/")
    return base + path.split("#", 1)[0]


_FORM_LISTS = "_switchboard_form_lists"  # the request attribute form_lists memoizes on


def form_lists(request: Request) -> dict[str, list[str]]:
    """The request's form fields, every value of each in the order sent (`request.form.to_dict(flat=False)`),
    copied out of werkzeug's MultiDict once per request and shared by verify and parse (treat it as
    read-only): issue 9, where verify and parse made three copies of it per webhook."""
    cached: dict[str, list[str]] | None = request.__dict__.get(_FORM_LISTS)
    if cached is None:
        cached = request.form.to_dict(flat=False)
        setattr(request, _FORM_LISTS, cached)
    return cached


def first_values(fields: dict[str, list[str]]) -> dict[str, str]:
    """Each field's first value: `request.form.to_dict(flat=True)` of the form `fields` came from."""
    return {name: values[0] for name, values in fields.items()}


def absolute(request: Request, path: str) -> str:
    """An absolute URL on this service for `path`, for callback URLs we hand to providers."""
    base = current_app.config.get("PUBLIC_BASE_URL") or request.host_url.rstrip("/")
    return base + path


def require(form: dict[str, str], name: str, pattern: re.Pattern[str] | None = None) -> str:
    """Return a required field, or raise Malformed naming it."""
    value = form.get(name)
    if value is None or value == "":
        raise Malformed(f"missing required field {name}", field=name)
    if pattern is not None and not pattern.fullmatch(value):
        raise Malformed(f"malformed field {name}", field=name)
    return value


MAX_COUNT = 10**9  # durations, sequence numbers and counts beyond this are not from Twilio


def optional_int(form: dict[str, str], name: str) -> int | None:
    """Return an optional non-negative integer field, or raise Malformed naming it."""
    value = form.get(name)
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 10 or int(value) > MAX_COUNT:
        raise Malformed(f"field {name} must be a whole number from 0 to {MAX_COUNT}", field=name)
    return int(value)


def optional_rfc2822(form: dict[str, str], name: str) -> str | None:
    """Parse an optional RFC 2822 timestamp (Twilio's format) to ISO 8601 UTC, or raise Malformed."""
    value = form.get(name)
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise Malformed(f"field {name} must be an RFC 2822 date", field=name) from None
    if parsed.tzinfo is None:
        raise Malformed(f"field {name} must carry a time zone", field=name)
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:
        raise Malformed(f"field {name} is out of range", field=name) from None
    if not 2000 <= utc.year <= 2200:
        raise Malformed(f"field {name} is out of range", field=name)
    return utc.isoformat()


def reject_nul(raw: dict[str, list[str]]) -> None:
    """Refuse NUL characters anywhere: no provider sends them and PostgreSQL text cannot store them."""
    for name, values in raw.items():
        if "\x00" in name or any("\x00" in v for v in values):
            raise Malformed(
                f"field {name.replace(chr(0), '')} contains a NUL character", field=name.replace(chr(0), "")
            )


# --- the receiver protocols --------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutedUser:
    """The rep an incoming call rings (chosen by the web layer from our own data, never a remote CRM)."""

    id: int
    phone: str


class Receiver(Protocol):
    """A channel provider's webhooks (calls, texts, email): the view at POST /webhooks/<provider>/<stream>
    runs verify -> parse -> plan -> record (with the consent change, one transaction) -> enqueue -> reply.
    """

    provider: str
    streams: tuple[str, ...]
    # Email: each stream is also served at /webhooks/<provider>/<stream>/<route token> (route_token()).
    token_in_path: bool

    def verify(self, request: Request) -> Tenant:
        """The tenant whose credential signed the request (Forbidden otherwise)."""
        ...

    def parse(self, stream: str, request: Request, tenant: Tenant) -> Event:
        """The normalized event (Malformed naming the field); pure: no database, no network."""
        ...

    def parse_batch(self, stream: str, request: Request, tenant: Tenant) -> list[Event]:
        """Every event the request carries, at least one, all parsed before any is recorded (a provider
        that posts one event per request gets this from OneEventPerRequest)."""
        ...

    def caller(self, stream: str, event: Event) -> str | None:
        """The number whose owner should take this call, when the event asks us to route one."""
        ...

    def plan(self, event: Event, user: RoutedUser | None) -> Event:
        """The event with the call plan (who rings) in its facts."""
        ...

    def reply(
        self, stream: str, request: Request, tenant: Tenant, event: Event, recorded: Recorded
    ) -> Response:
        """What the provider expects back (TwiML, 204 ...)."""
        ...


def route_token(request: Request) -> str | None:
    """An email webhook's route token: the last path segment (/webhooks/sendgrid/inbound/<token>) or, in
    URLs configured before that form existed, the `token` query parameter."""
    return (request.view_args or {}).get("token") or request.args.get("token")


def upload_size(f: Any) -> int | None:
    """The size in bytes of an uploaded file part (a multipart part rarely carries its own Content-Length,
    so FileStorage.content_length is usually 0), or None when its stream cannot tell."""
    try:
        f.stream.seek(0, 2)
        size = int(f.stream.tell())
        f.stream.seek(0)
        return size
    except (OSError, AttributeError, ValueError):
        return None


def url_stream(request: Request) -> str:
    """The <stream> of /webhooks/<provider>/<stream>[/<route token>]."""
    parts = request.path.strip("/").split("/")
    return parts[2] if len(parts) > 2 else ""


class OneEventPerRequest:
    """For providers that post one event per request (Twilio, Mailgun): the batch is parse()'s event."""

    def parse_batch(self, stream: str, request: Request, tenant: Tenant) -> list[Event]:
        """[parse(...)]."""
        return [self.parse(stream, request, tenant)]  # type: ignore[attr-defined]


class NothingToRoute:
    """For receivers of channels that ring nobody (email): no caller to route by, nothing to plan."""

    @staticmethod
    def caller(stream: str, event: Event) -> str | None:
        """Nobody to ring."""
        return None

    @staticmethod
    def plan(event: Event, user: RoutedUser | None) -> Event:
        """Nothing to plan."""
        return event


class CrmEventReceiver(Protocol):
    """A CRM's change notifications at POST /webhooks/<crm>: verify -> parse -> record once -> reply."""

    provider: str

    def verify(self, request: Request, settings: Settings) -> None:
        """Check the signature or shared secret (Forbidden otherwise)."""
        ...

    def parse(self, request: Request) -> list[CrmEventIn]:
        """The notifications of the request (Malformed naming the field)."""
        ...

    def reply(self, request: Request, events: list[CrmEventIn], new: list[int]) -> Response:
        """The acknowledgement the CRM expects."""
        ...

    def trigger_kind(self, event_type: str, property_name: str | None) -> str | None:
        """The automation trigger a stored event fires: contact.created, crm.deal_stage_changed,
        crm.owner_changed, or None (rules see the same triggers whatever the CRM)."""
        ...
