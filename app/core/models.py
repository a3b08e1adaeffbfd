"""Tables: tenants and their people, the webhook ledger, interactions, and the built-in CRM's records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from app.core import crypto
from app.core.db import Base, UTCDateTime, utcnow


class EncryptedText(TypeDecorator[str]):
    """A string encrypted with Fernet on the way in and decrypted on the way out."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else crypto.encrypt(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else crypto.decrypt(value)


def _now() -> datetime:
    return utcnow()


# Ledger tables grow with traffic: 64-bit ids on PostgreSQL (SQLite's rowid alias must stay INTEGER).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Tenant(Base):
    """A customer of Switchboard: one Twilio account, one CRM, its numbers, users and keys."""

    __tablename__ = "tenants"
    __table_args__ = (UniqueConstraint("crm", "crm_account_id", name="uq_tenants_crm_account"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    twilio_account_sid: Mapped[str | None] = mapped_column(String(34), unique=True)
    twilio_auth_token: Mapped[str | None] = mapped_column(EncryptedText)
    region: Mapped[str] = mapped_column(String(2), default="US")
    crm: Mapped[str] = mapped_column(String(32), default="local")
    # The account inside the CRM (HubSpot portal id, Salesforce org id): how CRM webhooks find the tenant.
    crm_account_id: Mapped[str | None] = mapped_column(String(64))
    # ok | needs_reinstall (refresh token revoked): jobs fail as permanent with crm_status_reason.
    crm_status: Mapped[str] = mapped_column(String(32), default="ok", server_default="ok")
    crm_status_reason: Mapped[str | None] = mapped_column(Text)
    # Non-secret per-tenant behaviour (see app.core.tenants.DEFAULT_SETTINGS); CRM secrets go in crm_secrets.
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    crm_secrets: Mapped[str | None] = mapped_column(EncryptedText)
    # Email providers (app.core.mail): their keys as encrypted JSON, and the SHA-256 of the unguessable route
    # token in the tenant's email webhook URLs (?token=...), which is how those webhooks find the tenant.
    email_secrets: Mapped[str | None] = mapped_column(EncryptedText)
    email_route_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    numbers: Mapped[list[TenantNumber]] = relationship(back_populates="tenant", cascade="all, delete-orphan")
    users: Mapped[list[User]] = relationship(back_populates="tenant", cascade="all, delete-orphan")


class TenantNumber(Base):
    """A phone number the tenant owns at Twilio (our side of a call or text)."""

    __tablename__ = "tenant_numbers"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    e164: Mapped[str] = mapped_column(String(20), unique=True)
    label: Mapped[str | None] = mapped_column(String(120))

    tenant: Mapped[Tenant] = relationship(back_populates="numbers")


class User(Base):
    """A rep or CSM: the person a call rings and the CRM owner activities are logged under."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(20))
    crm_owner_id: Mapped[str | None] = mapped_column(String(64))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    tenant: Mapped[Tenant] = relationship(back_populates="users")


class ApiKey(Base):
    """A bearer key for the read API; only its hash is stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    """The ledger: one row per accepted provider event, raw payload kept, unique on its event key."""

    __tablename__ = "webhook_events"
    # The unique key leads with tenant_id, so it serves tenant lookups and the cascade: no index of its own
    # (one index fewer to write per webhook, issue 9).
    __table_args__ = (UniqueConstraint("tenant_id", "provider", "event_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32))
    stream: Mapped[str] = mapped_column(String(32))
    event_key: Mapped[str] = mapped_column(String(200))
    interaction_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("interactions.id", ondelete="SET NULL"), index=True
    )
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)

    interaction: Mapped[Interaction | None] = relationship()


class Interaction(Base):
    """One call or text, folded from all its webhooks, with the state of its sync to the CRM."""

    __tablename__ = "interactions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "provider", "channel", "provider_id"),
        Index("ix_interactions_tenant_party", "tenant_id", "party_phone"),
        Index("ix_interactions_sync", "sync_state", "updated_at"),
        Index("ix_interactions_tenant_pending", "tenant_id", "sync_state", "id"),
        Index("ix_interactions_tenant_thread", "tenant_id", "thread_key"),
        # Only the rows whose newest version the automations have not seen yet, by age: what the sweep
        # (jobs.automations.sweep_interactions) reads every few seconds stays small on both backends.
        Index(
            "ix_interactions_automations_unseen",
            "updated_at",
            postgresql_where=text("automations_version < version"),
            sqlite_where=text("automations_version < version"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # tenant_id has no index of its own: the unique key and the ix_interactions_tenant_* indexes lead with it
    # (one index fewer to write per webhook, issue 9).
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str] = mapped_column(String(16))  # call | sms | email
    # CallSid of the parent leg, MessageSid, or the email's provider message id (long Message-IDs hashed)
    provider_id: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str | None] = mapped_column(String(16))  # inbound | outbound
    status: Mapped[str] = mapped_column(String(24))
    party_phone: Mapped[str | None] = mapped_column(String(20))  # the outside party, E.164
    party_email: Mapped[str | None] = mapped_column(String(320))
    our_number: Mapped[str | None] = mapped_column(String(20))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    from_addr: Mapped[str | None] = mapped_column(Text)
    to_addr: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    media: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    duration_seconds: Mapped[int | None] = mapped_column(Integer)
    recording_url: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(16))
    subject: Mapped[str | None] = mapped_column(Text)  # emails
    thread_key: Mapped[str | None] = mapped_column(String(255))  # emails: root Message-ID of the thread
    # Merge-safe facts from every callback; status and the columns above are derived from them.
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)
    # The newest version the automations finished with (planned its steps, or found nothing to plan), set
    # in the transaction that plans them: a lower value is work Redis may have lost (the sweep re-queues it).
    automations_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # CRM sync state: pending -> synced | failed | skipped; synced_version says which version the CRM has.
    sync_state: Mapped[str] = mapped_column(String(16), default="pending")
    synced_version: Mapped[int] = mapped_column(Integer, default=0)
    crm_contact_id: Mapped[str | None] = mapped_column(String(64))
    crm_record_id: Mapped[str | None] = mapped_column(String(64))
    match_reason: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Retry backoff lives on the row (a job syncs many rows at once): not before this time.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class UserTeam(Base):
    """A user's membership of a team (e.g. csm); round-robin assignments pick among a team's users."""

    __tablename__ = "user_teams"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    team: Mapped[str] = mapped_column(String(64), primary_key=True)


class TeamCursor(Base):
    """Where round-robin over a team stands, kept in the database: fair across workers and restarts."""

    __tablename__ = "team_cursors"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    team: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class RuleSet(Base):
    """A version of a tenant's automation rules (YAML as loaded; the newest one is in force)."""

    __tablename__ = "rule_sets"
    __table_args__ = (UniqueConstraint("tenant_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    loaded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class ActionRun(Base):
    """One step of one rule fired by one trigger: the exactly-once ledger of automations.

    Unique on (tenant, key) where key = rule:trigger:step, so duplicate webhooks, retried jobs and sweeps
    can never plan the same text or task twice. State: scheduled -> running -> done | skipped | canceled
    | failed; the transitions are atomic, so a cancellation and the timer cannot both win.
    """

    __tablename__ = "action_runs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "key"),
        Index("ix_action_runs_due", "state", "due_at"),
        Index("ix_action_runs_party", "tenant_id", "party_phone", "state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(255))
    rule: Mapped[str] = mapped_column(String(100))
    rules_version: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(64))
    trigger_ref: Mapped[str] = mapped_column(String(100))
    trigger_at: Mapped[datetime] = mapped_column(UTCDateTime)
    step: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    party_phone: Mapped[str | None] = mapped_column(String(20))
    party_email: Mapped[str | None] = mapped_column(String(320))
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class OptOut(Base):
    """Whether a number may receive texts from the tenant, and why (keyword, error 21610, admin)."""

    __tablename__ = "opt_outs"
    __table_args__ = (UniqueConstraint("tenant_id", "phone"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    phone: Mapped[str] = mapped_column(String(20))
    opted_out: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class CrmEvent(Base):
    """A change reported by a CRM webhook (deal stage, owner, new contact), kept for the automations."""

    __tablename__ = "crm_events"
    __table_args__ = (UniqueConstraint("tenant_id", "provider", "event_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(64))  # e.g. deal.propertyChange
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64))
    property_name: Mapped[str | None] = mapped_column(String(100))
    property_value: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CrmPollCursor(Base):
    """How far polling a CRM object for changes has come (for CRMs, or orgs, that send no notifications):
    the (modstamp, id) of the last record whose triggers are stored, advanced only after they commit."""

    __tablename__ = "crm_poll_cursors"
    __table_args__ = (UniqueConstraint("tenant_id", "stream"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    stream: Mapped[str] = mapped_column(String(64))  # e.g. Opportunity
    modstamp: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_id: Mapped[str | None] = mapped_column(String(64))
    baseline_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)  # when the first poll began
    polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CrmPollValue(Base):
    """The value polling last saw of a watched field of a CRM record: a poll tells a change from a touch."""

    __tablename__ = "crm_poll_values"
    __table_args__ = (UniqueConstraint("tenant_id", "object_id", "field"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    object_id: Mapped[str] = mapped_column(String(64))
    field: Mapped[str] = mapped_column(String(100))
    value: Mapped[str | None] = mapped_column(Text)


# --- the built-in CRM (connectors/local.py owns these rows) -------------------------------------------


class LocalContact(Base):
    """A contact in the built-in CRM."""

    __tablename__ = "local_contacts"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))  # display name; a pretty number for unknown callers
    # A person's name parts, only when known: never derived from a number, an email or a company name.
    first_name: Mapped[str | None] = mapped_column(String(200))
    last_name: Mapped[str | None] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    owner_id: Mapped[str | None] = mapped_column(String(64))
    time_zone: Mapped[str | None] = mapped_column(String(64))  # IANA name; quiet hours use it
    # Free-form fields automations may set (update_crm), including sms_opt_out.
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default="{}")
    external_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    phones: Mapped[list[LocalContactPhone]] = relationship(
        back_populates="contact", cascade="all, delete-orphan", order_by="LocalContactPhone.id"
    )


class LocalContactPhone(Base):
    """One of a contact's numbers, stored as typed and as E.164 for matching."""

    __tablename__ = "local_contact_phones"
    __table_args__ = (Index("ix_local_contact_phones_lookup", "tenant_id", "e164"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("local_contacts.id", ondelete="CASCADE"), index=True)
    raw: Mapped[str] = mapped_column(String(64))
    e164: Mapped[str] = mapped_column(String(20))
    label: Mapped[str] = mapped_column(String(32), default="phone")

    contact: Mapped[LocalContact] = relationship(back_populates="phones")


class LocalActivity(Base):
    """A call, text or email on a contact's timeline in the built-in CRM."""

    __tablename__ = "local_activities"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("local_contacts.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16))
    direction: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(24))
    from_addr: Mapped[str | None] = mapped_column(Text)
    to_addr: Mapped[str | None] = mapped_column(Text)
    duration_seconds: Mapped[int | None] = mapped_column(Integer)
    recording_url: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    media: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    subject: Mapped[str | None] = mapped_column(Text)  # emails
    owner_id: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


class LocalTask(Base):
    """A task in the built-in CRM."""

    __tablename__ = "local_tasks"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("local_contacts.id", ondelete="CASCADE"), index=True
    )
    external_id: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(String(255))
    body: Mapped[str | None] = mapped_column(Text)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    assignee_id: Mapped[str | None] = mapped_column(String(64))
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
