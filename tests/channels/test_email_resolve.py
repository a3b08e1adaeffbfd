"""`switchboard email resolve ID --sent|--resend` for an email left "may have been sent" (SendGrid without
the Email Activity add-on, an attempt with no outcome), and `switchboard email opt-in ADDRESS` after a
bounce: through the CLI, the real SDK and the SendGrid emulator over HTTP, on both databases."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from app.channels import email
from app.cli.email import group
from app.core import db, mail
from app.core.db import utcnow
from app.core.models import ActionRun, Tenant, WebhookEvent
from app.core.settings import Settings
from emulators.sendgrid import SendGridEmulator
from jobs.automations import run_action
from tests.channels.conftest import FROM, TO, configure, emails, outgoing, tenant_row


def refused(result: Any, *words: str) -> None:
    """Exit 2 and one line naming what was wrong, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert all(w in lines[0] for w in words), lines[0]


@pytest.fixture
def no_addon(tenant: Tenant, sendgrid_emu: SendGridEmulator, settings: Settings) -> dict[str, Any]:
    """SendGrid without the Email Activity add-on: a lost attempt cannot be looked up."""
    account = sendgrid_emu.create_account(activity=False)
    configure(
        tenant,
        "sendgrid",
        sendgrid_api_key=account["api_key"],
        sendgrid_verification_key=account["verification_key"],
        email_from=FROM,
    )
    return account


def undecided(tenant: Tenant, settings: Settings, emu: SendGridEmulator, **fail: Any) -> email.Outgoing:
    """An email whose one attempt has no outcome, and `send` says so (Unknown)."""
    out = outgoing()
    emu.fail_next(status=500, **fail)
    with pytest.raises(email.Unavailable):
        email.send(tenant_row(tenant), settings, out, source="api")
    with pytest.raises(email.Unknown):
        email.send(tenant_row(tenant), settings, out, source="api", grace=timedelta(0))
    return out


def test_resend_sends_it_once_more(
    app: Any, tenant: Tenant, no_addon: dict[str, Any], sendgrid_emu: SendGridEmulator, settings: Settings
) -> None:
    out = undecided(tenant, settings, sendgrid_emu)  # the 500 came before SendGrid took it
    assert sendgrid_emu.messages() == []
    result = app.test_cli_runner().invoke(group, ["resolve", out.switchboard_id, "--resend"])
    assert result.exit_code == 0, result.output
    assert "Idempotency-Key" in result.output and TO in result.output
    sent = email.send(tenant_row(tenant), settings, out, source="api", grace=timedelta(0))
    assert not sent.recovered and len(sendgrid_emu.messages()) == 1
    [row] = emails()
    assert row.status == "sent" and "resolved_resend" in row.facts["email_seen"]
    again = email.send(tenant_row(tenant), settings, out, source="api", grace=timedelta(0))
    assert again.recovered and len(sendgrid_emu.messages()) == 1  # once
    refused(app.test_cli_runner().invoke(group, ["resolve", out.switchboard_id, "--resend"]), "is sent")


def test_sent_records_it_and_nothing_more_goes_out(
    app: Any, tenant: Tenant, no_addon: dict[str, Any], sendgrid_emu: SendGridEmulator, settings: Settings
) -> None:
    out = undecided(tenant, settings, sendgrid_emu, after_accept=True)  # SendGrid took it, then 500
    [row] = emails()
    result = app.test_cli_runner().invoke(group, ["resolve", str(row.id), "--sent"])  # by interaction id
    assert result.exit_code == 0, result.output
    assert "recorded as sent" in result.output
    [row] = emails()
    assert row.status == "sent" and "resolved_sent" in row.facts["email_seen"]
    assert email.send(tenant_row(tenant), settings, out, source="api", grace=timedelta(0)).recovered
    assert len(sendgrid_emu.messages()) == 1


def test_resend_of_an_automation_step_runs_the_step_again(
    app: Any, tenant: Tenant, no_addon: dict[str, Any], sendgrid_emu: SendGridEmulator, settings: Settings
) -> None:
    key = "follow-up:email.sent:interaction:1:0"
    spec = {"subject": "Anything else?", "body": "Just checking in.", "from_": "tenant"}
    template = {"tenant": {"name": "acme"}, "contact": {"email": TO}}

    def step() -> tuple[str, dict[str, Any], str | None]:
        return email.run_step(
            tenant_row(tenant), settings, key=key, party_email=TO, spec=spec, template=template
        )

    sendgrid_emu.fail_next(status=500)
    with pytest.raises(email.Unavailable):
        step()
    with db.transaction() as s:  # the attempt is older than the lookup grace
        s.execute(update(WebhookEvent).values(received_at=utcnow() - timedelta(minutes=10)))
    outcome, result, reason = step()
    assert outcome == "failed" and "may have been sent" in (reason or "")
    now = utcnow()
    with db.transaction() as s:
        run = ActionRun(
            tenant_id=tenant.id, key=key, rule="follow-up", rules_version=1, trigger="email.sent",
            trigger_ref="interaction:1", trigger_at=now, step=0, action="send_email", party_email=TO,
            state="failed", due_at=now, attempts=2, result=result, reason=reason,
            context={"spec": spec, "unless": [], "template": template},
        )  # fmt: skip
        s.add(run)
        s.flush()
        run_id = run.id
    cli = app.test_cli_runner().invoke(group, ["resolve", result["switchboard_id"], "--resend"])
    assert cli.exit_code == 0, cli.output
    assert f"automation step {run_id}" in cli.output
    with db.transaction() as s:
        again = s.get(ActionRun, run_id)
        assert again is not None and again.state == "scheduled"
    assert run_action(run_id) == "done"
    [msg] = sendgrid_emu.messages()
    assert (
        msg["custom_args"]["switchboard_id"] == result["switchboard_id"] and msg["subject"] == spec["subject"]
    )


def test_resolve_refuses_in_one_line(
    app: Any, tenant: Tenant, sendgrid: dict[str, Any], settings: Settings
) -> None:
    runner = app.test_cli_runner()
    sent = email.send(tenant_row(tenant), settings, outgoing(), source="api")
    refused(runner.invoke(group, ["resolve", sent.switchboard_id, "--sent"]), "not waiting to be resolved")
    refused(runner.invoke(group, ["resolve", "sb" + "f" * 32, "--sent"]), "no email of ours")
    refused(runner.invoke(group, ["resolve", "999999", "--resend"]), "no email of ours")
    refused(runner.invoke(group, ["resolve", sent.switchboard_id]), "exactly one of")
    refused(runner.invoke(group, ["resolve", sent.switchboard_id, "--sent", "--resend"]), "exactly one of")


def test_opt_in_after_a_bounce(
    app: Any,
    tenant: Tenant,
    sendgrid: dict[str, Any],
    sendgrid_emu: SendGridEmulator,
    settings: Settings,
    served: str,
) -> None:
    runner = app.test_cli_runner()
    refused(runner.invoke(group, ["opt-in", TO]), "is not opted out")
    refused(runner.invoke(group, ["opt-in", "not an address"]), "not an email address")
    url = f"{served}/webhooks/sendgrid/events?token={sendgrid['token']}"
    first = email.send(tenant_row(tenant), settings, outgoing(), source="api")
    assert sendgrid_emu.emit(first.provider_message_id or "", "bounce", url, type="bounce")["status"] == 200
    assert mail.opted_out(tenant.id, TO)
    with pytest.raises(email.OptedOut):
        email.send(tenant_row(tenant), settings, outgoing(), source="api")
    time.sleep(1.05)  # SendGrid times events to the second; one in the opt-in's own second still counts
    result = runner.invoke(group, ["opt-in", TO.upper()])
    assert result.exit_code == 0, result.output
    assert mail.opted_out(tenant.id, TO) is None
    second = email.send(tenant_row(tenant), settings, outgoing(), source="api")
    assert len(sendgrid_emu.messages()) == 2
    # A bounce after the opt-in opts it out again.
    assert sendgrid_emu.emit(second.provider_message_id or "", "bounce", url, type="bounce")["status"] == 200
    reason = mail.opted_out(tenant.id, TO)
    assert reason is not None and "hard bounce" in reason
    refused(runner.invoke(group, ["opt-in", TO, "--tenant", "nobody"]))
