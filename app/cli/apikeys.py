"""`switchboard apikey`: read-API keys."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from app.cli.common import provisioning
from app.core import tenants

group = AppGroup("apikey", help="Read-API keys.")


@group.command("create")
@click.argument("tenant")
def apikey_create(tenant: str) -> None:
    """Create an API key; it is printed once, alone on the last line."""
    with provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        key = tenants.create_api_key(s, row)
        name = row.name
    click.echo(f"API key for {name} (shown once; store it now):", err=True)
    click.echo(key)


COMMANDS = [group]
