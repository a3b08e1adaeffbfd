"""Where the ack's CPU goes, in process: signed webhooks through the app's WSGI callable under cProfile.

Builds the app on a throwaway PostgreSQL database (or SQLite with --sqlite) and a private redis-server,
warms it up, then sends --requests distinct signed inbound texts (or call-status callbacks with
--scenario call-status) and prints the CPU time per request and the functions that cost the most. No
gunicorn and no load generator: what it shows is our own per-request work (issue 9).

    .venv/bin/python bench/ack_profile.py [--requests 1000] [--scenario sms|call-status] [--sqlite]
        [--sort tottime|cumtime] [--top 40] [--no-profile] [--through-flask] [--repeat N]

--through-flask sends the webhooks through Flask's dispatch instead of app.web.fastpath (to compare the
two); --repeat N (with --no-profile) times N rounds of --requests, alternating the two paths when given
--both, and prints each round's CPU per request.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["SWITCHBOARD_VAR_DIR"] = tempfile.mkdtemp(prefix="switchboard-bench-")

from werkzeug.test import EnvironBuilder  # noqa: E402

from app.cli import migrate  # noqa: E402
from app.cli.devrunner import free_port, start_redis  # noqa: E402
from app.core import crypto, db, tenants  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from bench.ack import ACCOUNT, OUR_NUMBER, TOKEN, Traffic, _cpu, _postgres, seed_history  # noqa: E402

BASE = "http://localhost"


def _client_backends(database_url: str) -> list[int]:
    """The pids of the PostgreSQL backends serving the app's pool (not autovacuum, not this query's)."""
    if not database_url.startswith("postgres"):
        return []
    from sqlalchemy import text

    with db.engine().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend'"
            )
        )
        return [r[0] for r in rows]


def main() -> None:
    """Profile the in-process ack path and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--scenario", default="sms", choices=["sms", "call-status"])
    parser.add_argument("--sqlite", action="store_true")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--no-profile", action="store_true", help="only time the requests")
    parser.add_argument("--through-flask", action="store_true", help="bypass app.web.fastpath")
    parser.add_argument("--repeat", type=int, default=1, help="timed rounds (with --no-profile)")
    parser.add_argument("--both", action="store_true", help="alternate fastpath and Flask per round")
    parser.add_argument("--history", type=int, default=20_000, help="texts already in the ledger")
    args = parser.parse_args()

    tmp = Path(os.environ["SWITCHBOARD_VAR_DIR"])
    database_url = None if args.sqlite else _postgres("postgresql://postgres@127.0.0.1:5432/test")
    database_url = database_url or f"sqlite:///{tmp / 'bench.db'}"
    port = free_port(6393)
    redis_proc = start_redis(port)
    try:
        key = crypto.new_key()
        crypto.configure((key,))
        migrate.upgrade(database_url)
        db.configure(database_url)
        with db.transaction() as s:
            tenant = tenants.add_tenant(
                s, f"prof-{uuid.uuid4().hex[:6]}", account_sid=ACCOUNT, auth_token=TOKEN
            )
            tenants.add_number(s, tenant, OUR_NUMBER)
        seed_history(database_url, args.history)  # a live ledger's size and statistics (bench/ack.py)
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "SWITCHBOARD_SECRET_KEY": key,
            "PUBLIC_BASE_URL": BASE,
            "LOG_LEVEL": "WARNING",
        }
        os.environ.update(env)
        from app.web import create_app

        app = create_app(Settings.from_env())
        fast, flask_dispatch = app.wsgi_app, app.wsgi_app.fallback  # type: ignore[attr-defined]
        if args.through_flask:
            app.wsgi_app = flask_dispatch  # type: ignore[method-assign]
        traffic = Traffic(BASE)

        def environs(reqs: list[tuple[str, str, str]]) -> list[dict]:
            # Built before the clock starts: the test client's own request building is not the ack's cost.
            return [
                EnvironBuilder(
                    path=path,
                    base_url=BASE,
                    method="POST",
                    data=body,
                    content_type="application/x-www-form-urlencoded",
                    headers={"X-Twilio-Signature": signature},
                ).get_environ()
                for path, body, signature in reqs
            ]

        def send(envs: list[dict]) -> None:
            statuses: list[str] = []

            def start_response(status: str, headers: list, exc_info: object = None) -> None:
                statuses.append(status)

            for environ in envs:
                for _chunk in app(environ, start_response):
                    pass
                assert statuses[-1] < "300", statuses[-1]

        send(environs(traffic.make(args.scenario, 100)))  # warm: caches, prepared statements, pool
        backends = _client_backends(database_url)

        def pg_cpu() -> float:  # CPU seconds of the app's PostgreSQL backends so far
            return sum(_cpu(pid) for pid in backends)

        if args.no_profile and args.repeat > 1:
            for i in range(args.repeat):
                path = "fastpath" if not args.through_flask else "flask"
                if args.both:
                    path = ("fastpath", "flask")[i % 2]
                app.wsgi_app = fast if path == "fastpath" else flask_dispatch  # type: ignore[method-assign]
                reqs = environs(traffic.make(args.scenario, args.requests))
                pg, cpu = pg_cpu(), time.process_time()
                send(reqs)
                cpu, pg = time.process_time() - cpu, pg_cpu() - pg
                print(
                    f"round {i + 1} {path}: {cpu / len(reqs) * 1000:.3f} ms CPU per request,"
                    f" PostgreSQL {pg / len(reqs) * 1000:.3f} ms"
                )
            return
        reqs = environs(traffic.make(args.scenario, args.requests))
        # CPU time, not wall time: waiting on PostgreSQL or Redis is not our cost here
        profiler = None if args.no_profile else cProfile.Profile(time.process_time)
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        send(reqs)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        n = len(reqs)
        backend = "postgresql" if database_url.startswith("postgres") else "sqlite"
        print(
            f"{n} {args.scenario} webhooks in process, {backend}: {cpu / n * 1000:.2f} ms CPU and"
            f" {wall / n * 1000:.2f} ms wall per request{' (profiled)' if profiler else ''}"
        )
        if profiler:
            stats = pstats.Stats(profiler).sort_stats(args.sort)
            stats.print_stats(args.top)
            if os.environ.get("PROFILE_CALLERS"):
                stats.print_callers(os.environ["PROFILE_CALLERS"])
    finally:
        redis_proc.terminate()


if __name__ == "__main__":
    main()
