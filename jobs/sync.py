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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from redis.exceptions import LockError
from rq import get_current_job
from sqlalchemy import select

from app.core import bootstrap, db, ledger, queue
from app.core.db import utcnow
from app.core.interactions import CALL_TERMINAL, InteractionData
from app.core.models import Interaction, Tenant, User
from app.core.queue import enqueue_sync, redis_for
from app.core.settings import Settings
from app.core.tenants import settings_of
from connectors import get_connector
from connectors.base import ActivityWrite, Connector, ContactGone, CrmError, CrmRef, Party, PermanentError

log = logging.getLogger(__name__)

BATCH = 100  # activities per write: HubSpot's batch endpoints take up to 100 inputs
WINDOW = 10 * BATCH  # rows per round: their contacts are looked up together (100 numbers per search)
WRITERS = 4  # batches of a window written concurrently
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
    queue.enqueue(
        settings,
        drain,
        tenant_id,
        job_id=f"drain-{tenant_id}-{uuid.uuid4().hex[:12]}",
        timeout=settings.job_timeout_seconds,
        delay=timedelta(seconds=delay) if delay > 0 else None,
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
    """Write a window of a tenant's interactions to its CRM; returns how many are now synced."""
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
    return _pipeline(tenant_id, connector, ready, policy, owners, settings)


class _Writer:
    """Writes resolved items BATCH at a time on a few threads, while the caller keeps resolving contacts.

    Batches are independent, so several run at once and the CRM's rate limit (shared through Redis) is the
    bound rather than our own round trips: https://developers.hubspot.com/docs/api/usage-details
    """

    def __init__(self, connector: Connector, settings: Settings) -> None:
        self.connector, self.settings = connector, settings
        self.pool = ThreadPoolExecutor(max_workers=WRITERS)
        self.waiting: list[_Item] = []
        self.futures: list[Future[int]] = []

    def add(self, items: list[_Item], flush: bool = False) -> None:
        """Queue items whose contact is known; full batches (all, with flush) start writing."""
        self.waiting += items
        while len(self.waiting) >= BATCH or (flush and self.waiting):
            chunk, self.waiting = self.waiting[:BATCH], self.waiting[BATCH:]
            self.futures.append(self.pool.submit(_write_chunk, self.connector, chunk, self.settings))

    def finish(self) -> int:
        """Write what is left, wait for every batch; how many were synced."""
        self.add([], flush=True)
        try:
            return sum(f.result() for f in self.futures)
        finally:
            self.pool.shutdown()


def _pipeline(
    tenant_id: int,
    connector: Connector,
    items: list[_Item],
    policy: str,
    owners: dict[str | None, int],
    settings: Settings,
) -> int:
    """Resolve contacts BATCH rows at a time (one search of up to 100 numbers), writing each batch of
    resolved rows while the next lookup runs; unknown parties get their contacts created together."""
    writer = _Writer(connector, settings)
    try:
        writer.add([i for i in items if i.contact_id])
        todo = [i for i in items if not i.contact_id]
        missing: dict[str, list[_Item]] = {}
        for start in range(0, len(todo), BATCH):
            group = todo[start : start + BATCH]
            found = connector.find_contacts([_party(i) for i in group])
            resolved = []
            for item in group:
                match = found.get(_party(item))
                if match is not None:
                    item.contact_id, item.reason = match.ref.id, match.reason
                    _adopt_owner(item, match.owner_id, owners)
                    resolved.append(item)
                elif policy == "create":
                    missing.setdefault(contact_external_id(_party(item)), []).append(item)
                else:
                    ledger.mark_skipped(
                        item.row_id, "no matching contact; tenant policy is not to create one"
                    )
            _save_contacts(resolved)
            writer.add(resolved)
        if missing:
            created = connector.create_contacts([(_party(group[0]), ext) for ext, group in missing.items()])
            _announce_new_contacts(tenant_id, created, missing)
            resolved = []
            for ext, group in missing.items():
                result = created.get(ext)
                for item in group:
                    if isinstance(result, CrmRef):
                        item.contact_id, item.reason = result.id, "no match; contact created"
                        resolved.append(item)
                    else:
                        _failed(item.row_id, result or PermanentError("contact was not created"), settings)
            _save_contacts(resolved)
            writer.add(resolved)
    except CrmError as exc:  # a lookup failed as a whole (rate limited too long, CRM down, token revoked)
        for item in items:
            if not item.contact_id:
                _failed(item.row_id, exc, settings)
    except BaseException:
        writer.pool.shutdown(wait=True)  # let started batches record their outcome, then fail the job
        raise
    synced = writer.finish()
    log.info("crm.synced tenant=%s count=%s of=%s", tenant_id, synced, len(items))
    return synced


def _announce_new_contacts(tenant_id: int, created: dict[str, Any], groups: dict[str, list[_Item]]) -> None:
    """A contact we created is a new lead: the contact.created and speed-to-lead rules want to know."""
    from app.automation.store import active_rules
    from jobs.automations import on_contact_created

    if active_rules(tenant_id) is None:
        return
    settings = bootstrap.current()
    for ext, ref in created.items():
        if isinstance(ref, CrmRef):
            party = _party(groups[ext][0])
            queue.enqueue(
                settings,
                on_contact_created,
                tenant_id,
                ref.id,
                party.phone,
                party.email,
                utcnow().isoformat(),
                job_id=f"contact-created-{tenant_id}-{ref.id}".replace("+", ""),
                unique=True,
            )


def _party(item: _Item) -> Party:
    return Party(phone=item.data.party_phone, email=item.data.party_email, name=item.data.caller_name)


def _save_contacts(items: list[_Item]) -> None:
    ledger.save_contacts([(i.row_id, i.contact_id, i.reason, i.owner_user) for i in items if i.contact_id])


def _write_chunk(connector: Connector, chunk: list[_Item], settings: Settings) -> int:
    """Write up to BATCH activities and record the outcome of each."""
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
    return len(done)


def _adopt_owner(item: _Item, owner_id: str | None, owners: dict[str | None, int]) -> None:
    """Nobody handled it (missed call, text): the contact's owner owns the activity."""
    if item.data.owner_id is None and owner_id is not None:
        item.data = replace(item.data, owner_id=owner_id)
        item.owner_user = owners.get(owner_id)


def _failed(row_id: int, exc: CrmError, settings: Settings) -> None:
    if isinstance(exc, ContactGone):
        ledger.forget_contact(row_id)
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
    """Re-trigger tenants with interactions left pending (Redis was down, a worker died), and automation
    steps and CRM events left behind; returns how many jobs it queued."""
    from jobs.automations import sweep_actions, sweep_crm_events

    settings = bootstrap.current()
    count = sweep_actions() + sweep_crm_events()
    for interaction_id, version in ledger.stale_pending(timedelta(seconds=settings.sweep_after_seconds)):
        if enqueue_sync(settings, interaction_id, version) == "queued":
            count += 1
    if count:
        log.info("sweep.enqueued count=%s", count)
    return count
