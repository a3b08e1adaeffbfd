"""The ledger's PostgreSQL hot path (app/core/ledger_pg.py) and the cases it hands to the locked path.

A callback whose compare-and-set loses to concurrent deliveries still folds every fact (in a later
optimistic round, or under the lock once the rounds are used up); an event
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


def _outcome(recorded: ledger.Recorded) -> tuple[int, int, bool, bool]:
    """(interaction id, version, duplicate, changed): what ledger_pg.record answers for the event."""
    return recorded.interaction_id, recorded.version, recorded.duplicate, recorded.changed


def _row(call: str) -> Interaction:
    with db.transaction() as s:
        row = s.scalar(select(Interaction).where(Interaction.provider_id == call))
        assert row is not None
        return row


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite serializes its writers
@pytest.mark.parametrize("races", [1, ledger_pg.ATTEMPTS])
def test_a_compare_and_set_lost_to_concurrent_callbacks_still_folds_every_fact(
    tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch, races: int
) -> None:
    """Between a child leg's read of its call and its write, other legs of the call commit on other
    connections: once (the child's next optimistic round wins) or on every round (the locked path folds)."""
    call = "CA" + uuid.uuid4().hex

    def leg() -> Event:
        sid = "CA" + uuid.uuid4().hex
        return _event("call-status", "voice__child_leg_completed", ParentCallSid=call, CallSid=sid)

    first = ledger.record(tenant, _event("call-status", "voice__status_answered", CallSid=call))
    child, racers = leg(), [leg() for _ in range(races)]
    outcomes: dict[str, Any] = {}
    real_fast, real_apply = ledger_pg.record, ledger._apply

    def spy_fast(engine: Any, tenant_id: int, event: Event, fold: Any) -> Any:
        outcomes[event.event_key] = out = real_fast(engine, tenant_id, event, fold)
        return out

    def racing_apply(tenant: Tenant, ours: Any, channel: str, old: dict, new: dict, *rest: Any) -> Any:
        if old and new is child.facts and racers:  # the child has read the call and folds: race it
            racer = threading.Thread(target=ledger.record, args=(tenant, racers.pop(0)))
            racer.start()
            racer.join(30)
        return real_apply(tenant, ours, channel, old, new, *rest)

    monkeypatch.setattr(ledger_pg, "record", spy_fast)
    monkeypatch.setattr(ledger, "_apply", racing_apply)
    result = ledger.record(tenant, child)

    assert not racers  # every race ran
    version = 2 + races  # the first callback, each racer's, the child's
    if races < ledger_pg.ATTEMPTS:
        assert outcomes[child.event_key] == (first.interaction_id, version, False, True)  # a later round won
    else:
        assert outcomes[child.event_key] is None  # every optimistic round lost: the locked path folded it
    assert _outcome(result) == (first.interaction_id, version, False, True)
    row = _row(call)
    assert row.version == version and len(row.facts["legs"]) == 1 + races
    assert row.facts["parent_status"]["status"] == "in-progress"
    assert _count(WebhookEvent, WebhookEvent.interaction_id == row.id) == version


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
    assert _outcome(late) == (done.interaction_id, 1, False, False)
    row = _row(call)
    assert row.version == 1 and row.status == "completed"
    assert _count(WebhookEvent, WebhookEvent.interaction_id == row.id) == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite has no server to restart
def test_a_database_restart_under_the_pool_costs_no_webhook(
    tenant: Tenant, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every pooled connection killed (what a PostgreSQL restart does): the next webhook is still recorded,
    once (the hot path drops its dead connection, the locked path's retry gets a fresh one)."""
    from sqlalchemy import create_engine, text

    from app.core.settings import database_url_for_sqlalchemy

    def text_event() -> Event:
        sid = "SM" + uuid.uuid4().hex
        return _event("sms", "sms__inbound", MessageSid=sid, SmsMessageSid=sid, SmsSid=sid)

    assert not ledger.record(tenant, text_event()).duplicate  # a warm pooled connection
    killer = create_engine(database_url_for_sqlalchemy(database_url), isolation_level="AUTOCOMMIT")
    with killer.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()
    killer.dispose()
    assert killed and killed >= 1
    event = text_event()
    with caplog.at_level("INFO", logger="app.core.ledger_pg"):
        result = ledger.record(tenant, event)
    assert "ledger.fast_path_disconnected" in caplog.text  # the hot path met the dead connection
    assert not result.duplicate and result.changed
    assert _count(WebhookEvent, WebhookEvent.event_key == event.event_key) == 1
    assert _count(Interaction, Interaction.provider_id == event.provider_id) == 1


# --- the remembered row version (ledger_pg._known) -------------------------------------------------------


def _first_statements(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every first-event statement the hot path builds from now on (one per round that reads the row)."""
    used: list[tuple[str, ...]] = []
    real = ledger_pg._first_sql

    def spy(columns: tuple[str, ...]) -> str:
        used.append(columns)
        return real(columns)

    monkeypatch.setattr(ledger_pg, "_first_sql", spy)
    return used


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_later_callback_of_a_call_this_process_wrote_last_costs_one_statement(
    tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = "CA" + uuid.uuid4().hex
    first = ledger.record(tenant, _event("call-status", "voice__status_ringing", CallSid=call))
    used = _first_statements(monkeypatch)
    done = ledger.record(tenant, _event("call-status", "voice__status_completed", CallSid=call))
    assert not used  # no read first: the write went onto the remembered row version
    assert _outcome(done) == (first.interaction_id, 2, False, True)
    row = _row(call)
    assert row.version == 2 and row.status == "completed"
    assert _count(WebhookEvent, WebhookEvent.interaction_id == row.id) == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_row_changed_since_this_process_wrote_it_is_folded_as_it_stands(
    tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker set the call's user without a new version, and another process folded a child leg in:
    the remembered copy is stale twice over, and the next callback keeps both and folds its own."""
    from sqlalchemy import update

    from app.core.models import User

    call = "CA" + uuid.uuid4().hex
    first = ledger.record(tenant, _event("call-status", "voice__status_ringing", CallSid=call))
    with db.transaction() as s:
        user_id = s.scalar(select(User.id).where(User.tenant_id == tenant.id).order_by(User.id))
        s.execute(update(Interaction).where(Interaction.id == first.interaction_id).values(user_id=user_id))
    leg = _event(
        "call-status", "voice__child_leg_completed", ParentCallSid=call, CallSid="CA" + uuid.uuid4().hex
    )
    remembered = dict(ledger_pg._known)
    ledger.record(tenant, leg)  # version 2, as if another process had taken it: this one remembers version 1
    ledger_pg._known.update(remembered)
    used = _first_statements(monkeypatch)
    done = ledger.record(tenant, _event("call-status", "voice__status_completed", CallSid=call))
    assert not used  # the one statement that did not apply returned the row as it stands
    assert (done.version, done.duplicate, done.changed) == (3, False, True)
    row = _row(call)
    assert row.version == 3 and row.status == "completed" and row.user_id == user_id
    assert len(row.facts["legs"]) == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_duplicate_of_a_remembered_call_changes_nothing(tenant: Tenant, database_url: str) -> None:
    call = "CA" + uuid.uuid4().hex
    ledger.record(tenant, _event("call-status", "voice__status_ringing", CallSid=call))
    done = _event("call-status", "voice__status_completed", CallSid=call)
    key = next(k for k in ledger_pg._known if k[3] == call)
    stale = ledger_pg._known[key]  # the copy of version 1, from before the completed callback
    ledger.record(tenant, done)
    again = ledger.record(tenant, done)  # the copy is current: the event adds nothing to it
    assert again.duplicate and not again.changed
    ledger_pg._known[key] = stale  # a copy the event adds to (another process's): still a duplicate
    once_more = ledger.record(tenant, done)
    assert once_more.duplicate and not once_more.changed
    row = _row(call)
    assert row.version == 2 and row.status == "completed"
    assert _count(WebhookEvent, WebhookEvent.interaction_id == row.id) == 2


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_callback_that_adds_nothing_to_a_remembered_call_is_linked_in_one_statement(
    tenant: Tenant, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = "CA" + uuid.uuid4().hex
    done = ledger.record(tenant, _event("call-status", "voice__status_completed", CallSid=call))
    used = _first_statements(monkeypatch)
    late = ledger.record(tenant, _event("call-status", "voice__status_ringing", CallSid=call))
    assert not used
    assert _outcome(late) == (done.interaction_id, 1, False, False)
    row = _row(call)
    assert row.version == 1 and row.status == "completed"
    assert _count(WebhookEvent, WebhookEvent.interaction_id == row.id) == 2
