"""The normalized model: provider events, merge-safe facts, and the interaction state derived from them.

Pure code, no I/O. Every callback becomes an `Event` carrying *facts*. Facts merge with rules that do
not depend on arrival order (max by precedence, set-once, logical or), and the interaction's status,
duration and recording are *derived* from the merged facts. So callbacks that arrive late, twice or
shuffled always produce the same final state, and a late `ringing` after `completed` changes nothing.
Twilio warns that status callbacks are not ordered:
https://www.twilio.com/docs/voice/api/call-resource#statuscallback (SequenceNumber).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

# --- precedence tables -----------------------------------------------------------------------------

CALL_TERMINAL = ("completed", "busy", "no-answer", "failed", "canceled")
_CALL_RANK = {"queued": 0, "initiated": 0, "ringing": 1, "in-progress": 2, "answered": 2}
_CALL_RANK.update({s: 3 for s in CALL_TERMINAL})

# Messages: https://www.twilio.com/docs/messaging/guides/outbound-message-status-in-status-callbacks
# Terminal states share a rank band; the fractional part is a fixed tie-break so merging stays commutative.
_SMS_RANK = {
    "accepted": 0.0,
    "scheduled": 0.0,
    "queued": 0.1,
    "sending": 1.0,
    "sent": 2.0,
    "receiving": 2.0,
    "received": 2.1,
    "canceled": 3.0,
    "failed": 3.1,
    "undelivered": 3.2,
    "delivered": 3.3,
    "read": 4.0,
}
_RECORDING_RANK = {
    "in-progress": 0,
    "paused": 0,
    "stopped": 1,
    "processing": 1,
    "absent": 2,
    "failed": 2,
    "completed": 3,
    "deleted": 3,
}

# Derived interaction statuses, for filters and docs.
CALL_STATUSES = (
    "initiated",
    "ringing",
    "in-progress",
    "completed",
    "missed",
    "voicemail",
    "busy",
    "no-answer",
    "failed",
    "canceled",
)
SMS_STATUSES = tuple(_SMS_RANK)

# Email delivery, from SendGrid's and Mailgun's event webhooks (which, like Twilio's, arrive in any order
# and more than once). A later stage outranks an earlier one; a permanent failure, a complaint or an
# unsubscribe outranks delivery and opens (a bounce can come after "delivered"); the fractional part is a
# fixed tie-break so merging stays commutative. "failed" is permanent; a temporary failure is "deferred".
_EMAIL_RANK = {
    "received": 0.0,  # inbound
    "sending": 0.5,  # recorded by us just before the provider's send API is called (app/channels/email.py)
    "sent": 1.0,  # accepted by the provider (SendGrid processed, Mailgun accepted)
    "deferred": 2.0,  # a temporary failure: the provider retries
    "delivered": 3.0,
    "opened": 4.0,
    "clicked": 4.1,
    "bounced": 5.0,
    "failed": 5.1,  # dropped or failed permanently
    "unsubscribed": 6.0,
    "complained": 6.1,  # marked as spam
}
EMAIL_STATUSES = tuple(_EMAIL_RANK)


def _call_key(rec: dict[str, Any]) -> tuple[int, int]:
    return (_CALL_RANK.get(rec.get("status", ""), -1), int(rec.get("seq", -1)))


def _sms_key(rec: dict[str, Any]) -> tuple[float, str]:
    return (_SMS_RANK.get(rec.get("status", ""), -1.0), rec.get("status", ""))


def _email_key(rec: dict[str, Any]) -> tuple[float, str]:
    return (_EMAIL_RANK.get(rec.get("status", ""), -1.0), rec.get("status", ""))


def _recording_key(rec: dict[str, Any]) -> tuple[int, int]:
    return (_RECORDING_RANK.get(rec.get("status", ""), -1), int(rec.get("duration") or 0))


def _dial_key(rec: dict[str, Any]) -> tuple[int, int]:
    return (_CALL_RANK.get(rec.get("status", ""), -1), int(rec.get("duration") or 0))


# --- events and merging ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Consent:
    """A change of a number's consent to texts that an event carries (STOP/START keywords, error 21610)."""

    phone: str  # E.164
    opted_out: bool
    source: str  # keyword | 21610 | ...


@dataclass(frozen=True)
class Event:
    """One provider webhook, normalized: which interaction it concerns and the facts it adds."""

    provider: str
    stream: str
    event_key: str  # idempotency key of the delivery, unique per tenant and provider
    channel: str  # "call" | "sms" | "email"
    provider_id: str  # the interaction key: parent CallSid, MessageSid, or the email's provider message id
    account: str  # provider account that signed it (Twilio AccountSid)
    facts: dict[str, Any]
    raw: dict[str, list[str]] = field(repr=False)
    consent: Consent | None = None  # recorded in the same transaction as the event


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _pick(a: Any, b: Any) -> Any:
    """Choose between two values the same way whatever their order: a non-empty one, else the larger."""
    if _empty(a):
        return b
    if _empty(b) or a == b:
        return a
    return max(a, b, key=lambda v: json.dumps(v, sort_keys=True, default=str))


def _once(old: Any, new: Any) -> Any:
    """Set-once facts: fill what is missing; a conflict is settled the same way in either order."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: _pick(old.get(k), new.get(k)) for k in old.keys() | new.keys()}
    return _pick(old, new)


def _max_by(key: Callable[[dict[str, Any]], Any]) -> Callable[[Any, Any], Any]:
    def merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
        if old is None:
            return new
        k_old, k_new = key(old), key(new)
        if k_new != k_old:
            return new if k_new > k_old else old
        # Two reports of equal rank (e.g. the <Record> action and the recording callback) complete each
        # other, so the merged record is the same whichever arrived first.
        return _once(old, new)

    return merge


def _map_max_by(key: Callable[[dict[str, Any]], Any]) -> Callable[[Any, Any], Any]:
    one = _max_by(key)

    def merge(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
        merged = dict(old or {})
        for k, v in new.items():
            merged[k] = one(merged.get(k), v) if k in merged else v
        return merged

    return merge


_MERGE: dict[str, Callable[[Any, Any], Any]] = {
    "call": _once,  # direction, from, to, caller_name of the parent leg
    "msg": _once,  # direction, from, to, body, media of a message
    "routed_user_id": _once,
    "parent_status": _max_by(_call_key),
    "legs": _map_max_by(_call_key),  # child legs by CallSid
    "dials": _map_max_by(_dial_key),  # <Dial> action results by DialCallSid
    "recordings": _map_max_by(_recording_key),  # by RecordingSid
    "msg_status": _max_by(_sms_key),
    "voicemail_prompted": lambda old, new: bool(old) or bool(new),
    # RecordingSids the <Record> action named before their recording was final: a union, so any order.
    "recording_pending": lambda old, new: {**(old or {}), **(new or {})},
    "call_duration": lambda old, new: max(int(old or 0), int(new or 0)),
    "started_at": lambda old, new: min(x for x in (old, new) if x) if (old or new) else None,
    "ended_at": lambda old, new: max(x for x in (old, new) if x) if (old or new) else None,
    "transcription": _once,
    # An email: direction, from, to, cc, subject, text (new text, quotes and signature stripped), full_text,
    # message_id, in_reply_to, references, attachments (name, type, size), provider, spf, dkim.
    "email": _once,
    "email_status": _max_by(_email_key),  # status, severity, reason, code
    # When each delivery stage was first reported (delivered, opened, clicked ...): earliest wins.
    # The rep's dialer (app.core.calls): the placement record is set-once per key (a later key, such as
    # hangup_at, fills in); the rep's disposition is revised, the latest revision winning in any order; the
    # CRM's own call record (HubSpot's engagement) is set once.
    "dialer": _once,
    "disposition": _max_by(lambda rec: (int(rec.get("rev") or 0),)),
    "engagement": _once,
    "email_seen": lambda old, new: {
        k: min(x for x in ((old or {}).get(k), (new or {}).get(k)) if x)
        for k in (old or {}).keys() | (new or {}).keys()
    },
}


def merge_facts(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Merge new facts into old ones; the result does not depend on the order events arrive in."""
    merged = dict(old)
    for key, value in new.items():
        if value is None:
            continue
        rule = _MERGE.get(key, _once)
        merged[key] = rule(merged.get(key), value) if key in merged else value
    return merged


# --- derivation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """What the merged facts say about the interaction."""

    status: str
    direction: str | None
    from_addr: str | None
    to_addr: str | None
    duration_seconds: int | None = None
    recording_url: str | None = None
    body: str | None = None
    media: list[dict[str, Any]] = field(default_factory=list)
    error_code: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    answered: bool = False
    subject: str | None = None  # emails
    thread_key: str | None = None  # emails: the root Message-ID of the conversation

    def columns(self) -> dict[str, Any]:
        """The interaction's denormalized columns these facts set (the one place that maps them)."""
        out = {name: getattr(self, name) for name in DERIVED_COLUMNS}
        out["media"] = list(self.media)
        out["ended_at"] = _parse_iso(self.ended_at)
        started = _parse_iso(self.started_at)
        if started is not None:  # a callback without a start time leaves the one we have
            out["occurred_at"] = started
        return out


# Derived fields stored as columns of the same name on interactions (and read back by InteractionData).
DERIVED_COLUMNS = (
    "status",
    "direction",
    "from_addr",
    "to_addr",
    "duration_seconds",
    "recording_url",
    "body",
    "media",
    "error_code",
    "subject",
    "thread_key",
)


def _parse_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _direction(raw: str | None) -> str | None:
    if not raw:
        return None
    return "inbound" if raw.startswith("inbound") else "outbound"


def derive(channel: str, facts: dict[str, Any]) -> Derived:
    """Compute status and the denormalized fields from merged facts."""
    if channel == "email":
        return _derive_email(facts)
    return _derive_call(facts) if channel == "call" else _derive_sms(facts)


def _derive_call(f: dict[str, Any]) -> Derived:
    call = f.get("call") or {}
    direction = _direction(call.get("direction"))
    parent = (f.get("parent_status") or {}).get("status")
    legs = [f["legs"][k] for k in sorted(f.get("legs") or {})]
    dials = [f["dials"][k] for k in sorted(f.get("dials") or {})]
    recordings = [f["recordings"][k] for k in sorted(f.get("recordings") or {})]
    ended_at = f.get("ended_at")
    ended = parent in CALL_TERMINAL or bool(ended_at)

    voicemail = [
        r
        for r in recordings
        if r.get("source") == "RecordVerb"
        and r.get("status") == "completed"
        and int(r.get("duration") or 0) > 0
    ]
    bridged = bool(legs or dials)
    if bridged:
        # A child leg that reached in-progress/completed was answered by a person; the <Dial> action says
        # DialCallStatus=completed (or DialBridged=true) when the parties were connected.
        answered = any(leg.get("status") in ("in-progress", "answered", "completed") for leg in legs) or any(
            d.get("status") in ("completed", "answered") or d.get("bridged") for d in dials
        )
    else:
        # A call with no <Dial>: an outbound-api call straight to the customer is answered once in progress.
        answered = (direction == "outbound" and parent in ("in-progress", "answered")) or (
            direction == "outbound" and parent == "completed" and int(f.get("call_duration") or 0) > 0
        )

    talk = max(
        [int(d.get("duration") or 0) for d in dials]
        + [int(leg.get("duration") or 0) for leg in legs if leg.get("status") == "completed"]
        + [0]
    )
    total = int(f.get("call_duration") or 0) or None

    outcomes = [x.get("status") for x in dials + legs if x.get("status") in CALL_TERMINAL[1:]]
    if voicemail:
        status = "voicemail"
    elif answered:
        status = "completed" if ended else "in-progress"
    elif outcomes or ended:
        if direction == "inbound":
            status = "missed"
        elif outcomes:
            status = outcomes[0]
        else:
            status = parent if parent in CALL_TERMINAL[1:] else "no-answer"
    elif direction == "outbound" and parent in ("in-progress", "answered"):
        # Click-to-call: the rep's leg is up and the customer's is being dialled; never back to ringing.
        status = "in-progress"
    elif parent in ("ringing", "in-progress") or any(leg.get("status") == "ringing" for leg in legs):
        status = "ringing"
    elif direction == "inbound":
        status = "ringing"  # the incoming-call webhook itself: the phone is ringing at Twilio
    else:
        status = "initiated"

    if status == "voicemail":
        recording = voicemail[0]
    else:
        recording = next(
            (r for r in recordings if r.get("status") == "completed" and r.get("duration") != 0), None
        )
    duration = (talk or total) if answered else total
    # A call the rep's dialer placed rings the rep first (the parent leg's To); the customer is who it called.
    dialled = (f.get("dialer") or {}).get("to")
    return Derived(
        status=status,
        direction=direction,
        from_addr=call.get("from"),
        to_addr=dialled or call.get("to"),
        duration_seconds=duration,
        recording_url=recording.get("url") if recording else None,
        body=(f.get("transcription") or {}).get("text"),
        started_at=f.get("started_at"),
        ended_at=ended_at,
        answered=answered,
    )


def _derive_sms(f: dict[str, Any]) -> Derived:
    msg = f.get("msg") or {}
    direction = _direction(msg.get("direction"))
    st = f.get("msg_status") or {}
    status = st.get("status") or ("received" if direction == "inbound" else "queued")
    return Derived(
        status=status,
        direction=direction,
        from_addr=msg.get("from"),
        to_addr=msg.get("to"),
        body=msg.get("body"),
        media=list(msg.get("media") or []),
        error_code=st.get("error_code") or None,
        started_at=f.get("started_at"),
    )


def _derive_email(f: dict[str, Any]) -> Derived:
    mail = f.get("email") or {}
    direction = _direction(mail.get("direction"))
    st = f.get("email_status") or {}
    status = st.get("status") or ("received" if direction == "inbound" else "sent")
    return Derived(
        status=status,
        direction=direction,
        from_addr=mail.get("from"),
        to_addr=mail.get("to"),
        body=mail.get("text"),
        media=list(mail.get("attachments") or []),
        error_code=(str(st["code"])[:16] if st.get("code") else None),
        started_at=f.get("started_at"),
        subject=mail.get("subject"),
        thread_key=email_thread_key(mail),
    )


def email_thread_key(mail: dict[str, Any]) -> str | None:
    """The conversation an email belongs to: the root Message-ID (the first of References, else In-Reply-To,
    else its own), so an outbound email and every reply to it share one key. Ids are kept without <>."""
    refs = [r for r in (mail.get("references") or []) if r]
    root = refs[0] if refs else (mail.get("in_reply_to") or mail.get("message_id"))
    return str(root)[:255] if root else None


# How long after a call ended we wait for a <Record> action that may still be on its way (it can arrive
# after the completed status callback) before taking "no recording" as the answer.
RECORDING_GRACE = timedelta(seconds=10)
_RECORDING_FINAL = ("completed", "absent", "failed")


def settled(channel: str, facts: dict[str, Any], now: datetime | None = None) -> bool:
    """Whether the interaction's outcome is final. Texts always are; a call once it has ended and, if the
    caller was offered voicemail: its <Record> recording is final (completed, absent or failed), or no
    recording is in flight and the call ended at least RECORDING_GRACE before `now` (the caller hung up
    during the greeting or while ringing: <Record> never started, so no recording callback will come)."""
    if channel != "call":
        return True
    parent = (facts.get("parent_status") or {}).get("status")
    if parent not in CALL_TERMINAL and not facts.get("ended_at"):
        return False
    if not facts.get("voicemail_prompted"):
        return True
    recordings = facts.get("recordings") or {}
    pending = facts.get("recording_pending") or {}
    if any((recordings.get(sid) or {}).get("status") not in _RECORDING_FINAL for sid in pending):
        return False  # <Record> ran and named a recording whose callback is still to come
    if any(
        r.get("source") == "RecordVerb" and r.get("status") in _RECORDING_FINAL for r in recordings.values()
    ):
        return True
    ended = _parse_iso(facts.get("ended_at"))
    if parent not in CALL_TERMINAL or ended is None:
        return False
    return (now or datetime.now(UTC)) >= ended + RECORDING_GRACE


# --- what connectors receive -----------------------------------------------------------------------


@dataclass(frozen=True)
class InteractionData:
    """A read-only snapshot of an interaction handed to a CRM connector."""

    id: int
    tenant_id: int
    channel: str
    direction: str | None
    status: str
    party_phone: str | None
    party_email: str | None
    our_number: str | None
    from_addr: str | None
    to_addr: str | None
    occurred_at: datetime
    ended_at: datetime | None = None
    duration_seconds: int | None = None
    recording_url: str | None = None
    body: str | None = None
    media: list[dict[str, Any]] = field(default_factory=list)
    error_code: str | None = None
    owner_id: str | None = None  # CRM owner of the user who handled it
    provider: str = "twilio"
    provider_id: str = ""
    caller_name: str | None = None
    subject: str | None = None  # emails
    thread_key: str | None = None  # emails: the root Message-ID shared by a message and its replies
    from_name: str | None = None  # emails: the sender's display name (from the facts)
    cc: str | None = None  # emails: Cc addresses, comma-separated (from the facts)
    # The rep's dialer (from the facts): the outcome chosen (an id from the tenant's list, HubSpot's GUIDs by
    # default) and its label, the rep's notes, and a call record the CRM created itself (HubSpot's calling SDK
    # createEngagement) that the sync must update instead of creating another.
    outcome: str | None = None
    outcome_label: str | None = None
    notes: str | None = None
    engagement_id: str | None = None

    @classmethod
    def from_row(cls, row: Any, *, owner_id: str | None = None) -> InteractionData:
        """The snapshot of a ledger row (any object with the interaction's columns and facts)."""
        values = {f.name: getattr(row, f.name) for f in fields(cls) if f.name not in _NOT_COLUMNS}
        values["media"] = list(values["media"] or [])
        call = (row.facts or {}).get("call") or {}
        mail = (row.facts or {}).get("email") or {}
        disposition = (row.facts or {}).get("disposition") or {}
        return cls(
            **values,
            owner_id=owner_id,
            caller_name=call.get("caller_name"),
            from_name=mail.get("from_name") or None,
            cc=mail.get("cc") or None,
            outcome=disposition.get("outcome") or None,
            outcome_label=disposition.get("label") or None,
            notes=disposition.get("notes") or None,
            engagement_id=((row.facts or {}).get("engagement") or {}).get("id") or None,
        )

    @classmethod
    def from_derived(cls, derived: Derived, **values: Any) -> InteractionData:
        """A snapshot straight from derived facts (the dry run, which has no ledger row); `values` gives
        what the ledger would add: id, tenant_id, channel, party_phone, occurred_at ..."""
        columns = {k: v for k, v in derived.columns().items() if k in {f.name for f in fields(cls)}}
        return cls(**{"party_email": None, "our_number": None, **columns, **values})

    @property
    def title(self) -> str:
        """A short human title, e.g. 'Inbound call (missed)'."""
        kind = {"call": "call", "email": "email"}.get(self.channel, "text")
        return f"{(self.direction or 'unknown').capitalize()} {kind} ({self.status})"


# The owner comes from the user; caller name, sender name, Cc and the dialer's fields from the facts.
_NOT_COLUMNS = {
    "owner_id",
    "caller_name",
    "from_name",
    "cc",
    "outcome",
    "outcome_label",
    "notes",
    "engagement_id",
}
