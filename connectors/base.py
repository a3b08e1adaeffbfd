"""The Connector protocol every CRM implements, its value types, and the error taxonomy.

Every write takes an `external_id` chosen by us (derived from our interaction id or the party), so a job
that is retried after a crash finds what it already wrote instead of writing it twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar

from app.core.interactions import InteractionData
from app.core.ratelimit import Budget

T = TypeVar("T")


class CrmError(Exception):
    """Base of connector errors."""


class RetryableError(CrmError):
    """Worth trying again later: timeouts, 429, 5xx, a lock held elsewhere."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Throttled(RetryableError):
    """The CRM (or our guard of its API budget) asks us to wait `retry_after` seconds. Not a failure: it
    does not use up the row's retries, so a write held for hours by a daily allocation is never failed."""


class PermanentError(CrmError):
    """Will fail the same way every time: validation errors, forbidden, not found."""


class ContactGone(RetryableError):
    """The contact we matched earlier no longer exists (deleted or merged in the CRM): match again."""


@dataclass(frozen=True)
class Party:
    """The outside person of an interaction, as we know them."""

    phone: str | None = None  # E.164
    email: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class CrmRef:
    """A record in the CRM."""

    kind: str  # contact | call | sms | task ...
    id: str


@dataclass(frozen=True)
class ContactMatch:
    """A contact found for a party, with why it was chosen."""

    ref: CrmRef
    owner_id: str | None
    reason: str


@dataclass(frozen=True)
class TaskSpec:
    """A task to create for someone."""

    subject: str
    body: str | None = None
    due_at: datetime | None = None
    assignee_owner_id: str | None = None
    priority: str = "normal"  # low | normal | high


@dataclass(frozen=True)
class ActivityWrite:
    """One activity to write: create it (idempotent on external_id) or, when `record` is known, patch it."""

    contact: CrmRef
    data: InteractionData
    external_id: str
    record: CrmRef | None = None


class Connector(Protocol):
    """A CRM we write into. Every method must be safe to retry with the same external_id.

    The sync job works in batches (so CRMs with batch endpoints need few requests under load): it calls
    find_contacts, create_contacts and write_activities. A CRM without batch endpoints gets them from
    SequentialBatches, which loops over the single-item methods.
    """

    name: ClassVar[str]
    batch_size: ClassVar[int]  # parties per lookup and activities per write the sync sends at once

    def find_contact(self, party: Party) -> ContactMatch | None:
        """The contact for this party, or None."""
        ...

    def create_contact(self, party: Party, *, external_id: str) -> CrmRef:
        """Create (or find the one already created with external_id) a contact for the party."""
        ...

    def log_interaction(self, contact: CrmRef, data: InteractionData, *, external_id: str) -> CrmRef:
        """Log a call or text on the contact's timeline; idempotent on external_id."""
        ...

    def update_interaction(self, ref: CrmRef, data: InteractionData) -> None:
        """Patch the activity written by log_interaction with the interaction's current state."""
        ...

    def create_task(self, contact: CrmRef | None, task: TaskSpec, *, external_id: str) -> CrmRef:
        """Create a task; idempotent on external_id."""
        ...

    def owner_hint(self, phone: str) -> str | None:
        """The owner id of the contact with this number, from our own database only (call routing)."""
        ...

    def contact_info(self, contact: CrmRef, extra: Sequence[str] = ()) -> dict[str, Any]:
        """name, first_name, email, phone, owner_id, time_zone of a contact (+ the `extra` CRM fields)."""
        ...

    def update_contact(self, contact: CrmRef, properties: dict[str, Any]) -> None:
        """Set fields of a contact (automations' update_crm, opt-out state)."""
        ...

    def deal_context(self, deal_id: str) -> dict[str, Any]:
        """A deal for templates: {name, amount, stage, owner_id, contact_id, ...}; PermanentError if none."""
        ...

    def find_contacts(self, parties: Sequence[Party]) -> dict[Party, ContactMatch]:
        """Contacts for many parties at once; parties without a match are left out."""
        ...

    def create_contacts(self, parties: Sequence[tuple[Party, str]]) -> dict[str, CrmRef | CrmError]:
        """Create contacts for (party, external_id) pairs; results keyed by external_id."""
        ...

    def write_activities(self, items: Sequence[ActivityWrite]) -> list[CrmRef | CrmError]:
        """Create or patch activities; one result per item, in order (an error for the items that failed)."""
        ...

    def budget(self) -> Budget | None:
        """Where the CRM's API budget stands (requests used in its window, the limit, seconds blocked by
        a 429), without spending any; None if we know of none. The sync waits for fuller batches only while
        a budget is short. Optional: a connector without it (no rate limit of its own) is never held."""
        return None


class SequentialBatches:
    """Batch methods built from the single-item ones, for CRMs that have no batch endpoints."""

    def find_contacts(self, parties: Sequence[Party]) -> dict[Party, ContactMatch]:
        """Look the parties up one by one."""
        found = {}
        for party in dict.fromkeys(parties):
            match = self.find_contact(party)  # type: ignore[attr-defined]
            if match is not None:
                found[party] = match
        return found

    def create_contacts(self, parties: Sequence[tuple[Party, str]]) -> dict[str, CrmRef | CrmError]:
        """Create the contacts one by one; a failure is reported for its external id only."""
        create = self.create_contact  # type: ignore[attr-defined]
        return {ext: attempt(create, party, external_id=ext) for party, ext in parties}

    def write_activities(self, items: Sequence[ActivityWrite]) -> list[CrmRef | CrmError]:
        """Write the activities one by one; a failure is reported for its item only."""
        return [attempt(self._write_one, item) for item in items]

    def _write_one(self, item: ActivityWrite) -> CrmRef:
        if item.record is None:
            return self.log_interaction(item.contact, item.data, external_id=item.external_id)  # type: ignore[attr-defined,no-any-return]
        self.update_interaction(item.record, item.data)  # type: ignore[attr-defined]
        return item.record


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of at most `size` (a CRM's batch limit), in order."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def raise_if_error(result: CrmRef | CrmError) -> CrmRef:
    """A batch result that is a record, or raise the error it is."""
    if isinstance(result, CrmError):
        raise result
    return result


def attempt(write: Callable[..., CrmRef], *args: Any, **kwargs: Any) -> CrmRef | CrmError:
    """Run one write and return its result or its error (an unexpected exception counts as retryable)."""
    try:
        return write(*args, **kwargs)
    except CrmError as exc:
        return exc
    except Exception as exc:  # a dropped connection or a bug: worth another try, then it fails loudly
        return RetryableError(f"{type(exc).__name__}: {exc}")
