"""`switchboard user`: reps and CSMs."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from app.cli.common import provisioning
from app.core import tenants
from connectors.clitools import refuse

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


@group.command("login-link")
@click.argument("email")
@click.option("--tenant", required=True, help="The tenant the user belongs to (name or id).")
@click.option(
    "--crm",
    type=click.Choice(["hubspot", "salesforce", "none"]),
    help="Where the link opens the dialer (default: the tenant's CRM).",
)
def user_login_link(email: str, tenant: str, crm: str | None) -> None:
    """Print a one-time dialer sign-in link for a user (single use, 15 minutes): for admins, tests, demos."""
    from redis.exceptions import RedisError
    from sqlalchemy import select

    from app.cli.common import settings
    from app.core.models import User
    from app.web import logins

    with provisioning() as s:
        row = tenants.get_tenant(s, tenant)
        user = s.scalar(select(User).where(User.tenant_id == row.id, User.email == email.strip().lower()))
        if user is None:
            refuse(f"{tenant} has no user {email}")
        ids = (row.id, user.id, crm or logins.crm_of(row))
    try:
        link = logins.create_link(settings(), *ids)
    except RedisError as exc:
        refuse(f"Redis is unavailable ({type(exc).__name__}); no link was made")
    if not link.startswith("http"):
        click.echo("warning: PUBLIC_BASE_URL is not set; prefix the link with the service's URL", err=True)
    click.echo(link)


# `switchboard users login-link` (the dialer contract's spelling) is the same command, unlisted.
plural = AppGroup("users", help="Reps and CSMs (an alias of `user`).", hidden=True)
plural.add_command(user_login_link)

COMMANDS = [group, plural]
