"""How long the rep waits: POST /api/v1/calls (twilio SDK -> the Twilio emulator over HTTP -> the ledger),
and a whole bridged call's callbacks through our webhooks over real HTTP, on SQLite or PostgreSQL.

    .venv/bin/python -m bench.dialer_calls --calls 50 [--database-url postgresql://postgres@127.0.0.1/x]

Redis: a free database number of REDIS (default redis://127.0.0.1:6379) is claimed like the test suite
does (a lock key), and only this run's keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid

from redis import Redis
from werkzeug.serving import make_server

from app.cli.migrate import upgrade
from app.core import db, tenants
from app.core.settings import Settings
from app.web import create_app, reps
from emulators.base import QuietHandler
from emulators.twilio import TwilioEmulator

ACCOUNT, TOKEN = "AC" + "b" * 32, "c" * 32
OUR, REP = "+15555550100", "+15555550199"


def claim_redis(base: str) -> tuple[str, Redis, str]:
    token = f"bench-{uuid.uuid4().hex}"
    for number in range(1, 16):
        conn = Redis.from_url(f"{base}/{number}")
        if conn.set("switchboard-test-session", token, nx=True, ex=3600):
            return f"{base}/{number}", conn, token
        conn.close()
    raise SystemExit("no free Redis database (1-15)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    upgrade(url)
    redis_url, conn, claim = claim_redis(args.redis.rstrip("/"))
    emu = TwilioEmulator()
    emu.start()
    emu.create_account(ACCOUNT, TOKEN)
    emu.add_number(ACCOUNT, OUR)
    holder: dict[str, object] = {}
    server = make_server(
        "127.0.0.1", 0, lambda e, s: holder["app"](e, s), threaded=True, request_handler=QuietHandler
    )  # type: ignore[operator]
    base = f"http://127.0.0.1:{server.server_port}"
    settings = Settings(
        database_url=url,
        redis_url=redis_url,
        secret_keys=("x9-0L2yNRxbqhffA2mIuM2AHHVUAsp3ZmLmHtiU-Eo8=",),
        public_base_url=base,
        twilio_api_base=emu.base_url,
        log_level="WARNING",
    )
    app = create_app(settings)
    holder["app"] = app
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with db.transaction() as s:
            t = tenants.add_tenant(s, f"bench-{uuid.uuid4().hex[:6]}", account_sid=ACCOUNT, auth_token=TOKEN)
            tenants.add_number(s, t, OUR)
            rep = tenants.add_user(s, t, name="Rep", email="rep@bench.example", phone=REP)
            tenant_id, user_id = t.id, rep.id
        headers = {"Authorization": f"Rep {reps.issue(settings.secret_keys[0], tenant_id, user_id)}"}
        client = app.test_client()
        place, lifecycle = [], []
        for n in range(args.calls):
            started = time.perf_counter()
            answer = client.post("/api/v1/calls", json={"to": f"+1555555{1000 + n:04d}"}, headers=headers)
            place.append(time.perf_counter() - started)
            assert answer.status_code == 201, answer.get_data(as_text=True)
            started = time.perf_counter()
            deliveries = emu.advance_call(answer.get_json()["call_sid"], "completed", talk=30)
            lifecycle.append(time.perf_counter() - started)
            assert all(d["status"] in (200, 204) for d in deliveries), deliveries
        per_call = len(deliveries)

        def ms(values: list[float], q: float) -> float:
            return (
                1000 * statistics.quantiles(values, n=100)[int(q) - 1]
                if len(values) > 1
                else 1000 * values[0]
            )

        backend = url.split(":", 1)[0]
        print(
            f"{backend}: POST /api/v1/calls x{args.calls}: "
            f"p50 {ms(place, 50):.1f} ms, p95 {ms(place, 95):.1f} ms"
        )
        print(
            f"{backend}: a call's {per_call} signed callbacks over HTTP: p50 {ms(lifecycle, 50):.1f} ms, "
            f"p95 {ms(lifecycle, 95):.1f} ms per call"
        )
    finally:
        server.shutdown()
        emu.stop()
        keys = [k for k in conn.scan_iter(count=1000) if k != b"switchboard-test-session"]
        if keys:
            conn.delete(*keys)
        if conn.get("switchboard-test-session") == claim.encode():
            conn.delete("switchboard-test-session")
        db.dispose()


if __name__ == "__main__":
    main()
