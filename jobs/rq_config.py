"""Settings module for the `rq` command line (`rq worker -c jobs.rq_config`): plain REDIS_URL, or Sentinel.

RQ reads REDIS_URL or a SENTINEL dict from this module:
https://python-rq.org/docs/workers/#using-a-config-file and https://python-rq.org/docs/connections/
"""

from app.settings import Settings

_settings = Settings.from_env()

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
