"""The built-in CRM: contacts, timelines and tasks in Switchboard's own database.

It is the reference implementation of the Connector protocol and the default for new tenants, so the
service is useful (and demoable) before any HubSpot or Salesforce account is connected. Its rows live in
the local_* tables and are written in their own transactions, as if it were a remote system.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core import db
from app.core.db import utcnow
from app.core.interactions import InteractionData
from app.core.models import LocalActivity, LocalContact, LocalContactPhone, LocalTask, Tenant
from app.core.phones import pretty, to_e164
from connectors import CrmProvider
from connectors.base import ContactMatch, CrmRef, Party, PermanentError, SequentialBatches, TaskSpec


class LocalConnector(SequentialBatches):
    """Connector for the built-in CRM."""

    name: ClassVar[str] = "local"

    def __init__(self, tenant: Tenant) -> None:
        self.tenant_id = tenant.id
        self.region = tenant.region

    # --- contacts ----------------------------------------------------------------------------------

    def find_contact(self, party: Party) -> ContactMatch | None:
        """Match by phone across all of a contact's numbers, then by email.

        Several contacts sharing a number: the most recently active one wins (then the oldest), and the
        reason says so, so nobody has to guess why a call landed where it did.
        """
        with db.transaction() as s:
            if party.phone:
                contacts = self._by_phone(s, party.phone)
                if contacts:
                    chosen = contacts[0]
                    reason = f"phone {party.phone}"
                    if len(contacts) > 1:
                        reason += f" shared by {len(contacts)} contacts; chose the most recently active"
                    return ContactMatch(CrmRef("contact", str(chosen.id)), chosen.owner_id, reason)
            if party.email:
                contact = s.scalar(
                    select(LocalContact)
                    .where(
                        LocalContact.tenant_id == self.tenant_id,
                        func.lower(LocalContact.email) == party.email.lower(),
                    )
                    .order_by(LocalContact.id)
                )
                if contact is not None:
                    return ContactMatch(CrmRef("contact", str(contact.id)), contact.owner_id, "email")
        return None

    def _by_phone(self, s: Session, e164: str) -> list[LocalContact]:
        numbers = select(LocalContactPhone.contact_id).where(
            LocalContactPhone.tenant_id == self.tenant_id, LocalContactPhone.e164 == e164
        )
        query = (
            select(LocalContact)
            .where(LocalContact.tenant_id == self.tenant_id, LocalContact.id.in_(numbers))
            .order_by(LocalContact.last_activity_at.desc().nulls_last(), LocalContact.id)
        )
        return list(s.scalars(query))

    def owner_hint(self, phone: str) -> str | None:
        """The owner of the contact this number belongs to (a local query)."""
        with db.transaction() as s:
            contacts = self._by_phone(s, phone)
            return contacts[0].owner_id if contacts else None

    def create_contact(self, party: Party, *, external_id: str) -> CrmRef:
        """Create a contact for an unknown party; idempotent on external_id."""
        name = party.name or (pretty(party.phone) if party.phone else None) or party.email or "Unknown"
        try:
            with db.transaction() as s:
                existing = self._contact_by_external_id(s, external_id)
                if existing is not None:
                    return CrmRef("contact", str(existing.id))
                contact = LocalContact(
                    tenant_id=self.tenant_id, name=name, email=party.email, external_id=external_id
                )
                if party.phone:
                    contact.phones.append(
                        LocalContactPhone(tenant_id=self.tenant_id, raw=party.phone, e164=party.phone)
                    )
                s.add(contact)
                s.flush()
                return CrmRef("contact", str(contact.id))
        except IntegrityError:
            with db.transaction() as s:  # a concurrent job created it first
                existing = self._contact_by_external_id(s, external_id)
                assert existing is not None
                return CrmRef("contact", str(existing.id))

    def _contact_by_external_id(self, s: Session, external_id: str) -> LocalContact | None:
        return s.scalar(
            select(LocalContact).where(
                LocalContact.tenant_id == self.tenant_id, LocalContact.external_id == external_id
            )
        )

    def add_contact(self, name: str, phones: list[str], email: str | None, owner_id: str | None) -> int:
        """Create a contact by hand (CLI and demo); phones may be in national or international format."""
        with db.transaction() as s:
            contact = LocalContact(tenant_id=self.tenant_id, name=name, email=email, owner_id=owner_id)
            for raw in phones:
                e164 = to_e164(raw, self.region)
                if e164 is None:
                    raise ValueError(f"{raw!r} is not a phone number")
                contact.phones.append(LocalContactPhone(tenant_id=self.tenant_id, raw=raw, e164=e164))
            s.add(contact)
            s.flush()
            return contact.id

    def contact_info(self, contact: CrmRef, extra: Sequence[str] = ()) -> dict[str, Any]:
        """The contact's fields (extra ones come from its free-form properties)."""
        with db.transaction() as s:
            row = self._contact(s, contact.id)
            info: dict[str, Any] = {
                "id": str(row.id),
                "name": row.name,
                "first_name": row.name.split(" ")[0],
                "email": row.email,
                "phone": row.phones[0].e164 if row.phones else None,
                "owner_id": row.owner_id,
                "time_zone": row.time_zone,
            }
            for name in extra:
                info[name] = (row.properties or {}).get(name)
            return info

    def update_contact(self, contact: CrmRef, properties: dict[str, Any]) -> None:
        """Set fields: name, email, owner_id and time_zone are columns, anything else a free-form property."""
        with db.transaction() as s:
            row = self._contact(s, contact.id)
            free = dict(row.properties or {})
            for name, value in properties.items():
                if name in ("name", "email", "owner_id", "time_zone"):
                    setattr(row, name, value)
                else:
                    free[name] = value
            row.properties = free

    def deal_context(self, deal_id: str) -> dict[str, Any]:
        """The built-in CRM has no deals."""
        raise PermanentError("the built-in CRM has no deals")

    # --- activities --------------------------------------------------------------------------------

    def log_interaction(self, contact: CrmRef, data: InteractionData, *, external_id: str) -> CrmRef:
        """Write the activity on the contact's timeline, or update the one already written for external_id."""
        try:
            with db.transaction() as s:
                activity = self._activity_by_external_id(s, external_id)
                if activity is None:
                    owner = self._contact(s, contact.id)
                    activity = LocalActivity(
                        tenant_id=self.tenant_id,
                        contact_id=owner.id,
                        external_id=external_id,
                        kind=data.channel,
                    )
                    s.add(activity)
                self._fill(s, activity, data)
                s.flush()
                return CrmRef(data.channel, str(activity.id))
        except IntegrityError:
            with db.transaction() as s:
                activity = self._activity_by_external_id(s, external_id)
                assert activity is not None
                self._fill(s, activity, data)
                return CrmRef(data.channel, str(activity.id))

    def update_interaction(self, ref: CrmRef, data: InteractionData) -> None:
        """Patch the activity with the interaction's latest state."""
        with db.transaction() as s:
            activity = s.get(LocalActivity, int(ref.id))
            if activity is None or activity.tenant_id != self.tenant_id:
                raise PermanentError(f"activity {ref.id} not found")
            self._fill(s, activity, data)

    def _activity_by_external_id(self, s: Session, external_id: str) -> LocalActivity | None:
        return s.scalar(
            select(LocalActivity).where(
                LocalActivity.tenant_id == self.tenant_id, LocalActivity.external_id == external_id
            )
        )

    def _contact(self, s: Session, contact_id: str) -> LocalContact:
        contact = s.get(LocalContact, int(contact_id))
        if contact is None or contact.tenant_id != self.tenant_id:
            raise PermanentError(f"contact {contact_id} not found")
        return contact

    def _fill(self, s: Session, activity: LocalActivity, data: InteractionData) -> None:
        activity.direction = data.direction
        activity.status = data.status
        activity.from_addr = data.from_addr
        activity.to_addr = data.to_addr
        activity.duration_seconds = data.duration_seconds
        activity.recording_url = data.recording_url
        activity.body = data.body
        activity.media = list(data.media)
        activity.owner_id = data.owner_id
        activity.occurred_at = data.occurred_at
        activity.ended_at = data.ended_at
        activity.updated_at = utcnow()
        contact = s.get(LocalContact, activity.contact_id)
        if contact is not None and (
            contact.last_activity_at is None or contact.last_activity_at < data.occurred_at
        ):
            contact.last_activity_at = data.occurred_at

    # --- tasks -------------------------------------------------------------------------------------

    def create_task(self, contact: CrmRef | None, task: TaskSpec, *, external_id: str) -> CrmRef:
        """Create a task; a second call with the same external_id returns the first task."""
        try:
            with db.transaction() as s:
                existing = s.scalar(
                    select(LocalTask).where(
                        LocalTask.tenant_id == self.tenant_id, LocalTask.external_id == external_id
                    )
                )
                if existing is not None:
                    return CrmRef("task", str(existing.id))
                contact_id = self._contact(s, contact.id).id if contact else None
                row = LocalTask(
                    tenant_id=self.tenant_id,
                    contact_id=contact_id,
                    external_id=external_id,
                    subject=task.subject,
                    body=task.body,
                    due_at=task.due_at,
                    assignee_id=task.assignee_owner_id,
                    priority=task.priority,
                )
                s.add(row)
                s.flush()
                return CrmRef("task", str(row.id))
        except IntegrityError:
            with db.transaction() as s:
                row = s.scalar(
                    select(LocalTask).where(
                        LocalTask.tenant_id == self.tenant_id, LocalTask.external_id == external_id
                    )
                )
                assert row is not None
                return CrmRef("task", str(row.id))


PROVIDER = CrmProvider(name="local", label="Built-in CRM", connector="connectors.local:LocalConnector")
