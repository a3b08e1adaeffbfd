"""`switchboard user`: reps and CSMs."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from app.cli.common import provisioning
from app.core import tenants

group = AppGroup("user", help="Reps and CSMs.")


@group.command("add")
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
    with provisioning() as s:
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


COMMANDS = [group]
