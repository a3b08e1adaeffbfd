"""The dialer page and its sign-in over HTTP: CSP frame-ancestors, the Open CTI script's origin, one-time
login links (single use, 15 minutes, no account enumeration, no token in logs), mail through SMTP."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.core import db
from app.core.models import Tenant, User
from app.web import create_app, logins
from tests.browser import mailsink
from tests.browser.mailsink import MailSink
from tests.conftest import PUBLIC_BASE

HUBSPOT = "https://app.hubspot.com https://app-eu1.hubspot.com"
SALESFORCE = "https://*.lightning.force.com https://*.my.salesforce.com"


def csp(response: Any) -> dict[str, str]:
    parts = [p.strip() for p in response.headers["Content-Security-Policy"].split(";")]
    return {p.split(" ", 1)[0]: p.split(" ", 1)[1] if " " in p else "" for p in parts}


def page_config(response: Any) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="dialer-config">(.*?)</script>', response.text)
    assert found, response.text
    return json.loads(found.group(1))


def login_keys(redis_conn: Any) -> list[bytes]:
    return list(redis_conn.scan_iter(match="switchboard:dialer-login:*"))


def sign_in(client: Any, tenant: Tenant, email: str = "avery@acme.example") -> str:
    """Follow a one-time link as the rep; return the session token the page was handed."""
    with db.transaction() as s:
        user_id = s.scalar(select(User.id).where(User.tenant_id == tenant.id, User.email == email))
    link = logins.create_link(client.application.extensions["switchboard"], tenant.id, user_id)
    response = client.get(link.removeprefix(PUBLIC_BASE))
    assert response.status_code == 200
    found = re.search(r'id="login-config">(.*?)</script>', response.text)
    assert found
    return json.loads(found.group(1))["session"]


@pytest.mark.parametrize(
    ("crm", "ancestors"), [("hubspot", HUBSPOT), ("salesforce", SALESFORCE), ("none", "")]
)
def test_before_login_the_page_may_be_framed_by_the_crm_it_names(client, crm, ancestors):
    response = client.get(f"/dialer?crm={crm}")
    assert response.status_code == 200
    policy = csp(response)
    assert policy["frame-ancestors"] == f"'self' {ancestors}".strip()
    assert policy["script-src"] == "'self'"  # no inline script, no CDN
    assert policy["connect-src"] == "'self'"
    assert response.headers["Cache-Control"] == "no-store"
    assert "X-Frame-Options" not in response.headers  # it would forbid the CRM's iframe
    config = page_config(response)
    assert config == {"crm": crm, "api": "/api/v1", "login": "/dialer/login", "csrf": None, "opencti": None}
    sdk = "/static/vendor/calling-extensions-sdk-0.9.7/main.js"
    assert (sdk in response.text) is (crm == "hubspot")
    for path in (sdk, "/static/dialer/dialer.js", "/static/dialer/crm.js", "/static/dialer/dialer.css"):
        with client.get(path) as static:
            assert static.status_code == 200


SDK_DIR = Path(__file__).resolve().parents[2] / "app/web/static/vendor/calling-extensions-sdk-0.9.7"


def test_the_vendored_hubspot_sdk_is_the_pinned_npm_file_with_its_licence(client):
    # SHA256SUMS pins the files `npm pack @hubspot/calling-extensions-sdk@0.9.7` gave (SOURCE.txt): an
    # edited or swapped copy fails here, not in a rep's browser.
    for line in (SDK_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((SDK_DIR / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (SDK_DIR / "LICENSE").read_text()
    page = client.get("/dialer?crm=hubspot").text
    src = "/static/vendor/calling-extensions-sdk-0.9.7/main.js"
    assert f'<script src="{src}"></script>' in page
    with client.get(src) as served:  # a static file's response holds the file open until closed
        assert served.status_code == 200 and served.data == (SDK_DIR / "main.js").read_bytes()


def test_an_unknown_crm_is_400(client):
    response = client.get("/dialer?crm=zoho")
    assert response.status_code == 400
    assert "crm" in response.get_json()["error"]


def test_open_cti_loads_only_from_the_salesforce_origin_salesforce_gave(client):
    good = client.get(
        "/dialer?crm=salesforce&mode=Lightning&sfdcIframeOrigin=https://acme.lightning.force.com"
    )
    script = "https://acme.lightning.force.com/support/api/62.0/lightning/opencti_min.js"
    assert page_config(good)["opencti"] == script
    assert f'<script src="{script}">' in good.text
    assert csp(good)["script-src"] == "'self' https://acme.lightning.force.com"
    for origin in (
        "https://evil.example",
        "https://acme.lightning.force.com.evil.example",
        "http://x.my.salesforce.com",
    ):
        bad = client.get("/dialer", query_string={"crm": "salesforce", "sfdcIframeOrigin": origin})
        assert page_config(bad)["opencti"] is None
        assert csp(bad)["script-src"] == "'self'"


def test_the_open_cti_script_url_can_be_configured(settings, app):
    configured = create_app(settings.with_(salesforce_opencti_url="https://cti.example.net/opencti_min.js"))
    response = configured.test_client().get("/dialer?crm=salesforce")
    assert page_config(response)["opencti"] == "https://cti.example.net/opencti_min.js"
    assert csp(response)["script-src"] == "'self' https://cti.example.net"


def test_once_the_rep_is_known_only_their_crms_hosts_may_frame_the_page(client, tenant):
    with db.transaction() as s:
        s.get(Tenant, tenant.id).crm = "hubspot"
    sign_in(client, tenant)  # sets the sb_rep cookie
    response = client.get("/dialer?crm=salesforce")
    assert csp(response)["frame-ancestors"] == f"'self' {HUBSPOT}"
    assert page_config(response)["csrf"]  # the cookie's CSRF nonce, for X-CSRF-Token


def test_a_rep_on_the_built_in_crm_is_framed_by_nobody_else(client, tenant):
    sign_in(client, tenant)
    assert csp(client.get("/dialer?crm=hubspot"))["frame-ancestors"] == "'self'"


def test_extra_frame_ancestors_can_be_configured(settings, app):
    configured = create_app(settings.with_(dialer_frame_ancestors=("https://crm.example.org",)))
    response = configured.test_client().get("/dialer?crm=none")
    assert csp(response)["frame-ancestors"] == "'self' https://crm.example.org"


def test_a_link_signs_in_once(client, tenant, redis_conn):
    with db.transaction() as s:
        user_id = s.scalar(select(User.id).where(User.email == "avery@acme.example"))
    link = logins.create_link(client.application.extensions["switchboard"], tenant.id, user_id, "hubspot")
    assert link.startswith(f"{PUBLIC_BASE}/dialer/login/")
    (key,) = login_keys(redis_conn)
    assert 890 < redis_conn.ttl(key) <= 900  # 15 minutes
    assert link.rsplit("/", 1)[1].encode() not in key  # Redis holds the nonce's hash, not the nonce

    first = client.get(link.removeprefix(PUBLIC_BASE))
    assert first.status_code == 200
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith("sb_rep=") and "HttpOnly" in cookie and "SameSite=None" in cookie
    assert "Secure" in cookie
    handed = json.loads(re.search(r'id="login-config">(.*?)</script>', first.text).group(1))
    assert handed["next"] == "/dialer?crm=hubspot"
    assert handed["session"] == cookie.split(";")[0].removeprefix("sb_rep=")
    assert first.headers["Cache-Control"] == "no-store"
    assert first.headers["Referrer-Policy"] == "no-referrer"
    assert login_keys(redis_conn) == []

    again = client.get(link.removeprefix(PUBLIC_BASE))
    assert again.status_code == 410
    assert "expired" in again.text
    assert "Set-Cookie" not in again.headers


@pytest.mark.parametrize("token", ["not-a-token", "x" * 300])
def test_an_unknown_link_is_410(client, tenant, token):
    response = client.get(f"/dialer/login/{token}")
    assert response.status_code == 410
    assert "Set-Cookie" not in response.headers


def test_a_link_for_a_deleted_user_signs_nobody_in(client, tenant):
    with db.transaction() as s:
        user = s.scalar(select(User).where(User.email == "casey@acme.example"))
        user_id = user.id
    link = logins.create_link(client.application.extensions["switchboard"], tenant.id, user_id)
    with db.transaction() as s:
        s.delete(s.get(User, user_id))
    assert client.get(link.removeprefix(PUBLIC_BASE)).status_code == 410


def test_login_answers_202_for_known_and_unknown_addresses_and_logs_no_token(
    client, tenant, redis_conn, caplog
):
    caplog.set_level(logging.INFO, logger="app.web.logins")
    unknown = client.post("/dialer/login", json={"email": "nobody@acme.example"})
    assert unknown.status_code == 202
    assert login_keys(redis_conn) == []
    known = client.post("/dialer/login", json={"email": " Avery@ACME.example "})
    assert known.status_code == 202
    # nothing tells them apart: the same text, a fresh wait secret and code each time
    assert known.get_json().keys() == unknown.get_json().keys() == {"status", "wait", "code"}
    assert known.get_json()["status"] == unknown.get_json()["status"]
    assert known.get_json()["wait"] != unknown.get_json()["wait"]
    assert len(login_keys(redis_conn)) == 1
    assert "link_made" in caplog.text
    assert "/dialer/login/" not in caplog.text


def test_login_form_posts_work_too(client, tenant, redis_conn):
    assert client.post("/dialer/login", data={"email": "sam@acme.example"}).status_code == 202
    assert len(login_keys(redis_conn)) == 1


@pytest.mark.parametrize(
    "body", [{}, {"email": ""}, {"email": "no-at-sign"}, {"email": "a@b\x00c"}, {"email": "a@b\r\nBcc: x@y"}]
)
def test_login_needs_an_email(client, tenant, body):
    response = client.post("/dialer/login", json=body)
    assert response.status_code == 400
    assert response.get_json()["field"] == "email"


def test_login_links_per_address_are_capped(client, tenant, redis_conn):
    for _ in range(logins.MAX_LINKS_PER_EMAIL + 3):
        assert client.post("/dialer/login", json={"email": "sam@acme.example"}).status_code == 202
    assert len(login_keys(redis_conn)) == logins.MAX_LINKS_PER_EMAIL


@pytest.fixture
def smtp_server() -> Iterator[MailSink]:
    with mailsink.serve() as sink:
        yield sink


def test_the_link_is_mailed_through_smtp(settings, app, tenant, smtp_server, redis_conn):
    mailing = create_app(settings.with_(smtp_url=smtp_server.url, mail_from="dialer@acme.example"))
    client = mailing.test_client()
    asked = client.post("/dialer/login", json={"email": "avery@acme.example"})
    assert asked.status_code == 202
    (message,) = smtp_server.wait()
    assert (message["To"], message["From"]) == ("avery@acme.example", "dialer@acme.example")
    text = message.get_content()
    assert f"code {asked.get_json()['code']}" in text
    link = re.search(r"https://switchboard\.example\.com/dialer/login/\S+", text).group(0)
    assert client.get(link.removeprefix(PUBLIC_BASE)).status_code == 200


def test_the_page_that_asked_gets_the_session_once_the_link_is_used(client, tenant, redis_conn):
    asked = client.post("/dialer/login", json={"email": "avery@acme.example"}).get_json()
    assert len(asked["code"]) == 4 and asked["code"].isdigit()
    assert client.post("/dialer/login/wait", json={"wait": asked["wait"]}).status_code == 202  # not yet
    # The rep opens the mailed link in another tab (the link's nonce as Redis knows it: here, made anew
    # with the same wait secret, since the mail was only logged).
    with db.transaction() as s:
        user_id = s.scalar(select(User.id).where(User.email == "avery@acme.example"))
    link = logins.create_link(
        client.application.extensions["switchboard"],
        tenant.id,
        user_id,
        "hubspot",
        asked["wait"],
        asked["code"],
    )
    landing = client.get(link.removeprefix(PUBLIC_BASE))
    assert landing.status_code == 200
    assert f'<strong id="login-code">{asked["code"]}</strong>' in landing.text
    handed = client.post("/dialer/login/wait", json={"wait": asked["wait"]})
    assert handed.status_code == 200
    session = handed.get_json()["session"]
    me = client.get("/api/v1/rep/me", headers={"Authorization": f"Rep {session}"})
    assert me.get_json()["user"]["email"] == "avery@acme.example"
    assert client.post("/dialer/login/wait", json={"wait": asked["wait"]}).status_code == 202  # once
    assert list(redis_conn.scan_iter(match="switchboard:dialer-login-wait:*")) == []


def test_an_unknown_addresses_wait_never_ends(client, tenant):
    asked = client.post("/dialer/login", json={"email": "nobody@acme.example"}).get_json()
    assert client.post("/dialer/login/wait", json={"wait": asked["wait"]}).status_code == 202


@pytest.mark.parametrize("body", [{}, {"wait": ""}, {"wait": 7}, {"wait": "w" * 101}])
def test_waiting_needs_the_wait_secret(client, tenant, body):
    response = client.post("/dialer/login/wait", json=body)
    assert response.status_code == 400
    assert response.get_json()["field"] == "wait"


def test_without_redis_sign_in_is_503_not_500(settings, app, tenant):
    down = create_app(settings.with_(redis_url="redis://127.0.0.1:9/0")).test_client()
    asked = down.post("/dialer/login", json={"email": "avery@acme.example"})
    assert asked.status_code == 503
    used = down.get("/dialer/login/some-token")
    assert used.status_code == 503
    assert "unavailable" in used.text
