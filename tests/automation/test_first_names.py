"""First names of built-in contacts: real fields, never derived from a number (issue 10).

An unknown caller gets a contact named after the number ("+1 555-555-0111"); the default missed-call
text must greet them "Hi there", not "Hi +1". Runs the default rules through a real RQ worker against
the Twilio REST emulator, on SQLite and PostgreSQL; the migration's backfill runs on both too.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, text

from app.automation import rules, store
from app.cli.migrate import alembic_config
from app.core import caches, db
from app.core.models import LocalContact
from app.core.settings import database_url_for_sqlalchemy
from app.web import create_app
from connectors.base import CrmRef, Party
from connectors.local import LocalConnector, split_name
from tests.automation.test_automations import (  # noqa: F401  (twilio_api is a session fixture)
    OUR,
    STRANGER,
    World,
    missed_call,
    twilio_api,
)
from tests.conftest import scratch_postgres
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("Jordan Rivera", ("Jordan", "Rivera")),
        ("  Priya   Shah ", ("Priya", "Shah")),
        ("Mary Ann Smith", ("Mary", "Ann Smith")),
        ("Jordan", ("Jordan", None)),
        ("Rivera, Jordan", ("Jordan", "Rivera")),
        ("Dr. Jordan Rivera", ("Jordan", "Rivera")),
        ("Dr Lee", (None, "Lee")),
        ("J. Rivera", (None, "Rivera")),
        ("+1 415-555-0299", (None, None)),
        ("(555) 555-0123", (None, None)),
        ("jordan@example.net", (None, None)),
        ("Front Desk", (None, None)),
        ("Acme Inc.", (None, None)),
        ("WIRELESS CALLER", (None, None)),
        ("Unknown", (None, None)),
        ("", (None, None)),
        (None, (None, None)),
    ],
)
def test_only_a_persons_name_is_split(name: str | None, parts: tuple[str | None, str | None]) -> None:
    assert split_name(name) == parts


def test_built_in_contacts_have_first_and_last_names(tenant: Any) -> None:
    crm = LocalConnector(tenant)
    jordan = crm.find_contact(Party(phone="+15555550123"))
    assert jordan is not None
    info = crm.contact_info(jordan.ref)
    assert (info["name"], info["first_name"], info["last_name"]) == ("Jordan Rivera", "Jordan", "Rivera")

    explicit = CrmRef("contact", str(crm.add_contact(None, ["+15555550131"], None, None, first_name="Li")))
    assert {k: crm.contact_info(explicit)[k] for k in ("name", "first_name", "last_name")} == {
        "name": "Li",
        "first_name": "Li",
        "last_name": None,
    }
    # explicit parts win over the split of the display name
    desk_id = crm.add_contact("Wu (front desk)", ["5555550132"], None, None, first_name="Ann", last_name="Wu")
    info = crm.contact_info(CrmRef("contact", str(desk_id)))
    assert (info["name"], info["first_name"], info["last_name"]) == ("Wu (front desk)", "Ann", "Wu")
    nameless = CrmRef("contact", str(crm.add_contact(None, ["5555550133"], None, None)))
    assert crm.contact_info(nameless)["name"] == "+1 555-555-0133"
    assert crm.contact_info(nameless)["first_name"] is None

    stranger = crm.create_contact(Party(phone=STRANGER), external_id=f"switchboard-contact-{STRANGER}")
    info = crm.contact_info(stranger)
    assert info["name"] == "+1 555-555-0111"
    assert (info["first_name"], info["last_name"]) == (None, None)

    # naming the contact later (an update_crm step, an admin) splits the new name
    crm.update_contact(stranger, {"name": "Alex Chen"})
    info = crm.contact_info(stranger)
    assert (info["name"], info["first_name"], info["last_name"]) == ("Alex Chen", "Alex", "Chen")
    crm.update_contact(stranger, {"first_name": "Al"})
    assert crm.contact_info(stranger)["first_name"] == "Al"


def test_add_contact_needs_something_to_call_the_contact(tenant: Any) -> None:
    with pytest.raises(ValueError, match="needs a name"):
        LocalConnector(tenant).add_contact("  ", [], None, None)


# --- the default rules greet an unknown caller "Hi there" ---------------------------------------------


@pytest.fixture
def world(twilio_api: Any, settings: Any, tenant: Any, redis_conn: Any, run_worker: Any) -> World:  # noqa: F811
    twilio_api.reset()
    twilio_api.create_account(FIXTURE_ACCOUNT, FIXTURE_TOKEN)
    twilio_api.add_number(FIXTURE_ACCOUNT, OUR)
    app = create_app(settings.with_(twilio_api_base=twilio_api.base_url))
    caches.clear_all()
    return World(app, twilio_api, tenant, redis_conn, run_worker, settings)


def default_rules_now() -> str:
    """The shipped default rules, with the two-minute wait and quiet hours taken out of a test's way."""
    source = rules.default_source()
    assert "- wait: 2m" in source and 'quiet_hours: "08:00-21:00"' in source
    source = source.replace("- wait: 2m", "- wait: 0s")
    source = source.replace('quiet_hours: "08:00-21:00"', "quiet_hours: off")
    assert rules.load(source).settings.quiet_hours is None
    return source


def test_missed_call_from_an_unknown_number_is_greeted_hi_there(world: World) -> None:
    store.store_rules(world.tenant.id, default_rules_now())
    world.post(missed_call(STRANGER))
    world.run()
    [sent] = world.texts()
    assert sent["to"] == STRANGER
    assert sent["body"].startswith("Hi there, this is ")
    assert sent["body"].endswith("Sorry we missed your call. How can we help?")
    assert "+1" not in sent["body"]
    with db.transaction() as s:
        contact = s.query(LocalContact).filter(LocalContact.name == "+1 555-555-0111").one()
        assert (contact.first_name, contact.last_name) == (None, None)
    [task] = world.tasks()
    assert task.subject == "Call back +1 555-555-0111 (missed call)"  # the display name stays the number


def test_missed_call_from_a_known_contact_is_greeted_by_first_name(world: World) -> None:
    store.store_rules(world.tenant.id, default_rules_now())
    world.post(missed_call())
    world.run()
    [sent] = world.texts()
    assert sent["body"].startswith("Hi Jordan, this is Sam.")


# --- the migration backfills names that are a person's -------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """An empty database of each backend for walking the migrations (not the session's one)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'walk.db'}"
        return
    with scratch_postgres("switchboard_walk") as url:
        yield url


def test_migration_backfills_first_and_last_names(fresh_database: str) -> None:
    from alembic import command

    config = alembic_config(fresh_database)
    command.upgrade(config, "0003")
    engine = create_engine(database_url_for_sqlalchemy(fresh_database))
    names = ["Jordan Rivera", "+1 555-555-0111", "Priya", "jordan@example.net", "Unknown", "Mary Ann Smith"]
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tenants (id, name, region, crm, crm_status, settings, created_at)"
                    " VALUES (1, 'acme', 'US', 'local', 'ok', '{}', CURRENT_TIMESTAMP)"
                )
            )
            for n, name in enumerate(names, 1):
                conn.execute(
                    text(
                        "INSERT INTO local_contacts (id, tenant_id, name, properties, created_at)"
                        " VALUES (:id, 1, :name, '{}', CURRENT_TIMESTAMP)"
                    ),
                    {"id": n, "name": name},
                )
        command.upgrade(config, "head")
        with engine.connect() as conn:
            query = text("SELECT name, first_name, last_name FROM local_contacts ORDER BY id")
            rows = conn.execute(query).all()
        assert [tuple(r) for r in rows] == [
            ("Jordan Rivera", "Jordan", "Rivera"),
            ("+1 555-555-0111", None, None),
            ("Priya", "Priya", None),
            ("jordan@example.net", None, None),
            ("Unknown", None, None),
            ("Mary Ann Smith", "Mary", "Ann Smith"),
        ]
        command.downgrade(config, "0003")
        command.upgrade(config, "head")
    finally:
        engine.dispose()
