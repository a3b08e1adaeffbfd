"""`switchboard run`, `simulate` and `emulate`: the service on embedded defaults, a demo load, emulators.

None of them is an app command: `run` and `emulate` need no secret key, `simulate` loads the app itself.
"""

from __future__ import annotations

import json
import os
import random
import sys

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from app.cli.common import fail, settings
from app.core import db, tenants


@click.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--web-workers", default=2, show_default=True, type=int)
def run_command(host: str, port: int, web_workers: int) -> None:
    """Run web + worker + cron on embedded defaults (SQLite under var/, bundled Redis, demo tenant)."""
    from app.cli import devrunner as embedded
    from app.cli import migrate
    from app.cli.demo import ensure_demo
    from app.core import bootstrap
    from app.core.settings import Settings

    env = dict(os.environ)
    env["SWITCHBOARD_SECRET_KEY"] = embedded.ensure_secret_key()
    sup = embedded.Supervisor()
    try:
        if not os.environ.get("REDIS_URL"):
            redis_port = embedded.free_port(6390)
            sup.adopt("redis", embedded.start_redis(redis_port))
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        env.setdefault("PUBLIC_BASE_URL", f"http://{host}:{port}")
        os.environ.update(env)
        settings = bootstrap.configure(Settings.from_env())
        env["DATABASE_URL"] = settings.database_url
        migrate.upgrade(settings.database_url)
        demo, key = ensure_demo()
        python_bin = embedded.bin_path
        if not os.environ.get("TWILIO_API_BASE"):
            # Texts from the demo's automations go to a local Twilio emulator that reports them sent and
            # delivered through signed status callbacks, like the real one.
            twilio_port = embedded.free_port(8602)
            sup.start(
                "twilio-emulator",
                [
                    sys.executable,
                    "-m",
                    "emulators.twilio",
                    "--port",
                    str(twilio_port),
                    "--account-sid",
                    demo.twilio_account_sid or "",
                    "--auth-token",
                    demo.twilio_auth_token or "",
                    *[a for n in demo_numbers(demo.id) for a in ("--number", n)],
                    "--auto-status",
                    "sent,delivered",
                    # The rep's dialer: a call rings the rep, is answered, bridged and ends, a few s apart.
                    "--auto-call",
                    "ringing,answered,bridged,completed",
                    "--auto-call-delay",
                    "3",
                ],
                env,
            )
            embedded.wait_for_port(twilio_port)
            env["TWILIO_API_BASE"] = f"http://127.0.0.1:{twilio_port}"
        sup.start(
            "web",
            [
                python_bin("gunicorn"),
                "--workers",
                str(web_workers),
                "--bind",
                f"{host}:{port}",
                "--access-logfile",
                "-",
                "wsgi:app",
            ],
            env,
        )
        worker = [python_bin("rq"), "worker", "-w", "jobs.worker.Worker", "-c", "jobs.rq_config"]
        sup.start("worker", [*worker, "--with-scheduler", settings.queue_name], env)
        sup.start("cron", [sys.executable, "-m", "jobs.cron"], env)
        embedded.wait_for_port(port, timeout=30)
    except embedded.EmbeddedError as exc:
        sup.stop()
        fail(str(exc))
    except BaseException:  # e.g. a ConfigError (one line, exit 2): stop the Redis already started first
        sup.stop()
        raise
    base = env["PUBLIC_BASE_URL"]
    embedded.RUN_FILE.write_text(json.dumps({"url": base, "redis_url": env["REDIS_URL"]}))
    click.echo(
        f"\nSwitchboard is running at {base}\n"
        f"  database      {settings.database_url}\n"
        f"  redis         {env['REDIS_URL']}\n"
        f"  demo API key  {key or '(see var/demo-api-key)'}\n\n"
        f"  timelines     open {base}/ and paste the API key\n"
        f"  simulate      .venv/bin/switchboard simulate      (in another terminal)\n"
        f"  API           curl -H 'Authorization: Bearer {key or 'KEY'}' {base}/api/v1/interactions\n"
        f"  stop          Ctrl+C\n"
    )
    sys.exit(sup.wait())


def demo_numbers(tenant_id: int) -> list[str]:
    """The Twilio numbers of a tenant."""
    from app.core.models import TenantNumber

    with db.transaction() as s:
        return list(s.scalars(select(TenantNumber.e164).where(TenantNumber.tenant_id == tenant_id)))


@click.command("simulate")
@click.option("--url", default=None, help="Base URL of the running service (default PUBLIC_BASE_URL).")
@click.option("--tenant", default="demo", show_default=True)
@click.option("--seed", default=None, type=int, help="Random seed for a repeatable mix.")
@with_appcontext
def simulate_command(url: str | None, tenant: str, seed: int | None) -> None:
    """Send a realistic, signed mix of calls and texts to a running service."""
    from app.cli import simulate
    from app.cli.devrunner import running_url
    from app.core.models import LocalContact

    base = url or settings().public_base_url or running_url() or "http://127.0.0.1:8000"
    rng = random.Random(seed)
    with db.transaction() as s:
        row = tenants.get_tenant(s, tenant)
        token, account = row.twilio_auth_token, row.twilio_account_sid
        ours = [n.e164 for n in row.numbers]
        reps = [u.phone for u in row.users if u.phone]
        known = [
            p.e164
            for c in s.scalars(select(LocalContact).where(LocalContact.tenant_id == row.id))
            for p in c.phones[:1]
        ]
    if not (token and account and ours and reps):
        fail(f"{tenant} needs a Twilio account, a number and a user with a phone to simulate")
    strangers = [f"+1555555{rng.randint(1000, 9999)}" for _ in range(2)]
    callers = known + strangers
    scenarios = []
    for caller in callers:
        outcome = rng.choice(["answered", "answered", "missed", "voicemail"])
        scenarios.append(
            simulate.inbound_call(
                account, caller, ours[0], rng.choice(reps), outcome, talk=rng.randint(30, 600)
            )
        )
    scenarios.append(simulate.inbound_sms(account, callers[0], ours[0], "Hi, can someone call me back?"))
    scenarios.append(simulate.inbound_sms(account, strangers[0], ours[0], "Saw your ad. Pricing?"))
    scenarios.append(simulate.outbound_sms(account, ours[0], callers[-1], "delivered"))
    scenarios.append(simulate.outbound_sms(account, ours[0], callers[0], "undelivered", "30003"))
    sent = 0
    for scenario in scenarios:
        codes = simulate.deliver(base, token, scenario.deliveries(rng, duplicates=1))
        bad = [c for c in codes if c >= 300]
        sent += len(codes)
        click.echo(
            f"{'ok ' if not bad else 'ERR'} {scenario.name}: {len(codes)} webhooks"
            + (f" (statuses {sorted(set(bad))})" if bad else "")
        )
    click.echo(f"sent {sent} signed webhooks to {base}; timelines fill in as the worker syncs")


@click.command("emulate")
@click.argument("provider", type=click.Choice(["hubspot", "salesforce", "sendgrid", "mailgun"]))
@click.option("--port", default=8601, show_default=True, type=int)
@click.option("--portal-id", type=int, help="HubSpot: create this portal at start.")
@click.option("--org-id", help="Salesforce: create this org (00D..., 18 characters) at start.")
@click.option("--token", help="Access token of that portal or org (SendGrid, Mailgun: the API key).")
def emulate_command(
    provider: str, port: int, portal_id: int | None, org_id: str | None, token: str | None
) -> None:
    """Run a provider's contract emulator on 127.0.0.1 (for demos, tests and benchmarks)."""
    args = ["--port", str(port)]
    if provider in ("sendgrid", "mailgun"):  # prints the URL, and the generated keys on stderr
        from importlib import import_module

        import_module(f"emulators.{provider}").main(args + (["--api-key", token] if token else []))
        return
    if token:
        args += ["--token", token]
    if provider == "salesforce":
        from emulators.salesforce import main as run_salesforce

        run_salesforce(args + (["--org-id", org_id] if org_id else []))
        return
    from emulators.hubspot import main as run_hubspot

    run_hubspot(args + (["--portal-id", str(portal_id)] if portal_id else []))


COMMANDS = [run_command, simulate_command, emulate_command]
