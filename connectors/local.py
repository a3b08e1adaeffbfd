"""The built-in CRM: contacts, timelines and tasks in Switchboard's own database.

It is the reference implementation of the Connector protocol and the default for new tenants, so the
service is useful (and demoable) before any HubSpot or Salesforce account is connected. Its rows live in
the local_* tables and are written in their own transactions, as if it were a remote system.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import fields
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

# Words that say a name belongs to an organisation or a role, not a person ("Front Desk", "Acme Inc").
_NOT_A_PERSON = frozenset(
    {
        "inc", "llc", "ltd", "corp", "co", "gmbh", "plc", "company", "corporation", "group", "team",
        "office", "desk", "reception", "support", "sales", "billing", "dept", "department", "unknown",
        "caller", "wireless",
    }
)  # fmt: skip
_TITLES = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam", "rev", "fr"})


def split_name(name: str | None) -> tuple[str | None, str | None]:
    """(first, last) of a person's full name; (None, None) when it is not one.

    A name with a digit or an @ (a phone number such as "+1 415-555-0299", an email) or a word of an
    organisation or role ("Front Desk", "Acme Inc") is not a person's name. "Rivera, Jordan" is Jordan
    Rivera; a leading title is dropped ("Dr Lee" has a last name only); an initial is not a first name
    ("J. Rivera"). Beyond that the first word is the first name and the rest the last name.
    """
    text = " ".join((name or "").split())
    if not text or "@" in text or any(c.isdigit() for c in text):
        return None, None
    words = [w.lower().strip(".") for w in re.split(r"[\s,]+", text)]
    if any(w in _NOT_A_PERSON for w in words):
        return None, None
    if "," in text:  # "Rivera, Jordan"
        last_part, _, first_part = text.partition(",")
        first_words, last_words = _untitled(first_part.split()), last_part.split()
    else:
        words = _untitled(text.split())
        if len(words) == 1 and words != text.split():  # "Dr Lee": the title goes with the family name
            return None, words[0]
        first_words, last_words = words[:1], words[1:]
    if first_words and len(first_words[0].rstrip(".")) == 1:  # "J. Rivera"
        first_words, last_words = [], first_words[1:] + last_words
    return " ".join(first_words) or None, " ".join(last_words) or None


def _untitled(words: list[str]) -> list[str]:
    while words and words[0].lower().rstrip(".") in _TITLES:
        words = words[1:]
    return words


# The columns of a timeline entry that mirror the interaction snapshot (everything but our own keys).
_ACTIVITY_FIELDS = tuple(
    sorted(
        {c.key for c in LocalActivity.__table__.columns}
        & {f.name for f in fields(InteractionData)} - {"id", "tenant_id"}
    )
)


class LocalConnector(SequentialBatches):
    """Connector for the built-in CRM."""

    name: ClassVar[str] = "local"
    batch_size: ClassVar[int] = 100

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
        """Create a contact for an unknown party; idempotent on external_id.

        Its display name is the caller id name, else the number formatted for people, else the email; it
        has no first or last name (a number or a caller id such as "WIRELESS CALLER" is not a person's
        name), so templates fall back (`contact.first_name or 'there'`) until someone names it.
        """
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

    def add_contact(
        self,
        name: str | None,
        phones: list[str],
        email: str | None,
        owner_id: str | None,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
    ) -> int:
        """Create a contact by hand (CLI and demo); phones may be in national or international format.

        `name` is the full name, split into first and last name when it is a person's (see split_name);
        explicit first_name/last_name win over the split (and make the name when it is left out).
        """
        first_name, last_name = _clean(first_name), _clean(last_name)
        if first_name is None and last_name is None:
            first_name, last_name = split_name(name)
        numbers = []
        for raw in phones:
            e164 = to_e164(raw, self.region)
            if e164 is None:
                raise ValueError(f"{raw!r} is not a phone number")
            numbers.append((raw, e164))
        display = (
            _clean(name)
            or " ".join(p for p in (first_name, last_name) if p)
            or (pretty(numbers[0][1]) if numbers else None)
            or email
        )
        if not display:
            raise ValueError("a contact needs a name, a phone number or an email")
        with db.transaction() as s:
            contact = LocalContact(
                tenant_id=self.tenant_id,
                name=display,
                first_name=first_name,
                last_name=last_name,
                email=email,
                owner_id=owner_id,
            )
            for raw, e164 in numbers:
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
                "first_name": row.first_name,
                "last_name": row.last_name,
                "email": row.email,
                "phone": row.phones[0].e164 if row.phones else None,
                "owner_id": row.owner_id,
                "time_zone": row.time_zone,
            }
            for name in extra:
                info[name] = (row.properties or {}).get(name)
            return info

    def update_contact(self, contact: CrmRef, properties: dict[str, Any]) -> None:
        """Set fields: name, first_name, last_name, email, owner_id and time_zone are columns, anything else
        a free-form property. A new name without first/last name is split again (see split_name)."""
        with db.transaction() as s:
            row = self._contact(s, contact.id)
            free = dict(row.properties or {})
            for name, value in properties.items():
                if name in _COLUMNS:
                    setattr(row, name, value)
                else:
                    free[name] = value
            if "name" in properties and not {"first_name", "last_name"} & properties.keys():
                row.first_name, row.last_name = split_name(row.name)
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
        for name in _ACTIVITY_FIELDS:  # the timeline keeps the snapshot's fields under the same names
            setattr(activity, name, getattr(data, name))
        activity.media = list(data.media)
        if data.channel == "call" and (data.outcome_label or data.notes):
            # The rep's outcome and notes from the dialer lead the call's text (a transcription follows).
            outcome = f"Outcome: {data.outcome_label}" if data.outcome_label else None
            activity.body = "\n\n".join(x for x in (outcome, data.notes, data.body) if x)
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


_COLUMNS = ("name", "first_name", "last_name", "email", "owner_id", "time_zone")


def _clean(value: str | None) -> str | None:
    text = " ".join((value or "").split())
    return text or None


PROVIDER = CrmProvider(name="local", label="Built-in CRM", connector="connectors.local:LocalConnector")
