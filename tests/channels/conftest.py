"""Shared set-up for the email tests (the Twilio tests here request none of it): both send-API
emulators on 127.0.0.1, the app's settings pointed at them, the app served over real HTTP for the
emulators' event callbacks, and a tenant configured to send."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from app.channels import email
from app.core import db, mail
from app.core.models import Interaction, Tenant
from app.core.settings import Settings
from emulators.base import ServedApp
from emulators.mailgun import MailgunEmulator
from emulators.sendgrid import SendGridEmulator

TO = "jordan.rivera@example.net"
FROM = "sam@acme.example"
DOMAIN = "mg.acme.example"


@pytest.fixture(scope="module")
def sendgrid_emu() -> Iterator[SendGridEmulator]:
    with SendGridEmulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def mailgun_emu() -> Iterator[MailgunEmulator]:
    with MailgunEmulator() as emu:
        yield emu


@pytest.fixture
def settings(settings: Settings, sendgrid_emu: SendGridEmulator, mailgun_emu: MailgunEmulator) -> Settings:
    """The conftest's settings, with both send APIs pointed at their emulators."""
    sendgrid_emu.reset()
    mailgun_emu.reset()
    return settings.with_(sendgrid_api_base=sendgrid_emu.base_url, mailgun_api_base=mailgun_emu.base_url)


class _Served(ServedApp):
    name = "switchboard-under-test"

    def __init__(self, app: Any) -> None:
        super().__init__()
        self.app = app


@pytest.fixture
def served(app: Any) -> Iterator[str]:
    """The app on 127.0.0.1, for the emulators' event callbacks."""
    with _Served(app) as server:
        yield server.base_url


def configure(tenant: Tenant, provider: str, **keys: str) -> str:
    """Set the tenant up to send through `provider`; returns its email route token."""
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        mail.set_email_secret(s, row, "send_provider", provider)
        for name, value in keys.items():
            mail.set_email_secret(s, row, name, value)
        return mail.new_route_token(s, row)


@pytest.fixture
def sendgrid(tenant: Tenant, sendgrid_emu: SendGridEmulator, settings: Settings) -> dict[str, Any]:
    account = sendgrid_emu.create_account()
    token = configure(
        tenant,
        "sendgrid",
        sendgrid_api_key=account["api_key"],
        sendgrid_verification_key=account["verification_key"],
        email_from=FROM,
    )
    return {**account, "token": token}


@pytest.fixture
def mailgun(tenant: Tenant, mailgun_emu: MailgunEmulator, settings: Settings) -> dict[str, Any]:
    domain = mailgun_emu.create_domain(DOMAIN)
    token = configure(
        tenant,
        "mailgun",
        mailgun_api_key=domain["api_key"],
        mailgun_signing_key=domain["signing_key"],
        mailgun_domain=DOMAIN,
        email_from=FROM,
    )
    return {**domain, "token": token}


def outgoing(**changes: Any) -> email.Outgoing:
    values: dict[str, Any] = {
        "switchboard_id": email.new_id(),
        "to": TO,
        "from_addr": FROM,
        "from_name": "Sam Patel",
        "subject": "Your quote #1042",
        "text": "Hi Jordan, your quote is attached.",
        "html": "<p>Hi Jordan, your quote is attached.</p>",
    }
    values.update(changes)
    return email.Outgoing(**values)


def tenant_row(tenant: Tenant) -> Tenant:
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        _ = row.email_secrets
        s.expunge(row)
    return row


def emails() -> list[Interaction]:
    with db.transaction() as s:
        return list(
            s.scalars(select(Interaction).where(Interaction.channel == "email").order_by(Interaction.id))
        )
