"""The RQ worker class for `rq worker -w jobs.worker.Worker -c jobs.rq_config --with-scheduler QUEUE`.

RQ's stock worker exits (rc 1) when Redis goes away mid-loop, and its scheduler process dies with a
traceback; a new worker waits up to RQ's fallback period (minutes) for the dead one's scheduler lock. This
subclass instead:

- rides out Redis outages (a restart, a Sentinel failover, FLUSHALL): every Redis call of the main loop
  (heartbeat, suspension check, maintenance, dequeue, job set-up and bookkeeping) waits for Redis with a
  capped backoff, logged once when Redis goes and once when it is back, then registers the worker again;
  a job whose work horse is running when Redis goes is waited for, never orphaned;
- at start-up waits for Redis instead of exiting (`jobs.rq_config` waits before the rq CLI touches Redis;
  the worker's own start-up calls wait too);
- runs a scheduler (`Scheduler`) that survives outages, queues the automations sweep every few seconds
  while it holds the lock (lost delayed steps come back without the `cron` process), holds its lock
  `rq:scheduler-lock:<queue>` with a short TTL (SCHEDULER_LOCK_TTL, default 15 s) refreshed every second,
  and exits when its worker dies, releasing the lock; a worker without the lock tries to take it every
  SCHEDULER_LOCK_RETRY seconds (default 3), so after a crash the next worker schedules within about TTL +
  retry seconds, and at once enqueues every job that fell due meanwhile (RQ's scheduled registry is kept
  in Redis by due time);
- stops promptly when asked: its scheduler is waited for at most SCHEDULER_STOP_SECONDS, its pubsub
  thread at most 1 s (`PromptUnsubscribe`).

The database stays the source of truth: what an outage loses (a FLUSHALL, a Redis restarted without
persistence) the sweeper (`jobs.cron`, `jobs.sync.sweep`) re-enqueues.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from datetime import datetime
from typing import Any

from redis import Redis
from rq import worker_registration
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.scripts import ACQUIRE_OR_REFRESH_LOCK_SCRIPT, acquire_or_refresh_lock
from rq.utils import now, utcformat
from rq.worker import Worker as RQWorker
from rq.worker import WorkerStatus

from app.core import bootstrap, queue
from jobs.setup import BACKOFF_CAP, REDIS_DOWN, Outage, wait_for_redis

log = logging.getLogger(__name__)

SCHEDULER_STOP_SECONDS = 5  # a scheduler sleeps `interval` (1 s) between rounds; then it is killed


def _env_seconds(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return max(1, value)


class Scheduler(RQScheduler):
    """RQ's scheduler with a short lock lease, frequent lock attempts, and no exit on a Redis outage."""

    lock_ttl = 15  # seconds the lock outlives its last refresh (RQ: interval + 60)
    lock_retry = 3  # seconds between attempts to take a lock held by someone else (RQ: 120 or 600)

    @property
    def should_reacquire_locks(self) -> bool:
        if self._queue_names == self.acquired_locks:
            return False
        if not self.lock_acquisition_time:
            return True
        return (datetime.now() - self.lock_acquisition_time).total_seconds() >= self.lock_retry

    def acquire_locks(self, auto_start: bool = False) -> set[str]:
        """RQ's acquire_locks with our lease (`lock_ttl`) instead of interval + 60 s."""
        successful = set()
        for name in self._queue_names:
            outcome = acquire_or_refresh_lock(
                self.connection, self.get_locking_key(name), self.name, self.lock_ttl
            )
            if outcome == "acquired":
                self.log.info("Acquired scheduler lock for %s", name)
            if outcome in ("acquired", "refreshed"):
                successful.add(name)
        self._scheduled_job_registries = []
        self._acquired_locks = successful
        self.lock_acquisition_time = datetime.now()
        if self._acquired_locks and auto_start and (not self._process or not self._process.is_alive()):
            self.start()
        return successful

    def heartbeat(self) -> None:
        """RQ's heartbeat with our lease: refresh the locks we hold, drop the ones taken over."""
        self.last_heartbeat = now()
        names = sorted(self._acquired_locks)
        script = self.connection.register_script(ACQUIRE_OR_REFRESH_LOCK_SCRIPT)
        with self.connection.pipeline() as pipeline:
            pipeline.hset(self.key, "last_heartbeat", utcformat(self.last_heartbeat))
            pipeline.expire(self.key, self.interval + 60)
            for name in names:
                script(keys=[self.get_locking_key(name)], args=[self.name, self.lock_ttl], client=pipeline)
            results = pipeline.execute()
        lost = {name for name, outcome in zip(names, results[2:], strict=True) if outcome == 0}
        if lost:
            self.log.warning(
                "Scheduler locks for %s were taken over by another scheduler", ", ".join(sorted(lost))
            )
            self._acquired_locks -= lost
            self._scheduled_job_registries = []

    _last_sweep = 0.0

    def queue_sweep(self) -> None:
        """While we hold a lock, queue the automations sweep every few seconds (one job under a fixed id):
        steps and automation jobs Redis lost come back within seconds even with no `cron` process."""
        if not self._acquired_locks or time.monotonic() - self._last_sweep < queue.AUTOMATION_SWEEP_SECONDS:
            return
        queue.ensure_job(bootstrap.current(), queue.AUTOMATION_SWEEP, conn=self.connection)
        self._last_sweep = time.monotonic()

    def work(self) -> None:
        """The scheduler process: enqueue due jobs every `interval` seconds while we hold a lock; wait out
        Redis outages; stop when asked or when the worker that forked us is gone."""
        self._install_signal_handlers()
        parent = os.getppid()
        outage = Outage(self.log, f"scheduler={self.name}")
        born = False
        while not self._stop_requested:
            if os.getppid() != parent:
                self.log.warning("Scheduler %s: its worker is gone; stopping", self.name)
                break
            try:
                if not born:
                    self.register_birth()
                    born = True
                if self.should_reacquire_locks:
                    self.acquire_locks()
                self.heartbeat()
                self.enqueue_scheduled_jobs()
                self.queue_sweep()
            except REDIS_DOWN as exc:
                born = False
                self._acquired_locks, self._scheduled_job_registries = set(), []
                self.lock_acquisition_time = None  # try the lock again as soon as Redis answers
                time.sleep(outage.failed(exc))
                continue
            outage.recovered()
            time.sleep(self.interval)
        try:
            self.stop()
        except REDIS_DOWN:
            self.log.warning("Scheduler %s: stopped without releasing its locks (Redis away)", self.name)


class PromptUnsubscribe:
    """A worker mixin: RQ's unsubscribe with the pubsub thread told to stop *before* the UNSUBSCRIBE goes
    out, and a bounded wait for it.

    RQ sends UNSUBSCRIBE, then calls the thread's `stop()`. Since redis-py 8, `stop()` joins the thread
    with no timeout, and a thread that read the UNSUBSCRIBE reply before `stop()` cleared its flag loops
    once more into `get_message(timeout=60)`, which, unsubscribed, waits the whole 60 s for a subscription:
    a worker took up to a minute to exit on SIGTERM (seen in bench/sync_live.py --scaling), past the 30 s a
    process manager such as Heroku allows before SIGKILL, and a burst worker (the tests' in-process one)
    up to a minute to return. With the flag cleared first, the thread returns with the reply and exits; the
    daemon thread is never waited for longer than a second."""

    pubsub: Any
    pubsub_thread: Any
    pubsub_channel_name: str
    name: str
    log: logging.Logger

    def unsubscribe(self) -> None:
        thread = self.pubsub_thread
        if not thread:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
        thread._running.clear()  # what stop() does first, in every redis-py version; stop() itself may join
        with contextlib.suppress(*REDIS_DOWN):  # the thread stops anyway; the channel dies with Redis
            self.pubsub.unsubscribe()
        thread.join(timeout=1)
        self.pubsub.close()


class Worker(PromptUnsubscribe, RQWorker):
    """A forking RQ worker that survives Redis outages and takes over scheduling quickly (see module doc)."""

    scheduler_class = Scheduler
    max_connection_wait_time = BACKOFF_CAP  # RQ's own dequeue retry backoff: capped like ours

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock_ttl = _env_seconds("SCHEDULER_LOCK_TTL", Scheduler.lock_ttl)
        self.lock_retry = _env_seconds("SCHEDULER_LOCK_RETRY", Scheduler.lock_retry)
        self._outage = Outage(log, "worker")
        self._last_lock_try = 0.0
        super().__init__(*args, **kwargs)
        self._outage.who = f"worker={self.name}"

    # --- timeouts --------------------------------------------------------------------------------------

    @property
    def dequeue_timeout(self) -> int:
        """Block on the queue for a few seconds at a time (RQ: worker_ttl - 15 = 405 s), so an idle worker
        heartbeats, notices a dead Redis and tries for the scheduler lock every few seconds."""
        return self.lock_retry

    def _set_connection(self, connection: Redis) -> Redis:
        connection = super()._set_connection(connection)
        kwargs = connection.connection_pool.connection_kwargs
        if kwargs.get("socket_connect_timeout") is None:
            kwargs["socket_connect_timeout"] = 5  # a failed-over host that drops packets: fail fast, retry
        return connection

    # --- waiting for Redis -----------------------------------------------------------------------------

    def _await_redis(self, exc: BaseException) -> None:
        """Block until Redis answers again, then register this worker again (its keys may be gone)."""
        while True:
            if not wait_for_redis(self.connection, self._outage, lambda: self._stop_requested, exc):
                raise StopRequested()
            try:
                self._reregister()
                return
            except REDIS_DOWN as again:
                exc = again

    def _reregister(self) -> None:
        """Write this worker's hash and registry entries again (after Redis restarted empty or FLUSHALL)."""
        self.birth_date = self.birth_date or now()
        self.last_heartbeat = now()
        with self.connection.pipeline() as pipeline:
            pipeline.hset(self.key, mapping=self.serialize())
            pipeline.hset(self.key, "state", self._state)
            worker_registration.register(self, pipeline)
            pipeline.expire(self.key, self.worker_ttl + 60)
            pipeline.execute()

    def _set_ip_address(self, connection: Redis) -> None:
        while True:
            try:
                return super()._set_ip_address(connection)
            except REDIS_DOWN as exc:
                wait_for_redis(connection, self._outage, first_error=exc)

    # --- start-up --------------------------------------------------------------------------------------

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().bootstrap(*args, **kwargs)
        except REDIS_DOWN as exc:  # part of the start-up was written: wait, then write all of it again
            self._await_redis(exc)
            if self.pubsub_thread is None:
                self.subscribe()
            self.set_state(WorkerStatus.STARTED)

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        """RQ's _start_scheduler with our Scheduler class and lease settings."""
        scheduler = self.scheduler_class(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        scheduler.lock_ttl, scheduler.lock_retry = self.lock_ttl, self.lock_retry
        self.scheduler = scheduler
        while True:
            try:
                scheduler.acquire_locks()
                if scheduler.acquired_locks and burst:
                    try:
                        scheduler.register_birth()
                        scheduler.enqueue_scheduled_jobs()
                    finally:
                        scheduler.release_locks()
                        scheduler.register_death()
                break
            except REDIS_DOWN as exc:
                self._await_redis(exc)
        self._last_lock_try = time.monotonic()
        if scheduler.acquired_locks and not burst:
            scheduler.start()

    def _tend_scheduler(self) -> None:
        """Without a running scheduler, try for the lock every `lock_retry` seconds (RQ: every
        maintenance interval, 10 minutes), and start one as soon as it is ours."""
        scheduler = self.scheduler
        # Once a warm shutdown is asked for, RQ has stopped the scheduler (Worker._shutdown): starting a new
        # one now (the heartbeat after the last job did) races teardown's SIGTERM, which a freshly forked
        # child takes with the worker's inherited handler, and that ignores a signal within 1 s of the
        # first; the scheduler kept running and teardown's join() held the worker forever (seen in
        # bench/sync_live.py --scaling: a worker that did not exit on SIGTERM).
        if scheduler is None or self.is_horse or self._stop_requested:
            return
        if scheduler._process is not None and scheduler._process.is_alive():
            return
        if time.monotonic() - self._last_lock_try < self.lock_retry:
            return
        self._last_lock_try = time.monotonic()
        try:
            scheduler.acquire_locks(auto_start=True)
        except REDIS_DOWN as exc:
            self._outage.failed(exc)

    # --- the main loop ---------------------------------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:  # part of maintain_heartbeats' pipeline
            return super().heartbeat(timeout, pipeline=pipeline)
        timeout = timeout or self.worker_ttl + 60
        self.last_heartbeat = now()
        try:
            with self.connection.pipeline() as p:
                p.hset(self.key, "last_heartbeat", utcformat(self.last_heartbeat))
                p.expire(self.key, timeout)
                p.expire(self.executions_key, timeout)
                created = p.execute()[0]
            if self._outage.recovered() or created:
                if created:
                    log.warning("redis.lost_state worker=%s: our keys are gone; registering again", self.name)
                self._reregister()
        except REDIS_DOWN as exc:
            if self.horse_pid:  # a job is running: keep watching it, Redis can wait
                self._outage.failed(exc)
                return
            self._await_redis(exc)
        self._tend_scheduler()

    def maintain_heartbeats(self, job: Job, execution: Any) -> None:
        try:
            super().maintain_heartbeats(job, execution)
        except REDIS_DOWN as exc:  # never leave the horse unwatched for Redis
            self._outage.failed(exc)

    def check_for_suspension(self, burst: bool) -> None:
        while True:
            try:
                return super().check_for_suspension(burst)
            except REDIS_DOWN as exc:
                self._await_redis(exc)

    def run_maintenance_tasks(self) -> None:
        if self._stop_requested:  # RQ's maintenance restarts a stopped scheduler: not while we stop
            return
        try:
            super().run_maintenance_tasks()
        except REDIS_DOWN as exc:  # tried again at the next loop (last_cleaned_at did not move)
            self._await_redis(exc)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except REDIS_DOWN as exc:
                self._await_redis(exc)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        except REDIS_DOWN as exc:
            if self.horse_pid:  # the horse finishes the job (and records what it can): wait for it
                log.warning("redis.unavailable worker=%s job=%s: waiting for its horse", self.name, job.id)
                with contextlib.suppress(ChildProcessError, OSError):
                    self.wait_for_horse()
                self._horse_pid = 0
            self.executions.clear()
            # The job's ledger row stays pending unless the horse committed it; the sweeper re-enqueues it.
            self._await_redis(exc)
            with contextlib.suppress(*REDIS_DOWN):
                self.set_state(WorkerStatus.IDLE)

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        if isinstance(exc, REDIS_DOWN):  # the command channel reconnects by itself; say so once per outage
            self._outage.note(exc)
            time.sleep(BACKOFF_CAP)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def stop_scheduler(self) -> None:
        """RQ's stop_scheduler (SIGTERM, join) with a bounded join: a scheduler that does not stop within
        a few seconds is killed (it holds a lease that expires by itself), so the worker always exits."""
        process = self.scheduler._process if self.scheduler is not None else None
        if process is None or process.pid is None:
            return
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGTERM)
        process.join(SCHEDULER_STOP_SECONDS)
        if process.is_alive():
            log.warning(
                "scheduler pid=%s did not stop within %ss of SIGTERM: killed",
                process.pid,
                SCHEDULER_STOP_SECONDS,
            )
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGKILL)
            process.join()

    def teardown(self) -> None:
        try:
            super().teardown()
        except REDIS_DOWN:
            log.warning("worker=%s stopped without registering its death (Redis away)", self.name)
