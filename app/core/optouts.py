"""The opt-out ledger: who may receive texts from a tenant. Written by keywords and error 21610, read
before every automated text, mirrored to the CRM by a job (jobs.automations.sync_opt_out)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import db
from app.core.db import utcnow
from app.core.models import OptOut


def set_opt_out(tenant_id: int, phone: str, opted_out: bool, source: str) -> bool:
    """Record the number's consent in its own transaction; returns True if it changed."""
    with db.transaction() as s:
        return record(s, tenant_id, phone, opted_out, source)


def record(s: Session, tenant_id: int, phone: str, opted_out: bool, source: str) -> bool:
    """Record the number's consent in the caller's transaction; returns True if it changed."""
    row = s.scalar(
        select(OptOut).where(OptOut.tenant_id == tenant_id, OptOut.phone == phone).with_for_update()
    )
    if row is None:
        s.add(OptOut(tenant_id=tenant_id, phone=phone, opted_out=opted_out, source=source))
        s.flush()
        return opted_out
    if row.opted_out == opted_out:
        return False
    row.opted_out, row.source, row.updated_at = opted_out, source, utcnow()
    return True


def is_opted_out(tenant_id: int, phone: str) -> bool:
    """Whether the number has opted out of the tenant's texts."""
    with db.transaction() as s:
        return bool(
            s.scalar(select(OptOut.opted_out).where(OptOut.tenant_id == tenant_id, OptOut.phone == phone))
        )
