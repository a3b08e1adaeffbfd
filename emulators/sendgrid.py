"""SendGrid v3 contract emulator: Mail Send, the Email Activity lookup, and signed Event Webhook callbacks.

Answers like api.sendgrid.com, so the real `sendgrid` SDK (python-http-client over urllib) can be pointed at
it with `SendGridAPIClient(api_key, host=emu.base_url)`:

    with SendGridEmulator() as emu:
        key = emu.create_account()["api_key"]
        SendGridAPIClient(key, host=emu.base_url).send(mail)      # 202, X-Message-Id
        emu.emit(x_message_id, "delivered", url=".../webhooks/sendgrid/events?token=...")

- `POST /v3/mail/send`: Bearer API key (401 otherwise, 403 for a key without mail.send), the request body
  checked the way SendGrid documents it (personalizations, from, subject, content, reserved headers,
  custom_args as strings; 400 `{"errors": [{"message", "field", "help"}]}`), 413 over 30 MB, 429 with
  X-RateLimit-* and Retry-After over the account's rate; 202 with an empty body and `X-Message-Id`:
  https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send
- `GET /v3/messages?query=...&limit=N`: the Email Activity API, which needs a paid add-on (403 "access
  forbidden" without it; `create_account(activity=False)`); queries `msg_id="..."`, `to_email="..."` and
  `unique_args['name']="value"` joined by AND:
  https://www.twilio.com/docs/sendgrid/for-developers/sending-email/getting-started-email-activity-api
- Control, on `/_emulator/<action>` (no auth): create_account, messages, verification_key, fail_next,
  set_limits, emit (an event of a sent message, ECDSA-signed like the Signed Event Webhook, POSTed to a URL),
  stats, reset.

Choices where SendGrid's behaviour is undocumented or unverified (deliberate; change them here):
- The X-Message-Id is 22 URL-safe characters; events carry `sg_message_id` = X-Message-Id + ".filter...".
- custom_args of the message and of its personalization are merged into every event (the personalization's
  win), as SendGrid documents for unique arguments.
- fail_next(..., after_accept=True) stores the message (it will be delivered and found by the Activity API)
  and then answers the fault: a provider that accepted the mail while the caller saw an error; with
  `hang=S` (and status 202 for a plain answer) it holds the answer S seconds first.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, Response, request

from emulators.base import ServedApp, add_control, admit

MAX_BYTES = 30 * 1024 * 1024  # "The total size of your email, including attachments, must be less than 30MB"
RESERVED_HEADERS = {
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type", "content-transfer-encoding", "to",
    "from", "subject", "reply-to", "cc", "bcc",
}  # fmt: skip
HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
EVENTS = (
    "processed",
    "deferred",
    "delivered",
    "open",
    "click",
    "bounce",
    "dropped",
    "spamreport",
    "unsubscribe",
    "group_unsubscribe",
    "group_resubscribe",
)
_QUERY = re.compile(r"""\s*(msg_id|to_email|unique_args\['([^']+)'\])\s*=\s*"([^"]*)"\s*""")


class SendGridError(Exception):
    """An API error answer: SendGrid's `{"errors": [...]}` body with a status."""

    def __init__(
        self, status: int, message: str, field: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}

    def body(self) -> dict[str, Any]:
        anchor = f"{HELP}#message.{self.field}" if self.field else None
        return {"errors": [{"message": self.message, "field": self.field, "help": anchor}]}


@dataclass
class Account:
    """One SendGrid account: its API key (and whether it may send), the activity add-on, its messages."""

    api_key: str
    can_send: bool = True
    activity: bool = True
    private_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # X-Message-Id -> message
    requests_per_second: float | None = None
    window: deque[float] = field(default_factory=deque)


@dataclass
class Fault:
    """The next `remaining` requests whose path starts with `prefix` answer `status`."""

    prefix: str
    remaining: int
    status: int = 500
    after_accept: bool = False
    hang: float = 0.0  # seconds to hold the answer after accepting (a provider slower than the caller)
    retry_after: int | None = None  # the Retry-After of a 429 (default 1)


class SendGridEmulator(ServedApp):
    """Owns the emulated SendGrid state and its Flask app; serves it on 127.0.0.1 from a background thread."""

    name = "sendgrid-emulator"

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.RLock()
        self.reset()
        self.app = _build_app(self)

    # ---- control -----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every account, fault and statistic."""
        with self.lock:
            self.accounts: dict[str, Account] = {}
            self.faults: list[Fault] = []
            self.counts: Counter[str] = Counter()

    def create_account(
        self, api_key: str | None = None, activity: bool = True, can_send: bool = True
    ) -> dict:
        """An account with an API key ("SG." + 22 + "." + 43 characters, made if absent)."""
        key = api_key or f"SG.{secrets.token_urlsafe(16)[:22]}.{secrets.token_urlsafe(32)[:43]}"
        with self.lock:
            self.accounts[key] = Account(key, can_send=can_send, activity=activity)
        return {"api_key": key, "verification_key": self.verification_key(key)}

    def verification_key(self, api_key: str) -> str:
        """The Signed Event Webhook's verification key as the console shows it (base64 DER public key)."""
        der = (
            self.accounts[api_key]
            .private_key.public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return base64.b64encode(der).decode()

    def messages(self, api_key: str | None = None) -> list[dict[str, Any]]:
        """Every accepted message (of one account, or all), oldest first."""
        with self.lock:
            accounts = [self.accounts[api_key]] if api_key else list(self.accounts.values())
            return [dict(m) for a in accounts for m in a.messages.values()]

    def fail_next(
        self,
        path_prefix: str = "/v3/mail/send",
        status: int = 500,
        count: int = 1,
        after_accept: bool = False,
        hang: float = 0.0,
        retry_after: int | None = None,
    ) -> dict:
        """The next `count` matching requests answer `status` (the mail stored first if after_accept); a 429
        says Retry-After: `retry_after` (1 unless given)."""
        wait = int(retry_after) if retry_after is not None else None
        with self.lock:
            self.faults.append(
                Fault(path_prefix, int(count), int(status), bool(after_accept), float(hang), wait)
            )
        return {"ok": True}

    def set_limits(self, api_key: str, requests_per_second: float | None = None) -> dict:
        """Rate-limit the account's mail sends (429 beyond it)."""
        with self.lock:
            self.accounts[api_key].requests_per_second = requests_per_second
        return {"ok": True}

    def stats(self) -> dict[str, Any]:
        """Request counts by "METHOD path status"."""
        with self.lock:
            return dict(self.counts)

    def emit(self, x_message_id: str, event: str, url: str, **extra: Any) -> dict[str, Any]:
        """POST one signed Event Webhook batch for a sent message to `url`; returns the receiver's status.
        `extra` adds fields (reason, type, status, url ...); `times=2` sends the same event twice."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        times = int(extra.pop("times", 1))
        with self.lock:
            acct, msg = next(
                ((a, a.messages[x_message_id]) for a in self.accounts.values() if x_message_id in a.messages),
                (None, None),
            )
            if acct is None or msg is None:
                raise KeyError(f"no message {x_message_id}")
            item = {
                **msg["custom_args"],
                "email": msg["to"],
                "timestamp": int(time.time()),
                "smtp-id": msg["message_id"],
                "event": event,
                "category": [],
                "sg_event_id": secrets.token_urlsafe(16),
                "sg_message_id": f"{x_message_id}.filterdrecv-5bd8b7c9d8-abcde-1-{secrets.token_hex(4)}-0",
                **extra,
            }
            body = json.dumps([item] * times, separators=(",", ":")).encode()
            stamp = str(int(time.time()))
            signature = acct.private_key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = {
            "Content-Type": "application/json;charset=utf-8",
            "User-Agent": "SendGrid Event API",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }
        with requests.Session() as http:
            http.trust_env = False
            answer = http.post(url, data=body, headers=headers, timeout=10)
        return {"status": answer.status_code, "sg_event_id": item["sg_event_id"]}

    # ---- request handling --------------------------------------------------------------------------------
    def _take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if path.startswith(fault.prefix) and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault
            self.faults = [f for f in self.faults if f.remaining > 0]
        return None

    def _authenticate(self) -> Account:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        acct = self.accounts.get(key.strip()) if scheme.lower() == "bearer" else None
        if acct is None:
            raise SendGridError(401, "The provided authorization grant is invalid, expired, or revoked")
        return acct

    def _admit(self, acct: Account) -> None:
        if not admit(acct.window, acct.requests_per_second):
            reset = int(time.time()) + 1
            raise SendGridError(
                429,
                "too many requests",
                headers={
                    "X-RateLimit-Limit": str(int(acct.requests_per_second or 0)),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(reset),
                    "Retry-After": "1",
                },
            )

    def _send(self, acct: Account, body: Any) -> dict[str, Any]:
        """Validate a mail/send body and store the message; returns it."""
        if not isinstance(body, dict):
            raise SendGridError(400, "Bad Request", None)
        pers = body.get("personalizations")
        if not isinstance(pers, list) or not pers:
            raise SendGridError(
                400,
                "The personalizations field is required and must have at least one personalization.",
                "personalizations",
            )
        if len(pers) > 1000:
            raise SendGridError(
                400, "The personalizations field is limited to 1000 personalizations.", "personalizations"
            )
        sender = body.get("from")
        if not isinstance(sender, dict) or not _is_address(sender.get("email")):
            raise SendGridError(
                400,
                "The from object must be provided for every email send. It is an object that requires the "
                "email parameter, but may also contain a name parameter.",
                "from",
            )
        first = pers[0]
        to = first.get("to") if isinstance(first, dict) else None
        if (
            not isinstance(to, list)
            or not to
            or not all(isinstance(t, dict) and _is_address(t.get("email")) for t in to)
        ):
            raise SendGridError(
                400,
                "The to array is required for all personalization objects, and must have at least one "
                "email object with a valid email address.",
                "personalizations.0.to",
            )
        subject = first.get("subject") or body.get("subject")
        if not isinstance(subject, str) or not subject.strip():
            raise SendGridError(
                400,
                "The subject is required. You can get around this requirement if you use a "
                "template with a subject defined or if every personalization has a subject "
                "defined.",
                "subject",
            )
        content = body.get("content")
        if not body.get("template_id") and (
            not isinstance(content, list)
            or not content
            or not all(
                isinstance(c, dict) and c.get("type") and isinstance(c.get("value"), str) and c["value"]
                for c in content
            )
        ):
            raise SendGridError(
                400,
                "Unless a valid template_id is provided, the content parameter is required. "
                "There must be at least one defined content block. We typically suggest both "
                "text/plain and text/html blocks are included, but only one block is required.",
                "content",
            )
        headers = body.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise SendGridError(400, "Invalid type. Expected: string, given: object.", "headers")
        reserved = sorted(h for h in headers if h.lower() in RESERVED_HEADERS)
        if reserved:
            raise SendGridError(400, f"The {reserved[0]} header is reserved and cannot be set.", "headers")
        custom = {**(body.get("custom_args") or {}), **(first.get("custom_args") or {})}
        if not all(isinstance(v, str) for v in custom.values()):
            raise SendGridError(400, "Invalid type. Expected: string, given: integer.", "custom_args")
        if len(json.dumps(custom)) > 10_000:
            raise SendGridError(400, "The custom arguments may not exceed 10000 bytes.", "custom_args")
        x_message_id = secrets.token_urlsafe(16)[:22]
        domain = str(sender["email"]).rsplit("@", 1)[1]
        message_id = next((v for k, v in headers.items() if k.lower() == "message-id"), None)
        msg = {
            "x_message_id": x_message_id,
            "message_id": message_id or f"<{x_message_id}@{domain}>",
            "from": sender["email"],
            "from_name": sender.get("name"),
            "to": to[0]["email"],
            "subject": subject,
            "content": {c["type"]: c["value"] for c in content or []},
            "headers": headers,
            "custom_args": custom,
            "received_at": int(time.time()),
        }
        acct.messages[x_message_id] = msg
        return msg

    def _activity(self, acct: Account, query: str, limit: int) -> list[dict[str, Any]]:
        """Email Activity search: `field="value"` terms joined by AND."""
        terms = [t for t in re.split(r"\s+AND\s+", query.strip()) if t]
        matches = []
        for term in terms:
            found = _QUERY.fullmatch(term)
            if found is None:
                raise SendGridError(400, f"invalid query: {term}", "query")
            matches.append(found.groups())
        out = []
        for msg in acct.messages.values():
            ok = True
            for name, arg, value in matches:
                have = (
                    msg["x_message_id"]
                    if name == "msg_id"
                    else msg["to"]
                    if name == "to_email"
                    else msg["custom_args"].get(arg)
                )
                ok = ok and have == value
            if ok:
                out.append(
                    {
                        "from_email": msg["from"],
                        "msg_id": f"{msg['x_message_id']}.filterdrecv-0",
                        "subject": msg["subject"],
                        "to_email": msg["to"],
                        "status": "delivered",
                        "opens_count": 0,
                        "clicks_count": 0,
                        "last_event_time": time.strftime(
                            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(msg["received_at"])
                        ),
                    }
                )
        return out[:limit]


def _is_address(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", value) is not None


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers or {}, mimetype="application/json")


CONTROL_ACTIONS = {
    "create_account",
    "messages",
    "verification_key",
    "fail_next",
    "set_limits",
    "emit",
    "stats",
    "reset",
}
_READ_ONLY = {"messages", "verification_key", "stats"}


def _build_app(emu: SendGridEmulator) -> Flask:
    app = Flask("emulators.sendgrid")
    app.config["MAX_CONTENT_LENGTH"] = None

    @app.errorhandler(SendGridError)
    def _error(exc: SendGridError) -> Response:
        return _json(exc.body(), exc.status, exc.headers)

    @app.errorhandler(404)
    @app.errorhandler(405)
    def _no_route(exc: Exception) -> Response:
        return _json({"errors": [{"field": None, "message": "resource not found"}]}, 404)

    @app.after_request
    def _count(resp: Response) -> Response:
        if not request.path.startswith("/_emulator/"):
            with emu.lock:
                emu.counts[f"{request.method} {request.path} {resp.status_code}"] += 1
        return resp

    @app.post("/v3/mail/send")
    def mail_send() -> Response:
        acct = emu._authenticate()
        if not acct.can_send:
            raise SendGridError(403, "access forbidden")
        if (request.content_length or 0) > MAX_BYTES:
            raise SendGridError(413, "Payload Too Large")
        fault = emu._take_fault(request.path)
        with emu.lock:
            emu._admit(acct)
            body = request.get_json(silent=True)
            if fault is not None and not fault.after_accept:
                return _fault(fault)
            msg = emu._send(acct, body)
        if fault is not None and fault.hang:
            time.sleep(fault.hang)  # accepted; the caller may time out or die before it hears so
        if fault is not None and fault.status >= 400:
            return _fault(fault)
        return Response(status=202, headers={"X-Message-Id": msg["x_message_id"]})

    @app.get("/v3/messages")
    def activity() -> Response:
        acct = emu._authenticate()
        if not acct.activity:
            raise SendGridError(403, "access forbidden")
        fault = emu._take_fault(request.path)
        if fault is not None:
            return _fault(fault)
        limit = request.args.get("limit", "10")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise SendGridError(400, "limit must be an integer from 1 to 1000", "limit")
        with emu.lock:
            return _json({"messages": emu._activity(acct, request.args.get("query", ""), int(limit))})

    add_control(app, emu, CONTROL_ACTIONS, _READ_ONLY)

    return app


def _fault(fault: Fault) -> Response:
    wait = str(fault.retry_after or 1)
    headers = {"Retry-After": wait, "X-RateLimit-Remaining": "0"} if fault.status == 429 else {}
    text = {429: "too many requests", 500: "internal error", 502: "bad gateway", 503: "service unavailable"}
    return _json(
        {"errors": [{"field": None, "message": text.get(fault.status, "emulated failure")}]},
        fault.status,
        headers,
    )


def main(argv: list[str] | None = None) -> None:
    """Run in the foreground: python -m emulators.sendgrid --port N (prints the base URL, then serves)."""
    parser = argparse.ArgumentParser(description="SendGrid v3 contract emulator")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", help="create an account with this API key at startup")
    args = parser.parse_args(argv)
    emu = SendGridEmulator()
    account = emu.create_account(args.api_key)
    print(emu.start(args.port), flush=True)
    print(json.dumps(account), file=sys.stderr, flush=True)  # the key and the event verification key
    emu.serve_forever()


if __name__ == "__main__":
    main()
