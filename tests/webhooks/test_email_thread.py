"""A 3-message email thread from raw .eml files (SendGrid Inbound Parse, raw-MIME mode): an Apple Mail
message, an Outlook reply-all and a Gmail reply. Each becomes one inbound email with the new text only
(quoted history and the signature stripped, the full text kept), all three share the thread key of the
first Message-ID in whatever order they arrive, and the contact is matched by address whatever its case."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from app.core import db, mail
from app.core.models import Interaction, Tenant
from tests.conftest import PUBLIC_BASE
from tests.signing import SENDGRID_FIXTURES

ROOT = "5F1XTURE-0000-4000-8000-000000000021@example.net"
THREAD = ("thread__1_apple_mail.eml", "thread__2_outlook.eml", "thread__3_gmail.eml")
NEW_TEXT = {  # file -> the text its sender wrote in it
    "thread__1_apple_mail.eml": "Hello, can someone come out to service our boiler next week?",
    "thread__2_outlook.eml": "Tuesday or Wednesday morning suits us best.",
    "thread__3_gmail.eml": "Wednesday at 9 is best, thanks.",
}


@pytest.fixture
def route(tenant: Tenant) -> str:
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        assert row is not None
        return mail.new_route_token(s, row)


def post_raw(client: Any, token: str, name: str) -> Any:
    """The fields SendGrid posts in raw mode: the whole message in `email`, plus the envelope and verdicts."""
    eml = (SENDGRID_FIXTURES / name).read_bytes().decode()
    sender = mail.address(eml.split("\r\nFrom: ", 1)[1].split("\r\n", 1)[0])
    form = {
        "email": eml,
        "envelope": json.dumps({"to": ["support@parse.example.com"], "from": sender}),
        "SPF": "pass",
        "dkim": "{@example.net : pass}",
        "charsets": json.dumps({"to": "UTF-8", "from": "UTF-8", "subject": "UTF-8"}),
    }
    return client.post(
        f"/webhooks/sendgrid/inbound?token={token}",
        data=form,
        content_type="multipart/form-data",
        base_url=PUBLIC_BASE,
    )


def by_file() -> dict[str, Interaction]:
    with db.transaction() as s:
        rows = {r.provider_id: r for r in s.scalars(select(Interaction))}
    ids = {name: mail.message_id(_header(name, "Message-I")) for name in THREAD}
    assert len(rows) == 3
    return {name: rows[mail.interaction_key(str(ident))] for name, ident in ids.items()}


def _header(name: str, prefix: str) -> str:
    text = (SENDGRID_FIXTURES / name).read_text()
    return next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)], ids=["in-order", "reply-first"])
def test_a_three_message_thread_shares_one_thread_key(
    client: Any, route: str, order: tuple[int, int, int]
) -> None:
    for i in order:
        response = post_raw(client, route, THREAD[i])
        assert response.status_code == 200, response.get_data(as_text=True)
    rows = by_file()
    assert {r.thread_key for r in rows.values()} == {ROOT}
    assert all((r.channel, r.direction, r.status) == ("email", "inbound", "received") for r in rows.values())


def test_quote_stripping_on_apple_mail_outlook_and_gmail_replies(client: Any, route: str) -> None:
    for name in THREAD:
        assert post_raw(client, route, name).status_code == 200
    rows = by_file()
    for name, row in rows.items():
        assert row.body == NEW_TEXT[name], name
        assert NEW_TEXT[name] in row.facts["email"]["full_text"]  # the whole text is kept
    # What was stripped is still in the full text: Apple's "Sent from my iPhone", Outlook's quoted header
    # block, Gmail's "wrote:" line with the quote, and the "-- " signature.
    assert "Sent from my iPhone" in rows["thread__1_apple_mail.eml"].facts["email"]["full_text"]
    assert "Sent: Wednesday" in rows["thread__2_outlook.eml"].facts["email"]["full_text"]
    gmail = rows["thread__3_gmail.eml"].facts["email"]["full_text"]
    assert "wrote:" in gmail and "Rivera Plumbing" in gmail
    assert rows["thread__3_gmail.eml"].facts["email"]["references"] == [
        ROOT,
        "AM0PR01MB0000FIXTURE0000000022@AM0PR01MB0000.eurprd01.prod.outlook.com",
    ]


def test_addresses_are_kept_as_written_and_the_cc_is_recorded(client: Any, route: str) -> None:
    for name in THREAD:
        assert post_raw(client, route, name).status_code == 200
    rows = by_file()
    # Plus-addressing and case are kept as written; the two of Jordan's emails are the same person.
    assert rows["thread__1_apple_mail.eml"].party_email == "Jordan.Rivera+quotes@Example.net"
    assert rows["thread__3_gmail.eml"].party_email == "jordan.rivera+quotes@example.net"
    assert rows["thread__2_outlook.eml"].facts["email"]["cc"] == "Jordan.Rivera+quotes@Example.net"
    assert rows["thread__3_gmail.eml"].facts["email"]["cc"] == "priya.shah@example.net"
    assert rows["thread__1_apple_mail.eml"].facts["email"]["spf"] == "pass"
