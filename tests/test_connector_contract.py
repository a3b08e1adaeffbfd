"""The Connector contract, run against every connector: matching, idempotent writes, patching, tasks.

HubSpot and Salesforce connectors join the `connector` fixture's params when they land.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app import db
from app.interactions import InteractionData
from app.models import LocalActivity, Tenant
from connectors import get_connector
from connectors.base import Connector, CrmRef, Party, PermanentError, TaskSpec
from connectors.local import LocalConnector
from tests.conftest import make_tenant

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def call(interaction_id: int = 1, status: str = "ringing", **kw: object) -> InteractionData:
    base = dict(
        id=interaction_id,
        tenant_id=0,
        channel="call",
        direction="inbound",
        status=status,
        party_phone="+15555550123",
        party_email=None,
        our_number="+15555550100",
        from_addr="+15555550123",
        to_addr="+15555550100",
        occurred_at=NOW,
    )
    base.update(kw)
    return InteractionData(**base)  # type: ignore[arg-type]


@pytest.fixture(params=["local"])
def connector(request: pytest.FixtureRequest, tenant: Tenant) -> Connector:
    return get_connector(tenant)


def test_finds_contact_by_phone_in_any_stored_format_and_by_email(connector, tenant):
    LocalConnector(tenant).add_contact(
        "Priya Shah", ["(555) 555-0142", "555.555.0143"], "Priya@Example.org", "avery@acme.example"
    )
    match = connector.find_contact(Party(phone="+15555550143"))
    assert match is not None and match.owner_id == "avery@acme.example"
    assert connector.find_contact(Party(email="priya@example.org")).ref == match.ref
    assert connector.find_contact(Party(phone="+15555550999")) is None


def test_shared_number_picks_most_recently_active_and_says_why(connector, tenant):
    local = LocalConnector(tenant)
    older = local.add_contact("Front desk", ["+15555550150"], None, "sam@acme.example")
    newer = local.add_contact("Dr. Lee", ["+15555550150"], None, "avery@acme.example")
    local.log_interaction(
        CrmRef("contact", str(older)), call(9, party_phone="+15555550150"), external_id="seed-activity"
    )
    match = connector.find_contact(Party(phone="+15555550150"))
    assert match.ref.id == str(older)  # it has the recent activity
    assert "shared by 2 contacts" in match.reason and str(newer) != match.ref.id


def test_create_contact_is_idempotent(connector):
    party = Party(phone="+15555550111")
    first = connector.create_contact(party, external_id="switchboard-contact-+15555550111")
    again = connector.create_contact(party, external_id="switchboard-contact-+15555550111")
    assert first == again
    assert connector.find_contact(party).ref == first


def read_activity(connector: Connector, ref: CrmRef) -> tuple[str, int | None]:
    """(status, duration) of a logged activity, read back from the CRM behind the connector."""
    assert connector.name == "local"  # each connector added to the params brings its reader here
    with db.transaction() as s:
        row = s.get(LocalActivity, int(ref.id))
        return row.status, row.duration_seconds


def test_log_is_idempotent_and_update_patches(connector):
    contact = connector.find_contact(Party(phone="+15555550123")).ref
    ref = connector.log_interaction(contact, call(), external_id="switchboard-interaction-1")
    assert connector.log_interaction(contact, call(), external_id="switchboard-interaction-1") == ref
    assert read_activity(connector, ref) == ("ringing", None)
    connector.update_interaction(ref, call(status="completed", duration_seconds=42))
    assert read_activity(connector, ref) == ("completed", 42)


def test_update_of_unknown_record_is_permanent(connector):
    with pytest.raises(PermanentError):
        connector.update_interaction(CrmRef("call", "999999"), call())


def test_task_is_idempotent(connector):
    contact = connector.find_contact(Party(phone="+15555550123")).ref
    spec = TaskSpec(
        subject="Call Jordan back",
        body="Missed call",
        due_at=NOW + timedelta(hours=1),
        assignee_owner_id="sam@acme.example",
        priority="high",
    )
    first = connector.create_task(contact, spec, external_id="rule-1-step-1")
    assert connector.create_task(contact, spec, external_id="rule-1-step-1") == first


def test_tenants_do_not_see_each_other(connector, tenant):
    other = make_tenant("globex", "AC" + "b" * 32, "b" * 32, number="+15555550200")
    theirs = get_connector(other)
    assert (
        theirs.find_contact(Party(phone="+15555550123")).ref
        != connector.find_contact(Party(phone="+15555550123")).ref
    )
    mine = connector.find_contact(Party(phone="+15555550123")).ref
    with pytest.raises(PermanentError):
        theirs.log_interaction(mine, call(), external_id="x")
