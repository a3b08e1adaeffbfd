"""Polling by SystemModstamp: the real simple-salesforce against the emulator, the real worker, both
databases.

A baseline first; then each change once (stage, owner, new Lead) as the Outbound Message receiver stores
it; paging; edits made while a poll pages land in the next poll, none twice; a crash between storing the
events and moving the cursor repeats nothing; closed-won-handoff fires from a polled stage change.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from app.core import db
from app.core.crm_events import CrmEventIn, record
from app.core.db import utcnow
from app.core.models import ActionRun, CrmEvent, CrmPollCursor, CrmPollValue
from connectors.salesforce.poll import poll_all, poll_org
from tests.conftest import count
from tests.connectors.salesforce.test_automations import prepare
from tests.connectors.salesforce.test_connector import Org, org, sf_emulator  # noqa: F401


def events() -> list[tuple[str, str | None, str | None, str | None]]:
    """(event_type, object_id, property_name, property_value) of every stored event, in order."""
    with db.transaction() as s:
        rows = s.scalars(select(CrmEvent).order_by(CrmEvent.id))
        return [(e.event_type, e.object_id, e.property_name, e.property_value) for e in rows]


def poll(org: Org) -> str:  # noqa: F811
    outcome = poll_org(org.tenant.id)
    assert outcome.startswith("read"), outcome
    return outcome


def contacts(org: Org, n: int) -> list[str]:  # noqa: F811
    return [org.add_contact(f"Person {i}", [f"555-555-{1000 + i}"], None, "sam") for i in range(n)]


def deal(org: Org, stage: str = "Prospecting") -> str:  # noqa: F811
    values = {"Name": "Rivera renewal", "StageName": stage, "CloseDate": "2026-12-20", "Amount": 12000.0}
    return str(org.emu.insert(org.org, "Opportunity", {**values, "OwnerId": org.owners["sam"]})["Id"])


def test_the_first_poll_is_a_baseline_and_a_quiet_org_costs_one_request(org):  # noqa: F811
    contacts(org, 3)
    org.add_lead("555-555-0177")
    deal(org)
    before = org.requests()
    poll(org)
    assert events() == []
    assert count(CrmPollValue) == 5  # 3 Contact owners, 1 Lead owner, 1 stage
    assert count(CrmPollCursor) == 3
    assert org.requests() - before == 1  # one Composite request: the three objects' first pages
    poll(org)
    assert events() == [] and org.requests() - before == 2


def test_changes_fire_once_as_the_receiver_names_them(org):  # noqa: F811
    jordan, pat = contacts(org, 2)
    lead = org.add_lead("555-555-0177")
    opp = deal(org)
    poll(org)
    org.sf.Opportunity.update(opp, {"StageName": "Negotiation/Review"})
    org.sf.Contact.update(jordan, {"OwnerId": org.owners["avery"]})
    org.sf.Lead.update(lead, {"OwnerId": org.owners["casey"]})
    org.sf.Contact.update(pat, {"Description": "touched, owner unchanged"})
    new_lead = org.add_lead("555-555-0178")
    poll(org)
    assert sorted(events()) == sorted(
        [
            ("Opportunity.updated", opp, "StageName", "Negotiation/Review"),
            ("Contact.updated", jordan, "OwnerId", org.owners["avery"]),
            ("Lead.updated", lead, "OwnerId", org.owners["casey"]),
            ("Lead.created", new_lead, None, None),
        ]
    )
    with db.transaction() as s:
        [stage] = s.scalars(select(CrmEvent).where(CrmEvent.object_id == opp))
        assert stage.payload["polled"] is True and stage.event_id.startswith(f"poll-{opp}-StageName-")
        assert stage.occurred_at is not None
    poll(org)  # the overlap reads them all again: nothing new
    assert len(events()) == 4
    org.sf.Opportunity.update(opp, {"StageName": "Closed Won"})
    poll(org)
    assert events()[-1] == ("Opportunity.updated", opp, "StageName", "closedwon")


def test_paging_follows_next_records_url(org):  # noqa: F811
    org.emu.set_limits(org.org, query_batch_size=2)
    people = contacts(org, 5)
    poll(org)
    assert count(CrmPollValue) == 5 and events() == []
    for person in people:
        org.sf.Contact.update(person, {"OwnerId": org.owners["casey"]})
    poll(org)
    assert sorted(e[1] for e in events()) == sorted(people)
    more = [r for r in org.emu.requests(org.org) if r["route"] == "GET query/{locator}"]
    assert len(more) >= 4  # 5 records, 2 a page: the baseline's pages and this poll's


def test_edits_during_a_poll_land_in_the_next_poll_none_twice(org):  # noqa: F811
    org.emu.set_limits(org.org, query_batch_size=2)
    people = contacts(org, 6)
    poll(org)
    for person in people:
        org.sf.Contact.update(person, {"OwnerId": org.owners["avery"]})

    def edit_while_paging() -> None:  # one record already read, one not read yet
        org.emu.update(org.org, "Contact", people[0], {"OwnerId": org.owners["casey"]})
        org.emu.update(org.org, "Contact", people[5], {"OwnerId": org.owners["casey"]})

    org.emu.before_next("query/01g", edit_while_paging)
    poll(org)
    first = events()
    assert sorted(e[1] for e in first) == sorted(people)  # each as the poll's query saw it
    assert {e[3] for e in first} == {org.owners["avery"]}
    poll(org)
    later = events()[len(first) :]
    assert sorted(later) == sorted(
        ("Contact.updated", p, "OwnerId", org.owners["casey"]) for p in (people[0], people[5])
    )
    poll(org)
    assert len(events()) == len(first) + 2


def test_ties_and_late_commits_are_not_lost(org):  # noqa: F811
    org.emu.set_limits(org.org, query_batch_size=2)
    people = contacts(org, 4)
    poll(org)
    with org.emu.same_transaction():  # one SystemModstamp for three records, across a page boundary
        for person in people[:3]:
            org.emu.update(org.org, "Contact", person, {"OwnerId": org.owners["avery"]})
    poll(org)
    assert sorted(e[1] for e in events()) == sorted(people[:3])
    # a transaction that committed after the poll, stamped a minute before the cursor
    org.emu.update(org.org, "Contact", people[3], {"OwnerId": org.owners["casey"]}, modstamp_ago=60)
    poll(org)
    assert events()[-1] == ("Contact.updated", people[3], "OwnerId", org.owners["casey"])
    assert len(events()) == 4


def test_a_crash_between_the_events_and_the_cursor_repeats_nothing(org, run_worker):  # noqa: F811
    people = contacts(org, 2)
    poll(org)
    with db.transaction() as s:
        cursors = {c.stream: (c.modstamp, c.last_id) for c in s.scalars(select(CrmPollCursor))}
        values = [(v.object_id, v.field, v.value) for v in s.scalars(select(CrmPollValue))]
    for person in people:
        org.sf.Contact.update(person, {"OwnerId": org.owners["casey"]})
    poll(org)
    assert len(events()) == 2
    with db.transaction() as s:  # as if the poll had died right after its events committed
        for c in s.scalars(select(CrmPollCursor)):
            c.modstamp, c.last_id = cursors[c.stream]
        s.execute(delete(CrmPollValue))
        s.add_all(CrmPollValue(tenant_id=org.tenant.id, object_id=o, field=f, value=v) for o, f, v in values)
    poll(org)
    assert len(events()) == 2  # the same changes, the same idempotency keys: stored once
    # a poll that fails part way keeps the cursor where its last stored page ended
    org.emu.set_limits(org.org, query_batch_size=1)
    for person in people:
        org.sf.Contact.update(person, {"OwnerId": org.owners["avery"]})
    org.emu.fail_next("query/01g", status=503)
    assert poll_org(org.tenant.id).startswith("failed")
    assert len(events()) == 3  # the first page's change is stored, the second's is not yet
    poll(org)
    assert sorted(e[1] for e in events()[2:]) == sorted(people)


def test_closed_won_handoff_fires_from_a_polled_stage_change(org, run_worker):  # noqa: F811
    prepare(org)
    account = org.emu.insert(org.org, "Account", {"Name": "Rivera Logistics"})["Id"]
    jordan = org.emu.insert(
        org.org,
        "Contact",
        {"FirstName": "Jordan", "LastName": "Rivera", "Phone": "(555) 555-0123", "AccountId": account},
    )["Id"]
    opp = deal(org, "Negotiation/Review")
    org.sf.Opportunity.update(opp, {"AccountId": account, "CSM_Owner__c": org.owners["avery"]})
    org.emu.insert(
        org.org, "OpportunityContactRole", {"OpportunityId": opp, "ContactId": jordan, "IsPrimary": True}
    )
    assert poll_all() == 1  # the cron's job: this tenant is due
    run_worker()
    assert events() == []
    org.sf.Opportunity.update(opp, {"StageName": "Closed Won"})
    poll(org)
    poll(org)
    run_worker()
    [task] = [t for t in org.tasks() if t["Subject"] == "Onboard Rivera renewal"]
    assert task["OwnerId"] == org.owners["avery"] and task["WhoId"] == jordan
    with db.transaction() as s:
        runs = [r for r in s.scalars(select(ActionRun)) if r.rule == "closed-won-handoff"]
    assert len(runs) == 1


def test_the_cron_polls_due_tenants_only_as_their_settings_say(org, run_worker):  # noqa: F811
    contacts(org, 1)
    assert poll_all() == 1
    run_worker()
    assert count(CrmPollCursor) == 3
    assert poll_all() == 0  # polled just now; salesforce_poll_seconds is 60
    with db.transaction() as s:
        for c in s.scalars(select(CrmPollCursor)):
            c.polled_at = utcnow().replace(year=2025)
    assert poll_all() == 1
    run_worker()
    org.set(salesforce_poll="off")
    assert poll_all() == 0 and count(CrmPollCursor) == 0 and count(CrmPollValue) == 0
    # auto: an Outbound Message lately means a Flow reports the changes; polling would fire them twice
    org.set(salesforce_poll="auto")
    record("salesforce", [_outbound_event(org.org)])
    assert poll_all() == 0
    assert poll_org(org.tenant.id) == "not polling: a Flow sends Outbound Messages"
    org.set(salesforce_poll="on")
    assert poll_org(org.tenant.id).startswith("read")


def _outbound_event(account: str) -> Any:
    return CrmEventIn(
        account=account,
        event_id="04l000000000777AAA",
        event_type="Contact.updated",
        object_type="Contact",
        object_id="003000000000001AAA",
        property_name="OwnerId",
        property_value=None,
        occurred_at=utcnow(),
        payload={},
    )


def test_the_cron_process_registers_the_poll(tmp_path, redis_url):
    """`python -m jobs.cron` (the Procfile's cron) runs each CRM's cron jobs: Salesforce's poll_all."""
    env = {
        **os.environ,
        "SWITCHBOARD_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "REDIS_URL": redis_url,
        "SWITCHBOARD_SECRET_KEY": "x9-0L2yNRxbqhffA2mIuM2AHHVUAsp3ZmLmHtiU-Eo8=",
    }
    code = "import jobs.cron as c; print([j['func'].__module__ + ':' + j['func'].__name__ for j in c.JOBS])"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[3],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "connectors.salesforce.poll:poll_all" in done.stdout and "jobs.sync:sweep" in done.stdout
