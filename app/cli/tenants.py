"""`switchboard tenant`: tenants, one Twilio account and one CRM each.

`tenant add --crm` offers the CRMs of the registry (`connectors.names()`, read when the command parses),
and takes each CRM's own options (its CLI module's `TENANT_OPTIONS`), handed to that CRM's
`configure_tenant(tenant, **options)` in the transaction that creates the tenant.
"""

from __future__ import annotations

import json
from functools import cache
from types import ModuleType
from typing import Any

import click
from click.core import ParameterSource
from flask.cli import AppGroup
from sqlalchemy import select

import connectors
from app.cli.common import CrmChoice, fail, provider_cli, provider_clis, provisioning, secret_option
from app.core import db, tenants
from app.core.models import Tenant
from app.core.tenants import ProvisioningError
from connectors import Setting
from connectors.clitools import crm_setting, refuse, save_setting

group = AppGroup("tenant", help="Tenants: one Twilio account and one CRM each.")


@cache
def _tenant_options(module: ModuleType) -> tuple[click.Parameter, ...]:
    """A CRM's TENANT_OPTIONS as click parameters: click.Option objects, or click.option(...) decorators.

    Cached per module, so one invocation parses and processes the very same parameter objects.
    """
    params: list[click.Parameter] = []
    for item in getattr(module, "TENANT_OPTIONS", ()):
        if isinstance(item, click.Parameter):
            params.append(item)
        elif callable(item):

            def holder() -> None: ...

            item(holder)
            params.extend(reversed(getattr(holder, "__click_params__", [])))
        else:
            raise TypeError(f"{module.__name__}.TENANT_OPTIONS holds {item!r}, not a click option")
    return tuple(params)


def crm_tenant_options() -> dict[str, tuple[click.Parameter, ...]]:
    """Each registered CRM's extra `tenant add` options, by CRM name."""
    return {name: _tenant_options(module) for name, module in provider_clis()}


class TenantAddCommand(click.Command):
    """`tenant add`, whose options grow with the registry: each CRM's TENANT_OPTIONS come after its own."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = list(self.params)
        names = {p.name for p in params}
        flags = {opt for p in params for opt in p.opts}
        for crm, extra in crm_tenant_options().items():
            for param in extra:
                if param.name in names or flags.intersection(param.opts):
                    click.echo(f"warning: CRM {crm!r}: option {param.opts[0]} is taken; ignored", err=True)
                    continue
                params.append(param)
                names.add(param.name)
                flags.update(param.opts)
        help_option = self.get_help_option(ctx)
        return [*params, help_option] if help_option is not None else params


@group.command("add", cls=TenantAddCommand)
@click.argument("name")
@click.option("--twilio-account-sid", required=True)
@secret_option(
    "--twilio-auth-token", envvar="TWILIO_AUTH_TOKEN", help="Twilio auth token (stored encrypted)."
)
@click.option("--crm", default="local", show_default=True, type=CrmChoice(), help="A registered CRM.")
@click.option("--region", default="US", show_default=True, help="Default region for national phone formats.")
@click.option("--number", "numbers", multiple=True, help="A Twilio number of this tenant (repeatable).")
def tenant_add(
    name: str,
    twilio_account_sid: str,
    twilio_auth_token: str,
    crm: str,
    region: str,
    numbers: tuple[str, ...],
    **crm_options: Any,
) -> None:
    """Create a tenant (secrets are stored encrypted)."""
    ctx = click.get_current_context()
    by_crm = crm_tenant_options()
    for other, params in by_crm.items():
        for param in params:
            given = param.name and ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE
            if other != crm and given:
                fail(f"{param.opts[0]} is for --crm {other}, not --crm {crm}")
    try:
        module = provider_cli(crm)
    except Exception as exc:
        fail(f"CRM {crm!r} could not be loaded: {exc}")
    configure = getattr(module, "configure_tenant", None)
    options = {p.name: crm_options.get(p.name) for p in by_crm.get(crm, ()) if p.name}
    with provisioning() as s:
        tenant = tenants.add_tenant(
            s, name, account_sid=twilio_account_sid, auth_token=twilio_auth_token, crm=crm, region=region
        )
        if configure is not None:
            configure(tenant, **options)
        for number in numbers:
            tenants.add_number(s, tenant, number)
        click.echo(f"tenant {tenant.name} created (id {tenant.id}, crm {tenant.crm})")


@group.command("set-twilio")
@click.argument("tenant")
@click.option("--account-sid", required=True)
@secret_option("--auth-token", envvar="TWILIO_AUTH_TOKEN", help="Twilio auth token (stored encrypted).")
def tenant_set_twilio(tenant: str, account_sid: str, auth_token: str) -> None:
    """Attach (or replace) the tenant's Twilio account, e.g. after installing from HubSpot."""
    with provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        taken = s.scalar(select(Tenant).where(Tenant.twilio_account_sid == account_sid, Tenant.id != row.id))
        if taken is not None:
            raise ProvisioningError(f"Twilio account {account_sid} already belongs to a tenant")
        row.twilio_account_sid, row.twilio_auth_token = account_sid, auth_token
    click.echo(f"Twilio account {account_sid} attached to {tenant}")


@group.command("list")
def tenant_list() -> None:
    """List tenants."""
    with db.transaction() as s:
        for t in s.scalars(select(Tenant).order_by(Tenant.id)):
            numbers = ", ".join(n.e164 for n in t.numbers) or "-"
            click.echo(f"{t.id}\t{t.name}\t{t.crm}\t{t.twilio_account_sid}\t{numbers}")


# The core's settings that take only some values of their type; a CRM's settings bring their own checks.
CORE_CHOICES: dict[str, tuple[str, ...]] = {
    "unknown_contacts": ("create", "skip"),
    "dialer_recording": ("always", "never", "consent"),
}


def _setting(tenant: Tenant, key: str) -> Setting:
    """The core's setting `key`, or the one the tenant's CRM declares (CrmProvider.settings)."""
    if key in tenants.DEFAULT_SETTINGS:
        return Setting(tenants.DEFAULT_SETTINGS[key], "", choices=CORE_CHOICES.get(key, ()))
    found = crm_setting(tenant, key)
    if found is None:
        known = sorted(connectors.tenant_settings(tenant))
        refuse(f"{key} is not a setting of {tenant.name}; one of {', '.join(known)}")
    return found


@group.command("set")
@click.argument("tenant")
@click.argument("key")
@click.argument("value")
def tenant_set(tenant: str, key: str, value: str) -> None:
    """Change a tenant setting, the core's or its CRM's (value is JSON: 30, true, "text").

    `switchboard tenant get TENANT` lists them with their current values."""
    with provisioning() as s:
        row = tenants.get_tenant(s, tenant)
    try:
        parsed = _setting(row, key).parse(key, value)
    except ValueError as exc:
        refuse(str(exc))
    save_setting(row, key, parsed)


@group.command("get")
@click.argument("tenant")
@click.argument("key", required=False)
def tenant_get(tenant: str, key: str | None) -> None:
    """Show the tenant's settings (or one), defaults filled in, with what each of its CRM's settings does."""
    with provisioning() as s:
        row = tenants.get_tenant(s, tenant)
    values = connectors.tenant_settings(row)
    if key is not None:
        _setting(row, key)
        click.echo(f"{key} = {json.dumps(values[key])}")
        return
    try:
        declared = connectors.provider(row.crm).settings
    except LookupError:
        declared = {}
    for name, current in sorted(values.items()):
        note = f"\t# {declared[name].help}" if name in declared else ""
        click.echo(f"{name} = {json.dumps(current)}{note}")


COMMANDS = [group]
