"""Set-up for the RQ entry points (`rq worker -w jobs.worker.Worker -c jobs.rq_config`,
`python -m jobs.cron`): configure the process explicitly from the environment, or stop with one line naming
the setting and exit code 2; and ride out Redis outages (wait with a capped backoff, one log line when
Redis goes, one when it comes back)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core import bootstrap
from app.core.settings import ConfigError, Settings

# What "Redis is away" looks like to a client: refused or reset connections, and timeouts. Anything else
# (a ResponseError, a bug) is not an outage and is not retried here.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
BACKOFF_FIRST = 0.5  # seconds before the first retry
BACKOFF_CAP = 5.0  # the backoff doubles up to this, so a process notices within 5 s that Redis is back


def configure_from_env() -> Settings:
    """Validate and install the settings, or exit 2 with the reason on stderr (no traceback)."""
    try:
        return bootstrap.configure(Settings.from_env())
    except ConfigError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class Outage:
    """A Redis outage as one process sees it: logged once when it starts and once when it ends, with a
    capped exponential backoff for the retries in between (not a traceback per second)."""

    def __init__(self, log: logging.Logger, who: str) -> None:
        self.log, self.who = log, who
        self.since: float | None = None
        self.delay = BACKOFF_FIRST

    @property
    def active(self) -> bool:
        """Whether Redis is away (a failure was noted and no success since)."""
        return self.since is not None

    def failed(self, exc: BaseException) -> float:
        """Note a failed Redis call; returns the seconds to sleep before the next try."""
        if self.since is None:
            self.since, self.delay = time.monotonic(), BACKOFF_FIRST
            self.log.warning(
                "redis.unavailable %s error=%s (%s); retrying with backoff, at most %.0f s apart",
                self.who,
                type(exc).__name__,
                str(exc)[:200],
                BACKOFF_CAP,
            )
        delay, self.delay = self.delay, min(self.delay * 2, BACKOFF_CAP)
        return delay

    def note(self, exc: BaseException) -> None:
        """Note a failure seen elsewhere (another thread of the process): logged if it starts an outage."""
        if self.since is None:
            self.failed(exc)

    def recovered(self) -> bool:
        """Note a successful Redis call; True (and one log line) if that ends an outage."""
        if self.since is None:
            return False
        self.log.warning("redis.back %s after=%.1fs", self.who, time.monotonic() - self.since)
        self.since = None
        return True


def wait_for_redis(
    conn: Redis,
    outage: Outage,
    should_stop: Callable[[], bool] = lambda: False,
    first_error: BaseException | None = None,
) -> bool:
    """Block until Redis answers a PING (True), or `should_stop()` says to give up (False)."""
    if first_error is not None:
        time.sleep(outage.failed(first_error))
    while not should_stop():
        try:
            conn.ping()
        except REDIS_DOWN as exc:
            time.sleep(outage.failed(exc))
            continue
        outage.recovered()
        return True
    return False


def warm_orm() -> None:
    """Configure the ORM's mappers and compile each model's load by primary key in the worker's main
    process, so every forked work horse inherits both.

    RQ forks a horse per job, and a horse's work dies with it: without this, each job configured every
    mapper and compiled its first statements anew, about 40 % of a short automation job (a py-spy profile
    of bench/faults.py, issue 8). The compiled statements live in the engine's cache, which a fork
    copies; the connection used here is closed again, the horses open their own. A database that is down
    only costs the warm-up: the jobs retry as they always do.
    """
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import configure_mappers

    from app.core import db, models

    assert models  # imported for its mappers
    configure_mappers()
    try:
        with db.transaction() as s:
            for mapper in db.Base.registry.mappers:
                s.get(mapper.class_, tuple(0 for _ in mapper.primary_key))
    except SQLAlchemyError as exc:
        logging.getLogger("jobs.worker").info("worker.warm_up_skipped error=%s", type(exc).__name__)
    finally:
        db.engine().dispose()  # the main process keeps no connection: the horses open their own
