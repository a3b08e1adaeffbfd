"""CRM change notifications (deal stage, owner, new contact), stored once each for the automations.

Every CRM's receiver normalizes its notifications to CrmEventIn; record() stores those of known accounts
once (by the CRM's notification id) and returns the new rows' ids for the automation jobs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from app.core import db
from app.core.models import CrmEvent, Tenant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrmEventIn:
    """One change in a CRM, normalized."""

    account: str  # the CRM account it happened in (HubSpot portal id, Salesforce org id)
    event_id: str  # the CRM's id of the notification: stored once
    event_type: str  # e.g. deal.propertyChange, contact.creation
    object_type: str | None
    object_id: str | None
    property_name: str | None
    property_value: str | None
    occurred_at: datetime
    payload: dict[str, Any]


def record(provider: str, events: list[CrmEventIn]) -> list[int]:
    """Store the events of accounts we know once each; returns the ids of the new ones."""
    if not events:
        return []
    accounts = {e.account for e in events}
    new: list[int] = []
    with db.transaction() as s:
        tenants = {
            t.crm_account_id: t.id
            for t in s.scalars(
                select(Tenant).where(Tenant.crm == provider, Tenant.crm_account_id.in_(accounts))
            )
        }
        for event in events:
            tenant_id = tenants.get(event.account)
            if tenant_id is None:
                log.info(
                    "webhook.ignored provider=%s account=%s reason=unknown-account", provider, event.account
                )
                continue
            exists = s.scalar(
                select(CrmEvent.id).where(
                    CrmEvent.tenant_id == tenant_id,
                    CrmEvent.provider == provider,
                    CrmEvent.event_id == event.event_id,
                )
            )
            if exists is not None:
                continue
            row = CrmEvent(
                tenant_id=tenant_id,
                provider=provider,
                event_id=event.event_id,
                event_type=event.event_type,
                object_type=event.object_type,
                object_id=event.object_id,
                property_name=event.property_name,
                property_value=event.property_value,
                occurred_at=event.occurred_at,
                payload=event.payload,
            )
            s.add(row)
            s.flush()
            new.append(row.id)
    return new
