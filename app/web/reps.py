"""A rep's short-lived signed session (the dialer contract, docs/dialer.md).

PROVISIONAL: the dialer-api branch owns this module; this copy implements only the contract's interface so
the dialer page can be built and tested before that branch lands. On merge, dialer-api's version wins.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from flask import Response, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from app.core import bootstrap

SALT = "switchboard.rep-session"
COOKIE = "sb_rep"
DEFAULT_TTL_SECONDS = 8 * 3600


@dataclass(frozen=True)
class Rep:
    """Who a verified session says is calling the API."""

    tenant_id: int
    user_id: int
    csrf: str


def _ttl() -> int:
    raw = os.environ.get("REP_SESSION_TTL_SECONDS", "")
    return int(raw) if raw.isdigit() else DEFAULT_TTL_SECONDS


def issue(secret: str, tenant_id: int, user_id: int) -> str:
    """A signed session token for one rep of one tenant, with a fresh CSRF nonce."""
    payload = {"t": tenant_id, "u": user_id, "c": secrets.token_urlsafe(16)}
    return URLSafeTimedSerializer(secret, salt=SALT).dumps(payload)


def verify(token: str) -> Rep | None:
    """The rep a token names, or None when it is forged, malformed or expired."""
    keys = list(bootstrap.current().secret_keys)
    try:
        data = URLSafeTimedSerializer(keys, salt=SALT).loads(token, max_age=_ttl())
    except BadSignature:
        return None
    if not isinstance(data, dict):
        return None
    try:
        return Rep(int(data["t"]), int(data["u"]), str(data["c"]))
    except (KeyError, TypeError, ValueError):
        return None


def from_request() -> Rep | None:
    """The rep of this request: `Authorization: Rep <token>`, else the sb_rep cookie."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "rep" and token.strip():
        return verify(token.strip())
    cookie = request.cookies.get(COOKIE)
    return verify(cookie) if cookie else None


def set_cookie(response: Response, token: str) -> None:
    """Set the session cookie: HttpOnly, SameSite=None (the page runs in the CRM's iframe), Secure."""
    secure = not os.environ.get("SWITCHBOARD_DEBUG")
    response.set_cookie(
        COOKIE, token, max_age=_ttl(), httponly=True, secure=secure, samesite="None", path="/"
    )
