"""SendGrid: Inbound Parse (route token) and the signed Event Webhook, posted from the captured fixtures."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from sqlalchemy import select

from app.core import db, ledger, mail
from app.core.interactions import Event
from app.core.models import Interaction, LocalActivity, LocalContact, Tenant, WebhookEvent
from tests.conftest import PUBLIC_BASE, count
from tests.signing import SENDGRID_FIXTURES, SendGridSigner, multipart_fixture

INBOUND = "/webhooks/sendgrid/inbound"
EVENTS = "/webhooks/sendgrid/events"
ROOT = "q1042.20250310221201.0000000001@mail.example.com"  # the quote email Jordan answers
BATCH = (SENDGRID_FIXTURES / "events__batch.json").read_bytes()
FINAL = {  # sg_message_id prefix -> status once the whole batch is in, in any order
    "FIXTUREmsg0000000001aQ": "clicked",
    "FIXTUREmsg0000000002bQ": "bounced",
    "FIXTUREmsg0000000003cQ": "failed",
    "FIXTUREmsg0000000004dQ": "complained",
    "FIXTUREmsg0000000005eQ": "unsubscribed",
}


@pytest.fixture
def signer() -> SendGridSigner:
    return SendGridSigner()


@pytest.fixture
def route(tenant: Tenant, signer: SendGridSigner) -> str:
    """The tenant's route token, with the test key pair's public half as its verification key."""
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        mail.set_email_secret(s, row, "sendgrid_verification_key", signer.verification_key)
        return mail.new_route_token(s, row)


def post_inbound(client: Any, name: str, token: str) -> Any:
    body, content_type = multipart_fixture(SENDGRID_FIXTURES, name)
    return client.post(f"{INBOUND}?token={token}", data=body, content_type=content_type, base_url=PUBLIC_BASE)


def post_events(client: Any, signer: SendGridSigner, token: str, body: bytes, **kw: Any) -> Any:
    headers = signer.headers(body, **kw)
    return client.post(
        f"{EVENTS}?token={token}",
        data=body,
        content_type="application/json;charset=utf-8",
        headers=headers,
        base_url=PUBLIC_BASE,
    )


def interactions() -> list[Interaction]:
    with db.transaction() as s:
        return list(s.scalars(select(Interaction).order_by(Interaction.id)))


@pytest.mark.parametrize("name", ["inbound__parsed", "inbound__raw"])
def test_inbound_email_becomes_an_interaction(client: Any, route: str, name: str) -> None:
    response = post_inbound(client, name, route)
    assert response.status_code == 200, response.get_data(as_text=True)
    [row] = interactions()
    assert (row.provider, row.channel, row.direction, row.status) == (
        "sendgrid",
        "email",
        "inbound",
        "received",
    )
    assert row.provider_id == "CAF1XTURE0000000000000000000000000000000000001@mail.example.net"
    assert row.from_addr == row.party_email == "jordan.rivera@example.net"
    assert row.to_addr == "support@parse.example.com"
    assert row.subject == "Re: Your quote #1042"
    assert row.body is not None and row.body.startswith("Thanks, that works for us.")
    assert row.body.endswith("Jordan") and "wrote:" not in row.body and ">" not in row.body
    assert "> Your quote #1042 is ready." in row.facts["email"]["full_text"]
    assert row.thread_key == ROOT
    assert row.facts["email"]["in_reply_to"] == ROOT and row.facts["email"]["references"] == [ROOT]
    assert row.facts["email"]["dkim"] == "{@example.net : pass}"
    assert row.party_phone is None and row.our_number is None and row.media == []
    assert count(WebhookEvent) == 1


def test_the_same_inbound_email_twice_stores_it_once(client: Any, route: str) -> None:
    assert post_inbound(client, "inbound__parsed", route).status_code == 200
    assert post_inbound(client, "inbound__parsed", route).status_code == 200
    assert count(WebhookEvent) == 1 and count(Interaction) == 1


@pytest.mark.parametrize("token", ["", "not-the-token"])
def test_inbound_without_the_route_token_is_refused(client: Any, route: str, token: str) -> None:
    assert post_inbound(client, "inbound__parsed", token).status_code == 403
    assert count(WebhookEvent) == 0 and count(Interaction) == 0


def test_event_batch_updates_each_email_by_message_id(
    client: Any, signer: SendGridSigner, route: str
) -> None:
    response = post_events(client, signer, route, BATCH)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert count(WebhookEvent) == 8
    rows = interactions()
    assert {r.provider_id: r.status for r in rows} == FINAL
    first = next(r for r in rows if r.provider_id == "FIXTUREmsg0000000001aQ")
    assert first.direction == "outbound" and first.party_email == "jordan.rivera@example.net"
    assert first.thread_key == "FIXTUREmsg0000000001aQ@geopod-ismtpd-8"
    assert set(first.facts["email_seen"]) == {"processed", "delivered", "open", "click"}
    bounced = next(r for r in rows if r.status == "bounced")
    assert bounced.error_code == "5.1.1" and bounced.facts["email_status"]["severity"] == "permanent"


def test_events_in_any_order_fold_into_the_outbound_email(
    client: Any, signer: SendGridSigner, route: str, tenant: Tenant
) -> None:
    # The email as sending recorded it (X-Message-Id of the send = sg_message_id up to its first dot).
    sent = Event(
        "sendgrid",
        "send",
        "send:FIXTUREmsg0000000001aQ",
        "email",
        "FIXTUREmsg0000000001aQ",
        "",
        {
            "email": {
                "direction": "outbound",
                "from": "sales@example.com",
                "to": "Jordan.Rivera@example.net",
                "subject": "Your quote #1042",
                "text": "Your quote is ready.",
                "message_id": "FIXTUREmsg0000000001aQ@geopod-ismtpd-8",
            },
            "email_status": {"status": "sent"},
        },
        {},
    )
    original = ledger.record(tenant, sent).interaction_id
    items = json.loads(BATCH)
    for item in reversed(items):  # newest first, one request each
        assert post_events(client, signer, route, json.dumps([item]).encode()).status_code == 200
    rows = {r.provider_id: r for r in interactions()}
    assert {k: r.status for k, r in rows.items()} == FINAL
    mine = rows["FIXTUREmsg0000000001aQ"]
    assert mine.id == original and mine.subject == "Your quote #1042" and mine.body == "Your quote is ready."


def test_a_duplicate_batch_stores_nothing(client: Any, signer: SendGridSigner, route: str) -> None:
    assert post_events(client, signer, route, BATCH).status_code == 200
    versions = {r.id: r.version for r in interactions()}
    assert post_events(client, signer, route, BATCH).status_code == 200
    assert count(WebhookEvent) == 8
    assert {r.id: r.version for r in interactions()} == versions


def test_bad_signature_is_refused_and_stores_nothing(client: Any, signer: SendGridSigner, route: str) -> None:
    headers = signer.headers(BATCH)
    tampered = BATCH.replace(b'"bounce"', b'"delivered"', 1)
    response = client.post(f"{EVENTS}?token={route}", data=tampered, headers=headers, base_url=PUBLIC_BASE)
    assert response.status_code == 403
    other = SendGridSigner()  # signed, but with a key that is not the tenant's
    assert post_events(client, other, route, BATCH).status_code == 403
    captured = client.post(f"{EVENTS}?token={route}", data=BATCH, base_url=PUBLIC_BASE)  # unsigned
    assert captured.status_code == 403
    assert count(WebhookEvent) == 0 and count(Interaction) == 0


def test_stale_timestamp_is_refused_and_stores_nothing(
    client: Any, signer: SendGridSigner, route: str
) -> None:
    response = post_events(client, signer, route, BATCH, timestamp=int(time.time()) - 3600)
    assert response.status_code == 403
    assert response.get_json()["error"] == "stale or malformed timestamp"
    assert count(WebhookEvent) == 0


def test_the_captured_signature_does_not_verify_with_our_key(client: Any, route: str) -> None:
    headers = dict(
        line.split(": ", 1)
        for line in (SENDGRID_FIXTURES / "events__batch.headers").read_text().splitlines()
        if line.startswith("X-Twilio")
    )
    response = client.post(f"{EVENTS}?token={route}", data=BATCH, headers=headers, base_url=PUBLIC_BASE)
    assert response.status_code == 403  # the fixture's timestamp is long past, and its key is not ours
    assert count(WebhookEvent) == 0


def test_inbound_email_syncs_to_the_built_in_crm_timeline(client: Any, route: str, run_worker: Any) -> None:
    assert post_inbound(client, "inbound__parsed", route).status_code == 200
    run_worker()
    [row] = interactions()
    assert row.sync_state == "synced", row.last_error
    with db.transaction() as s:
        [activity] = s.scalars(select(LocalActivity))
        contact = s.get(LocalContact, activity.contact_id)
        assert contact is not None and contact.name == "Jordan Rivera"  # matched by address
        assert (activity.kind, activity.direction, activity.status) == ("email", "inbound", "received")
        assert activity.subject == "Re: Your quote #1042"
        assert activity.body is not None and activity.body.startswith("Thanks, that works")


# --- basic auth on Inbound Parse (optional per tenant) --------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_inbound_basic_auth_when_the_tenant_requires_it(client: Any, tenant: Tenant, route: str) -> None:
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        user, password = mail.new_inbound_basic_auth(s, row)
    with db.engine().connect() as conn:
        stored = conn.execute(select(Tenant.__table__.c.email_secrets)).scalar()
    assert password not in (stored or "")  # encrypted at rest, and only its hash inside
    body, content_type = multipart_fixture(SENDGRID_FIXTURES, "inbound__parsed")

    def post(headers: dict[str, str]) -> Any:
        return client.post(
            f"{INBOUND}?token={route}",
            data=body,
            content_type=content_type,
            headers=headers,
            base_url=PUBLIC_BASE,
        )

    assert post({}).status_code == 403
    assert post(_basic(user, password + "x")).status_code == 403
    assert post(_basic("someone", password)).status_code == 403
    assert post({"Authorization": f"Bearer {password}"}).status_code == 403
    assert interactions() == []
    assert post(_basic(user, password)).status_code == 200
    assert len(interactions()) == 1
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        mail.clear_inbound_basic_auth(s, row)
    assert post({}).status_code == 200  # a duplicate now, accepted on the route token alone


def test_basic_auth_does_not_apply_to_signed_events(
    client: Any, tenant: Tenant, route: str, signer: SendGridSigner
) -> None:
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        mail.new_inbound_basic_auth(s, row)
    assert post_events(client, signer, route, BATCH).status_code == 200


# --- signed Inbound Parse (a Parse webhook security policy) ------------------------------------------


def _require_inbound_signature(tenant: Tenant, key: str | None) -> None:
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        if key:
            mail.set_email_secret(s, row, "sendgrid_inbound_verification_key", key)
        else:
            mail.clear_email_secret(s, row, "sendgrid_inbound_verification_key")


@pytest.mark.parametrize("name", ["inbound__parsed", "inbound__raw"])
def test_signed_inbound_parse_when_the_tenant_requires_it(
    client: Any, tenant: Tenant, route: str, name: str
) -> None:
    parse_signer = SendGridSigner()  # the security policy's own key pair, not the Event Webhook's
    _require_inbound_signature(tenant, parse_signer.verification_key)
    body, content_type = multipart_fixture(SENDGRID_FIXTURES, name)

    def post(headers: dict[str, str], data: bytes = body) -> Any:
        return client.post(
            f"{INBOUND}?token={route}",
            data=data,
            content_type=content_type,
            headers=headers,
            base_url=PUBLIC_BASE,
        )

    tampered = body.replace(b"Thanks, that works", b"Thanks, that fails")
    assert tampered != body
    refused = [
        post({}),  # unsigned
        post(SendGridSigner().headers(body)),  # another key
        post(parse_signer.headers(body), tampered),  # signed, then changed
        post(parse_signer.headers(body, timestamp=int(time.time()) - mail.FRESHNESS_SECONDS - 60)),  # stale
        post({**parse_signer.headers(body), "X-Twilio-Email-Event-Webhook-Signature": "not base64!"}),
    ]
    assert [r.status_code for r in refused] == [403] * 5
    assert count(WebhookEvent) == 0 and interactions() == []
    response = post(parse_signer.headers(body))
    assert response.status_code == 200, response.get_data(as_text=True)
    [row] = interactions()
    assert row.subject == "Re: Your quote #1042" and count(WebhookEvent) == 1
    _require_inbound_signature(tenant, None)
    assert post({}).status_code == 200  # off again: the route token alone admits (a duplicate)
    assert count(WebhookEvent) == 1


def test_a_binary_attachment_is_verified_as_bytes(client: Any, tenant: Tenant, route: str) -> None:
    parse_signer = SendGridSigner()
    _require_inbound_signature(tenant, parse_signer.verification_key)
    boundary = "xYzZY"
    parts = [
        ("from", "Jordan Rivera <jordan.rivera@example.net>"),
        ("to", "support@parse.example.com"),
        ("subject", "The signed drawing"),
        ("text", "See attached."),
        ("headers", "Message-ID: <sig-binary-1@mail.example.net>\nSubject: The signed drawing\n"),
        ("envelope", json.dumps({"to": ["support@parse.example.com"], "from": "jordan.rivera@example.net"})),
        ("attachments", "1"),
    ]
    chunks = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in parts
    ]
    chunks.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="attachment1"; filename="d.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + bytes(range(256))  # not UTF-8
        + f"\r\n--{boundary}--\r\n".encode()
    )
    body = b"".join(chunks)
    response = client.post(
        f"{INBOUND}?token={route}",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
        headers=parse_signer.headers(body),
        base_url=PUBLIC_BASE,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    [row] = interactions()
    assert row.media == [{"name": "d.bin", "type": "application/octet-stream", "size": 256}]
