"""RQ cron configuration: `rq cron jobs.cron` runs the sweeper every SWEEP_INTERVAL_SECONDS (default 30)."""

import os

from rq import cron

from jobs.sync import sweep

cron.register(
    sweep,
    queue_name=os.environ.get("SWITCHBOARD_QUEUE", "switchboard"),
    interval=int(os.environ.get("SWEEP_INTERVAL_SECONDS", "30")),
)
