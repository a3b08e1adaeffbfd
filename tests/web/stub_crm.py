"""A CRM that exists only in the test tree: registering it must be enough for routes to appear."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Request, Response, jsonify

from app.core.crm_events import CrmEventIn
from app.core.settings import Settings
from connectors import CrmProvider
from webhooks.base import Forbidden

install = Blueprint("stubcrm_install", __name__)


@install.get("/install/stubcrm")
def start() -> Response:
    """Where an admin would start the install."""
    return jsonify({"install": "stubcrm"})


class StubReceiver:
    """Change notifications: a JSON list of {account, id, type}, shared secret in a header."""

    provider = "stubcrm"

    def verify(self, request: Request, settings: Settings) -> None:
        if request.headers.get("X-Stub-Secret") != "s3cret":
            raise Forbidden("invalid secret")

    def parse(self, request: Request) -> list[CrmEventIn]:
        return [
            CrmEventIn(
                account=str(e["account"]),
                event_id=str(e["id"]),
                event_type=e["type"],
                object_type="contact",
                object_id="1",
                property_name=None,
                property_value=None,
                occurred_at=datetime.now(UTC),
                payload=e,
            )
            for e in request.get_json()
        ]

    def reply(self, request: Request, events: list[CrmEventIn], new: list[int]) -> Response:
        return jsonify({"stored": len(new)})

    def trigger_kind(self, event_type: str, property_name: str | None) -> str | None:
        return "contact.created" if event_type == "contact.creation" else None


RECEIVER = StubReceiver()

PROVIDER = CrmProvider(
    name="stubcrm",
    label="Stub CRM",
    connector="connectors.local:LocalConnector",
    blueprints=("tests.web.stub_crm:install",),
    receiver="tests.web.stub_crm:RECEIVER",
)
