"""Salesforce Outbound Messages (sent by a Flow's or a workflow rule's Outbound Message action) at
POST /webhooks/salesforce: a SOAP envelope of up to 100 notifications, each stored once by its notification
Id.

Outbound Messages are not signed. What we check: the envelope's OrganizationId must be the org of a tenant
(403, nothing stored, otherwise), and the body must be the outbound-messaging SOAP shape (400). Restrict the
endpoint further with Salesforce's IP ranges or mutual TLS at your proxy. We answer the SOAP Ack Salesforce
expects; anything else makes it retry for up to 24 hours.
https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_om_outboundmessaging_understanding.htm

A message carries the record's fields as they are, not what changed, so each Outbound Message action names the
change it reports; the stored events (event_type, property_name):
- Opportunity (a Flow on "StageName Is Changed"): ("Opportunity.updated", "StageName"), property_value the
  stage as rules name it (closedwon / closedlost for closed opportunities, else StageName).
- Contact, or a Lead with ?field=OwnerId on the endpoint URL (a Flow on "OwnerId Is Changed"):
  ("Contact.updated" | "Lead.updated", "OwnerId"), property_value the new owner.
- Lead (a Flow on "A record is created"): ("Lead.created", None).
Any other object or ?field=X is stored as ("<Object>.updated", X) and fires no rule.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from flask import Request, Response
from sqlalchemy import select

from app.core import db
from app.core.crm_events import CrmEventIn
from app.core.models import Tenant
from app.core.settings import Settings
from connectors.salesforce.mapping import stage_key
from webhooks.base import CrmEventReceiver, Forbidden, Malformed

log = logging.getLogger(__name__)

PROVIDER = "salesforce"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
OM = "http://soap.sforce.com/2005/09/outbound"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
MAX_NOTIFICATIONS = 100
ACK = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
    " <soapenv:Body>\n"
    '  <notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound">\n'
    "   <Ack>true</Ack>\n"
    "  </notificationsResponse>\n"
    " </soapenv:Body>\n"
    "</soapenv:Envelope>"
)
_ID = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
DEFAULT_FIELD = {"Opportunity": "StageName", "Contact": "OwnerId"}

# (event_type, property_name) -> the normalized trigger the automations know.
TRIGGERS: dict[tuple[str, str | None], str] = {
    ("Opportunity.updated", "StageName"): "crm.deal_stage_changed",
    ("Contact.updated", "OwnerId"): "crm.owner_changed",
    ("Lead.updated", "OwnerId"): "crm.owner_changed",
    ("Lead.created", None): "contact.created",
}


def org_id18(org_id: str) -> str:
    """An org (or any) id in its 18-character form (a 15-character id gets its case-safe suffix)."""
    if len(org_id) != 15:
        return org_id
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, ch in enumerate(org_id[start : start + 5]) if ch.isupper())
        suffix += _SUFFIX[bits]
    return org_id + suffix


def _envelope(request: Request) -> ET.Element:
    """The <notifications> element of the SOAP body (400 for anything else). No DTDs: entity tricks are
    refused."""
    raw = request.get_data()
    if b"<!DOCTYPE" in raw.upper() or b"<!ENTITY" in raw.upper():
        raise Malformed("DTDs are not accepted", field="body")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError:
        raise Malformed("body is not XML", field="body") from None
    notifications = root.find(f"{{{SOAP}}}Body/{{{OM}}}notifications")
    if root.tag != f"{{{SOAP}}}Envelope" or notifications is None:
        raise Malformed("body is not an Outbound Message (soapenv:Envelope/Body/notifications)", field="body")
    return notifications


def _text(parent: ET.Element, name: str) -> str | None:
    node = parent.find(f"{{{OM}}}{name}")
    return (node.text or "").strip() if node is not None and node.text else None


def organization_id(notifications: ET.Element) -> str:
    """The sending org's id (18 characters)."""
    org = _text(notifications, "OrganizationId")
    if not org or not _ID.fullmatch(org):
        raise Malformed("missing or malformed OrganizationId", field="OrganizationId")
    return org_id18(org)


def verify(request: Request, settings: Settings) -> None:
    """The OrganizationId must be the org of a Salesforce tenant (403 otherwise, before anything is
    stored)."""
    org = organization_id(_envelope(request))
    with db.transaction() as s:
        known = s.scalar(
            select(Tenant.id).where(Tenant.crm == PROVIDER, Tenant.crm_account_id.in_([org, org[:15]]))
        )
    if known is None:
        log.info("webhook.rejected provider=salesforce reason=unknown-org")
        raise Forbidden("unknown Salesforce organization")


def parse(request: Request) -> list[CrmEventIn]:
    """Each <Notification> as a CrmEventIn (400 naming the field when one is malformed)."""
    notifications = _envelope(request)
    org = organization_id(notifications)
    action = _text(notifications, "ActionId")
    wanted = (request.args.get("field") or "").strip() or None
    found = notifications.findall(f"{{{OM}}}Notification")
    if not found or len(found) > MAX_NOTIFICATIONS:
        raise Malformed(f"expected 1 to {MAX_NOTIFICATIONS} Notification elements", field="Notification")
    events = []
    for i, note in enumerate(found):
        note_id = _text(note, "Id")
        sobj = note.find(f"{{{OM}}}sObject")
        if not note_id or sobj is None:
            raise Malformed(f"notification {i}: missing Id or sObject", field=f"Notification[{i}]")
        kind = (sobj.get(f"{{{XSI}}}type") or "").rpartition(":")[2]
        fields = {child.tag.rpartition("}")[2]: (child.text or "") for child in sobj}
        if not kind or not fields.get("Id"):
            raise Malformed(
                f"notification {i}: sObject without a type or an Id", field=f"Notification[{i}].sObject"
            )
        events.append(_event(org, action, note_id, kind, fields, wanted))
    return events


def _event(
    org: str, action: str | None, note_id: str, kind: str, fields: dict[str, str], wanted: str | None
) -> CrmEventIn:
    prop = wanted or DEFAULT_FIELD.get(kind)
    if kind == "Lead" and prop is None:
        event_type, value = "Lead.created", None
    elif kind == "Opportunity" and prop == "StageName":
        event_type = "Opportunity.updated"
        value = stage_key(fields.get("StageName"), fields.get("IsWon"), fields.get("IsClosed"))
    else:
        event_type, value = f"{kind}.updated", (fields.get(prop) if prop else None)
    stamp = fields.get("LastModifiedDate") or fields.get("SystemModstamp") or fields.get("CreatedDate")
    return CrmEventIn(
        account=org,
        event_id=note_id,
        event_type=event_type,
        object_type=kind,
        object_id=fields["Id"],
        property_name=prop,
        property_value=value or None,
        occurred_at=_when(stamp),
        payload={"sobject": kind, "action_id": action, "fields": fields},  # never the SessionId
    )


def _when(value: str | None) -> datetime:
    if value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    return datetime.now(UTC)


class SalesforceReceiver:
    """The CrmEventReceiver for Outbound Messages."""

    provider = PROVIDER

    def verify(self, request: Request, settings: Settings) -> None:
        """See verify()."""
        verify(request, settings)

    def parse(self, request: Request) -> list[CrmEventIn]:
        """See parse()."""
        return parse(request)

    def reply(self, request: Request, events: list[CrmEventIn], new: list[int]) -> Response:
        """The SOAP Ack (200, text/xml), for new and already-stored notifications alike."""
        return Response(ACK, status=200, mimetype="text/xml")

    def trigger_kind(self, event_type: str, property_name: str | None) -> str | None:
        """Outbound Messages as rule triggers (see the module docstring)."""
        return TRIGGERS.get((event_type, property_name))


RECEIVER: CrmEventReceiver = SalesforceReceiver()
