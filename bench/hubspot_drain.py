"""Draining a burst into HubSpot: interactions per HubSpot request, drain time, and time over the floor.

5,000 completed calls from 1,000 distinct numbers for one portal arrive through the real webhook path
(signed Twilio status callbacks into the ledger); 800 of the numbers are HubSpot contacts already,
stored in mixed formats, 200 are new. Then the sync job drains them into the HubSpot contract emulator
(a separate process) limited to 100 requests per 10 s and 4 searches per second, exactly as the worker
would. It prints HubSpot requests per interaction, the drain time, and the drain time divided by the
rate-limit floor: the least time the limit allows for the requests a perfect batcher would need (10
searches of 100 numbers, 2 contact creates, 50 call upserts and 50 association batches of 100; none of
the contacts has a deal, which HubSpot's calculated num_associated_deals tells without a request).

    .venv/bin/python bench/hubspot_drain.py [--calls 5000] [--numbers 1000] [--known 800]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Everything this run creates (bundled Redis data, keys) goes to a fresh directory, never the repo's var/.
os.environ["SWITCHBOARD_VAR_DIR"] = tempfile.mkdtemp(prefix="switchboard-bench-")

from hubspot import HubSpot  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from app.cli import migrate  # noqa: E402
from app.cli.devrunner import free_port, start_redis, wait_for_port  # noqa: E402
from app.core import crypto, db, tenants  # noqa: E402
from app.core.models import Interaction, Tenant  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from app.web import create_app  # noqa: E402
from bench.ack import _postgres  # noqa: E402
from bench.common import control  # noqa: E402
from connectors.hubspot.auth import private_app_secrets  # noqa: E402
from connectors.hubspot.connector import HubSpotConnector  # noqa: E402
from jobs.sync import drain  # noqa: E402
from tests.signing import TwilioPoster  # noqa: E402

ACCOUNT, TOKEN = "AC" + "4b" * 16, "b" * 32
PORTAL, HS_TOKEN = 22222222, "pat-na1-bench"
OUR_NUMBER = "+15555550100"


def stats(base: str) -> dict:
    """The emulator's request counts for the portal."""
    with urllib.request.urlopen(f"{base}/_emulator/stats?portal_id={PORTAL}", timeout=30) as r:
        return json.loads(r.read())


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--numbers", type=int, default=1000)
    parser.add_argument("--known", type=int, default=800)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    rng = random.Random(7)
    tmp = Path(os.environ["SWITCHBOARD_VAR_DIR"])

    port = free_port(8611)
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulators.hubspot",
            "--port",
            str(port),
            "--portal-id",
            str(PORTAL),
            "--token",
            HS_TOKEN,
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port)
    base = f"http://127.0.0.1:{port}"
    redis_port = free_port(6393)
    redis_proc = start_redis(redis_port)
    database_url = args.database_url or _postgres("postgresql://postgres@127.0.0.1:5432/test")
    database_url = database_url or f"sqlite:///{tmp / 'bench.db'}"
    settings = Settings(
        database_url=database_url,
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        secret_keys=(crypto.new_key(),),
        public_base_url="https://bench.example",
        hubspot_api_base=base,
        job_timeout_seconds=3600,
        log_level="WARNING",
    )
    try:
        migrate.upgrade(database_url)
        app = create_app(settings)
        control(base, "limits", portal_id=PORTAL, ten_second_max=100000, search_per_second=100000)
        owner = control(base, "owners", portal_id=PORTAL, email="rep@bench.example", first_name="Rep")["id"]
        with db.transaction() as s:
            tenant = tenants.add_tenant(s, "bench", account_sid=ACCOUNT, auth_token=TOKEN, crm="hubspot")
            tenant.crm_account_id, tenant.crm_secrets = str(PORTAL), private_app_secrets(HS_TOKEN)
            tenants.add_number(s, tenant, OUR_NUMBER)
            tenants.add_user(s, tenant, name="Rep", email="rep@bench.example", phone=None, crm_owner_id=owner)
            tenant_id = tenant.id
        with db.transaction() as s:
            HubSpotConnector(s.get(Tenant, tenant_id)).setup()

        numbers = [f"+1555{2000000 + i:07d}" for i in range(args.numbers)]
        formats = [lambda n: n, lambda n: f"({n[2:5]}) {n[5:8]}-{n[8:]}", lambda n: n[2:]]
        sdk = HubSpot(access_token=HS_TOKEN, host=base)
        for start in range(0, args.known, 100):
            inputs = [
                {"properties": {"phone": rng.choice(formats)(n), "hubspot_owner_id": owner}}
                for n in numbers[start : min(start + 100, args.known)]
            ]
            sdk.crm.contacts.batch_api.create(
                batch_input_simple_public_object_batch_input_for_create={"inputs": inputs}
            )

        poster = TwilioPoster(app.test_client(), settings.public_base_url or "", TOKEN)
        ingest_started = time.perf_counter()
        for i in range(args.calls):
            to = numbers[rng.randrange(args.numbers)] if i >= args.numbers else numbers[i]
            params = {
                "AccountSid": ACCOUNT,
                "CallSid": "CA" + uuid.uuid4().hex,
                "CallStatus": "completed",
                "Direction": "outbound-api",
                "From": OUR_NUMBER,
                "To": to,
                "SequenceNumber": "3",
                "CallDuration": str(rng.randint(20, 900)),
                "Timestamp": "Tue, 11 Mar 2025 16:07:01 +0000",
            }
            assert poster.post("/webhooks/twilio/call-status", params).status_code == 204
        ingest = time.perf_counter() - ingest_started

        limit, window = 100, 10.0
        control(base, "limits", portal_id=PORTAL, ten_second_max=limit, search_per_second=4)
        time.sleep(window + 0.5)  # let the setup traffic leave HubSpot's rolling window
        before = stats(base)
        started = time.perf_counter()
        profiler = None
        if os.environ.get("BENCH_PROFILE"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        while True:
            drain(tenant_id)
            with db.transaction() as s:
                pending = s.scalar(
                    select(func.count())
                    .select_from(Interaction)
                    .where(Interaction.tenant_id == tenant_id, Interaction.sync_state == "pending")
                )
            if not pending:
                break
        drained = time.perf_counter() - started
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats(os.environ.get("BENCH_PROFILE", "cumulative")).print_stats(40)
        after = stats(base)
        with db.transaction() as s:
            synced = s.scalar(
                select(func.count()).select_from(Interaction).where(Interaction.sync_state == "synced")
            )
        requests = after["total"] - before["total"]
        by_route = {
            k: v - before["by_route"].get(k, 0)
            for k, v in after["by_route"].items()
            if v - before["by_route"].get(k, 0)
        }
        unknown = args.numbers - args.known
        # searches + contact creates + call upserts + associations (no contact has a deal here)
        perfect = math.ceil(args.numbers / 100) + math.ceil(unknown / 100) + 2 * math.ceil(args.calls / 100)
        floor = max(0, math.ceil(perfect / limit) - 1) * window
        with urllib.request.urlopen(f"{base}/_emulator/objects/{PORTAL}/calls", timeout=30) as r:
            calls_in_hubspot = len(json.loads(r.read())["results"])
    finally:
        emulator.terminate()
        redis_proc.terminate()

    backend = "postgresql" if database_url.startswith("postgres") else "sqlite"
    print(
        f"hubspot drain benchmark: {args.calls} completed calls from {args.numbers} numbers"
        f" ({args.known} known contacts), emulator at {limit} requests / {window:.0f} s and 4 searches / s,"
        f" database {backend}"
    )
    print(f"  ingest (signed webhooks -> ledger)    {ingest:8.1f} s  ({args.calls / ingest:.0f} webhooks/s)")
    print(f"  HubSpot requests                      {requests:8d}     (perfect batcher: {perfect})")
    for route, n in sorted(by_route.items()):
        print(f"    {route:<48}{n:6d}")
    print(f"  429 answers                           {after['rate_limited'] - before['rate_limited']:8d}")
    print(f"  interactions per HubSpot request      {args.calls / max(requests, 1):8.1f}     (target >= 40)")
    print(f"  drain time                            {drained:8.1f} s")
    print(f"  rate-limit floor                      {floor:8.1f} s")
    print(
        f"  drain time / floor                    {drained / floor if floor else float('nan'):8.2f}"
        "     (target <= 1.25)"
    )
    print(f"  synced {synced} of {args.calls}; calls in HubSpot: {calls_in_hubspot}")


if __name__ == "__main__":
    main()
