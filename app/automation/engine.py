"""The automation engine: which rules a trigger fires, which steps that plans and when. Pure, no I/O.

The live worker (jobs/automations.py) and the dry run (`switchboard rules test`) both call `evaluate`,
so what the dry run prints is what production does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from app.automation.compliance import keyword
from app.automation.rules import TIMERS, Rule, RuleSet, parse_duration
from app.core.interactions import InteractionData
from app.core.mail import our_id

# What an inbound email in the trigger's thread counts as for `unless` (besides inbound_email): internal,
# planned by email.no_reply_within, not a kind rules can name.
REPLY_IN_THREAD = "email_reply_in_thread"


@dataclass(frozen=True)
class Trigger:
    """Something that happened, as rules see it."""

    kind: str  # one of app.automation.rules.TRIGGERS
    ref: str  # what fired it, e.g. interaction:12, contact:51000000001, crm_event:1000000001
    at: datetime
    party_phone: str | None = None
    party_email: str | None = None
    direction: str | None = None
    duration: int | None = None
    body: str | None = None
    error_code: str | None = None
    stage: str | None = None
    thread_key: str | None = None  # emails: the thread a reply must be in (email.no_reply_within)
    context: dict[str, Any] = field(default_factory=dict, compare=False)  # template data


@dataclass(frozen=True)
class Planned:
    """A step to run: its idempotency key, when, and what cancels it."""

    key: str
    rule: str
    step: int
    action: str
    due_at: datetime
    unless: tuple[str, ...]
    spec: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """Whether a rule fires for a trigger, why (not), and the steps it plans."""

    rule: str
    fires: bool
    reason: str
    steps: tuple[Planned, ...] = ()


def evaluate(rules: RuleSet, trigger: Trigger) -> list[Decision]:
    """Every rule's decision for the trigger, in file order."""
    return [_decide(rule, trigger) for rule in rules.rules]


def _decide(rule: Rule, trigger: Trigger) -> Decision:
    expected = TIMERS.get(rule.trigger, rule.trigger)
    if trigger.kind != expected:
        return Decision(rule.name, False, f"trigger is {rule.trigger}, not {trigger.kind}")
    if not rule.enabled:
        return Decision(rule.name, False, "rule is disabled")
    ok, reason = conditions_hold(rule, trigger)
    if not ok:
        return Decision(rule.name, False, reason)
    return Decision(rule.name, True, reason, tuple(plan(rule, trigger)))


def conditions_hold(rule: Rule, trigger: Trigger) -> tuple[bool, str]:
    """Check the rule's `when` against the trigger; the reason names the first condition that failed."""
    when = rule.when
    if when.direction and trigger.direction != when.direction:
        return False, f"direction is {trigger.direction}, rule wants {when.direction}"
    if when.min_duration is not None and (trigger.duration or 0) < when.min_duration:
        return False, f"duration {trigger.duration or 0}s is under {when.min_duration}s"
    if when.max_duration is not None and (trigger.duration or 0) > when.max_duration:
        return False, f"duration {trigger.duration or 0}s is over {when.max_duration}s"
    if when.keywords:
        words = set(re.findall(r"\w+", (trigger.body or "").lower()))
        wanted = {k.lower() for k in when.keywords}
        if not words & wanted:
            return False, f"message has none of the keywords {sorted(wanted)}"
    if when.regex and not re.search(when.regex, trigger.body or "", re.IGNORECASE):
        return False, f"message does not match /{when.regex}/"
    if when.error_codes and trigger.error_code not in when.error_codes:
        return False, f"error {trigger.error_code} is not one of {when.error_codes}"
    if when.stage:
        stages = [when.stage] if isinstance(when.stage, str) else when.stage
        if trigger.stage not in stages:
            return False, f"stage is {trigger.stage}, rule wants {' or '.join(stages)}"
    return True, "conditions hold" if rule.when != type(rule.when)() else "no conditions"


def plan(rule: Rule, trigger: Trigger) -> list[Planned]:
    """The rule's steps with their due times; a wait pushes back every step after it."""
    offset = timedelta(0)
    extra_unless: tuple[str, ...] = ()
    if rule.trigger == "no_contact_within":
        # Speed to lead: the steps wait `within`, and any outbound call or text to the lead cancels them.
        offset = parse_duration(rule.when.within or 0)
        extra_unless = ("outbound_call", "outbound_sms")
    elif rule.trigger == "email.no_reply_within":
        # A follow-up: the steps wait `within` after an email we sent; the contact's reply *in that thread*
        # (REPLY_IN_THREAD, matched by thread_key) cancels them, not any email from them.
        offset = parse_duration(rule.when.within or 0)
        extra_unless = (REPLY_IN_THREAD,)
    out = []
    for index, step in enumerate(rule.actions):
        if step.action == "wait":
            offset += parse_duration(step.wait or 0)
            continue
        unless = tuple(dict.fromkeys([*extra_unless, *step.unless]))
        out.append(
            Planned(
                key=action_key(rule.name, trigger, index),
                rule=rule.name,
                step=index,
                action=step.action,
                due_at=trigger.at + offset,
                unless=unless,
                spec=step.spec.model_dump(),
            )
        )
    return out


def action_key(rule: str, trigger: Trigger, step: int) -> str:
    """The idempotency key of one step: the same rule, trigger and step always give the same key."""
    return f"{rule}:{trigger.kind}:{trigger.ref}:{step}"


def interaction_triggers(data: InteractionData, settled: bool) -> list[str]:
    """The triggers an interaction's current state fires (a call only once it is settled)."""
    if data.channel == "call":
        if not settled:
            return []
        if data.status == "voicemail":
            return ["call.voicemail"]
        if data.status in ("missed", "busy", "no-answer", "canceled"):
            return ["call.missed"]
        if data.status == "completed":
            return ["call.completed"]
        return []
    if data.channel == "email":
        # A bounce, or a permanent failure, of an email we sent; email.sent (the start of
        # email.no_reply_within) once the provider has one; an email received.
        if data.direction == "outbound" and data.status in ("bounced", "failed"):
            return ["email.bounced"]
        if data.direction == "outbound" and data.status in _EMAIL_OUT and our_id(data.provider_id):
            # Only emails we sent (keyed by our id): mail the tenant sends elsewhere through the same
            # provider reports events too, and must not start follow-ups.
            return ["email.sent"]
        if data.direction == "inbound" and data.status == "received":
            return ["email.inbound"]
        return []
    if data.channel != "sms":
        return []
    if data.direction == "inbound" and data.status == "received":
        # Opt-out, opt-in and help keywords are compliance traffic, not conversation.
        return [] if keyword(data.body) else ["sms.inbound"]
    if data.direction == "outbound" and data.status in ("failed", "undelivered"):
        return ["sms.failed"]
    return []


_EMAIL_OUT = ("sent", "deferred", "delivered", "opened", "clicked")


def event_kind(channel: str, direction: str | None) -> str | None:
    """What an interaction counts as for `unless`: inbound_call, outbound_sms, ..."""
    if channel not in ("call", "sms", "email") or direction not in ("inbound", "outbound"):
        return None
    return f"{direction}_{channel}"


def trigger_from_interaction(kind: str, data: InteractionData, context: dict[str, Any]) -> Trigger:
    """Build the trigger for an interaction."""
    return Trigger(
        kind=kind,
        ref=f"interaction:{data.id}",
        at=data.ended_at or data.occurred_at,
        party_phone=data.party_phone,
        party_email=data.party_email,
        direction=data.direction,
        duration=data.duration_seconds,
        body=data.body,
        error_code=data.error_code,
        thread_key=data.thread_key if data.channel == "email" else None,
        context=context,
    )
