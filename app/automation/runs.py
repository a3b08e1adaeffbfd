"""Automation steps as people see them: list, show and cancel planned steps (action_runs rows).

Shared by the read API (app/web/api.py) and the CLI (`switchboard automations`); provider-neutral, no web
framework. A step's view names its rule, its position in the rule (1-based, counting waits, as the dry run
prints it), the action, its state (scheduled, running, done, skipped, canceled, failed), when it is or
was due, why it ended as it did, and what fired it (the trigger and the party).

Cancelling is the same atomic transition the worker uses (jobs/automations.py: UPDATE ... WHERE state =
'scheduled'), so a cancel racing the timer either cancels the step or finds it already running or done:
never both. The queued job of a cancelled step finds it no longer scheduled and does nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core import db
from app.core.db import utcnow
from app.core.models import ActionRun

STATES = ("scheduled", "running", "done", "skipped", "canceled", "failed")
MAX_ID = 2**63 - 1  # action_runs.id is a BIGINT: larger ids cannot exist


class StepError(LookupError):
    """A step that cannot be shown or cancelled; the message says why, in one line."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def view(run: ActionRun) -> dict[str, Any]:
    """The public shape of a step."""
    return {
        "id": run.id,
        "rule": run.rule,
        "rules_version": run.rules_version,
        "step": run.step + 1,
        "action": run.action,
        "state": run.state,
        "due_at": _iso(run.due_at),
        "reason": run.reason,
        "attempts": run.attempts,
        "result": run.result or {},
        "trigger": {"kind": run.trigger, "ref": run.trigger_ref, "at": _iso(run.trigger_at)},
        "party": {"phone": run.party_phone, "email": run.party_email},
        "created_at": _iso(run.created_at),
        "updated_at": _iso(run.updated_at),
    }


def list_steps(
    tenant_id: int,
    *,
    state: str | None = None,
    rule: str | None = None,
    limit: int = 50,
    before: int | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """The tenant's steps, newest first, optionally of one state and rule; `before` is the cursor (a step
    id) of the next page. Returns (steps, cursor of the page after, or None)."""
    if state is not None and state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    query = select(ActionRun).where(ActionRun.tenant_id == tenant_id)
    if state is not None:
        query = query.where(ActionRun.state == state)
    if rule is not None:
        query = query.where(ActionRun.rule == rule)
    if before is not None:
        query = query.where(ActionRun.id < min(before, MAX_ID))
    with db.transaction() as s:
        rows = list(s.scalars(query.order_by(ActionRun.id.desc()).limit(limit + 1)))
        page = [view(r) for r in rows[:limit]]
    return page, (page[-1]["id"] if len(rows) > limit and page else None)


def steps_for(s: Session, tenant_id: int, trigger_ref: str) -> list[dict[str, Any]]:
    """The steps a trigger (e.g. interaction:12) planned, in plan order, in the caller's transaction."""
    rows = s.scalars(
        select(ActionRun)
        .where(ActionRun.tenant_id == tenant_id, ActionRun.trigger_ref == trigger_ref)
        .order_by(ActionRun.id)
    )
    return [view(r) for r in rows]


def _get(s: Session, run_id: int, tenant_id: int | None) -> ActionRun | None:
    run = s.get(ActionRun, run_id) if 0 < run_id <= MAX_ID else None
    if run is None or (tenant_id is not None and run.tenant_id != tenant_id):
        return None
    return run


def show(run_id: int, tenant_id: int | None = None) -> dict[str, Any]:
    """One step (of the tenant, when given); StepError if there is no such step."""
    with db.transaction() as s:
        run = _get(s, run_id, tenant_id)
        if run is None:
            raise StepError(f"no automation step {run_id}")
        return view(run)


def cancel(run_id: int, who: str, tenant_id: int | None = None) -> dict[str, Any]:
    """Cancel a scheduled step (reason "canceled by <who>") and return it; StepError if there is no such
    step or it is no longer scheduled (running, done ...: too late to cancel)."""
    show(run_id, tenant_id)
    with db.transaction() as s:
        changed = s.execute(
            update(ActionRun)
            .where(ActionRun.id == run_id, ActionRun.state == "scheduled")
            .values(state="canceled", reason=f"canceled by {who}", updated_at=utcnow())
        ).rowcount
    step = show(run_id, tenant_id)
    if not changed:
        raise StepError(f"automation step {run_id} is {step['state']}: only a scheduled step can be canceled")
    return step


def describe(step: dict[str, Any]) -> str:
    """A step on one line (the CLI's output)."""
    party = step["party"]["phone"] or step["party"]["email"] or "-"
    line = (
        f"{step['id']} {step['state']} {step['rule']} step {step['step']} {step['action']}"
        f" due {step['due_at']} {step['trigger']['kind']} {step['trigger']['ref']} {party}"
    )
    return f"{line}: {step['reason']}" if step["reason"] else line
