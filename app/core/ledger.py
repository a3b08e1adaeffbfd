"""The ledger: record provider events idempotently and keep each interaction's CRM sync state.

`record` runs in the webhook request and commits before the 2xx: the raw event row (unique on its event
key, so a duplicate delivery records nothing) and the interaction it folds into, in one transaction.
The worker then moves the interaction through pending -> synced | failed | skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.core import db, optouts, tenants
from app.core.db import utcnow
from app.core.interactions import Event, InteractionData, derive, merge_facts
from app.core.models import Interaction, Tenant, User, WebhookEvent
from app.core.phones import to_e164

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """The outcome of recording one event."""

    interaction_id: int
    version: int
    duplicate: bool  # the event key was already in the ledger; nothing changed
    changed: bool  # the interaction changed, so the CRM needs an update
    consent_changed: bool = False  # the event changed the party's opt-out state (mirror it to the CRM)


def record(tenant: Tenant, event: Event) -> Recorded:
    """Store the event and fold it into its interaction, atomically and idempotently; commits."""
    last_exc: Exception | None = None
    for _attempt in range(3):
        try:
            with db.transaction() as s:
                return _record(s, tenant, event)
        except (IntegrityError, OperationalError) as exc:
            # A concurrent delivery of the same event or call won the race; look again.
            last_exc = exc
    assert last_exc is not None
    raise last_exc


def _record(s: Session, tenant: Tenant, event: Event) -> Recorded:
    seen = s.execute(
        select(WebhookEvent.interaction_id).where(
            WebhookEvent.tenant_id == tenant.id,
            WebhookEvent.provider == event.provider,
            WebhookEvent.event_key == event.event_key,
        )
    ).first()
    if seen is not None:
        row = s.get(Interaction, seen[0]) if seen[0] is not None else None
        return Recorded(seen[0] or 0, row.version if row else 0, duplicate=True, changed=False)

    row = _interaction_for_update(s, tenant, event)
    changed = _apply(s, tenant, row, event)
    consent = event.consent
    # Opt-outs commit with the event, so no automated text can slip out between a STOP and its record.
    consent_changed = bool(
        consent and optouts.record(s, tenant.id, consent.phone, consent.opted_out, consent.source)
    )
    s.add(
        WebhookEvent(
            tenant_id=tenant.id,
            provider=event.provider,
            stream=event.stream,
            event_key=event.event_key,
            interaction=row,
            payload=event.raw,
        )
    )
    s.flush()
    return Recorded(row.id, row.version, duplicate=False, changed=changed, consent_changed=consent_changed)


def _interaction_for_update(s: Session, tenant: Tenant, event: Event) -> Interaction:
    query = (
        select(Interaction)
        .where(
            Interaction.tenant_id == tenant.id,
            Interaction.provider == event.provider,
            Interaction.channel == event.channel,
            Interaction.provider_id == event.provider_id,
        )
        .with_for_update()
    )
    row = s.scalar(query)
    if row is not None:
        return row
    row = Interaction(
        tenant_id=tenant.id,
        provider=event.provider,
        channel=event.channel,
        provider_id=event.provider_id,
        status="new",
        facts={},
        media=[],
        version=0,
        sync_state="pending",
    )
    # Inserted at commit with everything _apply sets; a concurrent first delivery for the same call then
    # fails the unique constraint and record() runs again, finding the row.
    s.add(row)
    return row


def _apply(s: Session, tenant: Tenant, row: Interaction, event: Event) -> bool:
    merged = merge_facts(row.facts or {}, event.facts)
    if merged == row.facts and row.version > 0:
        return False
    d = derive(row.channel, merged)
    numbers, user_phones = tenants.directory(s, tenant.id)
    row.facts = merged
    for name, value in d.columns().items():
        setattr(row, name, value)
    row.party_phone = _outside_party(row, merged, tenant.region, numbers, set(user_phones))
    our = to_e164(d.to_addr if d.direction == "inbound" else d.from_addr, tenant.region)
    row.our_number = our
    routed = merged.get("routed_user_id")
    if routed:
        row.user_id = routed
    elif row.user_id is None:
        # Outbound from a rep's own phone (click-to-call agent leg) tells us who handled it.
        for addr in (d.from_addr, d.to_addr):
            e164 = to_e164(addr, tenant.region)
            if e164 in user_phones:
                row.user_id = user_phones[e164]
                break
    row.version += 1
    row.sync_state = "pending"
    row.next_attempt_at = None  # new information is worth trying at once
    row.updated_at = utcnow()
    return True


def _outside_party(
    row: Interaction, facts: dict, region: str, numbers: set[str], users: set[str]
) -> str | None:
    """The customer's number: the side that is neither one of our numbers nor one of our reps."""
    d_from, d_to = row.from_addr, row.to_addr
    if row.direction == "inbound":
        candidates = [d_from]
    else:
        # Click-to-call rings the rep first (parent To = rep); the customer is the child leg's To.
        legs = facts.get("legs") or {}
        candidates = [d_to] + [legs[k].get("to") for k in sorted(legs)]
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


def save_contacts(matches: list[tuple[int, str, str | None, int | None]]) -> None:
    """Remember each interaction's CRM contact (before its activity is written) and, if nobody handled
    it, the contact's owner as its user: (interaction id, contact id, match reason, owner's user id)."""
    if not matches:
        return
    with db.transaction() as s:
        ids = [m[0] for m in matches]
        rows = {r.id: r for r in s.scalars(select(Interaction).where(Interaction.id.in_(ids)))}
        for interaction_id, contact_id, reason, user_id in matches:
            row = rows.get(interaction_id)
            if row is None:
                continue
            row.crm_contact_id, row.match_reason = contact_id, reason
            if row.user_id is None and user_id is not None:
                row.user_id = user_id


def mark_synced(written: list[tuple[int, int, str]]) -> None:
    """The CRM holds these (interaction id, version, record id); rows with a newer version stay pending."""
    if not written:
        return
    now = utcnow()
    with db.transaction() as s:
        ids = [w[0] for w in written]
        rows = {
            r.id: r for r in s.scalars(select(Interaction).where(Interaction.id.in_(ids)).with_for_update())
        }
        for interaction_id, version, record_id in written:
            row = rows.get(interaction_id)
            if row is None:
                continue
            row.crm_record_id = record_id
            row.synced_version = max(row.synced_version, version)
            row.sync_state = "synced" if row.synced_version >= row.version else "pending"
            row.last_error = None
            row.next_attempt_at = None
            row.synced_at = now


def retry_later(interaction_id: int, reason: str, intervals: tuple[int, ...]) -> str:
    """After a retryable error: wait the next backoff interval, or fail once they are used up."""
    with db.transaction() as s:
        row = s.get(Interaction, interaction_id)
        if row is None:
            return "gone"
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
