"""A first end-to-end smoke test."""

from app.core.models import Interaction, LocalActivity
from tests.conftest import count


def test_incoming_call_is_recorded_and_synced(tenant, twilio, run_worker):
    r = twilio.fixture("/webhooks/twilio/voice", "voice__incoming")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert b"<Dial" in r.data
    assert count(Interaction) == 1
    assert run_worker() == 1
    assert count(LocalActivity) == 1
