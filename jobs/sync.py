"""Sync jobs: write pending interactions to their tenant's CRM in batches, and sweep up what Redis lost.

A job for interaction N is a trigger: it drains *all* of N's tenant's due interactions, up to BATCH at a
time, through the connector's batch methods. When one call produces a burst of callbacks, or a thousand
calls arrive at once, the CRM sees a handful of batch requests instead of one request per callback.

One drainer per tenant at a time (a Redis lock), so two workers never write the same activity at once.
A trigger that finds the lock taken raises a "dirty" flag and leaves; the drainer checks the flag after
releasing the lock and drains again, so no trigger is lost between its last query and its release.
Retry backoff is per interaction (attempts, next_attempt_at on the ledger row, intervals from
JOB_RETRY_INTERVALS); a trigger is scheduled with RQ's scheduler for the earliest retry.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from redis import Redis
from redis.exceptions import LockError
from rq import Queue, get_current_job
from sqlalchemy import select

from app import bootstrap, db, ledger
from app.db import utcnow
from app.interactions import CALL_TERMINAL, InteractionData
from app.models import Interaction, Tenant, User
from app.queue import enqueue_sync, redis_for
from app.settings import Settings
from app.tenants import settings_of
from connectors import get_connector
from connectors.base import ActivityWrite, Connector, CrmError, CrmRef, Party, PermanentError

log = logging.getLogger(__name__)

BATCH = 100  # activities per write: HubSpot's batch endpoints take up to 100 inputs
WINDOW = 10 * BATCH  # rows per round: their contacts are looked up together (100 numbers per search)
# An interaction with no outside party yet (click-to-call before the customer leg) waits for more callbacks.
PARTY_WAIT = timedelta(hours=1)
PARTY_RECHECK = timedelta(seconds=60)
_FINAL = {*CALL_TERMINAL, "missed", "voicemail", "received", "delivered", "undelivered", "failed", "read"}


def log_interaction(interaction_id: int) -> str:
    """Trigger the CRM sync of an interaction (and of everything else its tenant has pending)."""
    with db.transaction() as s:
        row = s.get(Interaction, interaction_id)
        if row is None:
            return "gone"
        if row.sync_state != "pending":
            return row.sync_state
        tenant_id = row.tenant_id
    return drain(tenant_id)


def drain(tenant_id: int) -> str:
    """Sync the tenant's due interactions until none are left (or this job's time budget is spent)."""
    settings = bootstrap.current()
    job = get_current_job()
    conn: Redis = job.connection if job is not None else redis_for(settings)
    dirty = f"switchboard:drain-dirty:{tenant_id}"
    lock = conn.lock(f"switchboard:lock:drain:{tenant_id}", timeout=settings.job_timeout_seconds + 30)
    conn.set(dirty, "1")
    budget = time.monotonic() + settings.job_timeout_seconds * 0.8
    synced = 0
    while True:
        if not lock.acquire(blocking=False):
            return "drained by another worker"
        try:
            conn.delete(dirty)
            while time.monotonic() < budget:
                rows = ledger.due_batch(tenant_id, WINDOW)
                if not rows:
                    break
                synced += sync_batch(tenant_id, rows, settings)
                lock.reacquire()  # a long drain keeps its lock
        finally:
            try:
                lock.release()
            except LockError:
                log.warning("drain.lock_lost tenant=%s", tenant_id)
        if time.monotonic() >= budget:
            _schedule(settings, conn, tenant_id, delay=0)  # continue in a fresh job
            break
        if not conn.exists(dirty):
            break
    _schedule_retries(settings, conn, tenant_id)
    return f"synced {synced}"


def _schedule_retries(settings: Settings, conn: Redis, tenant_id: int) -> None:
    due = ledger.next_due(tenant_id)
    if due is not None:
        _schedule(settings, conn, tenant_id, delay=max(0.0, (due - utcnow()).total_seconds()))


def _schedule(settings: Settings, conn: Redis, tenant_id: int, delay: float) -> None:
    """Enqueue a drain trigger for the tenant, now or after `delay` seconds (RQ's scheduler)."""
    q = Queue(settings.queue_name, connection=conn)
    job_id = f"drain-{tenant_id}-{uuid.uuid4().hex[:12]}"
    if delay <= 0:
        q.enqueue(drain, tenant_id, job_id=job_id, job_timeout=settings.job_timeout_seconds)
    else:
        q.enqueue_in(
            timedelta(seconds=delay),
            drain,
            tenant_id,
            job_id=job_id,
            job_timeout=settings.job_timeout_seconds,
        )


@dataclass
class _Item:
    row_id: int
    version: int
    data: InteractionData
    contact_id: str | None
    record_id: str | None
    last_callback_at: datetime
    reason: str | None = None
    owner_user: int | None = None


def sync_batch(tenant_id: int, rows: Sequence[Interaction], settings: Settings) -> int:
    """Write a window of a tenant's interactions to its CRM (contacts for all of them first, then the
    activities BATCH at a time); returns how many are now synced."""
    with db.transaction() as s:
        tenant = s.get(Tenant, tenant_id)
        assert tenant is not None
        items = [
            _Item(r.id, r.version, ledger.snapshot(s, r), r.crm_contact_id, r.crm_record_id, r.updated_at)
            for r in rows
        ]
        owners = {u.crm_owner_id: u.id for u in s.scalars(select(User).where(User.tenant_id == tenant_id))}
        policy = settings_of(tenant)["unknown_contacts"]
        blocked = tenant.crm_status != "ok"
        blocked_reason = tenant.crm_status_reason or tenant.crm_status

    ready = []
    for item in items:
        idle = utcnow() - item.last_callback_at
        if blocked:
            ledger.mark_failed(item.row_id, f"permanent: CRM connection needs attention: {blocked_reason}")
        elif item.data.party_phone or item.data.party_email:
            ready.append(item)
        elif item.data.status in _FINAL or idle > PARTY_WAIT:
            ledger.mark_skipped(item.row_id, "no outside party (anonymous, internal, or unknown leg)")
        else:
            ledger.defer(item.row_id, utcnow() + PARTY_RECHECK)
    if not ready:
        return 0

    connector = get_connector(tenant)
    ledger.note_attempts([i.row_id for i in ready])
    try:
        _resolve_contacts(connector, ready, policy, owners, settings)
    except (
        CrmError
    ) as exc:  # the lookup failed as a whole (rate limited for too long, CRM down, token revoked)
        for item in ready:
            _failed(item.row_id, exc, settings)
        return 0
    writable = [i for i in ready if i.contact_id]
    synced = 0
    for start in range(0, len(writable), BATCH):
        chunk = writable[start : start + BATCH]
        writes = [
            ActivityWrite(
                CrmRef("contact", i.contact_id or ""),
                i.data,
                activity_external_id(i.row_id),
                CrmRef(i.data.channel, i.record_id) if i.record_id else None,
            )
            for i in chunk
        ]
        try:
            results: list[CrmRef | CrmError] = connector.write_activities(writes)
        except CrmError as exc:
            results = [exc] * len(chunk)
        done = []
        for item, result in zip(chunk, results, strict=True):
            if isinstance(result, CrmError):
                _failed(item.row_id, result, settings)
            else:
                done.append((item.row_id, item.version, result.id))
        ledger.mark_synced(done)
        synced += len(done)
    log.info("crm.synced tenant=%s count=%s of=%s", tenant_id, synced, len(ready))
    return synced


def _resolve_contacts(
    connector: Connector, items: list[_Item], policy: str, owners: dict[str | None, int], settings: Settings
) -> None:
    """Find (or create, per policy) the contact of every item that has none yet, and remember it."""
    todo = [i for i in items if not i.contact_id]
    if not todo:
        return
    parties = {
        i.row_id: Party(phone=i.data.party_phone, email=i.data.party_email, name=i.data.caller_name)
        for i in todo
    }
    found = connector.find_contacts(list(parties.values()))
    missing = {}
    for item in todo:
        match = found.get(parties[item.row_id])
        if match is not None:
            item.contact_id, item.reason = match.ref.id, match.reason
            _adopt_owner(item, match.owner_id, owners)
        elif policy == "create":
            missing.setdefault(contact_external_id(parties[item.row_id]), []).append(item)
        else:
            ledger.mark_skipped(item.row_id, "no matching contact; tenant policy is not to create one")
    if missing:
        parties_by_ext = {ext: parties[group[0].row_id] for ext, group in missing.items()}
        created = connector.create_contacts([(party, ext) for ext, party in parties_by_ext.items()])
        for ext, group in missing.items():
            result = created.get(ext)
            for item in group:
                if isinstance(result, CrmRef):
                    item.contact_id, item.reason = result.id, "no match; contact created"
                else:
                    _failed(item.row_id, result or PermanentError("contact was not created"), settings)
    ledger.save_contacts([(i.row_id, i.contact_id, i.reason, i.owner_user) for i in todo if i.contact_id])


def _adopt_owner(item: _Item, owner_id: str | None, owners: dict[str | None, int]) -> None:
    """Nobody handled it (missed call, text): the contact's owner owns the activity."""
    if item.data.owner_id is None and owner_id is not None:
        item.data = replace(item.data, owner_id=owner_id)
        item.owner_user = owners.get(owner_id)


def _failed(row_id: int, exc: CrmError, settings: Settings) -> None:
    if isinstance(exc, PermanentError):
        ledger.mark_failed(row_id, f"permanent: {exc}")
        log.warning("crm.failed interaction=%s permanent", row_id)
    elif ledger.retry_later(row_id, f"retryable: {exc}", settings.job_retry_intervals) == "failed":
        log.warning("crm.failed interaction=%s retries exhausted", row_id)


def activity_external_id(interaction_id: int) -> str:
    """Our id on the CRM activity, so a retried job finds the activity instead of writing a second one."""
    return f"switchboard-interaction-{interaction_id}"


def contact_external_id(party: Party) -> str:
    """Our id on a contact we create, so two jobs for the same new number create one contact."""
    return f"switchboard-contact-{party.phone or (party.email or '').lower()}"


def sweep() -> int:
    """Re-trigger tenants with interactions left pending (Redis was down, a worker died); returns how many."""
    settings = bootstrap.current()
    count = 0
    for interaction_id, version in ledger.stale_pending(timedelta(seconds=settings.sweep_after_seconds)):
        if enqueue_sync(settings, interaction_id, version) == "queued":
            count += 1
    if count:
        log.info("sweep.enqueued count=%s", count)
    return count
