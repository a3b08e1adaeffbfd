"""webhooks.base.form_lists: the form fields copied once per request (issue 9), as werkzeug parses them.

Unit cases compare it with `request.form.to_dict(flat=False)` on awkward bodies; the end-to-end cases post
signed Twilio webhooks whose fields repeat or are blank, which must verify, parse and store as sent.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import pytest
from flask import Flask
from sqlalchemy import select
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.test import EnvironBuilder

from app.core import db
from app.core.models import Interaction, Tenant, WebhookEvent
from tests.conftest import count
from tests.signing import TwilioPoster, fixture_body
from webhooks.base import first_values, form_lists

SMS = "/webhooks/twilio/sms"

BODIES = [
    "",
    "a=1",
    "a=1&a=2&b=&c",
    "a=1&&b=2&",
    "sp+ace=x+y&plus=%2B1555&pct=100%25",
    "name=%E2%9C%93&bad=%FF%FE&half=%E2%9C",
    "semi=1;b=2",
    "eq=a=b&=novalue&%3D=k",
    "upper=%4a%4A&lone=%&lone2=%z",
]


def _request(body: bytes, content_type: str = "application/x-www-form-urlencoded", **config: Any) -> Any:
    app = Flask(__name__)
    app.config.update(config)
    environ = EnvironBuilder(method="POST", data=body, content_type=content_type).get_environ()
    return app, environ


@pytest.mark.parametrize("body", BODIES)
def test_form_lists_matches_werkzeug(body: str) -> None:
    app, environ = _request(body.encode())
    ours = form_lists(app.request_class(environ))
    app, environ = _request(body.encode())
    theirs = app.request_class(environ).form.to_dict(flat=False)
    assert ours == theirs
    assert list(ours) == list(theirs)  # the order the fields were sent in, stored as the payload
    assert first_values(ours) == app.request_class(_request(body.encode())[1]).form.to_dict(flat=True)


def test_a_body_that_is_not_utf8_has_no_fields_as_with_werkzeug() -> None:
    app, environ = _request(b"a=\xff\xfe&b=2")
    assert app.request_class(environ).form.to_dict(flat=False) == {}
    app, environ = _request(b"a=\xff\xfe&b=2")
    assert form_lists(app.request_class(environ)) == {}


def test_form_lists_is_parsed_once_and_leaves_request_form_working() -> None:
    app, environ = _request(b"a=1&a=2")
    request = app.request_class(environ)
    assert form_lists(request) is form_lists(request)
    assert request.form.getlist("a") == ["1", "2"]


def test_other_content_types_go_through_werkzeug() -> None:
    app, environ = _request(b"a=1", content_type="text/plain")
    assert form_lists(app.request_class(environ)) == {}
    boundary = "XyZ"
    multipart = f'--{boundary}\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--{boundary}--\r\n'
    app, environ = _request(multipart.encode(), content_type=f"multipart/form-data; boundary={boundary}")
    assert form_lists(app.request_class(environ)) == {"a": ["1"]}


def test_a_body_over_max_content_length_is_refused() -> None:
    """The app's MAX_CONTENT_LENGTH (read in an app context, as in the webhook's) is 413 here too."""
    for parse in (form_lists, lambda r: r.form):
        app, environ = _request(b"a=" + b"x" * 100, MAX_CONTENT_LENGTH=50)
        with app.app_context(), pytest.raises(RequestEntityTooLarge):
            parse(app.request_class(environ))


def test_repeated_and_blank_fields_verify_and_are_stored_as_sent(
    tenant: Tenant, twilio: TwilioPoster
) -> None:
    body = fixture_body("sms__inbound") + "&Extra=one&Extra=two&Extra=&Empty=&Bare"
    r = twilio.post(SMS, body)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert count(Interaction) == 1
    with db.transaction() as s:
        payload = s.scalars(select(WebhookEvent.payload)).one()
    assert payload["Extra"] == ["one", "two", ""]
    assert payload["Empty"] == [""] and payload["Bare"] == [""]


def test_a_repeated_value_dropped_after_signing_is_forbidden(tenant: Tenant, twilio: TwilioPoster) -> None:
    """Every value of a repeated field is signed: one dropped on the way fails the signature."""
    body = fixture_body("sms__inbound") + "&Extra=one&Extra=two"
    params = MultiDict(parse_qsl(body, keep_blank_values=True))
    signature = RequestValidator(twilio.token).compute_signature(twilio.base_url + SMS, params)
    assert twilio.post(SMS, body, signature=signature).status_code == 200
    r = twilio.post(SMS, body.replace("&Extra=two", ""), signature=signature)
    assert r.status_code == 403
