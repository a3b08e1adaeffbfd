"""The rep's dialer page, `GET /dialer?crm=hubspot|salesforce|none`: one Jinja page plus static JS, no build.

The page runs inside the CRM (HubSpot's calling widget iframe, Salesforce's Open CTI softphone) or on its
own, and talks only to the /api/v1 dialer routes with the rep's session (never the tenant API key). Who may
frame it is the CSP `frame-ancestors`: the hosts of the rep's CRM once the rep is known (the sb_rep cookie),
before login `'self'` plus those of the `crm` parameter. docs/dialer.md describes the set-up.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, render_template, request

from app.core import db
from app.core.models import Tenant, User
from app.core.settings import Settings
from app.web import reps

blueprint = Blueprint("dialer", __name__)

CRMS = ("hubspot", "salesforce", "none")
# Salesforce opens the adapter URL with ?sfdcIframeOrigin=<the org's Lightning origin>; Open CTI's script
# (opencti_min.js) must be loaded from that Salesforce domain, so it is accepted only on these hosts.
_SALESFORCE_ORIGIN = re.compile(
    r"https://[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:lightning\.force|my\.salesforce)\.com"
)


def _settings() -> Settings:
    return current_app.extensions["switchboard"]  # type: ignore[no-any-return]


def _rep_context() -> dict[str, Any] | None:
    """The signed-in rep (from the sb_rep cookie or a Rep header), or None."""
    rep = reps.from_request()
    if rep is None:
        return None
    with db.transaction() as s:
        user = s.get(User, rep.user_id)
        tenant = s.get(Tenant, rep.tenant_id)
        if user is None or tenant is None or user.tenant_id != tenant.id:
            return None
        return {"csrf": rep.csrf, "crm": tenant.crm, "name": user.name}


def opencti_url(settings: Settings, origin: str | None) -> str | None:
    """Where Open CTI's script comes from: SALESFORCE_OPENCTI_URL, else the org's origin Salesforce gave."""
    if settings.salesforce_opencti_url:
        return settings.salesforce_opencti_url
    if origin and _SALESFORCE_ORIGIN.fullmatch(origin):
        return f"{origin}/support/api/{settings.salesforce_api_version}/lightning/opencti_min.js"
    return None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(ancestors: list[str], script_origins: list[str]) -> str:
    """The page's CSP: our own scripts (plus Open CTI's), our API only, framed by the CRM's hosts."""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(["'self'", *script_origins]),
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors " + " ".join(["'self'", *ancestors]),
        ]
    )


def page_headers(response: Response, ancestors: list[str], script_origins: tuple[str, ...] = ()) -> Response:
    """Security headers every dialer page carries: CSP, no caching (it may hold a nonce), no referrer."""
    response.headers["Content-Security-Policy"] = content_security_policy(ancestors, list(script_origins))
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def frame_ancestors(settings: Settings, crm: str, rep_crm: str | None) -> list[str]:
    """The rep's CRM hosts once known, else those of the crm parameter; plus DIALER_FRAME_ANCESTORS."""
    # reps.CRM_HOSTS: HubSpot's app (US and EU data centres) and Lightning's domains.
    hosts = reps.crm_hosts(rep_crm if rep_crm is not None else crm)
    return [*hosts, *settings.dialer_frame_ancestors]


@blueprint.get("/dialer")
def dialer() -> Response:
    """The dialer page; the JS signs in (or shows the login form) and speaks to the CRM named by `crm`."""
    crm = request.args.get("crm", "none")
    if crm not in CRMS:
        abort(400, description="crm must be hubspot, salesforce or none")
    settings = _settings()
    rep = _rep_context()
    script = opencti_url(settings, request.args.get("sfdcIframeOrigin")) if crm == "salesforce" else None
    config = {
        "crm": crm,
        "api": "/api/v1",
        "login": "/dialer/login",
        # The cookie's CSRF nonce: a page signed in by cookie sends it as X-CSRF-Token.
        "csrf": rep["csrf"] if rep else None,
        "opencti": script,
    }
    html = render_template("dialer.html", config=config, crm=crm, opencti=script)
    response = Response(html, mimetype="text/html")
    return page_headers(
        response,
        frame_ancestors(settings, crm, rep["crm"] if rep else None),
        (_origin(script),) if script else (),
    )
