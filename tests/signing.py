"""Sign and post Twilio webhooks the way Twilio does, with the fixtures' placeholder auth token."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

FIXTURE_ACCOUNT = "AC00000000000000000000000000000001"
FIXTURE_TOKEN = "0123456789abcdef0123456789abcdef"
FIXTURES = Path(__file__).parent / "fixtures" / "twilio"


def fixture_body(name: str) -> str:
    """The exact form body of a fixture, e.g. 'voice__incoming'."""
    return (FIXTURES / f"{name}.form").read_text()


def fixture_params(name: str) -> dict[str, str]:
    """A fixture's parameters as a dict."""
    return dict(parse_qsl(fixture_body(name), keep_blank_values=True))


class TwilioPoster:
    """Posts form bodies to a Flask test client with a valid X-Twilio-Signature."""

    def __init__(self, client: Any, base_url: str, token: str) -> None:
        self.client = client
        self.base_url = base_url
        self.token = token

    def post(
        self,
        path: str,
        body: str | dict[str, str],
        *,
        token: str | None = None,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """POST `body` to `path`, signed with `token` (default: the tenant's) unless `signature` is given."""
        raw = body if isinstance(body, str) else urlencode(body)
        params = MultiDict(parse_qsl(raw, keep_blank_values=True))
        url = self.base_url + path
        if signature is None:
            signature = RequestValidator(token or self.token).compute_signature(url, params)
        all_headers = {"X-Twilio-Signature": signature, **(headers or {})}
        return self.client.post(
            path,
            data=raw,
            content_type="application/x-www-form-urlencoded",
            headers=all_headers,
            base_url=self.base_url,
        )

    def fixture(self, path: str, name: str, **changes: str) -> Any:
        """POST a fixture file, optionally with some parameters changed."""
        if not changes:
            return self.post(path, fixture_body(name))
        return self.post(path, {**fixture_params(name), **changes})
