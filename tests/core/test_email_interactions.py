"""Email facts: delivery statuses merge in any order, threading by Message-ID, what derive makes of them."""

from __future__ import annotations

import itertools
from typing import Any

from app.core import ledger, mail
from app.core.interactions import EMAIL_STATUSES, Event, InteractionData, derive, merge_facts, settled
from app.core.models import Tenant

ROOT = "q1042@mail.example.com"


def status(name: str, severity: str | None = None) -> dict[str, Any]:
    return {
        "email_status": {"status": name, "severity": severity},
        "email_seen": {name: f"2025-03-11T16:{len(name):02d}"},
    }


def fold(facts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for f in facts:
        merged = merge_facts(merged, f)
    return merged


def test_delivery_statuses_merge_the_same_in_any_order() -> None:
    outbound = {"email": {"direction": "outbound", "to": "jordan@example.net", "subject": "Quote"}}
    events = [
        outbound,
        status("sent"),
        status("deferred", "temporary"),
        status("delivered"),
        status("opened"),
    ]
    events.append(status("clicked"))
    results = {derive("email", fold(list(order))).status for order in itertools.permutations(events)}
    assert results == {"clicked"}


def test_bounce_complaint_and_unsubscribe_outrank_delivery() -> None:
    assert derive("email", fold([status("delivered"), status("bounced", "permanent")])).status == "bounced"
    assert derive("email", fold([status("complained"), status("opened")])).status == "complained"
    assert derive("email", fold([status("unsubscribed"), status("clicked")])).status == "unsubscribed"
    assert derive("email", fold([status("deferred"), status("delivered")])).status == "delivered"
    assert set(EMAIL_STATUSES) >= {"delivered", "opened", "clicked", "bounced", "failed", "deferred"}


def test_derive_email() -> None:
    facts = {
        "email": {
            "direction": "inbound",
            "from": "Jordan.Rivera+quotes@Example.net",
            "to": "support@example.com",
            "subject": "Re: Quote",
            "text": "Yes please.",
            "full_text": "Yes please.\n\n> Quote attached",
            "message_id": "reply@example.net",
            "in_reply_to": ROOT,
            "references": [ROOT],
            "attachments": [{"name": "po.pdf", "type": "application/pdf", "size": 1234}],
        },
        "email_status": {"status": "received"},
    }
    d = derive("email", facts)
    assert (d.status, d.direction, d.subject, d.body, d.thread_key) == (
        "received",
        "inbound",
        "Re: Quote",
        "Yes please.",
        ROOT,
    )
    assert d.media == [{"name": "po.pdf", "type": "application/pdf", "size": 1234}]
    assert settled("email", facts)


def test_a_reply_and_the_email_it_answers_share_a_thread_key() -> None:
    sent = derive("email", {"email": {"direction": "outbound", "message_id": ROOT}})
    reply = derive("email", {"email": {"direction": "inbound", "message_id": "r1@x", "in_reply_to": ROOT}})
    second = derive(
        "email", {"email": {"direction": "inbound", "message_id": "r2@x", "references": [ROOT, "r1@x"]}}
    )
    assert sent.thread_key == reply.thread_key == second.thread_key == ROOT


def test_ids_and_addresses() -> None:
    assert mail.message_id(" <abc@x.example> ") == "abc@x.example"
    assert mail.message_ids("<a@x> <b@y>\r\n <c@z>") == ["a@x", "b@y", "c@z"]
    assert mail.address("Jordan <Jordan.Rivera+Quotes@Example.net>") == "Jordan.Rivera+Quotes@Example.net"
    long_id = "x" * 100 + "@example.com"
    assert len(mail.interaction_key(long_id)) == 64 and mail.interaction_key("a@b") == "a@b"
    assert (
        mail.new_text("New text\n\nOn Mon, Mar 10, 2025 at 3:12 PM A <a@b.c> wrote:\n\n> old\n") == "New text"
    )


def test_the_ledger_sets_party_email_as_written(tenant: Tenant) -> None:
    facts = {
        "email": {
            "direction": "inbound",
            "from": "Jordan.Rivera+Quotes@Example.net",
            "to": "support@x.example",
        },
        "email_status": {"status": "received"},
    }
    event = Event("mailgun", "inbound", "inbound:m1@x", "email", "m1@x", "", facts, {})
    recorded = ledger.record(tenant, event)
    from app.core import db
    from app.core.models import Interaction

    with db.transaction() as s:
        row = s.get(Interaction, recorded.interaction_id)
        assert row is not None
        assert row.party_email == "Jordan.Rivera+Quotes@Example.net" and row.party_phone is None
        data = ledger.snapshot(s, row)
    assert isinstance(data, InteractionData) and data.title == "Inbound email (received)"
    assert data.subject is None and data.channel == "email"
