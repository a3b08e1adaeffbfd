"""HubSpot's part of the `switchboard` command: `switchboard hubspot ...` and `tenant add --crm hubspot`.

The CLI finds this module through the registry (PROVIDER.cli): `group` is mounted as `switchboard hubspot`,
TENANT_OPTIONS are added to `tenant add`, and configure_tenant() stores what they gave.
"""

from __future__ import annotations

import click
from flask.cli import AppGroup

from app.core.models import Tenant
from connectors.clitools import fail, map_owners, secret_callback, tenant_on


def _adding_a_hubspot_tenant(ctx: click.Context) -> bool:
    return ctx.params.get("crm") == "hubspot"


TENANT_OPTIONS = [
    click.Option(
        ["--hubspot-token"],
        envvar="HUBSPOT_TOKEN",
        show_envvar=True,
        callback=secret_callback(required=False, prompt_if=_adding_a_hubspot_tenant),
        help="HubSpot private-app access token (--crm hubspot). '-' reads it from stdin; prompted for "
        "(hidden) on a terminal.",
    ),
    click.Option(
        ["--hubspot-portal-id"], help="HubSpot portal (hub) id: routes HubSpot webhooks to this tenant."
    ),
]


def configure_tenant(
    tenant: Tenant, hubspot_token: str | None = None, hubspot_portal_id: str | None = None
) -> None:
    """Connect a new tenant to its portal with a private-app token (stored encrypted)."""
    from connectors.hubspot.auth import private_app_secrets

    if not hubspot_token:
        fail(
            "--crm hubspot needs --hubspot-token (or HUBSPOT_TOKEN; or install the HubSpot app: "
            "GET /install/hubspot)"
        )
    tenant.crm_secrets = private_app_secrets(hubspot_token)
    tenant.crm_account_id = hubspot_portal_id


group = AppGroup("hubspot", help="HubSpot portals.")


@group.command("setup")
@click.argument("tenant")
def hubspot_setup(tenant: str) -> None:
    """Create the unique switchboard_id property Switchboard writes with (idempotent)."""
    from connectors.base import CrmError
    from connectors.hubspot.jobs import setup_portal

    try:
        made = setup_portal(tenant_on(tenant, "hubspot").id)
    except CrmError as exc:
        fail(str(exc))
    click.echo(
        f"switchboard_id property ready ({'created on ' + ', '.join(made) if made else 'already there'})"
    )


@group.command("sync-owners")
@click.argument("tenant")
def hubspot_sync_owners(tenant: str) -> None:
    """Map the tenant's users to HubSpot owners by email (sets their CRM owner id)."""
    from connectors.base import CrmError
    from connectors.hubspot.connector import HubSpotConnector

    row = tenant_on(tenant, "hubspot")
    try:
        owners = HubSpotConnector(row).owners()
    except CrmError as exc:
        fail(str(exc))
    map_owners(
        row, owners, missing="no HubSpot owner with this email", found="owner", summary="HubSpot owners"
    )
