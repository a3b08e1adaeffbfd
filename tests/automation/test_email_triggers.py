"""Email fires the email rules only: a bounce of an email we sent is email.bounced, an inbound email is
never mistaken for a text (sms.inbound), and email counts for `unless` like calls and texts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.automation import engine, rules
from app.core.interactions import InteractionData

AT = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


def email(direction: str, status: str, body: str = "What is the price?") -> InteractionData:
    return InteractionData(
        id=7,
        tenant_id=1,
        channel="email",
        direction=direction,
        status=status,
        party_phone=None,
        party_email="jordan@example.net",
        our_number=None,
        from_addr="jordan@example.net" if direction == "inbound" else "sam@acme.example",
        to_addr="sam@acme.example" if direction == "inbound" else "jordan@example.net",
        occurred_at=AT,
        body=body,
    )


@pytest.mark.parametrize("status", ["bounced", "failed"])
def test_a_bounce_of_an_email_we_sent_is_email_bounced(status: str) -> None:
    assert engine.interaction_triggers(email("outbound", status), settled=True) == ["email.bounced"]


@pytest.mark.parametrize("status", ["sent", "deferred", "delivered", "opened", "clicked"])
def test_other_outbound_email_states_fire_nothing(status: str) -> None:
    assert engine.interaction_triggers(email("outbound", status), settled=True) == []


def test_an_inbound_email_is_not_a_text() -> None:
    assert engine.interaction_triggers(email("inbound", "received"), settled=True) == []


def test_email_counts_for_unless() -> None:
    assert engine.event_kind("email", "inbound") == "inbound_email"
    loaded = rules.load(
        """
rules:
  - name: bounce-task
    trigger: email.bounced
    actions:
      - create_task: {subject: "Email to {{ contact.email }} bounced"}
        unless: [outbound_email]
"""
    )
    trigger = engine.trigger_from_interaction("email.bounced", email("outbound", "bounced"), {})
    [decision] = engine.evaluate(loaded, trigger)
    assert decision.fires and decision.steps[0].unless == ("outbound_email",)
