"""The dialer inside HubSpot, end to end: the call the rep places from HubSpot's calling widget is logged on
the engagement HubSpot created itself (the calling SDK's createEngagement), never on a second call record,
with the rep's outcome (hs_call_disposition GUID) and notes (hs_call_body). Real hubspot-api-client against
the HubSpot emulator, the twilio SDK against the Twilio emulator, callbacks over real HTTP, a real worker.
And the Salesforce Task mapping of the rep's outcome and notes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.core.interactions import InteractionData
from connectors.salesforce.mapping import interaction_task
from tests.connectors.hubspot.test_connector import (  # noqa: F401  (the HubSpot emulator fixture)
    CLIENT_ID,
    CLIENT_SECRET,
    Portal,
    emulator,
    interactions,
)
from tests.web.dialer_support import (  # noqa: F401  (the twilio_emu fixture)
    CONNECTED,
    JORDAN,
    LiveApp,
    delivered,
    ok,
    reset_emulator,
    session_for,
    twilio_emu_fixture,
)


@pytest.fixture
def hub(emulator, settings, app, twilio_emu) -> Any:  # noqa: F811
    portal = Portal(emulator, settings)
    reset_emulator(twilio_emu)
    hubspot = settings.with_(
        hubspot_api_base=emulator.base_url, hubspot_client_id=CLIENT_ID, hubspot_client_secret=CLIENT_SECRET
    )
    live = LiveApp(hubspot, twilio_emu)
    yield portal, live
    live.close()


def create_engagement(portal: Portal, owner: str) -> str:
    """What HubSpot does when the widget reports outgoingCall({createEngagement: true})."""
    body = {
        "properties": {
            "hs_timestamp": datetime.now(UTC).isoformat(),
            "hs_call_status": "CONNECTING",
            "hs_call_direction": "OUTBOUND",
            "hs_call_to_number": JORDAN,
            "hubspot_owner_id": owner,
        }
    }
    return str(portal.sdk.crm.objects.calls.basic_api.create(simple_public_object_input_for_create=body).id)


def test_the_engagement_hubspot_created_is_the_one_record_of_the_call(hub, twilio_emu, run_worker):
    portal, live = hub
    jordan = portal.add_contact("+1 (555) 555-0123", owner="sam")
    headers = session_for(live.settings, portal.tenant, "avery@acme.example")
    placed = ok(
        live.client.post("/api/v1/calls", json={"to": JORDAN, "contact_id": jordan}, headers=headers), 201
    )
    assert placed["contact"]["url"] == f"https://app.hubspot.com/contacts/{portal.id}/record/0-1/{jordan}"
    delivered(twilio_emu.advance_call(placed["call_sid"], "answered"))
    run_worker()  # the sync holds the call: HubSpot's engagement id is on its way
    assert portal.objects("calls") == []

    engagement = create_engagement(portal, portal.owners["avery"])
    url = f"/api/v1/calls/{placed['id']}"
    assert (
        ok(live.client.post(f"{url}/engagement", json={"engagement_id": engagement}, headers=headers))[
            "engagement_id"
        ]
        == engagement
    )
    run_worker()
    delivered(twilio_emu.advance_call(placed["call_sid"], "completed", talk=42))
    body = {"outcome": CONNECTED, "notes": "Wants a demo on Friday"}
    ok(live.client.post(f"{url}/disposition", json=body, headers=headers))
    run_worker()

    [call] = portal.objects("calls")  # HubSpot's own engagement, updated; no second call record
    props = call["properties"]
    assert str(call["id"]) == engagement
    assert props["hs_call_disposition"] == CONNECTED and props["hs_call_body"] == "Wants a demo on Friday"
    assert props["hubspot_owner_id"] == portal.owners["avery"]  # the rep's, not the contact owner's
    assert (props["hs_call_status"], props["hs_call_duration"]) == ("COMPLETED", "42000")
    assert (props["hs_call_to_number"], props["hs_call_from_number"]) == (JORDAN, "+15555550100")
    [row] = interactions()
    assert "switchboard_id" not in props  # HubSpot's engagement is addressed by its own id
    assert set(portal.emu.associations(portal.id, "calls", engagement, "contacts")) == {jordan}
    assert (row.sync_state, row.crm_record_id, row.crm_contact_id) == ("synced", engagement, jordan)
    assert row.match_reason == "chosen by the rep in the dialer"
    # a late engagement id for another record is refused: the call has one
    response = live.client.post(f"{url}/engagement", json={"engagement_id": "1"}, headers=headers)
    assert response.status_code == 409


def test_a_call_expecting_no_engagement_is_logged_by_the_sync(hub, twilio_emu, run_worker):
    portal, live = hub
    portal.add_contact("+1 (555) 555-0123", owner="sam")
    headers = session_for(live.settings, portal.tenant, "avery@acme.example")
    body = {"to": JORDAN, "await_engagement": False}
    placed = ok(live.client.post("/api/v1/calls", json=body, headers=headers), 201)
    delivered(twilio_emu.advance_call(placed["call_sid"], "completed", talk=5))
    run_worker()
    [call] = portal.objects("calls")
    assert call["properties"]["hubspot_owner_id"] == portal.owners["avery"]
    assert call["properties"]["hs_call_disposition"] == CONNECTED  # answered: Connected by default


def test_salesforce_task_carries_the_outcome_label_and_notes():
    data = InteractionData(
        id=7,
        tenant_id=1,
        channel="call",
        direction="outbound",
        status="completed",
        party_phone=JORDAN,
        party_email=None,
        our_number="+15555550100",
        from_addr="+15555550100",
        to_addr=JORDAN,
        occurred_at=datetime(2026, 12, 2, 15, 0, tzinfo=UTC),
        duration_seconds=42,
        outcome=CONNECTED,
        outcome_label="Connected",
        notes="Wants a demo on Friday",
    )
    fields = {"Subject", "Description", "CallDisposition", "CallDurationInSeconds", "CallType", "Status"}
    task = interaction_task(data, who_id=None, account_id=None, fields=fields, external_id=None, create=True)
    assert task["CallDisposition"] == "Connected"
    assert task["Description"].startswith("Wants a demo on Friday\nOutbound call, completed, 42 s")
    assert (task["CallType"], task["CallDurationInSeconds"]) == ("Outbound", 42)


def test_an_incoming_call_from_a_known_number_pops_with_its_hubspot_link(hub, twilio_emu, run_worker):
    from tests.signing import FIXTURE_ACCOUNT, TwilioPoster

    portal, live = hub
    jordan = portal.add_contact("+1 (555) 555-0123", owner="sam")
    headers = session_for(live.settings, portal.tenant, "avery@acme.example")
    placed = ok(
        live.client.post("/api/v1/calls", json={"to": JORDAN, "await_engagement": False}, headers=headers),
        201,
    )
    delivered(twilio_emu.advance_call(placed["call_sid"], "completed", talk=5))
    run_worker()  # the sync matched Jordan by phone and cached his owner, Sam
    sam = session_for(live.settings, portal.tenant, "sam@acme.example")
    cursor = ok(live.client.get("/api/v1/rep/events", headers=sam))["cursor"]
    poster = TwilioPoster(live.client, live.base, twilio_emu.accounts[FIXTURE_ACCOUNT].auth_token)
    params = {
        "AccountSid": FIXTURE_ACCOUNT,
        "CallSid": "CA" + "6" * 32,
        "From": JORDAN,
        "To": "+15555550100",
        "CallStatus": "ringing",
        "Direction": "inbound",
    }
    assert poster.post("/webhooks/twilio/voice", params).status_code == 200
    [event] = ok(live.client.get(f"/api/v1/rep/events?after={cursor}", headers=sam))["events"]
    assert event["contact"]["url"] == f"https://app.hubspot.com/contacts/{portal.id}/record/0-1/{jordan}"
    assert event["from"] == JORDAN


def test_an_engagement_id_that_comes_late_moves_the_call_onto_it(hub, twilio_emu, run_worker):
    """The wait ran out and the sync logged the call itself; then the widget reports HubSpot's engagement:
    the call moves onto the engagement and our own record is archived, so it still has ONE record."""
    portal, live = hub
    jordan = portal.add_contact("+1 (555) 555-0123", owner="sam")
    headers = session_for(live.settings, portal.tenant, "avery@acme.example")
    body = {"to": JORDAN, "contact_id": jordan, "await_engagement": False}
    placed = ok(live.client.post("/api/v1/calls", json=body, headers=headers), 201)
    delivered(twilio_emu.advance_call(placed["call_sid"], "completed", talk=7))
    run_worker()
    [ours] = portal.objects("calls")
    engagement = create_engagement(portal, portal.owners["avery"])
    assert len(portal.objects("calls")) == 2
    url = f"/api/v1/calls/{placed['id']}"
    ok(live.client.post(f"{url}/engagement", json={"engagement_id": engagement}, headers=headers))
    ok(live.client.post(f"{url}/disposition", json={"outcome": CONNECTED, "notes": "Late"}, headers=headers))
    run_worker()
    [call] = portal.objects("calls")
    assert str(call["id"]) == engagement and str(ours["id"]) != engagement
    assert call["properties"]["hs_call_body"] == "Late" and call["properties"]["hs_call_duration"] == "7000"
    assert set(portal.emu.associations(portal.id, "calls", engagement, "contacts")) == {jordan}
    [row] = interactions()
    assert (row.sync_state, row.crm_record_id) == ("synced", engagement)
    ok(live.client.post(f"{url}/disposition", json={"outcome": CONNECTED, "notes": "Later"}, headers=headers))
    run_worker()  # later writes update the engagement; nothing is archived or created again
    [call] = portal.objects("calls")
    assert str(call["id"]) == engagement and call["properties"]["hs_call_body"] == "Later"
