"""Installing the HubSpot app (OAuth with a signed single-use state) and HubSpot's v3-signed webhooks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select, text

from app.cli import main
from app.core import db
from app.core.models import CrmEvent, Tenant
from app.web import create_app
from tests.conftest import PUBLIC_BASE, count, make_tenant
from tests.connectors.hubspot.test_connector import CLIENT_ID, CLIENT_SECRET, emulator  # noqa: F401  (session fixture)
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN

FIXTURES = Path(__file__).parents[2] / "fixtures" / "hubspot"
WEBHOOK_URL = f"{PUBLIC_BASE}/webhooks/hubspot"


@pytest.fixture
def hs_app(emulator, settings, app) -> Any:  # noqa: F811
    emulator.reset()
    return create_app(
        settings.with_(
            hubspot_api_base=emulator.base_url,
            hubspot_client_id=CLIENT_ID,
            hubspot_client_secret=CLIENT_SECRET,
            hubspot_authorize_url="https://app.hubspot.example/oauth/authorize",
        )
    )


def start_install(client: Any) -> dict[str, str]:
    r = client.get("/install/hubspot", base_url=PUBLIC_BASE)
    assert r.status_code == 302
    location = urlsplit(r.headers["Location"])
    assert (
        f"{location.scheme}://{location.netloc}{location.path}"
        == "https://app.hubspot.example/oauth/authorize"
    )
    return {k: v[0] for k, v in parse_qs(location.query).items()}


def test_install_creates_the_portal_tenant_with_encrypted_tokens(hs_app, emulator):  # noqa: F811
    portal = emulator.create_portal(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)["portal_id"]
    client = hs_app.test_client()
    query = start_install(client)
    assert query["client_id"] == CLIENT_ID and "crm.objects.contacts.write" in query["scope"].split(" ")
    assert query["redirect_uri"] == f"{PUBLIC_BASE}/oauth/hubspot/callback"
    code = emulator.issue_code(portal, CLIENT_ID, query["redirect_uri"])  # the admin clicked "Connect app"
    r = client.get(
        "/oauth/hubspot/callback", query_string={"code": code, "state": query["state"]}, base_url=PUBLIC_BASE
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["portal_id"] == str(portal) and r.json["created"] is True
    with db.transaction() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.crm_account_id == str(portal)))
        secrets = json.loads(tenant.crm_secrets)
        stored = s.execute(text("SELECT crm_secrets FROM tenants WHERE id = :id"), {"id": tenant.id}).scalar()
    assert tenant.crm == "hubspot" and secrets["type"] == "oauth" and secrets["refresh_token"]
    assert secrets["access_token"] not in stored  # encrypted at rest

    # Installing again (e.g. after a revoked token) updates the same tenant.
    query = start_install(client)
    code = emulator.issue_code(portal, CLIENT_ID, query["redirect_uri"])
    again = client.get(
        "/oauth/hubspot/callback", query_string={"code": code, "state": query["state"]}, base_url=PUBLIC_BASE
    )
    assert again.status_code == 200 and again.json["created"] is False
    assert count(Tenant) == 1


def test_replayed_state_is_refused_and_stores_nothing(hs_app, emulator):  # noqa: F811
    portal = emulator.create_portal(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)["portal_id"]
    client = hs_app.test_client()
    query = start_install(client)
    code = emulator.issue_code(portal, CLIENT_ID, query["redirect_uri"])
    ok = client.get(
        "/oauth/hubspot/callback", query_string={"code": code, "state": query["state"]}, base_url=PUBLIC_BASE
    )
    assert ok.status_code == 200
    with db.transaction() as s:
        s.execute(Tenant.__table__.delete())
    code2 = emulator.issue_code(portal, CLIENT_ID, query["redirect_uri"])
    replay = client.get(
        "/oauth/hubspot/callback", query_string={"code": code2, "state": query["state"]}, base_url=PUBLIC_BASE
    )
    assert replay.status_code == 400 and replay.json["error"] == "state already used"
    assert count(Tenant) == 0


@pytest.mark.parametrize("state", ["", "garbage", "tampered"])
def test_bad_state_is_400_and_stores_nothing(hs_app, emulator, state):  # noqa: F811
    portal = emulator.create_portal(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)["portal_id"]
    client = hs_app.test_client()
    good = start_install(client)["state"]
    if state == "tampered":
        state = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    code = emulator.issue_code(portal, CLIENT_ID)
    r = client.get(
        "/oauth/hubspot/callback", query_string={"code": code, "state": state}, base_url=PUBLIC_BASE
    )
    assert r.status_code == 400
    assert count(Tenant) == 0


def test_bad_code_is_400(hs_app, emulator):  # noqa: F811
    client = hs_app.test_client()
    state = start_install(client)["state"]
    r = client.get(
        "/oauth/hubspot/callback", query_string={"code": "not-a-code", "state": state}, base_url=PUBLIC_BASE
    )
    assert r.status_code == 400 and count(Tenant) == 0


# --- webhooks ------------------------------------------------------------------------------------------


def signed(body: str, timestamp_ms: int | None = None, secret: str = CLIENT_SECRET) -> dict[str, str]:
    """Headers HubSpot sends: v3 signature over method + URI + body + timestamp."""
    ts = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
    digest = hmac.new(secret.encode(), f"POST{WEBHOOK_URL}{body}{ts}".encode(), hashlib.sha256).digest()
    return {
        "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": ts,
        "Content-Type": "application/json",
    }


@pytest.fixture
def hubspot_tenant(hs_app) -> Tenant:
    tenant = make_tenant("acme", FIXTURE_ACCOUNT, FIXTURE_TOKEN, crm="hubspot")
    with db.transaction() as s:
        s.get(Tenant, tenant.id).crm_account_id = "12345678"  # the fixtures' portalId
    return tenant


@pytest.mark.parametrize(
    "name", ["webhook_v3__deal_stage_changed", "webhook__contact_owner_change", "webhook__contact_creation"]
)
def test_webhook_events_are_stored_once(hs_app, hubspot_tenant, name):
    body = (FIXTURES / f"{name}.json").read_text()
    client = hs_app.test_client()
    for _ in range(2):  # HubSpot retries: the second delivery stores nothing new
        r = client.post("/webhooks/hubspot", data=body, headers=signed(body), base_url=PUBLIC_BASE)
        assert r.status_code == 204
    events = json.loads(body)
    with db.transaction() as s:
        rows = list(s.scalars(select(CrmEvent).order_by(CrmEvent.event_id)))
    assert [r.event_id for r in rows] == sorted(str(e["eventId"]) for e in events)
    first = rows[0]
    assert first.tenant_id == hubspot_tenant.id and first.event_type == events[0]["subscriptionType"]
    assert first.payload == next(e for e in events if str(e["eventId"]) == first.event_id)
    if name == "webhook_v3__deal_stage_changed":
        assert (first.object_type, first.property_name, first.property_value) == (
            "deal",
            "dealstage",
            "closedwon",
        )


def test_fixture_signature_verifies_with_the_fixture_secret():
    """The captured v3 header is what our check computes for the fixture body and its URL."""
    from hubspot.utils.signature import Signature

    body = (FIXTURES / "webhook_v3__deal_stage_changed.json").read_text()
    headers = dict(
        line.split(": ", 1)
        for line in (
            (FIXTURES / "webhook_v3__deal_stage_changed.headers")
            .read_text()
            .replace("\r", "")
            .splitlines()[1:]
        )
        if ": " in line
    )
    expected = Signature.get_signature(
        CLIENT_SECRET,
        body,
        "v3",
        "https://example.com/hubspot/webhook",
        "POST",
        headers["X-HubSpot-Request-Timestamp"],
    )
    assert expected == headers["X-HubSpot-Signature-v3"]


@pytest.mark.parametrize("case", ["stale", "future", "tampered", "wrong-secret", "unsigned", "bad-timestamp"])
def test_bad_webhooks_are_403_and_store_nothing(hs_app, hubspot_tenant, case):
    body = (FIXTURES / "webhook_v3__deal_stage_changed.json").read_text()
    now = int(time.time() * 1000)
    headers = {
        "stale": signed(body, now - 301_000),
        "future": signed(body, now + 301_000),
        "tampered": signed(body),
        "wrong-secret": signed(body, secret="not-the-secret"),
        "unsigned": {"Content-Type": "application/json"},
        "bad-timestamp": {**signed(body), "X-HubSpot-Request-Timestamp": "soon"},
    }[case]
    sent = body.replace("closedwon", "closedlost") if case == "tampered" else body
    r = hs_app.test_client().post("/webhooks/hubspot", data=sent, headers=headers, base_url=PUBLIC_BASE)
    assert r.status_code == 403
    assert count(CrmEvent) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [("not json", "body"), ('{"a": 1}', "body"), ('[{"portalId": 12345678}]', "[0].eventId")],
)
def test_malformed_webhook_is_400_naming_the_field(hs_app, hubspot_tenant, body, field):
    r = hs_app.test_client().post("/webhooks/hubspot", data=body, headers=signed(body), base_url=PUBLIC_BASE)
    assert r.status_code == 400 and r.json["field"] == field
    assert count(CrmEvent) == 0


def test_events_of_unknown_portals_are_ignored(hs_app, hubspot_tenant):
    body = json.dumps(
        [
            {
                "eventId": 1,
                "portalId": 999,
                "subscriptionType": "contact.creation",
                "occurredAt": 1740074651312,
                "objectId": 5,
            }
        ]
    )
    r = hs_app.test_client().post("/webhooks/hubspot", data=body, headers=signed(body), base_url=PUBLIC_BASE)
    assert r.status_code == 204 and count(CrmEvent) == 0


# --- provisioning without the browser ------------------------------------------------------------------


def test_tenant_add_with_a_private_app_token(hs_app, emulator):  # noqa: F811
    info = emulator.create_portal()
    result = hs_app.test_cli_runner().invoke(
        main,
        [
            "tenant",
            "add",
            "globex",
            "--twilio-account-sid",
            "AC" + "e" * 32,
            "--twilio-auth-token",
            "t" * 32,
            "--crm",
            "hubspot",
            "--hubspot-token",
            info["token"],
            "--hubspot-portal-id",
            str(info["portal_id"]),
        ],
    )
    assert result.exit_code == 0, result.output
    setup = hs_app.test_cli_runner().invoke(main, ["hubspot", "setup", "globex"])
    assert setup.exit_code == 0, setup.output
    assert "created on contacts, calls, communications, tasks" in setup.output
    again = hs_app.test_cli_runner().invoke(main, ["hubspot", "setup", "globex"])
    assert again.exit_code == 0 and "already there" in again.output
    missing = hs_app.test_cli_runner().invoke(
        main,
        [
            "tenant",
            "add",
            "initech",
            "--twilio-account-sid",
            "AC" + "f" * 32,
            "--twilio-auth-token",
            "x",
            "--crm",
            "hubspot",
        ],
    )
    assert missing.exit_code != 0 and "--hubspot-token" in missing.output
