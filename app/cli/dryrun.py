"""Dry run of automation rules: replay recorded webhooks or a simulated timeline on a virtual clock.

`switchboard rules test RULES.yaml EVENTS...` prints, per event, which rules fire and which steps they
plan (and when), why the other rules did not fire, and then, as the virtual clock reaches each step,
what it would do: the rendered text or task, or why it would be cancelled, skipped or delayed (unless,
opt-outs, quiet hours). Nothing is sent and nothing is stored. The decisions come from the same engine the
worker uses (app.automation), so the dry run shows what production would do.

Events are Twilio form files (named like the fixtures, e.g. voice__incoming.form, sms__inbound.form),
one minute apart from --start, or a timeline YAML:

    start: 2026-03-10T09:00:00-05:00
    time_zone: America/Chicago      # how times are printed
    our_numbers: ["+15555550100"]
    contacts:
      - {name: Jordan Rivera, phone: "+15555550123", owner: sam@acme.example, time_zone: America/Chicago}
    events:
      - {at: 0m, call: {from: "+15555550123", status: missed}}
      - {at: 1m, sms: {from: "+15555550123", body: "are you open?"}}
      - {at: 2h, call: {to: "+15555550123", status: completed, duration: 300}}
      - {at: 3h, sms_status: {to: "+15555550123", status: undelivered, error_code: "30003"}}
      - {at: 4h, contact_created: {phone: "+15555550177", name: Alex Chen}}
      - {at: 5h, deal: {stage: closedwon, name: Rivera renewal, amount: "12000", contact: "+15555550123"}}
      - {at: 6h, owner_changed: {contact: "+15555550123", owner: avery@acme.example}}
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import yaml

from app.automation import engine as automation
from app.automation import gate, rules
from app.automation.compliance import keyword, time_zone_for
from app.core.interactions import InteractionData, derive, merge_facts, settled
from app.core.phones import pretty, to_e164

STREAMS = {  # fixture-style file name prefix -> (webhook stream, ?event=)
    "voice__incoming": ("voice", ""),
    "voice__dial_action": ("call-status", "dial"),
    "voice__recording": ("recording", ""),
    "voice__transcription": ("transcription", ""),
    "voice__": ("call-status", ""),
    "sms__inbound": ("sms", ""),
    "sms__status": ("sms-status", ""),
}


@dataclass
class _Pending:
    step: automation.Planned
    trigger: automation.Trigger


@dataclass
class DryRun:
    """The virtual world a dry run plays in."""

    rule_set: rules.RuleSet
    our_numbers: list[str] = field(default_factory=lambda: ["+15555550100"])
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    clock: datetime | None = None
    pending: list[_Pending] = field(default_factory=list)
    history: list[tuple[str, str, datetime]] = field(default_factory=list)  # (party, kind, at)
    opted_out: set[str] = field(default_factory=set)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    fired: set[str] = field(default_factory=set)
    ids: Iterable[int] = field(default_factory=lambda: itertools.count(1))
    interaction_ids: dict[str, int] = field(default_factory=dict)
    display_time_zone: str | None = None
    latest: dict[str, tuple[str, datetime]] = field(default_factory=dict)

    def say(self, text: str, indent: int = 0) -> None:
        """Add a line of output."""
        self.lines.append("  " * indent + text)

    def stamp(self, at: datetime) -> str:
        """A time as the output shows it (the first contact's zone, else UTC)."""
        tz = time_zone_for(None, None, self.display_time_zone or self.rule_set.settings.default_time_zone)
        return at.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")

    # --- the clock ---------------------------------------------------------------------------------

    def advance(self, to: datetime) -> None:
        """Run every pending step due before `to`, in time order."""
        while True:
            due = sorted(
                (p for p in self.pending if p.step.due_at <= to), key=lambda p: (p.step.due_at, p.step.key)
            )
            if not due:
                break
            item = due[0]
            self.pending.remove(item)
            self.clock = item.step.due_at
            self._run(item)
        self.clock = to

    def _run(self, item: _Pending) -> None:
        step, trigger = item.step, item.trigger
        head = f"[{self.stamp(step.due_at)}] {step.rule} step {step.step + 1} {step.action}:"
        party = trigger.party_phone or trigger.party_email or ""
        context = trigger.context
        verdict = gate.check(
            step.action,
            unless=step.unless,
            happened=[
                gate.Happened(kind, "dry run")
                for who, kind, at in self.history
                if who == party and at > trigger.at
            ],
            party_phone=trigger.party_phone,
            opted_out=trigger.party_phone in self.opted_out,
            contact_time_zone=context["contact"].get("time_zone"),
            rules=self.rule_set.settings,
            now=step.due_at,
            party_email=trigger.party_email or context["contact"].get("email"),
        )
        if verdict.outcome == "cancel":
            self.say(f"{head} cancelled: {verdict.what} first")
            return
        if verdict.outcome == "skip":
            self.say(f"{head} skipped: {verdict.reason}")
            return
        if verdict.outcome == "hold":
            assert verdict.until is not None and verdict.time_zone is not None
            tz = verdict.time_zone
            self.say(
                f"{head} quiet hours in {tz.key}: waits until {verdict.until.astimezone(tz):%Y-%m-%d %H:%M}"
            )
            self.pending.append(_Pending(replace(step, due_at=verdict.until), trigger))
            return
        if step.action == "send_sms":
            assert trigger.party_phone is not None
            body = rules.render(step.spec["body"], context)
            self.say(f"{head} would text {pretty(trigger.party_phone)}: {body!r}")
            self.history.append((trigger.party_phone, "outbound_sms", step.due_at))
        elif step.action == "send_email":
            to = trigger.party_email or context["contact"].get("email")
            subject = rules.render(step.spec["subject"], context)
            self.say(f"{head} would email {to}: {subject!r}")
            self.history.append((party, "outbound_email", step.due_at))
        elif step.action == "create_task":
            subject = rules.render(step.spec["subject"], context)
            due = step.due_at + rules.parse_duration(step.spec.get("due_in", "1h"))
            assignee = step.spec.get("assignee", "owner")
            self.say(f"{head} would create task {subject!r} for {assignee}, due {self.stamp(due)}")
        elif step.action == "update_crm":
            self.say(f"{head} would set {step.spec['property']} = {step.spec['value']!r} on the contact")
        elif step.action == "notify":
            self.say(f"{head} would POST the trigger to {step.spec['url']}")

    # --- events ------------------------------------------------------------------------------------

    def trigger(self, trig: automation.Trigger) -> None:
        """Print every rule's decision for a trigger and plan the steps of those that fire."""
        other = 0
        for decision in automation.evaluate(self.rule_set, trig):
            if not decision.fires and decision.reason.startswith("trigger is "):
                other += 1
                continue
            if not decision.fires:
                self.say(f"rule {decision.rule}: no ({decision.reason})", 1)
                continue
            self.say(f"rule {decision.rule}: fires ({decision.reason})", 1)
            for step in decision.steps:
                unless = f", unless {', '.join(step.unless)}" if step.unless else ""
                self.say(f"step {step.step + 1} {step.action} at {self.stamp(step.due_at)}{unless}", 2)
                if step.key not in self.fired:
                    self.fired.add(step.key)
                    self.pending.append(_Pending(step, trig))
        if other:
            self.say(f"{other} other rule(s) wait for other triggers", 1)

    def happened(self, party: str | None, kind: str | None, at: datetime) -> None:
        """Remember an interaction for `unless`."""
        if party and kind:
            self.history.append((party, kind, at))

    def context(self, phone: str | None, email: str | None = None, **extra: Any) -> dict[str, Any]:
        """Template data for a party, from the timeline's contacts."""
        known = self.contacts.get(phone or email or "", {})
        name = known.get("name") or (pretty(phone) if phone else (email or "unknown"))
        contact = {
            "id": known.get("id"),
            "name": name,
            "first_name": name.split(" ")[0] if known.get("name") else None,
            "phone": phone,
            "email": email,
            "owner_id": known.get("owner"),
            "time_zone": known.get("time_zone"),
        }
        owner = extra.pop("owner", None) or known.get("owner")
        owner_view = {
            "crm_owner_id": owner,
            "name": owner,
            "first_name": (owner or "").split("@")[0] or None,
            "email": owner,
        }
        return {
            "tenant": {"name": "dry run"},
            "contact": contact,
            "owner": owner_view,
            "interaction": {},
            "deal": {},
            "recent": [],
            "crm_fields": {},
            **extra,
        }

    def interaction(self, channel: str, key: str, new_facts: dict[str, Any], at: datetime) -> None:
        """Fold facts into an interaction and fire what its new state triggers."""
        merged = merge_facts(self.facts.get(key, {}), new_facts)
        self.facts[key] = merged
        number = self.interaction_ids.setdefault(key, next(self.ids))  # type: ignore[call-overload]
        d, data = self._snapshot(key, channel, at)
        party = data.party_phone
        self.say(
            f"[{self.stamp(at)}] {channel} {d.direction or ''} {pretty(party) if party else '(no party)'}: "
            f"{d.status} (interaction {number})"
        )
        kind = automation.event_kind(channel, d.direction)
        if (party, kind) not in {(p, k) for p, k, _ in self.history if _ == at}:
            self.happened(party, kind, at)
        self.latest[key] = (channel, at)
        if channel == "sms" and d.direction == "inbound":
            signal = keyword(d.body)
            if signal in ("opt_out", "opt_in") and party:
                (self.opted_out.add if signal == "opt_out" else self.opted_out.discard)(party)
                self.say(f"opt-{'out' if signal == 'opt_out' else 'in'} recorded for {pretty(party)}", 1)
        self._fire(key, channel, data, d, settled(channel, merged))

    def _snapshot(self, key: str, channel: str, at: datetime) -> tuple[Any, InteractionData]:
        """The derived state of an interaction and the view rules get of it."""
        d = derive(channel, self.facts[key])
        party = _party(d.direction, d.from_addr, d.to_addr, self.our_numbers)
        data = InteractionData.from_derived(
            d,
            id=self.interaction_ids[key],
            tenant_id=0,
            channel=channel,
            party_phone=party,
            occurred_at=at,
            ended_at=at,
        )
        return d, data

    def settle_all(self) -> None:
        """End of input: a call still waiting for callbacks is taken as it is (the worker gives up too)."""
        for key, (channel, at) in list(self.latest.items()):
            if settled(channel, self.facts[key]):
                continue
            d, data = self._snapshot(key, channel, at)
            self.say(
                f"[{self.stamp(at)}] interaction {data.id} taken as final ({d.status}): no more callbacks"
            )
            self._fire(key, channel, data, d, True)

    def _fire(self, key: str, channel: str, data: InteractionData, d: Any, is_settled: bool) -> None:
        party = data.party_phone
        for trigger_kind in automation.interaction_triggers(data, is_settled):
            if f"{key}:{trigger_kind}" in self.fired:
                continue
            self.fired.add(f"{key}:{trigger_kind}")
            context = self.context(party)
            context["interaction"] = {
                "status": d.status,
                "direction": d.direction,
                "body": d.body,
                "duration_seconds": d.duration_seconds,
                "recording_url": d.recording_url,
                "error_code": d.error_code,
            }
            self.trigger(automation.trigger_from_interaction(trigger_kind, data, context))


def _party(direction: str | None, frm: str | None, to: str | None, ours: list[str]) -> str | None:
    for raw in [frm] if direction == "inbound" else [to]:
        e164 = to_e164(raw)
        if e164 and e164 not in ours:
            return e164
    return None


def run(rules_text: str, event_files: list[Path], start: datetime | None = None) -> list[str]:
    """Dry-run the rules over the events; returns the printed lines."""
    rule_set = rules.load(rules_text)
    world = DryRun(rule_set)
    clock = start or datetime.now(UTC).replace(microsecond=0)
    for path in event_files:
        if path.suffix in (".yaml", ".yml"):
            clock = _timeline(world, yaml.safe_load(path.read_text()), clock)
        else:
            world.advance(clock)
            _form(world, path, clock)
            clock += timedelta(minutes=1)
    world.settle_all()
    world.advance(max([p.step.due_at for p in world.pending] + [clock]) + timedelta(seconds=1))
    while world.pending:  # quiet hours may have pushed steps further
        world.advance(max(p.step.due_at for p in world.pending) + timedelta(seconds=1))
    return world.lines


def _form(world: DryRun, path: Path, at: datetime) -> None:
    text = path.read_text().strip()
    form = dict(parse_qsl(text, keep_blank_values=True))
    raw: dict[str, list[str]] = {}
    for k, v in parse_qsl(text, keep_blank_values=True):
        raw.setdefault(k, []).append(v)
    stream, kind = next((v for k, v in STREAMS.items() if path.name.startswith(k)), ("call-status", ""))
    from webhooks.twilio import parse_form

    event = parse_form(stream, kind, form, raw)
    world.interaction(event.channel, f"{event.channel}:{event.provider_id}", event.facts, at)


def _timeline(world: DryRun, spec: dict[str, Any], clock: datetime) -> datetime:
    start = datetime.fromisoformat(str(spec["start"])) if spec.get("start") else clock
    if start.tzinfo is None:
        raise ValueError("timeline start needs a time zone offset")
    world.our_numbers = [to_e164(n) or n for n in spec.get("our_numbers", world.our_numbers)]
    world.display_time_zone = spec.get("time_zone") or world.display_time_zone
    for i, c in enumerate(spec.get("contacts", []), start=1):
        phone = to_e164(str(c.get("phone", ""))) or ""
        world.contacts[phone] = {"id": f"contact-{i}", **c, "phone": phone}
    last = start
    for n, event in enumerate(sorted(spec.get("events", []), key=lambda e: rules.parse_duration(e["at"]))):
        at = start + rules.parse_duration(event["at"])
        world.advance(at)
        last = at
        _timeline_event(world, event, at, n)
    return last + timedelta(minutes=1)


def _timeline_event(world: DryRun, event: dict[str, Any], at: datetime, n: int) -> None:
    ours = world.our_numbers[0]
    iso = at.isoformat()
    if "call" in event:
        c = event["call"]
        inbound = "from" in c
        other = to_e164(str(c.get("from") or c.get("to")))
        status = c.get("status", "completed")
        facts: dict[str, Any] = {
            "call": {
                "direction": "inbound" if inbound else "outbound-api",
                "from": other if inbound else ours,
                "to": ours if inbound else other,
            },
            "parent_status": {"status": "completed", "seq": 9},
            "ended_at": iso,
            "started_at": iso,
            "call_duration": int(c.get("duration", 0)),
        }
        answered = status == "completed"
        outcome = "completed" if answered else ("no-answer" if status in ("missed", "voicemail") else status)
        facts["dials"] = {
            "dial": {
                "status": outcome,
                "duration": int(c.get("duration", 0)) if answered else 0,
                "bridged": answered,
            }
        }
        if status == "voicemail":
            facts["voicemail_prompted"] = True
            facts["recordings"] = {
                f"RE{n}": {
                    "status": "completed",
                    "source": "RecordVerb",
                    "duration": 20,
                    "url": "https://api.twilio.com/recording.mp3",
                }
            }
            facts["transcription"] = {"text": c.get("transcription", "")}
        world.interaction("call", f"call:timeline-{n}", facts, at)
    elif "sms" in event:
        s = event["sms"]
        facts = {
            "msg": {
                "direction": "inbound",
                "from": to_e164(str(s["from"])),
                "to": ours,
                "body": s.get("body", ""),
            },
            "msg_status": {"status": "received"},
            "started_at": iso,
        }
        world.interaction("sms", f"sms:timeline-{n}", facts, at)
    elif "sms_status" in event:
        s = event["sms_status"]
        facts = {
            "msg": {"direction": "outbound", "from": ours, "to": to_e164(str(s["to"]))},
            "msg_status": {"status": s.get("status", "failed"), "error_code": s.get("error_code")},
        }
        world.interaction("sms", f"sms:timeline-{n}", facts, at)
    elif "contact_created" in event:
        c = event["contact_created"]
        phone = to_e164(str(c.get("phone", ""))) if c.get("phone") else None
        world.contacts.setdefault(phone or "", {"name": c.get("name"), "phone": phone})
        world.say(f"[{world.stamp(at)}] new contact {c.get('name') or pretty(phone or '')}")
        world.trigger(
            automation.Trigger(
                kind="contact.created",
                ref=f"contact:timeline-{n}",
                at=at,
                party_phone=phone,
                context=world.context(phone),
            )
        )
    elif "deal" in event:
        d = event["deal"]
        phone = to_e164(str(d.get("contact", ""))) if d.get("contact") else None
        deal = {"name": d.get("name"), "amount": d.get("amount"), "stage": d.get("stage")}
        world.say(f"[{world.stamp(at)}] deal {d.get('name')!r} moved to {d.get('stage')}")
        world.trigger(
            automation.Trigger(
                kind="crm.deal_stage_changed",
                ref=f"crm_event:timeline-{n}",
                at=at,
                stage=d.get("stage"),
                party_phone=phone,
                context=world.context(phone, deal=deal),
            )
        )
    elif "owner_changed" in event:
        o = event["owner_changed"]
        phone = to_e164(str(o.get("contact", "")))
        world.say(f"[{world.stamp(at)}] owner of {pretty(phone or '')} is now {o.get('owner')}")
        world.trigger(
            automation.Trigger(
                kind="crm.owner_changed",
                ref=f"crm_event:timeline-{n}",
                at=at,
                party_phone=phone,
                context=world.context(phone, owner=o.get("owner")),
            )
        )
    else:
        raise ValueError(f"unknown timeline event {sorted(event)}")
