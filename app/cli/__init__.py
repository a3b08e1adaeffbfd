"""The `switchboard` command: run the service, provision tenants, inspect and replay the ledger."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click
from flask import Flask
from flask.cli import FlaskGroup

from app.cli import apikeys, contacts, db, dev, ledger, numbers, rules, tenants, users
from app.cli.common import ConfigProblem, provider_cli, provider_clis
from app.core.settings import ConfigError

# How `switchboard` is assembled, like Redash's redash/cli/: each module holds one command group (or a few
# top-level commands) and lists them in COMMANDS; a CRM's commands come from the CRM registry.
MODULES = (db, tenants, numbers, users, apikeys, contacts, rules, ledger, dev)


def create_app() -> Flask:
    """The app for commands that need one; a missing or malformed setting is a one-line error (exit 2)."""
    from app.web import create_app as factory

    try:
        return factory()
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None


class SwitchboardGroup(FlaskGroup):
    """FlaskGroup whose commands are ours alone: the core modules' plus a command group per registered CRM.

    CRM groups are looked up in the registry when the command line is parsed, so a CRM registered at
    runtime (connectors.register, SWITCHBOARD_CRM_PLUGINS) gets its `switchboard NAME` group. Listing and
    finding commands never loads the app (so `--help` works without settings), and a ConfigError, raised
    while the app loads or by a command that configures itself (`run`), is one line on stderr, exit 2.
    """

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = click.Group.get_command(self, ctx, name)
        if command is not None:
            return command
        import connectors

        if name not in connectors.names():
            return None
        try:
            module = provider_cli(name)
        except Exception as exc:
            raise click.ClickException(f"CRM {name!r} could not be loaded: {exc}") from None
        group = getattr(module, "group", None)
        return group if isinstance(group, click.Command) else None

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(click.Group.list_commands(self, ctx))
        for name, module in provider_clis():
            if isinstance(getattr(module, "group", None), click.Command):
                names.add(name)
        return sorted(names)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise ConfigProblem(str(exc)) from None


main = SwitchboardGroup(create_app=create_app, add_default_commands=False, help=__doc__)

for _module in MODULES:
    for _command in _module.COMMANDS:
        main.add_command(_command)


def _mount_optional(module_name: str) -> None:
    """Mount `group` of an optional module when the module exists (a missing one is fine)."""
    if importlib.util.find_spec(module_name) is None:
        return
    group = getattr(importlib.import_module(module_name), "group", None)
    if isinstance(group, click.Command):
        main.add_command(group)


_mount_optional("app.cli.automations")
_mount_optional("app.cli.email")
