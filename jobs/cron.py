"""The sweeper's clock: `python -m jobs.cron` enqueues jobs.sync.sweep (and each CRM's cron jobs,
CrmProvider.cron, e.g. Salesforce's polling) every SWEEP_INTERVAL_SECONDS (default 30) and the automations
sweep (lost steps and automation jobs; one job under a fixed id, which the workers' scheduler queues too)
every few seconds, and rides out Redis outages; `rq cron -c jobs.rq_config jobs.cron` still works (same
registration, no automations sweep) but exits when Redis goes away.

`python -m jobs.cron` waits for Redis at start-up instead of exiting, retries with a capped backoff while
Redis is away (one log line when it goes, one when it is back), and enqueues a sweep as soon as Redis is
back, or as soon as its heartbeat (every 5 s) finds that Redis lost its keys (a restart without persistence,
FLUSHALL): the sweep re-enqueues from the database what Redis lost.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from rq import cron, cron_scheduler_registry
from rq.cron import CronScheduler
from rq.defaults import DEFAULT_CRON_SCHEDULER_TTL
from rq.exceptions import StopRequested

import connectors
from app.core import queue
from app.core.queue import AUTOMATION_SWEEP_SECONDS, redis_for
from jobs.setup import REDIS_DOWN, Outage, configure_from_env
from jobs.sync import sweep

_settings = configure_from_env()
CHECK_SECONDS = 5.0  # between sweeps, a heartbeat this often notices a Redis that lost its keys

JOBS: list[dict[str, Any]] = [
    {"func": sweep, "queue_name": _settings.queue_name, "interval": _settings.sweep_interval_seconds},
]
for _target in (target for spec in connectors.providers() for target in spec.cron):  # e.g. polling a CRM
    JOBS.append(
        {
            "func": connectors.load(_target),
            "queue_name": _settings.queue_name,
            "interval": _settings.sweep_interval_seconds,
        }
    )
for _job in JOBS:
    cron.register(**_job)  # for `rq cron ... jobs.cron`


class Cron(CronScheduler):
    """RQ's cron scheduler that waits out Redis instead of exiting, and sweeps at once after an outage."""

    def start(self) -> None:
        self.log.info("CronScheduler %s: starting...", self.name)
        self._install_signal_handlers()
        outage = Outage(self.log, f"cron={self.name}")
        born, last_sweep = False, 0.0
        try:
            while True:
                try:
                    if not born:
                        self.register_birth()
                        born = True
                    if self.enqueue_jobs():
                        self.save()
                    if time.monotonic() - last_sweep >= AUTOMATION_SWEEP_SECONDS:
                        queue.ensure_job(_settings, queue.AUTOMATION_SWEEP, conn=self.connection)
                        last_sweep = time.monotonic()
                    lost = self.heartbeat_found_keys_lost()
                except REDIS_DOWN as exc:
                    born = False
                    time.sleep(outage.failed(exc))
                    continue
                if outage.recovered() or lost:
                    self.due_now()  # Redis may have lost queued work: sweep now, not in 30 s
                    continue
                sleep_time = min(self.calculate_sleep_interval(), CHECK_SECONDS)
                if sleep_time > 0:
                    time.sleep(sleep_time)
        except (KeyboardInterrupt, StopRequested):
            self.log.info("CronScheduler %s: stop requested", self.name)
        finally:
            with contextlib.suppress(*REDIS_DOWN):
                self.register_death()
            self.log.info("CronScheduler %s: shutdown complete", self.name)

    def heartbeat_found_keys_lost(self) -> bool:
        """RQ's heartbeat; True if our registry entry or hash was gone (Redis lost its data)."""
        with self.connection.pipeline() as pipeline:
            pipeline.zadd(cron_scheduler_registry.get_registry_key(), {self.name: time.time()})
            pipeline.expire(self.key, DEFAULT_CRON_SCHEDULER_TTL)
            added, refreshed = pipeline.execute()
        if not refreshed:
            self.save()
        if added or not refreshed:
            self.log.warning("redis.lost_state cron=%s: our keys were gone; sweeping now", self.name)
            return True
        return False

    def due_now(self) -> None:
        """Make every interval job due at once."""
        for job in self.get_jobs():
            if job.interval:
                job.latest_enqueue_time = None
                job.next_enqueue_time = None


def main() -> None:
    """`python -m jobs.cron`: run the registered jobs until SIGTERM/SIGINT."""
    scheduler = Cron(connection=redis_for(_settings), logging_level=_settings.log_level)
    for job in JOBS:
        scheduler.register(**job)
    scheduler.start()


if __name__ == "__main__":
    main()
