"""Mailgun: inbound routes and HTTP webhooks, posted from the captured fixtures and signed at test time."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from sqlalchemy import select

from app.core import db, mail
from app.core.models import Interaction, Tenant, WebhookEvent
from tests.conftest import PUBLIC_BASE, count
from tests.signing import MAILGUN_FIXTURES, mailgun_signature

INBOUND = "/webhooks/mailgun/inbound"
EVENTS = "/webhooks/mailgun/events"
KEY = "key-0123456789abcdef0123456789abcdef"  # the tenant's HTTP webhook signing key in these tests
SENT = "20250311161205.1a2b3c4d5e6f7081@mg.example.com"  # the call summary delivered, opened, unsubscribed
EVENT_CASES = {  # fixture -> (provider_id, status of that email after this event alone)
    "events__delivered": (SENT, "delivered"),
    "events__opened": (SENT, "opened"),
    "events__unsubscribed": (SENT, "unsubscribed"),
    "events__failed_permanent": ("20250311161206.2b3c4d5e6f708192@mg.example.com", "bounced"),
}


@pytest.fixture
def route(tenant: Tenant) -> str:
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        mail.set_email_secret(s, row, "mailgun_signing_key", KEY)
        return mail.new_route_token(s, row)


def event_body(name: str, **signature: Any) -> dict[str, Any]:
    body = json.loads((MAILGUN_FIXTURES / f"{name}.json").read_text())
    body["signature"] = signature or mailgun_signature(KEY)
    return body


def post_event(client: Any, token: str, body: dict[str, Any]) -> Any:
    return client.post(f"{EVENTS}?token={token}", json=body, base_url=PUBLIC_BASE)


def inbound_form(**signature: Any) -> dict[str, str]:
    form = dict(parse_qsl((MAILGUN_FIXTURES / "inbound__reply.form").read_text().strip()))
    form.update(signature or mailgun_signature(KEY))
    return form


def post_inbound(client: Any, token: str, form: dict[str, str]) -> Any:
    return client.post(
        f"{INBOUND}?token={token}",
        data=urlencode(form),
        content_type="application/x-www-form-urlencoded",
        base_url=PUBLIC_BASE,
    )


def rows() -> list[Interaction]:
    with db.transaction() as s:
        return list(s.scalars(select(Interaction).order_by(Interaction.id)))


def test_inbound_reply_becomes_an_email_with_stripped_body_and_thread(client: Any, route: str) -> None:
    response = post_inbound(client, route, inbound_form())
    assert response.status_code == 200, response.get_data(as_text=True)
    [row] = rows()
    assert (row.provider, row.channel, row.direction, row.status) == (
        "mailgun",
        "email",
        "inbound",
        "received",
    )
    assert row.party_email == "jordan.rivera@example.net" and row.to_addr == "sales@mg.example.com"
    assert row.subject == "Re: Call summary for quote #1042"
    assert row.body == "Yes, Thursday works. Please send the updated quote to this address."
    assert "Jordan Rivera" in row.facts["email"]["full_text"]
    assert row.thread_key == "20250311161005.0f1e2d3c4b5a6978@mg.example.com"
    assert row.facts["email"]["spf"] == "pass"


@pytest.mark.parametrize("name", sorted(EVENT_CASES))
def test_each_event_fixture(client: Any, route: str, name: str) -> None:
    response = post_event(client, route, event_body(name))
    assert response.status_code == 200, response.get_data(as_text=True)
    [row] = rows()
    provider_id, status = EVENT_CASES[name]
    assert (row.provider_id, row.status, row.direction) == (provider_id, status, "outbound")
    assert count(WebhookEvent) == 1


def test_events_in_any_order_end_in_the_same_state(client: Any, route: str) -> None:
    for name in ("events__unsubscribed", "events__delivered", "events__opened"):
        assert post_event(client, route, event_body(name)).status_code == 200
    [row] = rows()
    assert row.status == "unsubscribed" and row.party_email == "jordan.rivera@example.net"
    assert row.subject == "Call summary for quote #1042"  # from the delivered event's headers
    assert set(row.facts["email_seen"]) == {"delivered", "opened", "unsubscribed"}


def test_replayed_token_is_refused(client: Any, route: str) -> None:
    signature = mailgun_signature(KEY)
    assert post_event(client, route, event_body("events__delivered", **signature)).status_code == 200
    # The signature covers timestamp + token only: replaying it with another body must not work.
    replay = post_event(client, route, event_body("events__failed_permanent", **signature))
    assert replay.status_code == 403 and replay.get_json()["error"] == "replayed token"
    assert count(WebhookEvent) == 1


def test_a_duplicate_event_stores_nothing(client: Any, route: str) -> None:
    assert post_event(client, route, event_body("events__opened")).status_code == 200
    assert post_event(client, route, event_body("events__opened")).status_code == 200  # fresh token
    assert count(WebhookEvent) == 1
    assert [r.version for r in rows()] == [1]


def test_bad_signature_is_refused_and_stores_nothing(client: Any, route: str) -> None:
    bad = {**mailgun_signature(KEY), "signature": "0" * 64}
    assert post_event(client, route, event_body("events__delivered", **bad)).status_code == 403
    assert (
        post_event(client, route, event_body("events__delivered", **mailgun_signature("other"))).status_code
        == 403
    )
    captured = json.loads((MAILGUN_FIXTURES / "events__delivered.json").read_text())
    assert post_event(client, route, captured).status_code == 403  # stale, and not our key
    assert post_inbound(client, route, inbound_form(**bad)).status_code == 403
    assert post_event(client, "wrong-token", event_body("events__delivered")).status_code == 403
    assert count(WebhookEvent) == 0 and count(Interaction) == 0


def test_stale_timestamp_is_refused_and_stores_nothing(client: Any, route: str) -> None:
    old = mailgun_signature(KEY, timestamp=int(time.time()) - 3600)
    response = post_event(client, route, event_body("events__delivered", **old))
    assert response.status_code == 403 and response.get_json()["error"] == "stale or malformed timestamp"
    assert post_inbound(client, route, inbound_form(**old)).status_code == 403
    assert count(WebhookEvent) == 0


def test_fixtures_are_the_ones_named_here() -> None:
    names = {p.stem for p in Path(MAILGUN_FIXTURES).glob("events__*.json")}
    assert names == set(EVENT_CASES)
