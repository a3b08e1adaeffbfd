"""Install Switchboard as a HubSpot app: the OAuth authorization-code flow.

GET /install/hubspot redirects to HubSpot's consent page with our scopes and a signed, single-use `state`;
GET /oauth/hubspot/callback checks the state, exchanges the code for tokens (stored encrypted), and
creates or updates the tenant for that portal. https://developers.hubspot.com/docs/api/oauth-quickstart-guide
A tampered, expired or replayed state gets 400 and stores nothing.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, jsonify, redirect, request
from hubspot import HubSpot
from redis.exceptions import RedisError
from sqlalchemy import select

from app.core import db
from app.core.models import Tenant
from app.core.queue import redis_for, try_enqueue
from connectors import oauth
from connectors.hubspot.auth import oauth_secrets
from connectors.hubspot.jobs import setup_portal

log = logging.getLogger(__name__)


PROVIDER_NAME = "hubspot"


def refused(message: str, status: int = 400) -> tuple[Response, int]:
    """Refuse the install step; nothing is stored."""
    return oauth.refused(PROVIDER_NAME, message, status)


install = Blueprint("install", __name__)

SCOPES = (
    "oauth",
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.objects.companies.read",
    "crm.objects.deals.read",
    "crm.objects.owners.read",
    "crm.schemas.contacts.write",
)


@install.get("/install/hubspot")
def start() -> Any:
    """Send the admin to HubSpot to approve the app."""
    settings = oauth.settings()
    if not settings.hubspot_client_id or not settings.hubspot_client_secret:
        return oauth.refused(
            PROVIDER_NAME, "HubSpot app is not configured (HUBSPOT_CLIENT_ID, HUBSPOT_CLIENT_SECRET)", 503
        )
    nonce = secrets.token_urlsafe(16)
    try:
        redis_for(settings).set(f"switchboard:oauth-state:{nonce}", "1", ex=oauth.STATE_MAX_AGE)
    except RedisError:
        return refused("cannot start an install right now; try again", 503)
    state = oauth.sign_state(settings, PROVIDER_NAME, nonce)
    query = urlencode(
        {
            "client_id": settings.hubspot_client_id,
            "redirect_uri": oauth.callback_url(PROVIDER_NAME),
            "scope": " ".join(SCOPES),
            "state": state,
        }
    )
    return redirect(f"{settings.hubspot_authorize_url}?{query}", code=302)


@install.get("/oauth/hubspot/callback")
def callback() -> Any:
    """Finish the install: verify state, exchange the code, create or update the portal's tenant."""
    settings = oauth.settings()
    if request.args.get("error"):
        return refused(f"HubSpot did not authorize the app: {request.args.get('error')}")
    code, state = request.args.get("code"), request.args.get("state")
    if not code or not state:
        return refused("missing code or state")
    nonce = oauth.nonce_of(settings, PROVIDER_NAME, state)
    if nonce is None:
        return refused("invalid or expired state")
    try:
        fresh = redis_for(settings).getdel(f"switchboard:oauth-state:{nonce}")
    except RedisError:
        return refused("cannot finish the install right now; try again", 503)
    if not fresh:
        return refused("state already used")

    client = HubSpot(host=settings.hubspot_api_base)
    try:
        tokens = client.oauth.tokens_api.create(
            grant_type="authorization_code",
            code=code,
            redirect_uri=oauth.callback_url(PROVIDER_NAME),
            client_id=settings.hubspot_client_id,
            client_secret=settings.hubspot_client_secret,
            _request_timeout=(5, 30),
        )
        info = client.oauth.access_tokens_api.get(tokens.access_token, _request_timeout=(5, 30))
    except Exception as exc:
        status = getattr(exc, "status", None)
        if status is not None and status < 500:
            return refused("HubSpot refused the authorization code")
        return refused("HubSpot is unavailable; try the install again", 502)
    portal = str(info.hub_id)
    with db.transaction() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.crm == "hubspot", Tenant.crm_account_id == portal))
        created = tenant is None
        if tenant is None:
            tenant = Tenant(
                name=f"hubspot-{portal}", crm="hubspot", crm_account_id=portal, region="US", settings={}
            )
            s.add(tenant)
        tenant.crm_secrets = oauth_secrets(tokens)
        tenant.crm_status, tenant.crm_status_reason = "ok", None
        s.flush()
        tenant_id, name = tenant.id, tenant.name
    # Create the switchboard_id properties in the portal, off the request path.
    if try_enqueue(settings, setup_portal, tenant_id) == "unavailable":
        log.warning("oauth.setup_not_queued tenant=%s", tenant_id)
    log.info("oauth.installed tenant=%s portal=%s created=%s", tenant_id, portal, created)
    return jsonify(
        {"installed": True, "portal_id": portal, "tenant": name, "tenant_id": tenant_id, "created": created}
    )
