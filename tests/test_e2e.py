"""End to end: signed webhooks -> ledger -> RQ -> real worker -> built-in CRM, with shuffled and duplicated
deliveries, and the worker run at random points in between."""

from __future__ import annotations

import random
from typing import Any

import pytest
from sqlalchemy import select

from app.cli import simulate
from app.core import db
from app.core.models import Interaction, LocalActivity, LocalContact, Tenant, User, WebhookEvent
from tests.conftest import count
from tests.signing import FIXTURE_ACCOUNT, fixture_params

OUR_NUMBER = "+15555550100"
JORDAN = "+15555550123"


def deliver(
    twilio: Any, posts: list[simulate.Post], run_worker: Any = None, rng: random.Random | None = None
) -> None:
    """Post each request (asserting Twilio would be satisfied), draining the queue at random moments."""
    for post in posts:
        r = twilio.post(post.path, post.params)
        assert r.status_code in (200, 204), (post.path, r.status_code, r.get_data(as_text=True))
        if run_worker is not None and rng is not None and rng.random() < 0.3:
            run_worker()


def only_interaction() -> Interaction:
    with db.transaction() as s:
        rows = list(s.scalars(select(Interaction)))
    assert len(rows) == 1
    return rows[0]


def activities() -> list[LocalActivity]:
    with db.transaction() as s:
        return list(s.scalars(select(LocalActivity).order_by(LocalActivity.id)))


def user_id(email: str) -> int:
    with db.transaction() as s:
        return s.scalar(select(User.id).where(User.email == email))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_answered_inbound_call_shuffled_and_duplicated_logs_one_activity(tenant, twilio, run_worker, seed):
    rng = random.Random(seed)
    scenario = simulate.inbound_call(FIXTURE_ACCOUNT, JORDAN, OUR_NUMBER, "+15555550198", "answered", talk=95)
    deliver(twilio, scenario.deliveries(rng, duplicates=4), run_worker, rng)
    run_worker()

    row = only_interaction()
    assert (row.status, row.direction, row.channel) == ("completed", "inbound", "call")
    assert row.duration_seconds == 95
    assert row.recording_url and row.recording_url.startswith("https://api.twilio.com/")
    assert row.sync_state == "synced" and row.synced_version == row.version
    assert row.user_id == user_id("sam@acme.example")  # Jordan's owner was rung
    [activity] = activities()
    assert activity.external_id == f"switchboard-interaction-{row.id}"
    assert (activity.status, activity.duration_seconds, activity.recording_url) == (
        "completed",
        95,
        row.recording_url,
    )
    assert activity.owner_id == "sam@acme.example"
    assert str(activity.contact_id) == row.crm_contact_id
    assert count(LocalContact) == 1  # Jordan, matched, not duplicated
    assert count(WebhookEvent) == len(scenario.first) + len(scenario.rest)  # duplicates recorded nothing


def test_click_to_call_fixture_story(tenant, twilio, run_worker):
    """The captured click-to-call: rep leg CA…21 (outbound-api to the rep), customer leg CA…22."""
    story = [
        ("/webhooks/twilio/call-status", "voice__status_initiated"),
        ("/webhooks/twilio/call-status", "voice__status_ringing"),
        ("/webhooks/twilio/call-status", "voice__status_answered"),
        ("/webhooks/twilio/call-status", "voice__child_leg_completed"),
        ("/webhooks/twilio/call-status?event=dial", "voice__dial_action_completed"),
        ("/webhooks/twilio/recording", "voice__recording_completed"),
        ("/webhooks/twilio/call-status", "voice__status_completed"),
    ]
    rng = random.Random(7)
    posts = [simulate.Post(path, fixture_params(name)) for path, name in story]
    posts += [rng.choice(posts) for _ in range(4)]
    rng.shuffle(posts)
    deliver(twilio, posts, run_worker, rng)
    run_worker()

    row = only_interaction()
    assert row.provider_id == "CA00000000000000000000000000000021"
    assert (row.status, row.direction, row.party_phone) == ("completed", "outbound", JORDAN)
    assert row.duration_seconds == 100  # talk time, not the rep leg's 109 s
    assert row.recording_url.endswith("RE00000000000000000000000000000021")
    assert row.user_id == user_id("avery@acme.example")  # the rep whose phone rang first
    [activity] = activities()
    assert (activity.status, activity.direction, activity.duration_seconds) == ("completed", "outbound", 100)
    assert activity.owner_id == "avery@acme.example"


def test_missed_call(tenant, twilio, run_worker):
    rng = random.Random(11)
    scenario = simulate.inbound_call(FIXTURE_ACCOUNT, JORDAN, OUR_NUMBER, "+15555550198", "missed")
    deliver(twilio, scenario.deliveries(rng, duplicates=2), run_worker, rng)
    run_worker()
    row = only_interaction()
    assert row.status == "missed"
    assert row.recording_url is None
    [activity] = activities()
    assert activity.status == "missed"


def test_voicemail_from_fixtures_with_transcription(tenant, twilio, run_worker):
    call = "CA00000000000000000000000000000011"
    posts = [
        simulate.Post("/webhooks/twilio/voice", fixture_params("voice__incoming")),
        simulate.Post(
            "/webhooks/twilio/call-status?event=dial",
            {**fixture_params("voice__dial_action_no_answer"), "CallSid": call, "Direction": "inbound"},
        ),
        simulate.Post("/webhooks/twilio/recording", fixture_params("voice__recording_voicemail")),
        simulate.Post("/webhooks/twilio/transcription", fixture_params("voice__transcription_completed")),
    ]
    deliver(twilio, posts)
    run_worker()
    row = only_interaction()
    assert row.status == "voicemail"
    assert row.recording_url.endswith("RE00000000000000000000000000000011")
    assert row.body == fixture_params("voice__transcription_completed")["TranscriptionText"]
    [activity] = activities()
    assert activity.status == "voicemail" and activity.body == row.body


def test_dial_no_answer_answers_with_voicemail_twiml(tenant, twilio):
    twilio.fixture("/webhooks/twilio/voice", "voice__incoming")
    r = twilio.post(
        "/webhooks/twilio/call-status?event=dial",
        {
            **fixture_params("voice__dial_action_no_answer"),
            "CallSid": "CA00000000000000000000000000000011",
            "Direction": "inbound",
        },
    )
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and "<Record" in body
    assert 'recordingStatusCallback="https://switchboard.example.com/webhooks/twilio/recording"' in body
    assert only_interaction().status == "missed"  # until a message is left


def test_click_to_call_customer_not_answering_hangs_up_on_the_rep(tenant, twilio):
    """The captured no-answer <Dial> action is on the rep's outbound-api leg: no voicemail for the rep."""
    r = twilio.fixture("/webhooks/twilio/call-status?event=dial", "voice__dial_action_no_answer")
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and "<Hangup" in body and "<Record" not in body


def test_inbound_sms_and_mms(tenant, twilio, run_worker):
    assert twilio.fixture("/webhooks/twilio/sms", "sms__inbound").status_code == 200
    assert twilio.fixture("/webhooks/twilio/sms", "sms__inbound_mms").status_code == 200
    run_worker()
    texts = activities()
    assert [a.kind for a in texts] == ["sms", "sms"]
    assert texts[0].body.startswith("Hi, can someone call me back")
    assert texts[0].direction == "inbound" and texts[0].status == "received"
    assert len(texts[1].media) == 2 and texts[1].media[0]["url"].startswith("https://api.twilio.com/")
    assert {a.contact_id for a in texts} == {texts[0].contact_id}  # both on Jordan


def test_outbound_sms_status_progression_out_of_order(tenant, twilio, run_worker):
    names = ["sms__status_delivered", "sms__status_sent", "sms__status_queued", "sms__status_delivered"]
    for name in names:
        assert twilio.fixture("/webhooks/twilio/sms-status", name).status_code == 204
        run_worker()
    row = only_interaction()
    assert (row.status, row.direction, row.party_phone) == ("delivered", "outbound", JORDAN)
    [activity] = activities()
    assert activity.status == "delivered"


def test_outbound_sms_failure_keeps_error_code(tenant, twilio, run_worker):
    twilio.fixture("/webhooks/twilio/sms-status", "sms__status_queued")
    twilio.fixture("/webhooks/twilio/sms-status", "sms__status_failed")
    run_worker()
    row = only_interaction()
    assert (row.status, row.error_code) == ("failed", "30007")
    assert activities()[0].status == "failed"


def test_unknown_number_creates_one_contact(tenant, twilio, run_worker):
    stranger = "+15555550111"
    for text in ("Hello?", "Pricing please"):
        deliver(twilio, simulate.inbound_sms(FIXTURE_ACCOUNT, stranger, OUR_NUMBER, text).deliveries())
    run_worker()
    with db.transaction() as s:
        contact = s.scalar(select(LocalContact).where(LocalContact.name == "+1 555-555-0111"))
        assert contact is not None and [p.e164 for p in contact.phones] == [stranger]
        rows = list(s.scalars(select(Interaction)))
    assert count(LocalContact) == 2
    assert {r.crm_contact_id for r in rows} == {str(contact.id)}
    assert {r.match_reason for r in rows} <= {"no match; contact created", f"phone {stranger}"}


def test_unknown_number_skipped_when_policy_says_so(tenant, twilio, run_worker):
    with db.transaction() as s:
        s.get(Tenant, tenant.id).settings = {"unknown_contacts": "skip"}
    deliver(twilio, simulate.inbound_sms(FIXTURE_ACCOUNT, "+15555550111", OUR_NUMBER, "hi").deliveries())
    run_worker()
    row = only_interaction()
    assert row.sync_state == "skipped" and "policy" in row.last_error
    assert count(LocalContact) == 1 and count(LocalActivity) == 0


def test_late_ringing_after_completed_changes_nothing(tenant, twilio, run_worker, redis_conn):
    twilio.fixture("/webhooks/twilio/call-status", "voice__status_completed")
    run_worker()
    before = only_interaction()
    r = twilio.fixture("/webhooks/twilio/call-status", "voice__status_ringing")
    assert r.status_code == 204
    after = only_interaction()
    assert (after.status, after.version) == (before.status, before.version)
    assert run_worker() == 0  # nothing new to sync
    assert count(WebhookEvent) == 2  # the late callback is kept in the ledger all the same


def test_updates_patch_the_same_activity(tenant, twilio, run_worker):
    twilio.fixture("/webhooks/twilio/voice", "voice__incoming")
    run_worker()
    first = activities()
    assert [a.status for a in first] == ["ringing"]
    twilio.fixture("/webhooks/twilio/recording", "voice__recording_voicemail")
    run_worker()
    second = activities()
    assert [(a.id, a.status) for a in second] == [(first[0].id, "voicemail")]
