"""A CRM that lives outside connectors/: registered at runtime by the tests, never by a file edit.

It is its own CLI module: a `switchboard stubcrm` group with one command, one `tenant add` option and the
configure_tenant() that stores it; it declares one tenant setting (stub_level).
"""

from __future__ import annotations

import click
from flask.cli import AppGroup

from connectors import CrmProvider, Setting

PROVIDER = CrmProvider(
    name="stubcrm",
    label="Stub CRM",
    connector="connectors.local:LocalConnector",
    cli="tests.cli.stub_crm",
    settings={
        "stub_level": Setting(3, "how stubby", check=lambda v: 1 <= v <= 5, rule="a whole number from 1 to 5")
    },
)

TENANT_OPTIONS = [click.Option(["--stub-workspace"], help="Stub CRM workspace id.")]


def configure_tenant(tenant, stub_workspace=None):  # type: ignore[no-untyped-def]
    tenant.crm_account_id = stub_workspace


group = AppGroup("stubcrm", help="Stub CRM workspaces.")


@group.command("ping", with_appcontext=False)
def ping() -> None:
    """Say that the stub CRM's commands are mounted."""
    click.echo("stubcrm pong")
