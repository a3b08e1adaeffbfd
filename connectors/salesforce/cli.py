"""Salesforce in the `switchboard` command: `switchboard salesforce ...` and `tenant add --crm salesforce`.

The CLI finds this module through the registry (PROVIDER.cli): `group` is mounted as `switchboard salesforce`,
TENANT_OPTIONS are added to `tenant add`, and configure_tenant() stores what they gave.
"""

from __future__ import annotations

import re

import click
from flask.cli import AppGroup

from app.core.models import Tenant
from connectors.clitools import fail, map_owners, refuse, save_setting, secret_callback, tenant_on

MANUAL_STEPS = """\
Salesforce refused to create {fields} through the Tooling API (the connected user needs "Customize
Application"). Create them by hand, then run `switchboard salesforce setup {tenant}` again:
  1. Setup > Object Manager > Activity (for Task), Contact, Lead (and Email Message, where the org has
     Enhanced Email) > Fields & Relationships > New.
  2. Switchboard_Id__c: Text(255), "Unique" (case insensitive) and "External ID" ticked.
  3. Switchboard_SMS_Opt_Out__c (Contact and Lead): Checkbox, default unchecked.
  4. Field-Level Security: visible and editable for the integration user's profile or permission set.
Until Switchboard_Id__c exists, Switchboard looks Tasks up by CallObject (emails by MessageIdentifier)
before creating them."""
# An org id: key prefix 00D, 15 characters (as Setup > Company Information shows it) or 18 (case-safe).
ORG_ID = re.compile(r"00D[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?")


def _adding_a_salesforce_tenant(ctx: click.Context) -> bool:
    return ctx.params.get("crm") == "salesforce"


TENANT_OPTIONS = [
    click.Option(
        ["--salesforce-token"],
        envvar="SALESFORCE_TOKEN",
        show_envvar=True,
        callback=secret_callback(required=False, prompt_if=_adding_a_salesforce_tenant),
        help="Salesforce access token (--crm salesforce), e.g. from the JWT bearer flow or `sf org display`; "
        "never refreshed. '-' reads it from stdin. Or connect the org with GET /install/salesforce.",
    ),
    click.Option(
        ["--salesforce-instance-url"], help="The org's instance URL, https://MYDOMAIN.my.salesforce.com."
    ),
    click.Option(
        ["--salesforce-org-id"], help="The org id (00D...): routes Outbound Messages to this tenant."
    ),
]


def configure_tenant(
    tenant: Tenant,
    salesforce_token: str | None = None,
    salesforce_instance_url: str | None = None,
    salesforce_org_id: str | None = None,
) -> None:
    """Connect a new tenant to its org with an access token (stored encrypted)."""
    from connectors.salesforce.auth import session_secrets
    from connectors.salesforce.webhooks import org_id18

    if not salesforce_token or not salesforce_instance_url or not salesforce_org_id:
        fail(
            "--crm salesforce needs --salesforce-token, --salesforce-instance-url and --salesforce-org-id "
            "(or connect the org: GET /install/salesforce)"
        )
    if not ORG_ID.fullmatch(salesforce_org_id):
        refuse(f"--salesforce-org-id {salesforce_org_id!r} is not an org id (00D..., 15 or 18 characters)")
    if not re.fullmatch(r"https?://[^/\s]+/?", salesforce_instance_url):
        refuse(
            f"--salesforce-instance-url {salesforce_instance_url!r} is not an instance URL "
            "(https://MYDOMAIN.my.salesforce.com)"
        )
    tenant.crm_secrets = session_secrets(salesforce_token, salesforce_instance_url)
    tenant.crm_account_id = org_id18(salesforce_org_id)


group = AppGroup("salesforce", help="Salesforce orgs.")


@group.command("setup")
@click.argument("tenant")
def salesforce_setup(tenant: str) -> None:
    """Create Switchboard_Id__c (External ID) and the SMS opt-out field in the org, or print manual steps."""
    from connectors.base import CrmError
    from connectors.salesforce.jobs import setup_org

    try:
        result = setup_org(tenant_on(tenant, "salesforce").id)
    except CrmError as exc:
        fail(str(exc))
    if result["created"]:
        click.echo(f"created {', '.join(result['created'])}")
    if result["refused"]:
        click.echo(MANUAL_STEPS.format(fields=", ".join(result["refused"]), tenant=tenant), err=True)
        raise SystemExit(1)
    if not result["created"]:
        click.echo("Switchboard_Id__c and the opt-out field are already there")


@group.command("sync-owners")
@click.argument("tenant")
def salesforce_sync_owners(tenant: str) -> None:
    """Map the tenant's users to Salesforce users by email (sets their CRM owner id, 005...)."""
    from connectors.base import CrmError
    from connectors.salesforce.connector import SalesforceConnector

    row = tenant_on(tenant, "salesforce")
    try:
        owners = SalesforceConnector(row).owners()
    except CrmError as exc:
        fail(str(exc))
    map_owners(
        row,
        owners,
        missing="no active Salesforce user with this email",
        found="user",
        summary="Salesforce users",
    )


@group.command("set")
@click.argument("tenant")
@click.argument("key")
@click.argument("value")
def salesforce_set(tenant: str, key: str, value: str) -> None:
    """Change a Salesforce setting of a tenant (the same as `switchboard tenant set`); `switchboard tenant
    get TENANT` lists them."""
    from connectors.salesforce.settings import SETTINGS

    row = tenant_on(tenant, "salesforce")
    if key not in SETTINGS:
        refuse(f"{key} is not a Salesforce setting; one of {', '.join(sorted(SETTINGS))}")
    try:
        parsed = SETTINGS[key].parse(key, value)
    except ValueError as exc:
        refuse(str(exc))
    save_setting(row, key, parsed)


# The Open CTI call center definition for Lightning (reqSalesforceCompatibilityMode: the default, Classic,
# cannot place calls from Lightning). https://developer.salesforce.com/docs/atlas.en-us.api_cti.meta/
# api_cti/sforce_api_cti_callcenter_def_file_intro.htm
CALL_CENTER_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<callCenter>
  <section sortOrder="0" name="reqGeneralInfo" label="General Information">
    <item sortOrder="0" name="reqInternalName" label="Internal Name">{internal_name}</item>
    <item sortOrder="1" name="reqDisplayName" label="Display Name">{display_name}</item>
    <item sortOrder="2" name="reqAdapterUrl" label="CTI Adapter URL">{url}</item>
    <item sortOrder="3" name="reqUseApi" label="Use CTI API">true</item>
    <item sortOrder="4" name="reqSoftphoneHeight" label="Softphone Height">{height}</item>
    <item sortOrder="5" name="reqSoftphoneWidth" label="Softphone Width">{width}</item>
    <item sortOrder="6" name="reqSalesforceCompatibilityMode" label="Compatibility Mode">Lightning</item>
  </section>
</callCenter>
"""

CALL_CENTER_STEPS = """\
Install the Switchboard dialer as an Open CTI softphone (Lightning):
  1. Save the XML above to a file, e.g. switchboard-call-center.xml.
  2. Setup > Call Centers > Import: choose the file, Import.
  3. On the new call center: Manage Call Center Users > Add More Users: add each rep.
  4. Setup > App Manager > your Lightning app > Edit > Utility Items > Add Utility Item >
     Open CTI Softphone; save.
  5. Reps open the Phone utility and sign in with their work email (a one-time link).
Open CTI is in maintenance mode until its retirement on 28 Feb 2028; see docs/dialer.md."""


@group.command("call-center")
@click.option("--url", help="The dialer's URL (default: PUBLIC_BASE_URL/dialer?crm=salesforce).")
@click.option("--name", default="Switchboard", show_default=True, help="The call center's display name.")
@click.option(
    "--internal-name",
    default="SwitchboardDialer",
    show_default=True,
    help="Up to 40 letters and digits, starting with a letter.",
)
@click.option("--width", default=400, show_default=True, type=click.IntRange(200, 2000))
@click.option("--height", default=600, show_default=True, type=click.IntRange(200, 2000))
def salesforce_call_center(url: str | None, name: str, internal_name: str, width: int, height: int) -> None:
    """Print the call center definition (XML, on stdout) and how to install it (on stderr)."""
    import re
    from xml.sax.saxutils import escape

    from app.core import bootstrap

    if url is None:
        base = bootstrap.current().public_base_url
        if not base:
            refuse("give --url or set PUBLIC_BASE_URL (the dialer is PUBLIC_BASE_URL/dialer)")
        url = f"{base}/dialer?crm=salesforce"
    if not url.startswith("https://"):
        refuse(f"Lightning loads the softphone over https only; {url!r} is not https")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,39}", internal_name):
        refuse("--internal-name takes up to 40 letters and digits, starting with a letter")
    click.echo(
        CALL_CENTER_XML.format(
            internal_name=internal_name,
            display_name=escape(name),
            url=escape(url),
            width=width,
            height=height,
        ),
        nl=False,
    )
    click.echo(CALL_CENTER_STEPS, err=True)
