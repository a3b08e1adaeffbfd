"""Settings module for the `rq` command line (`rq worker -w jobs.worker.Worker -c jobs.rq_config`): plain
REDIS_URL, or Sentinel.

Importing it also preloads the job code in the worker's main process: RQ forks a work horse per job, and
without this each one would import Flask, SQLAlchemy and the SDKs anew (about 0.3 s a job), and configure
the ORM's mappers and compile its statements anew (jobs.setup.warm_orm).

Under `rq worker` (and `rq cron`) it waits for Redis before returning: the rq CLI reads this module first
and then calls Redis once before the worker class gets control, and exits 1 if Redis is away. Waiting here
(capped backoff, one line when Redis is away, one when it is back) makes a worker started during an
outage wait and then work; jobs.worker.Worker takes over from there.

RQ reads REDIS_URL or a SENTINEL dict from this module:
https://python-rq.org/docs/workers/#using-a-config-file and https://python-rq.org/docs/connections/
"""

import logging
import os
import sys

import connectors
import jobs.automations
import jobs.sync  # noqa: F401
from app.core.queue import redis_for
from jobs.setup import Outage, configure_from_env, wait_for_redis, warm_orm

# Explicit set-up of the worker's main process; each forked work horse inherits it (the database pool is
# dropped in the child, see app.core.db).
_settings = configure_from_env()
connectors.preload()
warm_orm()

if _settings.redis_sentinels:
    from redis import Redis

    _kwargs = Redis.from_url(_settings.redis_url).connection_pool.connection_kwargs
    SENTINEL = {
        "INSTANCES": _settings.sentinel_hosts(),
        "MASTER_NAME": _settings.redis_sentinel_master,
        "DB": _kwargs.get("db", 0),
        "PASSWORD": _kwargs.get("password"),
        "SOCKET_TIMEOUT": 5,
    }
else:
    REDIS_URL = _settings.redis_url

if os.path.basename(sys.argv[0]) == "rq" and sys.argv[1:2] in (["worker"], ["cron"]):
    wait_for_redis(
        redis_for(_settings), Outage(logging.getLogger("jobs.worker"), f"rq {sys.argv[1]} start-up")
    )
