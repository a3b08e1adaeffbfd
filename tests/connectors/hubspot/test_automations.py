"""Automations on HubSpot events: a won deal goes to a CSM, an owner change briefs the new owner."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from sqlalchemy import select

from app.automation import store
from app.core import caches, db, tenants
from app.core.models import ActionRun, CrmEvent, User
from tests.connectors.hubspot.test_connector import CLIENT_SECRET, Portal, emulator  # noqa: F401  (session fixture)
from tests.connectors.hubspot.test_install import signed

JORDAN = "+15555550123"


@pytest.fixture
def hs(emulator, settings, app, run_worker) -> Portal:  # noqa: F811
    portal = Portal(emulator, settings)
    with db.transaction() as s:
        t = s.get(type(portal.tenant), portal.tenant.id)
        t.crm_account_id = str(portal.id)
        casey = s.scalar(select(User).where(User.email == "casey@acme.example"))
        tenants.set_teams(s, casey, ["csm"])
    caches.clear_all()
    from app.automation import rules

    store.store_rules(portal.tenant.id, rules.default_source())
    portal.sdk.crm.properties.core_api.create(
        "deals",
        property_create={
            "name": "csm_owner_id",
            "label": "CSM",
            "type": "string",
            "fieldType": "text",
            "groupName": "dealinformation",
        },
    )
    return portal


def deal_won(portal: Portal, contact: str, csm: str | None, event_id: int) -> None:
    props = {
        "dealname": "Rivera renewal",
        "dealstage": "closedwon",
        "amount": "12000",
        "hubspot_owner_id": portal.owners["sam"],
    }
    if csm:
        props["csm_owner_id"] = csm
    deal = portal.sdk.crm.deals.basic_api.create(
        simple_public_object_input_for_create={"properties": props}
    ).id
    portal.sdk.crm.associations.v4.basic_api.create_default("deals", deal, "contacts", contact)
    body = json.dumps(
        [
            {
                "eventId": event_id,
                "subscriptionId": 1,
                "portalId": portal.id,
                "appId": 1,
                "occurredAt": int(time.time() * 1000),
                "subscriptionType": "deal.propertyChange",
                "attemptNumber": 0,
                "objectId": int(deal),
                "propertyName": "dealstage",
                "propertyValue": "closedwon",
                "changeSource": "CRM_UI",
            }
        ]
    )
    client = portal.app.test_client()
    for _ in range(2):  # HubSpot delivers twice: one event, one task
        r = client.post(
            "/webhooks/hubspot", data=body, headers=signed(body), base_url="https://switchboard.example.com"
        )
        assert r.status_code == 204


def tasks(portal: Portal) -> list[dict[str, Any]]:
    return portal.emu.objects(portal.id, "tasks")


def test_closed_won_goes_to_the_deal_s_csm(hs, run_worker):
    jordan = hs.add_contact(JORDAN, firstname="Jordan", lastname="Rivera")
    deal_won(hs, jordan, hs.owners["avery"], 9001)
    run_worker()
    [task] = tasks(hs)
    props = task["properties"]
    assert props["hs_task_subject"] == "Onboard Rivera renewal"
    assert props["hubspot_owner_id"] == hs.owners["avery"]  # crm:csm_owner_id on the deal
    assert "closed won (12000)" in props["hs_task_body"] and "Jordan Rivera" in props["hs_task_body"]
    assert props["hs_task_priority"] == "HIGH"
    assert set(hs.emu.associations(hs.id, "tasks", task["id"], "contacts")) == {jordan}
    assert len([r for r in _runs() if r.rule == "closed-won-handoff"]) == 1


def test_closed_won_without_a_csm_round_robins_the_csm_team(hs, run_worker):
    with db.transaction() as s:
        t = s.get(type(hs.tenant), hs.tenant.id)
        extra = tenants.add_user(
            s,
            t,
            name="Dana CSM",
            email="dana@acme.example",
            phone=None,
            crm_owner_id=hs.emu.add_owner(hs.id, email="dana@acme.example")["id"],
        )
        tenants.set_teams(s, extra, ["csm"])
    jordan = hs.add_contact(JORDAN)
    for n in range(4):
        deal_won(hs, jordan, None, 9100 + n)
    run_worker()
    owners = sorted(t["properties"]["hubspot_owner_id"] for t in tasks(hs))
    assert len(owners) == 4
    assert (
        owners.count(hs.owners["casey"]) == 2
        and owners.count(next(u for u in _users() if u.email == "dana@acme.example").crm_owner_id) == 2
    )


def test_owner_change_briefs_the_new_owner(hs, run_worker):
    jordan = hs.add_contact(JORDAN, firstname="Jordan", lastname="Rivera")
    hs.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    body = json.dumps(
        [
            {
                "eventId": 777,
                "subscriptionId": 3,
                "portalId": hs.id,
                "appId": 1,
                "occurredAt": int(time.time() * 1000),
                "subscriptionType": "contact.propertyChange",
                "attemptNumber": 0,
                "objectId": int(jordan),
                "propertyName": "hubspot_owner_id",
                "propertyValue": hs.owners["avery"],
                "changeSource": "CRM_UI",
            }
        ]
    )
    r = hs.app.test_client().post(
        "/webhooks/hubspot", data=body, headers=signed(body), base_url="https://switchboard.example.com"
    )
    assert r.status_code == 204
    run_worker()
    [task] = [t for t in tasks(hs) if t["properties"]["hs_task_subject"] == "You now own Jordan Rivera"]
    assert task["properties"]["hubspot_owner_id"] == hs.owners["avery"]
    assert "inbound sms received" in task["properties"]["hs_task_body"]
    with db.transaction() as s:
        assert s.scalar(select(CrmEvent.processed_at)) is not None


def _runs() -> list[ActionRun]:
    with db.transaction() as s:
        return list(s.scalars(select(ActionRun)))


def _users() -> list[User]:
    with db.transaction() as s:
        return list(s.scalars(select(User)))


def test_opt_out_is_mirrored_to_the_hubspot_contact(hs, run_worker):
    jordan = hs.add_contact(JORDAN)
    r = hs.twilio.post("/webhooks/twilio/sms", {**_fixture("sms__inbound"), "Body": "STOP"})
    assert r.status_code == 200
    run_worker()
    [contact] = [c for c in hs.emu.objects(hs.id, "contacts") if c["id"] == jordan]
    assert contact["properties"]["switchboard_sms_opt_out"] == "true"


def _fixture(name: str) -> dict[str, str]:
    from tests.signing import fixture_params

    return fixture_params(name)
