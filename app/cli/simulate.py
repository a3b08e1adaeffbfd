"""Realistic, signed Twilio webhook traffic: what `switchboard simulate`, the tests and the bench send.

Each scenario is the list of requests Twilio makes for one call or text, with the parameters Twilio
sends (shapes follow the captured payloads in tests/fixtures/twilio). Deliveries are signed with the
tenant's auth token exactly as Twilio signs them, so they pass the real verification path.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from twilio.request_validator import RequestValidator


@dataclass(frozen=True)
class Post:
    """One webhook request: path (with query) and form parameters."""

    path: str
    params: dict[str, str]


@dataclass
class Scenario:
    """The requests of one call or text; `first` must be delivered before the rest (Twilio waits for it)."""

    name: str
    first: list[Post]
    rest: list[Post] = field(default_factory=list)

    def deliveries(self, rng: random.Random | None = None, duplicates: int = 0) -> list[Post]:
        """The requests in a plausible arrival order: `first`, then the rest shuffled, some repeated."""
        rest = list(self.rest)
        if rng is not None:
            rest += [rng.choice(self.rest) for _ in range(duplicates)] if self.rest else []
            rng.shuffle(rest)
        return self.first + rest


def sid(prefix: str, n: int | None = None) -> str:
    """A Twilio-shaped SID (two letters and 32 hex digits), random unless `n` is given."""
    return prefix + (f"{n:032x}" if n is not None else secrets.token_hex(16))


def _ts(at: datetime) -> str:
    return format_datetime(at.astimezone(UTC))


def _call_base(account: str, call_sid: str, frm: str, to: str, direction: str) -> dict[str, str]:
    return {
        "AccountSid": account,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "Called": to,
        "Caller": frm,
        "Direction": direction,
        "From": frm,
        "To": to,
        "FromCountry": "US",
        "ToCountry": "US",
    }


def _recording(
    account: str, parent: str, rec: str, status: str, seconds: int, source: str, started: datetime | None
) -> Post:
    """A recording status callback (CallSid names the parent leg, as Twilio sends it)."""
    params = {
        "AccountSid": account,
        "CallSid": parent,
        "RecordingSid": rec,
        "RecordingStatus": status,
        "RecordingDuration": str(seconds),
        "RecordingChannels": "2" if source == "DialVerb" else "1",
        "RecordingSource": source,
        "ErrorCode": "0",
    }
    if status == "completed":
        params["RecordingUrl"] = f"https://api.twilio.com/2010-04-01/Accounts/{account}/Recordings/{rec}"
    if started is not None:
        params["RecordingStartTime"] = _ts(started)
    return Post("/webhooks/twilio/recording", params)


def inbound_call(
    account: str,
    caller: str,
    our_number: str,
    rep: str,
    outcome: str,
    *,
    talk: int = 95,
    message: int = 14,
    at: datetime | None = None,
) -> Scenario:
    """An incoming call rung through to `rep`: outcome is answered, missed or voicemail."""
    # By default the call has just ended: it started as long ago as it lasted.
    ring = 20
    lasted = {"answered": talk + 6, "voicemail": ring + 6 + message}.get(outcome, ring + 4)
    at = at or datetime.now(UTC) - timedelta(seconds=lasted + 1)
    parent, child, rec = sid("CA"), sid("CA"), sid("RE")
    base = _call_base(account, parent, caller, our_number, "inbound")
    first = [Post("/webhooks/twilio/voice", {**base, "CallStatus": "ringing", "CallToken": "%7B%7D"})]
    leg = _call_base(account, child, caller, rep, "outbound-dial") | {
        "ParentCallSid": parent,
        "CallbackSource": "call-progress-events",
    }
    rest = [
        Post(
            "/webhooks/twilio/call-status",
            leg | {"CallStatus": "initiated", "SequenceNumber": "0", "Timestamp": _ts(at)},
        ),
        Post(
            "/webhooks/twilio/call-status",
            leg
            | {"CallStatus": "ringing", "SequenceNumber": "1", "Timestamp": _ts(at + timedelta(seconds=1))},
        ),
    ]
    ring = 20
    if outcome == "answered":
        end = at + timedelta(seconds=5 + talk)
        url = f"https://api.twilio.com/2010-04-01/Accounts/{account}/Recordings/{rec}"
        rest += [
            Post(
                "/webhooks/twilio/call-status",
                leg
                | {
                    "CallStatus": "in-progress",
                    "SequenceNumber": "2",
                    "Timestamp": _ts(at + timedelta(seconds=5)),
                },
            ),
            Post(
                "/webhooks/twilio/call-status",
                leg
                | {
                    "CallStatus": "completed",
                    "SequenceNumber": "3",
                    "CallDuration": str(talk),
                    "Duration": str(-(-talk // 60)),
                    "Timestamp": _ts(end),
                },
            ),
            Post(
                "/webhooks/twilio/call-status?event=dial",
                base
                | {
                    "CallStatus": "in-progress",
                    "DialCallSid": child,
                    "DialCallStatus": "completed",
                    "DialCallDuration": str(talk),
                    "DialBridged": "true",
                    "RecordingUrl": url,
                    "RecordingSid": rec,
                    "RecordingDuration": str(talk),
                },
            ),
            _recording(account, parent, rec, "completed", talk, "DialVerb", at + timedelta(seconds=5)),
        ]
        total = talk + 6
    else:
        rest += [
            Post(
                "/webhooks/twilio/call-status",
                leg
                | {
                    "CallStatus": "no-answer",
                    "SequenceNumber": "2",
                    "Timestamp": _ts(at + timedelta(seconds=ring)),
                },
            ),
            Post(
                "/webhooks/twilio/call-status?event=dial",
                base
                | {
                    "CallStatus": "in-progress",
                    "DialCallSid": child,
                    "DialCallStatus": "no-answer",
                    "DialBridged": "false",
                },
            ),
        ]
        if outcome == "voicemail":
            url = f"https://api.twilio.com/2010-04-01/Accounts/{account}/Recordings/{rec}"
            rest += [
                Post(
                    "/webhooks/twilio/call-status?event=record",
                    base
                    | {
                        "CallStatus": "completed",
                        "RecordingSid": rec,
                        "RecordingUrl": url,
                        "RecordingDuration": str(message),
                        "Digits": "hangup",
                    },
                ),
                _recording(
                    account, parent, rec, "completed", message, "RecordVerb", at + timedelta(seconds=ring + 6)
                ),
            ]
            total = ring + 6 + message
        else:
            rest.append(_recording(account, parent, rec, "absent", 0, "RecordVerb", None))
            total = ring + 4
    rest.append(
        Post(
            "/webhooks/twilio/call-status",
            base
            | {
                "CallStatus": "completed",
                "SequenceNumber": "1",
                "CallDuration": str(total),
                "Duration": str(-(-total // 60)),
                "CallbackSource": "call-progress-events",
                "Timestamp": _ts(at + timedelta(seconds=total)),
            },
        )
    )
    return Scenario(f"{outcome} call from {caller}", first, rest)


def inbound_sms(account: str, sender: str, our_number: str, body: str, media: Iterable[str] = ()) -> Scenario:
    """A text (or MMS, with media URLs) from a customer."""
    message = sid("MM" if media else "SM")
    params = {
        "AccountSid": account,
        "ApiVersion": "2010-04-01",
        "MessageSid": message,
        "SmsMessageSid": message,
        "SmsSid": message,
        "SmsStatus": "received",
        "From": sender,
        "To": our_number,
        "Body": body,
        "NumSegments": "1",
        "FromCountry": "US",
        "ToCountry": "US",
    }
    urls = list(media)
    params["NumMedia"] = str(len(urls))
    for i, url in enumerate(urls):
        params[f"MediaUrl{i}"] = url
        params[f"MediaContentType{i}"] = "image/jpeg"
    return Scenario(f"text from {sender}", [Post("/webhooks/twilio/sms", params)])


def outbound_sms(
    account: str, our_number: str, recipient: str, final: str = "delivered", error_code: str | None = None
) -> Scenario:
    """Status callbacks of a text we sent: queued, sent, then delivered / undelivered / failed."""
    message = sid("SM")
    base = {
        "AccountSid": account,
        "ApiVersion": "2010-04-01",
        "MessageSid": message,
        "SmsSid": message,
        "From": our_number,
        "To": recipient,
        "MessagingServiceSid": sid("MG", 1),
    }
    steps = ["queued", "sent", final] if final != "failed" else ["queued", final]
    posts = []
    for status in steps:
        params = base | {"MessageStatus": status, "SmsStatus": status}
        if status in ("failed", "undelivered") and error_code:
            params["ErrorCode"] = error_code
        posts.append(Post("/webhooks/twilio/sms-status", params))
    return Scenario(f"text to {recipient} ({final})", [], posts)


def sign(url: str, params: dict[str, str], token: str) -> str:
    """X-Twilio-Signature for a form POST to `url`, computed the way Twilio computes it."""
    return RequestValidator(token).compute_signature(url, params)


def deliver(base_url: str, token: str, posts: Iterable[Post], timeout: float = 10.0) -> list[int]:
    """POST each request, signed, to a running service; returns the status codes."""
    import requests

    codes = []
    with requests.Session() as http:
        http.trust_env = False  # never send webhook traffic through a proxy from the environment
        for post in posts:
            url = base_url.rstrip("/") + post.path
            headers = {"X-Twilio-Signature": sign(url, post.params, token)}
            codes.append(http.post(url, data=post.params, headers=headers, timeout=timeout).status_code)
    return codes
