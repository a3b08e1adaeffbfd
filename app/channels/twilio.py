"""Sending texts through Twilio's REST API with the official SDK (or its contract emulator).

The SDK has no base-URL setting, so a small TwilioHttpClient subclass rewrites https://api.twilio.com to
TWILIO_API_BASE when that points elsewhere (see ../shared/reference/sdk-feasibility.md, Twilio option A).
Every text we send is also recorded on the ledger as an outbound interaction, so it reaches the CRM
like any other, and its status callbacks update it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from app.core import ledger
from app.core.interactions import Event
from app.core.models import Tenant
from app.core.queue import enqueue_sync
from app.core.settings import Settings

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


def send_sms(tenant: Tenant, settings: Settings, *, to: str, from_: str, body: str) -> str:
    """Send a text and record it on the ledger; returns the MessageSid. Raises TwilioRestException."""
    callback = f"{settings.public_base_url}/webhooks/twilio/sms-status" if settings.public_base_url else None
    message = client_for(tenant, settings).messages.create(
        to=to, from_=from_, body=body, status_callback=callback
    )
    record_sent(
        tenant, settings, sid=message.sid, to=to, from_=from_, body=body, status=message.status or "queued"
    )
    return str(message.sid)


def record_sent(
    tenant: Tenant, settings: Settings, *, sid: str, to: str, from_: str, body: str, status: str
) -> None:
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
        },
        raw={"To": [to], "From": [from_], "MessageSid": [sid], "source": ["automation"]},
    )
    recorded = ledger.record(tenant, event)
    if recorded.changed:
        enqueue_sync(settings, recorded.interaction_id, recorded.version)


def error_code(exc: TwilioRestException) -> int | None:
    """Twilio's numeric error code of a failed request."""
    return int(exc.code) if exc.code is not None else None
