"""The Connector contract, run against every connector: matching, idempotent writes, patching, tasks,
tenant isolation. Each connector brings a harness that seeds contacts and reads records back from the CRM
behind it (the built-in CRM's tables; HubSpot's contract emulator through the real SDK)."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.core import db
from app.core.interactions import InteractionData
from app.core.models import LocalActivity, Tenant, User
from connectors import get_connector
from connectors.base import Connector, ContactGone, CrmError, CrmRef, Party, PermanentError, TaskSpec
from connectors.local import LocalConnector
from tests.conftest import make_tenant
from tests.connectors.hubspot.test_connector import CLIENT_ID, CLIENT_SECRET, emulator  # noqa: F401  (session fixture)
from tests.connectors.salesforce.test_connector import SalesforceHarness, sf_emulator  # noqa: F401  (session fixture)

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


class LocalHarness:
    """The built-in CRM."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.owners = {who: f"{who}@{tenant.name}.example" for who in ("avery", "sam", "casey")}

    def add_contact(self, name: str, phones: list[str], email: str | None, owner: str) -> str:
        return str(LocalConnector(self.tenant).add_contact(name, phones, email, self.owners[owner]))

    def activity(self, ref: CrmRef) -> tuple[str, int | None]:
        with db.transaction() as s:
            row = s.get(LocalActivity, int(ref.id))
            return row.status, row.duration_seconds

    def activities_for(self, interaction_id: int) -> int:
        with db.transaction() as s:
            return (
                s.query(LocalActivity)
                .filter_by(external_id=f"switchboard-interaction-{interaction_id}")
                .count()
            )

    def touch(self, contact_id: str) -> None:
        """Make the contact the most recently active one."""
        LocalConnector(self.tenant).log_interaction(
            CrmRef("contact", contact_id), call(99, party_phone=None), external_id=f"touch-{contact_id}"
        )

    def other_tenant(self) -> Any:
        return LocalHarness(make_tenant("globex", "AC" + "b" * 32, "b" * 32, number="+15555550200"))


class HubSpotHarness:
    """A HubSpot portal in the contract emulator."""

    def __init__(self, emu: Any, tenant: Tenant, name: str = "acme") -> None:
        from hubspot import HubSpot

        info = emu.create_portal(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        self.emu, self.portal, self.token = emu, info["portal_id"], info["token"]
        self.owners = {
            w: emu.add_owner(self.portal, email=f"{w}@{name}.example")["id"]
            for w in ("avery", "sam", "casey")
        }
        with db.transaction() as s:
            t = s.get(Tenant, tenant.id)
            t.crm, t.crm_account_id = "hubspot", str(self.portal)
            t.crm_secrets = json.dumps({"type": "private_app", "access_token": self.token})
            for user in s.scalars(db_select_users(t.id)):
                user.crm_owner_id = self.owners[user.email.split("@")[0]]
            self.tenant = t
        self.sdk = HubSpot(access_token=self.token, host=emu.base_url)
        get_connector(self.tenant).setup()  # type: ignore[attr-defined]

    def add_contact(self, name: str, phones: list[str], email: str | None, owner: str) -> str:
        first, _, last = name.partition(" ")
        props = {
            "firstname": first,
            "lastname": last,
            "hubspot_owner_id": self.owners[owner],
            "email": email,
            "phone": phones[0],
            "mobilephone": phones[1] if len(phones) > 1 else None,
        }
        body = {"properties": {k: v for k, v in props.items() if v}}
        return str(self.sdk.crm.contacts.basic_api.create(simple_public_object_input_for_create=body).id)

    def activity(self, ref: CrmRef) -> tuple[str, int | None]:
        [obj] = [o for o in self.emu.objects(self.portal, "calls") if o["id"] == ref.id]
        status = {"RINGING": "ringing", "COMPLETED": "completed"}[obj["properties"]["hs_call_status"]]
        return status, int(obj["properties"]["hs_call_duration"]) // 1000 or None

    def activities_for(self, interaction_id: int) -> int:
        key = f"switchboard-interaction-{interaction_id}"
        return sum(
            1 for o in self.emu.objects(self.portal, "calls") if o["properties"].get("switchboard_id") == key
        )

    def touch(self, contact_id: str) -> None:
        self.sdk.crm.contacts.basic_api.update(
            contact_id, simple_public_object_input={"properties": {"firstname": "Touched"}}
        )

    def other_tenant(self) -> Any:
        return HubSpotHarness(
            self.emu, make_tenant("globex", "AC" + "b" * 32, "b" * 32, number="+15555550200"), "globex"
        )


def db_select_users(tenant_id: int) -> Any:
    from sqlalchemy import select

    return select(User).where(User.tenant_id == tenant_id)


@pytest.fixture(params=["local", "hubspot", "salesforce"])
def crm(
    request: pytest.FixtureRequest,
    tenant: Tenant,
    settings: Any,
    emulator: Any,  # noqa: F811
    sf_emulator: Any,  # noqa: F811
) -> Any:
    if request.param == "local":
        return LocalHarness(tenant)
    from app.web import create_app

    if request.param == "salesforce":
        sf_emulator.reset()
        create_app(settings)
        return SalesforceHarness(sf_emulator, tenant)

    emulator.reset()
    create_app(settings.with_(hubspot_api_base=emulator.base_url))
    return HubSpotHarness(emulator, tenant)


@pytest.fixture
def connector(crm: Any) -> Connector:
    return get_connector(crm.tenant)


def test_finds_contact_by_phone_in_any_stored_format_and_by_email(connector, crm):
    contact = crm.add_contact("Priya Shah", ["(555) 555-0142", "555.555.0143"], "priya@example.org", "avery")
    match = connector.find_contact(Party(phone="+15555550143"))
    assert match is not None and match.ref.id == contact and match.owner_id == crm.owners["avery"]
    assert connector.find_contact(Party(phone="+15555550142")).ref.id == contact
    assert connector.find_contact(Party(email="Priya@Example.org")).ref.id == contact
    assert connector.find_contact(Party(phone="+15555550999")) is None


def test_shared_number_picks_the_most_recently_active_and_says_why(connector, crm):
    older = crm.add_contact("Front Desk", ["+15555550150"], None, "sam")
    newer = crm.add_contact("Dr Lee", ["555-555-0150"], None, "avery")
    crm.touch(older)
    match = connector.find_contact(Party(phone="+15555550150"))
    assert match.ref.id == older != newer
    assert "shared by 2 contacts" in match.reason


def test_create_contact_is_idempotent(connector):
    party = Party(phone="+15555550111")
    first = connector.create_contact(party, external_id="switchboard-contact-+15555550111")
    again = connector.create_contact(party, external_id="switchboard-contact-+15555550111")
    assert first == again
    assert connector.find_contact(party).ref == first


def test_log_is_idempotent_and_update_patches(connector, crm):
    contact = CrmRef("contact", crm.add_contact("Jordan Rivera", ["+15555550123"], None, "sam"))
    ref = connector.log_interaction(contact, call(), external_id="switchboard-interaction-1")
    assert connector.log_interaction(contact, call(), external_id="switchboard-interaction-1") == ref
    assert crm.activity(ref) == ("ringing", None)
    connector.update_interaction(ref, call(status="completed", duration_seconds=42))
    assert crm.activity(ref) == ("completed", 42)


def test_batch_write_reports_each_item(connector, crm):
    from connectors.base import ActivityWrite

    contact = CrmRef("contact", crm.add_contact("Jordan Rivera", ["+15555550123"], None, "sam"))
    writes = [ActivityWrite(contact, call(i), f"switchboard-interaction-{i}") for i in range(1, 4)]
    results = connector.write_activities(writes)
    assert len(results) == 3 and all(isinstance(r, CrmRef) for r in results)
    assert len({r.id for r in results}) == 3
    assert connector.write_activities(writes) == results  # a retried batch writes nothing new


def test_writing_to_a_deleted_contact_is_an_error_not_a_crash(connector, crm):
    results = connector.write_activities(
        [__import__("connectors.base").base.ActivityWrite(CrmRef("contact", "999999"), call(), "x-1")]
    )
    assert isinstance(results[0], CrmError)
    assert isinstance(results[0], ContactGone | PermanentError)


def test_update_of_a_record_the_crm_lost_never_duplicates(connector, crm):
    """A record deleted in the CRM: the connector reports an error, or writes it again, once."""
    with contextlib.suppress(CrmError):
        connector.update_interaction(CrmRef("call", "999999"), call(77))
    assert crm.activities_for(77) <= 1
    with contextlib.suppress(CrmError):
        connector.update_interaction(CrmRef("call", "999999"), call(77))
    assert crm.activities_for(77) <= 1


def test_task_is_idempotent(connector, crm):
    contact = CrmRef("contact", crm.add_contact("Jordan Rivera", ["+15555550123"], None, "sam"))
    spec = TaskSpec(
        subject="Call Jordan back",
        body="Missed call",
        due_at=NOW + timedelta(hours=1),
        assignee_owner_id=crm.owners["sam"],
        priority="high",
    )
    first = connector.create_task(contact, spec, external_id="rule-1-step-1")
    assert connector.create_task(contact, spec, external_id="rule-1-step-1") == first


def test_tenants_do_not_see_each_other(connector, crm):
    mine = crm.add_contact("Alex Chen", ["+15555550177"], None, "sam")
    other = crm.other_tenant()
    assert get_connector(other.tenant).find_contact(Party(phone="+15555550177")) is None
    assert connector.find_contact(Party(phone="+15555550177")).ref.id == mine
