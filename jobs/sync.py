"""Sync jobs: write an interaction to its tenant's CRM, and sweep up interactions Redis lost."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from datetime import timedelta

from redis.exceptions import LockError
from rq import get_current_job
from sqlalchemy import select

from app import bootstrap, db, ledger
from app.db import utcnow
from app.interactions import CALL_TERMINAL, InteractionData
from app.models import Interaction, Tenant, User
from app.queue import enqueue_sync, redis_for
from app.tenants import settings_of
from connectors import get_connector
from connectors.base import CrmRef, Party, PermanentError, RetryableError

log = logging.getLogger(__name__)

# An interaction with no outside party yet (click-to-call before the customer leg) waits this long for
# more callbacks before we decide there is nothing to log.
PARTY_WAIT = timedelta(hours=1)
_FINAL = {
    *CALL_TERMINAL,
    "missed",
    "voicemail",
    "received",
    "delivered",
    "undelivered",
    "failed",
    "read",
    "canceled",
}


def log_interaction(interaction_id: int) -> str:
    """Create or update the CRM activity for an interaction; retried by RQ on retryable errors."""
    settings = bootstrap.current()
    job = get_current_job()
    conn = job.connection if job is not None else redis_for(settings)
    # One writer per interaction: two versions of the same call must not race to create two activities.
    lock = conn.lock(
        f"switchboard:lock:interaction:{interaction_id}",
        timeout=settings.job_timeout_seconds + 30,
        blocking_timeout=10,
    )
    try:
        if not lock.acquire():
            raise RetryableError("another job is syncing this interaction")
        try:
            outcome = "again"
            for _ in range(5):  # catch up with versions that arrived while we were writing
                outcome = _sync_once(interaction_id)
                if outcome != "again":
                    break
            return outcome
        finally:
            with contextlib.suppress(LockError):
                lock.release()
    except RetryableError as exc:
        _retry_or_fail(interaction_id, f"retryable: {exc}")
        raise
    except PermanentError:
        raise
    except Exception as exc:  # a bug or an outage we did not classify: retry, then fail loudly
        _retry_or_fail(interaction_id, f"{type(exc).__name__}: {exc}")
        raise


def _retry_or_fail(interaction_id: int, reason: str) -> None:
    job = get_current_job()
    if job is not None and job.retries_left:
        ledger.note_error(interaction_id, reason)
        log.info("crm.retry interaction=%s retries_left=%s", interaction_id, job.retries_left)
    else:
        ledger.mark_failed(interaction_id, reason)
        log.warning("crm.failed interaction=%s", interaction_id)


def _sync_once(interaction_id: int) -> str:
    with db.transaction() as s:
        row = s.get(Interaction, interaction_id)
        if row is None:
            return "gone"
        if row.sync_state in ("failed", "skipped"):
            return row.sync_state
        if row.sync_state == "synced" and row.synced_version >= row.version:
            return "up-to-date"
        tenant = s.get(Tenant, row.tenant_id)
        assert tenant is not None
        data = ledger.snapshot(s, row)
        version, record_id, contact_id = row.version, row.crm_record_id, row.crm_contact_id
        idle = utcnow() - row.updated_at
        policy = settings_of(tenant)["unknown_contacts"]

    if not data.party_phone and not data.party_email:
        if data.status in _FINAL or idle > PARTY_WAIT:
            ledger.mark_skipped(interaction_id, "no outside party (anonymous, internal, or unknown leg)")
            return "skipped"
        return "waiting"

    connector = get_connector(tenant)
    ledger.note_attempt(interaction_id)
    try:
        if record_id:
            connector.update_interaction(CrmRef(data.channel, record_id), data)
        else:
            if not contact_id:
                party = Party(phone=data.party_phone, email=data.party_email, name=data.caller_name)
                match = connector.find_contact(party)
                if match is not None:
                    contact_id, reason, owner = match.ref.id, match.reason, match.owner_id
                elif policy == "create":
                    ref = connector.create_contact(party, external_id=contact_external_id(party))
                    contact_id, reason, owner = ref.id, "no match; contact created", None
                else:
                    ledger.mark_skipped(
                        interaction_id, "no matching contact; tenant policy is not to create one"
                    )
                    return "skipped"
                data = _with_owner(interaction_id, data, owner)
                ledger.save_contact(interaction_id, contact_id, reason)
            ref = connector.log_interaction(
                CrmRef("contact", contact_id), data, external_id=activity_external_id(interaction_id)
            )
            record_id = ref.id
    except PermanentError as exc:
        ledger.mark_failed(interaction_id, f"permanent: {exc}")
        log.warning("crm.failed interaction=%s permanent", interaction_id)
        return "failed"
    ledger.mark_synced(interaction_id, version, record_id)
    log.info("crm.synced interaction=%s version=%s", interaction_id, version)
    with db.transaction() as s:
        latest = s.get(Interaction, interaction_id)
        return "again" if latest is not None and latest.version > version else "synced"


def _with_owner(interaction_id: int, data: InteractionData, owner: str | None) -> InteractionData:
    """Nobody handled it (missed call, text): the contact's owner owns the activity."""
    if data.owner_id is not None or owner is None:
        return data
    with db.transaction() as s:
        row = s.get(Interaction, interaction_id)
        user = s.scalar(select(User).where(User.tenant_id == data.tenant_id, User.crm_owner_id == owner))
        if row is not None and user is not None and row.user_id is None:
            row.user_id = user.id
    return replace(data, owner_id=owner)


def activity_external_id(interaction_id: int) -> str:
    """Our id on the CRM activity, so a retried job finds the activity instead of writing a second one."""
    return f"switchboard-interaction-{interaction_id}"


def contact_external_id(party: Party) -> str:
    """Our id on a contact we create, so two jobs for the same new number create one contact."""
    return f"switchboard-contact-{party.phone or (party.email or '').lower()}"


def sweep() -> int:
    """Re-enqueue interactions left pending (Redis was down, or a worker died); returns how many it queued."""
    settings = bootstrap.current()
    count = 0
    for interaction_id, version in ledger.stale_pending(timedelta(seconds=settings.sweep_after_seconds)):
        if enqueue_sync(settings, interaction_id, version) == "queued":
            count += 1
    if count:
        log.info("sweep.enqueued count=%s", count)
    return count
