"""What every command module of `switchboard` shares: clean errors, the provisioning transaction, the
settings of the loaded app, and secrets read from the environment, a hidden prompt or stdin (not argv)."""

from __future__ import annotations

from typing import Any

import click
from flask import current_app

from app.core.settings import Settings
from connectors.clitools import fail, provisioning, secret_callback, stdin_is_terminal

__all__ = ["fail", "provisioning", "secret_callback", "stdin_is_terminal"]


class ConfigProblem(click.ClickException):
    """A missing or malformed setting (a ConfigError): one line on stderr, exit code 2 like a usage error."""

    exit_code = 2


def settings() -> Settings:
    """The settings of the app the command runs in."""
    return current_app.extensions["switchboard"]  # type: ignore[no-any-return]


# --- secrets -----------------------------------------------------------------------------------------------


def secret_option(*decls: str, envvar: str, help: str, required: bool = True) -> Any:
    """A click option for a secret: the flag, `envvar`, `-` for stdin, or a hidden prompt on a terminal."""
    return click.option(
        *decls,
        envvar=envvar,
        show_envvar=True,
        callback=secret_callback(required),
        help=f"{'Required. ' if required else ''}{help} '-' reads it from stdin; prompted for (hidden) on a "
        "terminal.",
    )


# --- the CRM registry --------------------------------------------------------------------------------------


def provider_cli(name: str) -> Any | None:
    """The CLI module of the CRM registered as `name` (None if it has none)."""
    import connectors

    target = connectors.provider(name).cli
    return connectors.load(target) if target else None


def provider_clis(*, warn: bool = True) -> list[tuple[str, Any]]:
    """(name, CLI module) of every registered CRM that has one, in registry order.

    A provider whose module does not import is skipped with a warning on stderr, so one broken plug-in does
    not take the other commands down; the commands that name it (`--crm NAME`, `switchboard NAME`) still
    report its error.
    """
    import connectors

    found = []
    for name in connectors.names():
        try:
            module = provider_cli(name)
        except Exception as exc:
            if warn:
                click.echo(f"warning: CRM {name!r} not loaded: {exc}", err=True)
            continue
        if module is not None:
            found.append((name, module))
    return found


class CrmChoice(click.Choice):  # type: ignore[type-arg]
    """The registered CRM names, read from the registry each time a command parses or shows its help, so a
    CRM registered at runtime (connectors.register, SWITCHBOARD_CRM_PLUGINS) is a valid choice."""

    def __init__(self) -> None:
        super().__init__((), case_sensitive=True)

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        import connectors

        return tuple(connectors.names())

    @choices.setter
    def choices(self, value: Any) -> None:
        pass  # the registry is the only source
