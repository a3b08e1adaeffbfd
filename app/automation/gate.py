"""The step gate: whether a planned step still runs when its time comes, or is cancelled, skipped or held
for quiet hours. Pure, no I/O: the worker (jobs/automations.run_action) feeds it what the ledger says, the
dry run (app/cli/dryrun.py) what its virtual world says, so both decide the same way.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from app.automation.compliance import next_allowed, parse_window, time_zone_for
from app.automation.rules import Settings as RuleSettings


@dataclass(frozen=True)
class Happened:
    """Something that happened with the step's party after its trigger: inbound_call, outbound_sms ..."""

    kind: str
    ref: str  # e.g. interaction:12


@dataclass(frozen=True)
class Verdict:
    """run, cancel (something in `unless` happened), skip (nothing to do), or hold until `until`."""

    outcome: str  # run | cancel | skip | hold
    reason: str | None = None
    happened: Happened | None = None  # for cancel
    until: datetime | None = None  # for hold
    time_zone: ZoneInfo | None = None  # for hold

    @property
    def what(self) -> str:
        """The cancelling event in words, e.g. 'outbound call'."""
        return self.happened.kind.replace("_", " ") if self.happened else ""


def check(
    action: str,
    *,
    unless: Collection[str],
    happened: Iterable[Happened],
    party_phone: str | None,
    opted_out: bool,
    contact_time_zone: str | None,
    rules: RuleSettings,
    now: datetime,
    party_email: str | None = None,
    email_opt_out: str | None = None,
) -> Verdict:
    """The verdict for a step that is due at `now` (steps are checked in this order: unless, then the
    action's own conditions: a text needs a number, consent and the quiet-hours window; an email an
    address that has not opted out: `email_opt_out` is why it has, app.core.mail.opted_out)."""
    for item in happened:
        if item.kind in unless:
            return Verdict("cancel", f"{item.kind.replace('_', ' ')} ({item.ref}) first", happened=item)
    if action == "send_email":
        # No quiet hours for email (it waits in the inbox); the address and its consent are checked here,
        # and again by the sender right before the call (app.channels.email.send).
        if not party_email:
            return Verdict("skip", "the contact has no email address")
        if email_opt_out:
            return Verdict("skip", email_opt_out)
        return Verdict("run")
    if action != "send_sms":
        return Verdict("run")
    if not party_phone:
        return Verdict("skip", "the contact has no phone number")
    if opted_out:
        return Verdict("skip", "recipient opted out of texts")
    start, end = parse_window(rules.quiet_hours)
    tz = time_zone_for(party_phone, contact_time_zone, rules.default_time_zone)
    allowed_at = next_allowed(now, tz, start, end)
    if allowed_at > now:
        reason = f"quiet hours in {tz.key}: waits until {allowed_at.astimezone(tz):%Y-%m-%d %H:%M %Z}"
        return Verdict("hold", reason, until=allowed_at, time_zone=tz)
    return Verdict("run")
