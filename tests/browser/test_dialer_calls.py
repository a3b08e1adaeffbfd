"""A rep's calls in headless chromium, end to end over real HTTP: the CRM asks to dial -> our API places the
bridged call (the Twilio emulator rings the rep, bridges the customer and posts signed callbacks to our
webhooks) -> the page shows each state -> the rep saves the disposition -> it reaches the CRM record.

HubSpot: the stand-in host is the SDK's own IFrameManager; HubSpot's engagement (CREATE_ENGAGEMENT_SUCCEEDED)
is the one record the worker updates. Salesforce: a recording stand-in for window.sforce.opencti. Each state
is photographed into DIALER_SCREENSHOTS (docs/img regenerates the docs' pictures), else a temporary folder.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hubspot import HubSpot
from sqlalchemy import select

from app.core import db
from app.core.models import Tenant, User
from app.web import logins
from connectors.hubspot.auth import private_app_secrets
from connectors.hubspot.connector import HubSpotConnector
from connectors.salesforce.auth import session_secrets
from emulators.hubspot import HubSpotEmulator
from tests.browser import mailsink
from tests.browser.conftest import CrmHost, Served
from tests.conftest import make_tenant
from tests.signing import FIXTURE_ACCOUNT, FIXTURE_TOKEN, TwilioPoster, fixture_params

JORDAN = "+15555550123"
CONNECTED = "f240bbac-87c9-4f6e-bf70-924b57d47db7"  # HubSpot's standard "Connected" outcome
RECORD = "003000000000001AAA"  # Jordan's Contact in the stand-in Salesforce org


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DIALER_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def link_for(served: Served, tenant_id: int, email: str, crm: str) -> str:
    """A one-time sign-in link, opened at the dialer's browser address (localhost)."""
    with db.transaction() as s:
        user_id = s.scalar(select(User.id).where(User.tenant_id == tenant_id, User.email == email))
    link = logins.create_link(served.settings, tenant_id, int(user_id), crm)
    return served.base + link.removeprefix(served.settings.public_base_url)


def host_url(crm_host: CrmHost, name: str, src: str) -> str:
    return f"{crm_host.base_url}/{name}.html?src={quote(src, safe='')}"


def until(page: Any, expression: str, seen: Any = None) -> None:
    """Wait for a JS condition, polling on a timer (requestAnimationFrame stops in a hidden tab); on a
    timeout, say what the page had seen (`seen`: the responses so far, say)."""
    try:
        page.wait_for_function(expression, polling=100)
    except Exception as exc:
        raise AssertionError(f"{expression} never held; seen: {seen}") from exc


def expect_state(frame: Any, label: str) -> None:
    frame.locator("#call-state", has_text=label).wait_for()


def only_call(twilio_emu: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while not (placed := twilio_emu.calls(FIXTURE_ACCOUNT)) and time.monotonic() < deadline:
        time.sleep(0.05)
    [call] = placed
    return call  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def hubspot_emu() -> Iterator[HubSpotEmulator]:
    emu = HubSpotEmulator()
    emu.base_url = emu.start()
    yield emu
    emu.stop()


def hubspot_portal(emu: HubSpotEmulator) -> dict[str, Any]:
    """The fixture tenant on a HubSpot portal (private-app token, owners by email), Jordan a contact there."""
    emu.reset()
    info = emu.create_portal()
    owners = {
        who: emu.add_owner(info["portal_id"], email=f"{who}@acme.example", first_name=who.title())["id"]
        for who in ("avery", "sam", "casey")
    }
    tenant = make_tenant("acme", FIXTURE_ACCOUNT, FIXTURE_TOKEN, crm="hubspot")
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        row.crm_account_id = str(info["portal_id"])
        row.crm_secrets = private_app_secrets(info["token"])
        for user in s.scalars(select(User).where(User.tenant_id == row.id)):
            user.crm_owner_id = owners[user.email.split("@")[0]]
        tenant = row
    HubSpotConnector(tenant).setup()
    sdk = HubSpot(access_token=info["token"], host=emu.base_url)
    contact = sdk.crm.contacts.basic_api.create(
        simple_public_object_input_for_create={
            "properties": {"firstname": "Jordan", "lastname": "Rivera", "phone": JORDAN}
        }
    )
    return {**info, "tenant": tenant, "sdk": sdk, "contact_id": str(contact.id), "owners": owners}


def test_hubspot_click_to_call_updates_hubspots_own_engagement(
    page, serve, crm_host, hubspot_emu, twilio_emu, run_worker, shots
):
    with mailsink.serve() as mail:
        served = serve(hubspot_api_base=hubspot_emu.base_url, smtp_url=mail.url)
        portal = hubspot_portal(hubspot_emu)
        hubspot_call(page, served, crm_host, hubspot_emu, twilio_emu, run_worker, shots, portal, mail)


def sign_in_by_mail(page: Any, served: Served, mail: Any, shots: Path) -> None:
    """The rep asks for a link in the widget, opens the mail's link in another tab; the widget signs in."""
    frame = page.frame_locator("#hubspot-calling-extension-iframe")
    frame.locator("#login").wait_for()
    page.locator("#hubspot-calling-extension-iframe").screenshot(path=shots / "dialer-sign-in.png")
    frame.locator("#login-email").fill("avery@acme.example")
    frame.locator("#login-form button[type=submit]").click()
    frame.locator("#login-sent").wait_for()
    code = frame.locator("#login-code").inner_text()
    assert len(code) == 4
    (message,) = mail.wait()
    text = message.get_content()
    assert f"code {code}" in text
    link = re.search(r"http://127\.0\.0\.1:\d+/dialer/login/\S+", text).group(0)
    tab = page.context.new_page()  # the mail client opens the link in a tab of the same browser
    tab.goto(served.base + link.removeprefix(served.settings.public_base_url))
    assert tab.locator("#login-code").inner_text() == code
    tab.close()
    page.bring_to_front()


def hubspot_call(
    page: Any,
    served: Served,
    crm_host: CrmHost,
    hubspot_emu: HubSpotEmulator,
    twilio_emu: Any,
    run_worker: Any,
    shots: Path,
    portal: dict[str, Any],
    mail: Any,
) -> None:
    # What HubSpot does on createEngagement: it logs the call itself, and tells the widget the id.
    engagement = portal["sdk"].crm.objects.calls.basic_api.create(
        simple_public_object_input_for_create={
            "properties": {"hs_timestamp": "2026-12-02T10:00:00Z", "hs_call_status": "CALLING_CRM_USER"}
        }
    )
    answers: list[tuple[str, str, int]] = []
    page.on("response", lambda r: answers.append((r.request.method, r.url.split("/api/v1", 1)[-1], r.status)))
    page.goto(host_url(crm_host, "hubspot", f"{served.base}/dialer?crm=hubspot"))
    page.evaluate(f"window.ENGAGEMENT_ID = {int(engagement.id)}")
    until(page, "window.types().includes('LOGGED_OUT')")
    sign_in_by_mail(page, served, mail, shots)
    until(page, "window.types().includes('LOGGED_IN')", answers)
    widget = page.locator("#hubspot-calling-extension-iframe")
    frame = page.frame_locator("#hubspot-calling-extension-iframe")
    frame.locator("#who", has_text="Avery Reyes").wait_for()
    frame.locator("#outcome option").first.wait_for(state="attached")
    widget.screenshot(path=shots / "dialer-ready.png")

    with page.expect_response(
        lambda r: r.url.endswith("/api/v1/calls") and r.request.method == "POST"
    ) as placed:
        page.evaluate(f"window.dial('{JORDAN}', '{portal['contact_id']}')")  # a click on Jordan's number
    assert placed.value.status == 201
    call_id = placed.value.json()["id"]
    expect_state(frame, "Ringing your phone")
    until(page, "window.types().includes('OUTGOING_CALL_STARTED')")
    started = page.evaluate("window.received.find(m => m.type === 'OUTGOING_CALL_STARTED').data")
    sid = only_call(twilio_emu)["sid"]
    assert (started["toNumber"], started["externalCallId"], started["createEngagement"]) == (
        JORDAN,
        sid,
        True,
    )
    widget.screenshot(path=shots / "dialer-ringing.png")

    twilio_emu.advance_call(sid, "answered")  # the rep picks up; Twilio rings Jordan
    expect_state(frame, "Connecting")
    widget.screenshot(path=shots / "dialer-connecting.png")
    twilio_emu.advance_call(sid, "bridged")
    expect_state(frame, "Live")
    until(page, "window.types().includes('CALL_ANSWERED')")
    frame.locator("#hangup").wait_for()
    widget.screenshot(path=shots / "dialer-live.png")
    twilio_emu.advance_call(sid, "completed", talk=42)
    expect_state(frame, "Call ended")
    until(page, "window.types().includes('CALL_ENDED')")
    ended = page.evaluate("window.received.find(m => m.type === 'CALL_ENDED').data")
    assert ended == {"externalCallId": sid, "engagementId": int(engagement.id), "callEndStatus": "COMPLETED"}
    frame.locator("#disposition").wait_for()
    frame.locator("#outcome").select_option(CONNECTED)
    frame.locator("#notes").fill("Wants a demo on Friday")
    widget.screenshot(path=shots / "dialer-disposition.png")

    frame.locator("#disposition button[type=submit]").click()
    frame.locator("#disposition-saved").wait_for()
    until(page, "window.types().includes('CALL_COMPLETED')")
    completed = page.evaluate("window.received.find(m => m.type === 'CALL_COMPLETED').data")
    assert completed["engagementId"] == int(engagement.id) and completed["externalCallId"] == sid
    frame.locator("#recent li button").first.wait_for()  # the call, in recent calls
    widget.screenshot(path=shots / "dialer-saved.png")

    assert ("POST", f"/calls/{call_id}/engagement", 200) in answers  # the id handed to our API
    run_worker()
    [record] = hubspot_emu.objects(portal["portal_id"], "calls")  # HubSpot's engagement, and no other
    assert record["id"] == str(engagement.id)
    props = record["properties"]
    assert props["hs_call_disposition"] == CONNECTED
    assert "Wants a demo on Friday" in props["hs_call_body"]
    assert props["hubspot_owner_id"] == portal["owners"]["avery"]
    assert (props["hs_call_direction"], props["hs_call_duration"]) == ("OUTBOUND", "42000")

    # Jordan calls back: routing rings Avery (the default user: Jordan has no owner), whose widget pops him
    # and tells HubSpot of the call without an engagement of its own (the sync logs inbound calls).
    poster = TwilioPoster(served.app.test_client(), served.settings.public_base_url, FIXTURE_TOKEN)
    inbound = {**fixture_params("voice__incoming"), "CallSid": "CA" + "6" * 32}
    assert poster.post("/webhooks/twilio/voice", inbound).status_code == 200
    frame.locator("#pop").wait_for()
    until(page, "window.types().includes('INCOMING_CALL')")
    incoming = page.evaluate("window.received.find(m => m.type === 'INCOMING_CALL').data")
    assert (incoming["fromNumber"], incoming["createEngagement"]) == (JORDAN, False)
    record_url = f"https://app.hubspot.com/contacts/{portal['portal_id']}/record/0-1/{portal['contact_id']}"
    assert frame.locator("#pop-contact").get_attribute("href") == record_url
    widget.screenshot(path=shots / "dialer-hubspot-incoming.png")


def salesforce_tenant() -> Tenant:
    tenant = make_tenant("acme", FIXTURE_ACCOUNT, FIXTURE_TOKEN, crm="salesforce")
    with db.transaction() as s:
        row = s.get(Tenant, tenant.id)
        row.crm_secrets = session_secrets("00Dtest!token", "https://acme.my.salesforce.com")
        row.crm_account_id = "00D000000000001AAA"
        return row


def test_salesforce_click_to_dial_through_open_cti(page, served, crm_host, twilio_emu, shots):
    tenant = salesforce_tenant()
    page.goto(
        host_url(crm_host, "salesforce", link_for(served, tenant.id, "avery@acme.example", "salesforce"))
    )
    frame_el = page.locator("#softphone")
    softphone = page.frame_locator("#softphone")
    softphone.locator("#who", has_text="Avery Reyes").wait_for()
    dialer = page.frame(url=lambda u: "/dialer?" in u)
    until(dialer, "window.sforce.opencti.calls.length >= 2")
    methods = [c["method"] for c in dialer.evaluate("window.sforce.opencti.calls")]
    assert methods[:2] == ["enableClickToDial", "onClickToDial"]

    with page.expect_response(
        lambda r: r.url.endswith("/api/v1/calls") and r.request.method == "POST"
    ) as placed:
        dialer.evaluate(
            "p => window.sforce.opencti.click(p)",
            {
                "number": "(555) 555-0123",
                "recordId": RECORD,
                "recordName": "Jordan Rivera",
                "objectType": "Contact",
            },
        )
    assert placed.value.status == 201
    assert placed.value.request.post_data_json == {"to": "(555) 555-0123", "contact_id": RECORD}
    body = placed.value.json()
    assert body["contact"]["url"] == f"https://acme.my.salesforce.com/lightning/r/{RECORD}/view"
    expect_state(softphone, "Ringing your phone")
    calls = dialer.evaluate("window.sforce.opencti.calls")
    assert {"method": "setSoftphonePanelVisibility", "args": {"visible": True}} in calls
    assert "screenPop" not in [c["method"] for c in calls]  # the rep clicked from the record: already on it
    sid = only_call(twilio_emu)["sid"]
    twilio_emu.advance_call(sid, "bridged")
    expect_state(softphone, "Live")
    frame_el.screenshot(path=shots / "dialer-salesforce-live.png")

    softphone.locator("#hangup").click()  # DELETE /api/v1/calls/<id>: Twilio hangs up, callbacks follow
    assert twilio_emu.settle()
    expect_state(softphone, "Call ended")
    softphone.locator("#outcome").select_option(CONNECTED)
    softphone.locator("#notes").fill("Sent the pricing sheet")
    with page.expect_response(lambda r: r.url.endswith("/disposition")) as saved:
        softphone.locator("#disposition button[type=submit]").click()
    assert saved.value.status == 200
    assert (saved.value.json()["outcome"], saved.value.json()["notes"]) == (
        CONNECTED,
        "Sent the pricing sheet",
    )
    softphone.locator("#disposition-saved").wait_for()


def test_an_inbound_call_pops_the_caller_and_texts_go_both_ways(
    page, served, crm_host, tenant, twilio_emu, shots
):
    # Jordan (a contact of the built-in CRM, owned by Sam) calls: routing rings Sam; Sam's dialer pops him.
    page.goto(link_for(served, tenant.id, "sam@acme.example", "salesforce"))
    page.locator("#who", has_text="Sam Patel").wait_for()
    until(page, "window.sforce.opencti.calls.length >= 2")
    page.wait_for_timeout(300)  # the first events poll has its cursor
    twilio = TwilioPoster(served.app.test_client(), served.settings.public_base_url, FIXTURE_TOKEN)
    assert twilio.fixture("/webhooks/twilio/voice", "voice__incoming").status_code == 200
    page.locator("#pop").wait_for()
    assert page.locator("#pop-from").inner_text() == f"Jordan Rivera ({JORDAN})"
    link = page.locator("#pop-contact")
    assert link.get_attribute("href").startswith(f"{served.settings.public_base_url}/?contact=")
    until(page, "window.sforce.opencti.calls.some(c => c.method === 'screenPop')")
    [pop] = [c for c in page.evaluate("window.sforce.opencti.calls") if c["method"] == "screenPop"]
    assert pop["args"] == {"type": "url", "params": {"url": link.get_attribute("href")}}
    assert page.locator("#number").input_value() == JORDAN
    page.locator("#dialer").screenshot(path=shots / "dialer-incoming.png")

    page.fill("#sms-body", "On my way to the meeting, calling you back in 10")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/messages")) as sent:
        page.click("#sms-form button[type=submit]")
    assert sent.value.status == 201
    page.locator("#conversation li.out", has_text="calling you back in 10").wait_for()
    [message] = twilio_emu.messages(FIXTURE_ACCOUNT)
    assert (message["to"], message["body"]) == (JORDAN, "On my way to the meeting, calling you back in 10")
    page.locator("#dialer").screenshot(path=shots / "dialer-text.png")


def test_a_refused_number_is_shown_not_dialled(page, served, crm_host, tenant, twilio_emu):
    page.goto(link_for(served, tenant.id, "avery@acme.example", "none"))
    page.locator("#who", has_text="Avery Reyes").wait_for()
    page.fill("#number", "12")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/calls")) as placed:
        page.click("#call-button")
    assert placed.value.status == 400
    page.locator("#call-error", has_text="to").wait_for()
    assert page.locator("#call").get_attribute("data-state") == "idle"
    assert twilio_emu.calls(FIXTURE_ACCOUNT) == []


def test_a_new_tab_signs_in_by_cookie_and_sends_its_csrf_nonce(page, served, crm_host, tenant, twilio_emu):
    # Signed in through a link in one tab; a second tab has no token of its own (sessionStorage is per
    # tab), so it rides the sb_rep cookie, and its state-changing requests carry X-CSRF-Token.
    page.goto(link_for(served, tenant.id, "avery@acme.example", "none"))
    page.locator("#who", has_text="Avery Reyes").wait_for()
    tab = page.context.new_page()
    tab.goto(f"{served.base}/dialer?crm=none")
    tab.locator("#who", has_text="Avery Reyes").wait_for()
    assert tab.evaluate("window.sessionStorage.getItem('sb_rep_token')") is None
    tab.fill("#number", JORDAN)
    with tab.expect_request(lambda r: r.url.endswith("/api/v1/calls")) as sent:
        tab.click("#call-button")
    headers = sent.value.headers
    assert "authorization" not in headers
    assert headers["x-csrf-token"] == tab.evaluate("window.Dialer.config.csrf")
    assert sent.value.response().status == 201
    tab.locator("#call-state", has_text="Ringing your phone").wait_for()
    assert len(twilio_emu.calls(FIXTURE_ACCOUNT)) == 1
