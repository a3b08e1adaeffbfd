"""Emails to Salesforce: SendGrid's inbound email and a bounce of an email we sent, synced by the real worker
through simple-salesforce to the contract emulator: as EmailMessage records (ToIds the contact matched by
address, case-insensitively; RelatedToId its account) where the org has EmailMessage, exactly once under
retries and crashes, and as Tasks with TaskSubtype=Email in an org without it."""

from __future__ import annotations

import dataclasses
import json

import pytest
from sqlalchemy import select

from app.core import db, ledger, mail
from app.core.interactions import Event
from app.core.models import Interaction, Tenant
from connectors.base import CrmRef
from tests.conftest import PUBLIC_BASE
from tests.connectors.salesforce.test_connector import Org, sf_emulator  # noqa: F401  (session fixture)
from tests.signing import SENDGRID_FIXTURES, SendGridSigner, multipart_fixture

SENT_ID = "FIXTUREmsg0000000002bQ"  # the send the fixture batch's bounce names
BATCH = json.loads((SENDGRID_FIXTURES / "events__batch.json").read_text())
BOUNCE = [e for e in BATCH if e["sg_message_id"].startswith(SENT_ID + ".") and e["event"] == "bounce"]


@pytest.fixture
def org(sf_emulator, settings, app) -> Org:  # noqa: F811
    return Org(sf_emulator, settings, email_message=False)  # no Enhanced Email: the Task fallback


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
    record_sent(org)
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
    _assert_bounce_on(org, jordan)


def _assert_bounce_on(org: Org, contact_id: str) -> None:
    """The bounce is visible on the Contact itself, as Salesforce shows one (its email-health fields)."""
    [contact] = [c for c in org.emu.records(org.org, "Contact") if c["Id"] == contact_id]
    assert contact["EmailBouncedReason"].startswith("bounced")
    assert contact["EmailBouncedDate"]
    assert not contact.get("HasOptedOutOfEmail")  # a bounce is not the recipient's opt-out


# --- orgs with EmailMessage (Enhanced Email) ---------------------------------------------------------


def enhanced(sf_emulator, settings, **org) -> Org:  # noqa: F811
    return Org(sf_emulator, settings, **org)


def record_sent(org: Org) -> None:
    """The email as sending recorded it (the send the fixture bounce names)."""
    ledger.record(
        org.tenant,
        Event(
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
        ),
    )


def post_bounce(org: Org, route: str, signer: SendGridSigner) -> None:
    payload = json.dumps(BOUNCE).encode()
    response = org.app.test_client().post(
        f"/webhooks/sendgrid/events?token={route}",
        data=payload,
        content_type="application/json;charset=utf-8",
        headers=signer.headers(payload),
        base_url=PUBLIC_BASE,
    )
    assert response.status_code == 200


def email_messages(org: Org) -> list[dict]:
    return org.emu.records(org.org, "EmailMessage")


@pytest.fixture
def em_org(sf_emulator, settings, app) -> Org:  # noqa: F811
    return enhanced(sf_emulator, settings)


@pytest.fixture
def em_route(em_org: Org, signer: SendGridSigner) -> str:
    with db.transaction() as s:
        row = s.get(Tenant, em_org.tenant.id)
        assert row is not None
        mail.set_email_secret(s, row, "sendgrid_verification_key", signer.verification_key)
        return mail.new_route_token(s, row)


def test_an_inbound_email_is_one_email_message_to_the_contact_related_to_its_account(
    em_org, em_route, run_worker
):
    org = em_org
    account = org.emu.insert(org.org, "Account", {"Name": "Rivera Roofing"})["Id"]
    jordan = org.emu.insert(
        org.org, "Contact", {"LastName": "Rivera", "Email": "Jordan.Rivera@Example.net", "AccountId": account}
    )["Id"]
    body, content_type = multipart_fixture(SENDGRID_FIXTURES, "inbound__parsed")
    client = org.app.test_client()
    for _ in range(2):  # SendGrid retries: still one EmailMessage
        response = client.post(
            f"/webhooks/sendgrid/inbound?token={em_route}",
            data=body,
            content_type=content_type,
            base_url=PUBLIC_BASE,
        )
        assert response.status_code == 200
        run_worker()
    [row] = interactions()
    assert row.sync_state == "synced", row.last_error
    [em] = email_messages(org)
    assert org.tasks() == []  # not the Task fallback
    assert em["Incoming"] is True and em["Status"] == "0"  # New
    assert em["ToIds"] == [jordan] and em["RelatedToId"] == account
    assert em["Subject"] == "Re: Your quote #1042" and em["FromAddress"] == "jordan.rivera@example.net"
    assert row.body is not None and em["TextBody"].startswith(row.body)
    assert "wrote:" not in em["TextBody"]
    assert em["Switchboard_Id__c"] == f"switchboard-interaction-{row.id}"
    assert em["ThreadIdentifier"] == row.thread_key and em["MessageDate"]
    assert (row.crm_record_id, row.crm_contact_id) == (em["Id"], jordan)


@pytest.mark.parametrize("external_id", [True, False], ids=["upsert", "lookup-fallback"])
def test_a_bounce_updates_the_sent_email_message_and_opts_the_address_out(
    sf_emulator,  # noqa: F811
    settings,
    app,
    signer,
    run_worker,
    external_id,
):
    from jobs.sync import drain

    org = enhanced(sf_emulator, settings, external_id=external_id)
    with db.transaction() as s:
        row = s.get(Tenant, org.tenant.id)
        mail.set_email_secret(s, row, "sendgrid_verification_key", signer.verification_key)
        route = mail.new_route_token(s, row)
    jordan = org.emu.insert(org.org, "Contact", {"LastName": "Rivera", "Email": BOUNCE[0]["email"]})["Id"]
    record_sent(org)
    drain(org.tenant.id)
    [em] = email_messages(org)
    assert em["Incoming"] is False and em["Status"] == "3" and em["ToIds"] == [jordan]  # Sent
    assert em["RelatedToId"] is None  # the contact has no account
    assert em["Subject"] == "Your quote #1043" and em["ToAddress"] == BOUNCE[0]["email"]

    post_bounce(org, route, signer)
    run_worker()
    [row] = interactions()
    assert row.status == "bounced" and row.sync_state == "synced", row.last_error
    [after] = email_messages(org)
    assert after["Id"] == em["Id"] == row.crm_record_id  # updated, not created again
    assert after["LastModifiedDate"] > em["LastModifiedDate"]
    assert after["Status"] == "3" and after["ToIds"] == [jordan]  # create-only: not sent again
    assert org.tasks() == []
    assert mail.opted_out(org.tenant.id, BOUNCE[0]["email"]) is not None
    _assert_bounce_on(org, jordan)


@pytest.mark.parametrize("external_id", [True, False], ids=["upsert", "lookup-fallback"])
def test_a_crash_between_create_and_save_leaves_one_email_message(
    sf_emulator,  # noqa: F811
    settings,
    app,
    external_id,
):
    import connectors
    from jobs.sync import drain
    from tests.connectors.salesforce.test_connector import CrashAfterCreate

    org = enhanced(sf_emulator, settings, external_id=external_id)
    jordan = org.emu.insert(org.org, "Contact", {"LastName": "Rivera", "Email": BOUNCE[0]["email"]})["Id"]
    connectors.register("salesforce-crashy", "tests.connectors.salesforce.test_connector:CRASHY")
    CrashAfterCreate.crashes = 1
    try:
        with db.transaction() as s:
            s.get(Tenant, org.tenant.id).crm = "salesforce-crashy"
        record_sent(org)
        with pytest.raises(ConnectionResetError):
            drain(org.tenant.id)  # Salesforce created the EmailMessage, we never saved its id
        assert len(email_messages(org)) == 1
        assert interactions()[0].sync_state == "pending"
        drain(org.tenant.id)  # the retry
    finally:
        connectors.REGISTRY.pop("salesforce-crashy")
    [em] = email_messages(org)  # the upsert on Switchboard_Id__c (or the MessageIdentifier lookup) found it
    assert em["ToIds"] == [jordan] and em["Status"] == "3"
    [row] = interactions()
    assert row.sync_state == "synced" and row.crm_record_id == em["Id"]


def test_a_lead_s_email_message_has_no_related_record_and_the_org_fact_is_learned_once(em_org):
    from connectors.base import ActivityWrite
    from tests.connectors.test_contract import call

    org = em_org
    lead = org.add_lead("+14155550100")
    email = dataclasses.replace(
        call(1),
        channel="email",
        direction="inbound",
        status="received",
        subject="Hi",
        from_addr="lead@example.net",
        body="Hello there",
    )
    first = org.connector
    [ref] = first.write_activities(
        [ActivityWrite(CrmRef("contact", lead), email, "switchboard-interaction-1")]
    )
    [em] = email_messages(org)
    assert ref.id == em["Id"] and em["ToIds"] == [lead] and em["RelatedToId"] is None
    before = len(org.emu.requests(org.org))
    second = org.connector  # another worker: the describe and the org's EmailMessage fact come from Redis
    mixed = [
        ActivityWrite(CrmRef("contact", lead), email, "switchboard-interaction-1", CrmRef("email", em["Id"])),
        ActivityWrite(CrmRef("contact", lead), call(2), "switchboard-interaction-2"),
    ]
    results = second.write_activities(mixed)
    assert [r.id for r in results] == [em["Id"], org.tasks()[0]["Id"]]
    paths = [(r["method"], r["path"].split("/v62.0/")[1]) for r in org.emu.requests(org.org)[before:]]
    assert paths == [  # one collection per kind; EmailMessage's describe and availability came from Redis
        ("PATCH", "composite/sobjects/EmailMessage/Switchboard_Id__c"),
        ("GET", "sobjects/Task/describe/"),
        ("PATCH", "composite/sobjects/Task/Switchboard_Id__c"),
    ]
    assert len(email_messages(org)) == 1


@pytest.mark.parametrize("email_message", [True, False], ids=["enhanced-email", "no-email-message"])
def test_setup_creates_the_external_id_on_email_message_where_the_org_has_it(
    sf_emulator,  # noqa: F811
    settings,
    app,
    email_message,
):
    org = enhanced(sf_emulator, settings, external_id=False, email_message=email_message)
    made, refused = org.connector.setup()
    assert refused == [] and "Task.Switchboard_Id__c" not in made and "Activity.Switchboard_Id__c" in made
    assert ("EmailMessage.Switchboard_Id__c" in made) is email_message
    connector = org.connector
    assert connector.has_email_message() is email_message
    if email_message:
        assert "Switchboard_Id__c" in connector.fields("EmailMessage")


def test_an_email_first_written_as_a_task_is_updated_as_that_task(em_org):
    """An org that turned Enhanced Email on after we wrote the email as a Task: its later events update
    that Task, with no EmailMessage made beside it."""
    from connectors.base import ActivityWrite
    from tests.connectors.test_contract import call

    org = em_org
    jordan = org.add_contact("Jordan Rivera", ["+14155550100"], None, "sam")
    email = dataclasses.replace(
        call(1), channel="email", direction="outbound", status="bounced", subject="Quote", body="Ready"
    )
    task = org.emu.insert(
        org.org,
        "Task",
        {
            "Subject": "Email: Quote",
            "WhoId": jordan,
            "TaskSubtype": "Email",
            "Switchboard_Id__c": "switchboard-interaction-1",  # as the Task path wrote it
        },
    )
    [ref] = org.connector.write_activities(
        [
            ActivityWrite(
                CrmRef("contact", ""), email, "switchboard-interaction-1", CrmRef("email", task["Id"])
            )
        ]
    )
    assert ref.id == task["Id"] and email_messages(org) == []
    [after] = org.tasks()
    assert after["Description"].startswith("Outbound email, bounced")


@pytest.mark.parametrize(
    ("who", "direction", "status", "marked"),
    [
        ("003000000000001AAA", "outbound", "complained", {"HasOptedOutOfEmail": True}),
        ("00Q000000000001AAA", "outbound", "unsubscribed", {"HasOptedOutOfEmail": True}),
        ("00Q000000000001AAA", "outbound", "failed", {"EmailBouncedReason": "failed: 550"}),
        ("003000000000001AAA", "outbound", "delivered", None),
        ("003000000000001AAA", "inbound", "received", None),
        ("001000000000001AAA", "outbound", "bounced", None),  # an Account: no person to mark
    ],
)
def test_which_emails_mark_the_person_and_how(who, direction, status, marked):
    from datetime import UTC, datetime

    from app.core.interactions import InteractionData
    from connectors.salesforce import mapping

    data = InteractionData(
        id=1, tenant_id=1, channel="email", direction=direction, status=status, party_phone=None,
        party_email="jo@example.net", our_number=None, from_addr=None, to_addr=None,
        occurred_at=datetime(2026, 12, 2, 15, 0, tzinfo=UTC), error_code="550",
    )  # fmt: skip
    record = mapping.email_trouble(data, who)
    if marked is None:
        assert record is None
    else:
        assert record is not None and record["id"] == who
        assert record["attributes"]["type"] == ("Contact" if who.startswith("003") else "Lead")
        assert {k: record[k] for k in marked} == marked
        if "EmailBouncedReason" in marked:
            assert record["EmailBouncedDate"] == "2026-12-02T15:00:00.000+0000"
