"""`switchboard sweep` and `switchboard failed`: the ledger of interactions and their CRM sync."""

from __future__ import annotations

import click
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select

from app.cli.common import fail, settings
from app.core import db, ledger, tenants
from app.core.models import Interaction


@click.command("sweep")
@with_appcontext
def sweep_command() -> None:
    """Re-enqueue interactions left pending longer than SWEEP_AFTER_SECONDS."""
    from jobs.sync import sweep

    click.echo(f"re-enqueued {sweep()} interaction(s)")


group = AppGroup("failed", help="Interactions whose CRM sync failed.")


@group.command("list")
@click.option("--tenant")
def failed_list(tenant: str | None) -> None:
    """Show failed interactions with their reason."""
    with db.transaction() as s:
        query = select(Interaction).where(Interaction.sync_state == "failed").order_by(Interaction.id)
        if tenant:
            query = query.where(Interaction.tenant_id == tenants.get_tenant(s, tenant).id)
        rows = list(s.scalars(query))
        for r in rows:
            click.echo(
                f"{r.id}\ttenant {r.tenant_id}\t{r.channel}\t{r.status}\t{r.attempts} attempts\t"
                f"{(r.last_error or '').splitlines()[0] if r.last_error else ''}"
            )
    click.echo(f"{len(rows)} failed", err=True)


@group.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--tenant")
@click.option("--all", "retry_all", is_flag=True, help="Retry every failed interaction.")
def failed_retry(ids: tuple[int, ...], tenant: str | None, retry_all: bool) -> None:
    """Put failed interactions back in the queue."""
    from app.core.queue import enqueue_sync

    if not ids and not retry_all and not tenant:
        fail("name interaction ids, --tenant, or --all")
    tenant_id = None
    if tenant:
        with db.transaction() as s:
            tenant_id = tenants.get_tenant(s, tenant).id
    rows = ledger.reset_failed(tenant_id, list(ids) or None)
    outcomes = [enqueue_sync(settings(), iid, version) for iid, version in rows]
    queued = outcomes.count("queued")
    click.echo(f"retrying {len(rows)} interaction(s); {queued} enqueued (the sweeper picks up the rest)")


COMMANDS = [sweep_command, group]
