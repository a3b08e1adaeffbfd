"""Operational behaviour: database outages, proxies, and what the logs may (not) contain."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict

from app.core import db
from app.core.models import Interaction
from app.web import create_app
from tests.conftest import count
from tests.signing import FIXTURE_TOKEN, TwilioPoster, fixture_body, fixture_params


def test_database_down_is_503_with_retry_after(settings, tenant):
    broken = create_app(settings.with_(database_url="postgresql://postgres@127.0.0.1:1/nothing"))
    poster = TwilioPoster(broken.test_client(), "https://switchboard.example.com", FIXTURE_TOKEN)
    r = poster.fixture("/webhooks/twilio/sms", "sms__inbound")
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert broken.test_client().get("/readyz").status_code == 503
    create_app(settings)
    assert count(Interaction) == 0


def test_signature_checked_against_forwarded_scheme_and_host(settings, tenant):
    """Behind a TLS-terminating proxy: Twilio signed https://sb.example.org/..., we are reached over http."""
    body = fixture_body("sms__inbound")
    signature = RequestValidator(FIXTURE_TOKEN).compute_signature(
        "https://sb.example.org/webhooks/twilio/sms", MultiDict(parse_qsl(body, keep_blank_values=True))
    )
    headers = {
        "X-Twilio-Signature": signature,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "sb.example.org",
    }

    def post(trust_proxy_hops: int) -> int:
        client = create_app(
            settings.with_(public_base_url=None, trust_proxy_hops=trust_proxy_hops)
        ).test_client()
        return client.post(
            "/webhooks/twilio/sms",
            data=body,
            content_type="application/x-www-form-urlencoded",
            headers=headers,
            base_url="http://10.0.0.5:8000",
        ).status_code

    assert post(trust_proxy_hops=0) == 403  # forwarded headers are ignored unless trusted
    assert count(Interaction) == 0
    assert post(trust_proxy_hops=1) == 200
    assert count(Interaction) == 1


def test_logs_hold_no_tokens_and_no_message_bodies(tenant, twilio, run_worker, caplog):
    caplog.set_level(logging.DEBUG)
    twilio.fixture("/webhooks/twilio/sms", "sms__inbound")
    twilio.post("/webhooks/twilio/sms", fixture_params("sms__inbound"), token="wrong-token")  # a refusal too
    run_worker()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "webhook.accepted" in text and "webhook.rejected" in text and "crm.synced" in text
    assert FIXTURE_TOKEN not in text
    assert fixture_params("sms__inbound")["Body"] not in text
    assert "can someone call me back" not in text
    with db.transaction() as s:
        assert s.query(Interaction).count() == 1
