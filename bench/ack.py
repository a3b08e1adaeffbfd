"""Webhook ack throughput and latency: our /webhooks/twilio/sms against a bare Flask endpoint, side by side.

Both run under the same gunicorn settings on this machine, hit by the same load generator with signed,
distinct inbound-SMS webhooks. Ours verifies the signature, commits the event and interaction to the
database and enqueues the RQ job before answering; the bare one parses the form and answers empty TwiML.
The interesting number is the ratio. Afterwards it checks every request left exactly one ledger row.

    .venv/bin/python bench/ack.py [--requests 3000] [--concurrency 16] [--workers 4] [--database-url URL]

PostgreSQL (where production runs) at 127.0.0.1:5432 is used when reachable (a throwaway database is
created), else SQLite; Redis from REDIS_URL, else a private redis-server on a free port.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Everything this run creates (bundled Redis data, keys) goes to a fresh directory, never the repo's var/.
os.environ["SWITCHBOARD_VAR_DIR"] = tempfile.mkdtemp(prefix="switchboard-bench-")

from sqlalchemy import create_engine, func, select, text  # noqa: E402

from app.cli import migrate, simulate  # noqa: E402
from app.cli.devrunner import free_port, start_redis, wait_for_port  # noqa: E402
from app.core import crypto, db, tenants  # noqa: E402
from app.core.models import Interaction, WebhookEvent  # noqa: E402
from app.core.settings import database_url_for_sqlalchemy  # noqa: E402

ACCOUNT = "AC" + "be" * 16
TOKEN = secrets.token_hex(16)
PATH = "/webhooks/twilio/sms"


def _postgres(admin_url: str) -> str | None:
    try:
        engine = create_engine(database_url_for_sqlalchemy(admin_url), isolation_level="AUTOCOMMIT")
        name = f"switchboard_bench_{uuid.uuid4().hex[:8]}"
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return admin_url.rsplit("/", 1)[0] + f"/{name}"
    except Exception:
        return None


def _bodies(n: int, base_url: str) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        post = simulate.inbound_sms(ACCOUNT, f"+1555{5550000 + i % 9000:07d}", "+15555550100", f"hello {i}")
        params = post.first[0].params
        out.append((urlencode(params), simulate.sign(base_url + PATH, params, TOKEN)))
    return out


def _fire(args: tuple[int, list[tuple[str, str]]]) -> list[tuple[float, int]]:
    port, batch = args
    results = []
    for body, signature in batch:
        started = time.perf_counter()
        conn = HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "POST",
            PATH,
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature},
        )
        status = conn.getresponse().status
        conn.close()
        results.append((time.perf_counter() - started, status))
    return results


def _load(port: int, bodies: list[tuple[str, str]], concurrency: int) -> dict[str, float]:
    chunks = [bodies[i::concurrency] for i in range(concurrency)]
    started = time.perf_counter()
    with ProcessPoolExecutor(concurrency) as pool:
        results = [r for part in pool.map(_fire, [(port, c) for c in chunks]) for r in part]
    elapsed = time.perf_counter() - started
    latencies = sorted(r[0] * 1000 for r in results)
    errors = sum(1 for r in results if r[1] >= 300)
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(results) / elapsed, "p50": q[49], "p95": q[94], "p99": q[98], "errors": errors}


def _gunicorn(app: str, port: int, workers: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    exe = str(Path(sys.executable).parent / "gunicorn")
    proc = subprocess.Popen(
        [exe, "--workers", str(workers), "--bind", f"127.0.0.1:{port}", "--log-level", "warning", app],
        cwd=ROOT,
        env=env,
    )
    wait_for_port(port, timeout=30)
    return proc


def main() -> None:
    """Run the benchmark and print the side-by-side table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    tmp = Path(os.environ["SWITCHBOARD_VAR_DIR"])
    database_url = args.database_url or _postgres("postgresql://postgres@127.0.0.1:5432/test")
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
        tenants.add_number(s, tenant, "+15555550100")

    ours_port, bare_port = free_port(8601), free_port(8602)
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SWITCHBOARD_SECRET_KEY=key,
        PUBLIC_BASE_URL=f"http://127.0.0.1:{ours_port}",
        LOG_LEVEL="WARNING",
    )
    procs = [
        _gunicorn("wsgi:app", ours_port, args.workers, env),
        _gunicorn("bench.bare_app:app", bare_port, args.workers, env),
    ]
    try:
        warm = _bodies(50, f"http://127.0.0.1:{ours_port}")
        _load(ours_port, warm, 4)
        _load(bare_port, warm, 4)
        bodies = _bodies(args.requests, f"http://127.0.0.1:{ours_port}")
        # Interleave runs so drift on the machine hits both sides alike.
        half = len(bodies) // 2
        bare_a = _load(bare_port, bodies[:half], args.concurrency)
        ours_a = _load(ours_port, bodies[:half], args.concurrency)
        ours_b = _load(ours_port, bodies[half:], args.concurrency)
        bare_b = _load(bare_port, bodies[half:], args.concurrency)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    ours = {k: (ours_a[k] + ours_b[k]) / 2 for k in ours_a}
    bare = {k: (bare_a[k] + bare_b[k]) / 2 for k in bare_a}
    ours["errors"], bare["errors"] = ours_a["errors"] + ours_b["errors"], bare_a["errors"] + bare_b["errors"]

    with db.transaction() as s:
        events = s.scalar(select(func.count()).select_from(WebhookEvent))
        interactions = s.scalar(select(func.count()).select_from(Interaction))
    if redis_proc is not None:
        redis_proc.terminate()

    backend = "postgresql" if database_url.startswith("postgres") else "sqlite"
    print(
        f"webhook ack benchmark: {args.requests} signed inbound-SMS webhooks, concurrency {args.concurrency},"
        f" gunicorn --workers {args.workers}, database {backend}, {os.cpu_count()} CPUs"
    )
    print(f"{'endpoint':<34}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, r in (("bare Flask (parse form, TwiML)", bare), ("switchboard /webhooks/twilio/sms", ours)):
        print(
            f"{name:<34}{r['rps']:>9.0f}{r['p50']:>9.1f}{r['p95']:>9.1f}{r['p99']:>9.1f}{r['errors']:>8.0f}"
        )
    print(
        f"ratio ours/bare: throughput {ours['rps'] / bare['rps']:.2f}x,"
        f" p50 latency {ours['p50'] / bare['p50']:.2f}x, p99 latency {ours['p99'] / bare['p99']:.2f}x"
    )
    expected = args.requests + 50
    verdict = "OK" if events == interactions == expected else "MISMATCH"
    print(
        f"ledger check: {events} events, {interactions} interactions, {expected} webhooks sent -> {verdict}"
    )


if __name__ == "__main__":
    main()
