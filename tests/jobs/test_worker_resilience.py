"""The Procfile's worker and cron against a private redis-server that we stop and start under them:
no process exit, one log line per outage, work resumes, and delayed jobs fire soon after a worker restart;
automation steps Redis lost fire on time, and automations Redis lost before they ran plan every step once.

Each test runs the real command line (`rq worker -w jobs.worker.Worker -c jobs.rq_config ...`,
`python -m jobs.cron`) as a subprocess; the shared test Redis is never touched.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job
from sqlalchemy import select

from app.automation.store import store_rules
from app.cli import simulate
from app.cli.migrate import upgrade
from app.core import db
from app.core.db import Base
from app.core.models import ActionRun, Interaction, LocalTask
from app.core.settings import Settings
from app.web import create_app
from tests.conftest import PUBLIC_BASE, TEST_KEY, count, make_tenant
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN, TwilioPoster

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs a redis-server binary")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
QUEUE = "resilience"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(check: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except RedisError:
            value = None
        if value:
            return value
        time.sleep(step)
    return None


class RedisServer:
    """A private, non-persistent redis-server on a fixed port, stopped and started at will."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir, self.proc = port, workdir, None
        self._client: Redis | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += [
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(self.workdir / "redis.log"),
        ]
        self.proc = subprocess.Popen(argv)
        assert _until(lambda: self.client().ping(), 10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self) -> Redis:
        """One client for the test (it reconnects after a restart)."""
        if self._client is None:
            self._client = Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=5)
        return self._client

    def close(self) -> None:
        self.stop()
        if self._client is not None:
            self._client.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(_free_port(), tmp_path)
    yield server
    server.close()


class Procs:
    """Subprocesses of one test, each in its own session (so a kill takes its whole group), logs to files."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.tmp, self.started = tmp_path, []
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "REDIS_SENTINELS")
        }
        database_url = f"sqlite:///{tmp_path / 'x.db'}"
        upgrade(database_url)  # the workers' scheduler queues the automations sweep, which reads it
        self.env.update(
            SWITCHBOARD_SECRET_KEY=TEST_KEY,
            SWITCHBOARD_VAR_DIR=str(tmp_path),
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            SWITCHBOARD_QUEUE=QUEUE,
            LOG_LEVEL="INFO",
        )

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        with (self.tmp / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def worker(self, name: str = "worker", **env: str) -> subprocess.Popen[bytes]:
        argv = [str(BIN / "rq"), "worker", "-w", "jobs.worker.Worker", "-c", "jobs.rq_config"]
        return self.start(name, [*argv, "--with-scheduler", QUEUE], **env)

    def cron(self, **env: str) -> subprocess.Popen[bytes]:
        return self.start("cron", [sys.executable, "-m", "jobs.cron"], **env)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with_group(proc, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with_group(proc, signal.SIGKILL)
                    proc.wait(5)


def with_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@pytest.fixture
def procs(tmp_path: Path, redis_server: RedisServer) -> Iterator[Procs]:
    p = Procs(tmp_path, redis_server.url)
    yield p
    p.stop_all()


def _wait_finished(job: Job, timeout: float) -> bool:
    return bool(_until(lambda: job.get_status(refresh=True) == "finished", timeout))


def _worker_registered(server: RedisServer) -> bool:
    return bool(server.client().smembers(f"rq:workers:{QUEUE}"))


@pytest.mark.slow
def test_redis_restart_under_a_running_worker_costs_no_exit(redis_server: RedisServer, procs: Procs) -> None:
    redis_server.start()
    worker = procs.worker()
    assert _until(lambda: _worker_registered(redis_server), 20), procs.log("worker")

    redis_server.stop()
    time.sleep(3)  # the worker's heartbeat, dequeue and scheduler all fail meanwhile
    assert worker.poll() is None, procs.log("worker")
    redis_server.start()  # empty: the worker's keys, lock and registrations are gone

    job = Queue(QUEUE, connection=redis_server.client()).enqueue("operator.add", 1, 2)
    assert _wait_finished(job, 20), procs.log("worker")
    assert job.return_value() == 3
    assert worker.poll() is None
    assert _until(lambda: _worker_registered(redis_server), 10)  # it registered itself again
    out = procs.log("worker")
    assert out.count("redis.unavailable worker=") == 1 and out.count("redis.back worker=") == 1, out
    assert "Traceback" not in out, out


@pytest.mark.slow
def test_a_worker_started_while_redis_is_down_waits_then_works(
    redis_server: RedisServer, procs: Procs
) -> None:
    worker = procs.worker()
    # until it has tried Redis (its imports take seconds on a busy machine), then a little longer
    assert _until(lambda: "redis.unavailable" in procs.log("worker"), 30), procs.log("worker")
    time.sleep(2)
    assert worker.poll() is None, procs.log("worker")  # RQ's stock worker exits 1 here
    redis_server.start()
    job = Queue(QUEUE, connection=redis_server.client()).enqueue("operator.add", 2, 3)
    assert _wait_finished(job, 20), procs.log("worker")
    assert job.return_value() == 5
    assert worker.poll() is None
    out = procs.log("worker")
    assert out.count("redis.unavailable") == 1 and "redis.back" in out, out


@pytest.mark.slow
def test_a_warm_shutdown_during_a_job_starts_no_scheduler_and_exits(
    redis_server: RedisServer, procs: Procs
) -> None:
    """SIGTERM to the worker (its main process, as a process manager stops it) while a job runs: RQ stops
    the scheduler at once; the worker finishes the job and exits, without starting a scheduler again on its
    way out (it once did, from the heartbeat after the job, and that scheduler took teardown's SIGTERM
    with the worker's inherited handler, ignored it, and the worker never exited)."""
    redis_server.start()
    conn = redis_server.client()
    worker = procs.worker(SCHEDULER_LOCK_RETRY="1")
    assert _until(lambda: conn.get(f"rq:scheduler-lock:{QUEUE}"), 20), procs.log("worker")
    job = Queue(QUEUE, connection=conn).enqueue("time.sleep", 2.5)
    assert _until(lambda: job.get_status(refresh=True) == "started", 20), procs.log("worker")
    time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    try:
        rc = worker.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not exit within 20 s of SIGTERM:\n" + procs.log("worker"))
    assert rc == 0, procs.log("worker")
    assert job.get_status(refresh=True) == "finished"
    out = procs.log("worker")
    after = out.split("warm shut down requested", 1)[1]
    assert f"Scheduler for {QUEUE} started" not in after, out
    assert conn.get(f"rq:scheduler-lock:{QUEUE}") is None  # released, so the next worker schedules at once


def _deaf_scheduler(ready: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(60)


def test_a_scheduler_deaf_to_sigterm_is_killed_so_the_worker_exits(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever keeps a scheduler from stopping, the worker's teardown waits SCHEDULER_STOP_SECONDS for
    it, then kills it (its lock lease expires by itself), instead of RQ's unbounded join()."""
    from jobs import worker as worker_module

    monkeypatch.setattr(worker_module, "SCHEDULER_STOP_SECONDS", 0.5)
    redis_server.start()
    conn = redis_server.client()
    worker = worker_module.Worker([QUEUE], connection=conn)
    worker.scheduler = worker_module.Scheduler([QUEUE], connection=conn)
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    process = fork.Process(target=_deaf_scheduler, args=(ready,))
    process.start()
    assert ready.wait(10)
    worker.scheduler._process = process
    started = time.monotonic()
    worker.stop_scheduler()
    assert not process.is_alive() and process.exitcode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_unsubscribing_does_not_wait_out_the_pubsub_threads_minute(redis_server: RedisServer) -> None:
    """The race a SIGTERM'd worker lost (up to 60 s to exit): its pubsub thread read the UNSUBSCRIBE reply
    before it was told to stop, so it waits, unsubscribed, RQ's 60 s `sleep_time` for a subscription.
    Put the thread in that state on purpose; the worker's unsubscribe still returns within a second or so."""
    from jobs import worker as worker_module

    redis_server.start()
    conn = redis_server.client()
    worker = worker_module.Worker([QUEUE], connection=conn)
    worker.subscribe()
    assert _until(lambda: worker.pubsub.subscribed, 5)
    worker.pubsub.unsubscribe()  # as RQ's unsubscribe does first; the thread takes the reply
    assert _until(lambda: not worker.pubsub.subscribed, 5)
    time.sleep(0.2)  # the thread is back in get_message, waiting on the subscribed event
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 3


def test_unsubscribing_stops_the_pubsub_thread(redis_server: RedisServer) -> None:
    """The common order (nothing read yet when the worker unsubscribes): the thread takes the reply and
    exits; nothing is left listening."""
    from jobs import worker as worker_module

    redis_server.start()
    conn = redis_server.client()
    worker = worker_module.Worker([QUEUE], connection=conn)
    for _ in range(5):
        worker.subscribe()
        assert _until(lambda: worker.pubsub.subscribed, 5)
        thread = worker.pubsub_thread
        worker.unsubscribe()
        assert _until(lambda t=thread: not t.is_alive(), 3)


@pytest.mark.slow
def test_a_delayed_job_fires_soon_after_a_worker_restart(redis_server: RedisServer, procs: Procs) -> None:
    """SIGKILL the worker holding the scheduler lock (worker and scheduler: the whole group); the job falls
    due while no scheduler runs; a new worker takes the lock when the dead one's lease ends and enqueues the
    overdue job at once. RQ's defaults (lease 61 s, a new attempt every 120-600 s) make that minutes."""
    lease = {"SCHEDULER_LOCK_TTL": "3", "SCHEDULER_LOCK_RETRY": "1"}
    redis_server.start()
    conn = redis_server.client()
    first = procs.worker("first", **lease)
    assert _until(lambda: conn.get(f"rq:scheduler-lock:{QUEUE}"), 20), procs.log("first")

    job = Queue(QUEUE, connection=conn).enqueue_in(timedelta(seconds=2), "operator.add", 3, 4)
    due = time.time() + 2
    with_group(first, signal.SIGKILL)
    first.wait(5)
    assert conn.get(f"rq:scheduler-lock:{QUEUE}")  # the dead scheduler's lease is still there
    time.sleep(3)  # due while nobody schedules
    procs.worker("second", **lease)
    assert _wait_finished(job, 30), procs.log("second")
    late = job.latest_result().created_at.timestamp() - due
    assert late <= 12, f"{late:.1f}s late"  # lease 3 s + start-up of a worker; the bound is 30 s


@pytest.mark.slow
def test_cron_survives_a_redis_restart_and_sweeps_when_redis_is_back(
    redis_server: RedisServer, procs: Procs
) -> None:
    redis_server.start()
    cron = procs.cron(SWEEP_INTERVAL_SECONDS="30")
    q = Queue(QUEUE, connection=redis_server.client())
    assert _until(lambda: q.count >= 1, 20), procs.log("cron")  # the first sweep, at start

    redis_server.stop()
    time.sleep(2)
    assert cron.poll() is None, procs.log("cron")
    redis_server.start()  # empty: the queued sweep is lost
    assert _until(lambda: q.count >= 1, 15), procs.log("cron")  # swept again at once, not in 30 s
    assert cron.poll() is None

    q.empty()
    redis_server.client().flushall()  # Redis stays up but loses everything
    assert _until(lambda: q.count >= 1, 15), procs.log("cron")
    out = procs.log("cron")
    assert cron.poll() is None and "Traceback" not in out, out
    assert out.count("redis.unavailable cron=") <= 1 and out.count("redis.lost_state cron=") >= 1, out


# --- automations after Redis lost its data -------------------------------------------------------------

OUR = "+15555550100"
STEP_RULES = """
rules:
  - name: pricing-follow-up
    trigger: sms.inbound
    when: {keywords: [pricing]}
    actions:
      - wait: WAIT
      - create_task: {subject: "Pricing question from {{ contact.name }}", due_in: 1h}
"""
LEASE = {"SCHEDULER_LOCK_TTL": "3", "SCHEDULER_LOCK_RETRY": "1"}


class Live:
    """The app in this process and the Procfile processes on the private Redis and one database."""

    def __init__(self, database_url: str, server: RedisServer, procs: Procs, wait: str) -> None:
        self.server, self.procs = server, procs
        settings = Settings(
            database_url=database_url,
            redis_url=server.url,
            secret_keys=(TEST_KEY,),
            public_base_url=PUBLIC_BASE,
            queue_name=QUEUE,
            sweep_after_seconds=0,
            log_level="WARNING",
        )
        app = create_app(settings)
        with db.transaction() as s:
            for table in reversed(Base.metadata.sorted_tables):
                s.execute(table.delete())
        self.tenant = make_tenant("acme", FIXTURE_ACCOUNT, FIXTURE_TOKEN)
        store_rules(self.tenant.id, STEP_RULES.replace("WAIT", wait))
        self.twilio = TwilioPoster(app.test_client(), PUBLIC_BASE, FIXTURE_TOKEN)
        procs.env["DATABASE_URL"] = database_url

    def text(self, n: int) -> None:
        post = simulate.inbound_sms(FIXTURE_ACCOUNT, f"+1555201{n:04d}", OUR, f"pricing please ({n})")
        for delivery in post.deliveries():
            assert self.twilio.post(delivery.path, delivery.params).status_code in (200, 204)

    def steps(self) -> list[ActionRun]:
        with db.transaction() as s:
            return list(s.scalars(select(ActionRun).order_by(ActionRun.id)))


@pytest.fixture
def live_factory(database_url: str, redis_server: RedisServer, procs: Procs) -> Iterator[Any]:
    redis_server.start()
    yield lambda wait: Live(database_url, redis_server, procs, wait)
    db.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["flushall", "redis-restart"])
def test_a_lost_scheduled_step_fires_on_time_without_cron(live_factory: Any, fault: str) -> None:
    """The step's job is lost while it waits; the scheduler's lease holder queues the automations sweep
    every few seconds, which puts the step's job back under its fixed id: on time, once, no cron."""
    live = live_factory("6s")
    conn = live.server.client()
    live.procs.worker(**LEASE)
    assert _until(lambda: conn.get(f"rq:scheduler-lock:{QUEUE}"), 20), live.procs.log("worker")
    live.text(1)
    assert _until(lambda: live.steps(), 20), live.procs.log("worker")
    [step] = live.steps()
    assert step.state == "scheduled"
    if fault == "flushall":
        conn.flushall()
    else:
        live.server.stop()
        live.server.start()  # empty
    assert _until(lambda: live.steps()[0].state == "done", 45), live.procs.log("worker")
    [step] = live.steps()
    late = (step.updated_at - step.due_at).total_seconds()
    assert late <= 15, f"{late:.1f}s late"  # the goal is 30 s
    assert count(LocalTask) == 1
    assert "Traceback" not in live.procs.log("worker")


@pytest.mark.slow
def test_flushall_before_the_automations_ran_plans_every_step_once(live_factory: Any) -> None:
    """Texts acked while no worker runs, then Redis loses their jobs: the sweeps (cron's for the sync, the
    automations sweep for the rest) plan every step exactly once from the database's markers."""
    live = live_factory("1h")
    for n in range(20):
        live.text(n)
    assert count(Interaction, Interaction.automations_version < Interaction.version) == 20
    live.server.client().flushall()
    live.procs.worker(**LEASE)
    live.procs.cron()
    assert _until(lambda: len(live.steps()) >= 20, 40), live.procs.log("worker")
    assert _until(lambda: not count(Interaction, Interaction.automations_version < Interaction.version), 20)
    time.sleep(6)  # another automations sweep: it finds nothing to do
    steps = live.steps()
    assert len(steps) == 20 and len({s.trigger_ref for s in steps}) == 20
    out = live.procs.log("worker") + live.procs.log("cron")
    assert "Traceback" not in out, out
