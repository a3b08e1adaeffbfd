"""What every CRM's OAuth install flow shares: the signed `state` (single use is the flow's own Redis
key), the callback URL on this service, and a refusal that stores nothing."""

from __future__ import annotations

import hashlib
import logging

from flask import Response, current_app, jsonify, request
from itsdangerous import BadData, URLSafeTimedSerializer

from app.core.settings import Settings

log = logging.getLogger(__name__)

STATE_MAX_AGE = 600  # seconds between /install/<crm> and its callback


def settings() -> Settings:
    """The settings of the app serving the request."""
    return current_app.extensions["switchboard"]  # type: ignore[no-any-return]


def state_serializer(settings: Settings, provider: str) -> URLSafeTimedSerializer:
    """Signs and checks `state` with a key derived from the secret key (the Fernet key itself never
    signs anything else), one key per provider."""
    if not settings.secret_keys:
        raise RuntimeError("SWITCHBOARD_SECRET_KEY is required to sign OAuth state")
    key = hashlib.sha256(f"{provider}-oauth-state:".encode() + settings.secret_keys[0].encode()).hexdigest()
    return URLSafeTimedSerializer(key, salt=f"{provider}-install")


def sign_state(settings: Settings, provider: str, nonce: str) -> str:
    """The `state` to send to the CRM's consent page for this nonce."""
    return state_serializer(settings, provider).dumps({"nonce": nonce})


def nonce_of(settings: Settings, provider: str, state: str) -> str | None:
    """The nonce a genuine, unexpired `state` carries; None for a tampered or stale one."""
    try:
        nonce = state_serializer(settings, provider).loads(state, max_age=STATE_MAX_AGE)["nonce"]
    except (BadData, KeyError, TypeError):
        return None
    return nonce if isinstance(nonce, str) else None


def callback_url(provider: str) -> str:
    """https://HOST/oauth/<provider>/callback, from PUBLIC_BASE_URL (else the request's host)."""
    base = settings().public_base_url or request.host_url.rstrip("/")
    return f"{base}/oauth/{provider}/callback"


def refused(provider: str, message: str, status: int = 400) -> tuple[Response, int]:
    """A JSON error for the admin's browser; logged without secrets."""
    log.info("oauth.rejected provider=%s reason=%s", provider, message)
    return jsonify({"error": message}), status
