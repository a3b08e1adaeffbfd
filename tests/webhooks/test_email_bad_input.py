"""Bad input on the four email webhooks (SendGrid Inbound Parse and Event Webhook, Mailgun routes and
webhooks): a wrong route token is 403, malformed multipart or JSON is 400 naming the part, a body over the
limit is 413; none stores anything. Attachments are kept as metadata only, in the raw-MIME mode too."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from sqlalchemy import select

from app.core import db, mail
from app.core.models import Interaction, Tenant, WebhookEvent
from app.core.settings import MAX_BODY_BYTES
from tests.conftest import PUBLIC_BASE, count
from tests.signing import SendGridSigner, mailgun_signature

MAILGUN_KEY = "key-0123456789abcdef0123456789abcdef"
STREAMS = (
    "/webhooks/sendgrid/inbound",
    "/webhooks/sendgrid/events",
    "/webhooks/mailgun/inbound",
    "/webhooks/mailgun/events",
)
SECRET = b"%PDF-1.4 the attachment's own bytes, which we must not keep"


@pytest.fixture
def signer() -> SendGridSigner:
    return SendGridSigner()


@pytest.fixture
def route(tenant: Tenant, signer: SendGridSigner) -> str:
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        mail.set_email_secret(s, row, "sendgrid_verification_key", signer.verification_key)
        mail.set_email_secret(s, row, "mailgun_signing_key", MAILGUN_KEY)
        return mail.new_route_token(s, row)


def nothing_stored() -> bool:
    return count(WebhookEvent) == 0 and count(Interaction) == 0


def stored_text() -> str:
    with db.transaction() as s:
        return json.dumps([e.payload for e in s.scalars(select(WebhookEvent))])


@pytest.mark.parametrize("path", STREAMS)
@pytest.mark.parametrize("token", ["", "x" * 43, "x" * 201])
def test_a_wrong_route_token_is_403_on_every_stream(client: Any, route: str, path: str, token: str) -> None:
    response = client.post(f"{path}?token={token}", data=b"{}", base_url=PUBLIC_BASE)
    assert response.status_code == 403
    assert nothing_stored()


@pytest.mark.parametrize("path", STREAMS)
def test_over_the_size_limit_is_413_on_every_stream(
    client: Any, route: str, signer: SendGridSigner, path: str
) -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)
    headers = signer.headers(body) if path.endswith("sendgrid/events") else {}  # else 403 comes first
    response = client.post(
        f"{path}?token={route}",
        data=body,
        content_type="application/json",
        headers=headers,
        base_url=PUBLIC_BASE,
    )
    assert response.status_code == 413
    assert nothing_stored()


@pytest.mark.parametrize(
    "body, content_type",
    [
        (
            b'--xx\r\nContent-Disposition: form-data; name="from"\r\n\r\nabc',
            "multipart/form-data; boundary=xx",
        ),
        (b"not multipart at all", "multipart/form-data"),
        (b"", "multipart/form-data; boundary=xx"),
    ],
    ids=["cut-off", "no-boundary", "empty"],
)
def test_malformed_multipart_is_400_naming_the_part(
    client: Any, route: str, body: bytes, content_type: str
) -> None:
    response = client.post(
        f"/webhooks/sendgrid/inbound?token={route}",
        data=body,
        content_type=content_type,
        base_url=PUBLIC_BASE,
    )
    assert response.status_code == 400 and response.get_json()["field"] == "from"
    assert nothing_stored()


def test_a_bad_envelope_or_attachment_info_is_400_naming_it(client: Any, route: str) -> None:
    base = {"to": "support@parse.example.com", "text": "hi", "headers": "Message-ID: <b1@example.net>\r\n"}
    for field, form in [
        ("envelope", {**base, "envelope": "{not json"}),
        ("attachment-info", {**base, "from": "a@example.net", "attachment-info": "[1"}),
    ]:
        response = client.post(
            f"/webhooks/sendgrid/inbound?token={route}",
            data=form,
            content_type="multipart/form-data",
            base_url=PUBLIC_BASE,
        )
        assert response.status_code == 400 and response.get_json()["field"] == field
    assert nothing_stored()


@pytest.mark.parametrize(
    "body", [b"{not json", b"\xff\xfe", b"{}", b"[]"], ids=["cut", "binary", "object", "empty"]
)
def test_a_signed_sendgrid_batch_that_is_not_an_event_array_is_400(
    client: Any, route: str, signer: SendGridSigner, body: bytes
) -> None:
    response = client.post(
        f"/webhooks/sendgrid/events?token={route}",
        data=body,
        content_type="application/json",
        headers=signer.headers(body),
        base_url=PUBLIC_BASE,
    )
    assert response.status_code in (400, 403)  # undecodable bytes cannot carry a valid signature: 403
    if response.status_code == 400:
        assert response.get_json()["field"] == "body"
    assert nothing_stored()


@pytest.mark.parametrize("body", ["{not json", "[1, 2]"], ids=["cut", "array"])
def test_a_mailgun_event_that_is_not_a_json_object_is_400(client: Any, route: str, body: str) -> None:
    response = client.post(
        f"/webhooks/mailgun/events?token={route}",
        data=body,
        content_type="application/json",
        base_url=PUBLIC_BASE,
    )
    assert response.status_code == 400 and response.get_json()["field"] == "body"
    assert nothing_stored()


def test_a_signed_mailgun_event_without_event_data_is_400(client: Any, route: str) -> None:
    body = {"signature": mailgun_signature(MAILGUN_KEY)}
    response = client.post(f"/webhooks/mailgun/events?token={route}", json=body, base_url=PUBLIC_BASE)
    assert response.status_code == 400 and response.get_json()["field"] == "event-data"
    assert nothing_stored()


def test_raw_mime_attachments_are_kept_as_metadata_only(client: Any, route: str) -> None:
    content = base64.encodebytes(SECRET).decode()
    eml = (
        "From: Jordan Rivera <jordan.rivera@example.net>\r\nTo: support@parse.example.com\r\n"
        "Subject: PO attached\r\nMessage-ID: <po1@example.net>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=BB\r\n\r\n"
        "--BB\r\nContent-Type: text/plain\r\n\r\nPO attached.\r\n"
        "--BB\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=po.pdf\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{content}--BB--\r\n"
    )
    response = client.post(
        f"/webhooks/sendgrid/inbound?token={route}",
        data={"email": eml},
        content_type="multipart/form-data",
        base_url=PUBLIC_BASE,
    )
    assert response.status_code == 200
    with db.transaction() as s:
        [row] = s.scalars(select(Interaction))
        assert row.body == "PO attached."
        assert row.facts["email"]["attachments"] == [
            {"name": "po.pdf", "type": "application/pdf", "size": len(SECRET)}
        ]
    kept = stored_text()
    assert "po.pdf" in kept and "PO attached." in kept
    assert content.split()[0] not in kept and "JVBER" not in kept  # base64 of the content: gone


def test_parsed_mode_attachments_are_kept_as_metadata_only(client: Any, route: str) -> None:
    form = {
        "from": "jordan.rivera@example.net",
        "to": "support@parse.example.com",
        "subject": "PO",
        "text": "Here it is.",
        "html": "<p>Here it is.</p><script>alert(1)</script>",
        "headers": "Message-ID: <po2@example.net>\r\n",
        "attachments": "1",
        "attachment1": (io.BytesIO(SECRET), "po.pdf", "application/pdf"),
    }
    response = client.post(
        f"/webhooks/sendgrid/inbound?token={route}",
        data=form,
        content_type="multipart/form-data",
        base_url=PUBLIC_BASE,
    )
    assert response.status_code == 200
    with db.transaction() as s:
        [row] = s.scalars(select(Interaction))
        assert row.facts["email"]["attachments"] == [
            {"name": "po.pdf", "type": "application/pdf", "size": len(SECRET)}
        ]
    kept = stored_text()
    assert SECRET.decode() not in kept
    assert "<script>alert(1)</script>" in kept  # HTML is stored as received (and never rendered by us)


# --- the route token in the path (the URL form; ?token= keeps working) ----------------------------


def test_the_route_token_may_be_the_last_path_segment(
    client: Any, route: str, signer: SendGridSigner
) -> None:
    form = {
        "from": "jordan.rivera@example.net",
        "to": "support@parse.example.com",
        "text": "Hello",
        "headers": "Message-ID: <path1@example.net>\r\n",
    }
    inbound = client.post(
        f"/webhooks/sendgrid/inbound/{route}",
        data=form,
        content_type="multipart/form-data",
        base_url=PUBLIC_BASE,
    )
    assert inbound.status_code == 200
    batch = json.dumps(
        [
            {
                "event": "delivered",
                "email": "jordan.rivera@example.net",
                "sg_event_id": "cGF0aC1mb3JtLWV2ZW50LTE",
                "sg_message_id": "PATHmsg000000000001aQ.recvd-1",
                "timestamp": 1741709527,
            }
        ]
    ).encode()
    events = client.post(
        f"/webhooks/sendgrid/events/{route}",
        data=batch,
        content_type="application/json",
        headers=signer.headers(batch),
        base_url=PUBLIC_BASE,
    )
    assert events.status_code == 200
    mailgun = {
        "signature": mailgun_signature(MAILGUN_KEY),
        "event-data": {
            "id": "path-form-event-1",
            "event": "delivered",
            "timestamp": 1741709527.5,
            "recipient": "jordan.rivera@example.net",
            "message": {"headers": {"message-id": "path2@mg.example.com"}},
        },
    }
    assert (
        client.post(f"/webhooks/mailgun/events/{route}", json=mailgun, base_url=PUBLIC_BASE).status_code
        == 200
    )
    assert count(WebhookEvent) == 3


@pytest.mark.parametrize("path", STREAMS)
def test_a_wrong_route_token_in_the_path_is_403(client: Any, route: str, path: str) -> None:
    response = client.post(f"{path}/{route[:-1]}x", data=b"{}", base_url=PUBLIC_BASE)
    assert response.status_code == 403
    assert nothing_stored()


@pytest.mark.parametrize("path", ["/webhooks/twilio/voice/some-token", "/webhooks/sendgrid/inbound/a/b"])
def test_no_other_deeper_path_exists(client: Any, route: str, path: str) -> None:
    assert client.post(path, data=b"{}", base_url=PUBLIC_BASE).status_code == 404


@pytest.mark.parametrize("signed", ["unsigned", "stale", "other-body"])
def test_events_with_the_token_in_the_path_still_need_a_good_signature(
    client: Any, route: str, signer: SendGridSigner, signed: str
) -> None:
    batch = (
        b'[{"event":"delivered","sg_event_id":"cGF0aC0y","sg_message_id":"P2msg.x","timestamp":1741709527}]'
    )
    headers = {
        "unsigned": {},
        "stale": signer.headers(batch, timestamp=1741709527),
        "other-body": signer.headers(b"[]"),
    }[signed]
    sendgrid = client.post(
        f"/webhooks/sendgrid/events/{route}",
        data=batch,
        content_type="application/json",
        headers=headers,
        base_url=PUBLIC_BASE,
    )
    assert sendgrid.status_code == 403
    mailgun = client.post(
        f"/webhooks/mailgun/events/{route}", json={"event-data": {"event": "delivered"}}, base_url=PUBLIC_BASE
    )
    assert mailgun.status_code == 403
    assert nothing_stored()


def test_mailgun_attachments_are_kept_as_metadata_with_their_size(client: Any, route: str) -> None:
    form = {
        **mailgun_signature(MAILGUN_KEY),
        "sender": "jordan.rivera@example.net",
        "from": "Jordan Rivera <jordan.rivera@example.net>",
        "recipient": "support@mg.example.com",
        "subject": "PO",
        "body-plain": "Here it is.",
        "Message-Id": "<po3@example.net>",
        "attachment-count": "1",
        "attachment-1": (io.BytesIO(SECRET), "po.pdf", "application/pdf"),
    }
    response = client.post(
        f"/webhooks/mailgun/inbound?token={route}",
        data=form,
        content_type="multipart/form-data",
        base_url=PUBLIC_BASE,
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    with db.transaction() as s:
        [row] = s.scalars(select(Interaction))
        assert row.facts["email"]["attachments"] == [
            {"name": "po.pdf", "type": "application/pdf", "size": len(SECRET)}
        ]
    assert SECRET.decode() not in stored_text()
