"""Connect a Salesforce org: the OAuth 2.0 web server flow with PKCE, against an External Client App.

GET /install/salesforce redirects to the login host's authorize page (SALESFORCE_LOGIN_URL:
login.salesforce.com,
test.salesforce.com for a sandbox, or a My Domain) with scopes `api refresh_token`, a signed single-use
`state`
and a PKCE code_challenge (S256); GET /oauth/salesforce/callback checks the state, exchanges the code with the
code_verifier we kept for that state, and creates or updates the tenant of that org (keyed by its org id), its
tokens stored encrypted. https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_web_server_flow.htm
A tampered, expired or replayed state gets 400 and stores nothing.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, redirect, request
from redis.exceptions import RedisError
from sqlalchemy import select

from app.core import db
from app.core.models import Tenant
from app.core.queue import redis_for, try_enqueue
from connectors import oauth
from connectors.base import CrmError, PermanentError
from connectors.salesforce.auth import identity, oauth_secrets, token_request
from connectors.salesforce.jobs import setup_org

log = logging.getLogger(__name__)


PROVIDER_NAME = "salesforce"


def refused(message: str, status: int = 400) -> tuple[Response, int]:
    """Refuse the install step; nothing is stored."""
    return oauth.refused(PROVIDER_NAME, message, status)


install = Blueprint("salesforce_install", __name__)

SCOPES = ("api", "refresh_token")


def _state_key(nonce: str) -> str:
    return f"switchboard:oauth-state:salesforce:{nonce}"


def challenge_for(verifier: str) -> str:
    """PKCE S256: base64url(SHA-256(verifier)) without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@install.get("/install/salesforce")
def start() -> Any:
    """Send the admin to Salesforce to approve the External Client App."""
    settings = oauth.settings()
    if not settings.salesforce_client_id or not settings.salesforce_client_secret:
        return oauth.refused(
            PROVIDER_NAME,
            "Salesforce app is not configured (SALESFORCE_CLIENT_ID, SALESFORCE_CLIENT_SECRET)",
            503,
        )
    nonce, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(64)
    try:
        redis_for(settings).set(_state_key(nonce), verifier, ex=oauth.STATE_MAX_AGE)
    except RedisError:
        return refused("cannot start an install right now; try again", 503)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.salesforce_client_id,
            "redirect_uri": oauth.callback_url(PROVIDER_NAME),
            "scope": " ".join(SCOPES),
            "state": oauth.sign_state(settings, PROVIDER_NAME, nonce),
            "code_challenge": challenge_for(verifier),
            "code_challenge_method": "S256",
        }
    )
    return redirect(f"{settings.salesforce_login_url}/services/oauth2/authorize?{query}", code=302)


@install.get("/oauth/salesforce/callback")
def callback() -> Any:
    """Finish the install: verify the state, exchange the code (with the PKCE verifier), store the tenant."""
    settings = oauth.settings()
    if request.args.get("error"):
        return oauth.refused(
            PROVIDER_NAME, f"Salesforce did not authorize the app: {request.args.get('error')}"
        )
    code, state = request.args.get("code"), request.args.get("state")
    if not code or not state:
        return refused("missing code or state")
    nonce = oauth.nonce_of(settings, PROVIDER_NAME, state)
    if nonce is None:
        return refused("invalid or expired state")
    try:
        verifier = redis_for(settings).getdel(_state_key(nonce))
    except RedisError:
        return refused("cannot finish the install right now; try again", 503)
    if not verifier:
        return refused("state already used")
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": settings.salesforce_client_id or "",
        "client_secret": settings.salesforce_client_secret or "",
        "redirect_uri": oauth.callback_url(PROVIDER_NAME),
        "code_verifier": verifier.decode(),
    }
    try:
        tokens = token_request(settings.salesforce_login_url, form)
    except PermanentError:
        return refused("Salesforce refused the authorization code")
    except CrmError:
        return refused("Salesforce is unavailable; try the install again", 502)
    who = identity(str(tokens.get("id") or ""))
    if who is None or not tokens.get("instance_url"):
        return refused("Salesforce's token response named no org", 502)
    org_id, _user = who
    with db.transaction() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.crm == "salesforce", Tenant.crm_account_id == org_id))
        created = tenant is None
        if tenant is None:
            tenant = Tenant(
                name=f"salesforce-{org_id}", crm="salesforce", crm_account_id=org_id, region="US", settings={}
            )
            s.add(tenant)
        tenant.crm_secrets = oauth_secrets(tokens, settings.salesforce_login_url)
        tenant.crm_status, tenant.crm_status_reason = "ok", None
        s.flush()
        tenant_id, name = tenant.id, tenant.name
    # Create Switchboard_Id__c in the org, off the request path.
    if try_enqueue(settings, setup_org, tenant_id) == "unavailable":
        log.warning("oauth.setup_not_queued provider=salesforce tenant=%s", tenant_id)
    log.info("oauth.installed provider=salesforce tenant=%s created=%s", tenant_id, created)
    return jsonify(
        {"installed": True, "org_id": org_id, "tenant": name, "tenant_id": tenant_id, "created": created}
    )
