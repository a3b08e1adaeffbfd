"""Twilio REST API contract emulator: Messages (create, fetch, list), Calls (create, fetch, update);
API 2010-04-01.

Answers with Twilio's status codes, response shapes and error bodies (see /work/shared/fixtures/twilio), so
the real twilio-python SDK can talk to it through an http_client that rewrites https://api.twilio.com:

    with TwilioEmulator() as emu:
        acct = emu.create_account()  # {"account_sid": "AC...", "auth_token": "..."}
        emu.add_number(acct["account_sid"], "+15555550100")
        http = RewritingHttpClient(emu.base_url)  # a TwilioHttpClient subclass
        client = Client(acct["account_sid"], acct["auth_token"], http_client=http)

It also delivers signed message status callbacks (`deliver_status`, or `auto_status=["sent", "delivered"]`),
and plays a call's lifecycle (`advance_call`): the called party answers, the TwiML's <Dial><Number> rings a
second leg, that party answers (fetching <Number url> first, e.g. a recording announcement), the call
completes; each step POSTs Twilio's signed status, <Dial action> and recording callbacks to the URLs the call
and its TwiML named, so a bridged click-to-call runs over real HTTP. `calls(sid).update(status=...)` hangs up.
For demos, `auto_call=["ringing", "answered", "bridged", "completed"]` (`--auto-call`) plays every call.

Choices where Twilio's behaviour is undocumented or unverified (deliberate; change them here):
- To must be E.164 (leading "+") and phonenumbers.is_possible_number; 555 numbers pass. "client:" and "sip:"
  call targets are accepted as they are. Twilio also accepts national formats for some accounts; we do not.
- Validation order of messages: To (21604/21211), sender (21603/21606), body (21602/21617), opt-out (21610).
- With a MessagingServiceSid the From (if any) is not checked against the account's numbers, and the status is
  "accepted"; without a From the message's "from" stays null until a status callback picks the account's first
  number. Opted-out pairs match the From number, the MessagingServiceSid, or the account-wide blocked set.
- The per-account messages-per-second limit counts every authenticated Messages create that it admits (also
  ones then rejected with a 4xx); 429s, faults and control requests are not counted.
- Valid credentials for another account than the one in the path answer 401/20003, like wrong credentials.
- DateSent filters compare against date_sent, or date_created while the message has not been sent. DateSent
  matches the whole UTC day of its value; DateSent> and DateSent< are inclusive bounds.
- Lists are newest first. num_media is the number of MediaUrl values given.
- Calls stay `queued` until advanced. Updating Status=completed or canceled ends a queued or ringing call as
  `canceled`, an answered one as `completed` (with the child leg, <Dial action> and recording callbacks);
  a call already ended is answered unchanged. Status callbacks honour StatusCallbackEvent (none listed: only
  `completed`), carry SequenceNumber per leg, Timestamp, CallbackSource and CallDuration on completed.
  A recording's duration is the talk time; RecordingUrl is https://api.twilio.com/.../Recordings/RE...
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import math
import re
import secrets
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree

import phonenumbers
import requests
from flask import Flask, Response, g, request
from twilio.request_validator import RequestValidator

from emulators.base import ServedApp, add_control, admit

API = "/2010-04-01/Accounts/<account_sid>"
_ACCOUNT_PATH = re.compile(r"^/2010-04-01/Accounts/([^/.]+)")
_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿"
    "abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXT = set("^{}\\[~]|€\f")
_FAULT_TEXT = {
    429: (20429, "Too Many Requests"),
    500: (20500, "An internal server error has occurred"),
    502: (20502, "Bad Gateway"),
    503: (20503, "Service Unavailable"),
    504: (20504, "Gateway Timeout"),
}


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def rfc2822(dt: datetime | None) -> str | None:
    """Twilio's date format: 'Tue, 11 Mar 2025 16:12:05 +0000'."""
    return format_datetime(dt) if dt is not None else None


def e164(raw: str) -> str | None:
    """The E.164 form of a number written with a leading '+', or None if it is not a possible number."""
    text = (raw or "").strip()
    if not text.startswith("+"):
        return None
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _formatted(number: str) -> str:
    """'(555) 555-0100' for NANP numbers as in Twilio's *_formatted fields, E.164 otherwise."""
    if not number.startswith("+1"):
        return number
    parsed = phonenumbers.parse(number, None)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)


def num_segments(body: str) -> int:
    """SMS segments: GSM-7 (160, or 153 per part) unless a character needs UCS-2 (70, or 67 per part)."""
    if all(c in _GSM7 or c in _GSM7_EXT for c in body):
        units, single, part = sum(2 if c in _GSM7_EXT else 1 for c in body), 160, 153
    else:
        units, single, part = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / part)


class TwilioError(Exception):
    """A Twilio error answer: {"code", "message", "more_info", "status"}, raised while handling a request."""

    def __init__(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict[str, Any]:
        more_info = f"https://www.twilio.com/docs/errors/{self.code}"
        return {"code": self.code, "message": self.message, "more_info": more_info, "status": self.status}


def _not_found(path: str) -> TwilioError:
    return TwilioError(404, 20404, f"The requested resource {path} was not found")


@dataclass
class Account:
    """One Twilio account: credentials, incoming numbers, messages, calls, opt-outs and rate-limit window."""

    sid: str
    auth_token: str
    numbers: dict[str, str] = field(default_factory=dict)  # E.164 -> PN sid
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    opted_out: set[tuple[str, str]] = field(default_factory=set)  # (From number or MG sid, To)
    blocked: set[str] = field(default_factory=set)  # To numbers opted out for every sender
    messages_per_second: float | None = None
    window: deque[float] = field(default_factory=deque)


@dataclass
class Fault:
    """An injected failure for the next `remaining` requests whose path matches `prefix` (prefix or glob)."""

    prefix: str
    remaining: int
    status: int = 500
    code: int | None = None


class TwilioEmulator(ServedApp):
    """Owns the emulated Twilio state and its Flask app; serves it on 127.0.0.1 from a background thread."""

    name = "twilio-emulator"

    def __init__(
        self,
        auto_status: list[str] | None = None,
        auto_status_delay: float = 0.05,
        auto_call: list[str] | None = None,
        auto_call_delay: float = 2.0,
    ) -> None:
        self.auto_status = auto_status
        self.auto_status_delay = auto_status_delay
        # Demos: every created call plays these advance_call steps, auto_call_delay seconds apart.
        self.auto_call = auto_call
        self.auto_call_delay = auto_call_delay
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
            self._stats: dict[str, dict[str, Any]] = {}
            self._busy = getattr(self, "_busy", 0)  # background callbacks in flight survive a reset

    def create_account(self, account_sid: str | None = None, auth_token: str | None = None) -> dict[str, str]:
        """Create (or replace) an account; SID 'AC' + 32 hex and a 32-hex auth token are made if absent."""
        sid = account_sid or _sid("AC")
        if not re.fullmatch(r"AC[0-9a-fA-F]{32}", sid):
            raise ValueError(f"not an AccountSid: {sid!r}")
        token = auth_token or secrets.token_hex(16)
        with self.lock:
            self.accounts[sid] = Account(sid, token)
        return {"account_sid": sid, "auth_token": token}

    def add_number(self, account_sid: str, e164_number: str) -> dict[str, str]:
        """Give the account an incoming number (usable as From); returns {"sid": "PN...", "phone_number"}."""
        number = e164(e164_number)
        if number is None:
            raise ValueError(f"not an E.164 number: {e164_number!r}")
        with self.lock:
            numbers = self.accounts[account_sid].numbers
            numbers.setdefault(number, _sid("PN"))
            return {"sid": numbers[number], "phone_number": number}

    def opt_out(self, account_sid: str, to: str, from_: str | None = None) -> None:
        """Opt `to` out of messages from `from_` (a number or MessagingServiceSid), or from every sender."""
        with self.lock:
            acct = self.accounts[account_sid]
            if from_ is None:
                acct.blocked.add(e164(to) or to)
            else:
                acct.opted_out.add((e164(from_) or from_, e164(to) or to))

    def opt_in(self, account_sid: str, to: str, from_: str | None = None) -> None:
        """Undo opt_out: for one sender, or (from_ None) for every sender including account-wide blocking."""
        with self.lock:
            acct, to = self.accounts[account_sid], e164(to) or to
            if from_ is None:
                acct.blocked.discard(to)
                acct.opted_out = {pair for pair in acct.opted_out if pair[1] != to}
            else:
                acct.opted_out.discard((e164(from_) or from_, to))

    def set_limits(self, account_sid: str, messages_per_second: float | None = None) -> None:
        """Allow at most `messages_per_second` Messages creates per rolling second (None: unlimited)."""
        with self.lock:
            self.accounts[account_sid].messages_per_second = messages_per_second

    def fail_next(self, path_prefix: str, status: int = 500, count: int = 1, code: int | None = None) -> None:
        """Answer the next `count` API requests whose path starts with (or fnmatches) `path_prefix` with a
        Twilio-shaped error `status` (code 20000 + status unless `code` is given; 429 adds Retry-After: 1)."""
        with self.lock:
            self.faults.append(Fault(path_prefix, int(count), int(status), code))

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        with self.lock:
            self.faults.clear()

    # ---- inspection --------------------------------------------------------------------------------------
    def messages(self, account_sid: str) -> list[dict[str, Any]]:
        """The account's messages as stored (oldest first), dates in RFC 2822."""
        with self.lock:
            return [_plain(m) for m in self.accounts[account_sid].messages.values()]

    def calls(self, account_sid: str) -> list[dict[str, Any]]:
        """The account's calls as stored (oldest first), dates in RFC 2822."""
        with self.lock:
            return [_plain(c) for c in self.accounts[account_sid].calls.values()]

    def stats(self, account_sid: str | None = None) -> dict[str, Any]:
        """API request counts (control requests excluded), overall or for one account: total,
        by_route ("POST /2010-04-01/Accounts/{account_sid}/Messages.json") and by_status."""
        with self.lock:
            entry = self._stats.get(account_sid or "all")
            if entry is None:
                return {"total": 0, "by_route": {}, "by_status": {}}
            return {k: dict(v) if isinstance(v, Counter) else v for k, v in entry.items()}

    # ---- status callbacks --------------------------------------------------------------------------------
    def deliver_status(self, sid: str, status: str, error_code: int | str | None = None) -> int:
        """Set a message's status and POST Twilio's signed status callback to its StatusCallback URL;
        returns the HTTP status the receiver answered."""
        with self.lock:
            acct, msg = next(
                ((a, a.messages[sid]) for a in self.accounts.values() if sid in a.messages), (None, None)
            )
            if acct is None or msg is None:
                raise KeyError(f"no message {sid}")
            if not msg["status_callback"]:
                raise ValueError(f"message {sid} has no StatusCallback")
            now = datetime.now(UTC).replace(microsecond=0)
            msg.update(status=status, date_updated=now, error_code=int(error_code) if error_code else None)
            if status in ("sent", "delivered", "undelivered", "read") and msg["date_sent"] is None:
                msg["date_sent"] = now
            if msg["from"] is None and acct.numbers:
                msg["from"] = next(iter(acct.numbers))
            params = {"ErrorCode": str(error_code)} if error_code else {}
            if status in ("delivered", "undelivered"):
                params["RawDlrDoneDate"] = now.strftime("%y%m%d%H%M")
            params.update(SmsSid=sid, SmsStatus=status, MessageStatus=status, To=msg["to"])
            if msg["messaging_service_sid"]:
                params["MessagingServiceSid"] = msg["messaging_service_sid"]
            params.update(
                MessageSid=sid, AccountSid=acct.sid, From=msg["from"] or "", ApiVersion="2010-04-01"
            )
            url, token = msg["status_callback"], acct.auth_token
        headers = {
            "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
            "X-Twilio-Signature": RequestValidator(token).compute_signature(url, params),
            "I-Twilio-Idempotency-Token": secrets.token_hex(16),
            "User-Agent": "TwilioProxy/1.1",
            "X-Home-Region": "us1",
        }
        with requests.Session() as session:
            session.trust_env = False
            return session.post(url, data=urlencode(params), headers=headers, timeout=10).status_code

    def _auto_deliver(self, sid: str) -> None:
        for status in self.auto_status or []:
            time.sleep(self.auto_status_delay)
            try:
                self.deliver_status(sid, status)
            except Exception:  # a demo convenience: a receiver that is down must not kill anything
                return

    # ---- call lifecycle -----------------------------------------------------------------------------------
    def _in_background(self, fn: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self._busy += 1

        def run() -> None:
            try:
                with contextlib.suppress(Exception):  # a receiver that is down must not kill the emulator
                    fn(*args)
            finally:
                with self.lock:
                    self._busy -= 1

        threading.Thread(target=run, daemon=True).start()

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until callbacks sent in the background (after a hang-up) are delivered; True if they were."""
        deadline = time.monotonic() + float(timeout)
        while time.monotonic() < deadline:
            with self.lock:
                if not self._busy:
                    return True
            time.sleep(0.02)
        return False

    def advance_call(self, sid: str, to: str = "completed", talk: int = 30) -> list[dict[str, Any]]:
        """Play the call's lifecycle up to `to`, POSTing the signed callbacks of each step in order:
        ringing, answered (the called party; then its TwiML runs: <Dial><Number> rings the second leg),
        bridged (the second party answers, after its <Number url> TwiML), completed (everyone hangs up after
        `talk` seconds together). Other endings: busy, no-answer (the called party), unanswered (the second
        party does not answer), hangup (as calls(sid).update(status=completed) would). Returns each delivery
        as {url, status}."""
        steps = ("ringing", "answered", "bridged", "completed")
        endings = {"busy", "no-answer", "unanswered", "hangup"}
        if to not in steps and to not in endings:
            raise ValueError(f"unknown step {to!r}; one of {', '.join((*steps, *sorted(endings)))}")
        with self.lock:
            acct, call = self._find_call(sid)
            stage = call.setdefault("stage", 0)
        deliveries: list[dict[str, Any]] = []
        if call["status"] in _CALL_ENDED:
            return deliveries  # hung up already: nothing more happens
        target = (
            steps.index(to) + 1 if to in steps else {"busy": 1, "no-answer": 1, "unanswered": 2}.get(to, 0)
        )
        for n in range(stage + 1, target + 1):
            deliveries += getattr(self, f"_step_{steps[n - 1].replace('-', '_')}")(acct, call, talk)
            call["stage"] = n
        if to in endings:
            deliveries += self._end(acct, call, to, talk)
        return deliveries

    def _auto_advance(self, sid: str) -> None:
        for step in self.auto_call or []:
            time.sleep(self.auto_call_delay)
            self.advance_call(sid, step)

    def _find_call(self, sid: str) -> tuple[Account, dict[str, Any]]:
        for acct in self.accounts.values():
            if sid in acct.calls:
                return acct, acct.calls[sid]
        raise KeyError(f"no call {sid}")

    def _step_ringing(self, acct: Account, call: dict[str, Any], talk: int) -> list[dict[str, Any]]:
        out = self._parent_status(acct, call, "initiated")
        return out + self._parent_status(acct, call, "ringing")

    def _step_answered(self, acct: Account, call: dict[str, Any], talk: int) -> list[dict[str, Any]]:
        out = self._parent_status(acct, call, "in-progress", event="answered")
        call["answered_at"] = time.time()
        twiml = call["twiml"]
        if twiml is None and call["url"]:
            response = self._post(acct, call["url"], self._leg_params(acct, call, "in-progress"), out)
            twiml = response.text if response is not None else None
        call["dial"] = _parse_dial(twiml or "")
        dial = call["dial"]
        if dial is not None and dial["number"]:
            child = {
                "sid": _sid("CA"),
                "to": dial["number"],
                "from": dial["caller_id"] or call["from"],
                "seq": 0,
            }
            call["child"] = child
            out += self._child_status(acct, call, "initiated")
            out += self._child_status(acct, call, "ringing")
        return out

    def _step_bridged(self, acct: Account, call: dict[str, Any], talk: int) -> list[dict[str, Any]]:
        child, dial, out = call.get("child"), call.get("dial") or {}, []
        if child is None:
            return out
        if dial.get("number_url"):
            # <Number url>: TwiML for the called party before the parties are connected.
            params = self._child_params(acct, call, "in-progress")
            response = self._post(acct, dial["number_url"], params, out)
            child["screening"] = response.text if response is not None else None
        child["bridged_at"] = time.time()
        return out + self._child_status(acct, call, "in-progress", event="answered")

    def _step_completed(self, acct: Account, call: dict[str, Any], talk: int) -> list[dict[str, Any]]:
        return self._end(acct, call, "completed", talk)

    def _end(self, acct: Account, call: dict[str, Any], how: str, talk: int) -> list[dict[str, Any]]:
        """Hang everyone up and send the closing callbacks: the child leg, <Dial action>, the recording,
        then the parent's terminal status."""
        out: list[dict[str, Any]] = []
        if call["status"] in _CALL_ENDED:
            return out
        child, dial = call.get("child"), call.get("dial") or {}
        bridged = bool(child and child.get("bridged_at"))
        if child is not None and child.get("status") not in _CALL_ENDED:
            child_status = "completed" if bridged else ("canceled" if how == "hangup" else "no-answer")
            out += self._child_status(acct, call, child_status, duration=talk if bridged else 0)
            if dial.get("action"):
                params = self._leg_params(acct, call, "in-progress")
                params.update(
                    DialCallStatus=child_status, DialCallSid=child["sid"], DialBridged=str(bridged).lower()
                )
                params["DialCallDuration"] = str(talk if bridged else 0)
                self._post(acct, dial["action"], params, out)
            if bridged and dial.get("record") not in (None, "", "do-not-record", "false"):
                self._recording(acct, call, dial, talk, out)
        if how in ("busy", "no-answer"):
            status, duration = how, 0
        elif call.get("answered_at"):
            status, duration = "completed", (talk if bridged else 0) + 5
        else:
            status, duration = "canceled", 0
        out += self._parent_status(acct, call, status, event="completed", duration=duration)
        return out

    def _recording(
        self, acct: Account, call: dict[str, Any], dial: dict[str, Any], talk: int, out: list[dict[str, Any]]
    ) -> None:
        rec_sid = _sid("RE")
        call["recording_sid"] = rec_sid
        url = dial.get("recording_status_callback")
        events = (dial.get("recording_status_callback_event") or "completed").split()
        if not url or "completed" not in events:
            return
        params = {
            "AccountSid": acct.sid,
            "CallSid": call["sid"],  # recording callbacks name the parent leg
            "RecordingSid": rec_sid,
            "RecordingUrl": f"https://api.twilio.com/2010-04-01/Accounts/{acct.sid}/Recordings/{rec_sid}",
            "RecordingStatus": "completed",
            "RecordingDuration": str(talk),
            "RecordingChannels": "2" if "dual" in (dial.get("record") or "") else "1",
            "RecordingStartTime": rfc2822(datetime.now(UTC).replace(microsecond=0)) or "",
            "RecordingSource": "DialVerb",
        }
        self._post(acct, url, params, out)

    def _leg_params(self, acct: Account, call: dict[str, Any], status: str) -> dict[str, str]:
        return {
            "AccountSid": acct.sid,
            "ApiVersion": "2010-04-01",
            "CallSid": call["sid"],
            "CallStatus": status,
            "Direction": "outbound-api",
            "From": call["from"],
            "To": call["to"],
            "Caller": call["from"],
            "Called": call["to"],
        }

    def _child_params(self, acct: Account, call: dict[str, Any], status: str) -> dict[str, str]:
        child = call["child"]
        return {
            "AccountSid": acct.sid,
            "ApiVersion": "2010-04-01",
            "CallSid": child["sid"],
            "ParentCallSid": call["sid"],
            "CallStatus": status,
            "Direction": "outbound-dial",
            "From": child["from"],
            "To": child["to"],
            "Caller": child["from"],
            "Called": child["to"],
        }

    def _parent_status(
        self, acct: Account, call: dict[str, Any], status: str, *, event: str | None = None, duration: int = 0
    ) -> list[dict[str, Any]]:
        with self.lock:
            call["status"] = "ringing" if status == "initiated" else status
            call["date_updated"] = datetime.now(UTC).replace(microsecond=0)
            seq = call.setdefault("seq", 0)
            call["seq"] = seq + 1
        event = event or status
        wanted = call["status_callback_events"] or ["completed"]
        out: list[dict[str, Any]] = []
        if not call["status_callback"] or event not in wanted:
            return out
        params = self._leg_params(acct, call, status)
        params.update(SequenceNumber=str(seq), CallbackSource="call-progress-events")
        params["Timestamp"] = rfc2822(datetime.now(UTC).replace(microsecond=0)) or ""
        if event == "completed":
            params.update(CallDuration=str(duration), Duration=str(math.ceil(duration / 60)))
        self._post(acct, call["status_callback"], params, out)
        return out

    def _child_status(
        self, acct: Account, call: dict[str, Any], status: str, *, event: str | None = None, duration: int = 0
    ) -> list[dict[str, Any]]:
        child, dial = call["child"], call.get("dial") or {}
        child["status"] = status
        seq = child["seq"]
        child["seq"] = seq + 1
        event = event or ("completed" if status in _CALL_ENDED else status)
        out: list[dict[str, Any]] = []
        wanted = (dial.get("number_events") or "completed").split()
        if not dial.get("number_callback") or event not in wanted:
            return out
        params = self._child_params(acct, call, status)
        params.update(SequenceNumber=str(seq), CallbackSource="call-progress-events")
        params["Timestamp"] = rfc2822(datetime.now(UTC).replace(microsecond=0)) or ""
        if event == "completed":
            params["CallDuration"] = str(duration)
        self._post(acct, dial["number_callback"], params, out)
        return out

    def _post(
        self, acct: Account, url: str, params: dict[str, str], out: list[dict[str, Any]]
    ) -> requests.Response | None:
        """POST a signed callback as Twilio does; records {url, status} (status 0: unreachable)."""
        headers = {
            "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
            "X-Twilio-Signature": RequestValidator(acct.auth_token).compute_signature(url, params),
            "I-Twilio-Idempotency-Token": secrets.token_hex(16),
            "User-Agent": "TwilioProxy/1.1",
            "X-Home-Region": "us1",
        }
        try:
            with requests.Session() as session:
                session.trust_env = False
                response = session.post(url, data=urlencode(params), headers=headers, timeout=10)
        except requests.RequestException:
            out.append({"url": url, "status": 0})
            return None
        out.append({"url": url, "status": response.status_code, "params": params})
        return response

    # ---- request handling --------------------------------------------------------------------------------
    def _take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if path.startswith(fault.prefix) or fnmatch.fnmatchcase(path, fault.prefix):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _authenticate(self, account_sid: str | None) -> Account:
        auth = request.authorization
        with self.lock:
            acct = self.accounts.get(auth.username or "") if auth and auth.type == "basic" else None
        if acct is None or auth is None or not secrets.compare_digest(auth.password or "", acct.auth_token):
            raise TwilioError(401, 20003, "Authenticate")
        if account_sid is not None and account_sid != acct.sid:
            raise TwilioError(401, 20003, "Authenticate")
        return acct

    def _admit_message(self, acct: Account) -> None:
        if not admit(acct.window, acct.messages_per_second):
            raise TwilioError(429, 20429, "Too Many Requests", {"Retry-After": "1"})

    def _record(self, account_sid: str | None, route: str, status: int) -> None:
        with self.lock:
            for key in {"all", account_sid or "all"}:
                entry = self._stats.setdefault(
                    key, {"total": 0, "by_route": Counter(), "by_status": Counter()}
                )
                entry["total"] += 1
                entry["by_route"][route] += 1
                entry["by_status"][status] += 1

    def _create_message(self, acct: Account, form: Any) -> dict[str, Any]:
        to_raw, from_raw = form.get("To", ""), form.get("From", "")
        service, body = form.get("MessagingServiceSid", ""), form.get("Body", "")
        media = [u for u in form.getlist("MediaUrl") if u]
        if not to_raw:
            raise TwilioError(400, 21604, "A 'To' phone number is required.")
        to = e164(to_raw)
        if to is None:
            raise TwilioError(400, 21211, f"The 'To' number {to_raw} is not a valid phone number.")
        if service and not re.fullmatch(r"MG[0-9a-fA-F]{32}", service):
            raise TwilioError(400, 21701, f"The Messaging Service Sid {service} is invalid.")
        sender = e164(from_raw) if from_raw else None
        if not service:
            if not from_raw:
                raise TwilioError(400, 21603, "A 'From' phone number is required.")
            if sender not in acct.numbers:
                message = (
                    f"The From phone number {from_raw} is not a valid, SMS-capable inbound phone number or "
                    "short code for your account."
                )
                raise TwilioError(400, 21606, message)
        if not body and not media:
            raise TwilioError(400, 21602, "Message body is required")
        if len(body) > 1600:
            raise TwilioError(400, 21617, "The concatenated message body exceeds the 1600 character limit")
        senders = {s for s in (sender or from_raw or None, service or None) if s}
        if to in acct.blocked or any((s, to) in acct.opted_out for s in senders):
            raise TwilioError(400, 21610, "Attempt to send to unsubscribed recipient")
        now = datetime.now(UTC).replace(microsecond=0)
        msg = {"sid": _sid("SM"), "to": to, "from": sender or from_raw or None, "body": body}
        msg.update(media_urls=media, status="accepted" if service else "queued")
        msg.update(messaging_service_sid=service or None, status_callback=form.get("StatusCallback") or None)
        msg.update(date_created=now, date_updated=now, date_sent=None, error_code=None)
        acct.messages[msg["sid"]] = msg
        return msg

    def _create_call(self, acct: Account, form: Any) -> dict[str, Any]:
        to_raw, from_raw = form.get("To", ""), form.get("From", "")
        if not to_raw:
            raise TwilioError(400, 21201, "No 'To' number is specified")
        to = to_raw if to_raw.startswith(("client:", "sip:")) else e164(to_raw)
        if to is None:
            raise TwilioError(400, 21211, f"The 'To' number {to_raw} is not a valid phone number.")
        if not from_raw:
            raise TwilioError(400, 21213, "No 'From' number is specified")
        sender = e164(from_raw)
        if sender not in acct.numbers:
            message = (
                f"The source phone number provided, {from_raw}, is not yet verified for your account. You "
                "may only make calls from phone numbers that you've verified or purchased from Twilio."
            )
            raise TwilioError(400, 21210, message)
        if not (form.get("Url") or form.get("Twiml") or form.get("ApplicationSid")):
            raise TwilioError(400, 21205, "Url parameter is required.")
        now = datetime.now(UTC).replace(microsecond=0)
        call = {
            "sid": _sid("CA"),
            "to": to,
            "from": sender,
            "status": "queued",
            "url": form.get("Url") or None,
        }
        call.update(twiml=form.get("Twiml") or None, status_callback=form.get("StatusCallback") or None)
        call.update(status_callback_events=form.getlist("StatusCallbackEvent"), record=form.get("Record"))
        call.update(timeout=form.get("Timeout"), date_created=now, date_updated=now)
        call["phone_number_sid"] = acct.numbers[sender]
        acct.calls[call["sid"]] = call
        return call

    def _list_messages(self, acct: Account, args: Any) -> dict[str, Any]:
        def when(name: str) -> datetime | None:
            raw = args.get(name)
            if not raw:
                return None
            try:
                parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise TwilioError(400, 20001, f"Invalid {name}: {raw}") from None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

        day, after, before = when("DateSent"), when("DateSent>"), when("DateSent<")
        to = e164(args["To"]) or args["To"] if args.get("To") else None
        sender = e164(args["From"]) or args["From"] if args.get("From") else None
        found = []
        for msg in reversed(acct.messages.values()):
            sent = msg["date_sent"] or msg["date_created"]
            if (to and msg["to"] != to) or (sender and msg["from"] != sender):
                continue
            if day and sent.astimezone(UTC).date() != day.astimezone(UTC).date():
                continue
            if (after and sent < after) or (before and sent > before):
                continue
            found.append(msg)
        try:
            size, page = min(max(int(args.get("PageSize", 50)), 1), 1000), max(int(args.get("Page", 0)), 0)
        except ValueError:
            raise TwilioError(400, 20001, "Invalid PageSize or Page") from None
        base = f"/2010-04-01/Accounts/{acct.sid}/Messages.json"
        filters = [(k, v) for k, v in args.items(multi=True) if k not in ("PageSize", "Page", "PageToken")]

        def uri(n: int) -> str:
            return base + "?" + urlencode([*filters, ("PageSize", size), ("Page", n)])

        chunk = found[page * size : (page + 1) * size]
        more = len(found) > (page + 1) * size
        out = {"first_page_uri": uri(0), "end": page * size + max(len(chunk) - 1, 0)}
        out.update(
            previous_page_uri=uri(page - 1) if page else None,
            messages=[_message_json(acct, m) for m in chunk],
        )
        out.update(
            uri=uri(page), page_size=size, start=page * size, next_page_uri=uri(page + 1) if more else None
        )
        return {**out, "page": page}


_CALL_ENDED = ("completed", "busy", "no-answer", "failed", "canceled")


def _parse_dial(twiml: str) -> dict[str, Any] | None:
    """The first <Dial> of a TwiML document and its <Number>: what the emulated call does on answer."""
    try:
        root = ElementTree.fromstring(twiml)
    except ElementTree.ParseError:
        return None
    dial = root.find("Dial")
    if dial is None:
        return None
    number = dial.find("Number")
    target = (number.text or "").strip() if number is not None else (dial.text or "").strip()
    attrs = number.attrib if number is not None else {}
    return {
        "number": target or None,
        "caller_id": dial.get("callerId"),
        "action": dial.get("action"),
        "record": dial.get("record"),
        "answer_on_bridge": dial.get("answerOnBridge") == "true",
        "timeout": dial.get("timeout"),
        "recording_status_callback": dial.get("recordingStatusCallback"),
        "recording_status_callback_event": dial.get("recordingStatusCallbackEvent"),
        "number_callback": attrs.get("statusCallback"),
        "number_events": attrs.get("statusCallbackEvent"),
        "number_url": attrs.get("url"),
    }


def _plain(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rfc2822(v) if isinstance(v, datetime) else v for k, v in rec.items()}


def _message_json(acct: Account, msg: dict[str, Any]) -> dict[str, Any]:
    uri = f"/2010-04-01/Accounts/{acct.sid}/Messages/{msg['sid']}"
    out = {"sid": msg["sid"], "date_created": rfc2822(msg["date_created"])}
    out.update(date_updated=rfc2822(msg["date_updated"]), date_sent=rfc2822(msg["date_sent"]))
    out.update({"account_sid": acct.sid, "to": msg["to"], "from": msg["from"]})
    out.update(messaging_service_sid=msg["messaging_service_sid"], body=msg["body"], status=msg["status"])
    out.update(num_segments=str(num_segments(msg["body"]) if msg["body"] else 1))
    out.update(num_media=str(len(msg["media_urls"])), direction="outbound-api", api_version="2010-04-01")
    out.update(price=None, price_unit="USD", error_code=msg["error_code"], error_message=None)
    return {**out, "uri": uri + ".json", "subresource_uris": {"media": uri + "/Media.json"}}


_CALL_SUBRESOURCES = (
    "feedback user_defined_messages notifications recordings streams payments "
    "user_defined_message_subscriptions siprec events"
)


def _call_json(acct: Account, call: dict[str, Any], created: bool = False) -> dict[str, Any]:
    uri = f"/2010-04-01/Accounts/{acct.sid}/Calls/{call['sid']}"
    camel = {n: "".join(p.capitalize() for p in n.split("_")) for n in _CALL_SUBRESOURCES.split()}
    subresources = {n: f"{uri}/{c}.json" for n, c in camel.items()}
    subresources["feedback_summaries"] = f"/2010-04-01/Accounts/{acct.sid}/Calls/FeedbackSummary.json"
    dates = (None, None) if created else (rfc2822(call["date_updated"]), rfc2822(call["date_created"]))
    out = {"date_updated": dates[0], "price_unit": "USD", "parent_call_sid": None, "caller_name": None}
    out.update({"duration": None, "from": call["from"], "to": call["to"], "annotation": None})
    out.update(answered_by=None, sid=call["sid"], queue_time="0", price=None, api_version="2010-04-01")
    out.update(status=call["status"], direction="outbound-api", start_time=None, date_created=dates[1])
    out.update(from_formatted=_formatted(call["from"]), group_sid=None, trunk_sid=None, forwarded_from=None)
    out.update(uri=uri + ".json", account_sid=acct.sid, end_time=None)
    to_formatted = call["to"] if call["to"].startswith(("client:", "sip:")) else _formatted(call["to"])
    out.update(to_formatted=to_formatted, phone_number_sid=call["phone_number_sid"])
    return {**out, "subresource_uris": subresources}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers or {}, content_type="application/json; charset=utf-8")


# Control endpoints: POST /_emulator/<action> with the method's keyword arguments as a JSON object.
CONTROL_ACTIONS = {
    "create_account", "add_number", "opt_out", "opt_in", "set_limits", "fail_next", "clear_faults", "reset",
    "deliver_status", "messages", "calls", "stats", "advance_call", "settle",
}  # fmt: skip
_READ_ONLY = {"messages", "calls", "stats"}  # also answered on GET, with query arguments


def _build_app(emu: TwilioEmulator) -> Flask:
    """Register every route up front (Flask refuses new routes after the first request)."""
    app = Flask("emulators.twilio")
    app.extensions["twilio_emulator"] = emu

    def api(rule: str, method: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a Twilio route: handler(account, **path params) returns (body, status)."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            def view(account_sid: str, **kwargs: Any) -> Response:
                with emu.lock:
                    body, status = fn(g.account, **kwargs)
                return _json(body, status)

            app.add_url_rule(API + rule, fn.__name__, view, methods=[method])
            return fn

        return register

    @app.errorhandler(TwilioError)
    def _twilio_error(exc: TwilioError) -> Response:
        return _json(exc.body(), exc.status, exc.headers)

    @app.errorhandler(404)
    @app.errorhandler(405)
    def _no_route(exc: Exception) -> Response:
        return _json(_not_found(request.path).body(), 404)

    @app.before_request
    def _gate() -> Response | None:
        if request.path.startswith("/_emulator/"):
            return None
        match = _ACCOUNT_PATH.match(request.path)
        g.account_sid = match.group(1) if match else None
        fault = emu._take_fault(request.path)
        if fault is not None:
            code, text = _FAULT_TEXT.get(fault.status, (20000 + fault.status, "Emulated failure"))
            headers = {"Retry-After": "1"} if fault.status == 429 else {}
            return _json(TwilioError(fault.status, fault.code or code, text).body(), fault.status, headers)
        g.account = emu._authenticate(g.account_sid)
        return None

    @app.after_request
    def _finish(resp: Response) -> Response:
        resp.headers["Twilio-Request-Id"] = _sid("RQ")
        if not request.path.startswith("/_emulator/"):
            rule = request.url_rule.rule if request.url_rule else request.path
            route = request.method + " " + re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)
            emu._record(g.get("account_sid"), route, resp.status_code)
        return resp

    @api("/Messages.json", "POST")
    def create_message(acct: Account) -> tuple[dict[str, Any], int]:
        emu._admit_message(acct)
        msg = emu._create_message(acct, request.form)
        if emu.auto_status and msg["status_callback"]:
            threading.Thread(target=emu._auto_deliver, args=(msg["sid"],), daemon=True).start()
        return _message_json(acct, msg), 201

    @api("/Messages/<sid>.json", "GET")
    def fetch_message(acct: Account, sid: str) -> tuple[dict[str, Any], int]:
        if sid not in acct.messages:
            raise _not_found(request.path)
        return _message_json(acct, acct.messages[sid]), 200

    @api("/Messages.json", "GET")
    def list_messages(acct: Account) -> tuple[dict[str, Any], int]:
        return emu._list_messages(acct, request.args), 200

    @api("/Calls.json", "POST")
    def create_call(acct: Account) -> tuple[dict[str, Any], int]:
        call = emu._create_call(acct, request.form)
        if emu.auto_call:
            emu._in_background(emu._auto_advance, call["sid"])
        return _call_json(acct, call, created=True), 201

    @api("/Calls/<sid>.json", "GET")
    def fetch_call(acct: Account, sid: str) -> tuple[dict[str, Any], int]:
        if sid not in acct.calls:
            raise _not_found(request.path)
        return _call_json(acct, acct.calls[sid]), 200

    @api("/Calls/<sid>.json", "POST")
    def update_call(acct: Account, sid: str) -> tuple[dict[str, Any], int]:
        if sid not in acct.calls:
            raise _not_found(request.path)
        status = request.form.get("Status")
        if status not in (None, "", "completed", "canceled"):
            raise TwilioError(400, 20001, f"Invalid Status {status}")
        call = acct.calls[sid]
        if status and call["status"] not in _CALL_ENDED:
            # The callbacks go out after this answer, as Twilio's would: the caller learns the outcome from
            # them (settle() waits for them in tests). The answer already shows the call's final status.
            final = "completed" if call.get("answered_at") else "canceled"
            emu._in_background(emu.advance_call, sid, "hangup")
            return _call_json(acct, {**call, "status": final}), 200
        return _call_json(acct, call), 200

    add_control(app, emu, CONTROL_ACTIONS, _READ_ONLY)

    return app


def main(argv: list[str] | None = None) -> None:
    """Run in the foreground: python -m emulators.twilio --port N (prints the base URL, then serves)."""
    parser = argparse.ArgumentParser(description="Twilio REST API contract emulator")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--account-sid", help="create this account at startup")
    parser.add_argument("--auth-token", help="auth token of the startup account")
    parser.add_argument("--number", action="append", default=[], help="E.164 number of the startup account")
    parser.add_argument("--auto-status", help="comma-separated statuses to call back, e.g. sent,delivered")
    parser.add_argument(
        "--auto-call", help="comma-separated steps every call plays, e.g. ringing,answered,bridged,completed"
    )
    parser.add_argument("--auto-call-delay", type=float, default=2.0, help="seconds between those steps")
    args = parser.parse_args(argv)
    emu = TwilioEmulator(
        auto_status=args.auto_status.split(",") if args.auto_status else None,
        auto_call=args.auto_call.split(",") if args.auto_call else None,
        auto_call_delay=args.auto_call_delay,
    )
    acct = None
    if args.account_sid or args.auth_token or args.number:
        acct = emu.create_account(args.account_sid, args.auth_token)
        for number in args.number:
            emu.add_number(acct["account_sid"], number)
    print(emu.start(args.port), flush=True)
    if acct is not None and not (args.account_sid and args.auth_token):
        print(json.dumps(acct), file=sys.stderr, flush=True)  # generated credentials
    emu.serve_forever()


if __name__ == "__main__":
    main()
