"""Polling a Salesforce org by SystemModstamp, for orgs that set up no Flow Outbound Message: Opportunity
stage changes, Contact and Lead owner changes and new Leads become the same stored CRM events, and the same
triggers (crm.deal_stage_changed, crm.owner_changed, contact.created), as the Outbound Message receiver's,
through the same path (app.core.crm_events.record, then the automations' crm_event job).

The cron enqueues poll_all every sweep interval; it enqueues poll_org for each Salesforce tenant that is due
(tenant settings salesforce_poll: auto | on | off, and salesforce_poll_seconds). `auto` polls unless an
Outbound Message reached the tenant in the last 7 days: with both, each change would fire twice.

No gaps, no repeats:
- Per object, a durable cursor (crm_poll_cursors): the (SystemModstamp, Id) of the last record whose triggers
  are stored. It moves only after they commit, and only forward.
- Each poll asks for records with SystemModstamp >= cursor - OVERLAP, ordered by (SystemModstamp, Id), and
  follows nextRecordsUrl. The overlap catches a record whose transaction committed after records stamped
  later were already visible (SystemModstamp is set when the transaction starts saving, not at commit).
- A change is a watched field whose value differs from the one last seen (crm_poll_values); the event id is
  the idempotency key (record id + field + new value + SystemModstamp), so a re-read record, a poll that
  crashed between storing its events and moving its cursor, or two polls at once, store nothing twice.
- The first poll of an org is a baseline: it reads every record's watched fields and fires nothing.
  Polling sees each record as it is when polled: two changes between polls are one change (the latest
  value), and a new record's first state is its baseline (a new Lead fires contact.created).

Cost: the first page of every object comes in one Composite request (one API call; Salesforce counts a
composite request once), so a quiet org costs one request per poll. The baseline reads every Opportunity,
Contact and unconverted Lead once (2,000 a page).
https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_composite_composite_post.htm
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import delete, select, update

from app.core import bootstrap, crm_events, db, queue
from app.core.crm_events import CrmEventIn
from app.core.db import utcnow
from app.core.models import CrmEvent, CrmPollCursor, CrmPollValue, Tenant
from app.core.queue import redis_for
from connectors.base import CrmError, PermanentError, RetryableError
from connectors.salesforce.mapping import stage_key
from connectors.salesforce.settings import DEFAULTS

log = logging.getLogger(__name__)

PROVIDER = "salesforce"
OVERLAP = timedelta(minutes=5)  # re-read this much before the cursor: transactions that committed late
FLOW_RECENT = timedelta(days=7)  # `auto`: an Outbound Message this recent means a Flow reports changes
MAX_PAGES = 50  # pages of one object a poll reads (2,000 records each); the next poll goes on from there
LOCK_TTL = 600  # seconds: one poll of an org at a time
VALUES_PER_QUERY = 500  # record ids per lookup of remembered values
RETRYABLE = {"UNABLE_TO_LOCK_ROW", "REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE", "UNKNOWN_EXCEPTION"}


@dataclass(frozen=True)
class Stream:
    """One polled object: the fields whose change is a trigger, what else we read, a fixed condition, and
    whether a new record is a trigger."""

    sobject: str
    watched: tuple[str, ...]
    extra: tuple[str, ...] = ()
    where: str = ""
    created: bool = False

    def soql(self, since: datetime | None) -> str:
        fields = ", ".join(("Id", *self.watched, *self.extra, "SystemModstamp"))
        conditions = [c for c in (self.where, since and f"SystemModstamp >= {soql_time(since)}") if c]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return f"SELECT {fields} FROM {self.sobject}{where} ORDER BY SystemModstamp, Id"


STREAMS = (
    Stream("Opportunity", ("StageName",), ("IsWon", "IsClosed", "OwnerId")),
    Stream("Lead", ("OwnerId",), ("CreatedDate",), "IsConverted = false", created=True),
    Stream("Contact", ("OwnerId",)),
)


def soql_time(at: datetime) -> str:
    """A SOQL datetime literal, whole seconds rounded down (SOQL's documented form, YYYY-MM-DDThh:mm:ssZ)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime:
    """Salesforce's 2026-12-02T14:27:00.123+0000 as an aware datetime."""
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def event_id(record_id: str, field: str, value: str | None, modstamp: str) -> str:
    """The idempotency key of a change: record id + field + new value + SystemModstamp (hashed to fit)."""
    digest = hashlib.sha256(f"{value}\x00{modstamp}".encode()).hexdigest()[:16]
    return f"poll-{record_id}-{field}-{digest}"


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


# --- scheduling ----------------------------------------------------------------------------------------


def poll_all() -> int:
    """Cron: enqueue poll_org for every Salesforce tenant that is due; returns how many were enqueued."""
    settings = bootstrap.current()
    now = utcnow()
    due = []
    with db.transaction() as s:
        tenants = list(s.scalars(select(Tenant).where(Tenant.crm == PROVIDER, Tenant.crm_status == "ok")))
    for tenant in tenants:
        with db.transaction() as s:
            last = s.scalar(select(CrmPollCursor.polled_at).where(CrmPollCursor.tenant_id == tenant.id))
        if not_polling(tenant) is not None:
            if last is not None:
                forget(tenant.id)
            continue
        every = int(_options(tenant)["salesforce_poll_seconds"])
        if last is None or now - last >= timedelta(seconds=every):
            due.append(
                (tenant.id, str(int(last.timestamp())) if last else f"first-{int(now.timestamp()) // every}")
            )
    queued = 0
    for tenant_id, slot in due:  # one job per tenant and previous poll (RQ keeps finished jobs' ids a while)
        outcome = queue.try_enqueue(
            settings, poll_org, tenant_id, job_id=f"salesforce-poll-{tenant_id}-{slot}", unique=True
        )
        if outcome == "unavailable":
            break
        queued += outcome == "queued"
    return queued


def _options(tenant: Tenant) -> dict[str, Any]:
    return {**DEFAULTS, **(tenant.settings or {})}


def not_polling(tenant: Tenant) -> str | None:
    """Why the tenant's org is not polled (salesforce_poll off, or auto and a Flow reports its changes), or
    None."""
    mode = _options(tenant)["salesforce_poll"]
    if mode == "off":
        return "salesforce_poll is off"
    if mode == "auto" and _flow_reports_changes(tenant.id):
        return "a Flow sends Outbound Messages"
    return None


def _flow_reports_changes(tenant_id: int) -> bool:
    """Whether an Outbound Message (not one of our polled events) reached the tenant lately."""
    with db.transaction() as s:
        found = s.scalar(
            select(CrmEvent.id)
            .where(
                CrmEvent.tenant_id == tenant_id,
                CrmEvent.provider == PROVIDER,
                CrmEvent.received_at >= utcnow() - FLOW_RECENT,
                ~CrmEvent.event_id.startswith("poll-"),
            )
            .limit(1)
        )
    return found is not None


def forget(tenant_id: int) -> None:
    """Drop the tenant's cursors and remembered values: polling, when it starts again, begins with a
    baseline (not with every change made while it was off)."""
    with db.transaction() as s:
        s.execute(delete(CrmPollCursor).where(CrmPollCursor.tenant_id == tenant_id))
        s.execute(delete(CrmPollValue).where(CrmPollValue.tenant_id == tenant_id))


def poll_org(tenant_id: int) -> str:
    """The job: poll one org once (one at a time per org), unless the tenant turned polling off or a Flow
    reports its changes."""
    settings = bootstrap.current()
    with db.transaction() as s:
        tenant = s.get(Tenant, tenant_id)
    if tenant is None or tenant.crm != PROVIDER:
        return "gone"
    reason = not_polling(tenant)
    if reason is not None:
        forget(tenant_id)
        return f"not polling: {reason}"
    conn = redis_for(settings)
    lock = f"switchboard:salesforce:{tenant_id}:poll"
    if not conn.set(lock, "1", nx=True, ex=LOCK_TTL):
        return "busy"
    try:
        from connectors.salesforce.connector import SalesforceConnector

        counts = Poller(tenant, SalesforceConnector(tenant)).run()
    except (
        CrmError
    ) as exc:  # held by the budget guard, or Salesforce failed: the next poll goes on from the cursor
        log.warning("salesforce.poll_failed tenant=%s error=%s", tenant_id, str(exc)[:200])
        with db.transaction() as s:
            s.execute(
                update(CrmPollCursor).where(CrmPollCursor.tenant_id == tenant_id).values(polled_at=utcnow())
            )
        return f"failed: {type(exc).__name__}"
    finally:
        conn.delete(lock)
    log.info(
        "salesforce.poll tenant=%s read=%s events=%s",
        tenant_id,
        counts["read"],
        counts["events"],
    )
    return f"read {counts['read']}, {counts['events']} event(s)"


# --- one poll ------------------------------------------------------------------------------------------


class Poller:
    """One poll of one org through its connector (the connector's transport: budget guard, token refresh,
    Salesforce's errors as ours)."""

    def __init__(self, tenant: Tenant, connector: Any) -> None:
        self.tenant_id = tenant.id
        self.org = str(tenant.crm_account_id or "")
        self.connector = connector
        self.settings = bootstrap.current()
        self.counts = {"read": 0, "events": 0, "pages": 0}

    def run(self) -> dict[str, int]:
        """Poll every stream: the first pages in one Composite request, then each stream's next pages."""
        started = utcnow()
        cursors = self._cursors(started)
        first = self._first_pages([(st, cursors[st.sobject]) for st in STREAMS])
        for stream, page in zip(STREAMS, first, strict=True):
            cursor = cursors[stream.sobject]
            baseline = cursor.modstamp is None
            for n in range(MAX_PAGES):
                self._take(stream, cursor, page.get("records") or [], baseline)
                more = page.get("nextRecordsUrl")
                if page.get("done", True) or not more or n + 1 == MAX_PAGES:
                    break
                locator = str(more).rsplit("/query/", 1)[1]
                page = self.connector.call("GET", f"query/{locator}", urgent=False)
            if cursor.modstamp is None:  # an empty object: the baseline is done, start from when it began
                cursor.modstamp = cursor.baseline_at
        with db.transaction() as s:
            for cursor in cursors.values():
                row = s.get(CrmPollCursor, cursor.id)
                if row is not None:
                    row.polled_at = started
                    if row.modstamp is None:
                        row.modstamp = cursor.modstamp
        return self.counts

    def _cursors(self, now: datetime) -> dict[str, CrmPollCursor]:
        """The tenant's cursor per stream, created (a baseline, from `now`) where there is none."""
        with db.transaction() as s:
            rows = {
                c.stream: c
                for c in s.scalars(select(CrmPollCursor).where(CrmPollCursor.tenant_id == self.tenant_id))
            }
            for stream in STREAMS:
                if stream.sobject not in rows:
                    row = CrmPollCursor(tenant_id=self.tenant_id, stream=stream.sobject, baseline_at=now)
                    s.add(row)
                    rows[stream.sobject] = row
            s.flush()
        return rows

    def _first_pages(self, streams: list[tuple[Stream, CrmPollCursor]]) -> list[dict[str, Any]]:
        """The first page of each stream's query, all in one Composite request."""
        version = self.settings.salesforce_api_version
        requests = [
            {
                "method": "GET",
                "url": f"/services/data/v{version}/query/?"
                + urlencode({"q": st.soql(c.modstamp - OVERLAP if c.modstamp else None)}),
                "referenceId": st.sobject,
            }
            for st, c in streams
        ]
        answer = self.connector.call("POST", "composite/", body={"compositeRequest": requests}, urgent=False)
        pages = []
        for sub in answer.get("compositeResponse") or []:
            status, body = int(sub.get("httpStatusCode") or 0), sub.get("body")
            if status != 200:
                first = body[0] if isinstance(body, list) and body and isinstance(body[0], dict) else {}
                code = str(first.get("errorCode") or "")
                text = f"Salesforce HTTP {status} {code}: {first.get('message') or ''}"[:500]
                raise (RetryableError if code in RETRYABLE or status >= 500 else PermanentError)(text)
            pages.append(body or {})
        if len(pages) != len(streams):
            raise RetryableError("Salesforce Composite answered a different number of subrequests")
        return pages

    def _take(
        self, stream: Stream, cursor: CrmPollCursor, records: list[dict[str, Any]], baseline: bool
    ) -> None:
        """One page: store its changes as CRM events (and queue them), then remember the values and move the
        cursor, in that order."""
        if not records:
            return
        self.counts["read"] += len(records)
        self.counts["pages"] += 1
        seen = self._seen([r["Id"] for r in records], stream.watched)
        events: list[CrmEventIn] = []
        changed: dict[tuple[str, str], str | None] = {}
        for record in records:
            rid, stamp = str(record["Id"]), str(record.get("SystemModstamp") or "")
            new_record = not any((rid, f) in seen for f in stream.watched)
            for field in stream.watched:
                value = _text(record.get(field))
                if (rid, field) in seen and seen[(rid, field)] == value:
                    continue
                changed[(rid, field)] = value
                if not baseline and (rid, field) in seen:
                    events.append(self._change(stream, record, field, value, stamp))
            if stream.created and new_record and not baseline:
                created = record.get("CreatedDate")
                if created and parse_time(created) >= cursor.baseline_at - OVERLAP:
                    events.append(self._created(stream, record, stamp))
        if events:
            new = crm_events.record(PROVIDER, events)
            queue.queue_crm_events(self.settings, new)
            self.counts["events"] += len(new)
        last = records[-1]
        self._advance(cursor, changed, parse_time(last["SystemModstamp"]), str(last["Id"]))

    def _seen(self, ids: list[str], fields: Iterable[str]) -> dict[tuple[str, str], str | None]:
        out: dict[tuple[str, str], str | None] = {}
        with db.transaction() as s:
            for start in range(0, len(ids), VALUES_PER_QUERY):
                rows = s.execute(
                    select(CrmPollValue.object_id, CrmPollValue.field, CrmPollValue.value).where(
                        CrmPollValue.tenant_id == self.tenant_id,
                        CrmPollValue.object_id.in_(ids[start : start + VALUES_PER_QUERY]),
                        CrmPollValue.field.in_(list(fields)),
                    )
                )
                out.update({(oid, f): v for oid, f, v in rows})
        return out

    def _advance(
        self,
        cursor: CrmPollCursor,
        changed: dict[tuple[str, str], str | None],
        modstamp: datetime,
        last_id: str,
    ) -> None:
        """Remember the values seen and move the cursor forward (never back: the overlap re-reads older
        records), in one transaction, after the page's events committed."""
        with db.transaction() as s:
            ids = sorted({rid for rid, _ in changed})
            existing = {}
            for start in range(0, len(ids), VALUES_PER_QUERY):
                for row in s.scalars(
                    select(CrmPollValue).where(
                        CrmPollValue.tenant_id == self.tenant_id,
                        CrmPollValue.object_id.in_(ids[start : start + VALUES_PER_QUERY]),
                    )
                ):
                    existing[(row.object_id, row.field)] = row
            for (rid, field), value in changed.items():
                row = existing.get((rid, field))
                if row is None:
                    s.add(CrmPollValue(tenant_id=self.tenant_id, object_id=rid, field=field, value=value))
                else:
                    row.value = value
            row = s.get(CrmPollCursor, cursor.id)
            assert row is not None
            if row.modstamp is None or (modstamp, last_id) > (row.modstamp, row.last_id or ""):
                row.modstamp, row.last_id = modstamp, last_id
            cursor.modstamp, cursor.last_id = row.modstamp, row.last_id

    def _change(
        self, stream: Stream, record: dict[str, Any], field: str, value: str | None, stamp: str
    ) -> CrmEventIn:
        """A watched field changed: stored as the Outbound Message receiver stores it (webhooks.py)."""
        shown = value
        if field == "StageName":
            shown = stage_key(value, record.get("IsWon"), record.get("IsClosed"))
        return CrmEventIn(
            account=self.org,
            event_id=event_id(str(record["Id"]), field, value, stamp),
            event_type=f"{stream.sobject}.updated",
            object_type=stream.sobject,
            object_id=str(record["Id"]),
            property_name=field,
            property_value=shown or None,
            occurred_at=parse_time(stamp),
            payload={"sobject": stream.sobject, "polled": True, "fields": _fields(record)},
        )

    def _created(self, stream: Stream, record: dict[str, Any], stamp: str) -> CrmEventIn:
        return CrmEventIn(
            account=self.org,
            event_id=f"poll-{record['Id']}-created",
            event_type=f"{stream.sobject}.created",
            object_type=stream.sobject,
            object_id=str(record["Id"]),
            property_name=None,
            property_value=None,
            occurred_at=parse_time(record.get("CreatedDate") or stamp),
            payload={"sobject": stream.sobject, "polled": True, "fields": _fields(record)},
        )


def _fields(record: dict[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in record.items() if k != "attributes"}
