"""POST /api/v1/emails: a rep's email through the tenant's provider (the SendGrid and Mailgun emulators over
real HTTP), the tenant's API key, 400 naming the field, 409 for an opted-out address, Idempotency-Key."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import select

from app.channels import email
from app.core import db
from app.core.models import Interaction, Tenant
from app.core.settings import Settings
from app.core.tenants import create_api_key
from emulators.mailgun import MailgunEmulator
from emulators.sendgrid import SendGridEmulator
from tests.channels.conftest import FROM, TO, configure, emails, outgoing, tenant_row
from tests.conftest import make_tenant

GOOD = {"to": TO, "subject": "Your quote #1042", "text": "Hi Jordan, here it is."}


@pytest.fixture
def key(tenant: Tenant) -> str:
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        return create_api_key(s, row)


def post(client: Any, key: str | None, body: Any, **headers: str) -> Any:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return client.post("/api/v1/emails", json=body, headers=headers)


def test_a_rep_sends_an_email(
    client: Any, key: str, sendgrid: dict[str, Any], sendgrid_emu: SendGridEmulator, run_worker: Any
) -> None:
    response = post(client, key, {**GOOD, "html": "<p>Hi Jordan</p>", "from": "SAM@acme.example"})
    assert response.status_code == 201, response.get_json()
    data = response.get_json()
    [msg] = sendgrid_emu.messages()
    assert (msg["from"], msg["from_name"], msg["to"]) == ("sam@acme.example", "Sam Patel", TO)
    assert msg["content"]["text/html"] == "<p>Hi Jordan</p>"
    assert data["switchboard_id"] == msg["custom_args"]["switchboard_id"] and data["recovered"] is False
    [row] = emails()
    assert row.id == data["id"] and row.status == "sent" and row.facts["email"]["source"] == "api"
    run_worker()
    with db.transaction() as s:
        synced = s.scalar(select(Interaction).where(Interaction.id == data["id"]))
        assert synced is not None and synced.sync_state == "synced" and synced.crm_contact_id is not None


def test_the_tenant_address_is_the_default_and_a_reply_threads(
    client: Any, key: str, mailgun: dict[str, Any], mailgun_emu: MailgunEmulator
) -> None:
    response = post(client, key, {**GOOD, "in_reply_to": "<CAF1XTURE2@mail.example.net>"})
    assert response.status_code == 201, response.get_json()
    [msg] = mailgun_emu.messages()
    assert msg["from"] == f'"acme" <{FROM}>'
    assert msg["headers"]["In-Reply-To"] == "<CAF1XTURE2@mail.example.net>"
    assert emails()[0].thread_key == "CAF1XTURE2@mail.example.net"


def test_an_idempotency_key_sends_once(
    client: Any, key: str, sendgrid: dict[str, Any], sendgrid_emu: SendGridEmulator
) -> None:
    first = post(client, key, GOOD, **{"Idempotency-Key": "console-42"})
    again = post(client, key, GOOD, **{"Idempotency-Key": "console-42"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["recovered"] is True and again.get_json()["id"] == first.get_json()["id"]
    assert len(sendgrid_emu.messages()) == 1
    assert post(client, key, GOOD, **{"Idempotency-Key": "console-43"}).status_code == 201
    assert len(sendgrid_emu.messages()) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([GOOD], "body"),
        ({k: v for k, v in GOOD.items() if k != "to"}, "to"),
        ({**GOOD, "to": "not an address"}, "to"),
        ({**GOOD, "to": "a@example.net, b@example.net"}, "to"),
        ({**GOOD, "subject": ""}, "subject"),
        ({**GOOD, "subject": "x" * 999}, "subject"),
        ({**GOOD, "text": 12}, "text"),
        ({k: v for k, v in GOOD.items() if k != "text"}, "text"),
        ({**GOOD, "html": ["<p>"]}, "html"),
        ({**GOOD, "text": "nul\x00"}, "text"),
        ({**GOOD, "from": "stranger@elsewhere.example"}, "from"),
        ({**GOOD, "contact_id": True}, "contact_id"),
    ],
)
def test_bad_input_is_400_naming_the_field(
    client: Any, key: str, sendgrid: dict[str, Any], sendgrid_emu: SendGridEmulator, body: Any, field: str
) -> None:
    response = post(client, key, body)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["field"] == field
    assert sendgrid_emu.messages() == [] and emails() == []


def test_a_bad_idempotency_key_is_400(client: Any, key: str, sendgrid: dict[str, Any]) -> None:
    response = post(client, key, GOOD, **{"Idempotency-Key": "x" * 201})
    assert response.status_code == 400 and response.get_json()["field"] == "Idempotency-Key"


def test_an_opted_out_address_is_409(
    client: Any,
    key: str,
    tenant: Tenant,
    sendgrid: dict[str, Any],
    sendgrid_emu: SendGridEmulator,
    settings: Settings,
    served: str,
) -> None:
    earlier = email.send(tenant_row(tenant), settings, outgoing(), source="api")
    url = f"{served}/webhooks/sendgrid/events?token={sendgrid['token']}"
    assert sendgrid_emu.emit(earlier.provider_message_id or "", "unsubscribe", url)["status"] == 200
    response = post(client, key, {**GOOD, "to": TO.upper()})
    assert response.status_code == 409
    data = response.get_json()
    assert data["opted_out"] is True and data["field"] == "to" and "unsubscribed" in data["error"]
    assert len(sendgrid_emu.messages()) == 1


def test_a_tenant_that_cannot_send_is_409(client: Any, key: str) -> None:
    response = post(client, key, GOOD)
    assert response.status_code == 409 and "set-sender" in response.get_json()["error"]


def test_the_provider_refusing_is_422_and_unavailable_is_503(
    client: Any, key: str, tenant: Tenant, sendgrid: dict[str, Any], sendgrid_emu: SendGridEmulator
) -> None:
    configure(tenant, "sendgrid", sendgrid_api_key="SG.revoked.key")
    refused = post(client, key, GOOD)
    assert refused.status_code == 422 and refused.get_json()["provider_status"] == 401
    configure(tenant, "sendgrid", sendgrid_api_key=sendgrid["api_key"])
    sendgrid_emu.fail_next(status=429)
    busy = post(client, key, GOOD)
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"


def test_no_key_or_another_tenants_key(client: Any, tenant: Tenant, sendgrid: dict[str, Any]) -> None:
    assert post(client, None, GOOD).status_code == 401
    other = make_tenant("globex", "AC00000000000000000000000000000002", "f" * 32, number="+15555550177")
    with db.transaction() as s:
        row = s.get(Tenant, other.id)
        assert row is not None
        other_key = create_api_key(s, row)
    # The other tenant has no provider: its key never reaches acme's SendGrid account.
    assert post(client, other_key, GOOD).status_code == 409


def test_two_requests_with_one_idempotency_key_at_once_send_once(
    app: Any, key: str, sendgrid: dict[str, Any], sendgrid_emu: SendGridEmulator
) -> None:
    sendgrid_emu.fail_next(status=202, after_accept=True, hang=1.5)  # the first request is slow to answer
    answers: list[Any] = []

    def first() -> None:
        answers.append(post(app.test_client(), key, GOOD, **{"Idempotency-Key": "console-7"}))

    thread = threading.Thread(target=first)
    thread.start()
    deadline = time.monotonic() + 10
    while not sendgrid_emu.messages() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = post(app.test_client(), key, GOOD, **{"Idempotency-Key": "console-7"})
    thread.join(10)
    assert sorted([answers[0].status_code, second.status_code]) == [200, 201]  # one sent, one found it
    assert len(sendgrid_emu.messages()) == 1 and len(emails()) == 1


def test_an_attempt_number_is_recorded_once(tenant: Tenant, sendgrid: dict[str, Any]) -> None:
    out = outgoing()
    assert email._record_attempt(tenant_row(tenant), "sendgrid", out, "1", "api")
    assert not email._record_attempt(tenant_row(tenant), "sendgrid", out, "1", "api")  # a concurrent caller
