"""The Connector protocol every CRM implements, its value types, and the error taxonomy.

Every write takes an `external_id` chosen by us (derived from our interaction id or the party), so a job
that is retried after a crash finds what it already wrote instead of writing it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Protocol

from app.interactions import InteractionData


class CrmError(Exception):
    """Base of connector errors."""


class RetryableError(CrmError):
    """Worth trying again later: timeouts, 429, 5xx, a lock held elsewhere."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(CrmError):
    """Will fail the same way every time: validation errors, forbidden, not found."""


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


class Connector(Protocol):
    """A CRM we write into. Every method must be safe to retry with the same external_id."""

    name: ClassVar[str]

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
