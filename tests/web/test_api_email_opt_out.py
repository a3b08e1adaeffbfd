"""A bounce, complaint or unsubscribe is visible on the contact: the contacts API's `email_opt_out` (the same
check the send_email step and POST /api/v1/emails make), on the detail and the list, and cleared by an
opt-in. A "blocked" bounce (this message refused, not the address) does not show."""

from __future__ import annotations

from typing import Any

import pytest

from app.core import ledger, mail
from app.core.interactions import Event
from app.core.models import Tenant
from connectors.local import LocalConnector
from tests.web.test_api import api, new_key, ok

ADDRESS = "Jordan.Rivera+quotes@Example.net"


@pytest.fixture
def key(tenant: Tenant) -> str:
    return new_key(tenant)


def sent_and(tenant: Tenant, n: int, seen: str, status: str, to: str = ADDRESS) -> None:
    """An email we sent to `to`, then what the provider reported of it."""
    facts = {
        "email": {"direction": "outbound", "from": "sales@acme.example", "to": to, "subject": f"Quote {n}"},
        "email_status": {"status": status, "severity": "permanent"},
        "email_seen": {seen: "2025-03-11T16:20:00+00:00"},
    }
    ledger.record(
        tenant, Event("sendgrid", "events", f"event:optout{n}", "email", f"optout{n}", "", facts, {})
    )


@pytest.mark.parametrize(
    "seen, status", [("bounce", "bounced"), ("spamreport", "complained"), ("unsubscribe", "unsubscribed")]
)
def test_a_bounce_complaint_or_unsubscribe_shows_on_the_contact(
    client: Any, key: str, tenant: Tenant, seen: str, status: str
) -> None:
    jordan = LocalConnector(tenant).add_contact("Jordan Rivera", [], ADDRESS.lower(), None)
    priya = LocalConnector(tenant).add_contact("Priya Shah", [], "priya@example.org", None)
    assert ok(api(client, f"/api/v1/contacts/{jordan}", key))["email_opt_out"] is False
    sent_and(tenant, 1, seen, status)
    assert ok(api(client, f"/api/v1/contacts/{jordan}", key))["email_opt_out"] is True
    listed = {c["id"]: c for c in ok(api(client, "/api/v1/contacts", key))["data"]}
    assert listed[jordan]["email_opt_out"] is True and listed[priya]["email_opt_out"] is False
    mail.opt_in(tenant.id, ADDRESS)
    assert ok(api(client, f"/api/v1/contacts/{jordan}", key))["email_opt_out"] is False


def test_a_blocked_bounce_does_not_show(client: Any, key: str, tenant: Tenant) -> None:
    jordan = LocalConnector(tenant).add_contact("Jordan Rivera", [], ADDRESS, None)
    sent_and(tenant, 2, "blocked", "bounced")
    assert ok(api(client, f"/api/v1/contacts/{jordan}", key))["email_opt_out"] is False
    assert mail.opted_out(tenant.id, ADDRESS) is None
