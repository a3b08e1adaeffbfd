"""The Twilio contract emulator, driven by the real twilio-python SDK over real HTTP on 127.0.0.1.

No database or Redis: these tests request none of the conftest's fixtures.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest
import requests
from flask import Flask, request
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.rest.api.v2010.account.call import CallInstance
from twilio.rest.api.v2010.account.message import MessageInstance
from werkzeug.serving import make_server

from emulators.twilio import TwilioEmulator, num_segments

ACCOUNT = "AC00000000000000000000000000000001"
TOKEN = "0123456789abcdef0123456789abcdef"
NUMBER, OTHER_NUMBER = "+15555550100", "+15555550101"
CUSTOMER, AGENT = "+15555550123", "+15555550199"
SERVICE = "MG00000000000000000000000000000001"
FIXTURES = Path(__file__).parents[1] / "fixtures" / "twilio"

# Shapes of the real Twilio payloads in /work/shared/fixtures/twilio (rest__*.json), in their key order.
MESSAGE_KEYS = [
    "sid", "date_created", "date_updated", "date_sent", "account_sid", "to", "from",
    "messaging_service_sid", "body", "status", "num_segments", "num_media", "direction", "api_version",
    "price", "price_unit", "error_code", "error_message", "uri", "subresource_uris"
]  # fmt: skip
CALL_KEYS = [
    "date_updated", "price_unit", "parent_call_sid", "caller_name", "duration", "from", "to", "annotation",
    "answered_by", "sid", "queue_time", "price", "api_version", "status", "direction", "start_time",
    "date_created", "from_formatted", "group_sid", "trunk_sid", "forwarded_from", "uri", "account_sid",
    "end_time", "to_formatted", "phone_number_sid", "subresource_uris"
]  # fmt: skip
CALL_SUBRESOURCES = [
    "feedback", "user_defined_messages", "notifications", "recordings", "streams", "payments",
    "user_defined_message_subscriptions", "siprec", "events", "feedback_summaries"
]  # fmt: skip
ERROR_21610 = {
    "code": 21610,
    "message": "Attempt to send to unsubscribed recipient",
    "more_info": "https://www.twilio.com/docs/errors/21610",
    "status": 400,
}
ERROR_21211 = {
    "code": 21211,
    "message": "The 'To' number +1555555012 is not a valid phone number.",
    "more_info": "https://www.twilio.com/docs/errors/21211",
    "status": 400,
}
ERROR_20429 = {
    "code": 20429,
    "message": "Too Many Requests",
    "more_info": "https://www.twilio.com/docs/errors/20429",
    "status": 429,
}


class EmulatorHttpClient(TwilioHttpClient):
    """Sends every Twilio request (https://api.twilio.com/...) to the emulator instead; keeps the last URL."""

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._base = urlsplit(base_url)
        self.last_url = ""
        self.last_params: dict[str, Any] = {}

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        parts = urlsplit(url)
        self.last_url = urlunsplit((self._base.scheme, self._base.netloc, parts.path, parts.query, ""))
        self.last_params = dict(kwargs.get("params") or (args[0] if args else None) or {})
        return super().request(method, self.last_url, *args, **kwargs)


class Receiver:
    """A tiny webhook receiver on 127.0.0.1 recording every POST (url, form, headers)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answer = 200
        app = Flask("receiver")

        @app.post("/twilio/sms/status")
        def status() -> tuple[str, int]:
            self.received.append(
                dict(url=request.url, form=request.form.copy(), headers=dict(request.headers))
            )
            return "", self.answer

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/twilio/sms/status"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def emulator() -> Iterator[TwilioEmulator]:
    """One emulator thread for the module; each test resets it."""
    with TwilioEmulator() as emu:
        yield emu


@pytest.fixture
def account(emulator: TwilioEmulator) -> dict[str, str]:
    emulator.reset()
    emulator.auto_status = None
    acct = emulator.create_account(ACCOUNT, TOKEN)
    emulator.add_number(ACCOUNT, NUMBER)
    return acct


def make_client(emulator: TwilioEmulator, sid: str = ACCOUNT, token: str = TOKEN) -> Client:
    return Client(sid, token, http_client=EmulatorHttpClient(emulator.base_url, timeout=5))


@pytest.fixture
def client(emulator: TwilioEmulator, account: dict[str, str]) -> Client:
    return make_client(emulator)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


def raw(emulator: TwilioEmulator, method: str, path: str, **kwargs: Any) -> requests.Response:
    """A plain HTTP request to the emulator (to see headers and exact bodies), bypassing the SDK."""
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, emulator.base_url + path, timeout=5, **kwargs)


def fixture_keys(name: str) -> set[str]:
    """The parameter names of a recorded Twilio webhook in tests/fixtures/twilio."""
    return {k for k, _ in parse_qsl((FIXTURES / name).read_text())}


def send_error(client: Client, **kwargs: Any) -> TwilioRestException:
    kwargs.setdefault("to", CUSTOMER)
    with pytest.raises(TwilioRestException) as info:
        client.messages.create(**kwargs)
    return info.value


# ---- messages ------------------------------------------------------------------------------------------
def test_create_message_returns_queued_instance(emulator: TwilioEmulator, client: Client) -> None:
    msg = client.messages.create(
        to=CUSTOMER, from_=NUMBER, body="hello", status_callback="https://a.example/s"
    )
    assert isinstance(msg, MessageInstance)
    assert msg.sid.startswith("SM") and len(msg.sid) == 34
    assert (msg.status, msg.to, msg.from_, msg.body) == ("queued", CUSTOMER, NUMBER, "hello")
    assert (msg.num_segments, msg.num_media, msg.direction, msg.account_sid) == (
        "1",
        "0",
        "outbound-api",
        ACCOUNT,
    )
    assert msg.date_sent is None and msg.messaging_service_sid is None
    assert abs(msg.date_created - datetime.now(UTC)) < timedelta(minutes=1)
    (stored,) = emulator.messages(ACCOUNT)
    assert stored["sid"] == msg.sid and stored["status_callback"] == "https://a.example/s"
    assert (stored["to"], stored["from"], stored["body"], stored["media_urls"]) == (
        CUSTOMER,
        NUMBER,
        "hello",
        [],
    )


def test_message_json_has_the_fixture_shape(emulator: TwilioEmulator, account: dict[str, str]) -> None:
    data = {"To": CUSTOMER, "From": NUMBER, "MessagingServiceSid": SERVICE, "Body": "x" * 161}
    data["MediaUrl"] = ["https://a.example/1.png", "https://a.example/2.png"]
    resp = raw(
        emulator, "POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json", data=data, auth=(ACCOUNT, TOKEN)
    )
    assert resp.status_code == 201 and resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert list(body) == MESSAGE_KEYS
    assert (body["status"], body["num_segments"], body["num_media"], body["price_unit"]) == (
        "accepted",
        "2",
        "2",
        "USD",
    )
    assert body["uri"] == f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{body['sid']}.json"
    assert body["subresource_uris"] == {"media": body["uri"][: -len(".json")] + "/Media.json"}
    assert emulator.messages(ACCOUNT)[0]["media_urls"] == data["MediaUrl"]


def test_segments() -> None:
    assert [num_segments("a" * n) for n in (1, 160, 161, 306, 307)] == [1, 1, 2, 2, 3]
    assert [num_segments("é" * 160), num_segments("€" * 80), num_segments("€" * 81)] == [1, 1, 2]
    assert [num_segments("😀" * 35), num_segments("😀" * 36), num_segments("ł" * 71)] == [1, 2, 2]


def test_messaging_service_is_accepted(client: Client) -> None:
    msg = client.messages.create(to=CUSTOMER, messaging_service_sid=SERVICE, body="via service")
    assert (msg.status, msg.messaging_service_sid, msg.from_) == ("accepted", SERVICE, None)
    foreign = client.messages.create(
        to=CUSTOMER, from_="+15555559999", messaging_service_sid=SERVICE, body="x"
    )
    assert foreign.status == "accepted"  # the From is not checked when a Messaging Service sends


def test_opt_out_gives_21610_until_opt_in(emulator: TwilioEmulator, client: Client) -> None:
    emulator.add_number(ACCOUNT, OTHER_NUMBER)
    emulator.opt_out(ACCOUNT, CUSTOMER, from_=NUMBER)
    exc = send_error(client, from_=NUMBER, body="hi")
    assert (exc.status, exc.code) == (400, 21610)
    assert "Attempt to send to unsubscribed recipient" in exc.msg
    assert client.messages.create(to=CUSTOMER, from_=OTHER_NUMBER, body="other sender").status == "queued"
    emulator.opt_in(ACCOUNT, CUSTOMER, from_=NUMBER)
    assert client.messages.create(to=CUSTOMER, from_=NUMBER, body="hi again").status == "queued"

    emulator.opt_out(ACCOUNT, "+1 (555) 555-0123")  # every sender of the account, any formatting
    for sender in ({"from_": NUMBER}, {"from_": OTHER_NUMBER}, {"messaging_service_sid": SERVICE}):
        assert send_error(client, body="hi", **sender).code == 21610
    emulator.opt_in(ACCOUNT, CUSTOMER)
    assert (
        client.messages.create(to=CUSTOMER, messaging_service_sid=SERVICE, body="back").status == "accepted"
    )

    emulator.opt_out(ACCOUNT, CUSTOMER, from_=SERVICE)
    assert send_error(client, messaging_service_sid=SERVICE, body="hi").code == 21610
    assert len(emulator.messages(ACCOUNT)) == 3


def test_21610_and_21211_bodies_match_the_fixtures(emulator: TwilioEmulator, account: dict[str, str]) -> None:
    path, auth = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json", (ACCOUNT, TOKEN)
    emulator.opt_out(ACCOUNT, CUSTOMER)
    resp = raw(emulator, "POST", path, data={"To": CUSTOMER, "From": NUMBER, "Body": "x"}, auth=auth)
    assert (resp.status_code, resp.json()) == (400, ERROR_21610)
    resp = raw(emulator, "POST", path, data={"To": "+1555555012", "From": NUMBER, "Body": "x"}, auth=auth)
    assert (resp.status_code, resp.json()) == (400, ERROR_21211)


def test_invalid_to_gives_21211(client: Client) -> None:
    exc = send_error(client, to="not-a-number", from_=NUMBER, body="hi")
    assert (exc.status, exc.code) == (400, 21211)
    assert "The 'To' number not-a-number is not a valid phone number." in exc.msg
    assert send_error(client, to="5555550123", from_=NUMBER, body="national").code == 21211
    assert (
        client.messages.create(to="+15555550142", from_=NUMBER, body="555 numbers are fine").status
        == "queued"
    )
    assert client.messages.create(to="+442071838750", from_=NUMBER, body="UK").to == "+442071838750"


def test_foreign_from_gives_21606(client: Client) -> None:
    exc = send_error(client, from_="+15555559999", body="hi")
    assert (exc.status, exc.code) == (400, 21606)
    assert "+15555559999 is not a valid, SMS-capable inbound phone number or short code" in exc.msg


def test_body_errors(client: Client) -> None:
    exc = send_error(client, from_=NUMBER, body="")
    assert (exc.status, exc.code) == (400, 21602) and "Message body is required" in exc.msg
    assert send_error(client, from_=NUMBER, body="x" * 1601).code == 21617
    assert client.messages.create(to=CUSTOMER, from_=NUMBER, body="x" * 1600).num_segments == "11"
    mms = client.messages.create(to=CUSTOMER, from_=NUMBER, media_url=["https://a.example/cat.png"])
    assert (mms.body, mms.num_media) == ("", "1")


def test_rate_limit_gives_429_with_retry_after(emulator: TwilioEmulator, client: Client) -> None:
    emulator.set_limits(ACCOUNT, messages_per_second=2)
    for i in range(2):
        client.messages.create(to=CUSTOMER, from_=NUMBER, body=f"m{i}")
    exc = send_error(client, from_=NUMBER, body="too fast")
    assert (exc.status, exc.code) == (429, 20429)
    resp = raw(
        emulator,
        "POST",
        f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
        data={"To": CUSTOMER, "From": NUMBER, "Body": "x"},
        auth=(ACCOUNT, TOKEN),
    )
    assert (resp.status_code, resp.headers["Retry-After"], resp.json()) == (429, "1", ERROR_20429)
    time.sleep(1.05)
    assert client.messages.create(to=CUSTOMER, from_=NUMBER, body="later").status == "queued"
    emulator.set_limits(ACCOUNT, None)
    for i in range(5):
        client.messages.create(to=CUSTOMER, from_=NUMBER, body=f"unlimited {i}")
    assert len(emulator.messages(ACCOUNT)) == 8


def test_wrong_credentials_give_401_20003(emulator: TwilioEmulator, account: dict[str, str]) -> None:
    for sid, token in ((ACCOUNT, "wrong-token"), ("AC" + "f" * 32, TOKEN)):
        with pytest.raises(TwilioRestException) as info:
            make_client(emulator, sid, token).messages.create(to=CUSTOMER, from_=NUMBER, body="hi")
        assert (info.value.status, info.value.code) == (401, 20003)
    other = emulator.create_account()  # valid credentials, but for another account than the path's
    resp = raw(emulator, "GET", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json", auth=tuple(other.values()))
    assert resp.status_code == 401
    assert resp.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }
    assert emulator.messages(ACCOUNT) == []


def test_fetch_message(client: Client) -> None:
    sent = client.messages.create(to=CUSTOMER, from_=NUMBER, body="fetch me")
    got = client.messages(sent.sid).fetch()
    assert (got.sid, got.body, got.status, got.date_created) == (
        sent.sid,
        "fetch me",
        "queued",
        sent.date_created,
    )
    with pytest.raises(TwilioRestException) as info:
        client.messages("SM" + "0" * 32).fetch()
    assert (info.value.status, info.value.code) == (404, 20404)
    assert f"/Messages/SM{'0' * 32}.json was not found" in info.value.msg


def test_list_filters(client: Client) -> None:
    for to in (CUSTOMER, AGENT, CUSTOMER):
        client.messages.create(to=to, from_=NUMBER, body=f"to {to}")
    listed = client.messages.list(to=CUSTOMER)
    assert [m.to for m in listed] == [CUSTOMER, CUSTOMER]
    assert [m.body for m in client.messages.list(to=AGENT, from_=NUMBER)] == [f"to {AGENT}"]
    assert client.messages.list(from_=OTHER_NUMBER) == []
    http = client.http_client
    assert isinstance(http, EmulatorHttpClient)

    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert len(client.messages.list(to=CUSTOMER, date_sent_after=hour_ago)) == 2
    # twilio-python serializes datetimes as YYYY-MM-DDTHH:MM:SSZ under the keys "DateSent>" / "DateSent<".
    assert http.last_params == {"To": CUSTOMER, "DateSent>": hour_ago.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert client.messages.list(date_sent_after=datetime.now(UTC) + timedelta(hours=1)) == []
    assert len(client.messages.list(date_sent_before=datetime.now(UTC) + timedelta(minutes=1))) == 3
    assert client.messages.list(date_sent_before=hour_ago) == []
    assert len(client.messages.list(date_sent=datetime.now(UTC).date())) == 3  # the whole day
    assert http.last_params["DateSent"].endswith("T00:00:00Z")
    assert client.messages.list(date_sent=date(2020, 1, 1)) == []


def test_list_pages_newest_first(emulator: TwilioEmulator, client: Client) -> None:
    for i in range(5):
        client.messages.create(to=CUSTOMER, from_=NUMBER, body=f"n{i}")
    assert [m.body for m in client.messages.list(page_size=2)] == ["n4", "n3", "n2", "n1", "n0"]
    assert [m.body for m in client.messages.list(limit=3)] == ["n4", "n3", "n2"]
    page = raw(
        emulator,
        "GET",
        f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
        params={"To": CUSTOMER, "PageSize": 2},
        auth=(ACCOUNT, TOKEN),
    ).json()
    base = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json?To=%2B15555550123&PageSize=2"
    assert set(page) == {
        "messages",
        "first_page_uri",
        "next_page_uri",
        "previous_page_uri",
        "page",
        "page_size",
    } | {
        "start",
        "end",
        "uri",
    }
    assert (page["page"], page["page_size"], page["start"], page["end"]) == (0, 2, 0, 1)
    assert (page["first_page_uri"], page["uri"], page["next_page_uri"]) == (
        base + "&Page=0",
        base + "&Page=0",
        base + "&Page=1",
    )
    assert page["previous_page_uri"] is None and len(page["messages"]) == 2
    assert list(page["messages"][0]) == MESSAGE_KEYS


# ---- calls ---------------------------------------------------------------------------------------------
def test_create_call(emulator: TwilioEmulator, client: Client) -> None:
    events = ["initiated", "answered", "completed"]
    call = client.calls.create(
        to=AGENT,
        from_=NUMBER,
        url="https://app.example/twiml/voice",
        status_callback="https://app.example/twilio/status",
        status_callback_event=events,
        record=True,
        timeout=30,
    )
    assert isinstance(call, CallInstance)
    assert call.sid.startswith("CA") and len(call.sid) == 34
    assert (call.status, call.to, call.direction) == ("queued", AGENT, "outbound-api")
    assert (call.from_formatted, call.to_formatted) == ("(555) 555-0100", "(555) 555-0199")
    (stored,) = emulator.calls(ACCOUNT)
    assert (stored["sid"], stored["from"], stored["to"]) == (call.sid, NUMBER, AGENT)
    assert (stored["status_callback_events"], stored["record"], stored["timeout"]) == (events, "true", "30")
    assert stored["url"] == "https://app.example/twiml/voice" and stored["twiml"] is None
    fetched = client.calls(call.sid).fetch()
    assert fetched.sid == call.sid and fetched.date_created is not None

    twiml = client.calls.create(to=CUSTOMER, from_=NUMBER, twiml="<Response><Say>hi</Say></Response>")
    assert emulator.calls(ACCOUNT)[1]["twiml"] == "<Response><Say>hi</Say></Response>"
    assert twiml.status == "queued"


def test_call_json_has_the_fixture_shape(emulator: TwilioEmulator, account: dict[str, str]) -> None:
    resp = raw(
        emulator,
        "POST",
        f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
        data={"To": AGENT, "From": NUMBER, "Url": "https://app.example/twiml"},
        auth=(ACCOUNT, TOKEN),
    )
    body = resp.json()
    assert resp.status_code == 201 and list(body) == CALL_KEYS
    assert list(body["subresource_uris"]) == CALL_SUBRESOURCES
    assert body["subresource_uris"]["recordings"] == body["uri"][: -len(".json")] + "/Recordings.json"
    assert (body["queue_time"], body["date_created"], body["phone_number_sid"][:2]) == ("0", None, "PN")


def test_call_errors(client: Client) -> None:
    with pytest.raises(TwilioRestException) as info:
        client.calls.create(to="not-a-number", from_=NUMBER, url="https://app.example/twiml")
    assert (info.value.status, info.value.code) == (400, 21211)
    with pytest.raises(TwilioRestException) as info:
        client.calls.create(to=AGENT, from_="+15555559999", url="https://app.example/twiml")
    assert (info.value.status, info.value.code) == (400, 21210)
    assert (
        "The source phone number provided, +15555559999, is not yet verified for your account"
        in info.value.msg
    )


# ---- faults, stats, control ----------------------------------------------------------------------------
def test_fail_next_then_success(emulator: TwilioEmulator, client: Client) -> None:
    emulator.fail_next(f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json")
    exc = send_error(client, from_=NUMBER, body="first try")
    assert (exc.status, exc.code) == (500, 20500)
    assert client.messages.create(to=CUSTOMER, from_=NUMBER, body="second try").status == "queued"

    emulator.fail_next("/2010-04-01/Accounts/*/Calls.json", status=503, count=2, code=20503)
    for _ in range(2):
        with pytest.raises(TwilioRestException) as info:
            client.calls.create(to=AGENT, from_=NUMBER, url="https://app.example/twiml")
        assert (info.value.status, info.value.code) == (503, 20503)
    assert client.calls.create(to=AGENT, from_=NUMBER, url="https://app.example/twiml").status == "queued"
    assert len(emulator.messages(ACCOUNT)) == 1 and len(emulator.calls(ACCOUNT)) == 1


def test_stats(emulator: TwilioEmulator, client: Client) -> None:
    sent = client.messages.create(to=CUSTOMER, from_=NUMBER, body="one")
    send_error(client, from_=NUMBER, body="")
    client.messages(sent.sid).fetch()
    client.messages.list()
    client.calls.create(to=AGENT, from_=NUMBER, url="https://app.example/twiml")
    raw(emulator, "POST", "/_emulator/add_number", json={"account_sid": ACCOUNT, "e164_number": OTHER_NUMBER})
    prefix = "/2010-04-01/Accounts/{account_sid}"
    stats = emulator.stats()
    assert stats == {
        "total": 5,
        "by_route": {
            f"POST {prefix}/Messages.json": 2,
            f"GET {prefix}/Messages/{{sid}}.json": 1,
            f"GET {prefix}/Messages.json": 1,
            f"POST {prefix}/Calls.json": 1,
        },
        "by_status": {201: 2, 400: 1, 200: 2},
    }
    assert emulator.stats(ACCOUNT) == stats
    assert emulator.stats("AC" + "9" * 32) == {"total": 0, "by_route": {}, "by_status": {}}
    emulator.reset()
    assert emulator.stats()["total"] == 0


def test_control_endpoints(emulator: TwilioEmulator) -> None:
    emulator.reset()
    acct = raw(emulator, "POST", "/_emulator/create_account", json={}).json()
    sid, token = acct["account_sid"], acct["auth_token"]
    assert sid.startswith("AC") and len(sid) == 34 and len(token) == 32
    added = raw(emulator, "POST", "/_emulator/add_number", json={"account_sid": sid, "e164_number": NUMBER})
    assert added.json()["phone_number"] == NUMBER and added.json()["sid"].startswith("PN")
    raw(emulator, "POST", "/_emulator/opt_out", json={"account_sid": sid, "to": CUSTOMER, "from_": NUMBER})
    raw(emulator, "POST", "/_emulator/set_limits", json={"account_sid": sid, "messages_per_second": 5})
    client = make_client(emulator, sid, token)
    assert send_error(client, from_=NUMBER, body="x").code == 21610
    raw(emulator, "POST", "/_emulator/opt-in", json={"account_sid": sid, "to": CUSTOMER})
    raw(emulator, "POST", "/_emulator/fail_next", json={"path_prefix": "/2010-04-01/", "status": 429})
    assert send_error(client, from_=NUMBER, body="x").code == 20429
    assert client.messages.create(to=CUSTOMER, from_=NUMBER, body="ok").status == "queued"
    listed = raw(emulator, "GET", "/_emulator/messages", params={"account_sid": sid}).json()["result"]
    assert [m["body"] for m in listed] == ["ok"] and listed[0]["date_created"].endswith("+0000")
    assert raw(emulator, "GET", "/_emulator/stats").json()["total"] == 3
    assert raw(emulator, "POST", "/_emulator/nope", json={}).status_code == 404
    assert raw(emulator, "GET", "/_emulator/reset").status_code == 404  # mutations need POST
    bad = raw(emulator, "POST", "/_emulator/create_account", json={"account_sid": "nope"})
    assert bad.status_code == 400 and "ValueError" in bad.json()["message"]
    assert raw(emulator, "POST", "/_emulator/reset", json={}).json() == {"ok": True, "result": None}
    assert emulator.accounts == {}


# ---- status callbacks ----------------------------------------------------------------------------------
def test_deliver_status_posts_a_signed_callback(
    emulator: TwilioEmulator, client: Client, receiver: Receiver
) -> None:
    msg = client.messages.create(to=CUSTOMER, from_=NUMBER, body="hi", status_callback=receiver.url)
    assert emulator.deliver_status(msg.sid, "sent") == 200
    receiver.answer = 500
    assert emulator.deliver_status(msg.sid, "undelivered", error_code=30003) == 500

    validator = RequestValidator(TOKEN)
    sent, undelivered = receiver.received
    for hit in (sent, undelivered):
        assert validator.validate(hit["url"], hit["form"], hit["headers"]["X-Twilio-Signature"])
        assert not RequestValidator("f" * 32).validate(
            hit["url"], hit["form"], hit["headers"]["X-Twilio-Signature"]
        )
        assert hit["headers"]["Content-Type"].startswith("application/x-www-form-urlencoded")
        assert hit["headers"]["I-Twilio-Idempotency-Token"]
    expected = {
        "MessageSid": msg.sid,
        "SmsSid": msg.sid,
        "AccountSid": ACCOUNT,
        "From": NUMBER,
        "To": CUSTOMER,
    }
    expected.update(MessageStatus="sent", SmsStatus="sent", ApiVersion="2010-04-01")
    assert sent["form"].to_dict() == expected
    assert set(sent["form"]) == fixture_keys("sms__status_sent.form") - {"MessagingServiceSid"}
    assert set(undelivered["form"]) == fixture_keys("sms__status_undelivered.form") - {"MessagingServiceSid"}
    assert (
        undelivered["form"]["ErrorCode"] == "30003" and undelivered["form"]["MessageStatus"] == "undelivered"
    )

    fetched = client.messages(msg.sid).fetch()
    assert (fetched.status, fetched.error_code, fetched.date_sent is not None) == ("undelivered", 30003, True)


def test_deliver_status_via_messaging_service(
    emulator: TwilioEmulator, client: Client, receiver: Receiver
) -> None:
    msg = client.messages.create(
        to=CUSTOMER, messaging_service_sid=SERVICE, body="x", status_callback=receiver.url
    )
    resp = raw(emulator, "POST", "/_emulator/deliver_status", json={"sid": msg.sid, "status": "delivered"})
    assert resp.json() == {"ok": True, "result": 200}
    (hit,) = receiver.received
    assert set(hit["form"]) == fixture_keys("sms__status_delivered.form")
    assert hit["form"]["RawDlrDoneDate"] == datetime.now(UTC).strftime("%y%m%d%H%M")
    assert (hit["form"]["MessagingServiceSid"], hit["form"]["From"]) == (SERVICE, NUMBER)  # sender picked
    assert RequestValidator(TOKEN).validate(hit["url"], hit["form"], hit["headers"]["X-Twilio-Signature"])
    no_callback = client.messages.create(to=CUSTOMER, from_=NUMBER, body="no callback")
    with pytest.raises(ValueError, match="no StatusCallback"):
        emulator.deliver_status(no_callback.sid, "sent")


def test_auto_status(emulator: TwilioEmulator, client: Client, receiver: Receiver) -> None:
    emulator.auto_status = ["sent", "delivered"]
    msg = client.messages.create(to=CUSTOMER, from_=NUMBER, body="demo", status_callback=receiver.url)
    client.messages.create(to=CUSTOMER, from_=NUMBER, body="no callback URL, no callbacks")
    hits = receiver.wait_for(2)
    assert [h["form"]["MessageStatus"] for h in hits] == ["sent", "delivered"]
    assert all(h["form"]["MessageSid"] == msg.sid for h in hits)
    time.sleep(0.2)
    assert len(receiver.received) == 2
    assert client.messages(msg.sid).fetch().status == "delivered"


# ---- command line --------------------------------------------------------------------------------------
def test_main_serves_with_a_startup_account() -> None:
    root = Path(__file__).resolve().parents[2]
    args = ["--port", "0", "--account-sid", ACCOUNT, "--auth-token", TOKEN, "--number", NUMBER]
    with subprocess.Popen(
        [sys.executable, "-m", "emulators.twilio", *args], cwd=root, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            client = Client(ACCOUNT, TOKEN, http_client=EmulatorHttpClient(base_url, timeout=5))
            assert client.messages.create(to=CUSTOMER, from_=NUMBER, body="cli").status == "queued"
        finally:
            proc.terminate()
            proc.wait(10)
