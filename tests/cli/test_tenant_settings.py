"""`switchboard tenant set|get`: the core's settings and those each CRM declares (CrmProvider.settings), with
one-line refusals (exit 2) that change nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

import connectors
from app.cli import main
from app.core import db
from app.core.models import Tenant
from tests.conftest import make_tenant

SID = "AC" + "d" * 32


def invoke(app: Any, *args: str) -> Any:
    return app.test_cli_runner().invoke(main, args=list(args))


def stored(name: str) -> dict[str, Any]:
    with db.transaction() as s:
        return dict(s.scalar(select(Tenant.settings).where(Tenant.name == name)) or {})


def refused(result: Any, *words: str) -> None:
    """Exit 2 and one line naming what was wrong, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert all(w in lines[0] for w in words), lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def sf_tenant(app: Any) -> str:
    make_tenant("acme", SID, "e" * 32, crm="salesforce")
    return "acme"


def test_salesforce_keys_through_tenant_set(app, sf_tenant):
    for key, value, expect in [
        ("salesforce_match_prefer", "Lead", "Lead"),
        ("salesforce_create_as", "Contact", "Contact"),
        ("salesforce_api_share", "0.3", 0.3),
        ("salesforce_api_share", "1", 1.0),
        ("salesforce_poll", "off", "off"),
        ("salesforce_poll_seconds", "300", 300),
        ("ring_timeout", "25", 25),
    ]:
        ok = invoke(app, "tenant", "set", sf_tenant, key, value)
        assert ok.exit_code == 0, ok.output
        assert ok.output.strip() == f"{key} = {json.dumps(expect)}"
    assert stored(sf_tenant) == {
        "salesforce_match_prefer": "Lead",
        "salesforce_create_as": "Contact",
        "salesforce_api_share": 1.0,
        "salesforce_poll": "off",
        "salesforce_poll_seconds": 300,
        "ring_timeout": 25,
    }


def test_bad_keys_and_values_are_one_line_exit_2_and_change_nothing(app, sf_tenant):
    refused(invoke(app, "tenant", "set", sf_tenant, "salesforce_create_as", "Account"), "Lead, Contact")
    refused(invoke(app, "tenant", "set", sf_tenant, "salesforce_api_share", "0"), "above 0 and at most 1")
    refused(invoke(app, "tenant", "set", sf_tenant, "salesforce_api_share", "1.5"), "salesforce_api_share")
    refused(invoke(app, "tenant", "set", sf_tenant, "salesforce_api_share", "half"), "above 0")
    refused(invoke(app, "tenant", "set", sf_tenant, "salesforce_api_share", "true"), "above 0")
    refused(invoke(app, "tenant", "set", sf_tenant, "salesforce_poll_seconds", "5"), "30 to 86400")
    refused(invoke(app, "tenant", "set", sf_tenant, "salesforce_poll_seconds", "60.5"), "whole seconds")
    refused(invoke(app, "tenant", "set", sf_tenant, "no_such_key", "1"), "no_such_key", "salesforce_poll")
    refused(invoke(app, "tenant", "set", sf_tenant, "ring_timeout", "soon"), "ring_timeout takes a int")
    refused(invoke(app, "tenant", "set", sf_tenant, "unknown_contacts", "maybe"), "create, skip")
    # another CRM's setting: named as such
    refused(invoke(app, "tenant", "set", sf_tenant, "hubspot_requests_per_10s", "190"), "HubSpot setting")
    refused(invoke(app, "tenant", "get", sf_tenant, "no_such_key"), "no_such_key")
    assert stored(sf_tenant) == {}


def test_hubspot_keys_are_declared_by_hubspot(app):
    make_tenant("portal", SID, "e" * 32, crm="hubspot")
    ok = invoke(app, "tenant", "set", "portal", "hubspot_requests_per_10s", "190")
    assert ok.exit_code == 0, ok.output
    refused(invoke(app, "tenant", "set", "portal", "hubspot_searches_per_second", "0"), "above 0")
    refused(invoke(app, "tenant", "set", "portal", "salesforce_poll", "on"), "Salesforce setting", "hubspot")
    assert stored("portal") == {"hubspot_requests_per_10s": 190}
    with db.transaction() as s:
        row = s.scalar(select(Tenant).where(Tenant.name == "portal"))
        values = connectors.tenant_settings(row)
    assert values["hubspot_requests_per_10s"] == 190 and values["hubspot_searches_per_second"] == 4
    assert "salesforce_poll" not in values


def test_tenant_get_lists_defaults_and_help(app, sf_tenant):
    invoke(app, "tenant", "set", sf_tenant, "salesforce_poll_seconds", "120")
    listing = invoke(app, "tenant", "get", sf_tenant)
    assert listing.exit_code == 0, listing.output
    lines = dict(line.split(" = ", 1) for line in listing.output.strip().splitlines())
    assert lines["ring_timeout"] == "20"
    assert lines["salesforce_poll_seconds"].startswith("120\t# seconds between two polls")
    assert lines["salesforce_match_prefer"].startswith('"Contact"\t# which wins')
    one = invoke(app, "tenant", "get", sf_tenant, "salesforce_api_share")
    assert one.exit_code == 0 and one.output.strip() == "salesforce_api_share = 0.5"


def test_salesforce_set_delegates(app, sf_tenant):
    ok = invoke(app, "salesforce", "set", sf_tenant, "salesforce_api_share", "0.25")
    assert ok.exit_code == 0 and ok.output.strip() == "salesforce_api_share = 0.25"
    refused(invoke(app, "salesforce", "set", sf_tenant, "ring_timeout", "30"), "not a Salesforce setting")
    bad = invoke(app, "salesforce", "set", sf_tenant, "salesforce_match_prefer", "Account")
    refused(bad, "Contact, Lead")
    assert stored(sf_tenant) == {"salesforce_api_share": 0.25}


@pytest.fixture
def stub_crm() -> Any:
    connectors.register("stubcrm", "tests.cli.stub_crm:PROVIDER")
    yield "stubcrm"
    connectors.REGISTRY.pop("stubcrm", None)


def test_a_crm_registered_at_runtime_brings_its_settings(app, stub_crm):
    make_tenant("stubby", SID, "e" * 32, crm="stubcrm")
    assert invoke(app, "tenant", "set", "stubby", "stub_level", "5").exit_code == 0
    refused(invoke(app, "tenant", "set", "stubby", "stub_level", "9"), "from 1 to 5")
    assert stored("stubby") == {"stub_level": 5}
    assert "stub_level = 5\t# how stubby" in invoke(app, "tenant", "get", "stubby").output


def test_a_tenant_whose_crm_is_gone_still_has_the_core_s_settings(app, stub_crm):
    make_tenant("orphan", SID, "e" * 32, crm="stubcrm")
    connectors.REGISTRY.pop("stubcrm")
    assert invoke(app, "tenant", "set", "orphan", "ring_timeout", "30").exit_code == 0
    refused(invoke(app, "tenant", "set", "orphan", "stub_level", "2"), "not a setting of orphan")
    assert "ring_timeout = 30" in invoke(app, "tenant", "get", "orphan").output
