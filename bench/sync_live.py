# ruff: noqa: E501  (the printed table reads better on one line per figure)
"""Sync under live traffic, through the Procfile processes: the web, 2 workers and cron lines as written.

The HubSpot contract emulator runs as its own process with HubSpot's limits (100 requests / 10 s, 4
searches / s), PostgreSQL gets a throwaway database, Redis is a fresh server. Signed Twilio status callbacks
(completed calls, callers in random order, 1,000 numbers of which 800 are HubSpot contacts stored in mixed
formats) are posted over HTTP to gunicorn while the workers run. It prints HubSpot requests, interactions
per request, the lag of the last call to land after the last webhook, the drain time against the rate-limit
floor, the 429 share, and lost / duplicated calls.

    .venv/bin/python bench/sync_live.py                # live: 5,000 calls while 2 workers run
    .venv/bin/python bench/sync_live.py --backlog      # the workers paused during the ingest, then resumed
    .venv/bin/python bench/sync_live.py --nice 15      # live, the workers at a lower priority than the web
    .venv/bin/python bench/sync_live.py --fairness     # B's latency alone, then during A's 2,000-call burst
    .venv/bin/python bench/sync_live.py --latency      # 50 webhooks/s, CRM not rate limited: p50 / p95
    .venv/bin/python bench/sync_live.py --scaling      # backlog of 6 tenants, 1 worker vs 2, CRM unlimited,
                                                       # answering in 100 ms as a real portal does, x5
    .venv/bin/python bench/sync_live.py --scaling --crm-latency 0     # ...a CRM that answers at once
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["SWITCHBOARD_VAR_DIR"] = tempfile.mkdtemp(prefix="switchboard-bench-")

import urllib3  # noqa: E402
from hubspot import HubSpot  # noqa: E402
from sqlalchemy import select, text  # noqa: E402
from twilio.request_validator import RequestValidator  # noqa: E402

from app.cli import migrate  # noqa: E402
from app.cli.devrunner import free_port, start_redis, wait_for_port  # noqa: E402
from app.core import crypto, db, tenants  # noqa: E402
from app.core.models import Interaction, Tenant  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from app.web import create_app  # noqa: E402
from bench.common import control, get_json, procfile, scratch_postgres  # noqa: E402
from connectors.hubspot.auth import private_app_secrets  # noqa: E402
from connectors.hubspot.connector import HubSpotConnector  # noqa: E402

PUBLIC = "https://bench.example"
UNLIMITED = 1_000_000
VENV = Path(sys.executable).parent


def postgres(admin_url: str) -> str:
    made = scratch_postgres(admin_url)
    if made is None:
        raise SystemExit(f"PostgreSQL is not reachable at {admin_url}")
    return made[0]


class Portal:
    """One tenant: its Twilio account, its HubSpot portal in the emulator, its numbers."""

    def __init__(self, bench: Bench, name: str, n: int, numbers: int, known: int, limited: bool) -> None:
        self.bench, self.name = bench, name
        self.account, self.token = "AC" + f"{n:02d}" * 16, f"{n:02d}" * 16
        self.portal, self.hs_token = 22222200 + n, f"pat-na1-bench-{n}"
        self.our_number = f"+1555555{n:04d}"
        self.numbers = [f"+1555{2000000 + n * 10000 + i:07d}" for i in range(numbers)]
        base = bench.hubspot
        control(base, "portals", portal_id=self.portal, token=self.hs_token)
        control(base, "limits", portal_id=self.portal, ten_second_max=UNLIMITED, search_per_second=UNLIMITED)
        owner = control(base, "owners", portal_id=self.portal, email=f"rep@{name}.example", first_name="Rep")[
            "id"
        ]
        with db.transaction() as s:
            tenant = tenants.add_tenant(
                s, name, account_sid=self.account, auth_token=self.token, crm="hubspot"
            )
            tenant.crm_account_id, tenant.crm_secrets = str(self.portal), private_app_secrets(self.hs_token)
            if not limited:
                tenant.settings = {
                    "hubspot_requests_per_10s": UNLIMITED,
                    "hubspot_searches_per_second": UNLIMITED,
                }
            tenants.add_number(s, tenant, self.our_number)
            tenants.add_user(
                s, tenant, name="Rep", email=f"rep@{name}.example", phone=None, crm_owner_id=owner
            )
            self.tenant_id = tenant.id
        with db.transaction() as s:
            HubSpotConnector(s.get(Tenant, self.tenant_id)).setup()
        rng = random.Random(n)
        formats = [lambda x: x, lambda x: f"({x[2:5]}) {x[5:8]}-{x[8:]}", lambda x: x[2:]]
        sdk = HubSpot(access_token=self.hs_token, host=base)
        for start in range(0, known, 100):
            inputs = [
                {"properties": {"phone": rng.choice(formats)(x), "hubspot_owner_id": owner}}
                for x in self.numbers[start : min(start + 100, known)]
            ]
            sdk.crm.contacts.batch_api.create(
                batch_input_simple_public_object_batch_input_for_create={"inputs": inputs}
            )
        self.limited = limited
        self.sent: dict[str, float] = {}  # CallSid -> when its webhook was answered

    def limit(self) -> None:
        if self.limited:
            control(
                self.bench.hubspot, "limits", portal_id=self.portal, ten_second_max=100, search_per_second=4
            )
        else:
            control(
                self.bench.hubspot,
                "limits",
                portal_id=self.portal,
                ten_second_max=UNLIMITED,
                search_per_second=UNLIMITED,
            )

    def stats(self) -> dict:
        return get_json(f"{self.bench.hubspot}/_emulator/stats?portal_id={self.portal}")

    def send(self, to: str) -> None:
        sid = "CA" + uuid.uuid4().hex
        params = {
            "AccountSid": self.account,
            "CallSid": sid,
            "CallStatus": "completed",
            "Direction": "outbound-api",
            "From": self.our_number,
            "To": to,
            "SequenceNumber": "3",
            "CallDuration": "42",
            "Timestamp": "Tue, 11 Mar 2025 16:07:01 +0000",
        }
        path = "/webhooks/twilio/call-status"
        signature = RequestValidator(self.token).compute_signature(PUBLIC + path, params)
        r = self.bench.http.request(
            "POST",
            f"{self.bench.web}{path}",
            fields=params,
            encode_multipart=False,
            headers={"X-Twilio-Signature": signature, "X-Forwarded-Proto": "https", "Host": "bench.example"},
            retries=False,
        )
        assert r.status == 204, (r.status, r.data[:200])
        self.sent[sid] = time.time()

    def landed(self) -> dict[str, list[float]]:
        """CallSid -> when each HubSpot call object for it was created (more than one is a duplicate)."""
        calls = get_json(f"{self.bench.hubspot}/_emulator/objects/{self.portal}/calls")["results"]
        with db.transaction() as s:
            query = select(Interaction.id, Interaction.provider_id).where(
                Interaction.tenant_id == self.tenant_id
            )
            sids = {iid: sid for iid, sid in s.execute(query).all()}
        out: dict[str, list[float]] = {}
        for call in calls:
            props = call.get("properties", {})
            ext = str(props.get("switchboard_id") or "")
            created = datetime.fromisoformat(str(props["hs_createdate"]).replace("Z", "+00:00")).timestamp()
            iid = ext.rsplit("-", 1)[-1]
            sid = sids.get(int(iid)) if iid.isdigit() else None
            out.setdefault(sid or f"unknown-{call['id']}", []).append(created)
        return out


class Bench:
    def __init__(self, database_url: str | None) -> None:
        hub_port = free_port(8621)
        self.procs: list[subprocess.Popen] = []
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "emulators.hubspot", "--port", str(hub_port)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
        )
        wait_for_port(hub_port)
        self.hubspot = f"http://127.0.0.1:{hub_port}"
        redis_port = free_port(6395)
        self.redis = start_redis(redis_port)
        self.database_url = database_url or postgres("postgresql://postgres@127.0.0.1:5432/test")
        self.settings = Settings(
            database_url=self.database_url,
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            secret_keys=(crypto.new_key(),),
            public_base_url=PUBLIC,
            hubspot_api_base=self.hubspot,
            log_level="WARNING",
        )
        migrate.upgrade(self.database_url)
        create_app(self.settings)
        self.env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.settings.redis_url,
            "SWITCHBOARD_SECRET_KEY": ",".join(self.settings.secret_keys),
            "PUBLIC_BASE_URL": PUBLIC,
            "HUBSPOT_API_BASE": self.hubspot,
            "LOG_LEVEL": os.environ.get(
                "BENCH_LOG_LEVEL", "WARNING"
            ),  # with BENCH_LOGS: INFO for a post-mortem
            "TRUST_PROXY_HOPS": "1",
            "PYTHONPATH": str(ROOT),
        }
        self.web_port = free_port(8631)
        self.web = f"http://127.0.0.1:{self.web_port}"
        self.http = urllib3.PoolManager(maxsize=16)
        self.workers: list[subprocess.Popen] = []
        self.web_proc: subprocess.Popen | None = None
        self.cron: subprocess.Popen | None = None
        self.nice = 0

    def start_web(self) -> None:
        env = {**self.env, "PORT": str(self.web_port), "WEB_CONCURRENCY": "2"}
        lines = procfile(env)
        self.web_proc = self._spawn(lines["web"], env)
        wait_for_port(self.web_port)
        self.cron = self._spawn(lines["cron"])

    def start_workers(self, n: int) -> None:
        """n of the Procfile's `worker` line (`rq worker -w jobs.worker.Worker ...`), each in a process
        group of its own (so `pause_workers` stops the worker and its scheduler together)."""
        # --nice N: the workers run at a lower CPU priority, so the web takes what it needs and the ingest
        # outruns the drain (as where the web has cores of its own): the drain must keep up regardless.
        nice = ["nice", "-n", str(self.nice)] if self.nice else []
        argv = procfile({**self.env, "SWITCHBOARD_QUEUE": self.settings.queue_name})["worker"]
        for _ in range(n):
            self.workers.append(self._spawn([*nice, *argv], session=True))

    def start_paused_workers(self, n: int) -> None:
        """Start n workers, let them register and take what cron queued while none ran (sweeps, polls),
        then pause them: a drain timed from `resume_workers` counts neither their start-up nor those stale
        jobs (~0.4 s), and with 2 workers the first does not begin before the second has registered."""
        self.start_workers(n)
        self.workers_ready(n)
        time.sleep(3)
        self.pause_workers()

    def pause_workers(self) -> None:
        """SIGSTOP every worker's process group: a backlog builds as if the workers were busy elsewhere.
        (`rq suspend` would not do: a worker already blocked in its dequeue still takes the first job.)"""
        for w in self.workers:
            os.killpg(w.pid, signal.SIGSTOP)

    def resume_workers(self) -> float:
        for w in self.workers:
            os.killpg(w.pid, signal.SIGCONT)
        return time.time()

    def workers_ready(self, n: int, timeout: float = 60) -> float:
        """Wait until n rq workers have registered in Redis (their start-up is not the drain's time)."""
        from redis import Redis
        from rq import Worker

        conn = Redis.from_url(self.settings.redis_url)
        end = time.time() + timeout
        while Worker.count(connection=conn) < n and time.time() < end:
            time.sleep(0.02)
        return time.time()

    def stop_workers(self) -> None:
        for w in self.workers:
            w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # It happened (up to 60 s) before jobs.worker.PromptUnsubscribe: redis-py's pubsub thread.
                print(f"  (a worker, pid {w.pid}, did not exit within 30 s of SIGTERM: killed)")
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
        self.workers.clear()

    def _spawn(
        self, argv: list[str], env: dict[str, str] | None = None, session: bool = False
    ) -> subprocess.Popen:
        # BENCH_LOGS=DIR keeps each process's output (web, workers, cron) in DIR for a post-mortem.
        logs = os.environ.get("BENCH_LOGS")
        out: Any = subprocess.DEVNULL
        if logs:
            Path(logs).mkdir(parents=True, exist_ok=True)
            out = open(Path(logs) / f"{Path(argv[0]).name}-{len(self.procs)}.log", "ab")  # noqa: SIM115
        p = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env or self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=session,
        )
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.redis.terminate()


def pending(tenant_ids: list[int]) -> int:
    with db.transaction() as s:
        return int(
            s.scalar(
                text(
                    "select count(*) from interactions where sync_state = 'pending' and tenant_id = any(:t)"
                ),
                {"t": tenant_ids},
            )
            or 0
        )


def wait_drained(tenant_ids: list[int], timeout: float = 600) -> float:
    end = time.time() + timeout
    while pending(tenant_ids) and time.time() < end:
        time.sleep(0.2)
    return time.time()


def send_all(
    portal: Portal, targets: list[str], concurrency: int = 8, rate: float | None = None
) -> tuple[float, float]:
    """Post one completed call per target; at `rate` per second if given. Returns (first, last) send time."""
    first = time.time()
    if rate:
        with ThreadPoolExecutor(concurrency) as pool:
            futures = []
            for i, to in enumerate(targets):
                delay = first + i / rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(portal.send, to))
            for f in futures:
                f.result()
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(portal.send, targets))
    return first, time.time()


def callers(portal: Portal, calls: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(portal.numbers) for _ in range(calls)]


def perfect_requests(calls: int, numbers_seen: int, unknown: int) -> int:
    return math.ceil(numbers_seen / 100) + math.ceil(unknown / 100) + 2 * math.ceil(calls / 100)


def floor_seconds(requests: int, limit: int = 100, window: float = 10.0) -> float:
    return max(0, math.ceil(requests / limit) - 1) * window


def report_sync(
    portal: Portal, before: dict, sent: tuple[float, float], start: float, args: Any, label: str
) -> dict:
    landed = portal.landed()
    after = portal.stats()
    requests = after["total"] - before["total"]
    rate_limited = after["rate_limited"] - before["rate_limited"]
    sids = set(portal.sent)
    lost = len(sids - set(landed))
    duplicated = sum(len(v) - 1 for k, v in landed.items() if k in sids and len(v) > 1)
    last_landed = max((min(v) for k, v in landed.items() if k in sids), default=float("nan"))
    seen = set(callers(portal, args.calls))
    unknown = len([n for n in seen if portal.numbers.index(n) >= args.known])
    perfect = perfect_requests(args.calls, len(seen), unknown)
    floor = floor_seconds(perfect)
    drain = last_landed - start
    bound = max(floor, sent[1] - start)  # the rate limit, or the webhooks themselves arriving
    by_route = {
        k: v - before["by_route"].get(k, 0)
        for k, v in after["by_route"].items()
        if v - before["by_route"].get(k, 0)
    }
    print(
        f"{label}: {args.calls} completed calls from {len(seen)} numbers ({args.known} of {args.numbers} contacts),"
        f" HubSpot 100 req / 10 s and 4 searches / s"
    )
    print(
        f"  webhooks sent                         {sent[1] - sent[0]:8.1f} s  ({args.calls / (sent[1] - sent[0]):.0f}/s)"
    )
    print(f"  HubSpot requests                      {requests:8d}     (perfect batcher: {perfect})")
    for route, n in sorted(by_route.items()):
        print(f"    {route:<48}{n:6d}")
    print(f"  interactions per HubSpot request      {args.calls / max(requests, 1):8.1f}     (target >= 40)")
    print(
        f"  429 answers                           {rate_limited:8d}     ({100 * rate_limited / max(requests, 1):.2f}%, target < 1%)"
    )
    print(f"  last call landed after last webhook   {last_landed - sent[1]:8.1f} s   (target <= 15)")
    print(f"  drain (start -> last landed)          {drain:8.1f} s")
    print(f"  floor (rate limit {floor:.0f} s, webhooks {sent[1] - start:.1f} s) {bound:8.1f} s")
    print(
        f"  drain / floor                         {drain / bound if bound else float('nan'):8.2f}     (target <= 1.25)"
    )
    print(f"  lost {lost}, duplicated {duplicated}")
    if getattr(args, "timeline", False):
        timeline(portal, landed, start)
    return {"requests": requests, "lost": lost, "duplicated": duplicated}


def timeline(portal: Portal, landed: dict[str, list[float]], start: float, step: float = 5.0) -> None:
    """Webhooks sent and calls landed by the end of each `step` seconds: where a lag builds up."""
    sent = sorted(portal.sent.values())
    done = sorted(min(v) for k, v in landed.items() if k in portal.sent)
    end = max(sent[-1], done[-1]) if done else sent[-1]
    print("  timeline (s from start: webhooks sent, calls landed, backlog)")
    t = start + step
    while t < end + step:
        n_sent = sum(1 for x in sent if x <= t)
        n_done = sum(1 for x in done if x <= t)
        print(f"    {t - start:6.0f}  {n_sent:6d}  {n_done:6d}  {n_sent - n_done:6d}")
        t += step


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    return (after[0] - before[0]) / max(1, after[1] - before[1])


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a process and of its children it has waited for (RQ's work horses)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return out


def role_cpu(bench: Bench) -> dict[str, float]:
    """CPU seconds so far per role: the rq workers (work horses included), the HubSpot emulator, Redis,
    PostgreSQL (every server process, and the backends that have exited)."""
    out = {
        "workers": sum(_proc_cpu(p) for w in bench.workers for p in _descendants(w.pid)),
        "emulator": _proc_cpu(bench.procs[0].pid),
        "redis": _proc_cpu(bench.redis.pid),
    }
    # Every work horse opens its own connections, whose backends are gone by the end: the postmaster's
    # children's time counts them, with any other database's on this server (quiet machine: none).
    out["postgresql"] = sum(_proc_cpu(pid) for pid in _named("postgres"))
    return out


def _named(command: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def latencies(portal: Portal) -> list[float]:
    landed = portal.landed()
    return sorted(min(landed[sid]) - t for sid, t in portal.sent.items() if sid in landed)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--backlog", action="store_true", help="pause the workers during the ingest, then resume them"
    )
    mode.add_argument("--fairness", action="store_true")
    mode.add_argument("--latency", action="store_true")
    mode.add_argument("--scaling", action="store_true")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--numbers", type=int, default=1000)
    parser.add_argument("--known", type=int, default=800)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeline", action="store_true", help="print sent / landed every 5 s")
    parser.add_argument("--nice", type=int, default=0, help="run the workers at this nice level")
    parser.add_argument(
        "--crm-latency",
        type=int,
        default=100,
        help="--scaling: every HubSpot API request waits this many ms (a real portal answers in 100-300;"
        " 0: at once, so the CPU of this machine, not the workers, is what bounds the drain)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="--scaling: 1-vs-2-worker rounds, interleaved; the median counts",
    )
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    bench = Bench(args.database_url)
    bench.nice = args.nice
    try:
        bench.start_web()
        if args.fairness:
            fairness(bench, args)
        elif args.latency:
            latency(bench, args)
        elif args.scaling:
            scaling(bench, args)
        else:
            live(bench, args)
    finally:
        bench.close()
    print(
        "  (machine: 2 cores shared with other engineers' runs; web, workers, cron, emulator, PostgreSQL, Redis)"
    )


def live(bench: Bench, args: Any) -> None:
    portal = Portal(bench, "live", 1, args.numbers, args.known, limited=True)
    targets = callers(portal, args.calls)
    portal.limit()
    time.sleep(10.5)  # let the set-up traffic leave HubSpot's rolling window
    before = portal.stats()
    if args.backlog:
        # The workers run, then are paused for the ingest and resumed (issue 8's backlog case): the drain
        # is timed from the resume, not from the workers' start-up imports.
        bench.start_paused_workers(args.workers)
        sent = send_all(portal, targets)
        start = bench.resume_workers()
        wait_drained([portal.tenant_id])
        time.sleep(1)
        report_sync(
            portal,
            before,
            sent,
            start,
            args,
            f"sync backlog ({args.workers} workers paused during the ingest, then resumed)",
        )
    else:
        bench.start_workers(args.workers)
        time.sleep(3)
        sent = send_all(portal, targets)
        wait_drained([portal.tenant_id])
        time.sleep(1)
        report_sync(
            portal, before, sent, sent[0], args, f"sync under live traffic ({args.workers} workers running)"
        )


def latency(bench: Bench, args: Any, rate: float = 50.0) -> None:
    portal = Portal(bench, "lat", 2, args.numbers, args.known, limited=False)
    bench.start_workers(args.workers)
    time.sleep(3)
    calls = min(args.calls, int(rate * 30))
    sent = send_all(portal, callers(portal, calls), rate=rate)
    wait_drained([portal.tenant_id])
    time.sleep(1)
    lat = latencies(portal)
    print(
        f"sync latency: {calls} completed calls at {calls / (sent[1] - sent[0]):.0f} webhooks/s, CRM not rate limited,"
        f" {args.workers} workers"
    )
    print(
        f"  webhook -> HubSpot call  p50 {pct(lat, 50):.2f} s  p95 {pct(lat, 95):.2f} s  max {lat[-1] if lat else 0:.2f} s"
        f"  (targets p50 <= 1, p95 <= 3)"
    )
    print(
        f"  {'p50 and p95 held' if pct(lat, 50) <= 1 and pct(lat, 95) <= 3 else 'a latency bound did NOT hold'};"
        f" landed {len(lat)} of {calls}"
    )


def fairness(bench: Bench, args: Any, burst: int = 2000, b_rate: float = 5.0) -> None:
    a = Portal(bench, "a", 3, args.numbers, args.known, limited=True)
    b = Portal(bench, "b", 4, 200, 200, limited=True)
    a.limit()
    b.limit()
    bench.start_workers(args.workers)
    time.sleep(10.5)
    send_all(b, callers(b, 100, seed=1), rate=b_rate, concurrency=2)
    wait_drained([b.tenant_id])
    time.sleep(1)
    alone = latencies(b)
    b.sent.clear()
    before_landed = {k for k in b.landed()}
    stop = threading.Event()

    def trickle() -> None:
        rng = random.Random(2)
        while not stop.is_set():
            b.send(rng.choice(b.numbers))
            time.sleep(1 / b_rate)

    t = threading.Thread(target=trickle)
    t.start()
    time.sleep(1)
    sent = send_all(a, callers(a, burst, seed=3))
    time.sleep(5)
    stop.set()
    t.join()
    wait_drained([a.tenant_id, b.tenant_id])
    time.sleep(1)
    during = [x for x in latencies(b)]
    del before_landed
    p95_alone, p95_during = pct(alone, 95), pct(during, 95)
    print(
        f"sync fairness: tenant A sends {burst} calls in {sent[1] - sent[0]:.1f} s while tenant B sends {b_rate:.0f}/s;"
        f" both on HubSpot's limits, {args.workers} workers"
    )
    print(
        f"  B alone          p50 {pct(alone, 50):.2f} s  p95 {p95_alone:.2f} s  max {alone[-1] if alone else 0:.2f} s"
    )
    print(
        f"  B during A       p50 {pct(during, 50):.2f} s  p95 {p95_during:.2f} s  max {during[-1] if during else 0:.2f} s"
    )
    print(
        f"  p95 delay        {p95_during - p95_alone:+.2f} s  (target <= 2): "
        f"{'held' if p95_during - p95_alone <= 2 else 'did NOT hold'}"
    )


def last_synced(tenant_ids: list[int]) -> float:
    """When the last of these tenants' interactions was marked synced (the workers' clock, in the ledger):
    the drain's end to the millisecond, not to the next poll."""
    with db.transaction() as s:
        at = s.scalar(
            text("select max(synced_at) from interactions where tenant_id = any(:t)"), {"t": tenant_ids}
        )
    return at.timestamp() if at is not None else time.time()


def tenant_spans(tenant_ids: list[int], start: float) -> str:
    """Each tenant's first and last sync, in seconds from the workers' resume: shows a tail where one
    worker finishes the last tenant while the other has nothing left."""
    with db.transaction() as s:
        rows = s.execute(
            text(
                "select tenant_id, min(synced_at), max(synced_at) from interactions"
                " where tenant_id = any(:t) group by tenant_id order by 2"
            ),
            {"t": tenant_ids},
        ).all()
    return ", ".join(f"{a.timestamp() - start:.1f}-{b.timestamp() - start:.1f}" for _, a, b in rows)


def scaling(bench: Bench, args: Any, tenants_n: int = 6) -> None:
    """1 worker against 2 on the same backlog, `--rounds` times, interleaved (1-2, then 2-1, ...) so a
    machine that speeds up or slows down during the run weighs on both sides; the verdict is the median
    of the rounds' speed-ups (each round's own ratio, its two drains minutes apart at most)."""
    # Enough calls that the drain lasts seconds: the workers' first dequeue and the last tenant's tail (one
    # worker idle while the other finishes) are then a small part of either run.
    per = max(100, args.calls // tenants_n)
    rounds = max(1, min(args.rounds, 7))  # 6 tenants per drain, two-digit portal numbers
    times: dict[int, list[float]] = {1: [], 2: []}
    loads: dict[int, list[float]] = {1: [], 2: []}
    shares: dict[int, str] = {}
    spans: dict[int, str] = {}
    drains = 0
    for r in range(rounds):
        for workers in (1, 2) if r % 2 == 0 else (2, 1):
            base = 10 + drains * tenants_n
            drains += 1
            portals = [
                Portal(bench, f"s{drains}-{i}", base + i, 200, 200, limited=False) for i in range(tenants_n)
            ]
            bench.start_paused_workers(workers)
            for p in portals:
                send_all(p, callers(p, per, seed=p.tenant_id))
            if args.crm_latency:  # the CRM answers as slowly as a real one, unlimited still: I/O, not CPU
                control(bench.hubspot, "delays", prefix="/crm", delay_ms=args.crm_latency, count=10**9)
            start = bench.resume_workers()
            cpu, roles = cpu_times(), role_cpu(bench)
            wait_drained([p.tenant_id for p in portals])
            end = last_synced([p.tenant_id for p in portals])
            spans[workers] = tenant_spans([p.tenant_id for p in portals], start)
            times[workers].append(end - start)
            loads[workers].append(busy_share(cpu, cpu_times()))
            spent = {k: v - roles[k] for k, v in role_cpu(bench).items()}
            per_call = ", ".join(f"{k} {1000 * v / (per * tenants_n):.2f}" for k, v in spent.items())
            shares[workers] = f"CPU ms per call with {workers}: {per_call}"
            bench.stop_workers()
            control(bench.hubspot, "clear-faults")
            time.sleep(2)
    total = per * tenants_n
    ratios = [a / b for a, b in zip(times[1], times[2], strict=True)]
    speedup = statistics.median(ratios)
    load1, load2 = statistics.median(loads[1]), statistics.median(loads[2])
    latency = f", every request {args.crm_latency} ms" if args.crm_latency else ""
    print(
        f"sync scaling: backlog of {total} calls over {tenants_n} tenants, CRM not rate limited{latency};"
        f" {rounds} round(s), interleaved"
    )
    for workers in (1, 2):
        each = ", ".join(f"{t:.1f}" for t in times[workers])
        mid = statistics.median(times[workers])
        print(
            f"  {workers} worker{'s' if workers > 1 else ' '}  {mid:6.1f} s median ({total / mid:.0f} calls/s; {each})"
        )
    cores = os.cpu_count() or 1
    each = ", ".join(f"{x:.2f}" for x in ratios)
    verdict = "held" if speedup >= 1.7 else "did NOT hold"
    print(f"  speed-up   {speedup:6.2f}x median of the rounds ({each}) (target >= 1.7): {verdict}")
    busy = f"CPU busy {100 * load1:.0f} % with 1 worker, {100 * load2:.0f} % with 2, {cores} cores"
    if speedup >= 1.7:
        bound = f"the workers: a second one nearly doubled the drain ({busy})"
    elif args.crm_latency and load2 < 0.85:
        bound = f"the CRM's answers ({args.crm_latency} ms each; {busy}), not the CPU"
    elif load2 >= 0.85:
        # At one worker's CPU per call (every process's, summed) the cores would allow about 1 / load1 of
        # its rate. An estimate, not a hard ceiling: the CPU per call moves with 2 workers (the 2026-12-03
        # runs beat it once), which is why it only appears beside a CPU bound.
        bound = (
            f"the CPU ({busy}; workers, emulator, PostgreSQL and Redis share it: at 1 worker's CPU per call"
            f" the {cores} cores would allow about {1 / load1:.2f}x its rate), not the CRM (unlimited)"
        )
    else:
        bound = f"not the CPU ({busy}) nor the CRM (unlimited): the database or Redis round trips"
    print(f"  bound      {bound}")
    for line in shares.values():
        print(f"  {line} (last round)")
    for workers, line in spans.items():
        print(f"  tenants' first-last sync with {workers} (s from start, last round): {line}")


if __name__ == "__main__":
    main()
