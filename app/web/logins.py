"""How a rep signs in to the dialer: an email with a one-time link (single use, 15 minutes).

`POST /dialer/login` {email} answers 202 whatever the address (no account enumeration) and mails a link to
each user with that email, through SWITCHBOARD_SMTP_URL; without SMTP the link is only logged as having been
made (never the token: `switchboard user login-link` prints one for admins, tests and demos). The link's
nonce lives in Redis under its SHA-256 and is consumed atomically (GETDEL), so it works once.
`GET /dialer/login/<token>` consumes it, sets the sb_rep cookie and hands the dialer page the session token
(in the URL fragment, which no server or Referer sees; the page keeps it in memory and sessionStorage and
sends it as `Authorization: Rep <token>`).

The rep opens the mail in another tab, but the dialer that asked runs in the CRM's iframe, where browsers
that block third-party cookies and storage (Safari, Chrome incognito) would never see that tab's session.
So the POST also answers a `wait` secret (and a short `code`, shown in the dialer and in the mail, so a rep
does not approve a sign-in somebody else asked for): when the link is used, the session is parked under the
wait secret for two minutes, and `POST /dialer/login/wait` {wait} hands it, once, to the page holding it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import smtplib
import threading
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from flask import Blueprint, Response, current_app, render_template, request
from redis.exceptions import RedisError
from sqlalchemy import select

from app.core import db
from app.core.models import Tenant, User
from app.core.queue import redis_for
from app.core.settings import Settings
from app.web import reps
from app.web.dialer import CRMS, frame_ancestors, page_headers

log = logging.getLogger(__name__)
blueprint = Blueprint("logins", __name__)

LINK_TTL_SECONDS = 15 * 60
# At most this many links per address per link lifetime: a login form must not become a mail cannon.
MAX_LINKS_PER_EMAIL = 5
_KEY = "switchboard:dialer-login:"
_COUNT = "switchboard:dialer-login-count:"
_WAIT = "switchboard:dialer-login-wait:"
HANDOFF_TTL_SECONDS = 120  # how long a session waits for the page that asked for the link


def _settings() -> Settings:
    return current_app.extensions["switchboard"]  # type: ignore[no-any-return]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_link(
    settings: Settings,
    tenant_id: int,
    user_id: int,
    crm: str = "none",
    wait: str | None = None,
    code: str | None = None,
) -> str:
    """Store a one-time login nonce for a user; return its link (relative when PUBLIC_BASE_URL is unset).
    `wait`: the secret of the page that asked, to which the session is handed when the link is used."""
    token = secrets.token_urlsafe(32)
    fields: dict[str, object] = {"t": tenant_id, "u": user_id, "crm": crm if crm in CRMS else "none"}
    if wait:
        fields.update(w=_digest(wait), code=code)
    record = json.dumps(fields)
    redis_for(settings).set(_KEY + _digest(token), record, ex=LINK_TTL_SECONDS)
    return f"{settings.public_base_url or ''}/dialer/login/{token}"


def consume(settings: Settings, token: str) -> dict[str, object] | None:
    """The link's record ({t, u, crm}) the first time it is used within its lifetime; None after that."""
    raw = redis_for(settings).getdel(_KEY + _digest(token))
    return json.loads(raw) if raw else None


def crm_of(tenant: Tenant) -> str:
    """The `crm` parameter a tenant's reps open the dialer with."""
    return tenant.crm if tenant.crm in ("hubspot", "salesforce") else "none"


def send_mail(settings: Settings, to: str, subject: str, text: str) -> None:
    """Send one plain-text mail through SWITCHBOARD_SMTP_URL (smtp://user:pass@host:port, or smtps://)."""
    url = urlsplit(settings.smtp_url or "")
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = settings.mail_from, to, subject
    message.set_content(text)
    host, port = url.hostname or "localhost", url.port
    if url.scheme == "smtps":
        client: smtplib.SMTP = smtplib.SMTP_SSL(host, port or 465, timeout=10)
    else:
        client = smtplib.SMTP(host, port or 25, timeout=10)
    with client:
        if url.scheme != "smtps" and client.has_extn("starttls"):
            client.starttls()
        if url.username:
            client.login(unquote(url.username), unquote(url.password or ""))
        client.send_message(message)


def _mail_link(settings: Settings, to: str, name: str, link: str, code: str) -> None:
    text = (
        f"Hello {name},\n\nYour dialer shows the code {code}. If it does, open this link to sign in to the "
        f"Switchboard dialer (it works once, for 15 minutes):\n\n{link}\n\nIf you did not ask to sign in, "
        "or the codes differ, ignore this mail.\n"
    )
    try:
        send_mail(settings, to, "Your Switchboard dialer sign-in link", text)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("dialer.login.mail_failed error=%s", type(exc).__name__)


@blueprint.post("/dialer/login")
def request_link() -> tuple[Response, int]:
    """Mail a one-time link to the users with this email; always 202, so it reveals no accounts."""
    body = request.get_json(silent=True) if request.is_json else request.form
    email = str((body or {}).get("email") or "").strip().lower()
    # The same answer whether or not the address is known: a fresh wait secret and code either way.
    wait, code = secrets.token_urlsafe(24), f"{secrets.randbelow(10_000):04d}"
    answer = {
        "status": "if that address belongs to a rep, a sign-in link is on its way",
        "wait": wait,
        "code": code,
    }
    if not email or "@" not in email or len(email) > 320 or not email.isprintable() or " " in email:
        return current_app.json.response({"error": "email is not an email address", "field": "email"}), 400
    settings = _settings()
    try:
        conn = redis_for(settings)
        sent = conn.incr(_COUNT + _digest(email))
        if sent == 1:
            conn.expire(_COUNT + _digest(email), LINK_TTL_SECONDS)
        if sent > MAX_LINKS_PER_EMAIL:
            log.info("dialer.login.throttled")
            return current_app.json.response(answer), 202
        with db.transaction() as s:
            rows = s.execute(
                select(User.id, User.name, User.tenant_id, Tenant.crm)
                .join(Tenant, Tenant.id == User.tenant_id)
                .where(User.email == email)
            ).all()
        for user_id, name, tenant_id, crm in rows:
            link = create_link(settings, tenant_id, user_id, crm if crm in CRMS else "none", wait, code)
            if settings.smtp_url:
                # A thread, so the answer takes as long whether or not the address is known.
                args = (settings, email, name, link, code)
                threading.Thread(target=_mail_link, args=args, daemon=True).start()
            else:
                log.info(
                    "dialer.login.link_made tenant=%s user=%s (SMTP unset: `switchboard user login-link` "
                    "prints one)",
                    tenant_id,
                    user_id,
                )
    except RedisError:
        log.error("dialer.login.redis_unavailable")
        return current_app.json.response({"error": "sign-in unavailable; retry later"}), 503
    return current_app.json.response(answer), 202


def _user(tenant_id: int, user_id: int) -> dict[str, object] | None:
    with db.transaction() as s:
        row = s.get(User, user_id)
        if row is None or row.tenant_id != tenant_id:
            return None  # deleted (or moved) since the link was made
        return {"tenant_id": tenant_id, "user_id": user_id, "name": row.name, "crm": row.tenant.crm}


@blueprint.get("/dialer/login/<token>")
def use_link(token: str) -> tuple[Response, int]:
    """Consume a one-time link: set the session cookie and hand the page its session token."""
    settings = _settings()
    try:
        record = consume(settings, token) if len(token) <= 200 else None
    except RedisError:
        log.error("dialer.login.redis_unavailable")
        html = render_template("login_link.html", ok=False, crm="none", unavailable=True)
        return page_headers(
            Response(html, mimetype="text/html"), frame_ancestors(settings, "none", None)
        ), 503
    crm = str(record["crm"]) if record else "none"
    user = _user(int(str(record["t"])), int(str(record["u"]))) if record else None
    if user is None:
        html = render_template("login_link.html", ok=False, crm=crm)
        return page_headers(Response(html, mimetype="text/html"), frame_ancestors(settings, crm, None)), 410
    session = reps.issue_for(settings, int(user["tenant_id"]), int(user["user_id"]))
    if record and record.get("w"):
        try:
            redis_for(settings).set(_WAIT + str(record["w"]), session, ex=HANDOFF_TTL_SECONDS)
        except RedisError:
            log.warning("dialer.login.handoff_failed")  # the rep can still use the dialer in this tab
    html = render_template(
        "login_link.html", ok=True, crm=crm, name=user["name"], session=session, code=record.get("code")
    )
    response = Response(html, mimetype="text/html")
    reps.set_cookie(response, session)
    log.info("dialer.login.signed_in tenant=%s user=%s", user["tenant_id"], user["user_id"])
    return page_headers(response, frame_ancestors(settings, crm, str(user["crm"]))), 200


@blueprint.post("/dialer/login/wait")
def wait_for_link() -> tuple[Response, int]:
    """The session of a link used since this page asked for it (once), else 202 pending."""
    body = request.get_json(silent=True) if request.is_json else None
    wait = (body or {}).get("wait") if isinstance(body, dict) else None
    if not isinstance(wait, str) or not wait or len(wait) > 100:
        return current_app.json.response(
            {"error": "wait is the secret POST /dialer/login gave", "field": "wait"}
        ), 400
    try:
        session = redis_for(_settings()).getdel(_WAIT + _digest(wait))
    except RedisError:
        return current_app.json.response({"error": "sign-in unavailable; retry later"}), 503
    if session is None:
        return current_app.json.response({"status": "pending"}), 202
    return current_app.json.response({"session": session.decode()}), 200
