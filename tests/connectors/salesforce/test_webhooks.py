"""Outbound Messages: captured SOAP notifications posted as Salesforce sends them, stored once, acked."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from app.core import db
from app.core.models import CrmEvent, Tenant
from connectors.salesforce.webhooks import RECEIVER, org_id18
from tests.conftest import PUBLIC_BASE, count, make_tenant

FIXTURES = Path(__file__).parents[2] / "fixtures" / "salesforce"
ORG = "00D000000000001EAA"


def body(name: str) -> bytes:
    return (FIXTURES / f"{name}.xml").read_bytes()


def outbound(org: str, sobject: str, fields: dict[str, str], note: str = "04l000000000009AAA") -> bytes:
    """An Outbound Message like the captured one, for another object."""
    xml = "".join(f"<sf:{k}>{v}</sf:{k}>" for k, v in fields.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/'
        'envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><notifications '
        f'xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>{org}</OrganizationId><ActionId>'
        f'04k000000000002AAA</ActionId><SessionId xsi:nil="true"/><Notification><Id>{note}</Id><sObject '
        f'xsi:type="sf:{sobject}" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">{xml}</sObject>'
        "</Notification></notifications></soapenv:Body></soapenv:Envelope>"
    ).encode()


@pytest.fixture
def sf_tenant(app):
    t = make_tenant("acme", "AC" + "0" * 31 + "1", "0123456789abcdef0123456789abcdef")
    with db.transaction() as s:
        row = s.get(Tenant, t.id)
        row.crm, row.crm_account_id = "salesforce", ORG
    return t


def post(client, data: bytes, query: str = ""):
    return client.post(
        f"/webhooks/salesforce{query}",
        data=data,
        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
        base_url=PUBLIC_BASE,
    )


def test_opportunity_message_is_stored_once_and_acknowledged(client, sf_tenant):
    for _ in range(2):  # Salesforce redelivers until it gets the Ack
        r = post(client, body("outbound_message__opportunity"))
        assert r.status_code == 200 and r.mimetype == "text/xml"
        assert r.get_data() == (FIXTURES / "outbound_message__ack.xml").read_bytes()
    with db.transaction() as s:
        [event] = s.scalars(select(CrmEvent))
        assert (event.event_id, event.event_type, event.object_type) == (
            "04l000000000001AAA",
            "Opportunity.updated",
            "Opportunity",
        )
        assert (event.object_id, event.property_name, event.property_value) == (
            "006000000000001AAA",
            "StageName",
            "closedwon",
        )
        assert "SessionId" not in str(event.payload) and event.payload["fields"]["StageName"] == "Closed Won"
    assert RECEIVER.trigger_kind("Opportunity.updated", "StageName") == "crm.deal_stage_changed"


def test_wrong_org_is_403_and_nothing_is_stored(client, sf_tenant):
    r = post(client, body("outbound_message__opportunity").replace(ORG.encode(), b"00D000000000002EAA"))
    assert r.status_code == 403
    assert count(CrmEvent) == 0


def test_lead_created_and_owner_changes(client, sf_tenant):
    lead = {"Id": "00Q000000000001EAA", "OwnerId": "005000000000002AAA", "LastName": "Rivera"}
    assert post(client, outbound(ORG[:15], "Lead", lead, "04l000000000011AAA")).status_code == 200
    assert (
        post(client, outbound(ORG, "Lead", lead, "04l000000000012AAA"), "?field=OwnerId").status_code == 200
    )
    contact = {"Id": "003000000000001AAA", "OwnerId": "005000000000003AAA"}
    assert post(client, outbound(ORG, "Contact", contact, "04l000000000013AAA")).status_code == 200
    with db.transaction() as s:
        events = [(e.event_type, e.property_name, e.property_value) for e in s.scalars(select(CrmEvent))]
    assert events == [
        ("Lead.created", None, None),
        ("Lead.updated", "OwnerId", "005000000000002AAA"),
        ("Contact.updated", "OwnerId", "005000000000003AAA"),
    ]
    kinds = [RECEIVER.trigger_kind(t, p) for t, p, _ in events]
    assert kinds == ["contact.created", "crm.owner_changed", "crm.owner_changed"]


@pytest.mark.parametrize(
    "data",
    [
        b"not xml",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
        b'<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body/></Envelope>',
    ],
)
def test_malformed_messages_are_400(client, sf_tenant, data):
    assert post(client, data).status_code == 400
    assert count(CrmEvent) == 0


def test_fifteen_character_org_ids_become_eighteen():
    assert org_id18("00D000000000001") == ORG


def test_a_bad_notification_refuses_the_whole_message_naming_it(client, sf_tenant):
    # Salesforce resends the whole message until it is acked: storing the good half would be a partial write.
    good = outbound(ORG, "Lead", {"Id": "00Q000000000001EAA", "LastName": "Rivera"}, "04l000000000021AAA")
    second = b"<Notification><Id>04l000000000022AAA</Id></Notification>"  # no sObject
    two = good.replace(b"</Notification>", b"</Notification>" + second, 1)
    r = post(client, two)
    assert r.status_code == 400 and "Notification[1]" in r.get_data(as_text=True)
    assert count(CrmEvent) == 0
    no_org = good.replace(f"<OrganizationId>{ORG}</OrganizationId>".encode(), b"")
    r = post(client, no_org)
    assert r.status_code == 400 and "OrganizationId" in r.get_data(as_text=True)
    assert count(CrmEvent) == 0


def test_an_oversized_message_is_413_and_nothing_is_stored(client, sf_tenant):
    from app.core.settings import MAX_BODY_BYTES

    padding = b"<!-- " + b"x" * MAX_BODY_BYTES + b" -->"
    big = body("outbound_message__opportunity").replace(b"<soapenv:Body>", padding + b"<soapenv:Body>", 1)
    assert post(client, big).status_code == 413
    assert count(CrmEvent) == 0
