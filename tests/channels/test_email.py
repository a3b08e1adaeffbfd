"""Sending email (app/channels/email.py) through the real `sendgrid` SDK and `requests` against the SendGrid
and Mailgun contract emulators over real HTTP, with the outbound email on the ledger from the moment we
send it, the providers' signed events (posted by the emulators to the app served on 127.0.0.1) folding into
it, opt-outs, and exactly once when an attempt's outcome was lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from python_http_client.exceptions import (
    BadRequestsError,
    ForbiddenError,
    TooManyRequestsError,
    UnauthorizedError,
)
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Mail
from sqlalchemy import select

from app.channels import email
from app.core import db, mail
from app.core.models import LocalActivity, Tenant, WebhookEvent
from app.core.settings import Settings
from emulators.mailgun import MailgunEmulator
from emulators.sendgrid import SendGridEmulator
from tests.channels.conftest import DOMAIN, FROM, TO, configure, emails, outgoing, tenant_row
from tests.conftest import count

# --- the emulators, through the SDK and HTTP client (no database) ------------------------------------------


def test_sendgrid_emulator_answers_like_sendgrid(sendgrid_emu: SendGridEmulator) -> None:
    sendgrid_emu.reset()
    key = sendgrid_emu.create_account()["api_key"]
    client = SendGridAPIClient(key, host=sendgrid_emu.base_url)
    good = Mail(from_email=FROM, to_emails=TO, subject="Hello", plain_text_content="Hi")
    response = client.send(good)
    assert response.status_code == 202 and response.body in (b"", "")
    assert len(response.headers["X-Message-Id"]) == 22
    with pytest.raises(UnauthorizedError) as denied:
        SendGridAPIClient("SG.wrong.key", host=sendgrid_emu.base_url).send(good)
    assert json.loads(denied.value.body)["errors"][0]["message"].startswith(
        "The provided authorization grant"
    )
    bad = Mail(from_email="not-an-address", to_emails=TO, subject="Hello", plain_text_content="Hi")
    with pytest.raises(BadRequestsError) as refused:
        client.send(bad)
    assert json.loads(refused.value.body)["errors"][0]["field"] == "from"
    sendgrid_emu.set_limits(key, requests_per_second=1)
    client.send(good)
    with pytest.raises(TooManyRequestsError) as limited:
        client.send(good)
    assert (
        limited.value.headers["Retry-After"] == "1" and limited.value.headers["X-RateLimit-Remaining"] == "0"
    )
    sendgrid_emu.reset()
    no_addon = sendgrid_emu.create_account(activity=False)["api_key"]
    with pytest.raises(ForbiddenError):
        SendGridAPIClient(no_addon, host=sendgrid_emu.base_url).client.messages.get(
            query_params={"query": ""}
        )


def test_mailgun_emulator_answers_like_mailgun(mailgun_emu: MailgunEmulator) -> None:
    mailgun_emu.reset()
    key = mailgun_emu.create_domain(DOMAIN)["api_key"]
    url = f"{mailgun_emu.base_url}/v3/{DOMAIN}/messages"
    form = {"from": FROM, "to": TO, "subject": "Hello", "text": "Hi", "h:Message-Id": "<abc@acme.example>"}
    ok = requests.post(url, auth=("api", key), data=form, timeout=5)
    assert ok.status_code == 200 and ok.json() == {
        "id": "<abc@acme.example>",
        "message": "Queued. Thank you.",
    }
    wrong = requests.post(url, auth=("api", "key-wrong"), data=form, timeout=5)
    assert (wrong.status_code, wrong.text) == (401, "Forbidden")
    other = requests.post(f"{mailgun_emu.base_url}/v3/other.example/messages", auth=("api", key), data=form)
    assert other.status_code == 404 and other.json()["message"] == "Domain not found: other.example"
    missing = requests.post(url, auth=("api", key), data={**form, "from": ""}, timeout=5)
    assert missing.status_code == 400 and missing.json()["message"] == "'from' parameter is missing"
    found = requests.get(f"{mailgun_emu.base_url}/v3/{DOMAIN}/events", auth=("api", key),
                         params={"message-id": "abc@acme.example"}, timeout=5)  # fmt: skip
    assert [e["event"] for e in found.json()["items"]] == ["accepted"]
    mailgun_emu.set_limits(DOMAIN, requests_per_second=0)
    limited = requests.post(url, auth=("api", key), data=form, timeout=5)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"


# --- sending, recorded when we send ----------------------------------------------------------------------


def test_sendgrid_send_is_on_the_ledger_when_we_send(
    tenant: Tenant,
    sendgrid: dict[str, Any],
    sendgrid_emu: SendGridEmulator,
    settings: Settings,
    run_worker: Any,
) -> None:
    out = outgoing()
    sent = email.send(tenant_row(tenant), settings, out, source="api")
    [msg] = sendgrid_emu.messages()
    assert msg["custom_args"] == {"switchboard_id": out.switchboard_id}
    assert msg["headers"]["Message-ID"] == f"<{out.switchboard_id}@acme.example>"
    assert (
        msg["content"] == {"text/plain": out.text, "text/html": out.html} and msg["from_name"] == "Sam Patel"
    )
    [row] = emails()
    assert (row.id, row.provider, row.provider_id, row.direction, row.status) == (
        sent.interaction_id, "sendgrid", out.switchboard_id, "outbound", "sent"
    )  # fmt: skip
    assert row.party_email == TO and row.subject == out.subject and row.body == out.text
    assert row.facts["email"]["provider_message_id"] == msg["x_message_id"] == sent.provider_message_id
    assert row.thread_key == out.message_id
    run_worker()
    [activity] = _activities()
    assert (activity.kind, activity.subject, activity.status) == ("email", out.subject, "sent")


def _activities() -> list[LocalActivity]:
    with db.transaction() as s:
        return list(s.scalars(select(LocalActivity).order_by(LocalActivity.id)))


def test_mailgun_send_is_on_the_ledger_when_we_send(
    tenant: Tenant, mailgun: dict[str, Any], mailgun_emu: MailgunEmulator, settings: Settings
) -> None:
    out = outgoing(in_reply_to="CAF1XTURE1@mail.example.net", references=("root1@mail.example.com",))
    sent = email.send(tenant_row(tenant), settings, out, source="api")
    [msg] = mailgun_emu.messages()
    assert msg["id"] == out.message_id == sent.provider_message_id
    assert msg["user_variables"] == {"switchboard_id": out.switchboard_id}
    assert msg["headers"]["X-Switchboard-Id"] == out.switchboard_id
    assert msg["headers"]["In-Reply-To"] == "<CAF1XTURE1@mail.example.net>"
    assert msg["headers"]["References"] == "<root1@mail.example.com> <CAF1XTURE1@mail.example.net>"
    assert msg["from"] == f'"Sam Patel" <{FROM}>'
    [row] = emails()
    assert (row.provider, row.provider_id, row.status) == ("mailgun", out.switchboard_id, "sent")
    assert row.thread_key == "root1@mail.example.com"  # the thread it replies in


# --- events fold into the email we recorded, and opt the address out ---------------------------------------


def test_sendgrid_events_fold_into_the_sent_email_and_a_bounce_opts_out(
    tenant: Tenant, sendgrid: dict[str, Any], sendgrid_emu: SendGridEmulator, settings: Settings, served: str
) -> None:
    out = outgoing()
    sent = email.send(tenant_row(tenant), settings, out, source="automation")
    url = f"{served}/webhooks/sendgrid/events?token={sendgrid['token']}"
    x_id = sent.provider_message_id
    assert x_id
    for event in ("processed", "delivered", "open"):  # through the control endpoint, as a demo would
        control = {"x_message_id": x_id, "event": event, "url": url, "times": 2}  # SendGrid repeats events
        answer = requests.post(f"{sendgrid_emu.base_url}/_emulator/emit", json=control, timeout=10)
        assert answer.status_code == 200 and answer.json()["status"] == 200
    [row] = emails()
    assert row.status == "opened" and row.id == sent.interaction_id
    assert mail.opted_out(tenant.id, TO) is None
    assert (
        sendgrid_emu.emit(x_id, "bounce", url, type="bounce", reason="550 5.1.1 no such user")["status"]
        == 200
    )
    [row] = emails()
    assert row.status == "bounced"
    reason = mail.opted_out(tenant.id, TO.upper())
    assert reason is not None and "hard bounce" in reason
    with pytest.raises(email.OptedOut):
        email.send(tenant_row(tenant), settings, outgoing(), source="automation")
    assert len(sendgrid_emu.messages()) == 1 and len(emails()) == 1


def test_a_blocked_bounce_does_not_opt_out(
    tenant: Tenant, sendgrid: dict[str, Any], sendgrid_emu: SendGridEmulator, settings: Settings, served: str
) -> None:
    sent = email.send(tenant_row(tenant), settings, outgoing(), source="api")
    url = f"{served}/webhooks/sendgrid/events?token={sendgrid['token']}"
    assert sendgrid_emu.emit(sent.provider_message_id or "", "bounce", url, type="blocked")["status"] == 200
    assert emails()[0].status == "bounced" and mail.opted_out(tenant.id, TO) is None


@pytest.mark.parametrize(("event", "extra", "why"), [
    ("complained", {}, "marked as spam"),
    ("unsubscribed", {}, "unsubscribed"),
    ("failed", {"severity": "permanent"}, "permanent delivery failure"),
])  # fmt: skip
def test_mailgun_events_fold_into_the_sent_email_and_opt_out(
    tenant: Tenant,
    mailgun: dict[str, Any],
    mailgun_emu: MailgunEmulator,
    settings: Settings,
    served: str,
    event: str,
    extra: dict[str, Any],
    why: str,
) -> None:
    out = outgoing()
    email.send(tenant_row(tenant), settings, out, source="automation")
    url = f"{served}/webhooks/mailgun/events?token={mailgun['token']}"
    control = {"message_id": f"<{out.message_id}>", "event": "delivered", "url": url}
    answer = requests.post(f"{mailgun_emu.base_url}/_emulator/emit", json=control, timeout=10)
    assert answer.status_code == 200 and answer.json()["status"] == 200
    assert emails()[0].status == "delivered"
    assert mailgun_emu.emit(out.message_id, "failed", url, severity="temporary")["status"] == 200
    assert emails()[0].status == "delivered" and mail.opted_out(tenant.id, TO) is None
    assert mailgun_emu.emit(out.message_id, event, url, **extra)["status"] == 200
    [row] = emails()
    assert row.provider_id == out.switchboard_id
    reason = mail.opted_out(tenant.id, TO)
    assert reason is not None and why in reason
    assert count(WebhookEvent, WebhookEvent.stream == "events") == 3


# --- errors ----------------------------------------------------------------------------------------------


def test_a_refused_send_fails_the_email_without_opting_out(
    tenant: Tenant, sendgrid: dict[str, Any], sendgrid_emu: SendGridEmulator, settings: Settings
) -> None:
    out = outgoing(from_addr="sam@localhost")  # SendGrid wants a from address with a domain
    with pytest.raises(email.Rejected, match="sendgrid HTTP 400: from: The from object"):
        email.send(tenant_row(tenant), settings, out, source="api")
    [row] = emails()
    assert row.status == "failed" and row.facts["email_status"]["severity"] == "rejected"
    assert mail.opted_out(tenant.id, TO) is None
    with pytest.raises(email.Rejected):  # the same id is refused again without asking SendGrid
        email.send(tenant_row(tenant), settings, out, source="api")
    assert sendgrid_emu.stats() == {"POST /v3/mail/send 400": 1}


def test_a_wrong_key_is_rejected(tenant: Tenant, mailgun: dict[str, Any], settings: Settings) -> None:
    configure(tenant, "mailgun", mailgun_api_key="key-wrong")
    with pytest.raises(email.Rejected, match="mailgun HTTP 401: Forbidden"):
        email.send(tenant_row(tenant), settings, outgoing(), source="api")


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun"])
def test_429_is_retried_after_its_retry_after_and_sends_once(
    tenant: Tenant,
    sendgrid: dict[str, Any],
    mailgun: dict[str, Any],
    sendgrid_emu: SendGridEmulator,
    mailgun_emu: MailgunEmulator,
    settings: Settings,
    provider: str,
) -> None:
    configure(tenant, provider)
    emu: Any = sendgrid_emu if provider == "sendgrid" else mailgun_emu
    emu.fail_next(status=429)
    out = outgoing()
    with pytest.raises(email.Unavailable) as busy:
        email.send(tenant_row(tenant), settings, out, source="api")
    assert busy.value.retry_after == 1.0
    # The provider answered: that attempt is closed, so the retry sends at once, without a lookup.
    sent = email.send(tenant_row(tenant), settings, out, source="api")
    assert not sent.recovered and len(emu.messages()) == 1
    assert emails()[0].status == "sent"


def test_not_configured(tenant: Tenant, settings: Settings) -> None:
    with pytest.raises(email.NotConfigured):
        email.send(tenant_row(tenant), settings, outgoing(), source="api")


# --- exactly once when an attempt's outcome was lost -------------------------------------------------------


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun"])
def test_accepted_but_unanswered_is_not_sent_twice(
    tenant: Tenant,
    sendgrid: dict[str, Any],
    mailgun: dict[str, Any],
    sendgrid_emu: SendGridEmulator,
    mailgun_emu: MailgunEmulator,
    settings: Settings,
    provider: str,
) -> None:
    configure(tenant, provider)
    emu: Any = sendgrid_emu if provider == "sendgrid" else mailgun_emu
    emu.fail_next(status=504, after_accept=True)  # the provider took it; the gateway answered 504
    out = outgoing()
    with pytest.raises(email.Unavailable):
        email.send(tenant_row(tenant), settings, out, source="automation")
    assert len(emu.messages()) == 1 and emails()[0].status == "sending"
    again = email.send(tenant_row(tenant), settings, out, source="automation")
    assert again.recovered and len(emu.messages()) == 1
    [row] = emails()
    assert row.status == "sent" and again.interaction_id == row.id
    if provider == "sendgrid":
        assert row.facts["email"]["provider_message_id"] == emu.messages()[0]["x_message_id"]
    third = email.send(tenant_row(tenant), settings, out, source="automation")  # known now: no lookup
    assert third.recovered and len(emu.messages()) == 1


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun"])
def test_an_open_attempt_the_provider_never_got_waits_for_the_grace_then_sends_once(
    tenant: Tenant,
    sendgrid: dict[str, Any],
    mailgun: dict[str, Any],
    sendgrid_emu: SendGridEmulator,
    mailgun_emu: MailgunEmulator,
    settings: Settings,
    provider: str,
) -> None:
    configure(tenant, provider)
    emu: Any = sendgrid_emu if provider == "sendgrid" else mailgun_emu
    emu.fail_next(status=503)  # refused before it took the mail, but a 5xx cannot tell us that
    out = outgoing()
    with pytest.raises(email.Unavailable):
        email.send(tenant_row(tenant), settings, out, source="automation")
    with pytest.raises(email.Pending) as pending:  # the provider's lookup may lag behind: not yet
        email.send(tenant_row(tenant), settings, out, source="automation")
    assert pending.value.until > emails()[0].created_at
    assert emu.messages() == []
    sent = email.send(tenant_row(tenant), settings, out, source="automation", grace=timedelta(0))
    assert not sent.recovered and len(emu.messages()) == 1 and emails()[0].status == "sent"


def test_sendgrid_without_the_activity_add_on_relies_on_its_events(
    tenant: Tenant, sendgrid_emu: SendGridEmulator, settings: Settings, served: str
) -> None:
    account = sendgrid_emu.create_account(activity=False)
    token = configure(
        tenant,
        "sendgrid",
        sendgrid_api_key=account["api_key"],
        sendgrid_verification_key=account["verification_key"],
    )
    sendgrid_emu.fail_next(status=500, after_accept=True)
    out, lost = outgoing(), outgoing()
    for each in (out, lost):
        with pytest.raises(email.Unavailable):
            email.send(tenant_row(tenant), settings, each, source="automation")
        if each is lost:
            continue
        sendgrid_emu.fail_next(status=500, after_accept=True)
    assert len(sendgrid_emu.messages()) == 2
    # `out`'s processed event (our id in its custom args) reached the ledger: known to be sent.
    x_id = next(
        m["x_message_id"]
        for m in sendgrid_emu.messages()
        if m["custom_args"]["switchboard_id"] == out.switchboard_id
    )
    sendgrid_emu.emit(x_id, "processed", f"{served}/webhooks/sendgrid/events?token={token}")
    assert email.send(tenant_row(tenant), settings, out, source="automation", grace=timedelta(0)).recovered
    # `lost` has no event and SendGrid cannot be asked: unknown, never sent a second time.
    with pytest.raises(email.Unknown):
        email.send(tenant_row(tenant), settings, lost, source="automation", grace=timedelta(0))
    assert len(sendgrid_emu.messages()) == 2


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun"])
def test_switchboard_emulate_serves_the_send_api(provider: str) -> None:
    """`switchboard emulate sendgrid|mailgun` prints its URL, and its keys on stderr, then serves."""
    switchboard = Path(sys.executable).parent / "switchboard"
    proc = subprocess.Popen(
        [str(switchboard), "emulate", provider, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "SWITCHBOARD_SECRET_KEY"},
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        base = proc.stdout.readline().decode().strip()
        keys = json.loads(proc.stderr.readline())
        assert base.startswith("http://127.0.0.1:")
        if provider == "sendgrid":
            mail_ = Mail(from_email=FROM, to_emails=TO, subject="Hello", plain_text_content="Hi")
            assert SendGridAPIClient(keys["api_key"], host=base).send(mail_).status_code == 202
        else:
            form = {"from": FROM, "to": TO, "subject": "Hello", "text": "Hi"}
            url = f"{base}/v3/{keys['domain']}/messages"
            assert requests.post(url, auth=("api", keys["api_key"]), data=form, timeout=5).status_code == 200
        assert len(requests.get(f"{base}/_emulator/messages", timeout=5).json()["result"]) == 1
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=10)  # closes both pipes


def test_an_email_that_went_out_is_reported_sent_even_if_its_address_opted_out_since(
    tenant: Tenant, sendgrid: dict[str, Any], sendgrid_emu: SendGridEmulator, settings: Settings, served: str
) -> None:
    sendgrid_emu.fail_next(status=504, after_accept=True)
    out = outgoing()
    with pytest.raises(email.Unavailable):
        email.send(tenant_row(tenant), settings, out, source="automation")
    [msg] = sendgrid_emu.messages()
    url = f"{served}/webhooks/sendgrid/events?token={sendgrid['token']}"
    assert sendgrid_emu.emit(msg["x_message_id"], "unsubscribe", url)["status"] == 200
    assert mail.opted_out(tenant.id, TO) is not None
    again = email.send(tenant_row(tenant), settings, out, source="automation")
    assert again.recovered and len(sendgrid_emu.messages()) == 1
    with pytest.raises(email.OptedOut):  # a new email to the address is refused
        email.send(tenant_row(tenant), settings, outgoing(), source="automation")


def test_an_eu_mailgun_domain_sends_through_the_eu_host(tenant: Tenant, settings: Settings) -> None:
    configure(tenant, "mailgun", mailgun_api_key="key-x", mailgun_domain=DOMAIN, mailgun_region="eu")
    config = email.sender_config(tenant_row(tenant))
    assert config is not None and config.mailgun_region == "eu"
    real = settings.with_(mailgun_api_base="https://api.mailgun.net")
    assert email.mailgun_base(config, real) == "https://api.eu.mailgun.net"
    assert email.mailgun_base(config, settings) == settings.mailgun_api_base  # the emulator wins
    us = email.SenderConfig("mailgun", "key-x", None, DOMAIN)
    assert email.mailgun_base(us, real) == "https://api.mailgun.net"
