"""Mailgun contract emulator: the Messages API, the Events API, and signed webhook callbacks.

Answers like api.mailgun.net (v3), so an HTTP client (`requests`, as app/channels/email.py uses) talks to it
over real HTTP:

    with MailgunEmulator() as emu:
        emu.create_domain("mg.acme.example", api_key="key-...", signing_key="...")
        requests.post(f"{emu.base_url}/v3/mg.acme.example/messages", auth=("api", key), data={...})
        emu.emit("<id@mg.acme.example>", "delivered", url=".../webhooks/mailgun/events?token=...")

- `POST /v3/<domain>/messages` (form or multipart): HTTP basic auth `api:<key>` (401 "Forbidden"), the domain
  (404 "Domain not found"), from / to / subject / text-or-html (400 `{"message": ...}`), 429 with Retry-After
  over the domain's rate; 200 `{"id": "<Message-Id>", "message": "Queued. Thank you."}`. An `h:Message-Id`
  is used as the message's Message-Id (Mailgun's FAQ: "you can set your own Message-Id"), `v:` variables
  become the events' user-variables:
  https://documentation.mailgun.com/docs/mailgun/api-reference/openapi-final/tag/Messages/
- `GET /v3/<domain>/events?message-id=...`: the Events API (items newest first, `paging`).
- Control on `/_emulator/<action>` (no auth): create_domain, messages, fail_next, set_limits, emit (an event
  of a sent message as Mailgun's webhook posts it: `{"signature": {timestamp, token, signature},
  "event-data": {...}}`, HMAC-SHA256 with the domain's signing key), stats, reset.

Choices where Mailgun's behaviour is undocumented or unverified (deliberate; change them here):
- A Message-Id given without angle brackets gets them; one without "@" is refused with 400.
- The Events API is consistent at once here; Mailgun's is eventually consistent (seconds, at worst minutes).
- fail_next(..., after_accept=True) queues the message (it is found by the Events API) and then answers the
  fault: a provider that accepted the mail while the caller saw an error.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
import secrets
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from flask import Flask, Response, request

from emulators.base import ServedApp, add_control, admit

EVENTS = ("accepted", "delivered", "opened", "clicked", "failed", "complained", "unsubscribed")


class MailgunError(Exception):
    """An API error answer: `{"message": ...}` (or plain "Forbidden" for 401) with a status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Domain:
    """A sending domain: its API key, webhook signing key, messages and events, rate-limit window."""

    name: str
    api_key: str
    signing_key: str
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # Message-Id (no brackets) -> message
    events: list[dict[str, Any]] = field(default_factory=list)
    requests_per_second: float | None = None
    window: deque[float] = field(default_factory=deque)


@dataclass
class Fault:
    """The next `remaining` requests whose path starts with `prefix` answer `status`."""

    prefix: str
    remaining: int
    status: int = 500
    after_accept: bool = False


class MailgunEmulator(ServedApp):
    """Owns the emulated Mailgun state and its Flask app; serves it on 127.0.0.1 from a background thread."""

    name = "mailgun-emulator"

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.RLock()
        self.reset()
        self.app = _build_app(self)

    # ---- control -----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every domain, fault and statistic."""
        with self.lock:
            self.domains: dict[str, Domain] = {}
            self.faults: list[Fault] = []
            self.counts: Counter[str] = Counter()

    def create_domain(self, domain: str, api_key: str | None = None, signing_key: str | None = None) -> dict:
        """A sending domain with its private API key and HTTP webhook signing key (made if absent)."""
        key = api_key or f"key-{secrets.token_hex(16)}"
        signing = signing_key or secrets.token_hex(16)
        with self.lock:
            self.domains[domain] = Domain(domain, key, signing)
        return {"domain": domain, "api_key": key, "signing_key": signing}

    def messages(self, domain: str | None = None) -> list[dict[str, Any]]:
        """Every accepted message (of one domain, or all), oldest first."""
        with self.lock:
            domains = [self.domains[domain]] if domain else list(self.domains.values())
            return [dict(m) for d in domains for m in d.messages.values()]

    def fail_next(
        self, path_prefix: str = "/v3/", status: int = 500, count: int = 1, after_accept: bool = False
    ) -> dict:
        """Answer the next `count` matching requests with `status` (queue the mail first if after_accept)."""
        with self.lock:
            self.faults.append(Fault(path_prefix, int(count), int(status), bool(after_accept)))
        return {"ok": True}

    def set_limits(self, domain: str, requests_per_second: float | None = None) -> dict:
        """Rate-limit the domain's sends (429 beyond it)."""
        with self.lock:
            self.domains[domain].requests_per_second = requests_per_second
        return {"ok": True}

    def stats(self) -> dict[str, Any]:
        """Request counts by "METHOD path status"."""
        with self.lock:
            return dict(self.counts)

    def emit(self, message_id: str, event: str, url: str, **extra: Any) -> dict[str, Any]:
        """POST one signed webhook for a sent message to `url`; returns the receiver's status. `severity`,
        `reason` and `delivery_status` shape a failed event; `times=2` posts the same event twice."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        times = int(extra.pop("times", 1))
        ident = message_id.strip().strip("<>")
        with self.lock:
            dom, msg = next(
                ((d, d.messages[ident]) for d in self.domains.values() if ident in d.messages), (None, None)
            )
            if dom is None or msg is None:
                raise KeyError(f"no message {message_id}")
            data = _event(msg, event, **extra)
            dom.events.append(data)
            stamp, token = str(int(time.time())), secrets.token_hex(25)
            signature = hmac.new(
                dom.signing_key.encode(), (stamp + token).encode(), hashlib.sha256
            ).hexdigest()
        body = json.dumps(
            {"signature": {"timestamp": stamp, "token": token, "signature": signature}, "event-data": data}
        )
        statuses = []
        with requests.Session() as http:
            http.trust_env = False
            for _ in range(times):
                answer = http.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
                statuses.append(answer.status_code)
        return {"status": statuses[0], "statuses": statuses, "id": data["id"]}

    # ---- request handling --------------------------------------------------------------------------------
    def _take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if path.startswith(fault.prefix) and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
            self.faults = [f for f in self.faults if f.remaining > 0]
        return None

    def _authenticate(self, domain: str) -> Domain:
        auth = request.authorization
        keys = {d.api_key for d in self.domains.values()}
        if auth is None or auth.username != "api" or auth.password not in keys:
            raise MailgunError(401, "Forbidden")
        dom = self.domains.get(domain)
        if dom is None or dom.api_key != auth.password:
            raise MailgunError(404, f"Domain not found: {domain}")
        return dom

    def _admit(self, dom: Domain) -> None:
        if not admit(dom.window, dom.requests_per_second):
            raise MailgunError(429, "Too many requests", {"Retry-After": "1"})

    def _send(self, dom: Domain, form: Any) -> dict[str, Any]:
        sender = form.get("from")
        if not sender:
            raise MailgunError(400, "'from' parameter is missing")
        to = form.getlist("to")
        if not to:
            raise MailgunError(400, "'to' parameter is missing")
        if not all(re.search(r"[^@\s<>]+@[^@\s<>]+", t) for t in to):
            raise MailgunError(400, "'to' parameter is not a valid address. please check documentation")
        if not form.get("subject"):
            raise MailgunError(400, "'subject' parameter is missing")
        if not form.get("text") and not form.get("html") and not form.get("template"):
            raise MailgunError(400, "Need at least one of 'text', 'html' or 'template' parameters specified")
        given = form.get("h:Message-Id") or form.get("h:Message-ID")
        if given is not None and "@" not in given:
            raise MailgunError(400, "'h:Message-Id' is not a valid Message-Id")
        ident = (
            (given or f"{datetime.now(UTC):%Y%m%d%H%M%S}.{secrets.token_hex(8)}@{dom.name}")
            .strip()
            .strip("<>")
        )
        msg = {
            "id": ident,
            "from": sender,
            "to": to[0],
            "subject": form.get("subject"),
            "text": form.get("text"),
            "html": form.get("html"),
            "headers": {k[2:]: v for k, v in form.items() if k.startswith("h:")},
            "user_variables": {k[2:]: v for k, v in form.items() if k.startswith("v:")},
            "received_at": time.time(),
        }
        dom.messages[ident] = msg
        dom.events.append(_event(msg, "accepted"))
        return msg


def _event(msg: dict[str, Any], event: str, **extra: Any) -> dict[str, Any]:
    """An event-data object the way Mailgun's webhooks and Events API show it."""
    data: dict[str, Any] = {
        "id": secrets.token_urlsafe(16),
        "timestamp": round(time.time(), 6),
        "event": event,
        "recipient": re.sub(r".*<([^>]+)>.*", r"\1", msg["to"]),
        "message": {
            "headers": {
                "message-id": msg["id"],
                "from": msg["from"],
                "to": msg["to"],
                "subject": msg["subject"],
            }
        },
        "user-variables": dict(msg["user_variables"]),
        "flags": {"is-authenticated": True, "is-test-mode": False},
    }
    if event == "failed":
        severity = extra.pop("severity", "permanent")
        data.update(
            severity=severity, reason=extra.pop("reason", "bounce" if severity == "permanent" else "generic")
        )
        data["delivery-status"] = extra.pop(
            "delivery_status",
            {
                "code": 550,
                "message": "5.1.1 The email account that you tried to reach does not exist",
                "enhanced-code": "5.1.1",
            },
        )
    if event == "delivered":
        data["delivery-status"] = {"code": 250, "message": "OK", "attempt-no": 1}
    data.update(extra)
    return data


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {}, mimetype="application/json")


CONTROL_ACTIONS = {"create_domain", "messages", "fail_next", "set_limits", "emit", "stats", "reset"}
_READ_ONLY = {"messages", "stats"}


def _build_app(emu: MailgunEmulator) -> Flask:
    app = Flask("emulators.mailgun")

    @app.errorhandler(MailgunError)
    def _error(exc: MailgunError) -> Response:
        if exc.status == 401:  # Mailgun answers a bad key with a bare text body
            return Response("Forbidden", status=401, mimetype="text/plain")
        return _json({"message": exc.message}, exc.status, exc.headers)

    @app.errorhandler(404)
    @app.errorhandler(405)
    def _no_route(exc: Exception) -> Response:
        return Response("404 page not found\n", status=404, mimetype="text/plain")

    @app.after_request
    def _count(resp: Response) -> Response:
        if not request.path.startswith("/_emulator/"):
            with emu.lock:
                emu.counts[f"{request.method} {request.path} {resp.status_code}"] += 1
        return resp

    @app.post("/v3/<domain>/messages")
    def send(domain: str) -> Response:
        fault = emu._take_fault(request.path)
        with emu.lock:
            dom = emu._authenticate(domain)
            emu._admit(dom)
            if fault is not None and not fault.after_accept:
                return _fault(fault)
            msg = emu._send(dom, request.form)
        if fault is not None:
            return _fault(fault)
        return _json({"id": f"<{msg['id']}>", "message": "Queued. Thank you."})

    @app.get("/v3/<domain>/events")
    def events(domain: str) -> Response:
        fault = emu._take_fault(request.path)
        if fault is not None:
            return _fault(fault)
        with emu.lock:
            dom = emu._authenticate(domain)
            wanted = (request.args.get("message-id") or "").strip().strip("<>")
            kind = request.args.get("event")
            items = [
                e
                for e in reversed(dom.events)
                if (not wanted or e["message"]["headers"]["message-id"] == wanted)
                and (not kind or e["event"] == kind)
            ]
            limit = min(int(request.args.get("limit", "100") or 100), 300)
        base = f"{request.host_url.rstrip('/')}/v3/{domain}/events"
        paging = {k: f"{base}/{secrets.token_urlsafe(8)}" for k in ("first", "last", "next", "previous")}
        return _json({"items": items[:limit], "paging": paging})

    add_control(app, emu, CONTROL_ACTIONS, _READ_ONLY)

    return app


def _fault(fault: Fault) -> Response:
    headers = {"Retry-After": "1"} if fault.status == 429 else {}
    text = {
        429: "Too many requests",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }
    return _json({"message": text.get(fault.status, "emulated failure")}, fault.status, headers)


def main(argv: list[str] | None = None) -> None:
    """Run in the foreground: python -m emulators.mailgun --port N --domain D: print the URL, serve."""
    parser = argparse.ArgumentParser(description="Mailgun v3 contract emulator")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--domain", default="mg.example.com", help="create this sending domain at startup")
    parser.add_argument("--api-key", help="the domain's API key")
    parser.add_argument("--signing-key", help="the domain's HTTP webhook signing key")
    args = parser.parse_args(argv)
    emu = MailgunEmulator()
    domain = emu.create_domain(args.domain, args.api_key, args.signing_key)
    print(emu.start(args.port), flush=True)
    print(json.dumps(domain), file=sys.stderr, flush=True)
    emu.serve_forever()


if __name__ == "__main__":
    main()
