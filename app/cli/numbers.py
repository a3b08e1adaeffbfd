"""`switchboard number`: a tenant's Twilio phone numbers."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from app.cli.common import provisioning
from app.core import tenants

group = AppGroup("number", help="A tenant's Twilio phone numbers.")


@group.command("add")
@click.argument("tenant")
@click.argument("number")
@click.option("--label")
def number_add(tenant: str, number: str, label: str | None) -> None:
    """Register a Twilio number for a tenant."""
    with provisioning() as s:
        row = tenants.add_number(s, tenants.get_tenant(s, tenant), number, label)
        click.echo(f"number {row.e164} added")


COMMANDS = [group]
