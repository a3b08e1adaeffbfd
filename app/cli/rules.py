"""`switchboard rules`: automation rules (YAML): load, show, dry-run."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click
from flask.cli import AppGroup
from sqlalchemy import select

from app.cli.common import fail, provisioning
from app.core import tenants

group = AppGroup("rules", help="Automation rules (YAML): load, show, dry-run.")


@group.command("load")
@click.argument("tenant")
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--default", "use_default", is_flag=True, help="Load the shipped default rules.")
def rules_load(tenant: str, file: str | None, use_default: bool) -> None:
    """Validate a rules file and make it the tenant's next version."""
    from app.automation import rules
    from app.automation.store import store_rules

    if bool(file) == use_default:
        fail("give a FILE or --default")
    source = rules.default_source() if use_default else Path(file or "").read_text()
    with provisioning() as s:
        tenant_id = tenants.get_tenant(s, tenant).id
    try:
        version = store_rules(tenant_id, source)
    except rules.RulesError as exc:
        fail("rules not loaded:\n" + "\n".join(f"  {p}" for p in exc.problems))
    click.echo(f"rules version {version} loaded for {tenant} ({len(rules.load(source).rules)} rules)")


@group.command("show")
@click.argument("tenant")
def rules_show(tenant: str) -> None:
    """Print the tenant's rules in force, with their version."""
    from app.core.models import RuleSet

    with provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        current = s.scalar(
            select(RuleSet).where(RuleSet.tenant_id == row.id).order_by(RuleSet.version.desc())
        )
        if current is None:
            fail(f"{tenant} has no rules; load some with `switchboard rules load {tenant} --default`")
        click.echo(f"# version {current.version}, loaded {current.loaded_at:%Y-%m-%d %H:%M %Z}")
        click.echo(current.source.rstrip())


@group.command("test", with_appcontext=False)
@click.argument("rules_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("events", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--start", help="Virtual time of the first form event (ISO 8601 with offset); default now.")
def rules_test(rules_file: str, events: tuple[str, ...], start: str | None) -> None:
    """Dry-run rules over recorded webhooks (.form) or a timeline (.yaml): prints what would happen."""
    from app.automation import rules
    from app.cli import dryrun

    try:
        lines = dryrun.run(
            Path(rules_file).read_text(),
            [Path(e) for e in events],
            datetime.fromisoformat(start) if start else None,
        )
    except rules.RulesError as exc:
        fail("rules not valid:\n" + "\n".join(f"  {p}" for p in exc.problems))
    for line in lines:
        click.echo(line)


COMMANDS = [group]
