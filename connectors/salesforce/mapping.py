"""Pure Salesforce mapping (no I/O): SOSL escaping and phone terms, interactions and tasks as Task records,
emails as EmailMessage records, the shared-number rule, and deal stages as the automations name them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import phonenumbers

from app.core.interactions import InteractionData
from app.core.phones import pretty
from connectors.base import Party, TaskSpec

EXTERNAL_ID = "Switchboard_Id__c"
OPT_OUT_FIELD = "Switchboard_SMS_Opt_Out__c"
RESERVED = set("?&|!{}[]()^~*:\\\"'+-")  # SOSL's reserved characters in FIND {...}
PHONE_FIELDS = {
    "Contact": ("Phone", "MobilePhone", "HomePhone", "OtherPhone", "AssistantPhone"),
    "Lead": ("Phone", "MobilePhone"),
}
FINAL_CALL = {"completed", "missed", "voicemail", "busy", "no-answer", "failed", "canceled"}
DISPOSITIONS = {
    "completed": "Answered",
    "missed": "Missed",
    "voicemail": "Left voicemail",
    "busy": "Busy",
    "no-answer": "No answer",
    "failed": "Failed",
    "canceled": "Canceled",
    "ringing": "Ringing",
    "in-progress": "In progress",
    "initiated": "Dialing",
}
PRIORITIES = {"low": "Low", "normal": "Normal", "high": "High"}
# EmailMessage.Status codes: 0 New, 1 Read, 2 Replied, 3 Sent, 4 Forwarded, 5 Draft. Set at creation only:
# after insert Salesforce lets it change only from New to Read, so a bounce cannot be written there.
# https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_emailmessage.htm
EMAIL_NEW, EMAIL_SENT, EMAIL_DRAFT = "0", "3", "5"
EMAIL_CREATE_ONLY = frozenset({"ToIds", "Status"})  # fields we send only when we believe we are creating


def _sf_datetime(at: datetime) -> str:
    """A dateTime as Salesforce writes them (UTC, milliseconds, +0000)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def email_trouble(data: InteractionData, who_id: str) -> dict[str, Any] | None:
    """The person's standard email-health fields for an email that bounced, failed for good, or that the
    recipient marked as spam or unsubscribed from: the bounce as Salesforce shows it on a Contact or Lead
    (EmailBouncedReason / EmailBouncedDate), an opt-out as HasOptedOutOfEmail. None for any other email.
    https://developer.salesforce.com/docs/atlas.en-us.object_reference.meta/object_reference/sforce_api_objects_contact.htm"""
    kind = {"003": "Contact", "00Q": "Lead"}.get(who_id[:3])
    if kind is None or data.channel != "email" or data.direction != "outbound":
        return None
    record: dict[str, Any] = {"attributes": {"type": kind}, "id": who_id}
    if data.status in ("bounced", "failed"):
        reason = f"{data.status}: {data.error_code}" if data.error_code else data.status
        record["EmailBouncedReason"] = reason[:255]
        record["EmailBouncedDate"] = _sf_datetime(data.ended_at or data.occurred_at)
    elif data.status in ("complained", "unsubscribed"):
        record["HasOptedOutOfEmail"] = True
    else:
        return None
    return record


def sosl_escape(term: str) -> str:
    """A literal for FIND {...}: every reserved character backslash-escaped.
    https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_sosl_find.htm"""
    return "".join("\\" + ch if ch in RESERVED else ch for ch in term)


def soql_quote(value: str) -> str:
    """A SOQL string literal (quotes and backslashes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def phone_terms(e164: str) -> list[str]:
    """What we search for a number: the national digits (how Salesforce's examples search) and, when it
    differs,
    every digit with the country code, so "+1 (415) 555-0100", "4155550100" and "+14155550100" all match."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        digits = "".join(ch for ch in e164 if ch.isdigit())
        return [digits] if digits else []
    national = phonenumbers.national_significant_number(parsed)
    full = f"{parsed.country_code}{national}"
    return [national] if national == full else [national, full]


def choose_record(candidates: list[dict[str, Any]], phone: str, prefer: str) -> tuple[dict[str, Any], str]:
    """The shared-number rule: the preferred object (tenant setting salesforce_match_prefer, Contact by
    default)
    wins, then the most recently modified record, then the lowest id; and why."""
    ordered = sorted(
        candidates,
        key=lambda r: (
            _type(r) != prefer,
            -_epoch(r.get("LastModifiedDate")),
            str(r["Id"]),
        ),
    )
    chosen = ordered[0]
    if len(ordered) == 1:
        return chosen, f"phone {phone} ({_type(chosen)})"
    kinds = sorted({_type(r) for r in ordered})
    counts = ", ".join(f"{sum(1 for r in ordered if _type(r) == k)} {k}" for k in kinds)
    kind = _type(chosen)
    preferred = kind == prefer and len(kinds) > 1
    why = f"preferred {kind} (most recently modified)" if preferred else f"most recently modified {kind}"
    return chosen, f"phone {phone} shared by {len(ordered)} contacts ({counts}); chose the {why}"


def _type(record: dict[str, Any]) -> str:
    return str((record.get("attributes") or {}).get("type") or kind_of(str(record["Id"])))


def kind_of(record_id: str) -> str:
    """The sObject of a person's id by its key prefix: Contact (003) or Lead (00Q)."""
    return "Lead" if record_id.startswith("00Q") else "Contact"


def _epoch(value: str | None) -> float:
    if not value:
        return 0.0
    text = value.replace("Z", "+00:00")
    if len(text) > 5 and text[-5] in "+-" and text[-3] != ":":
        text = text[:-2] + ":" + text[-2:]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def person_record(party: Party, sobject: str, external_id: str | None) -> dict[str, Any]:
    """A Lead or Contact for an unknown party (LastName, and a Lead's Company, are required)."""
    first, _, last = (party.name or "").strip().partition(" ")
    if not last:
        first, last = "", first or (pretty(party.phone) if party.phone else (party.email or "Unknown"))
    record: dict[str, Any] = {"attributes": {"type": sobject}, "LastName": last[:80]}
    if first:
        record["FirstName"] = first[:40]
    if party.phone:
        record["Phone"] = party.phone
    if party.email:
        record["Email"] = party.email
    if sobject == "Lead":
        record["Company"] = "[not provided]"  # required on Leads; what Salesforce itself fills in
        record["LeadSource"] = "Phone Inquiry"
    if external_id:
        record[EXTERNAL_ID] = external_id
    return record


def interaction_task(
    data: InteractionData,
    *,
    who_id: str | None,
    account_id: str | None,
    fields: set[str],
    external_id: str | None,
    create: bool,
) -> dict[str, Any]:
    """The Task for a call or a text, with only the fields the org has (the Call* fields need Call Center).

    TaskSubtype=Call is create-only, so it is sent only when we believe we are creating; WhatId is the
    contact's
    account, and never set on a Lead's task (Salesforce refuses it); OwnerId only names users (005), not
    queues.
    """
    call = data.channel == "call"
    record: dict[str, Any] = {
        "attributes": {"type": "Task"},
        "Subject": (_call_subject(data) if call else _sms_subject(data))[:255],
        "Description": (_call_description(data) if call else _sms_description(data))[:32000],
        **(_email_fields(data) if data.channel == "email" else {}),
        "Status": "Completed" if not call or data.status in FINAL_CALL else "In Progress",
        "ActivityDate": data.occurred_at.astimezone(UTC).date().isoformat(),
        "Priority": "Normal",
    }
    if external_id:
        record[EXTERNAL_ID] = external_id
    if who_id:
        record["WhoId"] = who_id
        if account_id and kind_of(who_id) == "Contact":
            record["WhatId"] = account_id
    if data.owner_id and str(data.owner_id).startswith("005"):
        record["OwnerId"] = data.owner_id
    if data.channel == "email" and create:
        # An email is a Task with TaskSubtype=Email (create-only, like Call; issue 12's fallback where
        # EmailMessage is not used): Salesforce then shows it as an email in the activity timeline.
        record["TaskSubtype"] = "Email"
    if call:
        if create:
            record["TaskSubtype"] = "Call"
        record["CallType"] = "Inbound" if data.direction == "inbound" else "Outbound"
        record["CallDurationInSeconds"] = int(data.duration_seconds or 0)
        record["CallObject"] = data.provider_id or external_id
        # The rep's outcome from the dialer, by label (CallDisposition is free text: "Call Result").
        record["CallDisposition"] = (data.outcome_label or DISPOSITIONS.get(data.status, data.status))[:255]
    elif external_id and EXTERNAL_ID not in fields:
        record["CallObject"] = external_id  # the fallback key of texts when the org has no Switchboard_Id__c
    return {k: v for k, v in record.items() if k == "attributes" or k in fields}


def email_message(
    data: InteractionData,
    *,
    who_id: str | None,
    account_id: str | None,
    fields: set[str],
    external_id: str,
    create: bool,
) -> dict[str, Any]:
    """The EmailMessage for an email (Enhanced Email), with only the fields the org has.

    ToIds (the matched Contact or Lead: Salesforce makes the EmailMessageRelation rows) and Status are sent
    only when we believe we are creating; RelatedToId is the contact's account, never set for a Lead (as
    WhatId on a Lead's Task). MessageIdentifier is the provider's message id, else our id: the key of the
    lookup when the org has no Switchboard_Id__c on EmailMessage."""
    inbound = data.direction == "inbound"
    record: dict[str, Any] = {
        "attributes": {"type": "EmailMessage"},
        "Subject": (data.subject or "(no subject)")[:255],
        "TextBody": _email_text(data)[:32000],
        "FromAddress": (data.from_addr or "")[:255] or None,
        "FromName": (data.from_name or "")[:255] or None,
        "ToAddress": (data.to_addr or "")[:255] or None,  # Salesforce allows 4,000 [UNVERIFIED]; 255 is safe
        "CcAddress": (data.cc or "")[:255] or None,
        "Incoming": inbound,
        "MessageDate": _sf_datetime(data.occurred_at),
        "MessageIdentifier": (data.provider_id or external_id)[:255],
        "ThreadIdentifier": (data.thread_key or "")[:255] or None,
        EXTERNAL_ID: external_id,
    }
    if who_id and kind_of(who_id) == "Contact" and account_id:
        record["RelatedToId"] = account_id
    if create:
        record["Status"] = EMAIL_NEW if inbound else (EMAIL_DRAFT if data.status == "draft" else EMAIL_SENT)
        if who_id:
            record["ToIds"] = [who_id]
    return {k: v for k, v in record.items() if k == "attributes" or (k in fields and v is not None)}


def _email_text(data: InteractionData) -> str:
    """The new text, with the attachments' names (their content is never stored)."""
    lines = [data.body or ""]
    lines += [f"[attachment] {m.get('name')}" for m in data.media if m.get("name")]
    return "\n".join(line for line in lines if line)


def task_record(task: TaskSpec, *, who_id: str | None, fields: set[str], external_id: str) -> dict[str, Any]:
    """A follow-up Task for a rep."""
    due = task.due_at or datetime.now(UTC)
    record: dict[str, Any] = {
        "attributes": {"type": "Task"},
        EXTERNAL_ID: external_id,
        "Subject": task.subject[:255],
        "Status": "Not Started",
        "Priority": PRIORITIES.get(task.priority, "Normal"),
        "ActivityDate": due.astimezone(UTC).date().isoformat(),
    }
    if EXTERNAL_ID not in fields:
        record["CallObject"] = external_id
    if task.body:
        record["Description"] = task.body[:32000]
    if who_id:
        record["WhoId"] = who_id
    if task.assignee_owner_id and str(task.assignee_owner_id).startswith("005"):
        record["OwnerId"] = task.assignee_owner_id
    return {k: v for k, v in record.items() if k == "attributes" or k in fields}


def _who(data: InteractionData) -> str:
    return data.caller_name or (pretty(data.party_phone) if data.party_phone else "unknown number")


def _call_subject(data: InteractionData) -> str:
    if data.status == "voicemail":
        return f"Voicemail from {_who(data)}"
    if data.status == "missed":
        return f"Missed call from {_who(data)}"
    if data.direction == "inbound":
        return f"Inbound call from {_who(data)}"
    return f"Outbound call to {_who(data)}"


def _call_description(data: InteractionData) -> str:
    lines = [f"{(data.direction or 'unknown').capitalize()} call, {data.status}"]
    if data.duration_seconds:
        lines[0] += f", {data.duration_seconds} s"
    lines.append(f"From {data.from_addr or '-'} to {data.to_addr or '-'}")
    if data.notes:  # the rep's notes from the dialer
        lines.insert(0, data.notes)
    if data.body:
        lines.append(data.body)
    if data.recording_url:
        lines.append(f"Recording: {data.recording_url}")
    return "\n".join(lines)


def _sms_subject(data: InteractionData) -> str:
    if data.direction == "inbound":
        return f"SMS from {_who(data)}"
    return f"SMS to {_who(data)}"


def _email_fields(data: InteractionData) -> dict[str, str]:
    """An email's Task: Subject "Email: <subject>", the new text, who wrote to whom and its status."""
    lines = [f"{(data.direction or 'unknown').capitalize()} email, {data.status}"]
    lines.append(f"From {data.from_addr or '-'} to {data.to_addr or '-'}")
    if data.body:
        lines.append(data.body)
    lines += [f"[attachment] {m.get('name')}" for m in data.media if m.get("name")]
    subject = f"Email: {data.subject or '(no subject)'}"
    return {"Subject": subject[:255], "Description": "\n".join(lines)[:32000]}


def _sms_description(data: InteractionData) -> str:
    lines = [data.body or ""]
    lines += [f"[attachment] {m.get('url')}" for m in data.media]
    if data.direction != "inbound":
        lines.append(f"[{data.status}{' error ' + data.error_code if data.error_code else ''}]")
    return "\n".join(line for line in lines if line)


def stage_key(stage: str | None, is_won: Any = None, is_closed: Any = None) -> str | None:
    """A deal stage as rules name it on every CRM: closedwon / closedlost for closed opportunities
    (Salesforce's
    IsWon and IsClosed, whatever the org calls the stage), else Salesforce's StageName as it is."""
    if _true(is_closed):
        return "closedwon" if _true(is_won) else "closedlost"
    if _true(is_won):
        return "closedwon"
    return stage


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"
