"""Email, provider-neutral: addresses and Message-IDs, the new text of a reply, and how email webhooks find
their tenant (a route token) and check themselves (the tenant's provider keys, freshness, replay).

SendGrid Inbound Parse is not signed, and neither SendGrid's nor Mailgun's payloads name an account we
could map to a tenant the way Twilio's AccountSid does, so every email webhook URL carries the tenant's
unguessable route token (`?token=...`, 256 bits, only its SHA-256 is stored). Signed streams are then
checked with that tenant's key: SendGrid's Event Webhook ECDSA key, Mailgun's HTTP webhook signing key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from email.utils import getaddresses, parseaddr
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core import db
from app.core.db import utcnow
from app.core.models import Tenant

log = logging.getLogger(__name__)

# How far a signed webhook's timestamp may be from our clock (either way) before it is refused as stale.
# The SDKs do not check it (SendGrid's EventWebhook verifies a timestamp of "1"); Mailgun's own guard
# uses 15 minutes.
FRESHNESS_SECONDS = 900
MAX_KEY_LEN = 64  # interactions.provider_id


# --- addresses, ids, text ---------------------------------------------------------------------------


def address(value: str | None) -> str | None:
    """The addr-spec of one address header ("Jordan <J.Rivera+quotes@Example.net>" -> as written, without
    the display name); None when there is none. Matching is case-insensitive; plus-addressing is kept."""
    _name, addr = parseaddr(value or "")
    return (addr.strip() or None) if "@" in addr else None


def addresses(value: str | None) -> list[str]:
    """Every addr-spec of an address list header (To, Cc), in order."""
    return [a.strip() for _n, a in getaddresses([value or ""]) if "@" in a]


def display_name(value: str | None) -> str | None:
    """The display name of an address header, if any."""
    name, _addr = parseaddr(value or "")
    return name.strip() or None


_ID = re.compile(r"<([^<>\s]+)>")


def message_id(value: str | None) -> str | None:
    """A Message-ID without its angle brackets (None when empty)."""
    text = (value or "").strip()
    found = _ID.search(text)
    if found:
        return found.group(1)[:998]
    return text.strip("<>").split()[0][:998] if text.strip("<>").split() else None


def message_ids(value: str | None) -> list[str]:
    """The ids of a References (or In-Reply-To) header, oldest first, without brackets."""
    text = value or ""
    found = _ID.findall(text)
    return found if found else [t.strip("<>") for t in text.split() if t.strip("<>")]


_OUR_ID = re.compile(r"sb[0-9a-f]{32}")


def our_id(value: Any) -> str | None:
    """The switchboard_id an event carries back (a SendGrid custom arg, a Mailgun user variable) when it is
    one of ours ("sb" + 32 hex, app/channels/email.py): the key of the email we recorded when we sent it."""
    return value if isinstance(value, str) and _OUR_ID.fullmatch(value) else None


def interaction_key(ident: str) -> str:
    """The provider_id of an email: its id when it fits the column, else a SHA-256 of it."""
    if len(ident) <= MAX_KEY_LEN:
        return ident
    return "sha256:" + hashlib.sha256(ident.encode()).hexdigest()[: MAX_KEY_LEN - 7]


def new_text(text: str | None) -> str:
    """The text the sender wrote in this message: quoted history and signature stripped (mail-parser-reply,
    maintained, multi-language); the whole text when nothing could be split off."""
    if not text:
        return ""
    from mailparser_reply import EmailReplyParser

    try:
        replies = EmailReplyParser(languages=["en", "de", "fr", "es", "it", "nl"]).read(text).replies
    except Exception:  # a stripper bug must not lose the email: keep the full text
        log.warning("mail.strip_failed", exc_info=True)
        return text.strip()
    latest = (replies[0].body if replies else "") or ""
    return latest.strip() or text.strip()


# --- tenants: route token and keys ----------------------------------------------------------------


def route_hash(token: str) -> str:
    """What is stored of a route token."""
    return hashlib.sha256(token.encode()).hexdigest()


def tenant_for_route_token(token: str | None) -> Tenant | None:
    """The tenant whose email route token this is (detached, read-only), or None."""
    if not token or len(token) > 200:
        return None
    digest = route_hash(token)
    with db.transaction() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.email_route_hash == digest))
        if tenant is None or not hmac.compare_digest(tenant.email_route_hash or "", digest):
            return None
        _ = tenant.email_secrets, tenant.settings  # load before the session closes
        s.expunge(tenant)
    return tenant


def tenant_by_id(tenant_id: int) -> Tenant:
    """The tenant (detached, read-only), with its email keys and settings loaded."""
    with db.transaction() as s:
        tenant = s.get(Tenant, tenant_id)
        assert tenant is not None
        _ = tenant.email_secrets, tenant.settings  # load before the session closes
        s.expunge(tenant)
    return tenant


def email_secrets(tenant: Tenant) -> dict[str, str]:
    """The tenant's email provider keys (sendgrid_verification_key, mailgun_signing_key)."""
    try:
        return dict(json.loads(tenant.email_secrets or "{}"))
    except ValueError:
        return {}


def set_email_secret(s: Session, tenant: Tenant, name: str, value: str) -> None:
    """Store one provider key (encrypted at rest, like the Twilio auth token)."""
    current = email_secrets(tenant)
    current[name] = value
    tenant.email_secrets = json.dumps(current, sort_keys=True)


def clear_email_secret(s: Session, tenant: Tenant, name: str) -> None:
    """Forget one provider key (a check that depends on it is off again)."""
    current = email_secrets(tenant)
    current.pop(name, None)
    tenant.email_secrets = json.dumps(current, sort_keys=True)


def new_route_token(s: Session, tenant: Tenant) -> str:
    """Give the tenant a fresh route token (the old one stops working) and return it; shown once."""
    token = secrets.token_urlsafe(32)
    tenant.email_route_hash = route_hash(token)
    return token


def new_inbound_basic_auth(s: Session, tenant: Tenant) -> tuple[str, str]:
    """Require HTTP basic auth on the tenant's SendGrid Inbound Parse URL (SendGrid sends the credentials
    written in the URL, https://user:password@host/...); returns (user, password), shown once. Only the
    password's SHA-256 is kept: it is 192 random bits, so a plain hash is as good as a slow one."""
    user, password = "sendgrid", secrets.token_urlsafe(24)
    set_email_secret(s, tenant, "inbound_basic_user", user)
    set_email_secret(s, tenant, "inbound_basic_sha256", hashlib.sha256(password.encode()).hexdigest())
    return user, password


def clear_inbound_basic_auth(s: Session, tenant: Tenant) -> None:
    """Stop requiring basic auth on Inbound Parse (the route token alone admits it again)."""
    current = email_secrets(tenant)
    current.pop("inbound_basic_user", None)
    current.pop("inbound_basic_sha256", None)
    tenant.email_secrets = json.dumps(current, sort_keys=True)


def inbound_basic_auth_ok(tenant: Tenant, user: str | None, password: str | None) -> bool:
    """Whether an Inbound Parse request passes the tenant's basic auth (always, when it has none)."""
    keys = email_secrets(tenant)
    wanted = keys.get("inbound_basic_sha256")
    if not wanted:
        return True
    if user is None or password is None:
        return False
    same_user = hmac.compare_digest(user.encode(), str(keys.get("inbound_basic_user") or "").encode())
    digest = hashlib.sha256(password.encode()).hexdigest()
    return hmac.compare_digest(digest, wanted) and same_user


# --- checks --------------------------------------------------------------------------------------


def fresh(timestamp: str | None, window: int = FRESHNESS_SECONDS, now: float | None = None) -> bool:
    """Whether a webhook's Unix timestamp is within `window` seconds of our clock."""
    if not timestamp or not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs((now if now is not None else time.time()) - int(timestamp)) <= window


def first_use(tenant_id: int, provider: str, token: str, ttl: int = 2 * FRESHNESS_SECONDS) -> bool:
    """Claim a signed request's one-time token (Redis SET NX with a TTL longer than the freshness window):
    False when it was seen before (a replay). Redis down: True, logged (the freshness window still bounds
    a replay, and the ledger's event keys still drop duplicate events)."""
    from app.core import bootstrap, queue

    key = f"switchboard:webhook-token:{provider}:{tenant_id}:{hashlib.sha256(token.encode()).hexdigest()}"
    try:
        return bool(queue.redis_for(bootstrap.current()).set(key, "1", nx=True, ex=ttl))
    except bootstrap.NotConfigured:
        return True
    except RedisError as exc:
        log.warning("mail.replay_guard_unavailable provider=%s error=%s", provider, type(exc).__name__)
        return True


def hmac_hex(key: str, message: str) -> str:
    """hex(HMAC-SHA256(key, message)): Mailgun's webhook signature."""
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


# --- who may receive automated email ----------------------------------------------------------------

# What a provider reported about an email we sent that opts its address out (the keys of email_seen, from
# webhooks/sendgrid.py and webhooks/mailgun.py): a hard bounce, a drop (SendGrid drops mail to addresses on
# its bounce, spam-report and unsubscribe lists), a spam complaint, an unsubscribe. A "blocked" bounce (the
# receiving server refused this message, e.g. for its content) and a temporary failure do not.
OPT_OUT_SEEN = {
    "bounce": "hard bounce",
    "dropped": "dropped by SendGrid (a suppressed address)",
    "spamreport": "marked as spam",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed from the group",
    "failed:permanent": "permanent delivery failure",
    "complained": "marked as spam",
    "unsubscribed": "unsubscribed",
}
_OPT_OUT_STATUSES = ("bounced", "failed", "unsubscribed", "complained")


OPT_INS = "email_opt_ins"  # tenants.settings key: {address (lower case): when it was opted back in, ISO}
_NEVER = datetime.max.replace(tzinfo=UTC)  # an opt-out of unknown time counts (after any opt-in)


def opted_out(tenant_id: int, address: str) -> str | None:
    """Why the address may not get automated email from the tenant (None: it may), read from the ledger's
    outbound emails to it, case-insensitively: the events that opt it out commit with the event itself, so
    no email can slip out between a bounce webhook and its record. An opt-out from before the address was
    opted back in (`switchboard email opt-in`) no longer counts; one after it (by the provider's time)
    does, so a bounce replayed late from before the opt-in does not opt it out again."""
    if not (address or "").strip():
        return None
    with db.transaction() as s:
        return _opt_out_reason(s, tenant_id, address)


def opted_out_among(s: Session, tenant_id: int, addresses: list[str]) -> set[str]:
    """Which of these addresses (lower case) are opted out of the tenant's automated email, in the caller's
    session: one query finds those with a bounce, complaint or unsubscribe, and only they are checked."""
    from app.core.models import Interaction

    wanted = {a.strip().lower() for a in addresses if a and a.strip()}
    if not wanted:
        return set()
    candidates = s.scalars(
        select(func.lower(Interaction.party_email))
        .where(
            Interaction.tenant_id == tenant_id,
            Interaction.channel == "email",
            Interaction.direction == "outbound",
            func.lower(Interaction.party_email).in_(wanted),
            Interaction.status.in_(_OPT_OUT_STATUSES),
        )
        .distinct()
    )
    return {a for a in candidates if _opt_out_reason(s, tenant_id, a)}


def _opt_out_reason(s: Session, tenant_id: int, address: str) -> str | None:
    """opted_out() in the caller's session."""
    from app.core.models import Interaction

    wanted = address.strip().lower()
    settings = s.scalar(select(Tenant.settings).where(Tenant.id == tenant_id)) or {}
    rows = s.execute(
        select(Interaction.id, Interaction.facts)
        .where(
            Interaction.tenant_id == tenant_id,
            Interaction.channel == "email",
            Interaction.direction == "outbound",
            func.lower(Interaction.party_email) == wanted,
            Interaction.status.in_(_OPT_OUT_STATUSES),
        )
        .order_by(Interaction.id)
    ).all()
    since = _when((settings.get(OPT_INS) or {}).get(wanted))
    if since is not None:  # providers time events to the second: one in the opt-in's second still counts
        since = since.replace(microsecond=0)
    for interaction_id, facts in rows:
        seen = (facts or {}).get("email_seen") or {}
        for kind, why in OPT_OUT_SEEN.items():
            if kind in seen and (since is None or (_when(seen[kind]) or _NEVER) >= since):
                return f"{address} is opted out of email: {why} (interaction {interaction_id})"
    return None


def _when(value: Any) -> datetime | None:
    """An ISO time as an aware datetime (UTC when it has no zone), or None."""
    try:
        at = datetime.fromisoformat(str(value))
    except (TypeError, ValueError):
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def opt_in(tenant_id: int, address: str) -> None:
    """Opt the address back in to the tenant's automated email: earlier opt-outs stop counting."""
    wanted = address.strip().lower()
    with db.transaction() as s:
        tenant = s.get(Tenant, tenant_id, with_for_update=True)
        assert tenant is not None
        current = dict(tenant.settings or {})
        current[OPT_INS] = {**(current.get(OPT_INS) or {}), wanted: utcnow().isoformat()}
        tenant.settings = current


def tenants_opting_out(address: str) -> list[int]:
    """The tenants that the address is opted out of (by id)."""
    with db.transaction() as s:
        ids = list(s.scalars(select(Tenant.id).order_by(Tenant.id)))
    return [t for t in ids if opted_out(t, address)]


def attachment(name: Any, content_type: Any, size: Any) -> dict[str, Any]:
    """The metadata kept of an attachment (never its content)."""
    return {
        "name": str(name)[:255] if name else None,
        "type": str(content_type)[:127] if content_type else None,
        "size": int(size) if isinstance(size, int) or (isinstance(size, str) and size.isdigit()) else None,
    }
