"""`switchboard db`: the database schema."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from app.cli.common import settings

group = AppGroup("db", help="Database schema.")


@group.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations up to the latest revision."""
    from app.cli.migrate import upgrade

    upgrade(settings().database_url)
    click.echo("database is up to date")


COMMANDS = [group]
