"""One test per HubSpot webhook fixture: post the captured batch, v3-signed, and check what was stored.

Zulip-style, like tests/webhooks/test_twilio.py: every `*.json` in tests/fixtures/hubspot that is a webhook
batch (a JSON array of events) is posted to /webhooks/hubspot twice, signed with the app's client secret by
tests/signing.py; its events (all of the portal we know) are stored once each in crm_events and handed to
the automations once. A tampered body or a stale timestamp is refused with 403 and stores nothing. A file
in that folder that is neither a batch nor a batch's captured request headers fails
test_every_fixture_is_a_batch_or_its_headers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from sqlalchemy import select

from app.core import db
from app.core.models import CrmEvent, Tenant
from app.core.settings import Settings
from app.web import create_app
from tests.conftest import PUBLIC_BASE, count, make_tenant
from tests.connectors.hubspot.test_connector import CLIENT_SECRET
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN, HUBSPOT_FIXTURES, HubSpotPoster, sign_hubspot


def is_batch(path: Path) -> bool:
    """Whether a fixture file is a HubSpot webhook batch: a JSON array of events."""
    if path.suffix != ".json":
        return False
    events = json.loads(path.read_text())
    required = {"eventId", "portalId", "subscriptionType"}
    return (
        isinstance(events, list)
        and bool(events)
        and all(isinstance(e, dict) and required <= e.keys() for e in events)
    )


BATCHES = sorted(p.stem for p in HUBSPOT_FIXTURES.iterdir() if p.is_file() and is_batch(p))
"""Every webhook batch in tests/fixtures/hubspot, by name (file name without .json)."""


def body_of(name: str) -> str:
    """A fixture's exact body."""
    return (HUBSPOT_FIXTURES / f"{name}.json").read_text()


def events_of(name: str) -> list[dict[str, Any]]:
    """A fixture's events."""
    return json.loads(body_of(name))  # type: ignore[no-any-return]


@pytest.fixture
def hubspot(app: Any, settings: Settings) -> HubSpotPoster:
    """Posts v3-signed batches to an app that knows the HubSpot app's client secret."""
    hs_app = create_app(settings.with_(hubspot_client_secret=CLIENT_SECRET))
    return HubSpotPoster(hs_app.test_client(), PUBLIC_BASE, CLIENT_SECRET)


def portal_tenant(portal_id: int) -> Tenant:
    """A HubSpot tenant installed for `portal_id`."""
    tenant = make_tenant("acme", FIXTURE_ACCOUNT, FIXTURE_TOKEN, crm="hubspot")
    with db.transaction() as s:
        s.get(Tenant, tenant.id).crm_account_id = str(portal_id)
    return tenant


def crm_event_jobs(settings: Settings, redis_conn: Redis) -> list[str]:
    """The automation jobs waiting for CRM events."""
    queue = Queue(settings.queue_name, connection=redis_conn)
    return sorted(j for j in queue.job_ids if j.startswith("crm-event-"))


# --- the parametrization covers the folder -------------------------------------------------------------


def test_every_fixture_is_a_batch_or_its_headers() -> None:
    files = sorted(p.name for p in HUBSPOT_FIXTURES.iterdir() if p.is_file())
    assert BATCHES, f"no webhook batches in {HUBSPOT_FIXTURES}"
    others = [n for n in files if n.removesuffix(".json") not in BATCHES]
    assert all(n.endswith(".headers") and n.removesuffix(".headers") in BATCHES for n in others), others


def test_captured_signature_is_what_our_signer_computes() -> None:
    """The v3 header HubSpot sent with a fixture is what sign_hubspot gives for its body and URL."""
    for headers_file in sorted(HUBSPOT_FIXTURES.glob("*.headers")):
        request_line, *lines = headers_file.read_text().replace("\r", "").splitlines()
        method, path, _ = request_line.split(" ")
        headers = dict(line.split(": ", 1) for line in lines if ": " in line)
        body = headers_file.with_suffix(".json").read_text()
        url = f"https://{headers['Host']}{path}"
        assert len(body.encode()) == int(headers["Content-Length"])
        signature = sign_hubspot(CLIENT_SECRET, method, url, body, headers["X-HubSpot-Request-Timestamp"])
        assert signature == headers["X-HubSpot-Signature-v3"], headers_file.name


# --- one test per fixture ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BATCHES)
def test_fixture_posted_twice_is_stored_once(
    name: str, hubspot: HubSpotPoster, settings: Settings, redis_conn: Redis
) -> None:
    events = events_of(name)
    portals = {e["portalId"] for e in events}
    assert len(portals) == 1, f"{name}: one portal per fixture batch"
    tenant = portal_tenant(portals.pop())

    first = hubspot.fixture(name)
    assert first.status_code == 204, first.get_data(as_text=True)
    assert first.data == b""
    jobs_after_first = crm_event_jobs(settings, redis_conn)

    again = hubspot.fixture(name)  # HubSpot retries until it sees a 2xx
    assert again.status_code == 204, again.get_data(as_text=True)

    with db.transaction() as s:
        rows = list(s.scalars(select(CrmEvent).order_by(CrmEvent.event_id)))
    assert [r.event_id for r in rows] == sorted(str(e["eventId"]) for e in events)
    by_id = {str(e["eventId"]): e for e in events}
    for row in rows:
        event = by_id[row.event_id]
        assert row.tenant_id == tenant.id
        assert row.provider == "hubspot"
        assert row.event_type == event["subscriptionType"]
        assert row.object_type == event["subscriptionType"].partition(".")[0]
        assert row.object_id == str(event["objectId"])
        assert row.property_name == event.get("propertyName")
        assert row.property_value == event.get("propertyValue")
        assert row.payload == event
    assert jobs_after_first == sorted(f"crm-event-{r.id}" for r in rows)  # one automation job each
    assert crm_event_jobs(settings, redis_conn) == jobs_after_first  # and the retry asked for nothing more


@pytest.mark.parametrize("name", BATCHES)
def test_tampered_fixture_is_403_and_stores_nothing(name: str, hubspot: HubSpotPoster) -> None:
    body, events = body_of(name), events_of(name)
    portal_tenant(events[0]["portalId"])
    first_id = str(events[0]["eventId"])
    forged = body.replace(first_id, str(int(first_id) + 1), 1)
    assert forged != body
    r = hubspot.post(forged, signed_body=body)
    assert r.status_code == 403, r.get_data(as_text=True)
    assert count(CrmEvent) == 0


@pytest.mark.parametrize("name", BATCHES)
def test_stale_fixture_is_403_and_stores_nothing(name: str, hubspot: HubSpotPoster) -> None:
    portal_tenant(events_of(name)[0]["portalId"])
    six_minutes_ago = int(time.time() * 1000) - 360_000
    r = hubspot.fixture(name, timestamp_ms=six_minutes_ago)
    assert r.status_code == 403, r.get_data(as_text=True)
    assert count(CrmEvent) == 0
