"""The webhook views: one flow for every channel provider and one for every CRM's change notifications.

Channels (webhooks/<provider>.py, a Receiver): verify -> parse (pure) -> plan the call (who rings, from our
own data) -> record (the event, its interaction and any consent change in one transaction, committed
before we answer) -> enqueue (sync, automations, opt-out mirror; Redis down still answers 2xx and the
sweeper catches up) -> reply. CRMs (connectors/<crm>, a CrmEventReceiver): verify -> parse -> store each
notification once -> enqueue the automations -> reply. Nothing here talks to a CRM.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Request, Response, current_app, jsonify, request

import connectors
import webhooks
from app.automation import store
from app.core import crm_events, ledger, queue
from app.core.settings import Settings
from app.web import routing
from webhooks.base import CrmEventReceiver, Receiver, WebhookError

log = logging.getLogger(__name__)


def _settings() -> Settings:
    return current_app.extensions["switchboard"]  # type: ignore[no-any-return]


def blueprint() -> Blueprint:
    """A blueprint with a route per registered channel stream and per CRM with a receiver."""
    bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
    bp.register_error_handler(WebhookError, _refused)
    for name, receiver in webhooks.receivers().items():
        for stream in receiver.streams:
            view = _channel_view(receiver, stream)
            bp.add_url_rule(f"/{name}/{stream}", f"{name}_{stream}", view, methods=["POST"])
            if receiver.token_in_path:
                bp.add_url_rule(f"/{name}/{stream}/<token>", f"{name}_{stream}_token", view, methods=["POST"])
    for spec in connectors.providers():
        if spec.receiver:
            crm_receiver: CrmEventReceiver = connectors.load(spec.receiver)
            bp.add_url_rule(f"/{spec.name}", f"crm_{spec.name}", _crm_view(crm_receiver), methods=["POST"])
    return bp


def _refused(exc: WebhookError) -> tuple[Response, int]:
    log.info("webhook.rejected status=%s reason=%s field=%s", exc.status, exc.message, exc.field)
    return jsonify(exc.body()), exc.status


def _channel_view(receiver: Receiver, stream: str) -> Callable[..., Response]:
    def view(**_path: str) -> Response:  # an email route token in the path is read by the receiver
        return receive(receiver, stream, request)

    return view


def receive(receiver: Receiver, stream: str, request: Request) -> Response:
    """Accept one channel webhook. `request` is Flask's (the view) or one app.web.fastpath built for the
    same environ; either way an app context is pushed (settings, PUBLIC_BASE_URL)."""
    settings = _settings()
    tenant = receiver.verify(request)
    # Every event is parsed before any is recorded, so a malformed batch (SendGrid's Event Webhook posts
    # many events at once) stores nothing.
    events = receiver.parse_batch(stream, request, tenant)
    for event in events:
        caller = receiver.caller(stream, event)
        if caller is not None:
            event = receiver.plan(event, routing.pick_user(tenant, caller))
        recorded = ledger.record(tenant, event)
        if recorded.changed:
            queue.enqueue_sync(settings, recorded.interaction_id, recorded.version, tenant.id)
            if store.active_rules(tenant.id) is not None:
                queue.enqueue_automation(settings, recorded.interaction_id, recorded.version)
        if recorded.consent_changed and event.consent is not None:
            queue.try_enqueue(settings, "opt_out", tenant.id, event.consent.phone)
        log.info(
            "webhook.accepted provider=%s stream=%s tenant=%s interaction=%s duplicate=%s",
            receiver.provider,
            stream,
            tenant.id,
            recorded.interaction_id,
            recorded.duplicate,
        )
    return receiver.reply(stream, request, tenant, event, recorded)


def _crm_view(receiver: CrmEventReceiver) -> Callable[[], Response]:
    def view() -> Response:
        settings = _settings()
        receiver.verify(request, settings)
        events = receiver.parse(request)
        new = crm_events.record(receiver.provider, events)
        queue.queue_crm_events(settings, new)
        log.info("webhook.accepted provider=%s events=%s new=%s", receiver.provider, len(events), len(new))
        return receiver.reply(request, events, new)

    return view
