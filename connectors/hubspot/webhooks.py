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

from flask import Request, Response
from hubspot.exceptions import InvalidSignatureTimestampError
from hubspot.utils.signature import Signature

from app.core.crm_events import CrmEventIn
from app.core.settings import Settings
from webhooks.base import CrmEventReceiver, Forbidden, Malformed, public_url

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


def normalize(event: dict[str, Any]) -> CrmEventIn:
    """One HubSpot v3 event as the automations see it."""
    kind, _, _change = event["subscriptionType"].partition(".")
    return CrmEventIn(
        account=str(event["portalId"]),
        event_id=str(event["eventId"]),
        event_type=event["subscriptionType"],
        object_type=kind or None,
        object_id=str(event["objectId"]) if "objectId" in event else None,
        property_name=event.get("propertyName"),
        property_value=None if event.get("propertyValue") is None else str(event["propertyValue"]),
        occurred_at=datetime.fromtimestamp(event["occurredAt"] / 1000, UTC),
        payload=event,
    )


# (subscriptionType, propertyName) -> the normalized trigger the automations know.
TRIGGERS: dict[tuple[str, str | None], str] = {
    ("contact.creation", None): "contact.created",
    ("deal.propertyChange", "dealstage"): "crm.deal_stage_changed",
    ("contact.propertyChange", "hubspot_owner_id"): "crm.owner_changed",
}


class HubSpotReceiver:
    """The CrmEventReceiver for HubSpot's v3 webhooks."""

    provider = PROVIDER

    def verify(self, request: Request, settings: Settings) -> None:
        """See verify()."""
        verify(request, settings)

    def parse(self, request: Request) -> list[CrmEventIn]:
        """The batch, normalized."""
        return [normalize(e) for e in parse(request)]

    def reply(self, request: Request, events: list[CrmEventIn], new: list[int]) -> Response:
        """HubSpot wants any 2xx within 5 seconds."""
        return Response(status=204)

    def trigger_kind(self, event_type: str, property_name: str | None) -> str | None:
        """HubSpot's subscription types as rule triggers."""
        return TRIGGERS.get((event_type, property_name)) or TRIGGERS.get((event_type, None))


RECEIVER: CrmEventReceiver = HubSpotReceiver()
