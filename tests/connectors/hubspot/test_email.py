"""Emails to HubSpot: SendGrid's inbound email and delivery events, synced by the real worker through the real
hubspot-api-client to the contract emulator's /crm/v3/objects/emails."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from app.core import db, ledger, mail
from app.core.interactions import Event, InteractionData
from app.core.models import Interaction, Tenant
from connectors.base import ActivityWrite, CrmRef
from connectors.hubspot.connector import email_headers, email_properties
from tests.conftest import PUBLIC_BASE
from tests.connectors.hubspot.test_connector import Portal, emulator  # noqa: F401  (session fixture)
from tests.signing import SENDGRID_FIXTURES, SendGridSigner, multipart_fixture

JORDAN = "jordan.rivera@example.net"
SENT_ID = "FIXTUREmsg0000000001aQ"  # the send's X-Message-Id: sg_message_id up to its first dot
BATCH = json.loads((SENDGRID_FIXTURES / "events__batch.json").read_text())
MINE = [e for e in BATCH if e["sg_message_id"].startswith(SENT_ID + ".")]  # processed, delivered, open, click


@pytest.fixture
def portal(emulator, settings, app) -> Portal:  # noqa: F811
    return Portal(emulator, settings)


@pytest.fixture
def signer() -> SendGridSigner:
    return SendGridSigner()


@pytest.fixture
def route(portal: Portal, signer: SendGridSigner) -> str:
    """The HubSpot tenant's email route token; the test key pair's public half is its verification key."""
    with db.transaction() as s:
        row = s.get(Tenant, portal.tenant.id)
        assert row is not None
        mail.set_email_secret(s, row, "sendgrid_verification_key", signer.verification_key)
        return mail.new_route_token(s, row)


def post_inbound(portal: Portal, token: str, name: str = "inbound__parsed") -> int:
    body, content_type = multipart_fixture(SENDGRID_FIXTURES, name)
    client = portal.app.test_client()
    url = f"/webhooks/sendgrid/inbound?token={token}"
    return int(client.post(url, data=body, content_type=content_type, base_url=PUBLIC_BASE).status_code)


def post_events(portal: Portal, signer: SendGridSigner, token: str, events: list[dict[str, Any]]) -> int:
    body = json.dumps(events).encode()
    response = portal.app.test_client().post(
        f"/webhooks/sendgrid/events?token={token}",
        data=body,
        content_type="application/json;charset=utf-8",
        headers=signer.headers(body),
        base_url=PUBLIC_BASE,
    )
    return int(response.status_code)


def interactions() -> list[Interaction]:
    with db.transaction() as s:
        return list(s.scalars(select(Interaction).order_by(Interaction.id)))


def emails_of(portal: Portal, contact: str) -> set[str]:
    return set(portal.emu.associations(portal.id, "contacts", contact, "emails"))


def test_setup_creates_switchboard_id_on_emails(portal):
    prop = portal.sdk.crm.properties.core_api.get_by_name("emails", "switchboard_id")
    assert prop.has_unique_value is True
    assert portal.connector.setup() == []  # idempotent: everything exists already


@pytest.mark.parametrize("name", ["inbound__parsed", "inbound__raw"])
def test_inbound_email_lands_as_one_hubspot_email_on_the_contact(portal, route, run_worker, name):
    company = str(
        portal.sdk.crm.companies.basic_api.create(
            simple_public_object_input_for_create={"properties": {"name": "Rivera Roofing"}}
        ).id
    )
    jordan = portal.add_contact(None, email=JORDAN, associatedcompanyid=company)
    deals = []
    for deal_name in ("Renewal 2025", "Expansion 2026"):
        deal = str(
            portal.sdk.crm.deals.basic_api.create(
                simple_public_object_input_for_create={"properties": {"dealname": deal_name}}
            ).id
        )
        portal.sdk.crm.associations.v4.basic_api.create_default("deals", deal, "contacts", jordan)
        deals.append(deal)
    assert post_inbound(portal, route, name) == 200
    run_worker()
    [row] = interactions()
    assert row.sync_state == "synced", row.last_error
    [email] = portal.objects("emails")
    props = email["properties"]
    assert (row.crm_record_id, row.crm_contact_id) == (email["id"], jordan)
    assert row.match_reason == "email"
    assert props["switchboard_id"] == f"switchboard-interaction-{row.id}"
    assert props["hs_email_direction"] == "INCOMING_EMAIL" and props["hs_email_status"] == "SENT"
    assert props["hs_email_subject"] == "Re: Your quote #1042"
    assert props["hs_email_text"].startswith("Thanks, that works for us.")
    assert "wrote:" not in props["hs_email_text"]  # the new text only, as on every CRM
    headers = json.loads(props["hs_email_headers"])
    assert headers["from"]["email"] == JORDAN and headers["to"] == [{"email": "support@parse.example.com"}]
    # The emulator fills HubSpot's read-only sender and recipient properties from the headers.
    assert props["hs_email_from_email"] == JORDAN
    assert props["hs_email_to_email"] == "support@parse.example.com"
    assert props["hs_timestamp"].endswith("Z")
    # On the contact's timeline, its primary company's and its most recent deal's.
    assert set(portal.emu.associations(portal.id, "emails", email["id"], "contacts")) == {jordan}
    assert emails_of(portal, jordan) == {email["id"]}
    assert set(portal.emu.associations(portal.id, "emails", email["id"], "companies")) == {company}
    assert set(portal.emu.associations(portal.id, "emails", email["id"], "deals")) == {max(deals, key=int)}


def test_posting_the_inbound_email_twice_creates_one_hubspot_email(portal, route, run_worker):
    jordan = portal.add_contact(None, email=JORDAN)
    assert post_inbound(portal, route) == 200
    run_worker()
    assert post_inbound(portal, route) == 200  # SendGrid retries a POST it thinks failed
    run_worker()
    [row] = interactions()
    [email] = portal.objects("emails")
    assert row.sync_state == "synced" and row.crm_record_id == email["id"]
    assert emails_of(portal, jordan) == {email["id"]}
    # A worker that wrote the email but died before saving its id writes it again: upsert finds it.
    data = InteractionData.from_row(row)
    again = portal.connector.log_interaction(
        CrmRef("contact", jordan), data, external_id=f"switchboard-interaction-{row.id}"
    )
    assert again == CrmRef("email", email["id"])
    assert len(portal.objects("emails")) == 1


def test_an_unknown_sender_gets_a_contact_and_the_email(portal, route, run_worker):
    assert post_inbound(portal, route) == 200
    run_worker()
    [contact] = portal.objects("contacts")
    assert contact["properties"]["email"] == JORDAN
    [email] = portal.objects("emails")
    assert emails_of(portal, contact["id"]) == {email["id"]}


def test_delivery_events_update_the_same_hubspot_email(portal, route, signer, run_worker):
    from jobs.sync import drain

    jordan = portal.add_contact(None, email=JORDAN)
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
                "from_name": "Sam Patel",
                "to": "Jordan.Rivera@example.net",
                "cc": "avery@acme.example",
                "subject": "Your quote #1042",
                "text": "Your quote is ready.",
                "message_id": f"{SENT_ID}@geopod-ismtpd-8",
            },
            "email_status": {"status": "sent"},
        },
        {},
    )
    ledger.record(portal.tenant, sent)
    drain(portal.tenant.id)
    [email] = portal.objects("emails")
    props = email["properties"]
    assert props["hs_email_direction"] == "EMAIL" and props["hs_email_status"] == "SENT"
    assert props["hs_email_text"] == "Your quote is ready.\n[sent]"
    headers = json.loads(props["hs_email_headers"])
    assert headers["from"] == {"email": "sales@acme.example", "firstName": "Sam", "lastName": "Patel"}
    assert headers["cc"] == [{"email": "avery@acme.example"}] and headers["bcc"] == []
    assert props["hs_email_from_firstname"] == "Sam"
    assert emails_of(portal, jordan) == {email["id"]}

    assert post_events(portal, signer, route, MINE[:2]) == 200  # processed, delivered
    run_worker()
    [row] = interactions()
    assert row.status == "delivered" and row.sync_state == "synced", row.last_error
    [after] = portal.objects("emails")
    assert after["id"] == email["id"] == row.crm_record_id  # patched, not created again
    assert after["properties"]["hs_email_text"] == "Your quote is ready.\n[delivered]"
    assert after["properties"]["hs_email_subject"] == "Your quote #1042"
    assert after["updatedAt"] >= email["updatedAt"]
    assert emails_of(portal, jordan) == {email["id"]}


def test_an_email_still_sending_is_hubspot_s_sending_then_sent(portal):
    """The emulator takes SENDING (one of hs_email_status's options) and a later patch to SENT."""
    jordan = portal.add_contact(None, email=JORDAN)
    ref = portal.connector.log_interaction(
        CrmRef("contact", jordan), outbound(status="sending"), external_id="switchboard-interaction-7"
    )
    [email] = portal.objects("emails")
    assert ref == CrmRef("email", email["id"])
    assert email["properties"]["hs_email_status"] == "SENDING"
    assert email["properties"]["hs_email_text"].endswith("[sending]")
    portal.connector.update_interaction(ref, outbound(status="sent"))
    [after] = portal.objects("emails")
    assert after["id"] == email["id"] and after["properties"]["hs_email_status"] == "SENT"


def test_a_bounce_is_hubspot_s_bounced(portal):
    jordan = portal.add_contact(None, email=JORDAN)
    bounced = outbound(status="bounced", error_code="5.1.1")
    ref = portal.connector.log_interaction(CrmRef("contact", jordan), bounced, external_id="sw-email-1")
    [email] = portal.objects("emails")
    assert ref == CrmRef("email", email["id"])
    assert email["properties"]["hs_email_status"] == "BOUNCED"
    assert email["properties"]["hs_email_text"].endswith("[bounced error 5.1.1]")
    # Emails, calls and texts in one batch each go to their own object.
    text = replace(outbound(interaction_id=8), channel="sms", subject=None)
    results = portal.connector.write_activities(
        [
            ActivityWrite(CrmRef("contact", jordan), outbound(interaction_id=9), "sw-email-2"),
            ActivityWrite(CrmRef("contact", jordan), text, "sw-sms-1"),
        ]
    )
    assert [r.kind for r in results] == ["email", "sms"]  # type: ignore[union-attr]
    assert len(portal.objects("emails")) == 2 and len(portal.objects("communications")) == 1


# --- the mapping, without HubSpot --------------------------------------------------------------------


def outbound(interaction_id: int = 7, status: str = "sent", **kw: Any) -> InteractionData:
    base: dict[str, Any] = dict(
        id=interaction_id,
        tenant_id=1,
        channel="email",
        direction="outbound",
        status=status,
        party_phone=None,
        party_email=JORDAN,
        our_number=None,
        from_addr="sales@acme.example",
        to_addr=f"{JORDAN}, ops@rivera.example",
        occurred_at=datetime(2026, 11, 27, 12, 0, 5, 250000, tzinfo=UTC),
        body="Your quote is ready.",
        media=[{"name": "quote-1042.pdf", "type": "application/pdf", "size": 48213}],
        subject="Your quote #1042",
        from_name="Sam Patel",
        cc="avery@acme.example, casey@acme.example",
    )
    base.update(kw)
    return InteractionData(**base)


@pytest.mark.parametrize(
    ("status", "hubspot"),
    [
        ("sending", "SENDING"),
        ("sent", "SENT"),
        ("deferred", "SENDING"),
        ("delivered", "SENT"),
        ("opened", "SENT"),
        ("bounced", "BOUNCED"),
        ("failed", "FAILED"),
        ("complained", "SENT"),
    ],
)
def test_email_status_maps_to_hubspot_s_send_status(status, hubspot):
    props = email_properties(outbound(status=status), "x")
    assert props["hs_email_status"] == hubspot
    assert props["hs_email_text"].endswith(f"[{status}]")


def test_email_properties_and_headers():
    props = email_properties(outbound(owner_id="11111111"), "switchboard-interaction-7")
    assert props["switchboard_id"] == "switchboard-interaction-7"
    assert props["hs_timestamp"] == "2026-11-27T12:00:05.250Z"
    assert props["hs_email_text"] == "Your quote is ready.\n[attachment] quote-1042.pdf\n[sent]"
    assert props["hubspot_owner_id"] == "11111111"
    assert json.loads(props["hs_email_headers"]) == email_headers(outbound())
    assert email_headers(outbound()) == {
        "from": {"email": "sales@acme.example", "firstName": "Sam", "lastName": "Patel"},
        "to": [{"email": JORDAN}, {"email": "ops@rivera.example"}],
        "cc": [{"email": "avery@acme.example"}, {"email": "casey@acme.example"}],
        "bcc": [],
    }
    inbound = outbound(direction="inbound", status="received", from_addr=JORDAN, from_name=None, cc=None)
    props = email_properties(inbound, "y")
    assert props["hs_email_direction"] == "INCOMING_EMAIL" and props["hs_email_status"] == "SENT"
    assert "[received]" not in props["hs_email_text"]  # the status line is for emails we sent
    assert email_headers(inbound)["from"] == {"email": JORDAN} and email_headers(inbound)["cc"] == []
    assert "from" not in email_headers(outbound(from_addr=None))  # an email known only from its events
