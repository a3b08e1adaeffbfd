"""The accumulation window (jobs.sync._Pacer, _Gate): while a tenant's CRM budget is short and rows keep
arriving, each stage sends only full chunks of 100; the rest waits, and flushes when arrivals stop. A
tenant whose CRM is not rate limited never waits."""

from __future__ import annotations

import time
from typing import Any

import pytest
from rq.registry import ScheduledJobRegistry
from sqlalchemy import event, select

from app.core import db, queue
from app.core.models import Interaction, LocalActivity
from app.core.ratelimit import Budget
from connectors.base import Party, RetryableError
from jobs import sync
from jobs.sync import drain
from tests.conftest import count
from tests.jobs.test_sync_triggers import post_texts

SHORT = Budget(used=50, limit=100, blocked=0.0)  # half of HubSpot's ten-second window spent
UNLIMITED = Budget(used=50, limit=1_000_000, blocked=0.0)
SCARCE = Budget(used=0, limit=1_000_000, blocked=0.0, scarce=True)  # Salesforce: a day's allocation, unspent


class Counting:
    """The tenant's real (built-in) connector, counting its batch calls, with a budget we choose."""

    def __init__(self, inner: Any, budget: Budget) -> None:
        self.inner, self._budget = inner, budget
        self.searches: list[int] = []  # parties per find_contacts call
        self.creates: list[int] = []
        self.writes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def budget(self) -> Budget:
        return self._budget

    def find_contacts(self, parties: list[Party]) -> Any:
        self.searches.append(len(parties))
        return self.inner.find_contacts(parties)

    def create_contacts(self, parties: Any) -> Any:
        self.creates.append(len(parties))
        return self.inner.create_contacts(parties)

    def write_activities(self, items: Any) -> Any:
        self.writes.append(len(items))
        return self.inner.write_activities(items)


@pytest.fixture
def crm(monkeypatch: pytest.MonkeyPatch) -> Any:
    """crm(budget) -> the Counting connector every drain of the test gets."""

    def install(budget: Budget, kind: type[Counting] = Counting) -> Counting:
        counting, real = kind(None, budget), sync.get_connector

        def get_connector(tenant: Any) -> Counting:
            if counting.inner is None:
                counting.inner = real(tenant)
            return counting

        monkeypatch.setattr(sync, "get_connector", get_connector)
        return counting

    return install


def pending() -> int:
    return count(Interaction, Interaction.sync_state == "pending")


def test_full_chunks_are_searched_created_and_written_while_the_budget_is_short(
    tenant: Any, twilio: Any, redis_conn: Any, crm: Any
) -> None:
    connector = crm(SHORT)
    post_texts(twilio, 0, 250)  # 250 new numbers, as fast as the test client posts them
    drain(tenant.id)
    assert connector.searches == [100, 100]  # two full searches; the last 50 numbers wait for more
    assert connector.creates == [200]  # (the built-in CRM knows none of them: one create call, 2 x 100)
    assert connector.writes == [100, 100]
    assert count(LocalActivity) == 200 and pending() == 50
    assert queue.holding(redis_conn, tenant.id)


def test_a_hold_flushes_when_arrivals_stop(
    tenant: Any, twilio: Any, settings: Any, redis_conn: Any, crm: Any
) -> None:
    connector = crm(SHORT)
    post_texts(twilio, 0, 30)
    assert drain(tenant.id) == "synced 0"  # thirty rows would waste a search, a create and a write
    assert connector.searches == [] and pending() == 30
    assert queue.holding(redis_conn, tenant.id)
    assert len(ScheduledJobRegistry(settings.queue_name, connection=redis_conn)) == 1  # the next look
    time.sleep(sync.QUIET + 0.2)  # nothing arrives
    assert drain(tenant.id) == "synced 30"
    assert connector.searches == [30] and connector.writes == [30]
    assert pending() == 0


def test_a_tenant_whose_crm_is_not_rate_limited_is_never_held(
    tenant: Any, twilio: Any, settings: Any, redis_conn: Any, crm: Any
) -> None:
    connector = crm(UNLIMITED)
    post_texts(twilio, 0, 30)
    assert drain(tenant.id) == "synced 30"  # at once, partial batches and all
    assert connector.searches == [30]
    assert not queue.holding(redis_conn, tenant.id)
    assert not redis_conn.exists(f"switchboard:drain-burst:{tenant.id}")
    assert len(ScheduledJobRegistry(settings.queue_name, connection=redis_conn)) == 0


def test_a_scarce_budget_holds_a_burst_from_the_first_request_but_never_a_trickle(
    tenant: Any, twilio: Any, redis_conn: Any, crm: Any
) -> None:
    connector = crm(SCARCE)
    post_texts(twilio, 0, 2)
    assert drain(tenant.id) == "synced 2"  # a trickle goes at once, however scarce the budget
    post_texts(twilio, 2, 250)  # then a burst: full chunks only, although nothing of the budget is spent
    drain(tenant.id)
    assert connector.searches[0] == 2 and connector.searches[1:] == [100, 100]
    assert connector.writes[1:] == [100, 100] and pending() == 50
    assert queue.holding(redis_conn, tenant.id)


def test_a_trickle_is_not_held_even_when_the_budget_is_short(
    tenant: Any, twilio: Any, redis_conn: Any, crm: Any
) -> None:
    connector = crm(SHORT)
    post_texts(twilio, 0, 2)
    assert drain(tenant.id) == "synced 2"  # a first look: two rows are no burst
    time.sleep(1.1)
    post_texts(twilio, 2, 3)  # three rows in over a second: under HOLD_RATE
    assert drain(tenant.id) == "synced 3"
    assert connector.searches == [2, 3]
    assert not queue.holding(redis_conn, tenant.id)


def test_numbers_looked_up_lately_go_without_waiting_for_a_full_search(
    tenant: Any, twilio: Any, redis_conn: Any, crm: Any
) -> None:
    connector = crm(SHORT)
    post_texts(twilio, 0, 100)
    drain(tenant.id)  # one full search, create and write
    assert connector.searches == [100] and pending() == 0
    post_texts(twilio, 0, 100)  # the same hundred numbers text again
    post_texts(twilio, 100, 10)  # and ten new ones
    drain(tenant.id)
    assert connector.searches == [100, 100]  # the known hundred at once (the connector's cache: no search)
    assert count(LocalActivity) == 200 and pending() == 10  # the new numbers wait for a full search


class FailingFirstWrite(Counting):
    """The first write call fails as a whole (the CRM answered 503); later ones go through."""

    def write_activities(self, items: Any) -> Any:
        self.writes.append(len(items))
        if len(self.writes) == 1:
            return [RetryableError("503 from the CRM")] * len(items)
        return self.inner.write_activities(items)


def _row_updates() -> Any:
    """Counts the rows each UPDATE of interactions touches by parameter set (an executemany counts each)."""
    seen: list[int] = []

    def listen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE INTERACTIONS"):
            seen.append(len(params) if many else 1)

    event.listen(db.engine(), "before_cursor_execute", listen)
    return seen, lambda: event.remove(db.engine(), "before_cursor_execute", listen)


def test_a_synced_row_is_written_back_once_with_its_contact(tenant: Any, twilio: Any, crm: Any) -> None:
    crm(UNLIMITED)
    post_texts(twilio, 0, 30)
    seen, stop = _row_updates()
    try:
        assert drain(tenant.id) == "synced 30"
    finally:
        stop()
    # the attempt count (one statement for the batch) and each row's outcome with its contact: no second
    # UPDATE per row to save the contact before the write
    assert sum(seen) == 30 + 1
    with db.transaction() as s:
        rows = list(s.scalars(select(Interaction)))
    assert {r.sync_state for r in rows} == {"synced"}
    assert all(r.crm_contact_id and r.match_reason for r in rows)


def test_a_failed_write_keeps_its_matched_contact_for_the_retry(tenant: Any, twilio: Any, crm: Any) -> None:
    connector = crm(UNLIMITED, FailingFirstWrite)
    post_texts(twilio, 0, 5)
    # the write fails, the rows are due again at once (no backoff in the test settings) and go in the
    # same drain with the contacts saved at the failure: no second lookup
    assert drain(tenant.id) == "synced 5"
    assert connector.searches == [5] and connector.writes == [5, 5]


def test_rows_waiting_for_a_full_write_keep_their_contact(tenant: Any, twilio: Any, crm: Any) -> None:
    connector = crm(SHORT)
    post_texts(twilio, 0, 100)
    drain(tenant.id)  # a burst's first look: one full search, create and write
    post_texts(twilio, 0, 100)
    post_texts(twilio, 0, 50)  # then 150 texts from those 100 numbers: one lookup, one full write, 50 wait
    drain(tenant.id)
    assert connector.searches == [100, 100] and connector.writes == [100, 100] and pending() == 50
    with db.transaction() as s:
        waiting = list(s.scalars(select(Interaction).where(Interaction.sync_state == "pending")))
    assert len(waiting) == 50 and all(r.crm_contact_id for r in waiting)
