"""A rep's short-lived session for the dialer, and its CSRF rule (the dialer contract, docs in the README).

The dialer page runs inside the CRM's iframe, so the tenant API key never goes to the browser. A rep gets a
signed, timed token instead (itsdangerous URLSafeTimedSerializer, salt "switchboard.rep-session"): payload
{t: tenant id, u: user id, c: CSRF nonce}, valid REP_SESSION_TTL_SECONDS (8 h by default). It is signed with
SWITCHBOARD_SECRET_KEY (every configured key verifies, the first signs, as for the Fernet rotation).

The page sends it as `Authorization: Rep <token>`; a cookie `sb_rep` also works. A state-changing request
authenticated by the cookie must carry `X-CSRF-Token` equal to the session's nonce (a browser attaches the
cookie to cross-site requests by itself; it never attaches the Authorization header, so that is exempt).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from flask import Request, Response, current_app, request
from itsdangerous import BadData, URLSafeTimedSerializer

from app.core.settings import Settings

SALT = "switchboard.rep-session"
COOKIE = "sb_rep"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# The hosts a CRM frames the dialer from (Content-Security-Policy frame-ancestors), by the tenant's CRM.
CRM_HOSTS: dict[str, tuple[str, ...]] = {
    "hubspot": ("https://app.hubspot.com", "https://app-eu1.hubspot.com"),
    "salesforce": ("https://*.lightning.force.com", "https://*.my.salesforce.com"),
}


@dataclass(frozen=True)
class Rep:
    """A signed-in rep: their tenant and user, the session's CSRF nonce, and how the request proved it."""

    tenant_id: int
    user_id: int
    csrf: str
    via: str = "header"  # header | cookie


def crm_hosts(crm: str) -> list[str]:
    """The origins that may frame the dialer for a tenant on `crm` (none for the built-in CRM)."""
    return list(CRM_HOSTS.get(crm, ()))


def _serializer(secret: str | list[str]) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=SALT)


def _keys(settings: Settings) -> list[str]:
    # itsdangerous signs with the LAST key of a list and verifies with any; our first key is the current one.
    return list(reversed(settings.secret_keys))


def issue(secret: str | list[str], tenant_id: int, user_id: int) -> str:
    """A session token for the rep (payload {t, u, c}); `secret` is the signing key (or keys, last signs)."""
    return str(_serializer(secret).dumps({"t": tenant_id, "u": user_id, "c": secrets.token_urlsafe(24)}))


def issue_for(settings: Settings, tenant_id: int, user_id: int) -> str:
    """A session token signed with the service's current secret key."""
    return issue(_keys(settings), tenant_id, user_id)


def load(settings: Settings, token: str, via: str = "header") -> Rep | None:
    """The rep a token names, or None if it is forged, malformed or older than the session TTL."""
    try:
        data = _serializer(_keys(settings)).loads(token, max_age=settings.rep_session_ttl_seconds)
    except BadData:
        return None
    if not isinstance(data, dict):
        return None
    tenant_id, user_id, csrf = data.get("t"), data.get("u"), data.get("c")
    if not (isinstance(tenant_id, int) and isinstance(user_id, int) and isinstance(csrf, str) and csrf):
        return None
    return Rep(tenant_id, user_id, csrf, via)


def token_from(req: Request) -> tuple[str, str] | None:
    """(token, via) from `Authorization: Rep <token>` or the sb_rep cookie, or None if neither is there."""
    scheme, _, token = req.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "rep" and token.strip():
        return token.strip(), "header"
    cookie = req.cookies.get(COOKIE)
    return (cookie, "cookie") if cookie else None


def from_request() -> Rep | None:
    """The rep of the current request, or None (no session, or an expired or forged one)."""
    found = token_from(request)
    if found is None:
        return None
    return load(current_app.extensions["switchboard"], *found)


def csrf_ok(rep: Rep, req: Request) -> bool:
    """Whether the request passes the CSRF rule: safe methods and header-authenticated requests always do;
    a state-changing request authenticated by the cookie must echo the session's nonce in X-CSRF-Token."""
    if req.method in SAFE_METHODS or rep.via == "header":
        return True
    sent = req.headers.get(CSRF_HEADER, "")
    return bool(sent) and hmac.compare_digest(sent.encode(), rep.csrf.encode())


def set_cookie(response: Response, token: str) -> Response:
    """Put the session in the sb_rep cookie: HttpOnly, SameSite=None (the CRM frames us cross-site, which
    needs Secure too), Secure unless SWITCHBOARD_DEBUG (plain http in development)."""
    settings: Settings = current_app.extensions["switchboard"]
    response.set_cookie(
        COOKIE,
        token,
        max_age=settings.rep_session_ttl_seconds,
        httponly=True,
        secure=not settings.debug,
        samesite="None",
        path="/",
    )
    return response
