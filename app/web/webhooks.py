"""Webhook blueprint: one flow for every provider (verify -> parse -> record -> enqueue -> acknowledge).

Each provider module exposes STREAMS, verify(request), parse(stream, request, tenant) and
acknowledge(stream, request, tenant, event, recorded). Nothing here talks to a CRM: the event is committed
to the ledger, the sync job is enqueued (or left for the sweeper if Redis is down), and we answer.
"""

from __future__ import annotations

import logging
from types import ModuleType

from flask import Blueprint, Response, current_app, jsonify, request

from app.automation import store
from app.core import ledger
from app.core.queue import enqueue_automation, enqueue_sync, queue_crm_events
from connectors.hubspot import webhooks as hubspot
from webhooks import twilio
from webhooks.base import WebhookError

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

PROVIDERS: dict[str, ModuleType] = {"twilio": twilio}


@bp.errorhandler(WebhookError)
def _refused(exc: WebhookError) -> tuple[Response, int]:
    log.info("webhook.rejected status=%s reason=%s field=%s", exc.status, exc.message, exc.field)
    return jsonify(exc.body()), exc.status


@bp.post("/hubspot")
def receive_hubspot() -> tuple[str, int]:
    """Accept a batch of HubSpot webhook events."""
    hubspot.verify(request, current_app.extensions["switchboard"])
    events = hubspot.parse(request)
    new = hubspot.record(events)
    queue_crm_events(current_app.extensions["switchboard"], new)
    log.info("webhook.accepted provider=hubspot events=%s new=%s", len(events), len(new))
    return "", 204


@bp.post("/<provider>/<stream>")
def receive(provider: str, stream: str) -> Response:
    """Accept one provider webhook."""
    module = PROVIDERS.get(provider)
    if module is None or stream not in module.STREAMS:
        return jsonify({"error": "unknown webhook"}), 404  # type: ignore[return-value]
    tenant = module.verify(request)
    event = module.parse(stream, request, tenant)
    recorded = ledger.record(tenant, event)
    settings = current_app.extensions["switchboard"]
    if recorded.changed:
        enqueue_sync(settings, recorded.interaction_id, recorded.version)
        if store.active_rules(tenant.id) is not None:
            enqueue_automation(settings, recorded.interaction_id, recorded.version)
    if not recorded.duplicate and hasattr(module, "after_record"):
        module.after_record(stream, tenant, event, settings)
    log.info(
        "webhook.accepted provider=%s stream=%s tenant=%s interaction=%s duplicate=%s",
        provider,
        stream,
        tenant.id,
        recorded.interaction_id,
        recorded.duplicate,
    )
    return module.acknowledge(stream, request, tenant, event, recorded)
