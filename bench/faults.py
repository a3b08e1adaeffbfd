"""Fault harness: the Procfile's processes under SIGKILLs and Redis restarts, and what reached the CRM.

Runs the `web`, `worker` (twice) and `cron` lines of the Procfile as subprocesses, exactly as written (so
`rq worker -w jobs.worker.Worker ...` and `python -m jobs.cron`), against a private redis-server on a free
port (no persistence: a restart loses everything, the worst case), a throwaway PostgreSQL database at
127.0.0.1:5432 (SQLite with --sqlite) and the built-in CRM, so no emulator is needed. It sends a burst of
signed Twilio webhooks (distinct inbound texts; every 4th mentions pricing, which a rule turns into a task
15 s later, a delayed automation step) while it injects the scenario's faults:

- kill: SIGKILL a worker every --kill-every seconds, alternately, with its whole process group (worker and
  scheduler) and its work horse's (RQ puts the horse in a process group of its own); the harness restarts
  the worker at once, like a process manager;
- redis-restart: stop the redis-server mid-burst (SIGTERM, no persistence: its data is gone) and start it
  again --down seconds later;
- flushall: FLUSHALL mid-burst (Redis stays up, loses every queued and scheduled job).

Any process that exits without being killed by the harness is counted ("process exits") and restarted.
Afterwards it waits until every acked text is in the CRM (or --settle seconds pass) and prints, per
scenario: sent, acked (2xx), 5xx, landed once, lost, duplicated (activities or contacts beyond one per
text), p50/p95/max lag from ack to CRM, when the last one landed relative to the last fault, the delayed
steps (wanted, planned, fired, one per trigger, p50/p95/max lateness against their due time; the goal:
all planned and fired once, <= 30 s late), and process exits. The goal the sync engine works toward:
every acked interaction in the CRM <= 60 s after the last fault, exactly once.

    .venv/bin/python bench/faults.py [--kill] [--redis-restart] [--flushall] (default: all three)
        [--rate 10] [--burst-seconds 20] [--kill-every 3] [--down 5] [--fault-at F] [--settle 180]
        [--sqlite] [--no-cron]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["SWITCHBOARD_VAR_DIR"] = tempfile.mkdtemp(prefix="switchboard-faults-")

from redis import Redis  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402

from app.automation.store import store_rules  # noqa: E402
from app.cli import migrate, simulate  # noqa: E402
from app.cli.devrunner import free_port, wait_for_port  # noqa: E402
from app.core import bootstrap, crypto, db, tenants  # noqa: E402
from app.core.models import ActionRun, Interaction, LocalActivity, LocalContact  # noqa: E402
from app.core.settings import Settings, database_url_for_sqlalchemy  # noqa: E402
from bench.common import procfile, scratch_postgres  # noqa: E402

ACCOUNT = "AC" + "fa" * 16
TOKEN = secrets.token_hex(16)
OUR_NUMBER = "+15555550100"
SMS_PATH = "/webhooks/twilio/sms"
STEP_DELAY = 15  # seconds: the rule's wait before its task
GOAL_SECONDS = 60.0
STEP_GOAL_SECONDS = 30.0  # a delayed step fires at most this late after a fault
RULES = f"""
rules:
  - name: pricing-follow-up
    trigger: sms.inbound
    when: {{keywords: [pricing]}}
    actions:
      - wait: {STEP_DELAY}s
      - create_task:
          subject: "Pricing question from {{{{ contact.name }}}}"
          due_in: 1h
"""
BIN = Path(sys.executable).parent


def _postgres(admin_url: str) -> tuple[str, str] | None:
    return scratch_postgres(admin_url, "switchboard_faults")


def _drop_postgres(admin_url: str, name: str) -> None:
    db.dispose()
    engine = create_engine(database_url_for_sqlalchemy(admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


class RedisServer:
    """A private redis-server without persistence, stopped and started at will."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir = free_port(6393), workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server") or "redis-server"
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    killed: bool = False  # by us: not an exit to count


@dataclass
class Fleet:
    """The Procfile processes, restarted at once when they die (counting the exits we did not cause)."""

    env: dict[str, str]
    logdir: Path
    children: list[Child] = field(default_factory=list)
    exits: list[str] = field(default_factory=list)
    stopping: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spawn(self, name: str, argv: list[str]) -> Child:
        with (self.logdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return Child(name, argv, proc)

    def start(self, name: str, argv: list[str]) -> None:
        self.children.append(self.spawn(name, argv))

    def kill(self, name: str) -> None:
        """SIGKILL a child's process group and its work horse's, then start it again at once."""
        with self.lock:
            child = next(c for c in self.children if c.name == name)
            child.killed = True
            for pid in _descendants(child.proc.pid):
                _killpg(pid)
            _killpg(child.proc.pid)
            child.proc.wait(5)
            self.children[self.children.index(child)] = self.spawn(name, child.argv)

    def watch(self) -> None:
        while not self.stopping:
            with self.lock:
                for i, child in enumerate(self.children):
                    if child.proc.poll() is not None and not child.killed:
                        self.exits.append(f"{child.name} rc={child.proc.returncode}")
                        self.children[i] = self.spawn(child.name, child.argv)
            time.sleep(0.2)

    def stop(self) -> None:
        self.stopping = True
        for child in self.children:
            if child.proc.poll() is None:
                _killpg(child.proc.pid, signal.SIGTERM)
        for child in self.children:
            try:
                child.proc.wait(15)
            except subprocess.TimeoutExpired:
                _killpg(child.proc.pid)


def _killpg(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(pid), sig)


def _descendants(pid: int) -> list[int]:
    """Children of pid (the work horse and the scheduler of a worker), from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


@dataclass
class Sent:
    sid: str
    sender: str
    status: int
    acked_at: float  # wall clock, seconds


def _post(port: int, base: str, n: int) -> Sent:
    sender = f"+1555{2000000 + n:07d}"
    body = f"pricing question {n}" if n % 4 == 0 else f"hello {n}"
    post = simulate.inbound_sms(ACCOUNT, sender, OUR_NUMBER, body).first[0]
    signature = simulate.sign(base + SMS_PATH, post.params, TOKEN)
    try:
        conn = HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}
        conn.request("POST", SMS_PATH, body=urlencode(post.params), headers=headers)
        status = conn.getresponse().status
        conn.close()
    except OSError:
        status = 0
    return Sent(post.params["MessageSid"], sender, status, time.time())


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def run(scenario: str, args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix=f"faults-{scenario}-", dir=os.environ["SWITCHBOARD_VAR_DIR"]))
    admin = "postgresql://postgres@127.0.0.1:5432/test"
    pg = None if args.sqlite else _postgres(admin)
    database_url = pg[0] if pg else f"sqlite:///{tmp / 'faults.db'}"
    redis = RedisServer(tmp)
    redis.start()
    key = crypto.new_key()
    migrate.upgrade(database_url)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    port = free_port(8650)
    base = f"http://127.0.0.1:{port}"
    redis_url = f"redis://127.0.0.1:{redis.port}/0"
    bootstrap.configure(
        Settings(database_url=database_url, redis_url=redis_url, secret_keys=(key,), public_base_url=base)
    )
    with db.transaction() as s:
        tenant = tenants.add_tenant(
            s, f"faults-{uuid.uuid4().hex[:6]}", account_sid=ACCOUNT, auth_token=TOKEN
        )
        tenants.add_number(s, tenant, OUR_NUMBER)
        tenants.add_user(
            s, tenant, name="Avery Reyes", email="avery@faults.example", phone=None, default=True
        )
        tenant_id = tenant.id
    store_rules(tenant_id, RULES)

    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SWITCHBOARD_SECRET_KEY=key,
        PUBLIC_BASE_URL=base,
        PORT=str(port),
        WEB_CONCURRENCY="2",
        LOG_LEVEL="INFO",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    lines = procfile(env)
    fleet = Fleet(env, tmp)
    try:
        return _run(scenario, args, tenant_id, redis, fleet, lines, port, base, tmp)
    finally:
        fleet.stop()
        redis.stop()
        db.dispose()
        if pg:
            _drop_postgres(admin, pg[1])


def _run(
    scenario: str,
    args: argparse.Namespace,
    tenant_id: int,
    redis: RedisServer,
    fleet: Fleet,
    lines: dict[str, list[str]],
    port: int,
    base: str,
    tmp: Path,
) -> dict[str, object]:
    fleet.start("web", lines["web"])
    fleet.start("worker-1", lines["worker"])
    fleet.start("worker-2", lines["worker"])
    if not args.no_cron:  # the workers' own schedulers then queue the automations sweep (jobs.worker)
        fleet.start("cron", lines["cron"])
    wait_for_port(port, timeout=30)
    watcher = threading.Thread(target=fleet.watch, daemon=True)
    watcher.start()

    faults: list[float] = []
    stop_faults = threading.Event()

    def inject() -> None:
        start = time.time()
        if scenario == "kill":
            i = 0
            while not stop_faults.wait(args.kill_every):
                fleet.kill(f"worker-{1 + i % 2}")
                faults.append(time.time())
                i += 1
        elif scenario == "redis-restart":
            if stop_faults.wait(args.burst_seconds * (args.fault_at or 0.4)):
                return
            redis.stop()
            faults.append(time.time())
            time.sleep(args.down)
            redis.start()
            faults.append(time.time())
        elif scenario == "flushall":
            if stop_faults.wait(args.burst_seconds * (args.fault_at or 0.5)):
                return
            Redis(port=redis.port).flushall()
            faults.append(time.time())
        del start

    sent: list[Sent] = []
    injector = threading.Thread(target=inject, daemon=True)
    total = int(args.rate * args.burst_seconds)
    began = time.time()
    injector.start()
    with ThreadPoolExecutor(16) as pool:
        futures = []
        for n in range(total):
            due = began + n / args.rate
            time.sleep(max(0.0, due - time.time()))
            futures.append(pool.submit(_post, port, base, n))
        sent = [f.result() for f in futures]
    if scenario == "kill":
        stop_faults.set()
    injector.join()
    burst_end = time.time()
    last_fault = max(faults) if faults else burst_end

    acked = {s.sid: s for s in sent if 200 <= s.status < 300}
    deadline = burst_end + args.settle
    landed_all_at = None
    wanted = sum(1 for n, item in enumerate(sent) if n % 4 == 0 and 200 <= item.status < 300)
    while time.time() < deadline:
        if landed_all_at is None and _landed_count(tenant_id) >= len(acked):
            landed_all_at = time.time()
        planned, pending = _steps(tenant_id)
        if landed_all_at is not None and planned >= wanted and pending == 0:
            break
        time.sleep(0.5)

    fleet.stopping = True
    result = _measure(scenario, tenant_id, sent, acked, fleet.exits, last_fault, landed_all_at)
    result["logs"] = str(tmp)
    result["worker_log_lines"] = _log_lines(tmp)
    return result


def _landed_count(tenant_id: int) -> int:
    with db.transaction() as s:
        return int(
            s.scalar(
                select(func.count(func.distinct(LocalActivity.external_id))).where(
                    LocalActivity.tenant_id == tenant_id
                )
            )
            or 0
        )


def _steps(tenant_id: int) -> tuple[int, int]:
    """(delayed steps planned, of which still scheduled or running)."""
    with db.transaction() as s:
        rows = s.execute(
            select(ActionRun.state, func.count())
            .where(ActionRun.tenant_id == tenant_id, ActionRun.action != "wait")
            .group_by(ActionRun.state)
        ).all()
    by_state = dict(rows)
    return sum(by_state.values()), by_state.get("scheduled", 0) + by_state.get("running", 0)


def _measure(
    scenario: str,
    tenant_id: int,
    sent: list[Sent],
    acked: dict[str, Sent],
    exits: list[str],
    last_fault: float,
    landed_all_at: float | None,
) -> dict[str, object]:
    with db.transaction() as s:
        rows = s.execute(
            select(Interaction.provider_id, Interaction.id).where(Interaction.tenant_id == tenant_id)
        ).all()
        by_sid = dict(rows)
        acts = s.execute(
            select(LocalActivity.external_id, LocalActivity.created_at).where(
                LocalActivity.tenant_id == tenant_id
            )
        ).all()
        contacts = int(
            s.scalar(
                select(func.count()).select_from(LocalContact).where(LocalContact.tenant_id == tenant_id)
            )
            or 0
        )
        steps = s.execute(
            select(ActionRun.state, ActionRun.due_at, ActionRun.updated_at, ActionRun.created_at).where(
                ActionRun.tenant_id == tenant_id, ActionRun.action != "wait"
            )
        ).all()
        keys = list(
            s.scalars(
                select(ActionRun.trigger_ref).where(
                    ActionRun.tenant_id == tenant_id, ActionRun.action != "wait"
                )
            )
        )
    per_ext: dict[str, list[datetime]] = {}
    for ext, created in acts:
        per_ext.setdefault(ext, []).append(created)
    lags, landed_once, lost, duplicated, last_landed = [], 0, 0, 0, 0.0
    for sid, item in acked.items():
        iid = by_sid.get(sid)
        writes = per_ext.get(f"switchboard-interaction-{iid}", []) if iid is not None else []
        if not writes:
            lost += 1
            continue
        duplicated += len(writes) > 1
        landed_once += len(writes) == 1
        at = _ts(min(writes))
        last_landed = max(last_landed, at)
        lags.append(at - item.acked_at)
    senders = {item.sender for item in acked.values()}
    duplicated += max(0, contacts - len(senders))
    done = [
        (_ts(due), _ts(updated), _ts(created)) for state, due, updated, created in steps if state == "done"
    ]
    late = [at - due for due, at, _ in done]  # includes the wait for the automation job that plans the step
    late_planned = [at - max(due, created) for due, at, created in done]  # scheduler and queue only
    wanted = sum(1 for n, item in enumerate(sent) if n % 4 == 0 and 200 <= item.status < 300)
    statuses: dict[int, int] = {}
    for item in sent:
        statuses[item.status] = statuses.get(item.status, 0) + 1
    return {
        "scenario": scenario,
        "sent": len(sent),
        "acked": len(acked),
        "5xx": sum(v for k, v in statuses.items() if k >= 500),
        "no answer": statuses.get(0, 0),
        "landed once": landed_once,
        "lost": lost,
        "duplicated": duplicated,
        "lag p50": statistics.median(lags) if lags else float("nan"),
        "lag p95": _pct(lags, 95),
        "lag max": max(lags) if lags else float("nan"),
        "all landed after last fault": (landed_all_at - last_fault) if landed_all_at else None,
        "last landed after last fault": (last_landed - last_fault) if lags else None,
        "steps": f"{len(done)} done of {len(steps)} planned, {wanted} wanted",
        "steps wanted": wanted,
        "steps planned": len(steps),
        "steps fired": len(done),
        "steps keys unique": len(steps) == len(set(keys)),
        "step late p50": statistics.median(late) if late else float("nan"),
        "step late p95": _pct(late, 95),
        "step late max": max(late) if late else float("nan"),
        "step late after planned p50": statistics.median(late_planned) if late_planned else float("nan"),
        "step late after planned max": max(late_planned) if late_planned else float("nan"),
        "process exits": len(exits),
        "exits": exits,
    }


def _ts(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _log_lines(tmp: Path) -> dict[str, int]:
    text_ = "".join(p.read_text(errors="replace") for p in tmp.glob("worker-*.log"))
    text_ += (tmp / "cron.log").read_text(errors="replace") if (tmp / "cron.log").exists() else ""
    return {
        "redis.unavailable": text_.count("redis.unavailable"),
        "redis.back": text_.count("redis.back"),
        "Traceback": text_.count("Traceback"),
    }


def _print(r: dict[str, object]) -> None:
    def s(v: object) -> str:
        return f"{v:.1f}s" if isinstance(v, float) else str(v)

    print(f"\n== {r['scenario']} ==")
    print(
        f"sent {r['sent']}  acked {r['acked']}  5xx {r['5xx']}  no answer {r['no answer']}  "
        f"landed once {r['landed once']}  lost {r['lost']}  duplicated {r['duplicated']}"
    )
    print(f"lag ack->CRM p50 {s(r['lag p50'])}  p95 {s(r['lag p95'])}  max {s(r['lag max'])}")
    done = r["all landed after last fault"]
    last = r["last landed after last fault"]
    verdict = "goal met" if done is not None and done <= GOAL_SECONDS and r["lost"] == 0 else "goal NOT met"
    print(
        f"every acked text in the CRM {s(done) if done is not None else 'never (within --settle)'} after the"
        f" last fault (last write {s(last)}); goal <= {GOAL_SECONDS:.0f}s, exactly once: {verdict}"
    )
    print(
        f"delayed steps ({STEP_DELAY}s wait): wanted {r['steps wanted']}  planned {r['steps planned']}"
        f"  fired {r['steps fired']}  one per trigger {r['steps keys unique']}; late vs due"
        f" p50 {s(r['step late p50'])} p95 {s(r['step late p95'])} max {s(r['step late max'])};"
        f" vs max(due, planned) p50 {s(r['step late after planned p50'])}"
        f" max {s(r['step late after planned max'])}"
    )
    steps_ok = r["steps planned"] == r["steps fired"] == r["steps wanted"] and r["steps keys unique"]
    late_ok = r["steps fired"] == 0 or r["step late max"] <= STEP_GOAL_SECONDS
    print(
        f"delayed steps: every wanted step planned and fired once, at most {STEP_GOAL_SECONDS:.0f}s late:"
        f" {'goal met' if steps_ok and late_ok else 'goal NOT met'}"
    )
    print(
        f"process exits {r['process exits']} {r['exits'] or ''}  logs {r['worker_log_lines']}  ({r['logs']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kill", action="store_true")
    parser.add_argument("--redis-restart", action="store_true")
    parser.add_argument("--flushall", action="store_true")
    parser.add_argument("--rate", type=float, default=10.0, help="webhooks per second")
    parser.add_argument("--burst-seconds", type=float, default=20.0)
    parser.add_argument("--kill-every", type=float, default=3.0)
    parser.add_argument("--down", type=float, default=5.0, help="seconds Redis stays down")
    parser.add_argument(
        "--fault-at", type=float, default=None, help="when the Redis fault hits, as a fraction of the burst"
    )
    parser.add_argument(
        "--settle", type=float, default=180.0, help="seconds to wait for the CRM after the burst"
    )
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--no-cron", action="store_true", help="run without the Procfile's cron line")
    args = parser.parse_args()
    chosen = [
        n
        for n, on in (("kill", args.kill), ("redis-restart", args.redis_restart), ("flushall", args.flushall))
        if on
    ] or ["kill", "redis-restart", "flushall"]
    for scenario in chosen:
        _print(run(scenario, args))


if __name__ == "__main__":
    main()
