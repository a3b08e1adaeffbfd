"""The `switchboard` command: run the service, provision tenants, inspect and replay the ledger."""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup, FlaskGroup
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import db, ledger, tenants
from app.core.models import Interaction, Tenant
from app.core.tenants import ProvisioningError
from app.web import create_app


def _settings() -> Any:
    return current_app.extensions["switchboard"]


main = FlaskGroup(create_app=create_app, add_default_commands=False, help=__doc__)


def _fail(message: str) -> None:
    raise click.ClickException(message)


@contextmanager
def _provisioning() -> Iterator[Session]:
    """A transaction whose ProvisioningError becomes a clean CLI error (exit 1), with nothing written."""
    try:
        with db.transaction() as s:
            yield s
    except ProvisioningError as exc:
        raise click.ClickException(str(exc)) from None


# --- run and db --------------------------------------------------------------------------------------


@main.command("run", with_appcontext=False)
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
        rq_config = ["-c", "jobs.rq_config"]
        sup.start(
            "worker", [python_bin("rq"), "worker", *rq_config, "--with-scheduler", settings.queue_name], env
        )
        sup.start("cron", [python_bin("rq"), "cron", *rq_config, "jobs.cron"], env)
        embedded.wait_for_port(port, timeout=30)
    except embedded.EmbeddedError as exc:
        sup.stop()
        _fail(str(exc))
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


db_group = AppGroup("db", help="Database schema.")
main.add_command(db_group)


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations up to the latest revision."""
    from app.cli.migrate import upgrade

    upgrade(_settings().database_url)
    click.echo("database is up to date")


# --- provisioning ------------------------------------------------------------------------------------

tenant_group = AppGroup("tenant", help="Tenants: one Twilio account and one CRM each.")
main.add_command(tenant_group)


@tenant_group.command("add")
@click.argument("name")
@click.option("--twilio-account-sid", required=True)
@click.option("--twilio-auth-token", required=True)
@click.option("--crm", default="local", show_default=True, type=click.Choice(["local", "hubspot"]))
@click.option("--region", default="US", show_default=True, help="Default region for national phone formats.")
@click.option("--number", "numbers", multiple=True, help="A Twilio number of this tenant (repeatable).")
@click.option("--hubspot-token", help="HubSpot private-app access token (--crm hubspot).")
@click.option("--hubspot-portal-id", help="HubSpot portal (hub) id: routes HubSpot webhooks to this tenant.")
def tenant_add(
    name: str,
    twilio_account_sid: str,
    twilio_auth_token: str,
    crm: str,
    region: str,
    numbers: tuple[str, ...],
    hubspot_token: str | None,
    hubspot_portal_id: str | None,
) -> None:
    """Create a tenant (secrets are stored encrypted)."""
    from connectors.hubspot.auth import private_app_secrets

    if crm == "hubspot" and not hubspot_token:
        _fail("--crm hubspot needs --hubspot-token (or install the HubSpot app: GET /install/hubspot)")
    with _provisioning() as s:
        tenant = tenants.add_tenant(
            s, name, account_sid=twilio_account_sid, auth_token=twilio_auth_token, crm=crm, region=region
        )
        if hubspot_token:
            tenant.crm_secrets = private_app_secrets(hubspot_token)
            tenant.crm_account_id = hubspot_portal_id
        for number in numbers:
            tenants.add_number(s, tenant, number)
        click.echo(f"tenant {tenant.name} created (id {tenant.id}, crm {tenant.crm})")


@tenant_group.command("set-twilio")
@click.argument("tenant")
@click.option("--account-sid", required=True)
@click.option("--auth-token", required=True)
def tenant_set_twilio(tenant: str, account_sid: str, auth_token: str) -> None:
    """Attach (or replace) the tenant's Twilio account, e.g. after installing from HubSpot."""
    with _provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        taken = s.scalar(select(Tenant).where(Tenant.twilio_account_sid == account_sid, Tenant.id != row.id))
        if taken is not None:
            raise ProvisioningError(f"Twilio account {account_sid} already belongs to a tenant")
        row.twilio_account_sid, row.twilio_auth_token = account_sid, auth_token
    click.echo(f"Twilio account {account_sid} attached to {tenant}")


@tenant_group.command("list")
def tenant_list() -> None:
    """List tenants."""
    with db.transaction() as s:
        for t in s.scalars(select(Tenant).order_by(Tenant.id)):
            numbers = ", ".join(n.e164 for n in t.numbers) or "-"
            click.echo(f"{t.id}\t{t.name}\t{t.crm}\t{t.twilio_account_sid}\t{numbers}")


@tenant_group.command("set")
@click.argument("tenant")
@click.argument("key", type=click.Choice(sorted(tenants.DEFAULT_SETTINGS)))
@click.argument("value")
def tenant_set(tenant: str, key: str, value: str) -> None:
    """Change a tenant setting (value is JSON: 30, true, "text")."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    default = tenants.DEFAULT_SETTINGS[key]
    if type(parsed) is not type(default):
        _fail(f"{key} takes a {type(default).__name__}")
    if key == "unknown_contacts" and parsed not in ("create", "skip"):
        _fail("unknown_contacts is create or skip")
    with _provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        row.settings = {**(row.settings or {}), key: parsed}
    click.echo(f"{key} = {json.dumps(parsed)}")


number_group = AppGroup("number", help="A tenant's Twilio phone numbers.")
main.add_command(number_group)


@number_group.command("add")
@click.argument("tenant")
@click.argument("number")
@click.option("--label")
def number_add(tenant: str, number: str, label: str | None) -> None:
    """Register a Twilio number for a tenant."""
    with _provisioning() as s:
        row = tenants.add_number(s, tenants.get_tenant(s, tenant), number, label)
        click.echo(f"number {row.e164} added")


user_group = AppGroup("user", help="Reps and CSMs.")
main.add_command(user_group)


@user_group.command("add")
@click.argument("tenant")
@click.option("--name", required=True)
@click.option("--email", required=True)
@click.option("--phone", help="E.164 number their calls ring.")
@click.option("--crm-owner-id", help="Owner id in the CRM (built-in CRM: defaults to the email).")
@click.option("--default", "is_default", is_flag=True, help="Ring this user when no owner matches.")
@click.option("--team", "teams", multiple=True, help="A team the user belongs to, e.g. csm (repeatable).")
def user_add(
    tenant: str,
    name: str,
    email: str,
    phone: str | None,
    crm_owner_id: str | None,
    is_default: bool,
    teams: tuple[str, ...],
) -> None:
    """Add a user to a tenant."""
    with _provisioning() as s:
        user = tenants.add_user(
            s,
            tenants.get_tenant(s, tenant),
            name=name,
            email=email,
            phone=phone,
            crm_owner_id=crm_owner_id,
            default=is_default,
        )
        tenants.set_teams(s, user, list(teams))
        click.echo(f"user {user.email} added (id {user.id}, owner id {user.crm_owner_id})")


apikey_group = AppGroup("apikey", help="Read-API keys.")
main.add_command(apikey_group)


@apikey_group.command("create")
@click.argument("tenant")
def apikey_create(tenant: str) -> None:
    """Create an API key; it is printed once, alone on the last line."""
    with _provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        key = tenants.create_api_key(s, row)
        name = row.name
    click.echo(f"API key for {name} (shown once; store it now):", err=True)
    click.echo(key)


contact_group = AppGroup("contact", help="Contacts in the built-in CRM.")
main.add_command(contact_group)


@contact_group.command("add")
@click.argument("tenant")
@click.option("--name", required=True)
@click.option("--phone", "phones", multiple=True, required=True, help="Any format; repeatable.")
@click.option("--email")
@click.option("--owner", help="Email of the owning user.")
def contact_add(
    tenant: str, name: str, phones: tuple[str, ...], email: str | None, owner: str | None
) -> None:
    """Add a contact to a tenant's built-in CRM."""
    from app.core.models import User
    from connectors.local import LocalConnector

    try:
        with db.transaction() as s:
            row = tenants.get_tenant(s, tenant)
            if row.crm != "local":
                _fail(f"{row.name} uses {row.crm}; add contacts there")
            owner_id = None
            if owner:
                user = s.scalar(select(User).where(User.tenant_id == row.id, User.email == owner.lower()))
                if user is None:
                    _fail(f"no user {owner} in {row.name}")
                owner_id = user.crm_owner_id
        contact_id = LocalConnector(row).add_contact(name, list(phones), email, owner_id)
    except (ProvisioningError, ValueError) as exc:
        _fail(str(exc))
    click.echo(f"contact {contact_id} added")


# --- automations -----------------------------------------------------------------------------------------

rules_group = AppGroup("rules", help="Automation rules (YAML): load, show, dry-run.")
main.add_command(rules_group)


@rules_group.command("load")
@click.argument("tenant")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--default", "use_default", is_flag=True, help="Load the shipped default rules.")
def rules_load(tenant: str, file: str | None, use_default: bool) -> None:
    """Validate a rules file and make it the tenant's next version."""
    from app.automation import rules
    from app.automation.store import store_rules

    if bool(file) == use_default:
        _fail("give a FILE or --default")
    from pathlib import Path

    source = rules.default_source() if use_default else Path(file or "").read_text()
    with _provisioning() as s:
        tenant_id = tenants.get_tenant(s, tenant).id
    try:
        version = store_rules(tenant_id, source)
    except rules.RulesError as exc:
        _fail("rules not loaded:\n" + "\n".join(f"  {p}" for p in exc.problems))
    click.echo(f"rules version {version} loaded for {tenant} ({len(rules.load(source).rules)} rules)")


@rules_group.command("show")
@click.argument("tenant")
def rules_show(tenant: str) -> None:
    """Print the tenant's rules in force, with their version."""
    from app.core.models import RuleSet

    with _provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        current = s.scalar(
            select(RuleSet).where(RuleSet.tenant_id == row.id).order_by(RuleSet.version.desc())
        )
        if current is None:
            _fail(f"{tenant} has no rules; load some with `switchboard rules load {tenant} --default`")
        click.echo(f"# version {current.version}, loaded {current.loaded_at:%Y-%m-%d %H:%M %Z}")
        click.echo(current.source.rstrip())


@rules_group.command("test", with_appcontext=False)
@click.argument("rules_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("events", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--start", help="Virtual time of the first form event (ISO 8601 with offset); default now.")
def rules_test(rules_file: str, events: tuple[str, ...], start: str | None) -> None:
    """Dry-run rules over recorded webhooks (.form) or a timeline (.yaml): prints what would happen."""
    from datetime import datetime
    from pathlib import Path

    from app.automation import rules
    from app.cli import dryrun

    try:
        lines = dryrun.run(
            Path(rules_file).read_text(),
            [Path(e) for e in events],
            datetime.fromisoformat(start) if start else None,
        )
    except rules.RulesError as exc:
        _fail("rules not valid:\n" + "\n".join(f"  {p}" for p in exc.problems))
    for line in lines:
        click.echo(line)


# --- HubSpot ---------------------------------------------------------------------------------------------

hubspot_group = AppGroup("hubspot", help="HubSpot portals.")
main.add_command(hubspot_group)


def _hubspot_tenant(ref: str) -> Tenant:
    with _provisioning() as s:
        tenant = tenants.get_tenant(s, ref)
    if tenant.crm != "hubspot":
        _fail(f"{tenant.name} uses {tenant.crm}, not hubspot")
    return tenant


@hubspot_group.command("setup")
@click.argument("tenant")
def hubspot_setup(tenant: str) -> None:
    """Create the unique switchboard_id property Switchboard writes with (idempotent)."""
    from connectors.base import CrmError
    from connectors.hubspot.jobs import setup_portal

    try:
        made = setup_portal(_hubspot_tenant(tenant).id)
    except CrmError as exc:
        _fail(str(exc))
    click.echo(
        f"switchboard_id property ready ({'created on ' + ', '.join(made) if made else 'already there'})"
    )


@hubspot_group.command("sync-owners")
@click.argument("tenant")
def hubspot_sync_owners(tenant: str) -> None:
    """Map the tenant's users to HubSpot owners by email (sets their CRM owner id)."""
    from app.core.models import User
    from connectors.base import CrmError
    from connectors.hubspot.connector import HubSpotConnector

    row = _hubspot_tenant(tenant)
    try:
        owners = {o["email"]: o for o in HubSpotConnector(row).owners() if o["email"]}
    except CrmError as exc:
        _fail(str(exc))
    matched = 0
    with db.transaction() as s:
        for user in s.scalars(select(User).where(User.tenant_id == row.id).order_by(User.id)):
            owner = owners.get(user.email.lower())
            if owner is None:
                click.echo(f"{user.email}\tno HubSpot owner with this email")
                continue
            user.crm_owner_id = owner["id"]
            matched += 1
            click.echo(f"{user.email}\towner {owner['id']}")
    click.echo(f"{matched} user(s) mapped to HubSpot owners", err=True)


@main.command("emulate", with_appcontext=False)
@click.argument("provider", type=click.Choice(["hubspot"]))
@click.option("--port", default=8601, show_default=True, type=int)
@click.option("--portal-id", type=int, help="Create this portal at start.")
@click.option("--token", help="Private-app token of that portal.")
def emulate_command(provider: str, port: int, portal_id: int | None, token: str | None) -> None:
    """Run a provider's contract emulator on 127.0.0.1 (for demos, tests and benchmarks)."""
    from emulators.hubspot import main as run_hubspot

    args = ["--port", str(port)]
    if portal_id:
        args += ["--portal-id", str(portal_id)]
    if token:
        args += ["--token", token]
    run_hubspot(args)


# --- the ledger --------------------------------------------------------------------------------------


@main.command("sweep")
def sweep_command() -> None:
    """Re-enqueue interactions left pending longer than SWEEP_AFTER_SECONDS."""
    from jobs.sync import sweep

    click.echo(f"re-enqueued {sweep()} interaction(s)")


failed_group = AppGroup("failed", help="Interactions whose CRM sync failed.")
main.add_command(failed_group)


@failed_group.command("list")
@click.option("--tenant")
def failed_list(tenant: str | None) -> None:
    """Show failed interactions with their reason."""
    with db.transaction() as s:
        query = select(Interaction).where(Interaction.sync_state == "failed").order_by(Interaction.id)
        if tenant:
            query = query.where(Interaction.tenant_id == tenants.get_tenant(s, tenant).id)
        rows = list(s.scalars(query))
        for r in rows:
            click.echo(
                f"{r.id}\ttenant {r.tenant_id}\t{r.channel}\t{r.status}\t{r.attempts} attempts\t"
                f"{(r.last_error or '').splitlines()[0] if r.last_error else ''}"
            )
    click.echo(f"{len(rows)} failed", err=True)


@failed_group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--tenant")
@click.option("--all", "retry_all", is_flag=True, help="Retry every failed interaction.")
def failed_retry(ids: tuple[int, ...], tenant: str | None, retry_all: bool) -> None:
    """Put failed interactions back in the queue."""
    from app.core.queue import enqueue_sync

    if not ids and not retry_all and not tenant:
        _fail("name interaction ids, --tenant, or --all")
    tenant_id = None
    if tenant:
        with db.transaction() as s:
            tenant_id = tenants.get_tenant(s, tenant).id
    rows = ledger.reset_failed(tenant_id, list(ids) or None)
    outcomes = [enqueue_sync(_settings(), iid, version) for iid, version in rows]
    queued = outcomes.count("queued")
    click.echo(f"retrying {len(rows)} interaction(s); {queued} enqueued (the sweeper picks up the rest)")


# --- demo ----------------------------------------------------------------------------------------------


@main.command("simulate")
@click.option("--url", default=None, help="Base URL of the running service (default PUBLIC_BASE_URL).")
@click.option("--tenant", default="demo", show_default=True)
@click.option("--seed", default=None, type=int, help="Random seed for a repeatable mix.")
def simulate_command(url: str | None, tenant: str, seed: int | None) -> None:
    """Send a realistic, signed mix of calls and texts to a running service."""
    from app.cli import simulate
    from app.cli.devrunner import running_url
    from app.core.models import LocalContact

    base = url or _settings().public_base_url or running_url() or "http://127.0.0.1:8000"
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
        _fail(f"{tenant} needs a Twilio account, a number and a user with a phone to simulate")
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
