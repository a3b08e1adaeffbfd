"""Sign and post Twilio webhooks the way Twilio does, with the fixtures' placeholder auth token.

And HubSpot's v3-signed webhook batches (HubSpotPoster, sign_hubspot), with the app's client secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

FIXTURE_ACCOUNT = "AC00000000000000000000000000000001"
FIXTURE_TOKEN = "0123456789abcdef0123456789abcdef"
FIXTURES = Path(__file__).parent / "fixtures" / "twilio"


def fixture_body(name: str) -> str:
    """The exact form body of a fixture, e.g. 'voice__incoming'."""
    return (FIXTURES / f"{name}.form").read_text()


def fixture_params(name: str) -> dict[str, str]:
    """A fixture's parameters as a dict."""
    return dict(parse_qsl(fixture_body(name), keep_blank_values=True))


class TwilioPoster:
    """Posts form bodies to a Flask test client with a valid X-Twilio-Signature."""

    def __init__(self, client: Any, base_url: str, token: str) -> None:
        self.client = client
        self.base_url = base_url
        self.token = token

    def post(
        self,
        path: str,
        body: str | dict[str, str],
        *,
        token: str | None = None,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """POST `body` to `path`, signed with `token` (default: the tenant's) unless `signature` is given."""
        raw = body if isinstance(body, str) else urlencode(body)
        params = MultiDict(parse_qsl(raw, keep_blank_values=True))
        url = self.base_url + path
        if signature is None:
            signature = RequestValidator(token or self.token).compute_signature(url, params)
        all_headers = {"X-Twilio-Signature": signature, **(headers or {})}
        return self.client.post(
            path,
            data=raw,
            content_type="application/x-www-form-urlencoded",
            headers=all_headers,
            base_url=self.base_url,
        )

    def fixture(self, path: str, name: str, **changes: str) -> Any:
        """POST a fixture file, optionally with some parameters changed."""
        if not changes:
            return self.post(path, fixture_body(name))
        return self.post(path, {**fixture_params(name), **changes})


# --- HubSpot -------------------------------------------------------------------------------------------

HUBSPOT_FIXTURES = Path(__file__).parent / "fixtures" / "hubspot"
HUBSPOT_WEBHOOK_PATH = "/webhooks/hubspot"


def sign_hubspot(secret: str, method: str, url: str, body: str, timestamp_ms: int | str) -> str:
    """X-HubSpot-Signature-v3: base64(HMAC-SHA256(client secret, method + URI + body + timestamp)).

    https://developers.hubspot.com/docs/api/webhooks/validating-requests (written from that page, not with
    the SDK that connectors/hubspot/webhooks.py verifies with, so the two check each other).
    """
    message = f"{method.upper()}{url}{body}{timestamp_ms}".encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def hubspot_headers(
    secret: str, url: str, body: str, timestamp_ms: int | None = None, method: str = "POST"
) -> dict[str, str]:
    """The headers HubSpot sends with a v3-signed webhook batch (timestamp: now, in milliseconds)."""
    ts = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
    return {
        "X-HubSpot-Signature-v3": sign_hubspot(secret, method, url, body, ts),
        "X-HubSpot-Request-Timestamp": ts,
        "Content-Type": "application/json",
    }


class HubSpotPoster:
    """Posts JSON bodies to a Flask test client as HubSpot does, v3-signed with the app's client secret."""

    def __init__(self, client: Any, base_url: str, secret: str) -> None:
        self.client = client
        self.base_url = base_url
        self.secret = secret

    def post(
        self,
        body: str,
        *,
        path: str = HUBSPOT_WEBHOOK_PATH,
        timestamp_ms: int | None = None,
        secret: str | None = None,
        signed_body: str | None = None,
    ) -> Any:
        """POST `body` to `path`, signed over `signed_body` (default: `body`; differ to tamper)."""
        headers = hubspot_headers(
            secret or self.secret,
            self.base_url + path,
            body if signed_body is None else signed_body,
            timestamp_ms,
        )
        return self.client.post(path, data=body, headers=headers, base_url=self.base_url)

    def fixture(self, name: str, **kwargs: Any) -> Any:
        """POST a fixture batch, e.g. 'webhook_v3__deal_stage_changed'."""
        return self.post((HUBSPOT_FIXTURES / f"{name}.json").read_text(), **kwargs)


# --- SendGrid and Mailgun ------------------------------------------------------------------------------

SENDGRID_FIXTURES = Path(__file__).parent / "fixtures" / "sendgrid"
MAILGUN_FIXTURES = Path(__file__).parent / "fixtures" / "mailgun"


class SendGridSigner:
    """Signs Event Webhook batches the way SendGrid does: ECDSA P-256 / SHA-256 over timestamp + raw body,
    base64 DER, with a key pair made for the test (written from SendGrid's docs with `cryptography`, not
    with the sendgrid helper that webhooks/sendgrid.py verifies with)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self._private = ec.generate_private_key(ec.SECP256R1())

    @property
    def verification_key(self) -> str:
        """The public key as SendGrid's console shows it: base64 DER SubjectPublicKeyInfo, no PEM armour."""
        from cryptography.hazmat.primitives import serialization

        der = self._private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def sign(self, body: bytes, timestamp: str) -> str:
        """X-Twilio-Email-Event-Webhook-Signature for `body` at `timestamp`."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        signature = self._private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The signature headers of an Event Webhook POST (timestamp: now)."""
        ts = str(timestamp if timestamp is not None else int(time.time()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": self.sign(body, ts),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        }


def multipart_fixture(folder: Path, name: str) -> tuple[bytes, str]:
    """(body bytes, Content-Type) of a captured multipart request: `name`.multipart and `name`.headers."""
    body = (folder / f"{name}.multipart").read_bytes()
    content_type = next(
        line.split(":", 1)[1].strip()
        for line in (folder / f"{name}.headers").read_text().splitlines()
        if line.lower().startswith("content-type:")
    )
    return body, content_type


def sign_mailgun(key: str, timestamp: str, token: str) -> str:
    """Mailgun's webhook signature: hex(HMAC-SHA256(signing key, timestamp + token)), from its docs."""
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def mailgun_signature(key: str, timestamp: int | None = None, token: str | None = None) -> dict[str, str]:
    """A fresh {timestamp, token, signature} (timestamp: now, token: random)."""
    import secrets

    ts = str(timestamp if timestamp is not None else int(time.time()))
    tok = token or secrets.token_hex(25)
    return {"timestamp": ts, "token": tok, "signature": sign_mailgun(key, ts, tok)}
