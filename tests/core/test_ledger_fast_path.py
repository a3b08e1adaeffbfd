"""The ledger's PostgreSQL hot path (app/core/ledger_pg.py) and the cases it hands to the locked path.

A later callback whose compare-and-set loses to a concurrent delivery still folds both facts; an event
key already recorded for an interaction since deleted stays a duplicate and creates nothing; a callback
that adds nothing links its event without a new version. Real PostgreSQL connections and threads.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from app.core import db, ledger, ledger_pg
from app.core.interactions import Event
from app.core.models import Interaction, Tenant, WebhookEvent
from tests.signing import fixture_params
from webhooks.twilio import parse_form


def _event(stream: str, fixture: str, **changes: str) -> Event:
    form = {**fixture_params(fixture), **changes}
    return parse_form(stream, "", form, {k: [v] for k, v in form.items()})


def _count(model: Any, *where: Any) -> int:
    with db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _row(call: str) -> Interaction:
    with db.transaction() as s:
        row = s.scalar(select(Interaction).where(Interaction.provider_id == call))
        assert row is not None
        return row


def test_a_compare_and_set_lost_to_a_concurrent_callback_still_folds_both(
    tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the compare-and-set path is PostgreSQL's; SQLite serializes writers (BEGIN IMMEDIATE)")
    call = "CA" + uuid.uuid4().hex
    first = ledger.record(tenant, _event("call-status", "voice__status_answered", CallSid=call))
    assert (first.version, first.changed) == (1, True)
    child = _event(
        "call-status", "voice__child_leg_completed", ParentCallSid=call, CallSid="CA" + uuid.uuid4().hex
    )
    parent_done = _event("call-status", "voice__status_completed", CallSid=call)

    outcomes: dict[str, Any] = {}
    real_fast, real_apply = ledger_pg.record, ledger._apply

    def spy_fast(engine: Any, tenant_id: int, event: Event, fold: Any) -> Any:
        out = real_fast(engine, tenant_id, event, fold)
        outcomes[event.event_key] = out
        return out

    raced = threading.Event()

    def racing_apply(tenant: Tenant, ours: Any, channel: str, old: dict, new: dict, *rest: Any) -> Any:
        # Between the child's read of the interaction and its write, the parent's completed callback
        # commits on another connection (and bumps the version the child's write expects).
        if old and new is child.facts and not raced.is_set():
            raced.set()
            racer = threading.Thread(target=ledger.record, args=(tenant, parent_done))
            racer.start()
            racer.join(30)
        return real_apply(tenant, ours, channel, old, new, *rest)

    monkeypatch.setattr(ledger_pg, "record", spy_fast)
    monkeypatch.setattr(ledger, "_apply", racing_apply)
    result = ledger.record(tenant, child)

    assert raced.is_set()
    assert outcomes[parent_done.event_key] == (first.interaction_id, 2, False, True)  # the racer's CAS won
    assert outcomes[child.event_key] is None  # the child's lost: it took the locked path
    assert (result.interaction_id, result.version, result.duplicate, result.changed) == (
        first.interaction_id,
        3,
        False,
        True,
    )
    row = _row(call)
    assert row.version == 3 and row.status == "completed" and len(row.facts["legs"]) == 1
    assert _count(WebhookEvent, WebhookEvent.interaction_id == row.id) == 3


def test_the_event_of_a_deleted_interaction_stays_a_duplicate(tenant: Tenant) -> None:
    sid = "SM" + uuid.uuid4().hex
    text = _event("sms", "sms__inbound", MessageSid=sid, SmsMessageSid=sid, SmsSid=sid)
    assert not ledger.record(tenant, text).duplicate
    with db.transaction() as s:  # an operator removed the interaction; its event row stays (SET NULL)
        s.execute(delete(Interaction).where(Interaction.provider_id == sid))
    again = ledger.record(tenant, text)
    assert again.duplicate and not again.changed
    assert _count(Interaction, Interaction.provider_id == sid) == 0  # nothing half-recorded
    assert _count(WebhookEvent, WebhookEvent.event_key == f"sms:{sid}") == 1


def test_a_callback_that_adds_nothing_links_its_event_without_a_new_version(tenant: Tenant) -> None:
    call = "CA" + uuid.uuid4().hex
    done = ledger.record(tenant, _event("call-status", "voice__status_completed", CallSid=call))
    late = ledger.record(tenant, _event("call-status", "voice__status_ringing", CallSid=call))
    assert (late.interaction_id, late.version, late.duplicate, late.changed) == (
        done.interaction_id,
        1,
        False,
        False,
    )
    row = _row(call)
    assert row.version == 1 and row.status == "completed"
    assert _count(WebhookEvent, WebhookEvent.interaction_id == row.id) == 2
