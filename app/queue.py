"""Redis and RQ: deterministic job ids, enqueue that never fails a webhook, and the re-enqueue rules."""

from __future__ import annotations

import logging
from functools import lru_cache

from redis import Redis
from redis.exceptions import RedisError
from redis.sentinel import Sentinel
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus

from app.settings import Settings

log = logging.getLogger(__name__)

SYNC_JOB = "jobs.sync.log_interaction"
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


def sync_job_id(interaction_id: int, version: int) -> str:
    """One job per interaction version; RQ ids allow only letters, digits, '_' and '-'."""
    return f"sync-{interaction_id}-v{version}"


def enqueue_sync(
    settings: Settings, interaction_id: int, version: int, *, replace_done: bool = False
) -> bool:
    """Enqueue the CRM sync of one interaction version: "queued", "duplicate" or "unavailable".

    "unavailable" means Redis did not answer; the row stays pending and the sweeper enqueues it later.

    With replace_done, a finished or failed job of the same id is deleted and enqueued again (sweeper and
    `failed retry`); otherwise an existing job with the id means the work is already queued.
    """
    q = queue_for(settings)
    job_id = sync_job_id(interaction_id, version)
    intervals = list(settings.job_retry_intervals)
    kwargs = {
        "job_id": job_id,
        "unique": True,
        "job_timeout": settings.job_timeout_seconds,
        "retry": Retry(max=len(intervals), interval=intervals) if intervals else None,
        "description": f"sync interaction {interaction_id} v{version}",
    }
    try:
        try:
            q.enqueue(SYNC_JOB, interaction_id, **kwargs)
        except DuplicateJobError:
            if not replace_done:
                return "duplicate"
            try:
                existing = Job.fetch(job_id, connection=q.connection)
            except NoSuchJobError:
                existing = None
            if existing is not None and existing.get_status(refresh=True) not in _DONE:
                return "duplicate"  # still queued, scheduled or running
            if existing is not None:
                existing.delete()
            q.enqueue(SYNC_JOB, interaction_id, **kwargs)
        return "queued"
    except RedisError as exc:
        log.warning("queue.unavailable interaction=%s error=%s", interaction_id, type(exc).__name__)
        return "unavailable"


def ping(settings: Settings) -> bool:
    """Whether Redis answers."""
    try:
        return bool(redis_for(settings).ping())
    except RedisError:
        return False
