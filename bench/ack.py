"""Webhook ack throughput and latency: our Twilio webhooks against a bare Flask endpoint, side by side.

Both run under the same gunicorn settings on this machine, hit by the same load generator with signed,
distinct webhooks. Ours verifies the signature, commits the event and interaction to the database and
enqueues the RQ jobs before answering; the bare one parses the form and answers as we do (empty TwiML for
a text, 204 for a status callback). The interesting number is the ratio; the `cpu ms` column is the
server-side CPU time per request (gunicorn master and workers; for ours also its PostgreSQL backends and
the private Redis), which, unlike req/s, hardly moves with other load on a shared machine. Two scenarios:

- sms: distinct inbound texts (one event, one new interaction each);
- call-status: status callbacks of outbound calls (initiated, ringing, in-progress, completed), shuffled
  per call and sent side by side, so callbacks of one call race each other: the folding path.

and two loads: a burst (closed loop, --concurrency clients as fast as they can) and a steady rate (open
loop, --rate requests per second; latency counted from the time each request was due, so a server that
falls behind is charged for the wait). Runs are interleaved (bare, ours, ours, bare) so drift on the
machine hits both sides alike. Afterwards it checks the ledger: one event per webhook, one interaction per
text or call, every call folded to `completed` whatever the arrival order. The last line is the verdict
against the goal (issue 9): ours >= 0.5x the bare throughput in the burst and p99 <= 50 ms at the steady
rate, for both scenarios.

    .venv/bin/python bench/ack.py [--quick] [--requests 3000] [--concurrency 16] [--workers 4]
        [--worker-class sync|gthread] [--threads 4] [--rate 200] [--steady-seconds 10]
        [--scenarios sms,call-status] [--sqlite | --database-url URL] [--history 20000]

PostgreSQL (where production runs) at 127.0.0.1:5432 is used when reachable (a throwaway database is
created), else SQLite (or with --sqlite: WAL, as app.core.db configures it); Redis from REDIS_URL, else a
private redis-server on a free port. --quick (about 40 s) runs 600 requests per burst and 4 s per steady
run.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Everything this run creates (bundled Redis data, keys) goes to a fresh directory, never the repo's var/.
os.environ["SWITCHBOARD_VAR_DIR"] = tempfile.mkdtemp(prefix="switchboard-bench-")

from sqlalchemy import func, select  # noqa: E402

from app.cli import migrate, simulate  # noqa: E402
from app.cli.devrunner import free_port, start_redis, wait_for_port  # noqa: E402
from app.core import crypto, db, tenants  # noqa: E402
from app.core.models import Interaction, WebhookEvent  # noqa: E402
from bench.common import scratch_postgres  # noqa: E402

ACCOUNT = "AC" + "be" * 16
TOKEN = secrets.token_hex(16)
OUR_NUMBER = "+15555550100"
SMS_PATH = "/webhooks/twilio/sms"
STATUS_PATH = "/webhooks/twilio/call-status"
GOAL_RATIO = 0.5
GOAL_P99_MS = 50.0

Request = tuple[str, str, str]  # path, form body, signature


def _postgres(admin_url: str) -> str | None:
    made = scratch_postgres(admin_url)
    return made[0] if made else None


class Traffic:
    """Distinct signed webhooks for each scenario (ours must never see the same one twice)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.texts = 0
        self.calls = 0
        self.callbacks = 0
        self._n = 0
        self._rng = random.Random(9)

    def _signed(self, path: str, params: dict[str, str]) -> Request:
        return (path, urlencode(params), simulate.sign(self.base_url + path, params, TOKEN))

    def sms(self, n: int) -> list[Request]:
        out = []
        for _ in range(n):
            self._n += 1
            sender = f"+1555{5550000 + self._n % 9000:07d}"
            post = simulate.inbound_sms(ACCOUNT, sender, OUR_NUMBER, f"hello {self._n}")
            out.append(self._signed(SMS_PATH, post.first[0].params))
        self.texts += n
        return out

    def call_status(self, n: int) -> list[Request]:
        """About n status callbacks: four per outbound call, each call's shuffled and kept adjacent, so the
        load generator's clients deliver them at the same time."""
        out: list[Request] = []
        start = datetime.now(UTC) - timedelta(minutes=5)
        while len(out) < n:
            self._n += 1
            self.calls += 1
            call = simulate.sid("CA")
            customer = f"+1555{6550000 + self._n % 9000:07d}"
            base = {
                "AccountSid": ACCOUNT,
                "ApiVersion": "2010-04-01",
                "CallSid": call,
                "Direction": "outbound-api",
                "From": OUR_NUMBER,
                "To": customer,
                "Called": customer,
                "Caller": OUR_NUMBER,
            }
            steps = [("initiated", None), ("ringing", None), ("in-progress", None), ("completed", "42")]
            batch = []
            for seq, (status, duration) in enumerate(steps):
                params = {**base, "CallStatus": status, "SequenceNumber": str(seq)}
                params["Timestamp"] = format_datetime(start + timedelta(seconds=seq * 5))
                if duration:
                    params["CallDuration"] = duration
                batch.append(self._signed(STATUS_PATH, params))
            self._rng.shuffle(batch)
            out += batch
        self.callbacks += len(out)
        return out

    def make(self, scenario: str, n: int) -> list[Request]:
        return self.sms(n) if scenario == "sms" else self.call_status(n)


def _post(conn_port: int, req: Request) -> int:
    path, body, signature = req
    conn = HTTPConnection("127.0.0.1", conn_port, timeout=30)
    conn.request(
        "POST",
        path,
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
    )
    status = conn.getresponse().status
    conn.close()
    return status


def _fire(args: tuple[int, list[Request]]) -> list[tuple[float, float, int]]:
    """Send one after another as fast as possible: (start, end, status) per request, wall-clock times."""
    port, batch = args
    results = []
    for req in batch:
        started = time.time()
        status = _post(port, req)
        results.append((started, time.time(), status))
    return results


def _fire_at(args: tuple[int, list[tuple[float, Request]]]) -> list[tuple[float, float, int]]:
    """Send each request at its due time (or at once if late): (due, end, status) per request."""
    port, batch = args
    results = []
    for due, req in batch:
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        status = _post(port, req)
        results.append((due, time.time(), status))
    return results


def _summary(results: list[tuple[float, float, int]]) -> dict[str, float]:
    elapsed = max(r[1] for r in results) - min(r[0] for r in results)
    latencies = sorted((r[1] - r[0]) * 1000 for r in results)
    q = statistics.quantiles(latencies, n=100)
    errors = sum(1 for r in results if r[2] >= 300)
    return {"rps": len(results) / elapsed, "p50": q[49], "p95": q[94], "p99": q[98], "errors": errors}


class Side:
    """One server under test: its port, and the processes whose CPU time it costs (Linux /proc): the
    gunicorn master and workers, and for ours also its PostgreSQL backends and the private Redis. On this
    shared 2-core machine req/s moves with everyone else's load; CPU per request does not."""

    def __init__(
        self, port: int, master: int, extra: dict[str, Callable[[], list[int]]] | None = None
    ) -> None:
        self.port, self.master, self.extra = port, master, extra or {}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by each group of processes: app, then the extra groups."""
        groups = {"app": [self.master, *_children(self.master)]}
        groups.update({name: pids() for name, pids in self.extra.items()})
        return {name: sum(_cpu(pid) for pid in pids) for name, pids in groups.items()}


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _children(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _postgres_backends(database_url: str) -> Callable[[], list[int]]:
    from sqlalchemy import create_engine, text

    from app.core.settings import database_url_for_sqlalchemy

    if not database_url.startswith("postgres"):
        return list
    name = database_url.rsplit("/", 1)[-1].split("?")[0]
    admin = create_engine(database_url_for_sqlalchemy(database_url), pool_size=1)

    def pids() -> list[int]:
        with admin.connect() as conn:
            rows = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"),
                {"n": name},
            )
            return [r[0] for r in rows]

    return pids


def seed_history(database_url: str, rows: int) -> None:
    """Give the fresh database what a live one has: `rows` texts (and their events) of another tenant
    already in the ledger, and the statistics autovacuum's ANALYZE keeps.

    On nearly empty tables the plans PostgreSQL caches for each worker's prepared statements (and for its
    foreign-key checks) are the cheap ones for a few rows: a tenant-only index (ix_webhook_events_tenant_id,
    ix_interactions_tenant_thread) or a sequential scan, which then read every row written since, so the
    database's CPU per webhook grew with the run (issue 9, fourth round). A live ledger is planned by its
    unique keys from the start."""
    if not database_url.startswith("postgres") or rows <= 0:
        return
    from sqlalchemy import text

    with db.transaction() as s:
        other = tenants.add_tenant(
            s,
            f"history-{uuid.uuid4().hex[:6]}",
            account_sid="AC" + "ab" * 16,
            auth_token=secrets.token_hex(16),
        )
        s.flush()
        other_id = other.id
    with db.engine().begin() as conn:
        conn.execute(
            text(
                "INSERT INTO interactions (tenant_id, provider, channel, provider_id, direction, status,"
                " media, facts, occurred_at, version, automations_version, sync_state, synced_version,"
                " attempts, created_at, updated_at)"
                " SELECT :t, 'twilio', 'sms', 'SMhistory' || g, 'inbound', 'received', '[]', '{}', now(),"
                " 1, 1, 'synced', 1, 0, now(), now() FROM generate_series(1, :n) AS g"
            ),
            {"t": other_id, "n": rows},
        )
        conn.execute(
            text(
                "INSERT INTO webhook_events (tenant_id, provider, stream, event_key, interaction_id, payload,"
                " received_at) SELECT :t, 'twilio', 'sms', 'sms:' || provider_id, id, '{}', now()"
                " FROM interactions WHERE tenant_id = :t"
            ),
            {"t": other_id},
        )
    with db.engine().connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()


def _measured(side: Side, run: Callable[[], list[tuple[float, float, int]]]) -> dict[str, float]:
    before = side.cpu_seconds()
    results = run()
    after = side.cpu_seconds()
    out = _summary(results)
    for name in after:
        out[f"cpu_{name}"] = (after[name] - before.get(name, 0.0)) * 1000 / len(results)
    out["cpu_ms"] = sum(out[f"cpu_{name}"] for name in after)
    return out


def _burst(pool: ProcessPoolExecutor, side: Side, reqs: list[Request], concurrency: int) -> dict[str, float]:
    chunks = [reqs[i::concurrency] for i in range(concurrency)]
    return _measured(
        side, lambda: [r for part in pool.map(_fire, [(side.port, c) for c in chunks]) for r in part]
    )


def _steady(
    pool: ProcessPoolExecutor, side: Side, reqs: list[Request], rate: float, clients: int
) -> dict[str, float]:
    t0 = time.time() + 0.5
    timed = [(t0 + i / rate, r) for i, r in enumerate(reqs)]
    chunks = [timed[i::clients] for i in range(clients)]
    return _measured(
        side, lambda: [r for part in pool.map(_fire_at, [(side.port, c) for c in chunks]) for r in part]
    )


def _both(first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
    out = {k: (first[k] + second[k]) / 2 for k in first}  # errors are summed below
    out["errors"] = first["errors"] + second["errors"]
    return out


def _gunicorn(app: str, port: int, args: argparse.Namespace, env: dict[str, str]) -> subprocess.Popen[bytes]:
    exe = str(Path(sys.executable).parent / "gunicorn")
    cmd = [exe, "--workers", str(args.workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning"]
    if args.worker_class != "sync":
        cmd += ["--worker-class", args.worker_class, "--threads", str(args.threads)]
    proc = subprocess.Popen([*cmd, app], cwd=ROOT, env=env)
    wait_for_port(port, timeout=30)
    return proc


def _check_ledger(traffic: Traffic, tenant_id: int) -> tuple[str, bool]:
    mine = Interaction.tenant_id == tenant_id  # not the seeded history's
    with db.transaction() as s:
        events = s.scalar(select(func.count()).where(WebhookEvent.tenant_id == tenant_id))
        texts = s.scalar(select(func.count()).where(mine, Interaction.channel == "sms"))
        calls = s.scalar(select(func.count()).where(mine, Interaction.channel == "call"))
        completed = s.scalar(
            select(func.count()).where(mine, Interaction.channel == "call", Interaction.status == "completed")
        )
    sent = traffic.texts + traffic.callbacks
    ok = events == sent and texts == traffic.texts and calls == traffic.calls == completed
    line = (
        f"ledger check: {events} events for {sent} webhooks, {texts} texts for {traffic.texts},"
        f" {calls} calls for {traffic.calls} ({completed} folded to completed)"
        f" -> {'OK' if ok else 'MISMATCH'}"
    )
    return line, ok


def main() -> None:
    """Run the benchmark and print the side-by-side table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    parser.add_argument("--requests", type=int, default=None, help="requests per burst (default 3000)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--worker-class", default="sync", choices=["sync", "gthread"])
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--rate", type=float, default=200.0, help="steady rate, requests per second")
    parser.add_argument("--steady-seconds", type=float, default=None, help="per steady run (default 10)")
    parser.add_argument("--scenarios", default="sms,call-status")
    parser.add_argument("--sqlite", action="store_true", help="use SQLite (WAL) even if PostgreSQL is up")
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--history", type=int, default=20_000, help="texts already in the ledger (0: empty, as rounds 1-3)"
    )
    args = parser.parse_args()
    requests = args.requests or (600 if args.quick else 3000)
    steady_seconds = args.steady_seconds or (4.0 if args.quick else 10.0)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]

    tmp = Path(os.environ["SWITCHBOARD_VAR_DIR"])
    database_url = args.database_url
    if database_url is None and not args.sqlite:
        database_url = _postgres("postgresql://postgres@127.0.0.1:5432/test")
    database_url = database_url or f"sqlite:///{tmp / 'bench.db'}"
    redis_proc = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        port = free_port(6392)
        redis_proc = start_redis(port)
        redis_url = f"redis://127.0.0.1:{port}/0"
    key = crypto.new_key()
    crypto.configure((key,))
    migrate.upgrade(database_url)
    db.configure(database_url)
    with db.transaction() as s:
        tenant = tenants.add_tenant(s, f"bench-{uuid.uuid4().hex[:6]}", account_sid=ACCOUNT, auth_token=TOKEN)
        tenants.add_number(s, tenant, OUR_NUMBER)
        s.flush()
        tenant_id = tenant.id
    seed_history(database_url, args.history)

    ours_port, bare_port = free_port(8601), free_port(8602)
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SWITCHBOARD_SECRET_KEY=key,
        PUBLIC_BASE_URL=f"http://127.0.0.1:{ours_port}",
        LOG_LEVEL="WARNING",
    )
    traffic = Traffic(f"http://127.0.0.1:{ours_port}")
    procs = [
        _gunicorn("wsgi:app", ours_port, args, env),
        _gunicorn("bench.bare_app:app", bare_port, args, env),
    ]
    backends = _postgres_backends(database_url)
    extra = {"postgresql": backends} if database_url.startswith("postgres") else {}
    if redis_proc is not None:
        extra["redis"] = lambda: [redis_proc.pid]
    ours = Side(ours_port, procs[0].pid, extra)
    bare = Side(bare_port, procs[1].pid)
    rows: list[tuple[str, str, dict[str, float], dict[str, float]]] = []
    clients = max(args.concurrency, 16)
    started = time.time()
    try:
        with ProcessPoolExecutor(clients) as pool:
            for scenario in scenarios:
                warm = traffic.make(scenario, 48)
                _burst(pool, ours, warm, 4)
                _burst(pool, bare, warm, 4)
                # Burst: both sides get the same requests; ours sees each once (bare has no ledger).
                reqs = traffic.make(scenario, requests)
                half = len(reqs) // 2
                bare_a = _burst(pool, bare, reqs[:half], args.concurrency)
                ours_a = _burst(pool, ours, reqs[:half], args.concurrency)
                ours_b = _burst(pool, ours, reqs[half:], args.concurrency)
                bare_b = _burst(pool, bare, reqs[half:], args.concurrency)
                load = f"burst c={args.concurrency}"
                rows.append((scenario, load, _both(ours_a, ours_b), _both(bare_a, bare_b)))
                # Steady: the same rate on both sides, in two interleaved halves.
                n = int(args.rate * steady_seconds / 2)
                reqs_a, reqs_b = traffic.make(scenario, n), traffic.make(scenario, n)
                bare_a = _steady(pool, bare, reqs_a, args.rate, clients)
                ours_a = _steady(pool, ours, reqs_a, args.rate, clients)
                ours_b = _steady(pool, ours, reqs_b, args.rate, clients)
                bare_b = _steady(pool, bare, reqs_b, args.rate, clients)
                load = f"steady {args.rate:.0f}/s"
                rows.append((scenario, load, _both(ours_a, ours_b), _both(bare_a, bare_b)))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    took = time.time() - started
    ledger_line, ledger_ok = _check_ledger(traffic, tenant_id)
    if redis_proc is not None:
        redis_proc.terminate()

    backend = "postgresql" if database_url.startswith("postgres") else "sqlite"
    workers = f"gunicorn --workers {args.workers}"
    if args.worker_class != "sync":
        workers += f" --worker-class {args.worker_class} --threads {args.threads}"
    print(
        f"webhook ack benchmark: {requests} requests per burst, {steady_seconds:.0f} s per steady run,"
        f" {workers}, database {backend}, {os.cpu_count()} CPUs, {took:.0f} s"
    )
    print(
        f"{'scenario':<12}{'load':<14}{'side':<6}{'req/s':>8}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
        f"{'errors':>7}{'cpu ms':>8}{'ratio':>7}"
    )
    passed = ledger_ok
    verdicts = []
    for scenario, load, ours, bare in rows:
        ratio = ours["rps"] / bare["rps"]
        for side, r in (("bare", bare), ("ours", ours)):
            tail = f"{ratio:>6.2f}x" if side == "ours" and load.startswith("burst") else ""
            print(
                f"{scenario:<12}{load:<14}{side:<6}{r['rps']:>8.0f}{r['p50']:>8.1f}{r['p95']:>8.1f}"
                f"{r['p99']:>8.1f}{r['errors']:>7.0f}{r['cpu_ms']:>8.2f}{tail}"
            )
        ok = ours["errors"] == 0
        if load.startswith("burst"):
            ok = ok and ratio >= GOAL_RATIO
            verdicts.append(f"{scenario} burst {ratio:.2f}x")
        else:
            ok = ok and ours["p99"] <= GOAL_P99_MS
            verdicts.append(f"{scenario} steady p99 {ours['p99']:.1f} ms")
        passed = passed and ok
        parts = ", ".join(
            f"{k[4:]} {v:.2f}" for k, v in ours.items() if k.startswith("cpu_") and k != "cpu_ms"
        )
        print(f"{'':<32}ours cpu ms per request: {parts}")
    print(ledger_line)
    print(
        f"verdict: {'PASS' if passed else 'FAIL'} (goal: >= {GOAL_RATIO}x bare throughput in the burst,"
        f" p99 <= {GOAL_P99_MS:.0f} ms at {args.rate:.0f}/s, no errors, ledger OK): " + ", ".join(verdicts)
    )


if __name__ == "__main__":
    main()
