"""Automation jobs: turn triggers into planned steps (action_runs) and run each step exactly once.

on_interaction / on_crm_event / on_contact_created evaluate the tenant's rules (app.automation, the same
engine the dry run uses) and insert one action_runs row per planned step, unique on its key (rule,
trigger, step): duplicate webhooks, retried jobs and sweeps plan nothing twice. run_action claims a due
row atomically (scheduled -> running), checks `unless` and compliance (opt-outs, quiet hours), performs
the action with an idempotent write (CRM external id; for texts, a crash-safe check of Twilio's log), and
records the outcome on the row. A cancellation is the same kind of atomic transition, so a reply that
races the timer either cancels the text or finds it sent: never both, never neither.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import time
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
import requests
from rq import get_current_job
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from twilio.base.exceptions import TwilioRestException

import connectors
from app.automation import engine as automation
from app.automation import gate, rules
from app.automation.compliance import keyword
from app.automation.store import active_rules
from app.channels import email as email_channel
from app.channels import twilio as messaging
from app.core import bootstrap, db, ledger, mail, optouts, queue, tenants
from app.core.db import utcnow
from app.core.interactions import RECORDING_GRACE, settled
from app.core.models import ActionRun, CrmEvent, Interaction, RuleSet, Tenant, TenantNumber, User
from app.core.phones import pretty
from app.core.settings import Settings
from connectors import get_connector
from connectors.base import CrmError, CrmRef, Party, PermanentError, RetryableError, TaskSpec, Throttled
from webhooks.base import CrmEventReceiver

log = logging.getLogger(__name__)

SETTLE_RECHECK = timedelta(seconds=60)  # a call whose voicemail recording has not arrived yet
SETTLE_GIVE_UP = 10  # re-checks before we take the call as it is
SYNC_WAIT = timedelta(seconds=5)  # waiting for the sync job to match the contact
STUCK_RUNNING = timedelta(minutes=5)  # a step left running this long was interrupted
EARLY_WAKE_MAX = 30.0  # seconds a step's job woken before its due time sleeps instead of re-queueing
STEP_HORIZON = timedelta(seconds=60)  # the sweep checks the jobs of steps due within this (and overdue ones)
UNSEEN_GRACE = timedelta(seconds=5)  # the webhook's own automation job normally runs well within this
UNSEEN_LOOKBACK = timedelta(hours=1)  # older unseen versions are never swept: their triggers are stale


# --- rules of a tenant -------------------------------------------------------------------------------


# --- triggers ------------------------------------------------------------------------------------------


def _enqueue(func: Any, *args: Any, **options: Any) -> None:
    queue.enqueue(bootstrap.current(), func, *args, **options)


def on_interaction(interaction_id: int, attempt: int = 0) -> str:
    """Cancel what this interaction makes moot, then fire the rules its (settled) state triggers."""
    with db.transaction() as s:
        row = s.get(Interaction, interaction_id)
        if row is None:
            return "gone"
        data = ledger.snapshot(s, row)
        facts, tenant_id, sync_state, contact_id, seen = (
            row.facts or {},
            row.tenant_id,
            row.sync_state,
            row.crm_contact_id,
            row.version,
        )
    # STOP/START/HELP are compliance traffic, not a reply: they never cancel a step (opt-outs block texts).
    kind = (
        None
        if keyword(data.body) and data.channel == "sms"
        else automation.event_kind(data.channel, data.direction)
    )
    if kind and (data.party_phone or data.party_email):
        cancel_pending(
            tenant_id,
            data.party_phone,
            data.party_email,
            kind,
            data.occurred_at,
            f"interaction:{interaction_id}",
            thread_key=data.thread_key,
        )
    found = active_rules(tenant_id)
    if found is None:
        _saw(interaction_id, seen)
        return "no rules"
    now = utcnow()
    is_settled = settled(data.channel, facts, now) or attempt >= SETTLE_GIVE_UP
    if not is_settled:
        _look_again(interaction_id, attempt + 1, _settle_delay(data.channel, facts, now))
        return "waiting for the call to settle"
    kinds = automation.interaction_triggers(data, is_settled)
    if not kinds:
        _saw(interaction_id, seen)
        return "no trigger"
    if contact_id is None and sync_state == "pending" and attempt < SETTLE_GIVE_UP:
        _look_again(interaction_id, attempt + 1, SYNC_WAIT, "contact")
        return "waiting for the contact match"
    version, rule_set = found
    context = _context(
        tenant_id,
        rule_set,
        contact_id=contact_id,
        party_phone=data.party_phone,
        party_email=data.party_email,
        owner_id=data.owner_id,
        interaction=data,
    )
    triggers = [automation.trigger_from_interaction(k, data, context) for k in kinds]
    return f"planned {_plan(tenant_id, version, rule_set, triggers, seen=(interaction_id, seen))}"


def _saw(interaction_id: int, version: int, s: Session | None = None) -> None:
    """Record that the automations finished with this version of the interaction (never going back)."""
    mark = (
        update(Interaction)
        .where(Interaction.id == interaction_id, Interaction.automations_version < version)
        .values(automations_version=version)
    )
    if s is not None:
        s.execute(mark)
        return
    with db.transaction() as own:
        own.execute(mark)


def _look_again(interaction_id: int, attempt: int, delay: timedelta, why: str = "settle") -> None:
    """A delayed look at an interaction that is not ready; the sweep leaves the row to it meanwhile (and
    the sync runs it as soon as it matched the contact, for `why` "contact")."""
    queue.defer_automation(bootstrap.current(), on_interaction, interaction_id, attempt, delay, why)


def catch_up(tenant_id: int, since: str) -> str:
    """Run the automations for the tenant's interactions updated since `since` (ISO 8601): what processes
    answered from a cached "no rules" (or older rules) while a new version was being loaded. Safe to repeat:
    a step is planned once per rule, trigger and step."""
    if active_rules(tenant_id, fresh=True) is None:  # this worker's cache may be as old as a web process's
        return "no rules"
    start = datetime.fromisoformat(since)
    with db.transaction() as s:
        ids = list(
            s.scalars(
                select(Interaction.id)
                .where(Interaction.tenant_id == tenant_id, Interaction.updated_at >= start)
                .order_by(Interaction.id)
            )
        )
    for interaction_id in ids:
        on_interaction(interaction_id)
    return f"caught up {len(ids)}"


def _settle_delay(channel: str, facts: dict[str, Any], now: datetime) -> timedelta:
    """When to look again at an unsettled call: just after the grace for a late <Record> action if that is
    all we wait for (the caller hung up before the beep), else SETTLE_RECHECK."""
    ended_at = facts.get("ended_at")
    if ended_at:
        due = datetime.fromisoformat(ended_at) + RECORDING_GRACE
        if settled(channel, facts, due):
            return max(due - now, timedelta(seconds=1))
    return SETTLE_RECHECK


def on_contact_created(tenant_id: int, contact_id: str, phone: str | None, email: str | None, at: str) -> str:
    """A new contact (a new lead): contact.created and no_contact_within rules."""
    found = active_rules(tenant_id)
    if found is None:
        return "no rules"
    version, rule_set = found
    context = _context(tenant_id, rule_set, contact_id=contact_id, party_phone=phone, party_email=email)
    trigger = automation.Trigger(
        kind="contact.created",
        ref=f"contact:{contact_id}",
        at=datetime.fromisoformat(at),
        party_phone=phone,
        party_email=email,
        context=context,
    )
    return f"planned {schedule(tenant_id, version, rule_set, trigger)}"


def on_crm_event(crm_event_id: int) -> str:
    """A CRM change (deal stage, owner change, new contact), as the CRM's receiver names its trigger."""
    with db.transaction() as s:
        event = s.get(CrmEvent, crm_event_id)
        if event is None:
            return "gone"
        tenant_id, etype, object_id = event.tenant_id, event.event_type, event.object_id or ""
        prop, value, at, event_id = (
            event.property_name,
            event.property_value,
            event.occurred_at,
            event.event_id,
        )
        tenant = s.get(Tenant, tenant_id)
        kind = trigger_kind(event.provider, etype, prop)
    at = at or utcnow()
    found = active_rules(tenant_id)
    if found is None:
        _processed(crm_event_id)
        return "no rules"
    if kind == "contact.created":
        contact = get_connector(tenant).contact_info(CrmRef("contact", object_id))
        outcome = on_contact_created(
            tenant_id, object_id, contact.get("phone"), contact.get("email"), at.isoformat()
        )
        _processed(crm_event_id)
        return outcome
    version, rule_set = found
    ref = f"crm_event:{event_id}"
    if kind == "crm.deal_stage_changed":
        deal = get_connector(tenant).deal_context(object_id)
        context = _context(
            tenant_id, rule_set, contact_id=deal.get("contact_id"), owner_id=deal.get("owner_id"), deal=deal
        )
        trigger = automation.Trigger(
            kind="crm.deal_stage_changed",
            ref=ref,
            at=at,
            stage=value,
            party_phone=context["contact"].get("phone"),
            party_email=context["contact"].get("email"),
            context=context,
        )
    elif kind == "crm.owner_changed":
        context = _context(tenant_id, rule_set, contact_id=object_id, owner_id=value)
        trigger = automation.Trigger(
            kind="crm.owner_changed",
            ref=ref,
            at=at,
            party_phone=context["contact"].get("phone"),
            party_email=context["contact"].get("email"),
            context=context,
        )
    else:
        _processed(crm_event_id)
        return f"no trigger for {etype}"
    planned = schedule(tenant_id, version, rule_set, trigger)
    _processed(crm_event_id)
    return f"planned {planned}"


def trigger_kind(provider: str, event_type: str, property_name: str | None) -> str | None:
    """The normalized trigger of a stored CRM event (contact.created, crm.deal_stage_changed,
    crm.owner_changed), from the CRM's own receiver, so rules work the same on every CRM."""
    try:
        spec = connectors.provider(provider)
    except LookupError:
        return None
    if not spec.receiver:
        return None
    receiver: CrmEventReceiver = connectors.load(spec.receiver)
    return receiver.trigger_kind(event_type, property_name)


def _processed(crm_event_id: int) -> None:
    with db.transaction() as s:
        s.execute(update(CrmEvent).where(CrmEvent.id == crm_event_id).values(processed_at=utcnow()))


def _context(
    tenant_id: int,
    rule_set: rules.RuleSet,
    *,
    contact_id: str | None,
    party_phone: str | None = None,
    party_email: str | None = None,
    owner_id: str | None = None,
    interaction: Any = None,
    deal: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What templates and assignee rules see, captured when the trigger fires."""
    with db.transaction() as s:
        tenant = s.get(Tenant, tenant_id)
        assert tenant is not None
        name = tenant.name
    wanted = sorted(
        {
            a[4:]
            for r in rule_set.rules
            for st in r.actions
            if st.action == "create_task"
            for a in _assignees(st.create_task)
            if a.startswith("crm:")
        }
    )
    contact: dict[str, Any] = {
        "id": contact_id,
        "phone": party_phone,
        "email": party_email,
        "name": pretty(party_phone) if party_phone else (party_email or "unknown"),
        "first_name": None,
        "owner_id": None,
        "time_zone": None,
    }
    if contact_id:
        try:
            contact.update(
                {
                    k: v
                    for k, v in get_connector(tenant)
                    .contact_info(CrmRef("contact", contact_id), wanted)
                    .items()
                    if v is not None
                }
            )
        except CrmError as exc:
            log.info("automation.contact_unavailable tenant=%s error=%s", tenant_id, exc)
    owner_crm = owner_id or contact.get("owner_id")
    owner = _user_by_owner(tenant_id, owner_crm)
    crm_fields = {k: contact.get(k) for k in wanted}
    if deal:
        crm_fields.update({k: v for k, v in deal.items() if k in wanted and v})
    return {
        "tenant": {"name": name},
        "contact": contact,
        "owner": owner,
        "interaction": _interaction_view(interaction),
        "deal": deal or {},
        "recent": _recent(tenant_id, contact_id, party_phone),
        "crm_fields": crm_fields,
    }


def _assignees(task: Any) -> list[str]:
    return [task.assignee] if isinstance(task.assignee, str) else list(task.assignee)


def _user_by_owner(tenant_id: int, owner_id: str | None) -> dict[str, Any]:
    if not owner_id:
        return {"crm_owner_id": None, "name": None, "first_name": None, "email": None}
    with db.transaction() as s:
        user = s.scalar(select(User).where(User.tenant_id == tenant_id, User.crm_owner_id == owner_id))
    if user is None:
        return {"crm_owner_id": owner_id, "name": None, "first_name": None, "email": None}
    return {
        "crm_owner_id": owner_id,
        "name": user.name,
        "first_name": user.name.split(" ")[0],
        "email": user.email,
    }


def _interaction_view(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    return {
        "id": data.id,
        "channel": data.channel,
        "direction": data.direction,
        "status": data.status,
        "duration_seconds": data.duration_seconds,
        "body": data.body,
        "recording_url": data.recording_url,
        "error_code": data.error_code,
        "our_number": data.our_number,
    }


def _recent(tenant_id: int, contact_id: str | None, phone: str | None, limit: int = 5) -> list[str]:
    """One line per recent interaction with the contact, newest first (for briefings)."""
    if not contact_id and not phone:
        return []
    with db.transaction() as s:
        query = select(Interaction).where(Interaction.tenant_id == tenant_id)
        query = (
            query.where(Interaction.crm_contact_id == contact_id)
            if contact_id
            else query.where(Interaction.party_phone == phone)
        )
        rows = s.scalars(query.order_by(Interaction.occurred_at.desc()).limit(limit))
        return [
            f"{r.occurred_at:%Y-%m-%d %H:%M} {r.direction or ''} {r.channel} {r.status}".replace("  ", " ")
            for r in rows
        ]


# --- planning ------------------------------------------------------------------------------------------


def schedule(tenant_id: int, version: int, rule_set: rules.RuleSet, trigger: automation.Trigger) -> int:
    """Insert the steps the rules plan for a trigger (once each, by key) and queue the due ones."""
    return _plan(tenant_id, version, rule_set, [trigger])


def _plan(
    tenant_id: int,
    version: int,
    rule_set: rules.RuleSet,
    triggers: list[automation.Trigger],
    seen: tuple[int, int] | None = None,
) -> int:
    """Insert the triggers' steps in one transaction, each once by its key (INSERT ... ON CONFLICT DO
    NOTHING: a duplicate webhook, a retried job, a sweep or a second plan racing this one adds nothing),
    with the interaction's marker `seen` = (id, version) when given; then queue them under fixed ids."""
    values = [
        {
            "tenant_id": tenant_id,
            "key": step.key,
            "rule": step.rule,
            "rules_version": version,
            "trigger": trigger.kind,
            "trigger_ref": trigger.ref,
            "trigger_at": trigger.at,
            "step": step.step,
            "action": step.action,
            "party_phone": trigger.party_phone,
            "party_email": trigger.party_email,
            "state": "scheduled",
            "due_at": step.due_at,
            "context": {
                "spec": step.spec,
                "unless": list(step.unless),
                "template": trigger.context,
                **({"thread": trigger.thread_key} if automation.REPLY_IN_THREAD in step.unless else {}),
            },
        }
        for trigger in triggers
        for decision in automation.evaluate(rule_set, trigger)
        if decision.fires
        for step in decision.steps
    ]
    created: list[tuple[int, datetime]] = []
    with db.transaction() as s:
        for row in values:
            insert = _insert(s)(ActionRun.__table__).values(**row)
            run_id = s.scalar(
                insert.on_conflict_do_nothing(index_elements=["tenant_id", "key"]).returning(ActionRun.id)
            )
            if run_id is not None:
                created.append((run_id, row["due_at"]))
        if seen is not None:
            _saw(*seen, s=s)
    _enqueue_runs([(run_id, 0, due) for run_id, due in created])
    if created:
        kinds = ",".join(sorted({t.kind for t in triggers}))
        log.info("automation.planned tenant=%s trigger=%s steps=%s", tenant_id, kinds, len(created))
    return len(created)


def _insert(s: Session) -> Any:
    """The backend's INSERT (both have ON CONFLICT DO NOTHING ... RETURNING)."""
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def step_job_id(run_id: int, attempts: int, due: datetime) -> str:
    """`step-<run>-<attempts>-<due epoch>`: the one job that runs this attempt of the step at this time.
    The sweeper derives it from the row, so it restores a job Redis lost at once, and never adds a
    second one while the first waits."""
    return f"step-{run_id}-{attempts}-{math.ceil(due.timestamp())}"


def _enqueue_run(run_id: int, attempts: int, due: datetime) -> None:
    _enqueue_runs([(run_id, attempts, due)])


def _enqueue_runs(runs: list[tuple[int, int, datetime]]) -> int:
    """Queue steps (run id, attempts so far, due) under their fixed ids: at their due time, or now, at the
    front of the queue (a timer is late already when it waits behind a burst of webhook jobs)."""
    jobs = [
        queue.FixedJob(
            step_job_id(run_id, attempts, due),
            run_action,
            (run_id,),
            at=due,
            description=f"step {run_id}",
            at_front=True,  # due now: ahead of the webhooks' jobs
        )
        for run_id, attempts, due in runs
    ]
    return queue.ensure_jobs(bootstrap.current(), jobs)


def cancel_pending(
    tenant_id: int,
    phone: str | None,
    email: str | None,
    kind: str,
    at: datetime,
    ref: str,
    thread_key: str | None = None,
) -> int:
    """Cancel scheduled steps for this party whose `unless` names what just happened (after their trigger);
    an inbound email also cancels the steps waiting for a reply in its thread (email.no_reply_within)."""
    party = ActionRun.party_phone == phone if phone else ActionRun.party_email == email
    with db.transaction() as s:
        candidates = list(
            s.scalars(
                select(ActionRun).where(
                    ActionRun.tenant_id == tenant_id,
                    ActionRun.state == "scheduled",
                    party,
                    ActionRun.trigger_ref != ref,
                )
            )
        )
        matched = [
            (r.id, why)
            for r in candidates
            if r.trigger_at < at and (why := _cancelled_by(r.context or {}, kind, thread_key))
        ]
    cancelled = 0
    for run_id, why in matched:
        cancelled += _transition(run_id, "scheduled", "canceled", reason=f"{why} ({ref}) first")
    return cancelled


def _cancelled_by(context: dict[str, Any], kind: str, thread_key: str | None) -> str | None:
    """What of the event cancels a step with this context ('inbound sms', 'email reply in thread'), if any."""
    unless = context.get("unless", [])
    if kind in unless:
        return kind.replace("_", " ")
    in_thread = thread_key is not None and context.get("thread") == thread_key
    if kind == "inbound_email" and automation.REPLY_IN_THREAD in unless and in_thread:
        return automation.REPLY_IN_THREAD.replace("_", " ")
    return None


def resolved_email_step(tenant_id: int, switchboard_id: str, *, sent: bool) -> int | None:
    """After `switchboard email resolve`: the send_email step that failed on that email ("may have been
    sent") is done (sent), or scheduled again now (resend: app.channels.email.resolve closed its attempts,
    so the step's next send goes out). Its id, or None when no step sent that email."""
    with db.transaction() as s:
        failed = s.scalars(
            select(ActionRun).where(
                ActionRun.tenant_id == tenant_id,
                ActionRun.action == "send_email",
                ActionRun.state == "failed",
            )
        )
        run = next((r for r in failed if email_channel.id_for(tenant_id, r.key) == switchboard_id), None)
        if run is None:
            return None
        run_id, attempts = run.id, run.attempts
    if sent:
        result = {"switchboard_id": switchboard_id, "resolved": "sent"}
        _transition(run_id, "failed", "done", result=result, reason="resolved as sent by an operator")
        return run_id
    now = utcnow()
    if _transition(run_id, "failed", "scheduled", due_at=now, reason="resend, resolved by an operator"):
        _enqueue_run(run_id, attempts, now)
    return run_id


def _transition(run_id: int, from_state: str, to_state: str, **values: Any) -> int:
    """Move a step between states atomically; 0 if someone else moved it first."""
    with db.transaction() as s:
        result = s.execute(
            update(ActionRun)
            .where(ActionRun.id == run_id, ActionRun.state == from_state)
            .values(state=to_state, updated_at=utcnow(), **values)
        )
        return int(result.rowcount or 0)


# --- running a step ------------------------------------------------------------------------------------


class _Retry(Exception):
    """A step that failed in a way worth trying again: not before `retry_after` seconds when the provider
    said so; `throttled` (a 429) does not use up the step's retries, as in the CRM sync (jobs.sync)."""

    def __init__(self, message: str, retry_after: float | None = None, throttled: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.throttled = throttled


def run_action(run_id: int) -> str:
    """Run one planned step if it is due and still wanted; exactly once."""
    settings = bootstrap.current()
    with db.transaction() as s:
        run = s.get(ActionRun, run_id)
        if run is None:
            return "gone"
        if run.state != "scheduled":
            return run.state
        attempts, due = run.attempts, run.due_at
    wait = (due - utcnow()).total_seconds()
    if wait > 0:
        job = get_current_job()
        if job is None or job.id != step_job_id(run_id, attempts, due):
            _enqueue_run(run_id, attempts, due)  # an older job of a step rescheduled since: a no-op if the
            return "not due"  # step's own job waits, else it restores it
        if wait > EARLY_WAKE_MAX:
            return "not due"  # far too early (clock skew): the sweep replaces this job's record in time
        time.sleep(wait)  # woken a little early by the scheduler's clock: wait here
    with db.transaction() as s:
        claimed = s.execute(
            update(ActionRun)
            .where(ActionRun.id == run_id, ActionRun.state == "scheduled")
            .values(state="running", attempts=ActionRun.attempts + 1, updated_at=utcnow())
        ).rowcount
        run = s.get(ActionRun, run_id)
        s.expunge(run)
    if not claimed:
        return "taken"
    verdict = _gate(run)
    if verdict.outcome == "cancel":
        _transition(run_id, "running", "canceled", reason=verdict.reason)
        return "canceled"
    if verdict.outcome == "skip":
        _transition(run_id, "running", "skipped", result={}, reason=verdict.reason)
        log.info(
            "automation.skipped rule=%s action=%s run=%s reason=%s",
            run.rule,
            run.action,
            run_id,
            verdict.reason,
        )
        return "skipped"
    if verdict.outcome == "hold":
        assert verdict.until is not None
        _transition(run_id, "running", "scheduled", due_at=verdict.until, reason=verdict.reason)
        _enqueue_run(run_id, run.attempts, verdict.until)
        return "rescheduled"
    try:
        outcome, result, reason = _perform(run, settings)
    except _Retry as exc:
        return _retry(run, settings, str(exc), exc.retry_after, exc.throttled)
    except PermanentError as exc:
        _transition(run_id, "running", "failed", reason=str(exc)[:2000])
        return "failed"
    except RetryableError as exc:  # Throttled: the CRM's Retry-After (connectors/base.py)
        return _retry(run, settings, str(exc), exc.retry_after, isinstance(exc, Throttled))
    except CrmError as exc:
        return _retry(run, settings, str(exc))
    if outcome == "reschedule":
        _transition(run_id, "running", "scheduled", due_at=result["due_at"], reason=reason)
        _enqueue_run(run_id, run.attempts, result["due_at"])
        return "rescheduled"
    _transition(
        run_id, "running", outcome, result={k: v for k, v in result.items() if k != "due_at"}, reason=reason
    )
    log.info("automation.%s rule=%s action=%s run=%s", outcome, run.rule, run.action, run_id)
    return outcome


def _retry(
    run: ActionRun, settings: Settings, reason: str, retry_after: float | None = None, throttled: bool = False
) -> str:
    """Schedule the step again after our next retry interval, or the provider's Retry-After if longer; a
    step only throttled (429) is never given up on for it, and waits the Retry-After (else our interval)."""
    intervals = settings.job_retry_intervals
    if run.attempts > len(intervals) and not throttled:
        _transition(
            run.id, "running", "failed", reason=f"gave up after {run.attempts} attempts: {reason}"[:2000]
        )
        return "failed"
    delay = float(intervals[min(run.attempts, len(intervals)) - 1]) if intervals else 0.0
    if retry_after is not None:
        delay = retry_after if throttled else max(delay, retry_after)
    due = utcnow() + timedelta(seconds=delay)
    _transition(run.id, "running", "scheduled", due_at=due, reason=f"retrying: {reason}"[:2000])
    _enqueue_run(run.id, run.attempts, due)
    return "retrying"


def _gate(run: ActionRun) -> gate.Verdict:
    """The shared step gate (app.automation.gate), fed from the ledger."""
    unless = set((run.context or {}).get("unless", []))
    template = (run.context or {}).get("template", {})
    rule_set = (active_rules(run.tenant_id) or (0, rules.RuleSet()))[1]
    needs_consent = run.action == "send_sms" and run.party_phone
    to_email = email_channel.recipient(run.party_email, template) if run.action == "send_email" else None
    return gate.check(
        run.action,
        unless=unless,
        happened=_happened(run) if unless else [],
        party_phone=run.party_phone,
        opted_out=bool(needs_consent and optouts.is_opted_out(run.tenant_id, run.party_phone or "")),
        contact_time_zone=template.get("contact", {}).get("time_zone"),
        rules=rule_set.settings,
        now=utcnow(),
        party_email=to_email,
        email_opt_out=mail.opted_out(run.tenant_id, to_email) if to_email else None,
    )


def _happened(run: ActionRun) -> list[gate.Happened]:
    """What happened with the step's party after its trigger (texts that are STOP/START/HELP don't count)."""
    if not (run.party_phone or run.party_email):
        return []
    party = (
        Interaction.party_phone == run.party_phone
        if run.party_phone
        else (Interaction.party_email == run.party_email)
    )
    out = []
    with db.transaction() as s:
        rows = s.execute(
            select(
                Interaction.id,
                Interaction.channel,
                Interaction.direction,
                Interaction.body,
                Interaction.thread_key,
            )
            .where(Interaction.tenant_id == run.tenant_id, party, Interaction.occurred_at > run.trigger_at)
            .order_by(Interaction.id)
        )
        thread = (run.context or {}).get("thread")
        for interaction_id, channel, direction, body, thread_key in rows:
            kind = None if channel == "sms" and keyword(body) else automation.event_kind(channel, direction)
            ref = f"interaction:{interaction_id}"
            if kind and ref != run.trigger_ref:
                out.append(gate.Happened(kind, ref))
                if kind == "inbound_email" and thread and thread_key == thread:
                    out.append(gate.Happened(automation.REPLY_IN_THREAD, ref))
    return out


def _perform(run: ActionRun, settings: Settings) -> tuple[str, dict[str, Any], str | None]:
    spec = (run.context or {}).get("spec", {})
    template = (run.context or {}).get("template", {})
    with db.transaction() as s:
        tenant = s.get(Tenant, run.tenant_id)
        assert tenant is not None
        s.expunge(tenant)
    if run.action == "send_sms":
        return _send_sms(run, tenant, settings, spec, template)
    if run.action == "send_email":  # exactly once by the step's key: app/channels/email.py
        try:
            return email_channel.run_step(
                tenant, settings, key=run.key, party_email=run.party_email, spec=spec, template=template
            )
        except email_channel.Unavailable as exc:  # 429 / 5xx with their Retry-After, or no answer
            raise _Retry(str(exc), exc.retry_after, throttled=exc.status == 429) from None
    if run.action == "create_task":
        return _create_task(run, tenant, spec, template)
    if run.action == "update_crm":
        contact_id = template.get("contact", {}).get("id")
        if not contact_id:
            return "skipped", {}, "no CRM contact to update"
        value = rules.render(spec["value"], template) if isinstance(spec["value"], str) else spec["value"]
        get_connector(tenant).update_contact(CrmRef("contact", contact_id), {spec["property"]: value})
        return "done", {"property": spec["property"], "value": value}, None
    if run.action == "notify":
        return _notify(run, spec, template)
    raise PermanentError(f"unknown action {run.action}")


def _send_sms(
    run: ActionRun, tenant: Tenant, settings: Settings, spec: dict[str, Any], template: dict[str, Any]
) -> tuple[str, dict[str, Any], str | None]:
    to = run.party_phone
    assert to  # the gate skipped a text with no number
    body = rules.render(spec["body"], template)
    from_ = choose_from_number(run.tenant_id, to, template.get("interaction", {}).get("our_number"))
    if from_ is None:
        return "failed", {}, "the tenant has no phone number to text from"
    if run.attempts > 1:  # an earlier attempt may have reached Twilio before the worker died
        sid = _already_sent(tenant, settings, to=to, from_=from_, body=body, since=run.created_at)
        if sid:
            return "done", {"sid": sid, "from": from_, "recovered": True}, None
    try:
        sid = messaging.send_sms(tenant, settings, to=to, from_=from_, body=body)
    except TwilioRestException as exc:
        code = messaging.error_code(exc)
        if code == messaging.OPTED_OUT:  # https://www.twilio.com/docs/errors/21610
            optouts.set_opt_out(run.tenant_id, to, True, "21610")
            _enqueue(sync_opt_out, run.tenant_id, to)
            return "skipped", {}, "recipient opted out of texts (Twilio error 21610)"
        if code in messaging.PERMANENT_CODES or (
            exc.status and 400 <= exc.status < 500 and exc.status != 429
        ):
            return "failed", {"error_code": code}, f"Twilio error {code}: {exc.msg}"[:500]
        raise _Retry(f"Twilio HTTP {exc.status} error {code}") from None
    except requests.RequestException as exc:
        raise _Retry(f"Twilio unreachable: {type(exc).__name__}") from None
    return "done", {"sid": sid, "from": from_}, None


def _already_sent(
    tenant: Tenant, settings: Settings, *, to: str, from_: str, body: str, since: datetime
) -> str | None:
    """A text with this body to this number since the step was planned, per Twilio's own log."""
    try:
        sent = messaging.client_for(tenant, settings).messages.list(
            to=to, from_=from_, date_sent_after=since, limit=50
        )
    except (TwilioRestException, requests.RequestException):
        raise _Retry("cannot check Twilio for an earlier attempt") from None
    match = next((m for m in sent if m.body == body), None)
    if match is not None:
        messaging.record_sent(
            tenant, settings, sid=match.sid, to=to, from_=from_, body=body, status=match.status or "sent"
        )
        return str(match.sid)
    return None


def choose_from_number(
    tenant_id: int, to: str, used: str | None, reply_from: str | None = None
) -> str | None:
    """The number a text comes from. A step triggered by a conversation (`used`: the tenant number the
    customer called or texted, or the one a rep used) replies from that number, unless the rules say
    `reply_from: local`; outreach with no conversation (contact.created, CRM triggers), and `local`, use the
    tenant number local to the contact (same country and area code), else the conversation's, else the
    first one."""
    with db.transaction() as s:
        numbers = list(
            s.scalars(
                select(TenantNumber.e164).where(TenantNumber.tenant_id == tenant_id).order_by(TenantNumber.id)
            )
        )
    if not numbers:
        return None
    if used in numbers and (reply_from or _reply_from(tenant_id)) != "local":
        return used
    target = _area(to)
    local = [n for n in numbers if target is not None and _area(n) == target]
    if local:
        return local[0]
    return used if used in numbers else numbers[0]


def _reply_from(tenant_id: int) -> str:
    """The rules' `reply_from` setting: called (the default) or local."""
    found = active_rules(tenant_id)
    return found[1].settings.reply_from if found else "called"


def _area(e164: str) -> tuple[int, str] | None:
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    national = str(parsed.national_number)
    length = phonenumbers.length_of_geographical_area_code(parsed) or (3 if parsed.country_code == 1 else 0)
    return (parsed.country_code, national[:length]) if length else None


def _create_task(
    run: ActionRun, tenant: Tenant, spec: dict[str, Any], template: dict[str, Any]
) -> tuple[str, dict[str, Any], str | None]:
    owner, why = resolve_assignee(run.tenant_id, spec.get("assignee", "owner"), template)
    subject = rules.render(spec["subject"], template)
    body = rules.render(spec["body"], template) if spec.get("body") else None
    due = utcnow() + rules.parse_duration(spec.get("due_in", "1h"))
    contact_id = template.get("contact", {}).get("id")
    ref = get_connector(tenant).create_task(
        CrmRef("contact", contact_id) if contact_id else None,
        TaskSpec(
            subject=subject,
            body=body,
            due_at=due,
            assignee_owner_id=owner,
            priority=spec.get("priority", "normal"),
        ),
        external_id=f"switchboard-action-{run.tenant_id}-{run.id}",
    )
    return "done", {"task_id": ref.id, "assignee": owner}, why


def resolve_assignee(
    tenant_id: int, assignee: str | list[str], template: dict[str, Any]
) -> tuple[str | None, str]:
    """The CRM owner id a task goes to, and how it was chosen (first option of the list that resolves)."""
    for option in [assignee] if isinstance(assignee, str) else assignee:
        if option == "owner":
            owner = template.get("owner", {}).get("crm_owner_id") or template.get("contact", {}).get(
                "owner_id"
            )
            if owner:
                return str(owner), "assigned to the contact's owner"
        elif option.startswith("user:"):
            with db.transaction() as s:
                user = s.scalar(
                    select(User).where(User.tenant_id == tenant_id, User.email == option[5:].lower())
                )
            if user is not None and user.crm_owner_id:
                return user.crm_owner_id, f"assigned to {user.email}"
        elif option.startswith("team:"):
            user = tenants.next_in_team(tenant_id, option[5:])
            if user is not None and user.crm_owner_id:
                return user.crm_owner_id, f"round-robin over team {option[5:]}: {user.email}"
        elif option.startswith("crm:"):
            value = template.get("crm_fields", {}).get(option[4:])
            if value:
                return str(value), f"assigned from the CRM field {option[4:]}"
    return None, "no assignee could be resolved; the task is unassigned"


def _notify(
    run: ActionRun, spec: dict[str, Any], template: dict[str, Any]
) -> tuple[str, dict[str, Any], str | None]:
    """POST the trigger, signed like Stripe's webhooks: t=<unix>,v1=HMAC-SHA256(secret, t + '.' + body)."""
    body = json.dumps(
        {
            "rule": run.rule,
            "trigger": run.trigger,
            "ref": run.trigger_ref,
            "at": run.trigger_at.isoformat(),
            "contact": template.get("contact"),
            "owner": template.get("owner"),
            "interaction": template.get("interaction"),
            "deal": template.get("deal"),
        },
        default=str,
    )
    headers = {"Content-Type": "application/json", "Idempotency-Key": run.key, "User-Agent": "Switchboard"}
    if spec.get("secret"):
        stamp = str(int(time.time()))
        digest = hmac.new(spec["secret"].encode(), f"{stamp}.{body}".encode(), hashlib.sha256).hexdigest()
        headers["X-Switchboard-Signature"] = f"t={stamp},v1={digest}"
    try:
        with requests.Session() as http:
            http.trust_env = False
            response = http.post(spec["url"], data=body, headers=headers, timeout=10)
    except requests.RequestException as exc:
        raise _Retry(f"notify: {type(exc).__name__}") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise _Retry(f"notify: HTTP {response.status_code}")
    if response.status_code >= 400:
        return "failed", {"status": response.status_code}, f"notify: HTTP {response.status_code}"
    return "done", {"status": response.status_code}, None


# --- compliance mirror and upkeep ------------------------------------------------------------------------


def sync_opt_out(tenant_id: int, phone: str) -> str:
    """Write the number's opt-out state to its CRM contact (a field our connectors know)."""
    with db.transaction() as s:
        tenant = s.get(Tenant, tenant_id)
        assert tenant is not None
        s.expunge(tenant)
    connector = get_connector(tenant)
    match = connector.find_contact(Party(phone=phone))
    if match is None:
        return "no contact"
    field = getattr(connector, "OPT_OUT_FIELD", "sms_opt_out")
    connector.update_contact(match.ref, {field: optouts.is_opted_out(tenant_id, phone)})
    return "written"


def sweep_crm_events() -> int:
    """Re-queue CRM events the automations never saw (Redis was down when the webhook arrived)."""
    cutoff = utcnow() - timedelta(seconds=60)
    with db.transaction() as s:
        ids = list(
            s.scalars(
                select(CrmEvent.id)
                .where(CrmEvent.processed_at.is_(None), CrmEvent.received_at < cutoff)
                .limit(500)
            )
        )
    for event_id in ids:
        _enqueue(on_crm_event, event_id)
    return len(ids)


def sweep_automations() -> int:
    """What the scheduler's lease holder and `jobs.cron` queue every few seconds (job id
    AUTOMATION_SWEEP_JOB): restore the step jobs and the automation jobs Redis lost."""
    return sweep_actions() + sweep_interactions()


def sweep_interactions() -> int:
    """Re-queue the automations of interactions whose newest version they have not seen (the webhook's
    job was lost with Redis's data); rows of tenants without rules are marked seen (nothing to plan)."""
    now = utcnow()
    unseen = (
        Interaction.automations_version < Interaction.version,
        Interaction.updated_at < now - UNSEEN_GRACE,
        Interaction.updated_at >= now - UNSEEN_LOOKBACK,
    )
    with_rules = select(RuleSet.tenant_id).distinct()
    with db.transaction() as s:
        # A bounded batch, skipping rows a drain holds (PostgreSQL; SQLite serializes writers anyway): the
        # marking never makes the sync wait; what it leaves, the next sweep marks.
        idle = (
            select(Interaction.id)
            .where(*unseen, Interaction.tenant_id.not_in(with_rules))
            .limit(2000)
            .with_for_update(skip_locked=True)
        )
        s.execute(
            update(Interaction)
            .where(Interaction.id.in_(idle.scalar_subquery()))
            .values(automations_version=Interaction.version)
            .execution_options(synchronize_session=False)
        )
        rows = s.execute(
            select(Interaction.id, Interaction.version, Interaction.tenant_id, Interaction.sync_state)
            .where(*unseen, Interaction.tenant_id.in_(with_rules))
            .order_by(Interaction.updated_at)
            .limit(500)
        ).all()
    settings = bootstrap.current()
    # The same webhooks' sync triggers were probably lost too, and the automations wait for the contact
    # match: (re)trigger those tenants' drains first, so they run before the automation jobs.
    for tenant_id in sorted({r.tenant_id for r in rows if r.sync_state == "pending"}):
        queue.trigger_tenant(settings, tenant_id, check=True)
    queued = queue.requeue_automations(settings, [(r.id, r.version) for r in rows])
    if queued:
        log.info("sweep.automations_requeued count=%s", queued)
    return queued


def sweep_actions() -> int:
    """Put back the jobs of scheduled steps Redis lost (each under its fixed id: at once, and never a second
    one), and recover steps a dead worker left running."""
    now = utcnow()
    with db.transaction() as s:
        due = s.execute(
            select(ActionRun.id, ActionRun.attempts, ActionRun.due_at)
            .where(ActionRun.state == "scheduled", ActionRun.due_at < now + STEP_HORIZON)
            .order_by(ActionRun.due_at)
            .limit(1000)
        ).all()
        stuck = list(
            s.scalars(
                select(ActionRun.id)
                .where(ActionRun.state == "running", ActionRun.updated_at < now - STUCK_RUNNING)
                .limit(500)
            )
        )
    restored = _enqueue_runs([(r.id, r.attempts, r.due_at) for r in due])
    for run_id in stuck:  # its next attempt first checks Twilio for a text that did go out
        if _transition(run_id, "running", "scheduled", reason="recovered after an interrupted attempt"):
            with db.transaction() as s:
                run = s.get(ActionRun, run_id)
                if run is not None:
                    restored += _enqueue_runs([(run.id, run.attempts, run.due_at)])
    if restored:
        log.info("sweep.steps_restored count=%s", restored)
    return restored
