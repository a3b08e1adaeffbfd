"""Every Mailgun event kind the issue lists, posted to /webhooks/mailgun/events and signed at test time:
delivered, opened, clicked, failed permanent / temporary, complained, unsubscribed, each the status of the
email its Message-ID names (an email of its own, as nothing we sent matches), and whether it opts the
recipient out of automated email."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.core import mail
from tests.signing import MAILGUN_FIXTURES, mailgun_signature
from tests.webhooks.test_mailgun import KEY, post_event, route, rows  # noqa: F401  (fixture: route)

CASES = {  # kind -> (extra event-data, our status, opts the address out)
    "delivered": ({}, "delivered", False),
    "opened": ({}, "opened", False),
    "clicked": ({"url": "https://www.example.com/quotes/1042"}, "clicked", False),
    "failed-permanent": ({"severity": "permanent", "reason": "bounce"}, "bounced", True),
    "failed-temporary": ({"severity": "temporary", "reason": "generic"}, "deferred", False),
    "complained": ({}, "complained", True),
    "unsubscribed": ({}, "unsubscribed", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_mailgun_event_kind(client: Any, route: str, case: str) -> None:  # noqa: F811
    extra, status, opts_out = CASES[case]
    body = json.loads((MAILGUN_FIXTURES / "events__opened.json").read_text())
    data = body["event-data"]
    data.pop("client-info", None)
    data.update({"event": case.split("-")[0], "id": f"FiXtUrE-{case}", **extra})
    body["signature"] = mailgun_signature(KEY)
    response = post_event(client, route, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    [row] = rows()
    assert (row.channel, row.direction, row.status) == ("email", "outbound", status)
    assert row.provider_id == data["message"]["headers"]["message-id"]
    assert (mail.opted_out(row.tenant_id, data["recipient"]) is not None) is opts_out
