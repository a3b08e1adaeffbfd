"""Read API, issue 10: NUL bytes are a 400 naming the parameter, contacts are paged, automation steps and
opt-outs are visible. Real webhooks, a real RQ worker, the Twilio emulator; SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app.core import db, optouts
from app.core.models import Interaction, Tenant
from connectors.local import LocalConnector
from tests.automation.test_runs import (  # noqa: F401  (fixtures: steps, world, twilio_api)
    JORDAN,
    STRANGER,
    Steps,
    steps,
    twilio_api,
    world,
)
from tests.web.test_api import api, bad_param, contact_ids, ids, jordan_id, new_key, ok, text_from

SMS = "/webhooks/twilio/sms"

NUL_PARAMS = [
    ("/api/v1/interactions", "phone"),
    ("/api/v1/interactions", "email"),
    ("/api/v1/interactions", "channel"),
    ("/api/v1/interactions", "status"),
    ("/api/v1/interactions", "crm_state"),
    ("/api/v1/interactions", "since"),
    ("/api/v1/interactions", "limit"),
    ("/api/v1/interactions", "cursor"),
    ("/api/v1/interactions", "anything"),
    ("/api/v1/interactions/1", "status"),
    ("/api/v1/contacts", "phone"),
    ("/api/v1/contacts", "email"),
    ("/api/v1/contacts", "limit"),
    ("/api/v1/contacts", "cursor"),
    ("/api/v1/contacts/1", "email"),
    ("/api/v1/automations", "state"),
    ("/api/v1/automations", "rule"),
    ("/api/v1/automations", "cursor"),
    ("/api/v1/automations/1", "rule"),
]


@pytest.fixture
def key(tenant: Tenant) -> str:
    return new_key(tenant)


@pytest.mark.parametrize(("path", "param"), NUL_PARAMS)
@pytest.mark.parametrize("value", ["%00", "a%00b", "jordan%00@example.net"])
def test_a_nul_byte_in_any_parameter_is_a_400_naming_it(
    client: Any, key: str, tenant: Tenant, path: str, param: str, value: str
) -> None:
    response = client.get(f"{path}?{param}={value}", headers={"Authorization": f"Bearer {key}"})
    bad_param(response, param)
    assert "NUL" in response.get_json()["error"]


def test_a_nul_byte_in_a_parameter_name_or_a_repeated_value(client: Any, key: str, tenant: Tenant) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    bad_param(client.get("/api/v1/interactions?sta%00tus=x", headers=headers), "status")
    bad_param(client.get("/api/v1/contacts?email=a@b.c&email=%00", headers=headers), "email")


def test_without_a_key_a_nul_byte_is_still_a_401(client: Any, tenant: Tenant) -> None:
    assert client.get("/api/v1/interactions?status=%00").status_code == 401


# --- contacts are paged --------------------------------------------------------------------------------


def test_contacts_are_paged_with_a_cursor(client: Any, key: str, tenant: Tenant) -> None:
    crm = LocalConnector(tenant)
    for n in range(6):
        crm.add_contact(f"Person {chr(65 + n)}", [f"+1555555020{n}"], None, None)
    everyone = contact_ids(tenant.id)
    assert len(everyone) == 7
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 3}
        if cursor:
            query["cursor"] = cursor
        body = ok(api(client, "/api/v1/contacts", key, **query))
        seen += ids(body)
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert (pages, seen) == (3, everyone)  # oldest first, each contact once
    full = ok(api(client, "/api/v1/contacts", key, limit=7))
    assert ids(full) == everyone and full["next_cursor"] is None
    assert ok(api(client, "/api/v1/contacts", key))["next_cursor"] is None  # 50 by default
    assert ids(ok(api(client, "/api/v1/contacts", key, cursor=str(everyone[-1])))) == []
    assert ids(ok(api(client, "/api/v1/contacts", key, cursor="9" * 30))) == []
    for bad in ("abc", "-1", "1.5", "\u0661"):  # ARABIC-INDIC DIGIT ONE is a digit, not ours
        bad_param(api(client, "/api/v1/contacts", key, cursor=bad), "cursor")
    # filters and the cursor combine
    body = ok(api(client, "/api/v1/contacts", key, phone="(555) 555-0123", cursor="0"))
    assert ids(body) == [jordan_id(tenant.id)] and body["next_cursor"] is None


def test_contacts_of_another_tenant_never_appear_on_any_page(client: Any, key: str, tenant: Tenant) -> None:
    from tests.conftest import make_tenant

    other = make_tenant("globex", "AC" + "e" * 32, "e" * 32, number="+15555550300")
    LocalConnector(other).add_contact("Other Person", ["+15555550301"], None, None)
    seen: list[int] = []
    cursor = "0"
    while cursor:
        body = ok(api(client, "/api/v1/contacts", key, limit=1, cursor=cursor))
        seen += ids(body)
        cursor = body["next_cursor"]
    assert seen == contact_ids(tenant.id)
    assert not set(seen) & set(contact_ids(other.id))


def test_contacts_show_first_and_last_name(client: Any, key: str, tenant: Tenant) -> None:
    jordan = ok(api(client, f"/api/v1/contacts/{jordan_id(tenant.id)}", key))
    assert (jordan["first_name"], jordan["last_name"]) == ("Jordan", "Rivera")


# --- opt-outs on the contact ---------------------------------------------------------------------------


def test_a_contact_that_texted_stop_shows_sms_opt_out(
    client: Any, key: str, tenant: Tenant, twilio: Any, run_worker: Any
) -> None:
    jordan = jordan_id(tenant.id)
    assert ok(api(client, f"/api/v1/contacts/{jordan}", key))["sms_opt_out"] is False
    assert twilio.fixture(SMS, "sms__inbound_stop").status_code == 200  # STOP from Jordan
    run_worker()
    detail = ok(api(client, f"/api/v1/contacts/{jordan}", key))
    assert detail["sms_opt_out"] is True
    assert detail["sms_opted_out_numbers"] == [JORDAN]
    listed = {c["id"]: c for c in ok(api(client, "/api/v1/contacts", key))["data"]}
    assert listed[jordan]["sms_opt_out"] is True
    assert all(c["sms_opt_out"] is False for cid, c in listed.items() if cid != jordan)
    text_from(twilio, JORDAN, 0x55, body="START")  # and back in
    run_worker()
    assert ok(api(client, f"/api/v1/contacts/{jordan}", key))["sms_opt_out"] is False


def test_opt_outs_of_another_tenant_do_not_show(client: Any, key: str, tenant: Tenant) -> None:
    from tests.conftest import make_tenant

    other = make_tenant("globex", "AC" + "e" * 32, "e" * 32, number="+15555550300")
    optouts.set_opt_out(other.id, JORDAN, True, "admin")
    assert ok(api(client, f"/api/v1/contacts/{jordan_id(tenant.id)}", key))["sms_opt_out"] is False
    other_key = new_key(other)
    assert ok(api(client, f"/api/v1/contacts/{jordan_id(other.id)}", other_key))["sms_opt_out"] is True


# --- automation steps ----------------------------------------------------------------------------------


def test_an_interaction_lists_the_steps_it_triggered(steps: Steps) -> None:  # noqa: F811
    client, acme = steps.world.app.test_client(), steps.world.tenant
    key = new_key(acme)
    ran = ok(api(client, f"/api/v1/interactions/{steps.stranger_call}", key))["automations"]
    assert [(a["rule"], a["step"], a["action"], a["state"], a["reason"]) for a in ran] == [
        ("missed-call-text", 2, "send_sms", "done", None),
        ("missed-call-text", 3, "create_task", "done", "assigned to the contact's owner"),
    ]
    assert all(a["due_at"] and isinstance(a["id"], int) for a in ran)
    waiting = ok(api(client, f"/api/v1/interactions/{steps.jordan_call}", key))["automations"]
    assert [(a["action"], a["state"]) for a in waiting] == [
        ("send_sms", "scheduled"),
        ("create_task", "scheduled"),
    ]
    # interactions that fired nothing say so
    with db.transaction() as s:
        sent = s.scalar(
            select(Interaction.id).where(
                Interaction.tenant_id == acme.id,
                Interaction.channel == "sms",
                Interaction.direction == "outbound",
            )
        )
    assert ok(api(client, f"/api/v1/interactions/{sent}", key))["automations"] == []
    # the list of interactions stays as it was (no per-row step queries)
    assert "automations" not in ok(api(client, "/api/v1/interactions", key))["data"][0]


def test_automations_list_newest_first_with_filters_and_cursor(steps: Steps) -> None:  # noqa: F811
    client, acme = steps.world.app.test_client(), steps.world.tenant
    key = new_key(acme)
    body = ok(api(client, "/api/v1/automations", key))
    assert ids(body) == steps.ids(acme.id) and body["next_cursor"] is None
    first = body["data"][0]
    assert {"id", "rule", "step", "action", "state", "due_at", "reason", "trigger", "party"} <= set(first)
    assert set(first["trigger"]) == {"kind", "ref", "at"}
    assert set(first["party"]) == {"phone", "email"}

    scheduled = ok(api(client, "/api/v1/automations", key, state="scheduled"))
    assert {s["state"] for s in scheduled["data"]} == {"scheduled"} and len(scheduled["data"]) == 3
    done = ok(api(client, "/api/v1/automations", key, state="done", rule="missed-call-text"))
    assert {(s["rule"], s["state"], s["party"]["phone"]) for s in done["data"]} == {
        ("missed-call-text", "done", STRANGER)
    }
    assert ok(api(client, "/api/v1/automations", key, rule="nope"))["data"] == []

    seen, cursor = [], None
    while True:
        query: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = ok(api(client, "/api/v1/automations", key, **query))
        seen += ids(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == steps.ids(acme.id)

    bad_param(api(client, "/api/v1/automations", key, state="pending"), "state")
    bad_param(api(client, "/api/v1/automations", key, limit="0"), "limit")
    bad_param(api(client, "/api/v1/automations", key, limit="201"), "limit")
    bad_param(api(client, "/api/v1/automations", key, cursor="x"), "cursor")
    assert ids(ok(api(client, "/api/v1/automations", key, cursor="9" * 30))) == steps.ids(acme.id)


def test_one_automation_step(steps: Steps) -> None:  # noqa: F811
    client, acme = steps.world.app.test_client(), steps.world.tenant
    key = new_key(acme)
    run_id = steps.step(acme.id, "missed-call-text", "send_sms", "done")
    one = ok(api(client, f"/api/v1/automations/{run_id}", key))
    assert (one["id"], one["action"], one["state"]) == (run_id, "send_sms", "done")
    assert one["trigger"]["ref"] == f"interaction:{steps.stranger_call}"
    for missing in ("999999999", "9" * 30):
        response = api(client, f"/api/v1/automations/{missing}", key)
        assert response.status_code == 404 and response.is_json


def test_automations_are_tenant_scoped(steps: Steps) -> None:  # noqa: F811
    client = steps.world.app.test_client()
    acme, globex = steps.world.tenant, steps.other_tenant
    key, other_key = new_key(acme), new_key(globex)
    theirs = steps.ids(globex.id)
    assert ids(ok(api(client, "/api/v1/automations", other_key))) == theirs
    ours = ids(ok(api(client, "/api/v1/automations", key, limit=200)))
    assert ours and not set(ours) & set(theirs)
    for run_id in theirs:
        response = api(client, f"/api/v1/automations/{run_id}", key)
        assert response.status_code == 404
        assert "globex" not in response.get_data(as_text=True)
    assert api(client, f"/api/v1/interactions/{steps.other_call}", key).status_code == 404
    mine = ok(api(client, f"/api/v1/interactions/{steps.other_call}", other_key))["automations"]
    assert {a["id"] for a in mine} <= set(theirs) and mine
    assert api(client, "/api/v1/automations", None).status_code == 401
