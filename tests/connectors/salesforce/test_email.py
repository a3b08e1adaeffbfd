"""Emails to Salesforce: SendGrid's inbound email and a bounce of an email we sent, synced by the real worker
through simple-salesforce to the contract emulator, as Tasks with TaskSubtype=Email on the contact (matched
by address, case-insensitively) and its account."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from app.core import db, ledger, mail
from app.core.interactions import Event
from app.core.models import Interaction, Tenant
from tests.conftest import PUBLIC_BASE
from tests.connectors.salesforce.test_connector import Org, sf_emulator  # noqa: F401  (session fixture)
from tests.signing import SENDGRID_FIXTURES, SendGridSigner, multipart_fixture

SENT_ID = "FIXTUREmsg0000000002bQ"  # the send the fixture batch's bounce names
BATCH = json.loads((SENDGRID_FIXTURES / "events__batch.json").read_text())
BOUNCE = [e for e in BATCH if e["sg_message_id"].startswith(SENT_ID + ".") and e["event"] == "bounce"]


@pytest.fixture
def org(sf_emulator, settings, app) -> Org:  # noqa: F811
    return Org(sf_emulator, settings)


@pytest.fixture
def signer() -> SendGridSigner:
    return SendGridSigner()


@pytest.fixture
def route(org: Org, signer: SendGridSigner) -> str:
    with db.transaction() as s:
        row = s.get(Tenant, org.tenant.id)
        assert row is not None
        mail.set_email_secret(s, row, "sendgrid_verification_key", signer.verification_key)
        return mail.new_route_token(s, row)


def interactions() -> list[Interaction]:
    with db.transaction() as s:
        return list(s.scalars(select(Interaction).order_by(Interaction.id)))


def test_an_inbound_email_is_an_email_task_on_the_contact_and_its_account(org, route, run_worker):
    account = org.emu.insert(org.org, "Account", {"Name": "Rivera Roofing"})["Id"]
    jordan = org.emu.insert(
        org.org, "Contact", {"LastName": "Rivera", "Email": "Jordan.Rivera@Example.net", "AccountId": account}
    )["Id"]
    body, content_type = multipart_fixture(SENDGRID_FIXTURES, "inbound__parsed")
    client = org.app.test_client()
    for _ in range(2):  # SendGrid retries: still one Task
        response = client.post(
            f"/webhooks/sendgrid/inbound?token={route}",
            data=body,
            content_type=content_type,
            base_url=PUBLIC_BASE,
        )
        assert response.status_code == 200
        run_worker()
    [task] = org.tasks()
    [row] = interactions()
    assert row.sync_state == "synced", row.last_error
    assert task["TaskSubtype"] == "Email" and task["Subject"] == "Email: Re: Your quote #1042"
    assert task["WhoId"] == jordan and task["WhatId"] == account and task["Status"] == "Completed"
    assert task["Description"].startswith("Inbound email, received\nFrom jordan.rivera@example.net to ")
    assert row.body is not None and row.body in task["Description"]
    assert "wrote:" not in task["Description"]  # the new text, not the quoted history
    assert task["Switchboard_Id__c"] == f"switchboard-interaction-{row.id}"
    assert (row.crm_record_id, row.crm_contact_id) == (task["Id"], jordan)


def test_a_bounce_updates_the_sent_email_s_task(org, route, signer, run_worker):
    from jobs.sync import drain

    jordan = org.emu.insert(org.org, "Contact", {"LastName": "Rivera", "Email": BOUNCE[0]["email"]})["Id"]
    sent = Event(  # the email as sending recorded it
        "sendgrid",
        "send",
        f"send:{SENT_ID}",
        "email",
        SENT_ID,
        "",
        {
            "email": {
                "direction": "outbound",
                "from": "sales@acme.example",
                "to": BOUNCE[0]["email"],
                "subject": "Your quote #1043",
                "text": "Your quote is ready.",
            },
            "email_status": {"status": "sent"},
        },
        {},
    )
    ledger.record(org.tenant, sent)
    drain(org.tenant.id)
    [task] = org.tasks()
    assert task["TaskSubtype"] == "Email" and task["Subject"] == "Email: Your quote #1043"
    assert task["Description"].startswith("Outbound email, sent") and task["WhoId"] == jordan

    payload = json.dumps(BOUNCE).encode()
    response = org.app.test_client().post(
        f"/webhooks/sendgrid/events?token={route}",
        data=payload,
        content_type="application/json;charset=utf-8",
        headers=signer.headers(payload),
        base_url=PUBLIC_BASE,
    )
    assert response.status_code == 200
    run_worker()
    [row] = interactions()
    assert row.status == "bounced" and row.sync_state == "synced", row.last_error
    [after] = org.tasks()
    assert after["Id"] == task["Id"] == row.crm_record_id  # updated, not created again
    assert after["Description"].startswith("Outbound email, bounced")
    assert after["TaskSubtype"] == "Email"  # create-only: set at creation, not sent again
    assert mail.opted_out(org.tenant.id, BOUNCE[0]["email"]) is not None
