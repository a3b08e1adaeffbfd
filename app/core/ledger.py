"""The ledger: record provider events idempotently and keep each interaction's CRM sync state.

`record` runs in the webhook request and commits before the 2xx: the raw event row (unique on its event
key, so a duplicate delivery records nothing) and the interaction it folds into, in one transaction.
The worker then moves the interaction through pending -> synced | failed | skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, bindparam, case, func, literal, or_, select, true, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.core import db, ledger_pg, optouts, tenants
from app.core.db import utcnow
from app.core.interactions import Derived, Event, InteractionData, derive, merge_facts
from app.core.models import Interaction, Tenant, User, WebhookEvent
from app.core.phones import to_e164 as _to_e164

log = logging.getLogger(__name__)

# libphonenumber costs ~45 us a parse and a fold parses the same few numbers (ours, our reps', the
# customer's) several times; the function is pure, so a bounded memo is safe.
to_e164 = lru_cache(maxsize=4096)(_to_e164)


@dataclass(frozen=True)
class Recorded:
    """The outcome of recording one event."""

    interaction_id: int
    version: int
    duplicate: bool  # the event key was already in the ledger; nothing changed
    changed: bool  # the interaction changed, so the CRM needs an update
    consent_changed: bool = False  # the event changed the party's opt-out state (mirror it to the CRM)


def record(tenant: Tenant, event: Event) -> Recorded:
    """Store the event and fold it into its interaction, atomically and idempotently; commits.

    SQLAlchemy Core, no unit of work: on PostgreSQL one statement inserts the event (ON CONFLICT DO
    NOTHING: a duplicate stores nothing) and locks the interaction (FOR UPDATE), the facts merge in Python
    (app.core.interactions, the one place that knows how), and one more statement writes the interaction
    and points the event at it. A concurrent first delivery of the same call is settled by the unique key
    (INSERT ... ON CONFLICT waits for it, then this one folds into its row). On SQLite, BEGIN IMMEDIATE
    serializes writers and the same steps run as separate statements.
    """
    # Our side of the conversation, read before the transaction (a cache hit costs nothing; on SQLite a
    # second connection inside BEGIN IMMEDIATE would wait for this one's lock).
    ours = tenants.cached_directory(tenant.id)
    engine = db.engine()
    if engine.dialect.name == "postgresql" and event.consent is None:
        # One or two autocommit statements, no lock, when no other delivery of this interaction races us.

        def fold(old: dict[str, Any], user_id: int | None, merged: dict[str, Any] | None) -> dict[str, Any]:
            return _apply(tenant, ours, event.channel, old, event.facts, user_id, merged)

        fast = ledger_pg.record(engine, tenant.id, event, fold)
        if fast is not None:
            interaction_id, version, duplicate, changed = fast
            return Recorded(interaction_id, version, duplicate=duplicate, changed=changed)
    last_exc: Exception | None = None
    for _attempt in range(3):
        try:
            with engine.begin() as conn:
                return _record(conn, tenant, event, ours)
        except (IntegrityError, OperationalError) as exc:
            # A concurrent delivery of the same event or call won a race the statements did not settle.
            last_exc = exc
    assert last_exc is not None
    raise last_exc


_EVENTS = WebhookEvent.__table__
_INTERACTIONS = Interaction.__table__


Directory = tuple[set[str], dict[str, int]]

# The locked path's statements are built once per backend (and column set) with bind parameters, not per
# webhook: building a Core statement costs ~1 ms of CPU, executing a prebuilt one a tenth of that
# (SQLAlchemy caches its compiled SQL). Parameter names: e_ the event row, k_ the interaction's key, v_ its
# new values, event_id / target the rows being linked.


def _bp(table: Any, column: str, prefix: str) -> Any:
    return bindparam(f"{prefix}{column}", type_=table.c[column].type)


_EVENT_COLUMNS = ("tenant_id", "provider", "stream", "event_key", "payload", "received_at")


@lru_cache(maxsize=4)
def _event_insert(dialect: str) -> Any:
    """INSERT the event unless its key is recorded (a duplicate stores nothing), RETURNING its id."""
    values = {c: _bp(_EVENTS, c, "e_") for c in _EVENT_COLUMNS}
    return (
        _insert_for(dialect)(_EVENTS)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["tenant_id", "provider", "event_key"])
        .returning(_EVENTS.c.id)
    )


@lru_cache(maxsize=4)
def _current_stmt() -> Any:
    """The interaction's row as the fold needs it, locked until commit (SQLite: BEGIN IMMEDIATE)."""
    i = _INTERACTIONS.c
    return (
        select(i.id, i.facts, i.version, i.user_id)
        .where(
            i.tenant_id == bindparam("k_tenant_id"),
            i.provider == bindparam("k_provider"),
            i.channel == bindparam("k_channel"),
            i.provider_id == bindparam("k_provider_id"),
        )
        .with_for_update()
    )


@lru_cache(maxsize=4)
def _event_and_current(dialect: str) -> Any:
    """PostgreSQL: the event insert and the locked read of its interaction in one statement."""
    ev_cte, cur_cte = _event_insert(dialect).cte("ev"), _current_stmt().cte("cur")
    one = select(literal(1).label("one")).subquery("one")
    return select(
        select(ev_cte.c.id).scalar_subquery().label("event_id"),
        cur_cte.c.id,
        cur_cte.c.facts,
        cur_cte.c.version,
        cur_cte.c.user_id,
    ).select_from(one.outerjoin(cur_cte, true()))


@lru_cache(maxsize=4)
def _seen_stmt() -> Any:
    """The interaction (and its version) a recorded event key belongs to."""
    return (
        select(_EVENTS.c.interaction_id, _INTERACTIONS.c.version)
        .select_from(_EVENTS.outerjoin(_INTERACTIONS, _INTERACTIONS.c.id == _EVENTS.c.interaction_id))
        .where(
            _EVENTS.c.tenant_id == bindparam("e_tenant_id"),
            _EVENTS.c.provider == bindparam("e_provider"),
            _EVENTS.c.event_key == bindparam("e_event_key"),
        )
    )


def _link() -> Any:
    return update(_EVENTS).where(_EVENTS.c.id == bindparam("event_id"))


@lru_cache(maxsize=4)
def _link_stmt() -> Any:
    """Point the event at its interaction."""
    return _link().values(interaction_id=bindparam("target"))


@lru_cache(maxsize=64)
def _new_interaction(dialect: str, columns: tuple[str, ...]) -> Any:
    """INSERT the interaction. PostgreSQL: ON CONFLICT DO NOTHING, and link the event in the same
    statement, RETURNING the new id (none when a concurrent first delivery inserted it first)."""
    new = (
        _insert_for(dialect)(_INTERACTIONS)
        .values(**{c: _bp(_INTERACTIONS, c, "v_") for c in columns})
        .returning(_INTERACTIONS.c.id)
    )
    if dialect != "postgresql":
        return new
    ins = new.on_conflict_do_nothing(index_elements=["tenant_id", "provider", "channel", "provider_id"]).cte(
        "i"
    )
    return (
        _link().values(interaction_id=select(ins.c.id).scalar_subquery()).returning(_EVENTS.c.interaction_id)
    )


@lru_cache(maxsize=64)
def _write_interaction(dialect: str, columns: tuple[str, ...]) -> Any:
    """UPDATE the interaction to its new values and version; PostgreSQL: and link the event, in one."""
    write = (
        update(_INTERACTIONS)
        .where(_INTERACTIONS.c.id == bindparam("target"))
        .values(**{c: _bp(_INTERACTIONS, c, "v_") for c in columns})
    )
    if dialect != "postgresql":
        return write
    return _link_stmt().add_cte(write.returning(_INTERACTIONS.c.id).cte("u"))


def _insert_for(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _record(conn: Connection, tenant: Tenant, event: Event, ours: Directory) -> Recorded:
    dialect = conn.dialect.name
    ev = {
        "e_tenant_id": tenant.id,
        "e_provider": event.provider,
        "e_stream": event.stream,
        "e_event_key": event.event_key,
        "e_payload": event.raw,
        "e_received_at": utcnow(),
    }
    key = {
        "k_tenant_id": tenant.id,
        "k_provider": event.provider,
        "k_channel": event.channel,
        "k_provider_id": event.provider_id,
    }
    if dialect == "postgresql":
        row = conn.execute(_event_and_current(dialect), {**ev, **key}).one()
        event_id, current = row.event_id, (row if row.id is not None else None)
    else:
        event_id = conn.execute(_event_insert(dialect), ev).scalar()
        current = conn.execute(_current_stmt(), key).first() if event_id is not None else None
    if event_id is None:
        seen = conn.execute(_seen_stmt(), ev).first()
        interaction_id = seen.interaction_id if seen is not None else None
        return Recorded(
            interaction_id or 0, (seen.version or 0) if seen else 0, duplicate=True, changed=False
        )

    interaction_id, version, changed = _fold(conn, tenant, event, event_id, current, key, ours)
    consent = event.consent
    consent_changed = False
    if consent is not None:
        # Opt-outs commit with the event, so no automated text can slip out between a STOP and its record.
        with Session(bind=conn) as s:
            consent_changed = optouts.record(s, tenant.id, consent.phone, consent.opted_out, consent.source)
            s.flush()
    return Recorded(
        interaction_id, version, duplicate=False, changed=changed, consent_changed=consent_changed
    )


def _values(values: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    columns = tuple(sorted(values))
    return columns, {f"v_{c}": values[c] for c in columns}


def _fold(
    conn: Connection,
    tenant: Tenant,
    event: Event,
    event_id: int,
    current: Any,
    key: dict[str, Any],
    ours: Directory,
) -> tuple[int, int, bool]:
    """Merge the event's facts into the interaction (inserting it if new) and link the event to it:
    (interaction id, version, whether it changed)."""
    dialect = conn.dialect.name
    if current is None:
        values = _apply(tenant, ours, event.channel, {}, event.facts, None)
        values.update(
            tenant_id=tenant.id,
            provider=event.provider,
            channel=event.channel,
            provider_id=event.provider_id,
            version=1,
            created_at=values["updated_at"],
        )
        columns, params = _values(values)
        if dialect == "postgresql":
            interaction_id = conn.execute(
                _new_interaction(dialect, columns), {**params, "event_id": event_id}
            ).scalar()
            if interaction_id is not None:
                return interaction_id, 1, True
            # A concurrent first delivery inserted the call first (ON CONFLICT waited for its commit):
            # fold into its row, now visible and locked.
            current = conn.execute(_current_stmt(), key).one()
        else:
            interaction_id = conn.execute(_new_interaction(dialect, columns), params).scalar_one()
            conn.execute(_link_stmt(), {"event_id": event_id, "target": interaction_id})
            return interaction_id, 1, True
    link = {"event_id": event_id, "target": current.id}
    merged = merge_facts(current.facts or {}, event.facts)
    if merged == current.facts and current.version > 0:
        conn.execute(_link_stmt(), link)
        return current.id, current.version, False
    values = _apply(tenant, ours, event.channel, current.facts or {}, event.facts, current.user_id, merged)
    version = current.version + 1
    columns, params = _values({**values, "version": version})
    conn.execute(_write_interaction(dialect, columns), {**params, **link})
    if dialect != "postgresql":
        conn.execute(_link_stmt(), link)
    return current.id, version, True


def _apply(
    tenant: Tenant,
    ours: Directory,
    channel: str,
    old: dict[str, Any],
    new: dict[str, Any],
    user_id: int | None,
    merged: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The interaction's new column values once `new` facts fold into `old` ones."""
    if merged is None:
        merged = merge_facts(old, new)
    d = derive(channel, merged)
    numbers, user_phones = ours
    values: dict[str, Any] = {"facts": merged, **d.columns()}
    if channel == "email":  # the outside party is an address: the sender of an inbound, else the first To
        party = d.from_addr if d.direction == "inbound" else (d.to_addr or "").split(",")[0]
        values["party_email"] = parseaddr(party or "")[1].strip() or None
        values["party_phone"] = values["our_number"] = None
    else:
        values["party_phone"] = _outside_party(d, merged, tenant.region, numbers, set(user_phones))
        values["our_number"] = to_e164(d.to_addr if d.direction == "inbound" else d.from_addr, tenant.region)
    routed = merged.get("routed_user_id")
    if routed:
        values["user_id"] = routed
    elif user_id is None:
        # Outbound from a rep's own phone (click-to-call agent leg) tells us who handled it.
        for addr in (d.from_addr, d.to_addr):
            e164 = to_e164(addr, tenant.region)
            if e164 in user_phones:
                values["user_id"] = user_phones[e164]
                break
    values["sync_state"] = "pending"
    values["next_attempt_at"] = None  # new information is worth trying at once
    values["updated_at"] = utcnow()
    return values


def _outside_party(d: Derived, facts: dict, region: str, numbers: set[str], users: set[str]) -> str | None:
    """The customer's number: the side that is neither one of our numbers nor one of our reps."""
    if d.direction == "inbound":
        candidates = [d.from_addr]
    else:
        # Click-to-call rings the rep first (parent To = rep); the customer is the child leg's To.
        # A call the dialer placed names the customer from the start (app.core.calls).
        legs = facts.get("legs") or {}
        dialer = facts.get("dialer") or {}
        candidates = [d.to_addr, dialer.get("to")] + [legs[k].get("to") for k in sorted(legs)]
    for raw in candidates:
        e164 = to_e164(raw, region)
        if e164 and e164 not in numbers and e164 not in users:
            return e164
    return None


# --- worker side -----------------------------------------------------------------------------------


def snapshot(s: Session, row: Interaction) -> InteractionData:
    """The connector's read-only view of an interaction."""
    owner = None
    if row.user_id is not None:
        user = s.get(User, row.user_id)
        owner = user.crm_owner_id if user else None
    return InteractionData.from_row(row, owner_id=owner)


def due_batch(tenant_id: int, limit: int) -> list[Interaction]:
    """Pending interactions of a tenant whose retry time (if any) has come, oldest first."""
    now = utcnow()
    with db.transaction() as s:
        return list(
            s.scalars(
                select(Interaction)
                .where(
                    Interaction.tenant_id == tenant_id,
                    Interaction.sync_state == "pending",
                    or_(Interaction.next_attempt_at.is_(None), Interaction.next_attempt_at <= now),
                )
                .order_by(Interaction.id)
                .limit(limit)
            )
        )


def next_due(tenant_id: int) -> datetime | None:
    """When the tenant's earliest deferred pending interaction becomes due."""
    with db.transaction() as s:
        return s.scalar(
            select(func.min(Interaction.next_attempt_at)).where(
                Interaction.tenant_id == tenant_id, Interaction.sync_state == "pending"
            )
        )


def note_attempts(ids: list[int]) -> None:
    """Count a sync attempt for each interaction."""
    with db.transaction() as s:
        s.execute(
            update(Interaction).where(Interaction.id.in_(ids)).values(attempts=Interaction.attempts + 1)
        )


# The sync writes these back for every row it syncs (hundreds a second in a burst): one prebuilt UPDATE run
# as an executemany (psycopg pipelines it), not an ORM load and a unit of work per row. Each UPDATE reads
# the row as it stands when it runs, so a webhook folding a newer version in meanwhile is never overwritten.
_SAVE_CONTACT = (
    update(Interaction)
    .where(Interaction.id == bindparam("b_id"))
    .values(
        crm_contact_id=bindparam("b_contact"),
        match_reason=bindparam("b_reason"),
        user_id=func.coalesce(Interaction.user_id, bindparam("b_user", type_=Interaction.user_id.type)),
    )
    .execution_options(synchronize_session=False)
)
_SYNCED_VERSION = bindparam("b_version", type_=Interaction.version.type)
_MARK_SYNCED = (
    update(Interaction)
    .where(Interaction.id == bindparam("b_id"))
    .values(
        crm_record_id=bindparam("b_record"),
        synced_version=case(
            (Interaction.synced_version > _SYNCED_VERSION, Interaction.synced_version), else_=_SYNCED_VERSION
        ),
        # the newest of the two synced versions against the row's version now: a newer fold stays pending
        sync_state=case(
            (
                or_(
                    Interaction.synced_version >= Interaction.version,
                    Interaction.version <= _SYNCED_VERSION,
                ),
                literal("synced"),
            ),
            else_=literal("pending"),
        ),
        last_error=None,
        next_attempt_at=None,
        synced_at=bindparam("b_now", type_=Interaction.synced_at.type),
        # The contact the sync matched for this write, saved with its outcome (one UPDATE per row, not
        # two); NULL keeps what the row has (a contact saved earlier, or none).
        crm_contact_id=func.coalesce(
            bindparam("b_contact", type_=Interaction.crm_contact_id.type), Interaction.crm_contact_id
        ),
        match_reason=func.coalesce(
            bindparam("b_reason", type_=Interaction.match_reason.type), Interaction.match_reason
        ),
        user_id=func.coalesce(Interaction.user_id, bindparam("b_user", type_=Interaction.user_id.type)),
    )
    .execution_options(synchronize_session=False)
)


def save_contacts(matches: list[tuple[int, str, str | None, int | None]]) -> None:
    """Remember each interaction's CRM contact (before its activity is written) and, if nobody handled
    it, the contact's owner as its user: (interaction id, contact id, match reason, owner's user id)."""
    if not matches:
        return
    params = [{"b_id": i, "b_contact": c, "b_reason": r, "b_user": u} for i, c, r, u in matches]
    with db.engine().begin() as conn:
        conn.execute(_SAVE_CONTACT, params)


Match = tuple[str | None, str | None, int | None]  # contact id, match reason, the contact owner's user id


def mark_synced(written: list[tuple[int, int, str]], matches: dict[int, Match] | None = None) -> None:
    """The CRM holds these (interaction id, version, record id); rows with a newer version stay pending.
    `matches` saves, by interaction id, the contact the sync matched and wrote to (see save_contacts)."""
    if not written:
        return
    now = utcnow()
    matches = matches or {}
    params = [
        dict(zip(("b_contact", "b_reason", "b_user"), matches.get(i, (None, None, None)), strict=True))
        | {"b_id": i, "b_version": v, "b_record": r, "b_now": now}
        for i, v, r in written
    ]
    with db.engine().begin() as conn:
        conn.execute(_MARK_SYNCED, params)


def retry_later(
    interaction_id: int, reason: str, intervals: tuple[int, ...], *, wait: float | None = None
) -> str:
    """After a retryable error: wait the next backoff interval, or fail once they are used up.

    `wait` (the CRM's Retry-After, or its API budget's) postpones at least that long; throttling is not a
    failure, so a `wait` does not use up an attempt.
    """
    with db.transaction() as s:
        row = s.get(Interaction, interaction_id)
        if row is None:
            return "gone"
        if wait is not None:
            row.attempts = max(0, row.attempts - 1)
            row.last_error = reason[:2000]
            row.next_attempt_at = utcnow() + timedelta(seconds=max(0.0, min(wait, 86_400.0)))
            return "retry"
        if row.attempts > len(intervals):
            row.sync_state = "failed"
            row.last_error = f"gave up after {row.attempts} attempts: {reason}"[:2000]
            return "failed"
        row.last_error = reason[:2000]
        row.next_attempt_at = utcnow() + timedelta(seconds=intervals[row.attempts - 1] if row.attempts else 0)
        return "retry"


def forget_contact(interaction_id: int) -> None:
    """The matched contact is gone from the CRM: match the party again on the next attempt."""
    with db.transaction() as s:
        s.execute(
            update(Interaction)
            .where(Interaction.id == interaction_id)
            .values(crm_contact_id=None, match_reason=None, next_attempt_at=None)
        )


def defer(interaction_id: int, until: datetime) -> None:
    """Look at this interaction again later (it waits for more callbacks)."""
    with db.transaction() as s:
        s.execute(update(Interaction).where(Interaction.id == interaction_id).values(next_attempt_at=until))


def mark_failed(interaction_id: int, reason: str) -> None:
    """Give up on syncing this interaction until someone retries it."""
    _set_state(interaction_id, "failed", reason)


def mark_skipped(interaction_id: int, reason: str) -> None:
    """Nothing to write to the CRM (no outside party, or policy says not to create the contact)."""
    _set_state(interaction_id, "skipped", reason)


def _set_state(interaction_id: int, state: str, reason: str) -> None:
    with db.transaction() as s:
        s.execute(
            update(Interaction)
            .where(Interaction.id == interaction_id)
            .values(sync_state=state, last_error=reason[:2000])
        )


def stale_pending(older_than: timedelta, limit: int = 500) -> list[tuple[int, int]]:
    """(id, version) of the oldest stale pending interaction of each tenant: Redis may have lost its job.

    One per tenant is enough, since a sync job drains everything its tenant has pending.
    """
    cutoff = utcnow() - older_than
    stale = (
        select(Interaction.tenant_id, func.min(Interaction.id).label("id"))
        .where(
            Interaction.sync_state == "pending",
            Interaction.updated_at < cutoff,
            or_(Interaction.next_attempt_at.is_(None), Interaction.next_attempt_at < cutoff),
        )
        .group_by(Interaction.tenant_id)
        .limit(limit)
        .subquery()
    )
    with db.transaction() as s:
        rows = s.execute(
            select(Interaction.id, Interaction.version).join(stale, stale.c.id == Interaction.id)
        )
        return [(r[0], r[1]) for r in rows]


def tenants_with_due(older_than: timedelta, limit: int = 10_000) -> list[int]:
    """Every tenant with a pending interaction that is due and has waited longer than `older_than` (Redis
    lost its trigger, a worker died): the sweeper triggers each of them, not one row per tenant."""
    now = utcnow()
    cutoff = now - older_than
    with db.transaction() as s:
        return list(
            s.scalars(
                select(Interaction.tenant_id)
                .where(
                    Interaction.sync_state == "pending",
                    Interaction.updated_at < cutoff,
                    or_(Interaction.next_attempt_at.is_(None), Interaction.next_attempt_at <= now),
                )
                .group_by(Interaction.tenant_id)
                .order_by(Interaction.tenant_id)
                .limit(limit)
            )
        )


def reset_failed(tenant_id: int | None = None, ids: list[int] | None = None) -> list[tuple[int, int]]:
    """Put failed interactions back to pending (for `switchboard failed retry`); returns (id, version)."""
    with db.transaction() as s:
        query = select(Interaction).where(Interaction.sync_state == "failed")
        if tenant_id is not None:
            query = query.where(Interaction.tenant_id == tenant_id)
        if ids:
            query = query.where(Interaction.id.in_(ids))
        out = []
        for row in s.scalars(query):
            row.sync_state = "pending"
            row.attempts = 0
            row.next_attempt_at = None
            row.updated_at = utcnow()
            out.append((row.id, row.version))
        return out
