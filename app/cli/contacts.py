"""`switchboard contact`: contacts in the built-in CRM."""

from __future__ import annotations

import click
from flask.cli import AppGroup
from sqlalchemy import select

from app.cli.common import fail
from app.core import db, tenants
from app.core.tenants import ProvisioningError

group = AppGroup("contact", help="Contacts in the built-in CRM.")


@group.command("add")
@click.argument("tenant")
@click.option("--name", required=True)
@click.option("--phone", "phones", multiple=True, required=True, help="Any format; repeatable.")
@click.option("--email")
@click.option("--owner", help="Email of the owning user.")
def contact_add(
    tenant: str, name: str, phones: tuple[str, ...], email: str | None, owner: str | None
) -> None:
    """Add a contact to a tenant's built-in CRM."""
    from app.core.models import User
    from connectors.local import LocalConnector

    try:
        with db.transaction() as s:
            row = tenants.get_tenant(s, tenant)
            if row.crm != "local":
                fail(f"{row.name} uses {row.crm}; add contacts there")
            owner_id = None
            if owner:
                user = s.scalar(select(User).where(User.tenant_id == row.id, User.email == owner.lower()))
                if user is None:
                    fail(f"no user {owner} in {row.name}")
                owner_id = user.crm_owner_id
        contact_id = LocalConnector(row).add_contact(name, list(phones), email, owner_id)
    except (ProvisioningError, ValueError) as exc:
        fail(str(exc))
    click.echo(f"contact {contact_id} added")


COMMANDS = [group]
