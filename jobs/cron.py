"""RQ cron configuration: `rq cron jobs.cron` runs the sweeper every SWEEP_INTERVAL_SECONDS (default 30)."""

from rq import cron

from jobs.setup import configure_from_env
from jobs.sync import sweep

_settings = configure_from_env()

cron.register(sweep, queue_name=_settings.queue_name, interval=_settings.sweep_interval_seconds)
