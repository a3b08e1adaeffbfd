"""HubSpot end to end: the real hubspot-api-client against the contract emulator, through the real worker."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from hubspot import HubSpot
from sqlalchemy import select

from app.cli import simulate
from app.core import db
from app.core.models import Interaction, Tenant, User
from app.web import create_app
from connectors import CrmProvider
from connectors.base import CrmRef, Party
from connectors.hubspot.connector import HubSpotConnector, national_digits
from emulators.hubspot import HubSpotEmulator
from tests.conftest import PUBLIC_BASE, make_tenant
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN, TwilioPoster

CLIENT_ID, CLIENT_SECRET = "test-client-id", "11111111-2222-3333-4444-555555555555"
JORDAN = "+15555550123"


@pytest.fixture(scope="session")
def emulator() -> Any:
    emu = HubSpotEmulator()
    emu.base_url = emu.start()
    yield emu
    emu.stop()


class Portal:
    """A HubSpot portal in the emulator, the tenant bound to it, and helpers to look inside."""

    def __init__(self, emu: HubSpotEmulator, settings: Any) -> None:
        emu.reset()
        self.emu = emu
        info = emu.create_portal(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        self.id, self.token = info["portal_id"], info["token"]
        self.owners = {
            who: emu.add_owner(self.id, email=f"{who}@acme.example", first_name=who.title())["id"]
            for who in ("avery", "sam", "casey")
        }
        self.app = create_app(
            settings.with_(
                hubspot_api_base=emu.base_url,
                hubspot_client_id=CLIENT_ID,
                hubspot_client_secret=CLIENT_SECRET,
            )
        )
        self.tenant = make_tenant("acme", FIXTURE_ACCOUNT, FIXTURE_TOKEN, crm="hubspot")
        with db.transaction() as s:
            t = s.get(Tenant, self.tenant.id)
            t.crm_account_id = str(self.id)
            t.crm_secrets = f'{{"type": "private_app", "access_token": "{self.token}"}}'
            for user in s.scalars(select(User).where(User.tenant_id == t.id)):
                user.crm_owner_id = self.owners[user.email.split("@")[0]]
            self.tenant = t
        self.connector = HubSpotConnector(self.tenant)
        self.connector.setup()
        self.sdk = HubSpot(access_token=self.token, host=emu.base_url)
        self.twilio = TwilioPoster(self.app.test_client(), PUBLIC_BASE, FIXTURE_TOKEN)

    def add_contact(self, phone: str | None, owner: str = "sam", **props: str) -> str:
        body = {"properties": {"phone": phone, "hubspot_owner_id": self.owners[owner], **props}}
        return str(self.sdk.crm.contacts.basic_api.create(simple_public_object_input_for_create=body).id)

    def objects(self, kind: str) -> list[dict[str, Any]]:
        return self.emu.objects(self.id, kind)

    def requests(self) -> int:
        return int(self.emu.stats(self.id)["total"])


@pytest.fixture
def portal(emulator, settings, app) -> Portal:
    return Portal(emulator, settings)


def interactions() -> list[Interaction]:
    with db.transaction() as s:
        return list(s.scalars(select(Interaction).order_by(Interaction.id)))


def test_answered_call_is_logged_once_with_hubspot_fields(portal, run_worker):
    jordan = portal.add_contact("+1 (555) 555-0123", owner="sam")
    scenario = simulate.inbound_call(
        FIXTURE_ACCOUNT, JORDAN, "+15555550100", "+15555550198", "answered", talk=95
    )
    for post in scenario.deliveries():
        assert portal.twilio.post(post.path, post.params).status_code in (200, 204)
        run_worker()  # sync after every callback: later ones patch the same HubSpot call
    [call] = portal.objects("calls")
    props = call["properties"]
    assert props["hs_call_status"] == "COMPLETED" and props["hs_call_direction"] == "INBOUND"
    assert props["hs_call_duration"] == "95000"  # milliseconds
    assert props["hs_call_recording_url"].endswith(".mp3")
    # Nothing cached about this number yet, so the call rang the default user (the web request never asks
    # HubSpot); the activity is owned by who took the call.
    assert props["hubspot_owner_id"] == portal.owners["avery"]
    assert props["hs_call_from_number"] == JORDAN and props["hs_call_to_number"] == "+15555550100"
    assert props["switchboard_id"] == f"switchboard-interaction-{interactions()[0].id}"
    assert set(portal.emu.associations(portal.id, "calls", call["id"], "contacts")) == {jordan}
    [row] = interactions()
    assert (row.sync_state, row.crm_record_id, row.crm_contact_id) == ("synced", call["id"], jordan)


def test_next_call_from_a_matched_number_rings_the_contact_owner(portal, run_worker):
    portal.add_contact("+1 (555) 555-0123", owner="sam")
    portal.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()  # the text's sync matched Jordan and cached his owner
    r = portal.twilio.fixture("/webhooks/twilio/voice", "voice__incoming")
    assert "<Number" in r.get_data(as_text=True) and "+15555550198</Number>" in r.get_data(as_text=True)


@pytest.mark.parametrize("stored", ["+1 (555) 555-0123", "5555550123", "+15555550123", "555.555.0123"])
def test_phone_matches_whatever_format_hubspot_stores(portal, stored):
    contact = portal.add_contact(stored)
    match = portal.connector.find_contact(Party(phone=JORDAN))
    assert match is not None and match.ref.id == contact


def test_mobile_number_matches_too(portal):
    contact = portal.add_contact(None, mobilephone="(555) 555-0123")
    assert portal.connector.find_contact(Party(phone=JORDAN)).ref.id == contact


def test_shared_number_goes_to_the_most_recently_modified_and_says_why(portal, run_worker):
    first = portal.add_contact("+15555550123", owner="sam")
    second = portal.add_contact("555-555-0123", owner="avery")
    portal.sdk.crm.contacts.basic_api.update(
        first, simple_public_object_input={"properties": {"firstname": "J"}}
    )
    portal.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [row] = interactions()
    assert row.crm_contact_id == first and first != second
    assert row.match_reason == "phone +15555550123 shared by 2 contacts; chose the most recently modified"
    [text] = portal.objects("communications")
    assert set(portal.emu.associations(portal.id, "communications", text["id"], "contacts")) == {first}


def test_unknown_number_creates_one_contact(portal, run_worker):
    for body in ("first", "second"):
        post = simulate.inbound_sms(FIXTURE_ACCOUNT, "+15555550111", "+15555550100", body).first[0]
        portal.twilio.post(post.path, post.params)
    run_worker()
    contacts = portal.objects("contacts")
    assert [c["properties"]["phone"] for c in contacts] == ["+15555550111"]
    assert {r.crm_contact_id for r in interactions()} == {contacts[0]["id"]}
    assert len(portal.objects("communications")) == 2


class CrashAfterCreate(HubSpotConnector):
    """Dies right after HubSpot created the activity, before Switchboard could save its id."""

    crashes = 1

    def write_activities(self, items):  # type: ignore[no-untyped-def]
        results = super().write_activities(items)
        if CrashAfterCreate.crashes:
            CrashAfterCreate.crashes -= 1
            raise ConnectionResetError("worker died after HubSpot's 201")
        return results


CRASHY = CrmProvider(
    name="hubspot-crashy",
    label="HubSpot",
    connector="tests.connectors.hubspot.test_connector:CrashAfterCreate",
)


def test_crash_between_create_and_save_does_not_duplicate(portal, run_worker):
    import connectors

    connectors.register("hubspot-crashy", "tests.connectors.hubspot.test_connector:CRASHY")
    CrashAfterCreate.crashes = 1
    try:
        with db.transaction() as s:
            s.get(Tenant, portal.tenant.id).crm = "hubspot-crashy"
        portal.add_contact(JORDAN)
        portal.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
        with pytest.raises(ConnectionResetError):
            from jobs.sync import drain

            drain(portal.tenant.id)  # the crash escapes the job: RQ would record it, the row stays pending
        assert len(portal.objects("communications")) == 1
        assert interactions()[0].sync_state == "pending"
        run_worker()  # the retry
    finally:
        connectors.REGISTRY.pop("hubspot-crashy")
    assert len(portal.objects("communications")) == 1  # upsert on switchboard_id found the first one
    assert interactions()[0].sync_state == "synced"


def test_backlog_uses_batch_endpoints(portal, run_worker):
    numbers = [f"+1555555{2000 + i:04d}" for i in range(150)]
    for number in numbers[:50]:
        portal.add_contact(number)
    before = portal.requests()
    for i in range(300):
        post = simulate.inbound_sms(FIXTURE_ACCOUNT, numbers[i % 150], "+15555550100", f"text {i}").first[0]
        assert portal.twilio.post(post.path, post.params).status_code == 200
    run_worker()
    used = portal.requests() - before
    assert len(portal.objects("communications")) == 300
    assert len(portal.objects("contacts")) == 150
    assert all(r.sync_state == "synced" for r in interactions())
    # 2 searches + 1 contact upsert + 3 x (upsert + associate) = 9 requests for 300 interactions
    assert used <= 10, portal.emu.stats(portal.id)["by_route"]


def test_429_storm_every_interaction_logged_once(portal, run_worker):
    portal.emu.set_limits(portal.id, ten_second_max=4, search_per_second=1)
    for i in range(30):
        post = simulate.inbound_sms(FIXTURE_ACCOUNT, f"+1555555{3000 + i:04d}", "+15555550100", "hi").first[0]
        portal.twilio.post(post.path, post.params)
    run_worker()
    assert len(portal.objects("communications")) == 30
    assert all(r.sync_state == "synced" for r in interactions())
    stats = portal.emu.stats(portal.id)
    assert stats["rate_limited"] <= 3  # learned from X-HubSpot-RateLimit-Max after the first answers


def test_permanent_hubspot_error_fails_the_row_with_hubspot_s_message(portal, run_worker):
    portal.emu.fail_next(
        "/crm/v3/objects/communications/batch/upsert",
        status=400,
        count=1,
        body={"status": "error", "message": "Property values were not valid", "category": "VALIDATION_ERROR"},
    )
    portal.add_contact(JORDAN)
    portal.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [row] = interactions()
    assert row.sync_state == "failed" and "HTTP 400: Property values were not valid" in row.last_error


def test_5xx_is_retried(portal, run_worker):
    portal.emu.fail_next("/crm/v3/objects/communications/batch/upsert", status=503, count=1)
    portal.add_contact(JORDAN)
    portal.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [row] = interactions()
    assert (row.sync_state, row.attempts) == ("synced", 2)
    assert len(portal.objects("communications")) == 1


def test_task_is_idempotent_and_associated(portal):
    from connectors.base import TaskSpec

    contact = portal.add_contact(JORDAN)
    spec = TaskSpec(
        subject="Onboard Jordan", body="Deal won", assignee_owner_id=portal.owners["casey"], priority="high"
    )
    first = portal.connector.create_task(CrmRef("contact", contact), spec, external_id="rule-1-deal-9")
    again = portal.connector.create_task(CrmRef("contact", contact), spec, external_id="rule-1-deal-9")
    assert first == again
    [task] = portal.objects("tasks")
    assert task["properties"]["hs_task_priority"] == "HIGH"
    assert task["properties"]["hubspot_owner_id"] == portal.owners["casey"]
    assert set(portal.emu.associations(portal.id, "tasks", task["id"], "contacts")) == {contact}


def test_national_digits_is_what_hubspot_searches():
    assert national_digits("+14155550100") == "4155550100"
    assert national_digits("+442079460000") == "2079460000"


# --- OAuth tokens ------------------------------------------------------------------------------------------


def oauth_tenant(portal: Portal) -> dict[str, Any]:
    """Install through the real token endpoint and store the tokens on the tenant."""
    from connectors.hubspot.auth import oauth_secrets

    code = portal.emu.issue_code(portal.id, CLIENT_ID, f"{PUBLIC_BASE}/oauth/hubspot/callback")
    tokens = portal.sdk.oauth.tokens_api.create(
        grant_type="authorization_code",
        code=code,
        redirect_uri=f"{PUBLIC_BASE}/oauth/hubspot/callback",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    with db.transaction() as s:
        s.get(Tenant, portal.tenant.id).crm_secrets = oauth_secrets(tokens)
    return {"access": tokens.access_token, "refresh": tokens.refresh_token}


def test_expired_token_is_refreshed_exactly_once_across_workers(portal, settings):
    import json

    from app.core.queue import redis_for
    from connectors.hubspot.auth import HubSpotTokens

    tokens = oauth_tenant(portal)
    with db.transaction() as s:  # our copy says it expires in a minute: due for refresh
        t = s.get(Tenant, portal.tenant.id)
        secrets = json.loads(t.crm_secrets)
        secrets["expires_at"] -= 1800 - 60
        t.crm_secrets = json.dumps(secrets)
    before = portal.emu.stats()["by_route"].get("POST /oauth/v1/token", 0)
    got: list[str] = []
    settings = portal.app.extensions["switchboard"]
    store = [HubSpotTokens(portal.tenant.id, settings, redis_for(settings)) for _ in range(6)]
    threads = [threading.Thread(target=lambda h=h: got.append(h.access_token())) for h in store]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert portal.emu.stats()["by_route"].get("POST /oauth/v1/token", 0) - before == 1
    assert len(set(got)) == 1 and got[0] != tokens["access"]


def test_token_expired_at_hubspot_is_refreshed_and_the_request_retried(portal, run_worker):
    tokens = oauth_tenant(portal)
    portal.emu.expire_token(tokens["access"])  # HubSpot says 401 although our clock says it is fresh
    portal.add_contact(JORDAN)
    portal.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    assert interactions()[0].sync_state == "synced"


def test_revoked_refresh_token_needs_reinstall(portal, run_worker):
    tokens = oauth_tenant(portal)
    portal.emu.expire_token(tokens["access"])
    portal.emu.revoke_refresh_token(tokens["refresh"])
    portal.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [row] = interactions()
    assert row.sync_state == "failed" and "install the app again" in row.last_error
    with db.transaction() as s:
        t = s.get(Tenant, portal.tenant.id)
        assert t.crm_status == "needs_reinstall"


# --- owners and setup through the CLI ----------------------------------------------------------------------


def test_sync_owners_maps_users_by_email(portal):
    from app.cli import main

    with db.transaction() as s:
        for user in s.scalars(select(User).where(User.tenant_id == portal.tenant.id)):
            user.crm_owner_id = None
    result = portal.app.test_cli_runner().invoke(main, ["hubspot", "sync-owners", "acme"])
    assert result.exit_code == 0, result.output
    with db.transaction() as s:
        mapped = {
            u.email: u.crm_owner_id for u in s.scalars(select(User).where(User.tenant_id == portal.tenant.id))
        }
    assert mapped == {f"{w}@acme.example": portal.owners[w] for w in ("avery", "sam", "casey")}


def test_contact_deleted_in_hubspot_is_matched_again(portal, run_worker):
    jordan = portal.add_contact(JORDAN)
    portal.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()  # Jordan is matched, and cached
    portal.sdk.crm.contacts.basic_api.archive(jordan)  # someone deletes (or merges) Jordan in HubSpot
    portal.twilio.fixture("/webhooks/twilio/sms", "sms__inbound_mms")
    run_worker()
    rows = interactions()
    assert [r.sync_state for r in rows] == ["synced", "synced"]
    [new_contact] = portal.objects("contacts")  # the archived one is gone; a new one was created
    assert rows[1].crm_contact_id == new_contact["id"] != jordan
    assert rows[1].match_reason == "no match; contact created"
    texts = {t["properties"]["switchboard_id"]: t["id"] for t in portal.objects("communications")}
    second = texts[f"switchboard-interaction-{rows[1].id}"]
    assert set(portal.emu.associations(portal.id, "communications", second, "contacts")) == {
        new_contact["id"]
    }


def test_activity_lands_on_the_contact_s_primary_company_too(portal, run_worker):
    company = portal.sdk.crm.companies.basic_api.create(
        simple_public_object_input_for_create={
            "properties": {"name": "Rivera Roofing", "domain": "rivera.example"}
        }
    ).id
    contact = portal.add_contact(JORDAN, associatedcompanyid=str(company))
    portal.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [text] = portal.objects("communications")
    assert set(portal.emu.associations(portal.id, "communications", text["id"], "contacts")) == {contact}
    assert set(portal.emu.associations(portal.id, "communications", text["id"], "companies")) == {
        str(company)
    }


def test_activity_lands_on_the_contact_s_most_recent_deal(portal, run_worker):
    contact = portal.add_contact(JORDAN)
    deals = []
    for name in ("Renewal 2025", "Expansion 2026"):
        deal = portal.sdk.crm.deals.basic_api.create(
            simple_public_object_input_for_create={
                "properties": {"dealname": name, "dealstage": "appointmentscheduled"}
            }
        ).id
        portal.sdk.crm.associations.v4.basic_api.create_default("deals", deal, "contacts", contact)
        deals.append(str(deal))
    portal.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [text] = portal.objects("communications")
    assert set(portal.emu.associations(portal.id, "communications", text["id"], "deals")) == {
        max(deals, key=int)
    }
