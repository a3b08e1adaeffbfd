"""`switchboard automations`: the automation steps the rules planned (list, show, cancel), one line each.

    switchboard automations list acme --state scheduled --rule missed-call-text
    switchboard automations show 42
    switchboard automations cancel 42          # a scheduled step only; reason "canceled by <you>"

A line reads: id, state, rule, step (1-based, as the dry run numbers them), action, when it is due, what
triggered it and for whom, and why it ended as it did. The queries are app.automation.runs, shared with
the read API (GET /api/v1/automations).
"""

from __future__ import annotations

import getpass
import json

import click
from flask.cli import AppGroup

from app.automation import runs
from app.core import db, tenants
from app.core.tenants import ProvisioningError

group = AppGroup("automations", help="Automation steps: list, show, cancel.")


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "the CLI"


@group.command("list")
@click.argument("tenant")
@click.option("--state", type=click.Choice(runs.STATES), help="Only steps in this state.")
@click.option("--rule", help="Only steps of this rule.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
def list_steps(tenant: str, state: str | None, rule: str | None, limit: int) -> None:
    """The tenant's steps, newest first."""
    try:
        with db.transaction() as s:
            tenant_id = tenants.get_tenant(s, tenant).id
    except ProvisioningError as exc:
        raise click.ClickException(str(exc)) from None
    steps, _ = runs.list_steps(tenant_id, state=state, rule=rule, limit=limit)
    for step in steps:
        click.echo(runs.describe(step))
    if not steps:
        click.echo("no automation steps")


@group.command("show")
@click.argument("run_id", type=int)
def show_step(run_id: int) -> None:
    """One step, with what it did (text sid, task id ...)."""
    try:
        step = runs.show(run_id)
    except runs.StepError as exc:
        raise click.ClickException(str(exc)) from None
    result = f" result {json.dumps(step['result'], sort_keys=True)}" if step["result"] else ""
    click.echo(f"{runs.describe(step)}{result}")


@group.command("cancel")
@click.argument("run_id", type=int)
@click.option("--by", "who", default=None, help="Who cancels (for the reason); default: your login name.")
def cancel_step(run_id: int, who: str | None) -> None:
    """Cancel a scheduled step (a running or finished one cannot be)."""
    try:
        step = runs.cancel(run_id, who or _who())
    except runs.StepError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(runs.describe(step))
