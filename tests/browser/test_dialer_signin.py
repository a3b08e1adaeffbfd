"""The dialer in headless chromium, before any call: the HubSpot handshake through the SDK's own
IFrameManager, the sign-in form, sending a login link, and the CSP keeping unknown sites from framing it."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.browser.conftest import CrmHost, Served


def host_url(crm_host: CrmHost, name: str, src: str) -> str:
    return f"{crm_host.base_url}/{name}.html?src={quote(src, safe='')}"


def widget(page: Any) -> Any:
    frame = page.frame_locator("#hubspot-calling-extension-iframe")
    return frame


def test_signed_out_the_widget_syncs_with_hubspot_and_shows_the_sign_in_form(page, served: Served, crm_host):
    page.goto(host_url(crm_host, "hubspot", f"{served.base}/dialer?crm=hubspot"))
    page.wait_for_function("window.types().includes('LOGGED_OUT')", polling=100)
    types = page.evaluate("window.types()")
    assert types[:2] == ["READY", "INITIALIZED"]  # SYNC / SYNC_ACK, then the widget's initialized()
    initialized = page.evaluate("window.received[1].data")
    assert initialized["isLoggedIn"] is False
    frame = widget(page)
    frame.locator("#login").wait_for(state="visible")
    assert frame.locator("#app").is_hidden()


def test_the_sign_in_form_asks_for_a_link(page, served: Served, crm_host, tenant, redis_conn):
    page.goto(f"{served.base}/dialer?crm=none")
    page.fill("#login-email", "avery@acme.example")
    with page.expect_response(lambda r: r.url.endswith("/dialer/login")) as answer:
        page.click("#login-form button[type=submit]")
    assert answer.value.status == 202
    page.locator("#login-sent").wait_for(state="visible")
    assert len(list(redis_conn.scan_iter(match="switchboard:dialer-login:*"))) == 1


def test_a_site_not_allowed_cannot_frame_the_dialer(page, served: Served, crm_host):
    # The CRM host is allowed (DIALER_FRAME_ANCESTORS); the same page from another origin is not.
    blocked = []
    page.on("console", lambda m: blocked.append(m.text) if "frame-ancestors" in m.text else None)
    other = Served(served.settings, crm_host, dialer_frame_ancestors=())
    try:
        page.goto(host_url(crm_host, "hubspot", f"{other.base}/dialer?crm=hubspot"))
        page.wait_for_timeout(1500)
        assert "READY" not in page.evaluate("window.types()")  # the SDK never synced: no dialer loaded
    finally:
        other.close()
    assert blocked, "chromium did not report the frame-ancestors refusal"
