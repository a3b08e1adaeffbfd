"""Email fires the email rules only: a bounce of an email we sent is email.bounced, an inbound email is
never mistaken for a text (sms.inbound), and email counts for `unless` like calls and texts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.automation import engine, rules
from app.core.interactions import InteractionData

AT = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


OURS = "sb" + "0" * 32  # the id of an email we sent (app/channels/email.py)


def email(
    direction: str, status: str, body: str = "What is the price?", provider_id: str = OURS
) -> InteractionData:
    return InteractionData(
        provider_id=provider_id,
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
        thread_key=f"{OURS}@acme.example",
    )


@pytest.mark.parametrize("status", ["bounced", "failed"])
def test_a_bounce_of_an_email_we_sent_is_email_bounced(status: str) -> None:
    assert engine.interaction_triggers(email("outbound", status), settled=True) == ["email.bounced"]


@pytest.mark.parametrize("status", ["sent", "deferred", "delivered", "opened", "clicked"])
def test_an_email_the_provider_has_is_email_sent(status: str) -> None:
    # email.sent starts the email.no_reply_within timers; no rule names it directly.
    assert engine.interaction_triggers(email("outbound", status), settled=True) == ["email.sent"]


def test_an_email_sent_elsewhere_starts_no_follow_up() -> None:
    sent_elsewhere = email("outbound", "delivered", provider_id="FIXTUREmsg0000000001aQ")
    assert engine.interaction_triggers(sent_elsewhere, settled=True) == []


def test_an_email_still_sending_fires_nothing() -> None:
    assert engine.interaction_triggers(email("outbound", "sending"), settled=True) == []


def test_an_inbound_email_is_email_inbound_not_a_text() -> None:
    assert engine.interaction_triggers(email("inbound", "received"), settled=True) == ["email.inbound"]


def test_no_reply_within_waits_after_an_email_sent_and_a_reply_cancels_it() -> None:
    loaded = rules.load(
        """
rules:
  - name: follow-up
    trigger: email.no_reply_within
    when: {within: 2d}
    actions:
      - send_email: {subject: "Following up", body: "Hi {{ contact.name }}, any questions?", from: tenant}
"""
    )
    trigger = engine.trigger_from_interaction("email.sent", email("outbound", "delivered"), {})
    [decision] = engine.evaluate(loaded, trigger)
    assert decision.fires
    [step] = decision.steps
    assert step.action == "send_email" and step.due_at == AT + timedelta(days=2)
    # Only a reply in the thread of the email we sent cancels it (jobs.automations matches thread_key).
    assert step.unless == (engine.REPLY_IN_THREAD,) and step.spec["from_"] == "tenant"
    assert trigger.thread_key == f"{OURS}@acme.example"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("rules: [{name: f, trigger: email.no_reply_within, actions: [{send_email: {subject: s, body: b}}]}]",
         "email.no_reply_within needs when.within"),
        ("rules: [{name: f, trigger: email.inbound, actions: [{send_email: {subject: s}}]}]",
         "send_email.body: Field required"),
        ("rules: [{name: f, trigger: email.inbound, actions: "
         "[{send_email: {subject: '{{ contct }}', body: b}}]}]",
         "did you mean contact?"),
        ("rules: [{name: f, trigger: email.inbound, actions: "
         "[{send_email: {subject: s, body: b, from: x}}]}]",
         "send_email.from"),
    ],
)  # fmt: skip
def test_send_email_rules_are_checked_when_they_load(source: str, problem: str) -> None:
    with pytest.raises(rules.RulesError) as error:
        rules.load(source)
    assert problem in str(error.value)


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
