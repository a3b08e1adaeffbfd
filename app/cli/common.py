"""What every command module of `switchboard` shares: clean errors, the provisioning transaction, the
settings of the loaded app, and secrets read from the environment, a hidden prompt or stdin (not argv)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click
from flask import current_app
from sqlalchemy.orm import Session

from app.core import db
from app.core.settings import Settings
from app.core.tenants import ProvisioningError


class ConfigProblem(click.ClickException):
    """A missing or malformed setting (a ConfigError): one line on stderr, exit code 2 like a usage error."""

    exit_code = 2


def fail(message: str) -> NoReturn:
    """Stop the command with a one-line error (exit 1, no traceback)."""
    raise click.ClickException(message)


def settings() -> Settings:
    """The settings of the app the command runs in."""
    return current_app.extensions["switchboard"]  # type: ignore[no-any-return]


@contextmanager
def provisioning() -> Iterator[Session]:
    """A transaction whose ProvisioningError becomes a clean CLI error (exit 1), with nothing written."""
    try:
        with db.transaction() as s:
            yield s
    except ProvisioningError as exc:
        raise click.ClickException(str(exc)) from None


# --- secrets -----------------------------------------------------------------------------------------------


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
