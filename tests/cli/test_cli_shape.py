"""The `switchboard` command as assembled from its modules: settings errors in one line, secrets kept out of
argv, and CRMs (their `--crm` choice, `tenant add` options and command group) taken from the registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from sqlalchemy import select, text

import connectors
from app.cli import main
from app.core import db
from app.core.models import Tenant
from connectors import clitools

ROOT = Path(__file__).resolve().parents[2]
SWITCHBOARD = Path(sys.executable).parent / "switchboard"
SID = "AC" + "a" * 32
TOKEN = "feed" * 8


def invoke(app: Any, *args: str, **kwargs: Any) -> Any:
    return app.test_cli_runner().invoke(main, args=list(args), **kwargs)


def stored_token(name: str) -> str:
    with db.transaction() as s:
        return str(
            s.execute(text("SELECT twilio_auth_token FROM tenants WHERE name = :n"), {"n": name}).scalar()
        )


def tenant_row(name: str) -> Tenant:
    with db.transaction() as s:
        row = s.scalar(select(Tenant).where(Tenant.name == name))
        assert row is not None
        return row


# --- settings errors: one line on stderr, exit 2 ----------------------------------------------------------


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a shell with no Switchboard settings, an empty var/ and a SQLite database."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SWITCHBOARD_", "FLASK_"))
        and k not in ("DATABASE_URL", "REDIS_URL", "TWILIO_AUTH_TOKEN", "HUBSPOT_TOKEN")
    }
    (tmp_path / "var").mkdir(exist_ok=True)
    env.update(SWITCHBOARD_VAR_DIR=str(tmp_path / "var"), DATABASE_URL=f"sqlite:///{tmp_path / 'sb.db'}")
    env.update(extra)
    return env


def switchboard(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SWITCHBOARD), *args],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


ADD = ("tenant", "add", "acme", "--twilio-account-sid", SID, "--twilio-auth-token", TOKEN)


def test_missing_secret_key_is_one_line_and_exit_2(tmp_path):
    result = switchboard(tmp_path, bare_env(tmp_path), *ADD)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: SWITCHBOARD_SECRET_KEY is not set (")
    assert "generate one with: " in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "sb.db").exists()  # nothing was touched


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "mysql://db.example/switchboard"),
        ("DATABASE_URL", "not a url"),
        ("REDIS_URL", "http://x"),
    ],
)
def test_malformed_urls_are_one_line_and_exit_2(tmp_path, variable, value):
    from tests.conftest import TEST_KEY

    env = bare_env(tmp_path, SWITCHBOARD_SECRET_KEY=TEST_KEY, **{variable: value})
    result = switchboard(tmp_path, env, "tenant", "list")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: {variable} ") and "e.g. " in line


def test_commands_without_the_app_need_no_key(tmp_path):
    env = bare_env(tmp_path)
    for args in (("--help",), ("tenant", "add", "--help"), ("run", "--help"), ("emulate", "--help")):
        result = switchboard(tmp_path, env, *args)
        assert result.returncode == 0, (args, result.stderr)
    from app.automation.rules import DEFAULT_RULES

    timeline = ROOT / "tests" / "fixtures" / "timelines" / "day.yaml"
    dry = switchboard(tmp_path, env, "rules", "test", str(DEFAULT_RULES), str(timeline))
    assert dry.returncode == 0 and dry.stdout, dry.stderr


# --- secrets out of argv ----------------------------------------------------------------------------------


def test_twilio_token_from_the_environment(app):
    result = invoke(
        app, "tenant", "add", "acme", "--twilio-account-sid", SID, env={"TWILIO_AUTH_TOKEN": TOKEN}
    )
    assert result.exit_code == 0, result.output
    assert tenant_row("acme").twilio_auth_token == TOKEN  # decrypts transparently
    assert TOKEN not in stored_token("acme")  # ...but is ciphertext at rest


def test_twilio_token_from_stdin(app):
    result = invoke(
        app,
        "tenant",
        "add",
        "acme",
        "--twilio-account-sid",
        SID,
        "--twilio-auth-token",
        "-",
        input=TOKEN + "\n",
    )
    assert result.exit_code == 0, result.output
    assert tenant_row("acme").twilio_auth_token == TOKEN
    assert TOKEN not in stored_token("acme")


def test_set_twilio_token_from_the_environment_and_stdin(app):
    assert (
        invoke(
            app, "tenant", "add", "acme", "--twilio-account-sid", SID, "--twilio-auth-token", "x"
        ).exit_code
        == 0
    )
    other = "AC" + "b" * 32
    by_env = invoke(
        app, "tenant", "set-twilio", "acme", "--account-sid", other, env={"TWILIO_AUTH_TOKEN": TOKEN}
    )
    assert by_env.exit_code == 0, by_env.output
    assert tenant_row("acme").twilio_auth_token == TOKEN
    by_stdin = invoke(
        app, "tenant", "set-twilio", "acme", "--account-sid", other, "--auth-token", "-", input="second\n"
    )
    assert by_stdin.exit_code == 0, by_stdin.output
    assert tenant_row("acme").twilio_auth_token == "second"
    assert "second" not in stored_token("acme")


def test_a_terminal_is_prompted_without_echo(app, monkeypatch):
    monkeypatch.setattr(clitools, "stdin_is_terminal", lambda: True)
    result = invoke(app, "tenant", "add", "acme", "--twilio-account-sid", SID, input=TOKEN + "\n")
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output  # hidden input
    assert tenant_row("acme").twilio_auth_token == TOKEN


def test_a_terminal_is_prompted_for_the_hubspot_token_only_with_crm_hubspot(app, monkeypatch):
    monkeypatch.setattr(clitools, "stdin_is_terminal", lambda: True)
    result = invoke(
        app,
        "tenant",
        "add",
        "globex",
        "--twilio-account-sid",
        SID,
        "--crm",
        "hubspot",
        input=f"{TOKEN}\npat-na1-typed\n",
    )
    assert result.exit_code == 0, result.output
    assert "pat-na1-typed" not in result.output and "hubspot token" in result.output.lower()
    assert "pat-na1-typed" in (tenant_row("globex").crm_secrets or "")
    local = invoke(app, "tenant", "add", "acme", "--twilio-account-sid", "AC" + "b" * 32, input=f"{TOKEN}\n")
    assert local.exit_code == 0 and "hubspot" not in local.output.lower()


def test_a_missing_token_without_a_terminal_is_a_usage_error(app):
    result = invoke(app, "tenant", "add", "acme", "--twilio-account-sid", SID)
    assert result.exit_code == 2
    assert "--twilio-auth-token" in result.output and "TWILIO_AUTH_TOKEN" in result.output
    empty = invoke(
        app, "tenant", "add", "acme", "--twilio-account-sid", SID, "--twilio-auth-token", "-", input=""
    )
    assert empty.exit_code == 2 and "stdin" in empty.output
    with db.transaction() as s:
        assert s.scalar(text("SELECT count(*) FROM tenants")) == 0


def test_hubspot_token_from_the_environment_and_stdin(app):
    env = {"TWILIO_AUTH_TOKEN": TOKEN, "HUBSPOT_TOKEN": "pat-na1-env"}
    result = invoke(
        app,
        "tenant",
        "add",
        "globex",
        "--twilio-account-sid",
        SID,
        "--crm",
        "hubspot",
        "--hubspot-portal-id",
        "123",
        env=env,
    )
    assert result.exit_code == 0, result.output
    row = tenant_row("globex")
    assert row.crm == "hubspot" and row.crm_account_id == "123"
    assert "pat-na1-env" in (row.crm_secrets or "")
    with db.transaction() as s:
        raw = s.execute(text("SELECT crm_secrets FROM tenants WHERE name = 'globex'")).scalar()
    assert "pat-na1-env" not in raw  # encrypted at rest
    piped = invoke(
        app,
        "tenant",
        "add",
        "initech",
        "--twilio-account-sid",
        "AC" + "c" * 32,
        "--twilio-auth-token",
        "-",
        "--crm",
        "hubspot",
        "--hubspot-token",
        "-",
        input=f"{TOKEN}\npat-na1-stdin\n",
    )
    assert piped.exit_code == 0, piped.output
    row = tenant_row("initech")
    assert row.twilio_auth_token == TOKEN and "pat-na1-stdin" in (row.crm_secrets or "")


def test_hubspot_without_a_token_fails_clearly(app):
    result = invoke(
        app,
        "tenant",
        "add",
        "globex",
        "--twilio-account-sid",
        SID,
        "--twilio-auth-token",
        "x",
        "--crm",
        "hubspot",
    )
    assert result.exit_code == 1 and "--hubspot-token" in result.output and "HUBSPOT_TOKEN" in result.output
    with db.transaction() as s:
        assert s.scalar(text("SELECT count(*) FROM tenants")) == 0


def test_another_crm_s_option_is_refused(app):
    result = invoke(
        app,
        "tenant",
        "add",
        "acme",
        "--twilio-account-sid",
        SID,
        "--twilio-auth-token",
        "x",
        "--hubspot-token",
        "p",
    )
    assert result.exit_code == 1 and "--hubspot-token is for --crm hubspot" in result.output


# --- CRMs from the registry -------------------------------------------------------------------------------


@pytest.fixture
def stub_crm() -> Any:
    connectors.register("stubcrm", "tests.cli.stub_crm:PROVIDER")
    yield "stubcrm"
    connectors.REGISTRY.pop("stubcrm", None)


def test_a_crm_registered_at_runtime_joins_the_cli(app, stub_crm):
    help_ = invoke(app, "tenant", "add", "--help")
    assert help_.exit_code == 0 and "[local|hubspot|salesforce|stubcrm]" in help_.output
    assert "--stub-workspace" in help_.output
    top = invoke(app, "--help")
    assert top.exit_code == 0 and "stubcrm" in top.output and "Stub CRM workspaces." in top.output
    ping = invoke(app, "stubcrm", "ping")
    assert ping.exit_code == 0 and ping.output.strip() == "stubcrm pong"
    added = invoke(
        app,
        "tenant",
        "add",
        "acme",
        "--twilio-account-sid",
        SID,
        "--twilio-auth-token",
        "x",
        "--crm",
        "stubcrm",
        "--stub-workspace",
        "ws-7",
    )
    assert added.exit_code == 0, added.output
    row = tenant_row("acme")
    assert row.crm == "stubcrm" and row.crm_account_id == "ws-7"
    refused = invoke(
        app,
        "tenant",
        "add",
        "other",
        "--twilio-account-sid",
        "AC" + "b" * 32,
        "--twilio-auth-token",
        "x",
        "--stub-workspace",
        "ws-8",
    )
    assert refused.exit_code == 1 and "--stub-workspace is for --crm stubcrm" in refused.output


def test_the_registry_s_changes_show_without_rebuilding(app, stub_crm):
    assert "stubcrm" in invoke(app, "tenant", "add", "--help").output
    connectors.REGISTRY.pop("stubcrm")
    gone = invoke(app, "tenant", "add", "--help")
    assert "stubcrm" not in gone.output and "--stub-workspace" not in gone.output
    assert invoke(app, "stubcrm", "ping").exit_code == 2  # no such command
    bad = invoke(
        app, "tenant", "add", "x", "--twilio-account-sid", SID, "--twilio-auth-token", "x", "--crm", "stubcrm"
    )
    assert bad.exit_code == 2 and "stubcrm" in bad.output


def test_a_crm_plugin_from_the_environment_in_a_fresh_process(tmp_path):
    env = bare_env(
        tmp_path, SWITCHBOARD_CRM_PLUGINS="stubcrm=tests.cli.stub_crm:PROVIDER", PYTHONPATH=str(ROOT)
    )
    help_ = switchboard(tmp_path, env, "tenant", "add", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "[local|hubspot|salesforce|stubcrm]" in help_.stdout and "--stub-workspace" in help_.stdout
    ping = switchboard(tmp_path, env, "stubcrm", "ping")
    assert ping.returncode == 0 and ping.stdout.strip() == "stubcrm pong"


def test_every_module_s_commands_are_mounted():
    assert set(main.commands) >= {
        "db",
        "tenant",
        "number",
        "user",
        "apikey",
        "contact",
        "rules",
        "sweep",
        "failed",
        "run",
        "simulate",
        "emulate",
    }
    assert isinstance(main.commands["tenant"], click.Group)
    assert "hubspot" not in main.commands  # mounted from the registry, not by hand
    ctx = click.Context(main)
    assert "hubspot" in main.list_commands(ctx) and main.get_command(ctx, "hubspot") is not None
