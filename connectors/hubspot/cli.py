"""HubSpot's part of the `switchboard` command: `switchboard hubspot ...` and `tenant add --crm hubspot`.

The CLI finds this module through the registry (PROVIDER.cli): `group` is mounted as `switchboard hubspot`,
TENANT_OPTIONS are added to `tenant add`, and configure_tenant() stores what they gave.
"""

from __future__ import annotations

import click
from flask.cli import AppGroup

from app.core.models import Tenant
from connectors.clitools import fail, map_owners, refuse, secret_callback, tenant_on


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


@group.command("register-calling")
@click.option(
    "--app-id",
    envvar="HUBSPOT_APP_ID",
    show_envvar=True,
    required=True,
    type=int,
    help="The id of your HubSpot public app (developer account > Apps).",
)
@click.option(
    "--developer-api-key",
    envvar="HUBSPOT_DEVELOPER_API_KEY",
    show_envvar=True,
    callback=secret_callback(required=True),
    help="Required. The developer account's API key (hapikey). '-' reads it from stdin; prompted for "
    "(hidden) on a terminal.",
)
@click.option("--url", help="The dialer's URL (default: PUBLIC_BASE_URL/dialer?crm=hubspot).")
@click.option("--name", default="Switchboard", show_default=True, help="The name reps see in HubSpot.")
@click.option("--width", default=400, show_default=True, type=click.IntRange(200, 2000))
@click.option("--height", default=600, show_default=True, type=click.IntRange(200, 2000))
@click.option(
    "--inbound/--no-inbound",
    default=True,
    show_default=True,
    help="Tell HubSpot the dialer takes inbound calls (it pops them).",
)
@click.option(
    "--ready/--not-ready",
    default=True,
    show_default=True,
    help="--not-ready limits the calling option to developer test accounts while you try it.",
)
def hubspot_register_calling(
    app_id: int,
    developer_api_key: str,
    url: str | None,
    name: str,
    width: int,
    height: int,
    inbound: bool,
    ready: bool,
) -> None:
    """Register the dialer as the app's calling extension (HubSpot's calling settings API; idempotent)."""
    from hubspot import HubSpot
    from hubspot.crm.extensions.calling import ApiException, SettingsPatchRequest, SettingsRequest
    from urllib3.exceptions import HTTPError

    from app.core import bootstrap

    settings = bootstrap.current()
    if url is None:
        if not settings.public_base_url:
            refuse("give --url or set PUBLIC_BASE_URL (the dialer is PUBLIC_BASE_URL/dialer)")
        url = f"{settings.public_base_url}/dialer?crm=hubspot"
    if not url.startswith("https://") and not url.startswith("http://127.0.0.1"):
        refuse(f"HubSpot loads the dialer over https; {url!r} is not an https URL")
    fields = {
        "name": name,
        "url": url,
        "width": width,
        "height": height,
        "is_ready": ready,
        "supports_inbound_calling": inbound,
        "supports_custom_objects": False,
        "uses_calling_window": False,  # the widget runs in HubSpot's iframe, not a separate window
        "uses_remote": False,
    }
    calling = HubSpot(api_key=developer_api_key, host=settings.hubspot_api_base).crm.extensions.calling
    try:
        try:
            calling.settings_api.get_by_id(app_id)
            exists = True
        except ApiException as exc:
            if exc.status != 404:
                raise
            exists = False
        if exists:
            calling.settings_api.update(app_id, SettingsPatchRequest(**fields))
        else:
            calling.settings_api.create(app_id, SettingsRequest(**fields))
    except ApiException as exc:
        if exc.status == 401:
            refuse("HubSpot refused the developer API key (401)")
        if exc.status == 404:
            refuse(f"HubSpot has no app {app_id} for this developer API key (404)")
        refuse(f"HubSpot answered HTTP {exc.status} to the calling settings request")
    except (OSError, HTTPError) as exc:
        refuse(f"HubSpot could not be reached: {type(exc).__name__}")
    click.echo(f"calling settings {'updated' if exists else 'registered'} for app {app_id}: {url}")
