"""Salesforce end to end: the connector on the real simple-salesforce against the contract emulator, through
the real worker: matching, Lead-vs-Contact policy, exactly once, collections, the API budget, sessions."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from simple_salesforce import Salesforce
from sqlalchemy import select

from app.cli import simulate
from app.core import db
from app.core.models import Interaction, Tenant, User
from app.web import create_app
from connectors import CrmProvider
from connectors.base import ContactGone, CrmRef, Party, PermanentError, RetryableError
from connectors.salesforce.auth import oauth_secrets, session_secrets
from connectors.salesforce.connector import SalesforceConnector
from connectors.salesforce.mapping import phone_terms, sosl_escape
from emulators.salesforce import SalesforceEmulator, http_session
from jobs import sync
from tests.conftest import PUBLIC_BASE, _flush, make_tenant
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN, TwilioPoster

CLIENT_ID, CLIENT_SECRET = "sf-client-id", "sf-client-secret"
JORDAN = "+15555550123"
CALLBACK = f"{PUBLIC_BASE}/oauth/salesforce/callback"


@pytest.fixture(scope="session")
def sf_emulator() -> Any:
    emu = SalesforceEmulator()
    emu.start()
    yield emu
    emu.stop()


class SalesforceHarness:
    """A Salesforce org in the emulator bound to a tenant (for the contract suite and these tests)."""

    def __init__(self, emu: SalesforceEmulator, tenant: Tenant, name: str = "acme", **org: Any) -> None:
        info = emu.create_org(**org)
        self.emu, self.org, self.token = emu, info["org_id"], info["token"]
        self.owners = {
            w: emu.add_user(self.org, email=f"{w}@{name}.example", first_name=w.title(), last_name="Rep")[
                "Id"
            ]
            for w in ("avery", "sam", "casey")
        }
        with db.transaction() as s:
            t = s.get(Tenant, tenant.id)
            t.crm, t.crm_account_id = "salesforce", self.org
            t.crm_secrets = session_secrets(self.token, emu.base_url)
            for user in s.scalars(select(User).where(User.tenant_id == t.id)):
                user.crm_owner_id = self.owners[user.email.split("@")[0]]
            self.tenant = t
        self.sf = Salesforce(
            instance_url=emu.base_url,
            session_id=self.token,
            session=http_session(emu.base_url),
            version="62.0",
        )

    def add_contact(self, name: str, phones: list[str], email: str | None, owner: str) -> str:
        first, _, last = name.partition(" ")
        values = {
            "FirstName": first,
            "LastName": last or first,
            "Email": email,
            "OwnerId": self.owners[owner],
        }
        values.update(zip(("Phone", "MobilePhone"), phones, strict=False))
        return str(self.emu.insert(self.org, "Contact", {k: v for k, v in values.items() if v})["Id"])

    def add_lead(self, phone: str, owner: str = "sam", **values: Any) -> str:
        base = {
            "LastName": "Lead",
            "Company": "Rivera Logistics",
            "Phone": phone,
            "OwnerId": self.owners[owner],
        }
        return str(self.emu.insert(self.org, "Lead", {**base, **values})["Id"])

    def tasks(self) -> list[dict[str, Any]]:
        return self.emu.records(self.org, "Task")

    def activity(self, ref: CrmRef) -> tuple[str, int | None]:
        [task] = [t for t in self.tasks() if t["Id"] == ref.id]
        status = {"Ringing": "ringing", "Answered": "completed"}[task["CallDisposition"]]
        return status, task["CallDurationInSeconds"] or None

    def activities_for(self, interaction_id: int) -> int:
        key = f"switchboard-interaction-{interaction_id}"
        return sum(1 for t in self.tasks() if t.get("Switchboard_Id__c") == key)

    def touch(self, contact_id: str) -> None:
        self.sf.Contact.update(contact_id, {"FirstName": "Touched"})

    def other_tenant(self) -> Any:
        return SalesforceHarness(
            self.emu, make_tenant("globex", "AC" + "b" * 32, "b" * 32, number="+15555550200"), "globex"
        )


class Org(SalesforceHarness):
    """The fixture tenant on a Salesforce org, with the app and a Twilio poster."""

    def __init__(self, emu: SalesforceEmulator, settings: Any, **org: Any) -> None:
        emu.reset()
        emu.create_client(CLIENT_ID, CLIENT_SECRET, CALLBACK)
        self.app = create_app(
            settings.with_(
                salesforce_login_url=emu.base_url,
                salesforce_client_id=CLIENT_ID,
                salesforce_client_secret=CLIENT_SECRET,
            )
        )
        super().__init__(emu, make_tenant("acme", FIXTURE_ACCOUNT, FIXTURE_TOKEN, crm="salesforce"), **org)
        self.twilio = TwilioPoster(self.app.test_client(), PUBLIC_BASE, FIXTURE_TOKEN)

    @property
    def connector(self) -> SalesforceConnector:
        with db.transaction() as s:
            return SalesforceConnector(s.get(Tenant, self.tenant.id))

    def set(self, **options: Any) -> None:
        with db.transaction() as s:
            t = s.get(Tenant, self.tenant.id)
            t.settings = {**(t.settings or {}), **options}

    def requests(self) -> int:
        return int(self.emu.stats(self.org)["total"])


@pytest.fixture
def org(sf_emulator, settings, app) -> Org:
    return Org(sf_emulator, settings)


def interactions() -> list[Interaction]:
    with db.transaction() as s:
        return list(s.scalars(select(Interaction).order_by(Interaction.id)))


# --- matching ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stored", ["+1 (555) 555-0123", "5555550123", "+15555550123", "555.555.0123"])
def test_phone_matches_whatever_format_salesforce_stores(org, stored):
    contact = org.add_contact("Jordan Rivera", [stored], None, "sam")
    match = org.connector.find_contact(Party(phone=JORDAN))
    assert match is not None and match.ref.id == contact and match.owner_id == org.owners["sam"]


def test_sosl_searches_digits_and_escapes_reserved_characters(org):
    assert phone_terms("+14155550100") == ["4155550100", "14155550100"]
    assert sosl_escape("jo+rivera-1@example.net") == r"jo\+rivera\-1@example.net"
    org.add_contact("Jo Rivera", [], "jo+rivera-1@example.net", "avery")
    assert org.connector.find_contact(Party(email="Jo+Rivera-1@example.net")) is not None
    searched = [r["path"] for r in org.emu.requests(org.org) if r["path"].endswith("/search/")]
    assert searched  # the search went through SOSL, escaped (the emulator refuses unescaped + and -)


def test_contact_beats_lead_by_default_and_the_tenant_can_prefer_leads(org):
    lead = org.add_lead("555-555-0123", owner="avery")
    contact = org.add_contact("Jordan Rivera", ["(555) 555-0123"], None, "sam")
    match = org.connector.find_contact(Party(phone=JORDAN))
    assert match.ref.id == contact
    assert "shared by 2 contacts (1 Contact, 1 Lead); chose the preferred Contact" in match.reason
    _flush(org.connector.redis)  # the match cache, not this session's claim on the database
    org.set(salesforce_match_prefer="Lead")
    assert org.connector.find_contact(Party(phone=JORDAN)).ref.id == lead


def test_one_search_holds_as_many_numbers_as_find_allows(org):
    numbers = [f"+1555{3000000 + i:07d}" for i in range(300)]
    known = {n: org.add_contact(f"Person {i}", [n], None, "sam") for i, n in enumerate(numbers[::60])}
    found = org.connector.find_contacts([Party(phone=n) for n in numbers])
    assert {p.phone: m.ref.id for p, m in found.items()} == known
    searches = [r for r in org.emu.requests(org.org) if r["route"] == "GET search/"]
    assert len(searches) == 3  # about 130 numbers (two terms each) per FIND {...} of at most 4,000 characters


def test_converted_leads_are_not_matched(org):
    org.add_lead("5555550123", IsConverted=True)
    assert org.connector.find_contact(Party(phone=JORDAN)) is None


def test_unknown_number_becomes_a_lead_or_a_contact_as_the_tenant_says(org, run_worker):
    post = simulate.inbound_sms(FIXTURE_ACCOUNT, "+15555550111", "+15555550100", "hi").first[0]
    org.twilio.post(post.path, post.params)
    run_worker()
    [lead] = org.emu.records(org.org, "Lead")
    assert lead["Phone"] == "+15555550111" and lead["Company"] == "[not provided]"
    assert lead["Switchboard_Id__c"] == "switchboard-contact-+15555550111"
    [task] = org.tasks()
    assert task["WhoId"] == lead["Id"] and task["WhatId"] is None and task["Subject"].startswith("SMS from")
    org.set(salesforce_create_as="Contact")
    post = simulate.inbound_sms(FIXTURE_ACCOUNT, "+15555550112", "+15555550100", "hi").first[0]
    org.twilio.post(post.path, post.params)
    run_worker()
    assert [c["Phone"] for c in org.emu.records(org.org, "Contact")] == ["+15555550112"]


# --- activities ----------------------------------------------------------------------------------------


def test_answered_call_is_a_call_task_on_the_contact_and_its_account(org, run_worker):
    account = org.emu.insert(org.org, "Account", {"Name": "Rivera Roofing"})["Id"]
    jordan = org.emu.insert(
        org.org, "Contact", {"LastName": "Rivera", "Phone": "(555) 555-0123", "AccountId": account}
    )["Id"]
    scenario = simulate.inbound_call(
        FIXTURE_ACCOUNT, JORDAN, "+15555550100", "+15555550198", "answered", talk=95
    )
    for post in scenario.deliveries():
        assert org.twilio.post(post.path, post.params).status_code in (200, 204)
        run_worker()  # later callbacks patch the same Task
    [task] = org.tasks()
    [row] = interactions()
    assert (task["TaskSubtype"], task["CallType"], task["CallDurationInSeconds"]) == ("Call", "Inbound", 95)
    assert task["CallObject"] == row.provider_id and task["CallDisposition"] == "Answered"
    assert task["Status"] == "Completed" and task["WhoId"] == jordan and task["WhatId"] == account
    assert task["OwnerId"] == org.owners["avery"]  # who took the call
    assert task["Switchboard_Id__c"] == f"switchboard-interaction-{row.id}"
    assert (row.sync_state, row.crm_record_id, row.crm_contact_id) == ("synced", task["Id"], jordan)


class CrashAfterCreate(SalesforceConnector):
    """Dies right after Salesforce created the Task, before Switchboard could save its id."""

    crashes = 1

    def write_activities(self, items):  # type: ignore[no-untyped-def]
        results = super().write_activities(items)
        if CrashAfterCreate.crashes:
            CrashAfterCreate.crashes -= 1
            raise ConnectionResetError("worker died after Salesforce's 200")
        return results


CRASHY = CrmProvider(
    name="salesforce-crashy",
    label="Salesforce",
    connector="tests.connectors.salesforce.test_connector:CrashAfterCreate",
)


@pytest.mark.parametrize("external_id", [True, False], ids=["upsert", "lookup-fallback"])
def test_crash_between_create_and_save_does_not_duplicate(
    sf_emulator, settings, app, run_worker, external_id
):
    import connectors
    from jobs.sync import drain

    org = Org(sf_emulator, settings, external_id=external_id)
    connectors.register("salesforce-crashy", "tests.connectors.salesforce.test_connector:CRASHY")
    CrashAfterCreate.crashes = 1
    try:
        with db.transaction() as s:
            s.get(Tenant, org.tenant.id).crm = "salesforce-crashy"
        org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
        scenario = simulate.inbound_call(FIXTURE_ACCOUNT, JORDAN, "+15555550100", "+15555550198", "answered")
        for post in scenario.deliveries():
            org.twilio.post(post.path, post.params)
        with pytest.raises(ConnectionResetError):
            drain(org.tenant.id)  # the crash escapes the job: RQ would record it, the row stays pending
        assert len(org.tasks()) == 1
        assert interactions()[0].sync_state == "pending"
        run_worker()  # the retry
    finally:
        connectors.REGISTRY.pop("salesforce-crashy")
    [task] = org.tasks()  # upsert on Switchboard_Id__c (or the CallObject lookup) found the first one
    assert task["TaskSubtype"] == "Call"
    assert interactions()[0].sync_state == "synced"


def test_collections_retry_locked_rows_and_fail_only_the_bad_record(org):
    from connectors.base import ActivityWrite
    from tests.connectors.test_contract import call

    jordan = CrmRef("contact", org.add_contact("Jordan Rivera", [JORDAN], None, "sam"))
    writes = [ActivityWrite(jordan, call(i), f"switchboard-interaction-{i}") for i in range(1, 4)]
    writes.append(
        ActivityWrite(CrmRef("contact", "00Q000000000999AAA"), call(4), "switchboard-interaction-4")
    )
    org.emu.lock_next_records(org.org, 2)  # UNABLE_TO_LOCK_ROW on the first two records
    before = org.requests()
    results = org.connector.write_activities(writes)
    assert [type(r).__name__ for r in results] == ["CrmRef", "CrmRef", "CrmRef", "ContactGone"]
    assert isinstance(results[3], ContactGone)
    assert len(org.tasks()) == 3
    routes = [r["route"] for r in org.emu.requests(org.org)][-(org.requests() - before) :]
    upserts = [r for r in routes if r.startswith("PATCH composite/sobjects/")]
    assert len(upserts) == 2  # one collection, then the two locked records again (only them)
    assert len(org.emu.requests(org.org)[-1]["json"]["records"]) == 2


def test_two_hundred_records_per_request(org, run_worker):
    for i in range(250):
        post = simulate.inbound_sms(FIXTURE_ACCOUNT, JORDAN, "+15555550100", f"text {i}").first[0]
        org.twilio.post(post.path, post.params)
    org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
    run_worker()
    # A burst on Salesforce's scarce daily budget goes out in full collections: 200 now, and the last 50
    # once arrivals stop (jobs.sync QUIET), not in a half-empty request while more may come.
    assert len(org.tasks()) == 200
    time.sleep(sync.QUIET + 0.2)
    sync.drain(org.tenant.id)
    assert len(org.tasks()) == 250 and all(r.sync_state == "synced" for r in interactions())
    by_route = org.emu.stats(org.org)["by_route"]
    assert by_route["PATCH composite/sobjects/{sobject}/{field_name}"] == 2


def test_permanent_salesforce_error_fails_the_row_with_its_message(org, run_worker):
    org.emu.fail_next("composite/sobjects/Task", status=400, error_code="INVALID_FIELD", message="bad field")
    org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
    org.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [row] = interactions()
    assert row.sync_state == "failed" and "INVALID_FIELD: bad field" in row.last_error


def test_request_limit_and_503_are_retried(org, run_worker):
    org.emu.fail_next("composite/sobjects/Task", status=503)
    org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
    org.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [row] = interactions()
    assert (row.sync_state, row.attempts) == ("synced", 2)
    with pytest.raises(RetryableError) as err:
        org.emu.set_limits(org.org, used=15000)
        org.connector.find_contact(Party(phone="+15555550177"))
    assert "REQUEST_LIMIT_EXCEEDED" in str(err.value) and err.value.retry_after == 3600


def test_budget_guard_holds_non_urgent_writes_past_the_tenant_s_share(org):
    org.set(salesforce_api_share=0.5)
    org.emu.set_limits(org.org, daily_max=1000, used=499)
    connector = org.connector
    jordan = org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
    assert connector.find_contact(Party(phone=JORDAN)) is not None  # 500/1000 reported: at the share now
    with pytest.raises(RetryableError) as err:
        connector.find_contact(Party(phone="+15555550177"))
    assert err.value.retry_after and "salesforce_api_share" in str(err.value)
    from connectors.base import TaskSpec

    # urgent work (a rep's task) still goes through
    assert connector.create_task(CrmRef("contact", jordan), TaskSpec(subject="Call back"), external_id="t-1")


# --- sessions -----------------------------------------------------------------------------------------


def oauth_tenant(org: Org) -> dict[str, Any]:
    """Connect through the emulator's real token endpoint and store the tokens on the tenant."""
    import requests

    code = org.emu.issue_code(org.org, CLIENT_ID, CALLBACK)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "redirect_uri": CALLBACK,
    }
    tokens = requests.post(f"{org.emu.base_url}/services/oauth2/token", data=form, timeout=5).json()
    with db.transaction() as s:
        s.get(Tenant, org.tenant.id).crm_secrets = oauth_secrets(tokens, org.emu.base_url)
    return tokens


def test_expired_session_is_refreshed_once_across_workers_and_retried(org, run_worker):
    tokens = oauth_tenant(org)
    org.emu.expire_token(tokens["access_token"])
    connectors_ = [org.connector for _ in range(6)]
    got: list[Any] = []
    threads = [
        threading.Thread(target=lambda c=c: got.append(c.find_contact(Party(phone="+15555550177"))))
        for c in connectors_
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [None] * 6
    assert org.emu.stats()["by_route"].get("POST /services/oauth2/token", 0) == 2  # the install + one refresh
    org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
    org.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    assert interactions()[0].sync_state == "synced"


def test_revoked_refresh_token_needs_reinstall(org, run_worker):
    tokens = oauth_tenant(org)
    org.emu.expire_token(tokens["access_token"])
    org.emu.revoke_refresh_token(tokens["refresh_token"])
    org.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [row] = interactions()
    assert row.sync_state == "failed" and "connect the org again" in row.last_error
    with db.transaction() as s:
        assert s.get(Tenant, org.tenant.id).crm_status == "needs_reinstall"


# --- setup, owners, settings through the CLI -----------------------------------------------------------


def test_setup_creates_the_external_id_fields_or_prints_the_manual_steps(sf_emulator, settings, app):
    from app.cli import main

    org = Org(sf_emulator, settings, external_id=False)
    result = org.app.test_cli_runner().invoke(main, ["salesforce", "setup", "acme"])
    assert result.exit_code == 0, result.output
    assert "Activity.Switchboard_Id__c" in result.output
    assert "Switchboard_Id__c" in {f["name"] for f in org.sf.Task.describe()["fields"]}
    again = org.app.test_cli_runner().invoke(main, ["salesforce", "setup", "acme"])
    assert again.exit_code == 0 and "already there" in again.output


def test_setup_refused_prints_the_manual_steps(sf_emulator, settings, app):
    from app.cli import main

    refused = Org(sf_emulator, settings, external_id=False, allow_tooling=False)
    result = refused.app.test_cli_runner().invoke(main, ["salesforce", "setup", "acme"])
    assert result.exit_code == 1 and "Object Manager" in result.output


def test_sync_owners_and_settings(org):
    from app.cli import main

    with db.transaction() as s:
        for user in s.scalars(select(User).where(User.tenant_id == org.tenant.id)):
            user.crm_owner_id = None
    result = org.app.test_cli_runner().invoke(main, ["salesforce", "sync-owners", "acme"])
    assert result.exit_code == 0, result.output
    with db.transaction() as s:
        mapped = {
            u.email: u.crm_owner_id for u in s.scalars(select(User).where(User.tenant_id == org.tenant.id))
        }
    assert mapped == {f"{w}@acme.example": org.owners[w] for w in ("avery", "sam", "casey")}
    ok = org.app.test_cli_runner().invoke(
        main, ["salesforce", "set", "acme", "salesforce_create_as", "Contact"]
    )
    assert ok.exit_code == 0, ok.output
    bad = org.app.test_cli_runner().invoke(
        main, ["salesforce", "set", "acme", "salesforce_create_as", "Account"]
    )
    assert bad.exit_code == 2 and "Lead, Contact" in bad.output
    with db.transaction() as s:
        assert s.get(Tenant, org.tenant.id).settings["salesforce_create_as"] == "Contact"


def test_permanent_error_taxonomy():
    assert issubclass(ContactGone, RetryableError) and not issubclass(PermanentError, RetryableError)
    assert json.loads(session_secrets("tok", "https://x.my.salesforce.com/"))["instance_url"].endswith(".com")


def test_an_org_without_call_center_fields_still_gets_its_call_tasks(sf_emulator, settings, app, run_worker):
    # Orgs without Salesforce Call Center have no CallType, CallDurationInSeconds, CallObject or
    # CallDisposition on Task: the call is still a Task (subject, comments, status), and later callbacks patch
    # it by Switchboard_Id__c.
    org = Org(sf_emulator, settings, call_center=False)
    assert "CallType" not in org.connector.fields("Task")
    jordan = org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
    scenario = simulate.inbound_call(
        FIXTURE_ACCOUNT, JORDAN, "+15555550100", "+15555550198", "answered", talk=95
    )
    for post in scenario.deliveries():
        assert org.twilio.post(post.path, post.params).status_code in (200, 204)
        run_worker()
    [task] = org.tasks()
    [row] = interactions()
    assert not {"CallType", "CallDurationInSeconds", "CallObject", "CallDisposition"} & set(task)
    assert task["Subject"].startswith("Inbound call from") and "95 s" in task["Description"]
    assert (task["Status"], task["WhoId"], task["TaskSubtype"]) == ("Completed", jordan, "Call")
    assert task["Switchboard_Id__c"] == f"switchboard-interaction-{row.id}"
    assert (row.sync_state, row.crm_record_id) == ("synced", task["Id"])


def test_a_text_is_a_task_whose_subject_says_sms_with_the_body_in_the_comments(org, run_worker):
    jordan = org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
    post = simulate.inbound_sms(FIXTURE_ACCOUNT, JORDAN, "+15555550100", "Can you call me at 3?").first[0]
    org.twilio.post(post.path, post.params)
    run_worker()
    [task] = org.tasks()
    assert task["Subject"].startswith("SMS from") and task["Description"] == "Can you call me at 3?"
    assert task["WhoId"] == jordan and task["Status"] == "Completed" and task.get("TaskSubtype") != "Call"
    assert interactions()[0].sync_state == "synced"


def test_the_budget_guard_holds_the_sync_s_writes_and_loses_none(org, run_worker):
    # Past the tenant's share the sync's rows wait (throttled, no retry used up); once Salesforce reports the
    # usage below the share again, the same rows are written, once.
    org.set(salesforce_api_share=0.5)
    org.emu.set_limits(org.org, daily_max=1000, used=600)
    org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
    org.connector.fields("Task")  # an urgent request: learns api-usage 601/1000, past the share
    before = org.requests()
    org.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [row] = interactions()
    assert (row.sync_state, row.attempts) == ("pending", 0) and row.last_error.startswith("throttled: ")
    assert org.tasks() == [] and org.requests() == before  # held before any request
    org.emu.set_limits(org.org, daily_max=1000, used=10)
    org.connector.fields("Contact")  # another urgent request learns the lower usage
    assert row.next_attempt_at is not None
    with db.transaction() as s:  # the hour of its retry_after has passed
        s.get(Interaction, row.id).next_attempt_at = row.next_attempt_at - timedelta(hours=2)
    sync.drain(org.tenant.id)
    [row] = interactions()
    assert row.sync_state == "synced" and len(org.tasks()) == 1


def test_a_held_org_without_urgent_traffic_looks_at_its_usage_again_after_an_hour(org, run_worker):
    # Held, the sync sends nothing that would report a lower usage; the usage Salesforce last reported is
    # trusted for the hour of the hold, then the next request goes out and reports it afresh.
    org.emu.set_limits(org.org, daily_max=1000, used=600)
    org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
    connector = org.connector
    connector.fields("Task")  # learns 601/1000, past the default share of 0.5
    org.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [row] = interactions()
    assert row.sync_state == "pending" and row.last_error.startswith("throttled: ")
    key = connector.api_budget.key
    assert 0 < connector.redis.ttl(key) <= 3600
    org.emu.set_limits(org.org, daily_max=1000, used=10)  # the rolling 24 hours moved on
    with db.transaction() as s:  # the hour passes: the hold is over and the reported usage has expired
        s.get(Interaction, row.id).next_attempt_at = row.next_attempt_at - timedelta(hours=2)
    connector.redis.delete(key)
    sync.drain(org.tenant.id)
    [row] = interactions()
    assert row.sync_state == "synced" and len(org.tasks()) == 1
    assert connector.api_budget.usage() is not None and connector.api_budget.usage()[0] < 500


def test_a_shared_number_s_rule_and_reason_reach_the_ledger(org, run_worker):
    org.add_lead("555-555-0123", owner="avery")
    contact = org.add_contact("Jordan Rivera", ["(555) 555-0123"], None, "sam")
    org.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [row] = interactions()
    [task] = org.tasks()
    assert (row.sync_state, row.crm_contact_id, task["WhoId"]) == ("synced", contact, contact)
    assert "shared by 2 contacts (1 Contact, 1 Lead); chose the preferred Contact" in (row.match_reason or "")


def test_an_org_with_neither_the_external_id_nor_call_objects_fails_the_row_saying_why(
    sf_emulator, settings, app, run_worker
):
    # Without Switchboard_Id__c or CallObject there is no key to find a Task again after a crash: writing
    # anyway could duplicate, so the row fails with the fix (run setup) instead.
    org = Org(sf_emulator, settings, external_id=False, call_center=False)
    org.add_contact("Jordan Rivera", [JORDAN], None, "sam")
    org.twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    run_worker()
    [row] = interactions()
    assert row.sync_state == "failed" and "switchboard salesforce setup" in row.last_error
    assert org.tasks() == []
