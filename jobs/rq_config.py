"""Settings module for the `rq` command line (`rq worker -c jobs.rq_config`): plain REDIS_URL, or Sentinel.

Importing it also preloads the job code in the worker's main process: RQ forks a work horse per job, and
without this each one would import Flask, SQLAlchemy and the SDKs anew (about 0.3 s a job).

RQ reads REDIS_URL or a SENTINEL dict from this module:
https://python-rq.org/docs/workers/#using-a-config-file and https://python-rq.org/docs/connections/
"""

import jobs.automations
import jobs.sync  # noqa: F401
from jobs.setup import configure_from_env

# Explicit set-up of the worker's main process; each forked work horse inherits it (the database pool is
# dropped in the child, see app.core.db).
_settings = configure_from_env()

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
