"""Sync jobs: write pending interactions to their tenant's CRM in batches, and sweep up what Redis lost.

A job for interaction N is a trigger: it drains *all* of N's tenant's due interactions, up to BATCH at a
time, through the connector's batch methods. When one call produces a burst of callbacks, or a thousand
calls arrive at once, the CRM sees a handful of batch requests instead of one request per callback.

One drainer per tenant at a time (a Redis lock), so two workers never write the same activity at once.
A trigger that finds the lock taken raises a "dirty" flag and leaves; the drainer checks the flag after
releasing the lock and drains again, so no trigger is lost between its last query and its release.
Retry backoff is per interaction (attempts, next_attempt_at on the ledger row, intervals from
JOB_RETRY_INTERVALS); a trigger is scheduled with RQ's scheduler for the earliest retry.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from redis.exceptions import RedisError, ResponseError
from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.registry import ScheduledJobRegistry
from sqlalchemy import select

from app.core import bootstrap, db, ledger, queue
from app.core.db import utcnow
from app.core.interactions import CALL_TERMINAL, InteractionData
from app.core.models import Interaction, Tenant, User
from app.core.queue import redis_for, trigger_tenant
from app.core.ratelimit import Budget
from app.core.settings import Settings
from app.core.tenants import settings_of
from connectors import get_connector
from connectors.base import (
    ActivityWrite,
    Connector,
    ContactGone,
    CrmError,
    CrmRef,
    Party,
    PermanentError,
    Throttled,
)

log = logging.getLogger(__name__)

BATCH = 100  # activities per write: HubSpot's batch endpoints take up to 100 inputs
WINDOW = 10 * BATCH  # rows per round: their contacts are looked up together (100 numbers per search)
WRITERS = 4  # batches of a window written concurrently
LOCK_TTL = 10.0  # seconds a dead drain holds its tenant's lock (a live one renews it every third of that)
TURN_SECONDS = 5.0  # a drain's turn; then it re-enqueues itself behind the other tenants' triggers
SHORT_AT = 0.1  # the CRM budget is "short" once this share of its window is spent: chunks then wait to fill
HOLD_MAX = 30.0  # ...but a stage (search, create, write) sends all once its oldest row waited this long
HOLD_RATE = 10.0  # rows/s at which a tenant starts holding: a batch then fills within BATCH / HOLD_RATE s
HOLD_STAY_RATE = 2.0  # ...and keeps holding while they still arrive this fast (below it, everything flushes)
QUIET = 2.0  # seconds without an arrival: the burst is over, everything waiting syncs
LOOK = 1.5  # seconds between looks while holding (the arrival rate is measured between looks)
BURST_KEEP = 10.0  # seconds a hold keeps the tenant in burst mode (the budget counts as short meanwhile)
HINT_TTL = 280.0  # seconds a party counts as cached after a lookup (the connectors cache for 300)
# An interaction with no outside party yet (click-to-call before the customer leg) waits for more callbacks.
PARTY_WAIT = timedelta(hours=1)
PARTY_RECHECK = timedelta(seconds=60)
# A call placed from HubSpot's dialer waits this long after placement for the id of the engagement HubSpot
# creates itself (the calling SDK's createEngagement), so the sync updates that record instead of writing a
# second one; the page reports the id within seconds of the call starting.
ENGAGEMENT_WAIT = timedelta(seconds=60)
_FINAL = {*CALL_TERMINAL, "missed", "voicemail", "received", "delivered", "undelivered", "failed", "read"}


def log_interaction(interaction_id: int) -> str:
    """Trigger the CRM sync of an interaction (and of everything else its tenant has pending)."""
    with db.transaction() as s:
        row = s.get(Interaction, interaction_id)
        if row is None:
            return "gone"
        if row.sync_state != "pending":
            return row.sync_state
        tenant_id = row.tenant_id
    return drain(tenant_id)


class DrainLock:
    """The tenant's drain lock: a token under a short TTL, renewed by a heartbeat thread while held.

    A drain whose process dies stops renewing, so the next drain proceeds within LOCK_TTL seconds, not
    after a job timeout; sooner still when Redis can tell: the holder takes and renews the lock over a
    connection of its own whose CLIENT ID is part of the token, and a contender that finds the lock taken
    asks Redis whether that client is still connected (CLIENT LIST ID). A SIGKILLed work horse's socket is
    closed by the kernel at once, so its lock is taken over by the next drain instead of blocking the tenant
    for the TTL (issue 8: a worker killed every few seconds kept the tenant stalled through a burst). A
    holder that is alive but lost its connection (a Redis blip) may be taken over too: two drains of one
    tenant for a moment cost requests, not correctness (every CRM write is keyed by the interaction).
    Release and renewal compare the token (a lock that expired or was taken over is left to its new
    holder; `lost` tells the old one to stop at its next check).
    """

    _MINE = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
    _RENEW = _MINE + "return redis.call('PEXPIRE', KEYS[1], ARGV[2])"
    _RELEASE = _MINE + "return redis.call('DEL', KEYS[1])"
    _TAKE_OVER = _MINE + "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1"

    def __init__(self, conn: Redis, tenant_id: int, ttl: float | None = None) -> None:
        self.conn, self.key = conn, f"switchboard:lock:drain:{tenant_id}"
        self.ttl_ms = int((ttl or LOCK_TTL) * 1000)
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: Redis | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free (or its holder is gone), and start renewing it."""
        # One connection of the pool, held while the lock is: its client id names the holder.
        link = Redis(connection_pool=self.conn.connection_pool, single_connection_client=True)
        try:
            self.token = f"{uuid.uuid4().hex}.{link.client_id()}"
            taken = bool(link.set(self.key, self.token, nx=True, px=self.ttl_ms)) or self._take_over(link)
        except BaseException:
            link.close()
            raise
        if not taken:
            link.close()
            return False
        self._link, self.lost, self._stop = link, False, threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.key}", daemon=True)
        self._thread.start()
        return True

    def _take_over(self, link: Redis) -> bool:
        """Replace the holder's token with ours if the holder's connection is gone (compare-and-set)."""
        holder = link.get(self.key)
        if holder is None:  # released meanwhile
            return bool(link.set(self.key, self.token, nx=True, px=self.ttl_ms))
        client = holder.decode(errors="replace").rpartition(".")[2]
        if not client.isdigit():
            return False
        try:
            if link.client_list(client_id=[client]):
                return False  # connected: a live holder (it renews, or its TTL runs out)
        except ResponseError:  # CLIENT is not allowed here (some managed Redis): the TTL decides
            return False
        if not link.eval(self._TAKE_OVER, 1, self.key, holder, self.token, self.ttl_ms):
            return False
        log.info("drain.lock_taken_over key=%s (its holder's connection was gone)", self.key)
        return True

    def _beat(self) -> None:
        assert self._link is not None
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                renewed = self._link.eval(self._RENEW, 1, self.key, self.token, self.ttl_ms)
            except RedisError:
                continue  # try again at the next beat; the TTL leaves room for two misses
            if not renewed:
                self.lost = True
                log.warning("drain.lock_lost key=%s", self.key)
                return

    def release(self) -> None:
        """Stop renewing and give the lock back (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            if not self.conn.eval(self._RELEASE, 1, self.key, self.token):
                log.warning("drain.lock_lost key=%s", self.key)
        except RedisError:
            log.warning("drain.lock_release_failed key=%s (it expires on its own)", self.key)
        finally:
            if self._link is not None:
                self._link.close()  # the connection goes back to the pool
                self._link = None

    def remaining(self) -> float:
        """Seconds until the lock (whoever holds it) expires unless renewed."""
        pttl = int(self.conn.pttl(self.key))
        return pttl / 1000 if pttl > 0 else 0.0


def drain(tenant_id: int) -> str:
    """Sync the tenant's due interactions for one turn: until none are left, or TURN_SECONDS are spent
    (then the drain re-enqueues itself at the back of the queue, so other tenants' triggers run between
    its turns), or, while the CRM budget is short and rows keep arriving fast, one round that sends only
    full chunks (then it holds: see _Pacer; a look is scheduled LOOK seconds on)."""
    settings = bootstrap.current()
    job = get_current_job()
    conn: Redis = job.connection if job is not None else redis_for(settings)
    if job is not None:
        queue.release_trigger(conn, tenant_id, job.id)
        _started(conn, tenant_id, job.id)
    dirty = queue.dirty_key(tenant_id)
    lock = DrainLock(conn, tenant_id)
    turn_end = time.monotonic() + min(TURN_SECONDS, settings.job_timeout_seconds * 0.5)
    pacer = _Pacer(conn, tenant_id)
    synced, gate, turn_over = 0, None, False
    while True:
        if not lock.acquire():
            conn.set(dirty, "1", ex=86400)
            # The holder re-checks the flag before it ends; if it died, its lock expires within LOCK_TTL
            # and this look-again finds it free.
            _look(settings, conn, tenant_id, lock.remaining() + 0.5)
            return f"synced {synced}" if synced else "drained by another worker"
        watchdog = _watchdog(settings, conn, tenant_id)
        try:
            conn.delete(dirty)
            while not lock.lost:
                if time.monotonic() >= turn_end:
                    turn_over = True
                    break
                rows = ledger.due_batch(tenant_id, WINDOW)
                if not rows:
                    break
                gate = pacer.gate(rows)
                if gate is None:
                    synced += sync_batch(tenant_id, rows, settings)
                elif gate.first:  # as many full batches of rows as are due go; the rest waits
                    full = len(rows) - len(rows) % gate.batch
                    gate.waiting = len(rows) - full
                    gate.next_bound = min(LOOK, gate.next_bound)
                    if full:
                        synced += sync_batch(tenant_id, rows[:full], settings)
                else:
                    synced += sync_batch(tenant_id, rows, settings, gate)
                if gate is not None:
                    break  # one round while holding: the rest waits for fuller chunks
        finally:
            lock.release()
            _cancel(settings, conn, watchdog)
        if turn_over or gate is not None or lock.lost or not conn.exists(dirty):
            break
    if turn_over:
        queue.trigger_tenant(settings, tenant_id, conn=conn)  # the next turn, behind other tenants' triggers
    elif gate is not None and (gate.waiting or conn.exists(dirty)):
        # Rows wait for fuller chunks, or arrived while this round ran (their drain found our lock and left
        # them to us): the next look comes at most LOOK seconds on.
        pacer.hold(settings, gate)
    _schedule_retries(settings, conn, tenant_id)
    return f"synced {synced}"


class _Pacer:
    """The accumulation window. While the tenant's CRM budget is short and rows arrive fast (HOLD_RATE a
    second or more), each stage sends only full chunks of BATCH: contacts are searched 100 uncached
    numbers at a time, created 100 at a time, activities written 100 at a time; the rest waits (see _Gate)
    for the next look, at most HOLD_MAX seconds per stage. When arrivals stop (QUIET), slow down below
    HOLD_STAY_RATE, or the budget is not short, everything due syncs at once: a CRM that is not rate
    limited never waits, and neither does a trickle.

    The budget is the connector's budget() (a Budget), else its `limiter` (a RateLimiter); "short" means
    the budget is scarce (Budget.scarce), a 429 block is in force, SHORT_AT of the window's budget is
    already spent, or the tenant held within the last BURST_KEEP seconds (so batching that works, and
    spends less, does not switch itself off).
    The arrival rate comes from the triggers' counter (queue.arrivals), read at each look.
    """

    def __init__(self, conn: Redis, tenant_id: int) -> None:
        self.conn, self.tenant_id = conn, tenant_id
        self.burst_key = f"switchboard:drain-burst:{tenant_id}"
        self.pace_key = f"switchboard:drain-pace:{tenant_id}"
        self._budget: Any = ...
        self.batch = BATCH

    def budget(self) -> Budget | None:
        if self._budget is ...:
            with db.transaction() as s:
                tenant = s.get(Tenant, self.tenant_id)
                connector = get_connector(tenant) if tenant else None
            self._budget = _budget_of(connector)
            self.batch = connector.batch_size if connector else BATCH
        try:
            return self._budget() if self._budget else None
        except RedisError:
            return None

    def short(self) -> bool:
        budget = self.budget()
        if budget is None:
            return False
        if budget.scarce or budget.blocked > 0 or budget.used >= max(1.0, SHORT_AT * budget.limit):
            return True
        return bool(self.conn.exists(self.burst_key))

    def rate(self) -> tuple[float | None, float | None]:
        """(rows a second arriving since the last look, or None if not measured yet; ms since the last
        arrival, or None if none is known)."""
        n, since, now = queue.arrivals(self.conn, self.tenant_id)
        last = self.conn.hgetall(self.pace_key)
        then_n, then, rate = (float(last.get(k, -1)) for k in (b"n", b"t", b"r")) if last else (0, 0, -1)
        elapsed = (now - then) / 1000
        if not last or elapsed > 30:
            rate, measured = -1.0, True  # no recent reading: this one is the first
        elif elapsed >= 1.0 or (elapsed >= 0.25 and n - then_n >= HOLD_MIN_TRIGGERS):
            rate, measured = (n - then_n) / elapsed, True
        else:
            measured = False  # too soon to tell: keep the last measure
        if measured:
            self.conn.hset(self.pace_key, mapping={"n": n, "t": now, "r": rate})
            self.conn.pexpire(self.pace_key, 60_000)
        return (rate if rate >= 0 else None), since

    def gate(self, rows: list[Interaction]) -> _Gate | None:
        """None: sync every row now. A _Gate: send full chunks, hold the rest."""
        if len(rows) >= WINDOW or not self.short():
            return None
        rate, since = self.rate()
        if since is not None and since >= QUIET * 1000:
            return None  # the burst is over
        holding = bool(self.conn.exists(self.burst_key))
        if rate is None:  # a first look: judge by the rows themselves (a lone webhook never waits)
            oldest = (utcnow() - min(r.updated_at for r in rows)).total_seconds()
            rate = len(rows) / max(0.5, oldest)
        if rate < (HOLD_STAY_RATE if holding else HOLD_RATE):
            return None
        self.conn.set(self.burst_key, "1", px=int(BURST_KEEP * 1000))
        return _Gate(utcnow(), first=not holding, batch=self.batch)

    def hold(self, settings: Settings, gate: _Gate) -> None:
        """Let rows accumulate until the next look: LOOK seconds on (sooner if a stage's bound comes
        first), or once enough triggers arrived to fill the waiting write batch."""
        delay = max(0.2, min(LOOK, gate.next_bound))
        need = max(HOLD_MIN_TRIGGERS, gate.batch - gate.writes)
        queue.hold_tenant(self.conn, self.tenant_id, delay, need=need)
        _look(settings, self.conn, self.tenant_id, delay)
        log.info("drain.hold tenant=%s seconds=%.1f waiting=%s", self.tenant_id, delay, gate.waiting)


HOLD_MIN_TRIGGERS = 10  # a held tenant's drain wakes early after at least this many triggers


def _budget_of(connector: Any) -> Any:
    """The connector's budget() method (Connector.budget, optional: a CRM without a rate limit has none)."""
    method = getattr(connector, "budget", None)
    return method if callable(method) else None


@dataclass
class _Gate:
    """One held round's rules: each stage sends its oldest full chunks of BATCH (distinct parties for
    searches and creates, rows for writes); a stage whose oldest row has waited HOLD_MAX seconds since its
    last change sends everything it has. Records what is left waiting."""

    now: datetime
    first: bool = False  # a burst's first look: full batches of rows go through every stage, the rest waits
    waiting: int = 0  # rows left for a later round
    writes: int = 0  # ...of which resolved rows waiting to fill a write batch
    next_bound: float = HOLD_MAX  # seconds until the first waiting stage must send anyway
    batch: int = BATCH  # a full chunk: the connector's batch_size

    def age(self, items: Sequence[_Item]) -> float:
        return max((self.now - i.last_callback_at).total_seconds() for i in items)

    def take(self, units: list[list[_Item]]) -> list[list[_Item]]:
        """The units (oldest first) to send now; the others wait."""
        if not units or self.age([i for u in units for i in u]) >= HOLD_MAX:
            return units
        full = len(units) - len(units) % self.batch
        self.wait([i for u in units[full:] for i in u])
        return units[:full]

    def wait(self, items: Sequence[_Item], writes: bool = False) -> None:
        if items:
            self.waiting += len(items)
            self.writes += len(items) if writes else 0
            self.next_bound = min(self.next_bound, max(0.0, HOLD_MAX - self.age(items)))


class _Hints:
    """What the sync saw of each party lately (per tenant, in Redis): "c" a contact was found or created
    (the connector has it cached: looking it up again costs no request), "m" searched and not found (it
    waits for a create). Used only to fill chunks; a wrong hint costs a small search, never a wrong match."""

    def __init__(self, conn: Redis, tenant_id: int) -> None:
        self.conn, self.key = conn, f"switchboard:drain-parties:{tenant_id}"

    def get(self, keys: list[str]) -> dict[str, str]:
        if not keys:
            return {}
        try:
            values = self.conn.hmget(self.key, keys)
        except RedisError:
            return {}
        now, out = time.time(), {}
        for key, raw in zip(keys, values, strict=True):
            if raw:
                kind, _, at = raw.decode().partition(":")
                ttl = HINT_TTL if kind == "c" else HOLD_MAX + 30
                if now - float(at or 0) < ttl:
                    out[key] = kind
        return out

    def note(self, kind: str, keys: list[str]) -> None:
        if not keys:
            return
        value = f"{kind}:{time.time():.0f}"
        with contextlib.suppress(RedisError):
            pipe = self.conn.pipeline(transaction=False)
            pipe.hset(self.key, mapping=dict.fromkeys(keys, value))
            pipe.expire(self.key, int(HINT_TTL))
            pipe.execute()


def _watchdog(settings: Settings, conn: Redis, tenant_id: int) -> str | None:
    """A look-again scheduled past the lock's TTL, cancelled when this drain ends alive: if the process
    dies holding the lock, the tenant is drained again seconds after the lock expires, traffic or not."""
    job_id = f"drain-{tenant_id}-w{uuid.uuid4().hex[:12]}"
    try:
        _schedule(settings, conn, tenant_id, delay=LOCK_TTL + 1, job_id=job_id)
    except RedisError:
        return None
    return job_id


def _cancel(settings: Settings, conn: Redis, job_id: str | None) -> None:
    if job_id is None:
        return
    with contextlib.suppress(RedisError, NoSuchJobError):
        ScheduledJobRegistry(settings.queue_name, connection=conn).remove(job_id, delete_job=True)


def _look_key(tenant_id: int) -> str:
    return f"switchboard:drain-look:{tenant_id}"


def _look(settings: Settings, conn: Redis, tenant_id: int, delay: float) -> None:
    """Look at the tenant again after `delay` seconds, unless a look at or before then waits already.

    The key (the waiting look's time and job id) is cleared when that job starts (_started), so a look
    that itself finds the lock taken, or a drain holding after it ran, schedules the next one; its TTL
    only covers a look that never runs.
    """
    key, at = _look_key(tenant_id), time.time() + delay
    waiting = conn.hget(key, "at")
    if waiting is not None and float(waiting) <= at + 0.2:
        return
    job_id = f"drain-{tenant_id}-l{uuid.uuid4().hex[:12]}"
    pipe = conn.pipeline()
    pipe.hset(key, mapping={"at": at, "job": job_id})
    pipe.pexpire(key, int((delay + 30) * 1000))
    pipe.execute()
    _schedule(settings, conn, tenant_id, delay=delay, job_id=job_id)


_LOOK_STARTED = "if redis.call('HGET', KEYS[1], 'job') == ARGV[1] then redis.call('DEL', KEYS[1]) end"


def _started(conn: Redis, tenant_id: int, job_id: str) -> None:
    """This drain job may be the tenant's waiting look: if so, none waits any more."""
    conn.eval(_LOOK_STARTED, 1, _look_key(tenant_id), job_id)


def _schedule_retries(settings: Settings, conn: Redis, tenant_id: int) -> None:
    due = ledger.next_due(tenant_id)
    if due is None:
        return
    delay = max(0.0, (due - utcnow()).total_seconds())
    key = f"switchboard:drain-retry-at:{tenant_id}"
    at = time.time() + delay
    current = conn.get(key)
    if current is not None and float(current) <= at + 0.5:
        return  # a look-again at or before this one is already scheduled
    conn.set(key, str(at), px=int((delay + 1) * 1000))
    _schedule(settings, conn, tenant_id, delay=delay)


def _schedule(
    settings: Settings, conn: Redis, tenant_id: int, delay: float, job_id: str | None = None
) -> None:
    """Enqueue a drain trigger for the tenant, now or after `delay` seconds (RQ's scheduler)."""
    queue.enqueue(
        settings,
        drain,
        tenant_id,
        job_id=job_id or f"drain-{tenant_id}-{uuid.uuid4().hex[:12]}",
        timeout=settings.job_timeout_seconds,
        delay=timedelta(seconds=delay) if delay > 0 else None,
    )


@dataclass
class _Item:
    row_id: int
    version: int
    data: InteractionData
    contact_id: str | None
    record_id: str | None
    last_callback_at: datetime
    reason: str | None = None
    owner_user: int | None = None
    hold_until: datetime | None = None  # a dialer call waiting for its CRM engagement id
    # Matched in this round and not saved yet: the write's outcome saves it (ledger.mark_synced), or, for
    # a row that fails or waits for a later round, _save_contacts does.
    unsaved: bool = False


DIALER_REASON = "chosen by the rep in the dialer"


def _dialer_contact(row: Interaction) -> str | None:
    """The CRM contact the rep clicked to call from (the dialer's facts), if the sync has not saved one."""
    return ((row.facts or {}).get("dialer") or {}).get("contact_id") or None


def _engagement_hold(row: Interaction) -> datetime | None:
    """Until when a dialer call waits for the id of the engagement HubSpot's dialer creates (None: it
    does not wait, because it expects none or has it)."""
    facts = row.facts or {}
    dialer = facts.get("dialer") or {}
    if not dialer.get("await_engagement") or (facts.get("engagement") or {}).get("id") or row.crm_record_id:
        return None
    placed = dialer.get("placed_at")
    return datetime.fromisoformat(placed) + ENGAGEMENT_WAIT if placed else None


def sync_batch(
    tenant_id: int, rows: Sequence[Interaction], settings: Settings, gate: _Gate | None = None
) -> int:
    """Write a window of a tenant's interactions to its CRM; returns how many are now synced. With a
    gate, only full chunks go (the gate records what waits)."""
    with db.transaction() as s:
        tenant = s.get(Tenant, tenant_id)
        assert tenant is not None
        items = [
            _Item(
                r.id,
                r.version,
                ledger.snapshot(s, r),
                r.crm_contact_id or _dialer_contact(r),
                r.crm_record_id,
                r.updated_at,
                reason=DIALER_REASON if not r.crm_contact_id and _dialer_contact(r) else None,
                hold_until=_engagement_hold(r),
            )
            for r in rows
        ]
        owners = {u.crm_owner_id: u.id for u in s.scalars(select(User).where(User.tenant_id == tenant_id))}
        policy = settings_of(tenant)["unknown_contacts"]
        blocked = tenant.crm_status != "ok"
        blocked_reason = tenant.crm_status_reason or tenant.crm_status

    ready = []
    for item in items:
        idle = utcnow() - item.last_callback_at
        if blocked:
            ledger.mark_failed(item.row_id, f"permanent: CRM connection needs attention: {blocked_reason}")
        elif item.hold_until is not None and item.hold_until > utcnow():
            ledger.defer(item.row_id, item.hold_until)
        elif item.data.party_phone or item.data.party_email:
            ready.append(item)
        elif item.data.status in _FINAL or idle > PARTY_WAIT:
            ledger.mark_skipped(item.row_id, "no outside party (anonymous, internal, or unknown leg)")
        else:
            ledger.defer(item.row_id, utcnow() + PARTY_RECHECK)
    if not ready:
        return 0
    # The contact the rep clicked to call is the call's contact: no search.
    chosen = [i for i in ready if i.contact_id and i.reason == DIALER_REASON]
    ledger.save_contacts([(i.row_id, i.contact_id, i.reason, None) for i in chosen if i.contact_id])

    connector = get_connector(tenant)
    return _pipeline(tenant_id, connector, ready, policy, owners, settings, gate)


class _Writer:
    """Writes resolved items BATCH at a time on a few threads, while the caller keeps resolving contacts.

    Batches are independent, so several run at once and the CRM's rate limit (shared through Redis) is the
    bound rather than our own round trips: https://developers.hubspot.com/docs/api/usage-details
    """

    def __init__(self, connector: Connector, settings: Settings) -> None:
        self.connector, self.settings, self.batch = connector, settings, connector.batch_size
        self.pool = ThreadPoolExecutor(max_workers=WRITERS)
        self.waiting: list[_Item] = []
        self.futures: list[Future[int]] = []

    def add(self, items: list[_Item], flush: bool = False) -> None:
        """Queue items whose contact is known; full batches (all, with flush) start writing."""
        self.waiting += items
        while len(self.waiting) >= self.batch or (flush and self.waiting):
            chunk, self.waiting = self.waiting[: self.batch], self.waiting[self.batch :]
            self.futures.append(self.pool.submit(_write_chunk, self.connector, chunk, self.settings))

    def finish(self, gate: _Gate | None = None) -> int:
        """Write what is left (with a gate: only if it has waited HOLD_MAX), wait for every batch; how
        many were synced. Rows left waiting keep their contact (saved) for the next round."""
        if gate is not None and self.waiting and gate.age(self.waiting) < HOLD_MAX:
            gate.wait(self.waiting, writes=True)
            _save_contacts(self.waiting)  # the next round writes them without a new lookup
        else:
            self.add([], flush=True)
        try:
            return sum(f.result() for f in self.futures)
        finally:
            self.pool.shutdown()


def _pipeline(
    tenant_id: int,
    connector: Connector,
    items: list[_Item],
    policy: str,
    owners: dict[str | None, int],
    settings: Settings,
    gate: _Gate | None = None,
) -> int:
    """Resolve contacts BATCH distinct parties at a time (one search of up to 100 numbers, however many
    rows share them; parties looked up lately go first, without a search), writing each batch of resolved
    rows while the next lookup runs; unknown parties get their contacts created together. With a gate,
    each stage sends only full chunks (see _Gate)."""
    writer = _Writer(connector, settings)
    hints = _Hints(redis_for(settings), tenant_id)
    attempted: list[_Item] = []
    try:
        writer.add([i for i in items if i.contact_id])
        by_party: dict[str, list[_Item]] = {}
        for item in items:
            if not item.contact_id:
                by_party.setdefault(_party_key(item), []).append(item)
        seen = hints.get(list(by_party))
        cached = [by_party[k] for k in by_party if seen.get(k) == "c"]
        missing: dict[str, list[_Item]] = {}
        for k in by_party:
            if seen.get(k) == "m" and policy == "create":
                missing[contact_external_id(_party(by_party[k][0]))] = by_party[k]
        unknown = [by_party[k] for k in by_party if k not in seen or (seen[k] == "m" and policy != "create")]
        if gate is not None:
            unknown = gate.take(unknown)
        size = connector.batch_size
        lookups = [cached[i : i + size] for i in range(0, len(cached), size)]
        lookups += [unknown[i : i + size] for i in range(0, len(unknown), size)]
        for chunk in lookups:
            attempted += [i for rows in chunk for i in rows]
            found = connector.find_contacts([_party(rows[0]) for rows in chunk])
            resolved, not_found = [], []
            for rows in chunk:
                match = found.get(_party(rows[0]))
                if match is None:
                    not_found.append(_party_key(rows[0]))
                for item in rows:
                    if match is not None:
                        item.contact_id, item.reason = match.ref.id, match.reason
                        _adopt_owner(item, match.owner_id, owners)
                        resolved.append(item)
                    elif policy == "create":
                        missing.setdefault(contact_external_id(_party(item)), []).append(item)
                    else:
                        ledger.mark_skipped(
                            item.row_id, "no matching contact; tenant policy is not to create one"
                        )
            hints.note("c", sorted({_party_key(i) for i in resolved}))
            hints.note("m", not_found)
            _matched(resolved)
            writer.add(resolved)
        groups = list(missing.values())
        if gate is not None:
            groups = gate.take(groups)
        if groups:
            create = {contact_external_id(_party(g[0])): g for g in groups}
            attempted += [i for g in groups for i in g]
            created = connector.create_contacts([(_party(group[0]), ext) for ext, group in create.items()])
            _announce_new_contacts(tenant_id, created, create)
            resolved = []
            for ext, group in create.items():
                result = created.get(ext)
                for item in group:
                    if isinstance(result, CrmRef):
                        item.contact_id, item.reason = result.id, "no match; contact created"
                        resolved.append(item)
                    else:
                        _failed_attempt(item, result or PermanentError("contact was not created"), settings)
            hints.note("c", sorted({_party_key(i) for i in resolved}))
            _matched(resolved)
            writer.add(resolved)
    except CrmError as exc:  # a lookup failed as a whole (rate limited too long, CRM down, token revoked)
        for item in attempted:
            if not item.contact_id:
                _failed_attempt(item, exc, settings)
    except BaseException:
        writer.pool.shutdown(wait=True)  # let started batches record their outcome, then fail the job
        raise
    synced = writer.finish(gate)
    log.info("crm.synced tenant=%s count=%s of=%s", tenant_id, synced, len(items))
    return synced


def _failed_attempt(item: _Item, exc: CrmError, settings: Settings) -> None:
    """A lookup or create failed for this row: it counts as an attempt (a write counts in _write_chunk)."""
    ledger.note_attempts([item.row_id])
    _failed(item.row_id, exc, settings)


def _announce_new_contacts(tenant_id: int, created: dict[str, Any], groups: dict[str, list[_Item]]) -> None:
    """A contact we created is a new lead: the contact.created and speed-to-lead rules want to know."""
    from app.automation.store import active_rules
    from jobs.automations import on_contact_created

    if active_rules(tenant_id) is None:
        return
    settings = bootstrap.current()
    for ext, ref in created.items():
        if isinstance(ref, CrmRef):
            party = _party(groups[ext][0])
            queue.enqueue(
                settings,
                on_contact_created,
                tenant_id,
                ref.id,
                party.phone,
                party.email,
                utcnow().isoformat(),
                job_id=f"contact-created-{tenant_id}-{ref.id}".replace("+", ""),
                unique=True,
            )


def _party_key(item: _Item) -> str:
    """One lookup per number (or email), however many rows share it."""
    return item.data.party_phone or (item.data.party_email or "").lower()


def _party(item: _Item) -> Party:
    return Party(phone=item.data.party_phone, email=item.data.party_email, name=item.data.caller_name)


def _matched(items: list[_Item]) -> None:
    """These rows' contacts were just found or created: they are saved with the write's outcome."""
    for item in items:
        item.unsaved = bool(item.contact_id)


def _save_contacts(items: list[_Item]) -> None:
    """Save the matched contacts of rows whose write did not record them (failed, or waiting)."""
    matched = [i for i in items if i.unsaved]
    ledger.save_contacts([(i.row_id, i.contact_id, i.reason, i.owner_user) for i in matched])
    for item in matched:
        item.unsaved = False
    _wake(matched)


def _wake(items: list[_Item]) -> None:
    # Automations waiting for these contact matches need not wait for their next look (if Redis is away,
    # that look or the sweep runs them).
    if items:
        with contextlib.suppress(RedisError):
            queue.wake_automations(bootstrap.current(), [(i.row_id, i.version) for i in items])


def _write_chunk(connector: Connector, chunk: list[_Item], settings: Settings) -> int:
    """Write up to BATCH activities and record the outcome of each."""
    writes = [
        ActivityWrite(
            CrmRef("contact", i.contact_id or ""),
            i.data,
            activity_external_id(i.row_id),
            CrmRef(i.data.channel, i.record_id) if i.record_id else None,
        )
        for i in chunk
    ]
    ledger.note_attempts([i.row_id for i in chunk])
    try:
        results: list[CrmRef | CrmError] = connector.write_activities(writes)
    except CrmError as exc:
        results = [exc] * len(chunk)
    done, failed, fresh = [], [], []
    for item, result in zip(chunk, results, strict=True):
        if isinstance(result, CrmError):
            failed.append(item)
            _failed(item.row_id, result, settings)
        else:
            done.append((item.row_id, item.version, result.id))
            if item.unsaved:
                fresh.append(item)
    _save_contacts(failed)  # the retry needs no new lookup
    ledger.mark_synced(done, {i.row_id: (i.contact_id, i.reason, i.owner_user) for i in fresh})
    for item in fresh:
        item.unsaved = False
    _wake(fresh)
    return len(done)


def _adopt_owner(item: _Item, owner_id: str | None, owners: dict[str | None, int]) -> None:
    """Nobody handled it (missed call, text): the contact's owner owns the activity."""
    if item.data.owner_id is None and owner_id is not None:
        item.data = replace(item.data, owner_id=owner_id)
        item.owner_user = owners.get(owner_id)


def _failed(row_id: int, exc: CrmError, settings: Settings) -> None:
    if isinstance(exc, ContactGone):
        ledger.forget_contact(row_id)
    if isinstance(exc, PermanentError):
        ledger.mark_failed(row_id, f"permanent: {exc}")
        log.warning("crm.failed interaction=%s permanent", row_id)
    elif isinstance(exc, Throttled):
        wait = exc.retry_after if exc.retry_after is not None else 60.0
        ledger.retry_later(row_id, f"throttled: {exc}", settings.job_retry_intervals, wait=wait)
    elif ledger.retry_later(row_id, f"retryable: {exc}", settings.job_retry_intervals) == "failed":
        log.warning("crm.failed interaction=%s retries exhausted", row_id)


def activity_external_id(interaction_id: int) -> str:
    """Our id on the CRM activity, so a retried job finds the activity instead of writing a second one."""
    return f"switchboard-interaction-{interaction_id}"


def contact_external_id(party: Party) -> str:
    """Our id on a contact we create, so two jobs for the same new number create one contact."""
    return f"switchboard-contact-{party.phone or (party.email or '').lower()}"


def sweep() -> int:
    """Re-trigger EVERY tenant with due interactions left pending (Redis lost the trigger, a worker died),
    and the automation steps and CRM events left behind; returns how many jobs it queued."""
    from jobs.automations import sweep_automations, sweep_crm_events

    settings = bootstrap.current()
    count = sweep_automations() + sweep_crm_events()
    for tenant_id in ledger.tenants_with_due(timedelta(seconds=settings.sweep_after_seconds)):
        if trigger_tenant(settings, tenant_id, check=True) == "queued":
            count += 1
    if count:
        log.info("sweep.enqueued count=%s", count)
    return count
