"""HubSpot webhooks: v3 signature, then each event of the batch stored once (by eventId) as a CrmEvent.

Configure in the HubSpot app's Webhooks settings: target URL https://HOST/webhooks/hubspot, subscriptions
such as deal.propertyChange (dealstage), contact.propertyChange (hubspot_owner_id), contact.creation.
HubSpot signs with the app's client secret (HUBSPOT_CLIENT_SECRET):
base64(HMAC-SHA256(secret, method + uri + body + timestamp)), timestamp in X-HubSpot-Request-Timestamp
(ms), older than 5 minutes rejected: https://developers.hubspot.com/docs/api/webhooks/validating-requests
The tenant of each event is the one installed for its portalId; events of unknown portals are ignored.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from flask import Request
from hubspot.exceptions import InvalidSignatureTimestampError
from hubspot.utils.signature import Signature
from sqlalchemy import select

from app.core import db
from app.core.models import CrmEvent, Tenant
from app.core.settings import Settings
from webhooks.base import Forbidden, Malformed, public_url

log = logging.getLogger(__name__)

PROVIDER = "hubspot"
MAX_SKEW_SECONDS = 300
MAX_EVENTS = 1000  # HubSpot sends at most 100 per request; anything far beyond is not HubSpot


def verify(request: Request, settings: Settings) -> None:
    """Check X-HubSpot-Signature-v3 with the app's client secret, within the 5-minute window (403)."""
    secret = settings.hubspot_client_secret
    signature = request.headers.get("X-HubSpot-Signature-v3")
    timestamp = request.headers.get("X-HubSpot-Request-Timestamp")
    if not secret:
        raise Forbidden("HubSpot webhooks are not configured (HUBSPOT_CLIENT_SECRET)")
    if not signature or not timestamp:
        raise Forbidden("missing X-HubSpot-Signature-v3 or X-HubSpot-Request-Timestamp")
    try:
        skew = abs(time.time() - int(timestamp) / 1000)
    except ValueError:
        raise Forbidden("malformed X-HubSpot-Request-Timestamp") from None
    if skew > MAX_SKEW_SECONDS:
        raise Forbidden("stale X-HubSpot-Request-Timestamp")
    body = request.get_data(as_text=True)
    try:
        valid = Signature.is_valid(
            signature, secret, body, public_url(request), request.method, "v3", timestamp
        )
    except InvalidSignatureTimestampError:
        raise Forbidden("stale X-HubSpot-Request-Timestamp") from None
    if not valid:
        raise Forbidden("invalid signature")


def parse(request: Request) -> list[dict[str, Any]]:
    """The batch of events (a JSON array), each with the fields we rely on (400 naming the field)."""
    try:
        events = json.loads(request.get_data(as_text=True))
    except ValueError:
        raise Malformed("body is not JSON", field="body") from None
    if not isinstance(events, list) or len(events) > MAX_EVENTS:
        raise Malformed("body must be a JSON array of events", field="body")
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise Malformed(f"event {i} is not an object", field=f"[{i}]")
        for name, kind in (
            ("eventId", int),
            ("portalId", int),
            ("subscriptionType", str),
            ("occurredAt", int),
        ):
            if not isinstance(event.get(name), kind) or isinstance(event.get(name), bool):
                raise Malformed(f"event {i}: missing or malformed {name}", field=f"[{i}].{name}")
    return events


def record(events: list[dict[str, Any]]) -> list[int]:
    """Store the events of known portals once each; returns the ids of the new ones."""
    portals = {str(e["portalId"]) for e in events}
    new: list[int] = []
    with db.transaction() as s:
        tenants = {
            t.crm_account_id: t.id
            for t in s.scalars(
                select(Tenant).where(Tenant.crm == "hubspot", Tenant.crm_account_id.in_(portals))
            )
        }
        for event in events:
            tenant_id = tenants.get(str(event["portalId"]))
            if tenant_id is None:
                log.info(
                    "webhook.ignored provider=hubspot portal=%s reason=unknown-portal", event["portalId"]
                )
                continue
            event_id = str(event["eventId"])
            exists = s.scalar(
                select(CrmEvent.id).where(
                    CrmEvent.tenant_id == tenant_id,
                    CrmEvent.provider == PROVIDER,
                    CrmEvent.event_id == event_id,
                )
            )
            if exists is not None:
                continue
            kind, _, _change = event["subscriptionType"].partition(".")
            row = CrmEvent(
                tenant_id=tenant_id,
                provider=PROVIDER,
                event_id=event_id,
                event_type=event["subscriptionType"],
                object_type=kind or None,
                object_id=str(event["objectId"]) if "objectId" in event else None,
                property_name=event.get("propertyName"),
                property_value=None if event.get("propertyValue") is None else str(event["propertyValue"]),
                occurred_at=datetime.fromtimestamp(event["occurredAt"] / 1000, UTC),
                payload=event,
            )
            s.add(row)
            s.flush()
            new.append(row.id)
    return new
