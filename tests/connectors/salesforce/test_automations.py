"""Automations on a Salesforce tenant: a won Opportunity (an Outbound Message) hands off to the CSM."""

from __future__ import annotations

from sqlalchemy import select

from app.automation import rules, store
from app.core import caches, db, tenants
from app.core.models import ActionRun, User
from tests.conftest import PUBLIC_BASE
from tests.connectors.salesforce.test_connector import JORDAN, Org, org, sf_emulator  # noqa: F401
from tests.connectors.salesforce.test_webhooks import outbound


def prepare(org: Org) -> None:  # noqa: F811
    with db.transaction() as s:
        casey = s.scalar(select(User).where(User.email == "casey@acme.example"))
        tenants.set_teams(s, casey, ["csm"])
    caches.clear_all()
    store.store_rules(org.tenant.id, rules.default_source())
    org.sf.restful(
        "tooling/sobjects/CustomField/",
        method="POST",
        json={"FullName": "Opportunity.CSM_Owner__c", "Metadata": {"type": "Text", "length": 18}},
    )


def won(org: Org, csm: str | None, note: str) -> tuple[str, str]:  # noqa: F811
    account = org.emu.insert(org.org, "Account", {"Name": "Rivera Logistics"})["Id"]
    jordan = org.emu.insert(
        org.org,
        "Contact",
        {"FirstName": "Jordan", "LastName": "Rivera", "Phone": "(555) 555-0123", "AccountId": account},
    )["Id"]
    values = {
        "Name": "Rivera renewal",
        "StageName": "Closed Won",
        "CloseDate": "2026-11-27",
        "Amount": 12000.0,
        "AccountId": account,
        "OwnerId": org.owners["sam"],
    }
    if csm:
        values["CSM_Owner__c"] = csm
    deal = org.emu.insert(org.org, "Opportunity", values)["Id"]
    org.emu.insert(
        org.org, "OpportunityContactRole", {"OpportunityId": deal, "ContactId": jordan, "IsPrimary": True}
    )
    fields = {
        "Id": deal,
        "IsClosed": "true",
        "IsWon": "true",
        "Name": "Rivera renewal",
        "StageName": "Closed Won",
    }
    client = org.app.test_client()
    for _ in range(2):  # redelivered: one event, one task
        r = client.post(
            "/webhooks/salesforce", data=outbound(org.org, "Opportunity", fields, note), base_url=PUBLIC_BASE
        )
        assert r.status_code == 200
    return deal, jordan


def test_closed_won_goes_to_the_opportunity_s_csm(org, run_worker):  # noqa: F811
    prepare(org)
    _deal, jordan = won(org, org.owners["avery"], "04l000000000101AAA")
    run_worker()
    [task] = [t for t in org.tasks() if t["Subject"] == "Onboard Rivera renewal"]
    assert task["OwnerId"] == org.owners["avery"]  # crm:csm_owner_id <- Opportunity.CSM_Owner__c
    assert task["Priority"] == "High" and task["WhoId"] == jordan
    assert "closed won (12000.0)" in task["Description"] and "Jordan Rivera" in task["Description"]
    with db.transaction() as s:
        runs = [r for r in s.scalars(select(ActionRun)) if r.rule == "closed-won-handoff"]
    assert len(runs) == 1


def test_closed_won_without_a_csm_round_robins_the_csm_team(org, run_worker):  # noqa: F811
    prepare(org)
    won(org, None, "04l000000000102AAA")
    run_worker()
    [task] = [t for t in org.tasks() if t["Subject"] == "Onboard Rivera renewal"]
    assert task["OwnerId"] == org.owners["casey"]
