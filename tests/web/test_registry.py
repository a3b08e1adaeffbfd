"""The registries drive the web app: a CRM added in the test tree gets its routes without editing any file,
and CRM change notifications go through the generic receiver view (stored once, tenant by account)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import connectors
from app.core import db
from app.core.models import CrmEvent, Tenant
from app.web import create_app
from tests.conftest import count


@pytest.fixture
def stub_registered() -> Iterator[None]:
    connectors.register("stubcrm", "tests.web.stub_crm:PROVIDER")
    try:
        yield
    finally:
        connectors.REGISTRY.pop("stubcrm", None)


def _routes(app: Any) -> set[str]:
    return {rule.rule for rule in app.url_map.iter_rules()}


def test_routes_come_from_the_registries(app: Any) -> None:
    routes = _routes(app)
    for stream in ("voice", "call-status", "recording", "transcription", "sms", "sms-status"):
        assert f"/webhooks/twilio/{stream}" in routes
    assert {"/webhooks/hubspot", "/install/hubspot", "/oauth/hubspot/callback"} <= routes
    assert "/webhooks/stubcrm" not in routes


def test_a_crm_registered_from_the_test_tree_gets_its_routes(stub_registered: None, settings: Any) -> None:
    assert "stubcrm" in connectors.names()
    app = create_app(settings)
    assert {"/install/stubcrm", "/webhooks/stubcrm"} <= _routes(app)
    assert app.test_client().get("/install/stubcrm").get_json() == {"install": "stubcrm"}


def test_a_plugin_named_in_the_environment_registers(monkeypatch: pytest.MonkeyPatch, settings: Any) -> None:
    monkeypatch.setenv("SWITCHBOARD_CRM_PLUGINS", "stubcrm=tests.web.stub_crm:PROVIDER")
    try:
        assert "/webhooks/stubcrm" in _routes(create_app(settings))
    finally:
        connectors.REGISTRY.pop("stubcrm", None)


def test_crm_notifications_are_stored_once_for_the_account_s_tenant(
    stub_registered: None, settings: Any, app: Any
) -> None:
    with db.transaction() as s:
        s.add(Tenant(name="stubbed", crm="stubcrm", crm_account_id="42", region="US", settings={}))
    client = create_app(settings).test_client()
    batch = [{"account": 42, "id": 1, "type": "contact.creation"}, {"account": 7, "id": 2, "type": "x"}]
    assert client.post("/webhooks/stubcrm", json=batch).status_code == 403  # no secret: nothing stored
    assert count(CrmEvent) == 0
    first = client.post("/webhooks/stubcrm", json=batch, headers={"X-Stub-Secret": "s3cret"})
    again = client.post("/webhooks/stubcrm", json=batch, headers={"X-Stub-Secret": "s3cret"})
    assert first.get_json() == {"stored": 1}  # account 7 is nobody's
    assert again.get_json() == {"stored": 0}
    assert count(CrmEvent) == 1


def test_unknown_crm_is_a_clear_lookup_error() -> None:
    with pytest.raises(LookupError, match="unknown CRM 'nope'"):
        connectors.provider("nope")
