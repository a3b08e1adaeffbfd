"""Connecting an org: OAuth web server flow with PKCE, against the emulator's authorize and token pages."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import requests
from sqlalchemy import select

from app.core import db
from app.core.models import Tenant
from tests.conftest import PUBLIC_BASE
from tests.connectors.salesforce.test_connector import CALLBACK, CLIENT_ID, Org, org, sf_emulator  # noqa: F401


def authorize(org) -> str:  # noqa: F811
    """GET /install/salesforce, then the authorize page: the callback URL the admin is sent back to."""
    client = org.app.test_client()
    r = client.get("/install/salesforce", base_url=PUBLIC_BASE)
    assert r.status_code == 302
    target = urlsplit(r.headers["Location"])
    query = parse_qs(target.query)
    assert target.path == "/services/oauth2/authorize" and query["code_challenge_method"] == ["S256"]
    assert query["scope"] == ["api refresh_token"] and query["redirect_uri"] == [CALLBACK]
    back = requests.get(r.headers["Location"], allow_redirects=False, timeout=5)
    assert back.status_code == 302
    return back.headers["Location"]


def test_install_creates_the_org_s_tenant_with_encrypted_tokens(org, run_worker):  # noqa: F811
    other = org.emu.create_org()
    org.emu.approve_org = other["org_id"]
    location = authorize(org)
    r = org.app.test_client().get(
        urlsplit(location).path + "?" + urlsplit(location).query, base_url=PUBLIC_BASE
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["installed"] and r.json["created"] and r.json["org_id"] == other["org_id"]
    with db.transaction() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.crm_account_id == other["org_id"]))
        secrets = json.loads(tenant.crm_secrets)
    assert (
        secrets["type"] == "oauth"
        and secrets["refresh_token"]
        and secrets["instance_url"] == org.emu.base_url
    )
    run_worker()  # the setup job: the org already has Switchboard_Id__c, nothing to create


def test_replayed_or_tampered_state_is_refused(org):  # noqa: F811
    location = authorize(org)
    path = urlsplit(location).path + "?" + urlsplit(location).query
    client = org.app.test_client()
    assert client.get(path, base_url=PUBLIC_BASE).status_code == 200
    again = client.get(path, base_url=PUBLIC_BASE)
    assert again.status_code == 400 and again.json["error"] == "state already used"
    bad = client.get("/oauth/salesforce/callback?code=x&state=forged", base_url=PUBLIC_BASE)
    assert bad.status_code == 400 and bad.json["error"] == "invalid or expired state"


def test_a_code_salesforce_refuses_stores_nothing(org):  # noqa: F811
    location = authorize(org)
    query = parse_qs(urlsplit(location).query)
    client = org.app.test_client()
    r = client.get(
        f"/oauth/salesforce/callback?code=not-a-code&state={query['state'][0]}", base_url=PUBLIC_BASE
    )
    assert r.status_code == 400 and r.json["error"] == "Salesforce refused the authorization code"
    with db.transaction() as s:
        assert len(list(s.scalars(select(Tenant)))) == 1


def test_installing_the_org_again_reconnects_its_tenant(org):  # noqa: F811
    # The tenant is keyed by the org id: a second install (after a revoked refresh token) replaces the tokens
    # and clears needs_reinstall, and never makes a second tenant.
    from sqlalchemy import text

    def install() -> dict:
        location = authorize(org)
        path = urlsplit(location).path + "?" + urlsplit(location).query
        r = org.app.test_client().get(path, base_url=PUBLIC_BASE)
        assert r.status_code == 200, r.get_data(as_text=True)
        return r.json

    other = org.emu.create_org()
    org.emu.approve_org = other["org_id"]
    first = install()
    with db.transaction() as s:
        s.get(Tenant, first["tenant_id"]).crm_status = "needs_reinstall"
    second = install()
    assert (second["created"], second["tenant_id"]) == (False, first["tenant_id"])
    with db.transaction() as s:
        [tenant] = s.scalars(select(Tenant).where(Tenant.crm_account_id == other["org_id"]))
        secrets = json.loads(tenant.crm_secrets)
        raw = s.execute(text("SELECT crm_secrets FROM tenants WHERE id = :i"), {"i": tenant.id}).scalar()
    assert tenant.crm_status == "ok"
    assert secrets["refresh_token"] not in raw and secrets["access_token"] not in raw  # encrypted at rest


def test_an_admin_who_denies_access_gets_400_and_nothing_is_stored(org):  # noqa: F811
    location = authorize(org)
    state = parse_qs(urlsplit(location).query)["state"][0]
    client = org.app.test_client()
    denied = client.get(
        f"/oauth/salesforce/callback?error=access_denied&error_description=end-user+denied&state={state}",
        base_url=PUBLIC_BASE,
    )
    assert denied.status_code == 400 and "access_denied" in denied.json["error"]
    missing = client.get("/oauth/salesforce/callback?state=" + state, base_url=PUBLIC_BASE)
    assert missing.status_code == 400 and missing.json["error"] == "missing code or state"
    with db.transaction() as s:
        assert len(list(s.scalars(select(Tenant)))) == 1  # the fixture's tenant only
