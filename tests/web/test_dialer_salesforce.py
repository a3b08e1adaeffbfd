"""The dialer on Salesforce, end to end: the rep clicks to call a Contact, Twilio bridges the call over real
HTTP, and the worker logs ONE Task on that Contact owned by the rep, with the rep's outcome as
CallDisposition and their notes in Description (simple-salesforce against the Salesforce emulator)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.connectors.salesforce.test_connector import (  # noqa: F401  (the sf_emulator fixture)
    CLIENT_ID,
    CLIENT_SECRET,
    Org,
    sf_emulator,
)
from tests.web.dialer_support import (  # noqa: F401  (the twilio_emu fixture)
    CONNECTED,
    JORDAN,
    LiveApp,
    delivered,
    interaction,
    ok,
    reset_emulator,
    session_for,
    twilio_emu_fixture,
)


@pytest.fixture
def org(sf_emulator, settings, app, twilio_emu) -> Any:  # noqa: F811
    org = Org(sf_emulator, settings)
    reset_emulator(twilio_emu)
    live = LiveApp(
        settings.with_(
            salesforce_login_url=sf_emulator.base_url,
            salesforce_client_id=CLIENT_ID,
            salesforce_client_secret=CLIENT_SECRET,
        ),
        twilio_emu,
    )
    yield org, live
    live.close()


def test_click_to_call_logs_one_task_with_the_outcome_and_notes(org, twilio_emu, run_worker):
    org, live = org
    jordan = org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
    headers = session_for(live.settings, org.tenant, "avery@acme.example")
    placed = ok(
        live.client.post("/api/v1/calls", json={"to": JORDAN, "contact_id": jordan}, headers=headers), 201
    )
    assert placed["contact"]["url"] == f"{org.emu.base_url}/lightning/r/{jordan}/view"
    delivered(twilio_emu.advance_call(placed["call_sid"], "completed", talk=42))
    body = {"outcome": CONNECTED, "notes": "Wants a demo on Friday"}
    ok(live.client.post(f"/api/v1/calls/{placed['id']}/disposition", json=body, headers=headers))
    run_worker()

    [task] = org.tasks()
    assert (task["WhoId"], task["OwnerId"]) == (
        jordan,
        org.owners["avery"],
    )  # the rep's, on the clicked contact
    assert task["CallDisposition"] == "Connected" and task["CallType"] == "Outbound"
    assert task["Description"].startswith("Wants a demo on Friday\n")
    assert task["CallDurationInSeconds"] == 42 and task["CallObject"] == placed["call_sid"]
    row = interaction(placed["id"])
    assert (row.sync_state, row.crm_record_id, row.crm_contact_id) == ("synced", task["Id"], jordan)
