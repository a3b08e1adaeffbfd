# ruff: noqa: E501  (the printed table reads better on one line per figure)
"""Draining calls into one Salesforce org under live traffic, through the Procfile processes.

The Salesforce contract emulator runs as its own process with an org's limits (a daily allocation,
Developer edition's 15,000 by default; 200 records per collection, 2,000 rows per SOSL search or SOQL page,
FIND {...} up to 10,000 characters). PostgreSQL gets a throwaway database, Redis is a fresh server, and the
Procfile's processes run: gunicorn (web), 2 `rq worker -w jobs.worker.Worker` and `python -m jobs.cron`
(which also polls the org by SystemModstamp). 1,000 people are Contacts in the org, their numbers stored in
mixed formats; 5,000 signed Twilio status callbacks (completed calls, callers in random order) are posted
over HTTP to gunicorn while the workers run. It prints Salesforce requests by route, interactions per
request (goal >= 100), the drain time, and the exactly-once check: each CallSid is one Task (CallObject),
none lost, none twice.

    .venv/bin/python bench/salesforce_drain.py                  # 5,000 calls, 1,000 contacts, fresh org
    .venv/bin/python bench/salesforce_drain.py --used 0.3       # the org has used 30% of its allocation
    .venv/bin/python bench/salesforce_drain.py --backlog        # the workers start after the ingest
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["SWITCHBOARD_VAR_DIR"] = tempfile.mkdtemp(prefix="switchboard-bench-")

import urllib3  # noqa: E402
from twilio.request_validator import RequestValidator  # noqa: E402

from app.cli import migrate  # noqa: E402
from app.cli.devrunner import free_port, start_redis, wait_for_port  # noqa: E402
from app.core import crypto, db, tenants  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from app.web import create_app  # noqa: E402
from bench.common import control, get_json, scratch_postgres  # noqa: E402
from bench.sync_live import pending, send_all, wait_drained  # noqa: E402
from connectors.salesforce.auth import session_secrets  # noqa: E402
from emulators.salesforce import case_safe  # noqa: E402

PUBLIC = "https://bench.example"
VENV = Path(sys.executable).parent
ACCOUNT, TOKEN = "AC" + "5f" * 16, "5f" * 16
ORG = case_safe("00D0000000BENCH")
OUR_NUMBER = "+15555550100"


class Run:
    """The processes, the tenant on its org, and the people who call."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.procs: list[subprocess.Popen] = []
        sf_port = free_port(8641)
        self.sf_token = f"{ORG[:15]}!bench-{uuid.uuid4().hex}"
        argv = [
            sys.executable,
            "-m",
            "emulators.salesforce",
            "--port",
            str(sf_port),
            "--org-id",
            ORG,
            "--token",
            self.sf_token,
        ]
        self.procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL))
        wait_for_port(sf_port)
        self.sf, self.org = f"http://127.0.0.1:{sf_port}", ORG
        control(self.sf, "limits", org_id=ORG, daily_max=args.daily_max)
        redis_port = free_port(6397)
        self.redis = start_redis(redis_port)
        made = scratch_postgres(args.database_url or "postgresql://postgres@127.0.0.1:5432/test")
        if made is None:
            raise SystemExit("PostgreSQL is not reachable")
        self.database_url = made[0]
        self.settings = Settings(
            database_url=self.database_url,
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            secret_keys=(crypto.new_key(),),
            public_base_url=PUBLIC,
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
            "LOG_LEVEL": "WARNING",
            "TRUST_PROXY_HOPS": "1",
            "PYTHONPATH": str(ROOT),
        }
        self.web_port = free_port(8651)
        self.web = f"http://127.0.0.1:{self.web_port}"
        self.http = urllib3.PoolManager(maxsize=16)
        self.workers: list[subprocess.Popen] = []
        self.sent: dict[str, float] = {}

    def provision(self) -> int:
        """The tenant on the org, with 1,000 Contacts whose numbers are stored in mixed formats."""
        rng = random.Random(11)
        owner = control(self.sf, "users", org_id=self.org, email="rep@bench.example", first_name="Rep")["Id"]
        self.numbers = [f"+1555{3000000 + i:07d}" for i in range(self.args.numbers)]
        formats = [
            lambda x: x,
            lambda x: f"({x[2:5]}) {x[5:8]}-{x[8:]}",
            lambda x: x[2:],
            lambda x: f"{x[2:5]}.{x[5:8]}.{x[8:]}",
        ]

        def person(i: int) -> None:
            values = {
                "FirstName": "Caller",
                "LastName": f"N{i}",
                "Phone": rng.choice(formats)(self.numbers[i]),
                "OwnerId": owner,
            }
            control(self.sf, "insert", org_id=self.org, sobject="Contact", values=values)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(person, range(self.args.known)))
        with db.transaction() as s:
            tenant = tenants.add_tenant(s, "bench", account_sid=ACCOUNT, auth_token=TOKEN, crm="salesforce")
            tenant.crm_account_id = self.org
            tenant.crm_secrets = session_secrets(self.sf_token, self.sf)
            tenants.add_number(s, tenant, OUR_NUMBER)
            tenants.add_user(s, tenant, name="Rep", email="rep@bench.example", phone=None, crm_owner_id=owner)
            self.tenant_id = tenant.id
        control(self.sf, "limits", org_id=self.org, used=int(self.args.used * self.args.daily_max))
        return self.tenant_id

    def start_web_and_cron(self) -> None:
        self.procs.append(
            self._spawn(
                [str(VENV / "gunicorn"), "--workers", "2", "--bind", f"127.0.0.1:{self.web_port}", "wsgi:app"]
            )
        )
        wait_for_port(self.web_port)
        self.procs.append(self._spawn([sys.executable, "-m", "jobs.cron"]))

    def start_workers(self, n: int) -> None:
        argv = [
            str(VENV / "rq"),
            "worker",
            "-w",
            "jobs.worker.Worker",
            "-c",
            "jobs.rq_config",
            "--with-scheduler",
            self.settings.queue_name,
        ]
        for _ in range(n):
            self.workers.append(self._spawn(argv))

    def _spawn(self, argv: list[str]) -> subprocess.Popen:
        p = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs.append(p)
        return p

    def send(self, to: str) -> None:
        sid = "CA" + uuid.uuid4().hex
        params = {
            "AccountSid": ACCOUNT,
            "CallSid": sid,
            "CallStatus": "completed",
            "Direction": "outbound-api",
            "From": OUR_NUMBER,
            "To": to,
            "SequenceNumber": "3",
            "CallDuration": "42",
            "Timestamp": "Tue, 11 Mar 2025 16:07:01 +0000",
        }
        path = "/webhooks/twilio/call-status"
        signature = RequestValidator(TOKEN).compute_signature(PUBLIC + path, params)
        r = self.http.request(
            "POST",
            f"{self.web}{path}",
            fields=params,
            encode_multipart=False,
            headers={"X-Twilio-Signature": signature, "X-Forwarded-Proto": "https", "Host": "bench.example"},
            retries=False,
        )
        assert r.status == 204, (r.status, r.data[:200])
        self.sent[sid] = time.time()

    def stats(self) -> dict:
        return get_json(f"{self.sf}/_emulator/stats?org_id={self.org}")

    def tasks_by_call(self) -> dict[str, int]:
        tasks = get_json(f"{self.sf}/_emulator/records/{self.org}/Task")
        out: dict[str, int] = {}
        for task in tasks:  # type: ignore[union-attr]
            key = str(task.get("CallObject") or "")
            out[key] = out.get(key, 0) + 1
        return out

    def close(self) -> None:
        for w in self.workers:
            w.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.redis.terminate()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--numbers", type=int, default=1000)
    parser.add_argument("--known", type=int, default=1000, help="callers who are Contacts in the org")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--daily-max", type=int, default=15000, help="the org's daily API allocation")
    parser.add_argument("--used", type=float, default=0.0, help="share of it already used by the org")
    parser.add_argument("--backlog", action="store_true", help="start the workers after the ingest")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    run = Run(args)
    try:
        tenant_id = run.provision()
        run.start_web_and_cron()
        rng = random.Random(7)
        targets = [rng.choice(run.numbers) for _ in range(args.calls)]
        before = run.stats()
        if args.backlog:
            sent = send_all(run, targets)  # type: ignore[arg-type]
            start = time.time()
            run.start_workers(args.workers)
        else:
            run.start_workers(args.workers)
            time.sleep(3)
            sent = send_all(run, targets)  # type: ignore[arg-type]
            start = sent[0]
        end = wait_drained([tenant_id], timeout=900)
        time.sleep(1)
        after = run.stats()
        report(run, args, before, after, sent, start, end, pending([tenant_id]))
    finally:
        run.close()


def report(
    run: Run,
    args: Any,
    before: dict,
    after: dict,
    sent: tuple[float, float],
    start: float,
    end: float,
    left: int,
) -> None:
    by_route = {
        k: v - before["by_route"].get(k, 0)
        for k, v in after["by_route"].items()
        if v - before["by_route"].get(k, 0)
    }
    requests = after["total"] - before["total"]
    polls = sum(n for route, n in by_route.items() if route in ("POST composite/", "GET query/{locator}"))
    sync = requests - polls
    tasks = run.tasks_by_call()
    sids = set(run.sent)
    lost = len([s for s in sids if s not in tasks])
    twice = sum(n - 1 for s, n in tasks.items() if s in sids and n > 1)
    mode = (
        f"{args.workers} workers started after the ingest"
        if args.backlog
        else f"{args.workers} workers running"
    )
    seen = len(set(run.numbers))
    print(
        f"salesforce drain ({mode}): {args.calls} completed calls from {seen} numbers ({args.known} Contacts), random order"
    )
    print(f"  org: daily allocation {args.daily_max}, {args.used:.0%} used before the run")
    print(
        f"  webhooks sent                         {sent[1] - sent[0]:8.1f} s  ({args.calls / (sent[1] - sent[0]):.0f}/s)"
    )
    print(f"  Salesforce requests                   {requests:8d}")
    for route, n in sorted(by_route.items()):
        print(f"    {route:<48}{n:6d}")
    print(f"    of which the cron's polls            {polls:6d}")
    print(f"  interactions per request (all)        {args.calls / max(requests, 1):8.1f}     (goal >= 100)")
    print(f"  interactions per request (sync)       {args.calls / max(sync, 1):8.1f}")
    print(
        f"  drain (start -> all synced)           {end - start:8.1f} s   (last webhook at {sent[1] - start:.1f} s)"
    )
    print(
        f"  exactly once: {len(sids)} CallSids, {sum(1 for s in sids if s in tasks)} with a Task, lost {lost}, twice {twice}, pending {left}"
    )
    print(
        "  (machine: 2 cores shared with other engineers' runs; web, workers, cron, emulator, PostgreSQL, Redis)"
    )


if __name__ == "__main__":
    main()
