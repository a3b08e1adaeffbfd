"""Redis and RQ: the one way work is enqueued (by function reference or a name in JOBS), deterministic job
ids, enqueue that never fails a webhook, and the re-enqueue rules.

RQ stores a job's function as a dotted path in Redis, so a queued job outlives a deploy only if its path
still imports: JOBS names the jobs the core enqueues, and a module moved elsewhere keeps an alias at its
old path (jobs/hubspot.py).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from redis.sentinel import Sentinel
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.scripts import _build_hset_args

from app.core.settings import Settings

log = logging.getLogger(__name__)

# The jobs the provider-neutral core enqueues, by name; jobs/ defines them. Everything else enqueues by
# function reference through enqueue() below.
JOBS: dict[str, str] = {
    "sync": "jobs.sync.log_interaction",
    "drain": "jobs.sync.drain",
    "automation": "jobs.automations.on_interaction",
    "crm_event": "jobs.automations.on_crm_event",
    "opt_out": "jobs.automations.sync_opt_out",
    "automations_sweep": "jobs.automations.sweep_automations",
}
SYNC_JOB = JOBS["sync"]
AUTOMATION_JOB = JOBS["automation"]
DEFAULT_TIMEOUT = 120
_DONE = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}


def redis_for(settings: Settings) -> Redis:
    """The Redis client for these settings: short timeouts, so a webhook answers even when Redis is gone."""
    return _redis(settings.redis_url, tuple(settings.sentinel_hosts()), settings.redis_sentinel_master)


@lru_cache(maxsize=8)
def _redis(url: str, sentinels: tuple[tuple[str, int], ...], master: str) -> Redis:
    timeouts = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}
    if not sentinels:
        return Redis.from_url(url, health_check_interval=30, **timeouts)
    # With Sentinel, REDIS_URL still supplies the database number and password of the master.
    parsed = Redis.from_url(url).connection_pool.connection_kwargs
    sentinel = Sentinel(list(sentinels), sentinel_kwargs=timeouts, **timeouts)
    return sentinel.master_for(master, db=parsed.get("db", 0), password=parsed.get("password"))


def queue_for(settings: Settings) -> Queue:
    """The work queue."""
    return Queue(settings.queue_name, connection=redis_for(settings))


def enqueue(
    settings: Settings,
    job: str | Callable[..., Any],
    *args: Any,
    job_id: str | None = None,
    unique: bool = False,
    timeout: int | None = None,
    at: datetime | None = None,
    delay: timedelta | None = None,
    retry: Retry | None = None,
    description: str | None = None,
) -> bool:
    """Put `job` (a function, or a name in JOBS) on the work queue, now, at `at` or after `delay`.

    Returns False when `unique` and a job with `job_id` exists. Raises RedisError when Redis is away:
    callers on the webhook path use try_enqueue.
    """
    func = JOBS.get(job, job) if isinstance(job, str) else job
    q = queue_for(settings)
    options: dict[str, Any] = {
        "job_id": job_id,
        "job_timeout": timeout or DEFAULT_TIMEOUT,
        "retry": retry,
        "description": description,
    }
    try:
        if at is not None:
            q.enqueue_at(at, func, *args, **options)
        elif delay is not None:
            q.enqueue_in(delay, func, *args, **options)
        else:
            q.enqueue(func, *args, unique=unique, **options)
    except DuplicateJobError:
        return False
    return True


def try_enqueue(settings: Settings, job: str | Callable[..., Any], *args: Any, **options: Any) -> str:
    """enqueue() that never raises for Redis: "queued", "duplicate" or "unavailable" (sweeper catches up)."""
    try:
        return "queued" if enqueue(settings, job, *args, **options) else "duplicate"
    except RedisError as exc:
        log.warning("queue.unavailable job=%s error=%s", _name(job), type(exc).__name__)
        return "unavailable"


def _name(job: str | Callable[..., Any]) -> str:
    return job if isinstance(job, str) else getattr(job, "__name__", "job")


def sync_job_id(interaction_id: int, version: int | None = None) -> str:
    """`sync-<id>`, or `sync-<id>-v<version>`: the id of a tenant trigger an interaction's webhook queued
    (a nonce is added when a job under that id still exists). Ids are names, never locks: RQ ids allow
    letters, digits, '_' and '-'."""
    return f"sync-{interaction_id}" if version is None else f"sync-{interaction_id}-v{version}"


def enqueue_sync(settings: Settings, interaction_id: int, version: int, tenant_id: int | None = None) -> str:
    """Ensure a drain of the interaction's tenant will run: "queued", "duplicate", "held" or "unavailable".

    One trigger per tenant, not per interaction (trigger_tenant): a burst of callbacks, or a thousand calls
    arriving at once, queue one drain job. `version` is kept for callers; the drain reads the newest. The
    webhook passes `tenant_id`; other callers (CLI retry, sweeper, outbound texts) may leave it out and it
    is read from the ledger. "unavailable" means Redis did not answer: the row stays pending and the
    sweeper triggers its tenant later.
    """
    if tenant_id is None:
        from app.core import db
        from app.core.models import Interaction

        with db.transaction() as s:
            row = s.get(Interaction, interaction_id)
            if row is None:
                return "duplicate"
            tenant_id = row.tenant_id
    return trigger_tenant(settings, tenant_id, interaction_id=interaction_id)


# --- tenant triggers -------------------------------------------------------------------------------
# Per tenant T: drain-dirty:T (T has work a running drain may not have seen), drain-queued:T (the id of a
# drain job waiting in the queue; short TTL so a lost job cannot block T for long), drain-hold:T (T is
# accumulating rows for fuller batches until the key expires or enough triggers arrived). A trigger sets
# the flag and, unless a drain waits in the queue or T is holding, enqueues one. In a burst nearly every
# trigger finds a drain waiting, so a first small script (_TRIGGER_FAST) sets the flag, counts and answers
# without a job; only when it answers "enqueue" is a job built and the full script (_TRIGGER) sent, which
# checks the marker again (another trigger may have queued one meanwhile). Either way the flag is set
# before the answer, so a drain that runs re-drains for it.

TRIGGER_TTL_MS = 120_000
TRIGGER_STALE_MS = 10_000  # a drain job waiting longer than this may be lost: a trigger checks the queue


def dirty_key(tenant_id: int) -> str:
    return f"switchboard:drain-dirty:{tenant_id}"


def queued_key(tenant_id: int) -> str:
    return f"switchboard:drain-queued:{tenant_id}"


def hold_key(tenant_id: int) -> str:
    return f"switchboard:drain-hold:{tenant_id}"


def arrivals_key(tenant_id: int) -> str:
    return f"switchboard:drain-arrivals:{tenant_id}"


# KEYS: dirty, queued, hold, arrivals. ARGV: '1' to count an arrival, the marker's PTTL above which it is
# fresh. The non-`check` part of _TRIGGER up to the enqueue, which it leaves to the caller ("enqueue"); a
# marker older than TRIGGER_STALE_MS answers "stale": the caller then checks, as the sweeper does, whether
# its job still waits in the queue (a worker killed between its dequeue and the job's start takes the job
# with it, and the marker would block the tenant's triggers until it expires or the sweeper runs; issue 8).
# A fresh marker, the burst's common case, costs no look at the queue.
_TRIGGER_FAST = """
redis.call('SET', KEYS[1], '1', 'EX', 86400)
if ARGV[1] == '1' then
  local t = redis.call('TIME')
  redis.call('HINCRBY', KEYS[4], 'n', 1)
  redis.call('HSET', KEYS[4], 'at', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('PEXPIRE', KEYS[4], 3600000)
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  local n = redis.call('HINCRBY', KEYS[3], 'seen', 1)
  local need = tonumber(redis.call('HGET', KEYS[3], 'need') or '0')
  if n < need then return 'held' end
  redis.call('DEL', KEYS[3])
end
if redis.call('PTTL', KEYS[2]) > tonumber(ARGV[2]) then return 'duplicate' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'stale' end
return 'enqueue'
"""

_TRIGGER = """
redis.call('SET', KEYS[1], '1', 'EX', 86400)
if ARGV[5] == '1' then
  local t = redis.call('TIME')
  redis.call('HINCRBY', KEYS[8], 'n', 1)
  redis.call('HSET', KEYS[8], 'at', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('PEXPIRE', KEYS[8], 3600000)
end
if ARGV[4] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  local n = redis.call('HINCRBY', KEYS[3], 'seen', 1)
  local need = tonumber(redis.call('HGET', KEYS[3], 'need') or '0')
  if n < need then return 'held' end
  redis.call('DEL', KEYS[3])
end
local cur = redis.call('GET', KEYS[2])
if cur then
  if ARGV[4] ~= '1' then return 'duplicate' end
  if redis.call('LPOS', KEYS[4], cur) then
    redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))  -- it waits: fresh again
    return 'duplicate'
  end
end
local id, key = ARGV[2], KEYS[6]
if redis.call('EXISTS', key) == 1 then id, key = ARGV[3], KEYS[7] end
redis.call('SET', KEYS[2], id, 'PX', tonumber(ARGV[1]))
redis.call('HSET', key, unpack(ARGV, 6))
if ARGV[4] == '1' then redis.call('LPUSH', KEYS[4], id) else redis.call('RPUSH', KEYS[4], id) end
redis.call('SADD', KEYS[5], KEYS[4])
return 'queued'
"""

_RELEASE_TRIGGER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""


def trigger_tenant(
    settings: Settings,
    tenant_id: int,
    *,
    interaction_id: int | None = None,
    check: bool = False,
    conn: Redis | None = None,
) -> str:
    """Tell the workers "tenant T has work": "queued", "duplicate", "held" or "unavailable". One Redis
    round trip when a drain waits already (nearly every trigger of a burst), two when one is queued.

    Sets T's pending flag; enqueues a drain job for T only if none waits in the queue (a drain that is
    running re-checks the flag before it ends, so a trigger arriving mid-drain is never lost). While T
    holds for fuller batches (hold_tenant) the trigger only counts. `check` (the sweeper) also looks whether
    the job the marker names still waits in the queue, and replaces it if not, and ignores a hold; the job
    it queues goes to the front (its rows are late already: their trigger was lost). A trigger that finds
    the marker older than TRIGGER_STALE_MS does that check too (a job lost with a killed worker). A
    trigger for an interaction also counts an arrival for the tenant (arrivals: the drain's pacing).
    """
    from rq.scripts import _build_hset_args  # RQ's own job-hash layout, as its unique-enqueue script uses

    try:
        redis = conn or redis_for(settings)
        count = "1" if interaction_id is not None else "0"
        if not check:
            keys = [dirty_key(tenant_id), queued_key(tenant_id), hold_key(tenant_id), arrivals_key(tenant_id)]
            fast = _trigger_fast_script(redis)(keys=keys, args=[count, TRIGGER_TTL_MS - TRIGGER_STALE_MS])
            if fast == b"stale":
                check = True  # only the queue's word: the hold was passed and the arrival counted already
            elif fast != b"enqueue":
                return fast.decode() if isinstance(fast, bytes) else str(fast)
            count = "0"  # counted already (arrival and hold): the full script must not count it again
        q = Queue(settings.queue_name, connection=redis)
        nonce = uuid.uuid4().hex[:12]
        primary = sync_job_id(interaction_id) if interaction_id is not None else f"drain-{tenant_id}-{nonce}"
        alternate = f"{primary}-{nonce}" if interaction_id is not None else primary
        job = q.create_job(
            JOBS["drain"],
            args=(tenant_id,),
            job_id=primary,
            timeout=settings.job_timeout_seconds,
            description=f"drain tenant {tenant_id}",
            failure_ttl=3600,
        )
        q._prepare_for_queue(job)
        result = _trigger_script(redis)(
            keys=[
                dirty_key(tenant_id),
                queued_key(tenant_id),
                hold_key(tenant_id),
                q.key,
                Queue.redis_queues_keys,
                Job.key_for(primary),
                Job.key_for(alternate),
                arrivals_key(tenant_id),
            ],
            args=[
                TRIGGER_TTL_MS,
                primary,
                alternate,
                "1" if check else "0",
                count,
                *_build_hset_args(job),
            ],
        )
    except RedisError as exc:
        log.warning("queue.unavailable tenant=%s error=%s", tenant_id, type(exc).__name__)
        return "unavailable"
    return result.decode() if isinstance(result, bytes) else str(result)


def release_trigger(conn: Redis, tenant_id: int, job_id: str) -> None:
    """A drain job started: its tenant no longer has a drain waiting in the queue (if it was this one)."""
    _release_script(conn)(keys=[queued_key(tenant_id)], args=[job_id])


def hold_tenant(conn: Redis, tenant_id: int, seconds: float, need: int) -> None:
    """Let the tenant's rows accumulate: triggers only count for `seconds`, until `need` more arrived."""
    key = hold_key(tenant_id)
    pipe = conn.pipeline()
    pipe.delete(key)
    pipe.hset(key, mapping={"seen": 0, "need": max(1, need)})
    pipe.pexpire(key, max(1, int(seconds * 1000)))
    pipe.execute()


def arrivals(conn: Redis, tenant_id: int) -> tuple[int, float | None, float]:
    """(interaction triggers counted for the tenant, ms since the last one or None, Redis's clock in ms),
    one round trip: the drain measures the arrival rate from two such readings."""
    pipe = conn.pipeline(transaction=False)
    pipe.hmget(arrivals_key(tenant_id), "n", "at")
    pipe.time()
    (n, at), (sec, usec) = pipe.execute()
    now = int(sec) * 1000 + int(usec) / 1000
    return int(n or 0), (now - float(at)) if at else None, now


def holding(conn: Redis, tenant_id: int) -> bool:
    """Whether the tenant is accumulating rows (hold_tenant) right now."""
    return bool(conn.exists(hold_key(tenant_id)))


@lru_cache(maxsize=8)
def _trigger_script(conn: Redis) -> Any:
    return conn.register_script(_TRIGGER)


@lru_cache(maxsize=8)
def _trigger_fast_script(conn: Redis) -> Any:
    return conn.register_script(_TRIGGER_FAST)


@lru_cache(maxsize=8)
def _release_script(conn: Redis) -> Any:
    return conn.register_script(_RELEASE_TRIGGER)


def enqueue_automation(
    settings: Settings, interaction_id: int, version: int, *, at_front: bool = False
) -> str:
    """Ensure the automations see the interaction at `version` or later (same coalescing as sync)."""
    return _coalesced(settings, AUTOMATION_JOB, "auto", interaction_id, version, at_front)


def wake_automations(settings: Settings, rows: list[tuple[int, int]], conn: Redis | None = None) -> int:
    """The sync matched these (interaction id, version) rows' contacts: those whose automations wait for
    it (a delayed look for "contact" is set) run now, at the front of the queue, instead of at their next
    look (they are late already; the look finds them planned). Returns how many were queued."""
    if not rows:
        return 0
    pipe = (conn or redis_for(settings)).pipeline(transaction=False)
    for interaction_id, _version in rows:
        pipe.get(automation_wait_key(interaction_id))
    waiting = pipe.execute()
    woken = 0
    for (interaction_id, version), why in zip(rows, waiting, strict=True):
        if why == b"contact" and enqueue_automation(settings, interaction_id, version, at_front=True) == (
            "queued"
        ):
            woken += 1
    return woken


def _coalesced(
    settings: Settings, func: str, prefix: str, interaction_id: int, version: int, at_front: bool = False
) -> str:
    """One Redis round trip (a Lua script): enqueue `<prefix>-<id>` unless it waits already; a follow-up
    `<prefix>-<id>-v<version>` while it runs; replace it when it is done. Never raises for Redis."""
    primary = f"{prefix}-{interaction_id}"
    follow_up = f"{primary}-v{version}"
    try:
        redis = redis_for(settings)
        q = Queue(settings.queue_name, connection=redis)
        intervals = list(settings.job_retry_intervals)
        job = q.create_job(
            func,
            args=(interaction_id,),
            job_id=primary,
            timeout=settings.job_timeout_seconds,
            retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
            description=f"{func.rsplit('.', 1)[-1]} interaction {interaction_id}",
        )
        q._prepare_for_queue(job)
        keys = [Job.key_for(primary), Job.key_for(follow_up), q.key, Queue.redis_queues_keys]
        keys += [Job.key_for(primary) + ":dependents", Job.key_for(primary) + ":dependencies"]
        keys += [Result.get_key(primary), *_done_registries(redis, q.name)]
        front = "1" if at_front else "0"
        outcome = _coalesce_script(redis)(keys=keys, args=[primary, follow_up, front, *_build_hset_args(job)])
    except (RedisError, InvalidJobOperation, NoSuchJobError) as exc:
        # After a FLUSHALL or a lost connection the event is committed all the same: answer 2xx, the row
        # stays pending and the sweeper enqueues it.
        log.warning("queue.unavailable interaction=%s error=%s", interaction_id, type(exc).__name__)
        return "unavailable"
    return "queued" if int(outcome) else "duplicate"


# KEYS: primary job, follow-up job, queue, the set of queues, then the primary's dependents, dependencies and
# results keys, then the registries a done job may be listed in. ARGV: primary id, follow-up id, '1' to
# queue at the front, job hash.
_COALESCE = """
local function save(key, id)
  redis.call('HSET', key, unpack(ARGV, 4))
  if ARGV[3] == '1' then redis.call('LPUSH', KEYS[3], id) else redis.call('RPUSH', KEYS[3], id) end
  redis.call('SADD', KEYS[4], KEYS[3])
end
if redis.call('EXISTS', KEYS[1]) == 0 then save(KEYS[1], ARGV[1]) return 1 end
local status = redis.call('HGET', KEYS[1], 'status')
local done = {finished = true, failed = true, stopped = true, canceled = true}
if status == 'started' then
  -- a finished follow-up (of a primary whose worker died while it ran) must not block the next one
  local follow = redis.call('HGET', KEYS[2], 'status')
  if follow and not done[follow] then return 0 end
  if follow then
    redis.call('DEL', KEYS[2])
    for i = 8, #KEYS do redis.call('ZREM', KEYS[i], ARGV[2]) end
  end
  save(KEYS[2], ARGV[2])
  return 2
end
if status and not done[status] then return 0 end
redis.call('DEL', KEYS[1], KEYS[5], KEYS[6], KEYS[7])
for i = 8, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
save(KEYS[1], ARGV[1])
return 1
"""


@lru_cache(maxsize=8)
def _coalesce_script(conn: Redis) -> Any:
    return conn.register_script(_COALESCE)


@lru_cache(maxsize=64)
def _done_registries(conn: Redis, queue_name: str) -> tuple[str, ...]:
    from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

    kinds = (FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry, StartedJobRegistry)
    return tuple(kind(queue_name, connection=conn).key for kind in kinds)


def automation_wait_key(interaction_id: int) -> str:
    """Set while a delayed look of the automations at the interaction waits in Redis (the call has not
    settled, the contact match is pending): the sweep leaves such a row to it, and takes it over when a
    FLUSHALL or a restart took both."""
    return f"switchboard:auto-wait:{interaction_id}"


def defer_automation(
    settings: Settings,
    func: Callable[..., Any],
    interaction_id: int,
    attempt: int,
    delay: timedelta,
    why: str = "settle",
) -> None:
    """Run the automations on the interaction again after `delay`; `why` is what they wait for ("settle":
    the call's last callbacks, "contact": the sync's contact match). Raises RedisError (the job retries)."""
    redis = redis_for(settings)
    redis.set(automation_wait_key(interaction_id), why, ex=int(delay.total_seconds()) + 30)
    enqueue(settings, func, interaction_id, attempt, delay=delay)


def requeue_automations(settings: Settings, rows: list[tuple[int, int]]) -> int:
    """The sweep's half of enqueue_automation: for each (interaction id, version) the automations have not
    seen, queue `auto-<id>` (or its follow-up) unless a delayed look waits for it; returns how many were
    queued. A finished job record never blocks this (the coalescing script replaces it)."""
    if not rows:
        return 0
    pipe = redis_for(settings).pipeline(transaction=False)
    for interaction_id, _version in rows:
        pipe.exists(automation_wait_key(interaction_id))
    waiting = pipe.execute()
    queued = 0
    for (interaction_id, version), wait in zip(rows, waiting, strict=True):
        if not wait and enqueue_automation(settings, interaction_id, version) == "queued":
            queued += 1
    return queued


# --- jobs under fixed ids ---------------------------------------------------------------------------
# A job whose id names exactly the work it does (a step's run, attempt and due time) can be put back by
# the sweeper the moment Redis has lost it: enqueue unless a job under that id waits, is scheduled or
# runs; a finished (or failed, canceled) record under the id is replaced, never taken for "done".

# A scheduled job OVERDUE seconds past its time was not moved by any scheduler (none holds the lock: its
# holder was killed and the lease has not run out): the sweep queues it itself. Should a scheduler move it
# at the same moment, the job runs twice, which a step's atomic claim makes harmless.
OVERDUE = 5

# KEYS: job, queue, the set of queues, scheduled registry, the job's results, dependents and dependencies,
# then the registries a done job may be listed in. ARGV: job id, due (epoch seconds) or '', OVERDUE, '1' to
# queue it at the front, the job hash.
_ENSURE = """
local status = redis.call('HGET', KEYS[1], 'status')
local done = {finished = true, failed = true, stopped = true, canceled = true}
if status == 'scheduled' then
  local at = redis.call('ZSCORE', KEYS[4], ARGV[1])
  if at and tonumber(at) <= tonumber(redis.call('TIME')[1]) - tonumber(ARGV[3]) then
    redis.call('ZREM', KEYS[4], ARGV[1])
    redis.call('HSET', KEYS[1], 'status', 'queued')
    if redis.call('HGET', KEYS[1], 'enqueue_at_front') == '1' then
      redis.call('LPUSH', KEYS[2], ARGV[1])
    else
      redis.call('RPUSH', KEYS[2], ARGV[1])
    end
    return 1
  end
  if at then return 0 end
elseif status and not done[status] then
  return 0
end
if status then
  redis.call('DEL', KEYS[1], KEYS[5], KEYS[6], KEYS[7])
  for i = 8, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('SADD', KEYS[3], KEYS[2])
if ARGV[2] == '' then
  if ARGV[4] == '1' then redis.call('LPUSH', KEYS[2], ARGV[1]) else redis.call('RPUSH', KEYS[2], ARGV[1]) end
else
  redis.call('ZADD', KEYS[4], tonumber(ARGV[2]), ARGV[1])
end
return 1
"""


@dataclass(frozen=True)
class FixedJob:
    """A job under a fixed id: `func(*args)` at `at` (None: now); `at_front`: ahead of the queued jobs when
    due (a timer that is due now must not wait behind a burst of webhook jobs)."""

    job_id: str
    func: str | Callable[..., Any]
    args: tuple[Any, ...]
    at: datetime | None = None
    description: str | None = None
    at_front: bool = False


def ensure_jobs(settings: Settings, jobs: list[FixedJob], conn: Redis | None = None) -> int:
    """Enqueue each job unless one under its id is alive (queued, scheduled, deferred, started), in one
    pipeline, and queue the scheduled ones OVERDUE seconds past their time; returns how many were enqueued
    or moved. Raises RedisError when Redis is away."""
    if not jobs:
        return 0
    from rq.registry import ScheduledJobRegistry

    redis = conn or redis_for(settings)
    q = Queue(settings.queue_name, connection=redis)
    scheduled = ScheduledJobRegistry(queue=q).key
    # A cheap look first (the sweep asks about every step due soon; nearly all of them wait already); the
    # script checks again atomically for the few that look lost or overdue.
    look = redis.pipeline(transaction=False)
    for spec in jobs:
        look.hget(Job.key_for(spec.job_id), "status")
        look.zscore(scheduled, spec.job_id)
    found = look.execute()
    jobs = [spec for i, spec in enumerate(jobs) if _lost(found[2 * i], found[2 * i + 1])]
    if not jobs:
        return 0
    done = _done_registries(redis, q.name)
    script = _ensure_script(redis)
    pipe = redis.pipeline(transaction=False)
    for spec in jobs:
        func = JOBS.get(spec.func, spec.func) if isinstance(spec.func, str) else spec.func
        job = q.create_job(
            func,
            args=spec.args,
            job_id=spec.job_id,
            timeout=settings.job_timeout_seconds,
            description=spec.description,
            failure_ttl=3600,
        )
        q._prepare_for_queue(job)
        job.enqueue_at_front = spec.at_front  # RQ's scheduler reads it when the job falls due
        due = ""
        if spec.at is not None and spec.at.timestamp() > time.time():
            job._status = JobStatus.SCHEDULED
            due = str(math.ceil(spec.at.timestamp()))  # RQ's scheduler keeps whole seconds: never early
        keys = [job.key, q.key, Queue.redis_queues_keys, scheduled]
        keys += [Result.get_key(spec.job_id), job.key + ":dependents", job.key + ":dependencies", *done]
        front = "1" if spec.at_front else "0"
        script(keys=keys, args=[spec.job_id, due, OVERDUE, front, *_build_hset_args(job)], client=pipe)
    return sum(int(n) for n in pipe.execute())


AUTOMATION_SWEEP = FixedJob(
    "sweep-automations",
    "automations_sweep",
    (),
    description="automations sweep",
    at_front=True,
)
AUTOMATION_SWEEP_SECONDS = 5.0  # how often the scheduler's lease holder and `jobs.cron` queue it


def _lost(status: bytes | None, at: float | None) -> bool:
    """Whether a job looks lost (no record, or a done one) or overdue in the scheduled registry."""
    if status is None or status.decode() in _DONE:
        return True
    return status == b"scheduled" and (at is None or at <= time.time() - OVERDUE)


def ensure_job(settings: Settings, job: FixedJob, conn: Redis | None = None) -> bool:
    """ensure_jobs for one job: True if it was enqueued (False: a job under its id is alive)."""
    return bool(ensure_jobs(settings, [job], conn))


@lru_cache(maxsize=8)
def _ensure_script(conn: Redis) -> Any:
    return conn.register_script(_ENSURE)


def _enqueue(q: Queue, settings: Settings, func: str, interaction_id: int, job_id: str) -> bool:
    """Enqueue `func(interaction_id)` under `job_id`; False if a job with that id exists."""
    intervals = list(settings.job_retry_intervals)
    try:
        q.enqueue(
            func,
            interaction_id,
            job_id=job_id,
            unique=True,
            job_timeout=settings.job_timeout_seconds,
            retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
            description=f"{func.rsplit('.', 1)[-1]} interaction {interaction_id}",
        )
    except DuplicateJobError:
        return False
    return True


def queue_crm_events(settings: Settings, event_ids: list[int]) -> None:
    """Hand new CRM events to the automations (the sweeper picks up what Redis misses)."""
    for event_id in event_ids:
        if try_enqueue(settings, "crm_event", event_id, job_id=f"crm-event-{event_id}", unique=True) == (
            "unavailable"
        ):
            return


def ping(settings: Settings) -> bool:
    """Whether Redis answers."""
    try:
        return bool(redis_for(settings).ping())
    except RedisError:
        return False
