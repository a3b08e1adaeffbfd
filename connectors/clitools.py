"""Click helpers that a CRM's CLI plug-in (CrmProvider.cli) shares with the `switchboard` command: one-line
errors, the provisioning transaction, and secrets read from the environment, a hidden prompt or stdin.

They live below both (connectors -> core), so a provider's CLI module never imports app.cli, which mounts it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import db, tenants
from app.core.models import Tenant
from app.core.tenants import ProvisioningError
from connectors import Setting


def fail(message: str) -> NoReturn:
    """Stop the command with a one-line error (exit 1, no traceback)."""
    raise click.ClickException(message)


class Refused(click.ClickException):
    """A bad argument (an unknown setting, a value it does not take): one line on stderr, exit 2."""

    exit_code = 2


def refuse(message: str) -> NoReturn:
    """Stop the command with a one-line usage error (exit 2, no traceback)."""
    raise Refused(message)


@contextmanager
def provisioning() -> Iterator[Session]:
    """A transaction whose ProvisioningError becomes a clean CLI error (exit 1), with nothing written."""
    try:
        with db.transaction() as s:
            yield s
    except ProvisioningError as exc:
        raise click.ClickException(str(exc)) from None


def stdin_is_terminal() -> bool:
    """Whether a person could answer a prompt (tests patch this)."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def secret_callback(
    required: bool = True, prompt_if: Callable[[click.Context], bool] | None = None
) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """An option callback for a secret, so it need not appear in argv or shell history.

    The value comes from the flag, else its environment variable (click's `envvar=`); `-` means read one
    line from stdin. When neither is given and the secret is `required` (or `prompt_if(ctx)` says it is
    wanted, e.g. "only with --crm hubspot"), it is asked for with a hidden prompt if stdin is a terminal;
    otherwise a required secret is a usage error naming the flag and its variable, and an optional one is
    None (for the command to report).
    """

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value == "-":
            line = sys.stdin.readline().strip()
            if not line:
                raise click.BadParameter("'-' reads it from stdin, but stdin had no line", ctx, param)
            return line
        if value:
            return value
        wanted = required or (prompt_if is not None and prompt_if(ctx))
        if wanted and stdin_is_terminal():
            label = (param.name or "secret").replace("_", " ")
            return str(click.prompt(label, hide_input=True))
        if not required:
            return None
        envvar = getattr(param, "envvar", None)
        hint = (
            "Set the variable, or pass - to read it from stdin."
            if envvar
            else "Pass - to read it from stdin."
        )
        raise click.MissingParameter(ctx=ctx, param=param, message=hint)

    return callback


def tenant_on(ref: str, crm: str) -> Any:
    """The tenant named `ref` (name or id), which must use `crm` (a clean CLI error otherwise)."""
    with provisioning() as s:
        tenant = tenants.get_tenant(s, ref)
    if tenant.crm != crm:
        fail(f"{tenant.name} uses {tenant.crm}, not {crm}")
    return tenant


def crm_setting(tenant: Any, key: str) -> Setting | None:
    """The Setting `key` of the tenant's CRM (None if no CRM declares it); a setting of another CRM is
    refused, naming that CRM."""
    import connectors

    try:
        own = connectors.provider(tenant.crm).settings
    except LookupError:  # the tenant's CRM is no longer registered: only the core's settings
        own = {}
    if key in own:
        return own[key]
    for name in connectors.names():
        try:
            other = connectors.provider(name)
        except Exception:  # a broken plug-in: `switchboard NAME` reports it
            continue
        if key in other.settings:
            refuse(f"{key} is a {other.label} setting; {tenant.name} uses {tenant.crm}")
    return None


def save_setting(tenant: Any, key: str, value: Any) -> None:
    """Store one setting of the tenant and say what it is now."""
    with provisioning() as s:
        row = s.get(Tenant, tenant.id)
        row.settings = {**(row.settings or {}), key: value}
    click.echo(f"{key} = {json.dumps(value)}")


def map_owners(tenant: Any, owners: list[dict[str, Any]], *, missing: str, found: str, summary: str) -> None:
    """Set each user's CRM owner id from the CRM's owners/users matched by email, printing a line per user
    (`missing` when there is none, `found` + the id) and `summary` with the count on stderr."""
    from app.core.models import User

    by_email = {str(o["email"]).lower(): o for o in owners if o.get("email")}
    matched = 0
    with db.transaction() as s:
        for user in s.scalars(select(User).where(User.tenant_id == tenant.id).order_by(User.id)):
            owner = by_email.get(user.email.lower())
            if owner is None:
                click.echo(f"{user.email}\t{missing}")
                continue
            user.crm_owner_id = owner["id"]
            matched += 1
            click.echo(f"{user.email}\t{found} {owner['id']}")
    click.echo(f"{matched} user(s) mapped to {summary}", err=True)
