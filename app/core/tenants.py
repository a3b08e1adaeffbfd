"""Tenants, their numbers, users and API keys: provisioning (used by the CLI) and lookups."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from cachetools import TTLCache
from redis.exceptions import RedisError
from sqlalchemy import event as sa_event
from sqlalchemy import literal, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core import caches, crypto, db
from app.core.db import utcnow
from app.core.models import ApiKey, Tenant, TenantNumber, User
from app.core.phones import to_e164

log = logging.getLogger(__name__)

# Behaviour a tenant can change with `switchboard tenant set`; stored in tenants.settings. A CRM declares
# its own settings (CrmProvider.settings; connectors.tenant_settings fills in both).
DEFAULT_SETTINGS: dict[str, Any] = {
    "ring_timeout": 20,  # seconds the owner's phone rings before voicemail
    "record_calls": True,  # <Dial record="record-from-answer-dual">; check your recording-consent law
    "voicemail_greeting": "Sorry, we can't take your call right now. Please leave a message after the tone.",
    "voicemail_max_seconds": 120,
    "transcribe_voicemail": False,  # Twilio's paid, English-only transcription
    "unknown_contacts": "create",  # create | skip: what to do when no CRM contact matches
    # The rep's dialer (app.core.calls): recording always | never | consent (announce to customers in
    # two-party-consent states), the announcement, the consent states ([] = the built-in list), caller IDs
    # ("" = the number local to the customer, else the first), and call outcomes ([] = HubSpot's standard).
    "dialer_recording": "consent",
    "recording_announcement": "This call may be recorded.",
    "recording_consent_states": [],
    "default_caller_id": "",
    "rep_caller_ids": {},
    "call_outcomes": [],
    "dialer_ring_timeout": 30,
}


class ProvisioningError(ValueError):
    """A provisioning request that cannot be carried out (unknown tenant, bad phone number ...)."""


def settings_of(tenant: Tenant) -> dict[str, Any]:
    """The tenant's settings with defaults filled in."""
    return {**DEFAULT_SETTINGS, **(tenant.settings or {})}


# Webhook verification looks the tenant up by its Twilio account on every request, and the ledger needs
# the tenant's numbers and reps' phones (its directory) for every fold. Both are cached per process and
# checked on use against the tenant's configuration token in Redis, which any committed change to a
# tenant, its numbers or its users replaces (the ORM hooks at the end of this module), as does loading
# rules (app.automation.store). A token read in the last TOKEN_MAX_AGE seconds is taken as current (one
# GET per tenant and second per process, not one per webhook), so a change made in another process (the
# CLI, a page) is seen within that second; one made in this process at once (touch). When Redis does not
# answer, the caches fall back to living UNKNOWN_TTL seconds. A signature that fails against a cached
# auth token is re-checked against the database before it is refused, so a rotated token works at once.
TOKEN_MAX_AGE = 1.0  # seconds a token read is taken as current (the lead's decision, issue 9)
UNKNOWN_TTL = 30.0  # seconds a cached entry is trusted when its token cannot be checked
BACKSTOP_TTL = 600  # seconds any cached entry lives, token or not
REDIS_RETRY_AFTER = 1.0  # after Redis failed, skip the token check this long (no 1 s timeout per request)
UNKNOWN: Any = object()  # config_version() when Redis is away: the token is not known


def config_key(tenant_id: int) -> str:
    """The Redis key holding the tenant's configuration token."""
    return f"switchboard:tenant-config:{tenant_id}"


_by_account: TTLCache[str, tuple[Tenant, Any, float]] = TTLCache(maxsize=10_000, ttl=BACKSTOP_TTL)
_directories: TTLCache[int, tuple[Any, float, set[str], dict[str, int]]] = TTLCache(
    maxsize=10_000, ttl=BACKSTOP_TTL
)
_ids_by_account: dict[str, int] = {}
_confirmed: dict[int, tuple[Any, float]] = {}  # tenant id -> (token, when it was read)
_redis_down_until = 0.0
_cache_lock = threading.Lock()


def config_version(tenant_id: int, *, max_age: float = 0.0) -> Any:
    """The tenant's configuration token: a string, None (never changed since Redis started), or UNKNOWN
    (Redis away, or no settings in this process). `max_age` accepts a token this process read that many
    seconds ago or less (TOKEN_MAX_AGE on the webhook path)."""
    global _redis_down_until
    now = time.monotonic()
    if max_age > 0:
        seen = _confirmed.get(tenant_id)
        if seen is not None and now - seen[1] <= max_age:
            return seen[0]
    if now < _redis_down_until:
        return UNKNOWN
    try:
        from app.core import bootstrap, queue

        raw = queue.redis_for(bootstrap.current()).get(config_key(tenant_id))
    except bootstrap.NotConfigured:
        return UNKNOWN
    except RedisError:
        _redis_down_until = now + REDIS_RETRY_AFTER
        return UNKNOWN
    token = raw.decode() if raw is not None else None
    _confirmed[tenant_id] = (token, now)
    return token


def _fresh_enough(token: Any, loaded_at: float, current: Any) -> bool:
    if current is UNKNOWN or token is UNKNOWN:
        return time.monotonic() - loaded_at < UNKNOWN_TTL
    return bool(token == current)


def touch(tenant_id: int) -> None:
    """The tenant's configuration changed (committed): every process's caches of it are stale."""
    with _cache_lock:
        _directories.pop(tenant_id, None)
        for account, (tenant, _token, _at) in list(_by_account.items()):
            if tenant.id == tenant_id:
                _by_account.pop(account, None)
    _confirmed.pop(tenant_id, None)
    try:
        from app.core import bootstrap, queue

        queue.redis_for(bootstrap.current()).set(config_key(tenant_id), uuid.uuid4().hex, ex=30 * 86400)
    except bootstrap.NotConfigured:
        pass
    except RedisError as exc:
        log.warning(
            "tenants.touch_failed tenant=%s error=%s (other processes catch up within %ss)",
            tenant_id,
            type(exc).__name__,
            UNKNOWN_TTL,
        )


def tenant_for_twilio_account(account_sid: str, *, fresh: bool = False) -> Tenant | None:
    """The tenant owning a Twilio account (cached; fresh=True reads the database); detached, read-only."""
    if not fresh:
        with _cache_lock:
            cached = _by_account.get(account_sid)
        if cached is not None:
            tenant, token, loaded_at = cached
            if _fresh_enough(token, loaded_at, config_version(tenant.id, max_age=TOKEN_MAX_AGE)):
                return tenant
    known_id = _ids_by_account.get(account_sid)
    token = config_version(known_id) if known_id is not None else UNKNOWN  # read before the data
    loaded_at = time.monotonic()
    with db.transaction() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.twilio_account_sid == account_sid))
        if tenant is not None:
            _ = tenant.twilio_auth_token, tenant.settings  # load before the session closes
            s.expunge(tenant)
    if tenant is None:
        return None
    if known_id != tenant.id:
        _ids_by_account[account_sid] = tenant.id
        token = config_version(tenant.id)  # first load in this process: read just after the data
    with _cache_lock:
        _by_account[account_sid] = (tenant, token, loaded_at)
    return tenant


def cached_directory(tenant_id: int) -> tuple[set[str], dict[str, int]]:
    """directory() from the per-process cache, checked against the tenant's configuration token."""
    with _cache_lock:
        cached = _directories.get(tenant_id)
    if cached is not None:
        token, loaded_at, numbers, users = cached
        if _fresh_enough(token, loaded_at, config_version(tenant_id, max_age=TOKEN_MAX_AGE)):
            return numbers, users
    token = config_version(tenant_id)
    loaded_at = time.monotonic()
    with db.transaction() as s:
        numbers, users = directory(s, tenant_id)
    with _cache_lock:
        _directories[tenant_id] = (token, loaded_at, numbers, users)
    return numbers, users


@caches.register
def clear_caches() -> None:
    """Forget cached tenants and directories (tests, and after configuration changes in this process)."""
    global _redis_down_until
    with _cache_lock:
        _by_account.clear()
        _directories.clear()
    _ids_by_account.clear()
    _confirmed.clear()
    _redis_down_until = 0.0


def get_tenant(s: Session, ref: str) -> Tenant:
    """Find a tenant by name or numeric id."""
    tenant = s.scalar(select(Tenant).where(Tenant.name == ref))
    if tenant is None and ref.isdigit():
        tenant = s.get(Tenant, int(ref))
    if tenant is None:
        raise ProvisioningError(f"no tenant named {ref!r}")
    return tenant


def add_tenant(
    s: Session, name: str, *, account_sid: str, auth_token: str, crm: str = "local", region: str = "US"
) -> Tenant:
    """Create a tenant; the Twilio auth token is encrypted at rest."""
    if s.scalar(select(Tenant).where(Tenant.name == name)) is not None:
        raise ProvisioningError(f"tenant {name!r} already exists")
    if s.scalar(select(Tenant).where(Tenant.twilio_account_sid == account_sid)) is not None:
        raise ProvisioningError(f"Twilio account {account_sid} already belongs to a tenant")
    tenant = Tenant(
        name=name,
        twilio_account_sid=account_sid,
        twilio_auth_token=auth_token,
        crm=crm,
        region=region.upper(),
        settings={},
    )
    s.add(tenant)
    s.flush()
    return tenant


def add_number(s: Session, tenant: Tenant, raw: str, label: str | None = None) -> TenantNumber:
    """Register one of the tenant's Twilio numbers."""
    e164 = to_e164(raw, tenant.region)
    if e164 is None:
        raise ProvisioningError(f"{raw!r} is not a phone number")
    existing = s.scalar(select(TenantNumber).where(TenantNumber.e164 == e164))
    if existing is not None:
        if existing.tenant_id != tenant.id:
            raise ProvisioningError(f"{e164} already belongs to another tenant")
        return existing
    number = TenantNumber(tenant_id=tenant.id, e164=e164, label=label)
    s.add(number)
    s.flush()
    return number


def add_user(
    s: Session,
    tenant: Tenant,
    *,
    name: str,
    email: str,
    phone: str | None,
    crm_owner_id: str | None = None,
    default: bool = False,
) -> User:
    """Add a rep or CSM; on the built-in CRM their owner id defaults to their email."""
    e164 = to_e164(phone, tenant.region) if phone else None
    if phone and e164 is None:
        raise ProvisioningError(f"{phone!r} is not a phone number")
    email = email.strip().lower()
    if s.scalar(select(User).where(User.tenant_id == tenant.id, User.email == email)) is not None:
        raise ProvisioningError(f"user {email} already exists in {tenant.name}")
    if crm_owner_id is None and tenant.crm == "local":
        crm_owner_id = email
    if default:
        for other in s.scalars(select(User).where(User.tenant_id == tenant.id, User.is_default.is_(True))):
            other.is_default = False
    user = User(
        tenant_id=tenant.id, name=name, email=email, phone=e164, crm_owner_id=crm_owner_id, is_default=default
    )
    s.add(user)
    s.flush()
    return user


def create_api_key(s: Session, tenant: Tenant) -> str:
    """Create an API key and return it; only its hash is kept, so it is shown once."""
    prefix, key = crypto.new_api_key()
    s.add(ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=crypto.hash_api_key(key)))
    s.flush()
    return key


def tenant_for_api_key(s: Session, key: str) -> Tenant | None:
    """The tenant a presented API key belongs to, or None (unknown, malformed or revoked)."""
    prefix = crypto.api_key_prefix(key)
    if prefix is None:
        return None
    row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None)))
    if row is None or not crypto.same(row.key_hash, crypto.hash_api_key(key)):
        return None
    row.last_used_at = utcnow()
    return s.get(Tenant, row.tenant_id)


def directory(s: Session, tenant_id: int) -> tuple[set[str], dict[str, int]]:
    """The tenant's own numbers, and its users' phones mapped to user ids (our side of a conversation)."""
    both = union_all(
        select(literal(0).label("user_id"), TenantNumber.e164.label("phone")).where(
            TenantNumber.tenant_id == tenant_id
        ),
        select(User.id, User.phone).where(User.tenant_id == tenant_id, User.phone.is_not(None)),
    )
    numbers: set[str] = set()
    users: dict[str, int] = {}
    for user_id, phone in s.execute(both):
        if user_id:
            users[phone] = user_id
        else:
            numbers.add(phone)
    return numbers, users


def set_teams(s: Session, user: User, teams: list[str]) -> None:
    """Put a user in these teams (replacing their previous ones)."""
    from app.core.models import UserTeam

    s.query(UserTeam).filter(UserTeam.user_id == user.id).delete()
    for team in dict.fromkeys(t.strip().lower() for t in teams if t.strip()):
        s.add(UserTeam(user_id=user.id, team=team))


def next_in_team(tenant_id: int, team: str) -> User | None:
    """Round-robin over the team's users, fair across workers and restarts (the cursor is a locked row)."""
    for _attempt in range(3):
        try:
            return _next_in_team(tenant_id, team)
        except IntegrityError:  # two workers created the cursor at once; the loser reads the winner's
            continue
    return _next_in_team(tenant_id, team)


def _next_in_team(tenant_id: int, team: str) -> User | None:
    from app.core.models import TeamCursor, UserTeam

    with db.transaction() as s:
        members = list(
            s.scalars(
                select(User)
                .join(UserTeam, UserTeam.user_id == User.id)
                .where(User.tenant_id == tenant_id, UserTeam.team == team)
                .order_by(User.id)
            )
        )
        if not members:
            return None
        cursor = s.scalar(
            select(TeamCursor)
            .where(TeamCursor.tenant_id == tenant_id, TeamCursor.team == team)
            .with_for_update()
        )
        if cursor is None:
            cursor = TeamCursor(tenant_id=tenant_id, team=team, position=0)
            s.add(cursor)
            s.flush()
        chosen = members[cursor.position % len(members)]
        cursor.position += 1
        s.expunge(chosen)
        return chosen


# --- invalidation: any committed ORM change to a tenant, its numbers or its users replaces its token ---

_TOUCHED = "switchboard_touched_tenants"


@sa_event.listens_for(Session, "before_flush")
def _note_changes(session: Session, _context: Any, _instances: Any) -> None:
    ids: set[int] = set()
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, Tenant):
            tenant_id = obj.id
        elif isinstance(obj, TenantNumber | User):
            tenant_id = obj.tenant_id if obj.tenant_id is not None else getattr(obj.tenant, "id", None)
        else:
            continue
        if tenant_id is not None:
            ids.add(tenant_id)
    if ids:
        session.info.setdefault(_TOUCHED, set()).update(ids)


@sa_event.listens_for(Session, "after_commit")
def _publish_changes(session: Session) -> None:
    for tenant_id in session.info.pop(_TOUCHED, ()):
        touch(tenant_id)


@sa_event.listens_for(Session, "after_rollback")
def _forget_changes(session: Session) -> None:
    session.info.pop(_TOUCHED, None)
