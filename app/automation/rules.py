"""Automation rules as code: the YAML format, its validation (errors name the line and field), templates.

A rules file:

    settings:                       # optional
      quiet_hours: "08:00-21:00"    # automated texts only inside this window, in the contact's time zone;
                                    # `off` (or null) sends them at any time
      default_time_zone: America/New_York
      help_reply: "Acme Sales: reply STOP to opt out. Questions? Call (555) 555-0100."
    rules:
      - name: missed-call-text      # unique; part of every action's idempotency key
        trigger: call.missed
        when: {direction: inbound}  # conditions; all must hold
        actions:
          - wait: 2m
          - send_sms: {body: "Hi {{ contact.first_name }}, sorry we missed you. How can we help?"}
            unless: [outbound_call, inbound_sms, inbound_call]   # cancelled if one happens first
          - create_task: {subject: "Call back {{ contact.name }}", due_in: 15m, priority: high}
      - name: email-follow-up
        trigger: email.no_reply_within   # an email we sent, and no reply in its thread within `within`
        when: {within: 2d}
        actions:
          - send_email: {subject: "Any questions?", body: "Hi {{ contact.first_name or 'there' }}"}

Templates are Jinja2 in a sandbox with undefined names as errors; they are compiled when the file loads,
and may only name what the worker gives them (TEMPLATE_NAMES: contact, owner, interaction, deal, tenant,
recent, crm_fields). What loads can run: quiet hours are real times of day with a start that is not the
end, and the default time zone is a real IANA zone; a mistake there is refused like a syntax error, with
its line and field, instead of surfacing at 3 a.m. in a worker (or, for a misspelt zone, silently as UTC).
"""

from __future__ import annotations

import difflib
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.automation.compliance import parse_window, zone

DEFAULT_RULES = Path(__file__).with_name("default_rules.yaml")

TRIGGERS = (
    "call.missed", "call.voicemail", "call.completed", "sms.inbound", "sms.failed", "email.bounced",
    "email.inbound", "email.no_reply_within",
    "contact.created", "crm.deal_stage_changed", "crm.owner_changed", "no_contact_within",
)  # fmt: skip
# Timers: the rule's steps wait `when.within` after this trigger and are cancelled by what answers it.
TIMERS = {"no_contact_within": "contact.created", "email.no_reply_within": "email.sent"}
UNLESS_EVENTS = ("outbound_call", "inbound_call", "outbound_sms", "inbound_sms")
ACTIONS = ("wait", "send_sms", "send_email", "create_task", "update_crm", "notify")

_DURATION = re.compile(r"(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?")
TEMPLATES = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
# The names a template may use: what jobs.automations._context (and the dry run) give it.
TEMPLATE_NAMES = ("contact", "owner", "interaction", "deal", "tenant", "recent", "crm_fields")


class RulesError(ValueError):
    """A rules file that cannot be used; every problem names its line and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(value: str | int) -> timedelta:
    """'90s', '2m', '1h30m', '1d' (or plain seconds) -> timedelta."""
    if isinstance(value, int) and not isinstance(value, bool):
        return timedelta(seconds=value)
    text = str(value).strip()
    match = _DURATION.fullmatch(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration like 90s, 2m, 1h30m or 1d")
    d, h, m, s = (int(x or 0) for x in match.groups())
    return timedelta(days=d, hours=h, minutes=m, seconds=s)


def _template(text: str) -> str:
    try:
        names = meta.find_undeclared_variables(TEMPLATES.parse(text))
        TEMPLATES.from_string(text)  # compiles: unknown filters and tests fail here
    except TemplateSyntaxError as exc:
        raise ValueError(f"template error: {exc.message}") from None
    unknown = sorted(names - set(TEMPLATE_NAMES))
    if unknown:
        problems = []
        for name in unknown:
            close = difflib.get_close_matches(name, TEMPLATE_NAMES, n=1)
            problems.append(f"{name!r}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise ValueError(
            f"template error: unknown variable {', '.join(problems)}; "
            f"templates see {', '.join(TEMPLATE_NAMES)}"
        )
    return text


def _time_zone(name: str) -> str:
    if zone(name) is None:
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1)
        hint = f"did you mean {close[0]}?" if close else "use an IANA name such as America/New_York"
        raise ValueError(f"{name!r} is not a time zone; {hint}")
    return name


def render(text: str, context: dict[str, Any]) -> str:
    """Render a rule template with the trigger's context (contact, owner, interaction, deal, tenant)."""
    return TEMPLATES.from_string(text).render(**context)


Duration = Annotated[str | int, Field(description="90s, 2m, 1h30m, 1d")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Conditions(_Model):
    """What the trigger must look like for the rule to fire."""

    direction: Literal["inbound", "outbound"] | None = None
    min_duration: int | None = Field(default=None, ge=0)  # seconds
    max_duration: int | None = Field(default=None, ge=0)
    keywords: list[str] | None = None  # sms.inbound: any of these words in the message
    regex: str | None = None  # sms.inbound
    error_codes: list[str] | None = None  # sms.failed
    stage: str | list[str] | None = None  # crm.deal_stage_changed: the new stage id(s)
    within: Duration | None = None  # no_contact_within, email.no_reply_within: how long to wait

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value

    @field_validator("within")
    @classmethod
    def _duration(cls, value: Duration | None) -> Duration | None:
        if value is not None:
            parse_duration(value)
        return value


class SendSms(_Model):
    """Text the contact (from the tenant number local to them)."""

    body: str

    _check = field_validator("body")(lambda cls, v: _template(v))


class SendEmail(_Model):
    """Email the contact (through the tenant's provider: SendGrid or Mailgun), from the contact's owner's
    address (`from: owner`, the default; the tenant's address when the owner has none) or the tenant's."""

    subject: str
    body: str
    html: str | None = None
    from_: Literal["owner", "tenant"] = Field(default="owner", alias="from")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _check = field_validator("subject", "body", "html")(lambda cls, v: v if v is None else _template(v))


class CreateTask(_Model):
    """A CRM task; assignee: owner | user:EMAIL | team:NAME | crm:PROPERTY, or a list tried in order."""

    subject: str
    body: str | None = None
    due_in: Duration = "1h"
    priority: Literal["low", "normal", "high"] = "normal"
    assignee: str | list[str] = "owner"

    _check = field_validator("subject", "body")(lambda cls, v: v if v is None else _template(v))

    @field_validator("due_in")
    @classmethod
    def _duration(cls, value: Duration) -> Duration:
        parse_duration(value)
        return value

    @field_validator("assignee")
    @classmethod
    def _assignee(cls, value: str | list[str]) -> str | list[str]:
        for option in [value] if isinstance(value, str) else value:
            if option != "owner" and not re.fullmatch(r"(user|team|crm):\S+", option):
                raise ValueError(f"assignee {option!r} is not owner, user:EMAIL, team:NAME or crm:PROPERTY")
        return value


class UpdateCrm(_Model):
    """Set a property of the contact in the CRM."""

    property: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str | int | bool

    _check = field_validator("value")(lambda cls, v: _template(v) if isinstance(v, str) else v)


class Notify(_Model):
    """POST the trigger as JSON to a URL, signed with HMAC-SHA256 (X-Switchboard-Signature)."""

    url: str = Field(pattern=r"^https?://")
    secret: str | None = None


# What cancels a planned step when it happens with the party after the trigger (engine.event_kind).
UnlessKind = Literal[
    "outbound_call", "inbound_call", "outbound_sms", "inbound_sms", "outbound_email", "inbound_email"
]


class Step(_Model):
    """One step of a rule: exactly one action, optionally cancelled by earlier `unless` events."""

    action: Literal["wait", "send_sms", "send_email", "create_task", "update_crm", "notify"]
    wait: Duration | None = None
    send_sms: SendSms | None = None
    send_email: SendEmail | None = None
    create_task: CreateTask | None = None
    update_crm: UpdateCrm | None = None
    notify: Notify | None = None
    unless: list[
        Literal[
            "outbound_call", "inbound_call", "outbound_sms", "inbound_sms", "outbound_email", "inbound_email"
        ]
    ] = []

    @model_validator(mode="before")
    @classmethod
    def _one_action(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"a step is a mapping with one action: {', '.join(ACTIONS)}")
        present = [name for name in ACTIONS if name in data]
        if len(present) != 1:
            raise ValueError(
                f"a step needs exactly one action of {', '.join(ACTIONS)}; found {present or 'none'}"
            )
        if present[0] == "send_sms" and isinstance(data["send_sms"], str):
            data = {**data, "send_sms": {"body": data["send_sms"]}}
        return {**data, "action": present[0]}

    @field_validator("wait")
    @classmethod
    def _duration(cls, value: Duration | None) -> Duration | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def spec(self) -> Any:
        """The action's own settings."""
        return getattr(self, self.action)


class Rule(_Model):
    """A trigger, its conditions, and the steps to run."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    description: str | None = None
    enabled: bool = True
    trigger: Literal[
        "call.missed", "call.voicemail", "call.completed", "sms.inbound", "sms.failed", "email.bounced",
        "email.inbound", "email.no_reply_within",
        "contact.created", "crm.deal_stage_changed", "crm.owner_changed", "no_contact_within",
    ]  # fmt: skip
    when: Conditions = Conditions()
    actions: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _timer_needs_within(self) -> Rule:
        if self.trigger in TIMERS and self.when.within is None:
            raise ValueError(f"{self.trigger} needs when.within (e.g. 5m)")
        if self.actions[-1].action == "wait":
            raise ValueError("the last step cannot be a wait")
        return self


class Settings(_Model):
    """Tenant-wide automation settings.

    quiet_hours: the daily window (contact's time zone) automated texts are sent in; None when the file
    says `off` or null (YAML reads a bare off as false), meaning any time.
    reply_from: which tenant number a text in a conversation comes from: the one the customer called or
    texted (`called`), or the one local to the contact (`local`, same area code); see
    jobs.automations.choose_from_number.
    """

    quiet_hours: str | None = Field(default="08:00-21:00", pattern=r"^\d\d:\d\d-\d\d:\d\d$")
    default_time_zone: str = "America/New_York"
    help_reply: str = "Reply STOP to stop texts. For help, call us back at this number."
    reply_from: Literal["called", "local"] = "called"

    @field_validator("quiet_hours", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        if value is None or value is False:
            return None
        if isinstance(value, str) and value.strip().lower() == "off":
            return None
        if not isinstance(value, str):
            raise ValueError("quiet_hours is a window like 08:00-21:00, or off")
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        parse_window(value)  # real times of day, a start that is not the end
        return value

    _zone = field_validator("default_time_zone")(lambda cls, v: _time_zone(v))


class RuleSet(_Model):
    """A whole rules file."""

    settings: Settings = Settings()
    rules: list[Rule] = []

    @model_validator(mode="after")
    def _unique_names(self) -> RuleSet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"two rules are named {rule.name!r}")
            seen.add(rule.name)
        return self


def load(text: str) -> RuleSet:
    """Parse and validate a rules file; RulesError lists every problem with its line and field."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise RulesError([f"{line}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RulesError(["line 1: the file must be a mapping with a 'rules' list"])
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [
                p
                for p in error["loc"]
                if not (isinstance(p, str) and p in ("function-after", "function-before"))
            ]
            line = _line_of(node, loc)
            field = _path(loc)
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"line {line}: {field}: {message}")
        raise RulesError(problems) from None


def _path(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def _line_of(node: Any, loc: list[Any]) -> int:
    """The line of the deepest YAML node on the error's path (1-based)."""
    line = 1
    for part in loc:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        elif isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        else:
            break
    return line


def default_source() -> str:
    """The shipped default rules (app/default_rules.yaml)."""
    return DEFAULT_RULES.read_text()
