"""One trigger per tenant, a dead drain costs seconds, and no trigger is lost around a running drain."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from sqlalchemy import update

from app.cli import simulate
from app.core import db, ledger, queue
from app.core.db import utcnow
from app.core.models import Interaction, LocalActivity
from jobs import sync
from jobs.sync import DrainLock, drain, sweep
from tests.conftest import count, make_tenant
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN, TwilioPoster

ROOT = Path(__file__).resolve().parents[2]


def text(i: int, account: str = FIXTURE_ACCOUNT) -> simulate.Post:
    return simulate.inbound_sms(account, f"+1555555{1000 + i:04d}", "+15555550100", f"hi {i}").first[0]


def post_texts(twilio: TwilioPoster, first: int, n: int, account: str = FIXTURE_ACCOUNT) -> None:
    for i in range(first, first + n):
        post = text(i, account)
        assert twilio.post(post.path, post.params).status_code == 200


def test_a_burst_queues_one_drain_job(tenant, twilio, settings, redis_conn, run_worker):
    post_texts(twilio, 0, 50)
    q = Queue(settings.queue_name, connection=redis_conn)
    assert len(q.job_ids) == 1  # fifty interactions, one trigger
    assert run_worker() == 1
    assert count(LocalActivity) == 50


@contextmanager
def lock_holder(settings, tenant_id: int, ttl: float) -> Iterator[subprocess.Popen[str]]:
    """A process of its own that takes the tenant's drain lock and keeps it (killed on the way out)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from redis import Redis; from jobs.sync import DrainLock\n"
            f"lock = DrainLock(Redis.from_url({settings.redis_url!r}), {tenant_id}, ttl={ttl})\n"
            "assert lock.acquire(); print('held', flush=True); time.sleep(600)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_silent_lock_holder_blocks_the_tenant_only_for_the_lock_ttl(tenant, twilio, settings, redis_conn):
    # Stopped (SIGSTOP), it stays connected but renews nothing, as a hung process or a partitioned host would:
    # its client id looks alive, so the TTL is what frees the tenant.
    post_texts(twilio, 0, 3)
    with lock_holder(settings, tenant.id, ttl=2.0) as holder:
        time.sleep(3)  # longer than the TTL: the heartbeat keeps a live holder's lock
        assert drain(tenant.id) == "drained by another worker"
        holder.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        assert drain(tenant.id) == "drained by another worker"  # connected: not taken over
        while drain(tenant.id) == "drained by another worker":
            assert time.monotonic() - stopped < 2.0 + 2.0, "the silent holder's lock outlived its TTL"
            time.sleep(0.1)
        assert time.monotonic() - stopped <= 2.0 + 2.0
    assert count(LocalActivity) == 3 and count(Interaction, Interaction.sync_state != "synced") == 0


def test_a_killed_lock_holder_is_taken_over_at_once_not_after_its_ttl(tenant, twilio, settings, redis_conn):
    # Its connection closes with the process: the next drain sees the holder's client gone and takes over.
    post_texts(twilio, 0, 3)
    with lock_holder(settings, tenant.id, ttl=60.0) as holder:
        assert drain(tenant.id) == "drained by another worker"  # alive: left alone
        holder.kill()
        holder.wait()
        killed = time.monotonic()
        while drain(tenant.id) == "drained by another worker":
            assert time.monotonic() - killed < 5.0, "waited for the dead holder's TTL"
            time.sleep(0.05)
    assert count(LocalActivity) == 3 and count(Interaction, Interaction.sync_state != "synced") == 0
    assert redis_conn.pttl(f"switchboard:lock:drain:{tenant.id}") == -2  # released by the new holder


def test_a_lock_whose_holder_is_connected_is_not_taken_over(redis_conn):
    lock = DrainLock(redis_conn, 4243, ttl=30.0)
    assert lock.acquire()
    try:
        other = DrainLock(redis_conn, 4243)
        assert not other.acquire()
        assert redis_conn.get("switchboard:lock:drain:4243") == lock.token.encode()
    finally:
        lock.release()
    redis_conn.set("switchboard:lock:drain:4243", "a-token-without-a-client-id", px=30_000)
    try:
        assert not DrainLock(redis_conn, 4243).acquire()  # a holder we cannot check: its TTL decides
    finally:
        redis_conn.delete("switchboard:lock:drain:4243")


def test_lock_is_renewed_while_held_and_released_by_its_holder_only(redis_conn):
    lock = DrainLock(redis_conn, 4242, ttl=1.5)  # beats every 0.5 s; room for a busy machine
    assert lock.acquire()
    time.sleep(3.5)
    assert not DrainLock(redis_conn, 4242).acquire()  # still held: renewed by the heartbeat
    lock.release()
    other = DrainLock(redis_conn, 4242)
    assert other.acquire()
    lock.release()  # a stale holder's release leaves the new holder's lock alone
    assert redis_conn.get("switchboard:lock:drain:4242") == other.token.encode()
    other.release()


def test_a_drain_that_finds_the_lock_taken_looks_again_when_it_would_expire(
    tenant, twilio, settings, redis_conn
):
    post_texts(twilio, 0, 1)
    lock = DrainLock(redis_conn, tenant.id, ttl=5.0)
    assert lock.acquire()
    try:
        assert drain(tenant.id) == "drained by another worker"
        registry = ScheduledJobRegistry(settings.queue_name, connection=redis_conn)
        assert len(registry) == 1  # a look-again, even if the holder dies without a word
        assert drain(tenant.id) == "drained by another worker"
        assert len(registry) == 1  # ...only one per tenant
    finally:
        lock.release()


def test_a_look_again_that_finds_the_lock_taken_schedules_the_next_one(tenant, twilio, settings, redis_conn):
    # The look-again's own marker must not stop it from scheduling a successor (it used to outlive the
    # look by a second, so a look finding the lock still held left the tenant to the 60 s sweeper).
    post_texts(twilio, 0, 1)
    lock = DrainLock(redis_conn, tenant.id, ttl=5.0)
    assert lock.acquire()
    registry = ScheduledJobRegistry(settings.queue_name, connection=redis_conn)
    try:
        assert drain(tenant.id) == "drained by another worker"
        (first,) = registry.get_job_ids()
        registry.remove(first)  # its time came: RQ's scheduler takes it off the registry and runs it
        assert Job.fetch(first, connection=redis_conn).perform() == "drained by another worker"
        (second,) = registry.get_job_ids()
        assert second != first
    finally:
        lock.release()


def test_rows_arriving_during_a_held_round_get_a_look_within_seconds(
    tenant, twilio, settings, redis_conn, monkeypatch
):
    # A drain job that finds the lock taken leaves its rows to the holder (it sets the dirty flag). A holder
    # in a held round used to end without looking at the flag when none of its own rows waited, and no look
    # was scheduled until the sweeper's, 60 s on.
    post_texts(twilio, 0, sync.BATCH)  # one full chunk: the held round sends it all, none of it waits

    class Held(sync._Pacer):
        def gate(self, rows):
            redis_conn.set(queue.dirty_key(tenant.id), "1")  # a trigger found the lock taken meanwhile
            return sync._Gate(utcnow(), first=True)

    monkeypatch.setattr(sync, "_Pacer", Held)
    assert drain(tenant.id) == f"synced {sync.BATCH}"
    registry = ScheduledJobRegistry(settings.queue_name, connection=redis_conn)
    looks = [registry.get_scheduled_time(j) for j in registry.get_job_ids()]
    assert len(looks) == 1  # the next look, LOOK seconds on
    assert (looks[0] - utcnow()).total_seconds() <= sync.LOOK + 1


def test_sweeper_triggers_every_tenant_with_due_rows(app, settings, redis_conn, run_worker):
    accounts = [f"AC{i:032d}" for i in range(11, 17)]
    for n, account in enumerate(accounts):
        make_tenant(f"t{n}", account, FIXTURE_TOKEN, number=f"+1555555{n:04d}")
        post_texts(
            TwilioPoster(app.test_client(), "https://switchboard.example.com", FIXTURE_TOKEN), 0, 3, account
        )
    # Redis lost every trigger (and a dead STARTED job's marker still names one of them)
    q = Queue(settings.queue_name, connection=redis_conn)
    for job_id in q.job_ids:
        q.remove(job_id)
    assert sweep() == len(accounts)  # every tenant, not one row per tenant, and not blocked by the markers
    assert sweep() == 0  # their drains wait in the queue
    assert run_worker() == len(accounts)
    assert count(Interaction, Interaction.sync_state != "synced") == 0
    assert sweep() == 0


def test_sweeper_is_not_blocked_by_finished_or_orphaned_job_records(
    tenant, twilio, settings, redis_conn, run_worker
):
    post_texts(twilio, 0, 1)
    assert run_worker() == 1
    post_texts(twilio, 1, 1)
    q = Queue(settings.queue_name, connection=redis_conn)
    [job_id] = q.job_ids
    q.remove(job_id)  # popped by a worker that died before it ran: the marker names a job nowhere
    assert queue.enqueue_sync(settings, 1, 1, tenant.id) == "duplicate"  # a webhook trusts the marker...
    assert sweep() == 1  # ...the sweeper checks it
    assert run_worker() == 1
    assert count(LocalActivity) == 2


def test_trigger_arriving_while_the_drain_runs_is_not_lost(tenant, twilio, monkeypatch):
    post_texts(twilio, 0, 2)
    real = sync.sync_batch
    calls = []

    def batch_then_a_new_call_arrives(tenant_id, rows, settings):
        calls.append(len(rows))
        if len(calls) == 1:
            post_texts(twilio, 100, 1)  # recorded and triggered mid-drain
        return real(tenant_id, rows, settings)

    monkeypatch.setattr(sync, "sync_batch", batch_then_a_new_call_arrives)
    assert drain(tenant.id) == "synced 3"  # the same drain took the newcomer
    assert count(LocalActivity) == 3


def test_row_recorded_after_the_drains_last_query_is_synced(tenant, twilio, monkeypatch):
    post_texts(twilio, 0, 2)
    real = ledger.due_batch
    empty = []

    def due_batch(tenant_id, limit):
        rows = real(tenant_id, limit)
        if not rows and not empty:
            empty.append(1)
            post_texts(twilio, 100, 1)  # committed after the query that found nothing, before the release
        return rows

    monkeypatch.setattr(ledger, "due_batch", due_batch)
    assert drain(tenant.id) == "synced 3"
    assert count(Interaction, Interaction.sync_state != "synced") == 0


def test_short_budget_holds_partial_batches_for_a_bounded_window(
    tenant, twilio, settings, redis_conn, monkeypatch
):
    post_texts(twilio, 0, 12)  # a burst
    monkeypatch.setattr(sync._Pacer, "short", lambda self: True)
    assert drain(tenant.id) == "synced 0"  # twelve rows would waste a batch request: they wait
    assert queue.holding(redis_conn, tenant.id)
    assert queue.enqueue_sync(settings, 1, 1, tenant.id) == "held"  # triggers only count during the hold
    assert len(ScheduledJobRegistry(settings.queue_name, connection=redis_conn)) == 1  # the hold's end
    with db.transaction() as s:  # the window has passed
        s.execute(update(Interaction).values(updated_at=utcnow() - timedelta(seconds=60)))
    assert drain(tenant.id) == "synced 12"


def test_a_turn_ends_and_requeues_behind_other_tenants(tenant, twilio, settings, redis_conn, monkeypatch):
    post_texts(twilio, 0, 3)
    q = Queue(settings.queue_name, connection=redis_conn)
    for job_id in q.job_ids:
        q.remove(job_id)
    redis_conn.delete(queue.queued_key(tenant.id))
    monkeypatch.setattr(sync, "TURN_SECONDS", 0.0)
    assert drain(tenant.id) == "synced 0"  # its turn is over before it starts
    assert len(q.job_ids) == 1  # the next turn waits at the back of the queue


def test_a_trigger_counts_once_and_queues_one_drain_in_either_step(settings, redis_conn):
    """The first trigger of a burst goes through both scripts (the cheap check, then the one that queues
    the job); the rest stop at the check. Each is counted once, and a FLUSHALL is recovered from."""
    q = Queue(settings.queue_name, connection=redis_conn)
    assert queue.trigger_tenant(settings, 77, interaction_id=1) == "queued"
    assert [queue.trigger_tenant(settings, 77, interaction_id=i) for i in (2, 3)] == ["duplicate"] * 2
    assert q.job_ids == ["sync-1"] and redis_conn.get(queue.dirty_key(77)) == b"1"
    assert queue.arrivals(redis_conn, 77)[0] == 3
    redis_conn.delete(queue.dirty_key(77))
    assert queue.trigger_tenant(settings, 77) == "duplicate"  # a drain waits; the flag is set for it
    assert redis_conn.get(queue.dirty_key(77)) == b"1"
    assert queue.arrivals(redis_conn, 77)[0] == 3  # a drain's own trigger is no arrival
    queue.release_trigger(redis_conn, 77, "sync-1")  # a worker took the job: the next trigger queues one
    queue.hold_tenant(redis_conn, 77, 60, need=2)
    assert queue.trigger_tenant(settings, 77, interaction_id=4) == "held"
    assert queue.trigger_tenant(settings, 77, interaction_id=5) == "queued"  # enough arrived: the hold ends
    assert not queue.holding(redis_conn, 77) and q.job_ids == ["sync-1", "sync-5"]
    assert queue.arrivals(redis_conn, 77)[0] == 5
    _lose_everything(redis_conn)
    assert queue.trigger_tenant(settings, 77, interaction_id=6) == "queued"
    assert q.job_ids == ["sync-6"] and queue.arrivals(redis_conn, 77)[0] == 1


def _lose_everything(redis_conn) -> None:
    """What FLUSHALL does to our keys and scripts, keeping this session's claim on its Redis database."""
    claim = redis_conn.get("switchboard-test-session")
    redis_conn.flushdb()
    redis_conn.script_flush()
    if claim is not None:
        redis_conn.set("switchboard-test-session", claim, ex=3600)


def test_a_trigger_replaces_a_drain_job_lost_with_a_killed_worker(settings, redis_conn):
    """A worker killed between its dequeue and the job's start takes the job with it; its marker must not
    make every later trigger a "duplicate" until it expires or the sweeper runs."""
    q = Queue(settings.queue_name, connection=redis_conn)
    assert queue.trigger_tenant(settings, 78, interaction_id=1) == "queued"
    assert q.job_ids == ["sync-1"]
    assert queue.trigger_tenant(settings, 78, interaction_id=2) == "duplicate"  # a fresh marker: no look
    q.remove("sync-1")  # dequeued by a worker that then died
    marker = queue.queued_key(78)
    redis_conn.pexpire(marker, queue.TRIGGER_TTL_MS - queue.TRIGGER_STALE_MS + 500)  # not stale yet
    assert queue.trigger_tenant(settings, 78, interaction_id=3) == "duplicate"
    redis_conn.pexpire(marker, queue.TRIGGER_TTL_MS - queue.TRIGGER_STALE_MS - 500)  # stale
    assert queue.trigger_tenant(settings, 78, interaction_id=4) == "queued"
    (replacement,) = q.job_ids
    assert replacement.startswith("sync-4")
    assert queue.arrivals(redis_conn, 78)[0] == 4  # each trigger counted once, the checked one too
    # A stale marker whose job still waits is refreshed, so the next triggers skip the look again.
    redis_conn.pexpire(marker, queue.TRIGGER_TTL_MS - queue.TRIGGER_STALE_MS - 500)
    assert queue.trigger_tenant(settings, 78, interaction_id=5) == "duplicate"
    assert redis_conn.pttl(marker) > queue.TRIGGER_TTL_MS - queue.TRIGGER_STALE_MS
    assert q.job_ids == [replacement]
