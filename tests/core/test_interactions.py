"""Pure unit tests of app/interactions.py: merge_facts is order-independent, derive() gives the status.

No database, no requests. The fact dicts are built exactly the way webhooks/twilio.py builds them from
Twilio's callbacks (voice webhook, parent and child-leg status callbacks, <Dial> and <Record> actions,
recording and transcription callbacks, message status callbacks), so every story below is one real call or
text as Twilio would report it, only delivered in different orders, late or twice.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import reduce
from typing import Any

import pytest

from app.core.interactions import Derived, derive, merge_facts

Facts = dict[str, Any]

OUR_NUMBER = "+15555550100"
CUSTOMER = "+15555550123"
REP = "+15555550199"  # Avery, the default user
SAM = "+15555550198"  # Jordan's owner: inbound calls from Jordan ring Sam
SAM_ID = 2

INBOUND_VM = "CA00000000000000000000000000000011"  # inbound call that goes to voicemail
INBOUND_VM_LEG = "CA00000000000000000000000000000012"  # the <Dial><Number> leg ringing Sam
INBOUND_OK = "CA00000000000000000000000000000015"  # inbound call Sam answers
INBOUND_OK_LEG = "CA00000000000000000000000000000016"
AGENT_LEG = "CA00000000000000000000000000000021"  # click-to-call: rep leg (outbound-api parent)
CUSTOMER_LEG = "CA00000000000000000000000000000022"  # click-to-call: customer leg (outbound-dial child)
VM_RECORDING = "RE00000000000000000000000000000011"
OK_RECORDING = "RE00000000000000000000000000000016"
C2C_RECORDING = "RE00000000000000000000000000000021"
TRANSCRIPTION = "TR00000000000000000000000000000011"
VOICEMAIL_TEXT = "Hi, this is Jordan calling about the quote you sent this morning."
TERMINAL = ("completed", "busy", "no-answer", "failed", "canceled")


def recording_url(sid: str) -> str:
    """The RecordingUrl Twilio sends for a recording sid."""
    return f"https://api.twilio.com/2010-04-01/Accounts/AC00000000000000000000000000000001/Recordings/{sid}"


# --- fact builders, mirroring webhooks/twilio.py ------------------------------------------------------


def call_facts(direction: str, from_: str, to: str) -> Facts:
    """The parent leg's `call` facts (`_call_facts`)."""
    return {"direction": direction, "from": from_, "to": to, "caller_name": None}


def incoming(from_: str = CUSTOMER, started_at: str = "2025-03-11T17:19:40+00:00") -> Facts:
    """The voice webhook of an inbound call (`_incoming_call`), routed to Sam."""
    return {
        "call": call_facts("inbound", from_, OUR_NUMBER),
        "parent_status": {"status": "ringing", "seq": -1},
        "started_at": started_at,
        "routed_user_id": SAM_ID,
        "routed_phone": SAM,
    }


def started_at(status: str, at: str, duration: int | None) -> str | None:
    """The start time a parent status callback reports (`_started_at`): the initiated callback's time, or a
    terminal callback's time minus CallDuration; ringing and answered callbacks add none."""
    if status in ("queued", "initiated"):
        return at
    if status in TERMINAL and duration is not None:
        return (datetime.fromisoformat(at) - timedelta(seconds=duration)).isoformat()
    return None


def parent_status(
    status: str,
    seq: int | None,
    at: str,
    *,
    direction: str = "outbound-api",
    from_: str = OUR_NUMBER,
    to: str = REP,
    duration: int | None = None,
) -> Facts:
    """A status callback of the parent leg (`_call_status` without ParentCallSid)."""
    return {
        "call": call_facts(direction, from_, to),
        "parent_status": {"status": status, "seq": seq if seq is not None else -1},
        "started_at": started_at(status, at, duration),
        "ended_at": at if status in TERMINAL else None,
        "call_duration": duration,
    }


def leg(sid: str, status: str, seq: int, to: str, duration: int | None = None) -> Facts:
    """A status callback of a <Dial><Number> child leg (`_call_status` with ParentCallSid)."""
    return {"legs": {sid: {"status": status, "seq": seq, "to": to, "duration": duration}}}


def dial_action(dial_sid: str, status: str, duration: int | None, bridged: bool) -> Facts:
    """The <Dial action> request (`_dial_action`)."""
    facts: Facts = {"dials": {dial_sid: {"status": status, "duration": duration, "bridged": bridged}}}
    if status not in ("completed", "answered"):
        facts["voicemail_prompted"] = True
    return facts


def record_action(rec_sid: str, duration: int) -> Facts:
    """The <Record action> request (`_record_action`): no RecordingSource or RecordingChannels in it."""
    facts: Facts = {"voicemail_prompted": True}
    if duration > 0:
        facts["recordings"] = {
            rec_sid: {
                "status": "completed",
                "url": recording_url(rec_sid),
                "duration": duration,
                "source": "RecordVerb",
                "channels": None,
            }
        }
    return facts


def recording(rec_sid: str, status: str, source: str, duration: int | None, channels: int | None) -> Facts:
    """A recordingStatusCallback (`_recording`)."""
    url = recording_url(rec_sid) if status == "completed" else None
    fact = {"status": status, "url": url, "duration": duration, "source": source, "channels": channels}
    return {"recordings": {rec_sid: fact}}


def transcription(text: str = VOICEMAIL_TEXT) -> Facts:
    """A completed transcribeCallback (`_transcription`)."""
    return {"transcription": {"text": text, "sid": TRANSCRIPTION}}


def sms_status(status: str, error_code: str | None = None) -> Facts:
    """An outbound message status callback (`_message_status`)."""
    return {
        "msg": {"direction": "outbound", "from": OUR_NUMBER, "to": CUSTOMER},
        "msg_status": {"status": status, "error_code": error_code},
    }


def sms_inbound(body: str, media: list[dict[str, Any]] | None = None) -> Facts:
    """An incoming message webhook (`_inbound_message`)."""
    return {
        "msg": {
            "direction": "inbound",
            "from": CUSTOMER,
            "to": OUR_NUMBER,
            "body": body,
            "media": media or [],
        },
        "msg_status": {"status": "received"},
        "started_at": "2025-03-11T16:00:00+00:00",
    }


# --- helpers ------------------------------------------------------------------------------------------


def fold(events: Iterable[Facts]) -> Facts:
    """Merge events into empty facts, in the given order, the way the ledger does."""
    return reduce(merge_facts, events, {})


def canonical(facts: Facts) -> str:
    """A stable text form of merged facts, to count distinct results."""
    return json.dumps(facts, sort_keys=True)


def shuffled_with_duplicates(events: Sequence[Facts], rng: random.Random) -> list[Facts]:
    """The events in a random order, some of them delivered two or three times."""
    out = list(events) + [rng.choice(events) for _ in range(rng.randint(0, len(events)))]
    rng.shuffle(out)
    return out


# Status order within one call's life, for the monotonicity check. Until the call facts arrive the
# direction is unknown and a <Dial> outcome shows as that outcome (e.g. 'no-answer') rather than 'missed';
# all end states share one rank.
CALL_RANK = {
    "initiated": 0,
    "ringing": 1,
    "in-progress": 2,
    **{s: 3 for s in ("completed", "missed", "busy", "no-answer", "failed", "canceled")},
    "voicemail": 4,
}


# --- stories ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Story:
    """One interaction's callbacks in their natural order, and what derive() must say at the end."""

    name: str
    channel: str
    events: tuple[Facts, ...]
    expected: Derived


INBOUND_VOICEMAIL = Story(
    "inbound-voicemail",
    "call",
    (
        incoming(),
        leg(INBOUND_VM_LEG, "initiated", 0, SAM),
        leg(INBOUND_VM_LEG, "ringing", 1, SAM),
        leg(INBOUND_VM_LEG, "no-answer", 2, SAM, duration=0),
        dial_action(INBOUND_VM_LEG, "no-answer", 0, False),
        record_action(VM_RECORDING, 14),
        recording(VM_RECORDING, "completed", "RecordVerb", 14, 1),
        parent_status(
            "completed",
            None,
            "2025-03-11T17:20:31+00:00",
            direction="inbound",
            from_=CUSTOMER,
            to=OUR_NUMBER,
            duration=51,
        ),
        transcription(),
    ),
    Derived(
        status="voicemail",
        direction="inbound",
        from_addr=CUSTOMER,
        to_addr=OUR_NUMBER,
        duration_seconds=51,  # not answered: the whole call (greeting + message)
        recording_url=recording_url(VM_RECORDING),
        body=VOICEMAIL_TEXT,
        started_at="2025-03-11T17:19:40+00:00",
        ended_at="2025-03-11T17:20:31+00:00",
        answered=False,
    ),
)

INBOUND_ANSWERED = Story(
    "inbound-answered",
    "call",
    (
        incoming(),
        leg(INBOUND_OK_LEG, "initiated", 0, SAM),
        leg(INBOUND_OK_LEG, "ringing", 1, SAM),
        leg(INBOUND_OK_LEG, "in-progress", 2, SAM),
        leg(INBOUND_OK_LEG, "completed", 3, SAM, duration=100),
        dial_action(INBOUND_OK_LEG, "completed", 100, True),
        recording(OK_RECORDING, "completed", "DialVerb", 100, 2),
        parent_status(
            "completed",
            None,
            "2025-03-11T17:21:29+00:00",
            direction="inbound",
            from_=CUSTOMER,
            to=OUR_NUMBER,
            duration=109,
        ),
    ),
    Derived(
        status="completed",
        direction="inbound",
        from_addr=CUSTOMER,
        to_addr=OUR_NUMBER,
        duration_seconds=100,  # talk time, not the 109 s the caller was on the line
        recording_url=recording_url(OK_RECORDING),
        started_at="2025-03-11T17:19:40+00:00",
        ended_at="2025-03-11T17:21:29+00:00",
        answered=True,
    ),
)

CLICK_TO_CALL = Story(
    "click-to-call",
    "call",
    (
        parent_status("initiated", 0, "2025-03-11T16:05:04+00:00"),
        parent_status("ringing", 1, "2025-03-11T16:05:05+00:00"),
        parent_status("in-progress", 2, "2025-03-11T16:05:12+00:00"),
        leg(CUSTOMER_LEG, "initiated", 0, CUSTOMER),
        leg(CUSTOMER_LEG, "ringing", 1, CUSTOMER),
        leg(CUSTOMER_LEG, "in-progress", 2, CUSTOMER),
        leg(CUSTOMER_LEG, "completed", 3, CUSTOMER, duration=100),
        dial_action(CUSTOMER_LEG, "completed", 100, True),
        recording(C2C_RECORDING, "completed", "DialVerb", 100, 2),
        parent_status("completed", 3, "2025-03-11T16:07:01+00:00", duration=109),
    ),
    Derived(
        status="completed",
        direction="outbound",
        from_addr=OUR_NUMBER,
        to_addr=REP,
        duration_seconds=100,
        recording_url=recording_url(C2C_RECORDING),
        started_at="2025-03-11T16:05:04+00:00",
        ended_at="2025-03-11T16:07:01+00:00",
        answered=True,
    ),
)

SMS_DELIVERED = Story(
    "sms-delivered",
    "sms",
    (sms_status("queued"), sms_status("sent"), sms_status("delivered")),
    Derived(status="delivered", direction="outbound", from_addr=OUR_NUMBER, to_addr=CUSTOMER),
)

SMS_FAILED = Story(
    "sms-failed",
    "sms",
    (sms_status("queued"), sms_status("sent"), sms_status("failed", "30007")),
    Derived(
        status="failed", direction="outbound", from_addr=OUR_NUMBER, to_addr=CUSTOMER, error_code="30007"
    ),
)

SMS_UNDELIVERED = Story(
    "sms-undelivered",
    "sms",
    (sms_status("queued"), sms_status("sent"), sms_status("undelivered", "30003")),
    Derived(
        status="undelivered", direction="outbound", from_addr=OUR_NUMBER, to_addr=CUSTOMER, error_code="30003"
    ),
)

STORIES = (INBOUND_VOICEMAIL, INBOUND_ANSWERED, CLICK_TO_CALL, SMS_DELIVERED, SMS_FAILED, SMS_UNDELIVERED)
story_param = pytest.mark.parametrize("story", STORIES, ids=[s.name for s in STORIES])


# --- order independence -------------------------------------------------------------------------------


@story_param
def test_story_in_natural_order_derives_expected_state(story: Story) -> None:
    assert derive(story.channel, fold(story.events)) == story.expected


@story_param
def test_story_shuffled_with_duplicates_derives_the_same_state(story: Story) -> None:
    rng = random.Random(f"derived-{story.name}")
    for _ in range(1500):
        order = shuffled_with_duplicates(story.events, rng)
        assert derive(story.channel, fold(order)) == story.expected


@story_param
def test_story_shuffled_with_duplicates_merges_to_the_same_facts(story: Story) -> None:
    reference = fold(story.events)
    rng = random.Random(f"facts-{story.name}")
    distinct = {canonical(fold(shuffled_with_duplicates(story.events, rng))) for _ in range(1500)}
    distinct.add(canonical(reference))
    assert len(distinct) == 1, "merged facts depend on arrival order:\n" + "\n".join(sorted(distinct))


# Smaller versions of the call stories, small enough to try every permutation.
CORE_STORIES = (
    Story(
        "inbound-voicemail-core",
        "call",
        (
            incoming(),
            leg(INBOUND_VM_LEG, "ringing", 1, SAM),
            leg(INBOUND_VM_LEG, "no-answer", 2, SAM, duration=0),
            dial_action(INBOUND_VM_LEG, "no-answer", 0, False),
            recording(VM_RECORDING, "completed", "RecordVerb", 14, 1),
            transcription(),
            INBOUND_VOICEMAIL.events[7],  # parent completed
        ),
        INBOUND_VOICEMAIL.expected,
    ),
    Story(
        "inbound-answered-core",
        "call",
        (
            incoming(),
            leg(INBOUND_OK_LEG, "in-progress", 2, SAM),
            leg(INBOUND_OK_LEG, "completed", 3, SAM, duration=100),
            dial_action(INBOUND_OK_LEG, "completed", 100, True),
            recording(OK_RECORDING, "completed", "DialVerb", 100, 2),
            INBOUND_ANSWERED.events[-1],  # parent completed
        ),
        INBOUND_ANSWERED.expected,
    ),
    Story(
        "click-to-call-core",
        "call",
        (
            CLICK_TO_CALL.events[0],  # parent initiated
            CLICK_TO_CALL.events[2],  # parent in-progress (the rep picked up)
            leg(CUSTOMER_LEG, "ringing", 1, CUSTOMER),
            leg(CUSTOMER_LEG, "completed", 3, CUSTOMER, duration=100),
            dial_action(CUSTOMER_LEG, "completed", 100, True),
            recording(C2C_RECORDING, "completed", "DialVerb", 100, 2),
            CLICK_TO_CALL.events[-1],  # parent completed
        ),
        CLICK_TO_CALL.expected,
    ),
    SMS_DELIVERED,
    SMS_FAILED,
)


@pytest.mark.parametrize("story", CORE_STORIES, ids=[s.name for s in CORE_STORIES])
def test_every_permutation_folds_to_the_same_facts_and_state(story: Story) -> None:
    reference = fold(story.events)
    assert derive(story.channel, reference) == story.expected
    count = 0
    for order in itertools.permutations(story.events):
        merged = fold(order)
        assert merged == reference, f"order {order} merged differently"
        assert derive(story.channel, merged) == story.expected
        count += 1
    assert count == math.factorial(len(story.events))


def test_merging_an_event_twice_changes_nothing() -> None:
    for story in STORIES:
        merged = fold(story.events)
        for event in story.events:
            assert merge_facts(merged, event) == merged, story.name


def test_record_action_and_recording_callback_merge_the_same_in_either_order() -> None:
    # Our <Record> TwiML asks for both: the action request (no RecordingChannels) and the
    # recordingStatusCallback (RecordingChannels=1) describe the same recording with the same rank and length.
    action = record_action(VM_RECORDING, 14)
    callback = recording(VM_RECORDING, "completed", "RecordVerb", 14, 1)
    assert fold([action, callback]) == fold([callback, action])


# --- calls: what each story derives ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("story", "late"),
    [
        pytest.param(
            CLICK_TO_CALL,
            [
                parent_status("ringing", 1, "2025-03-11T16:05:05+00:00"),
                leg(CUSTOMER_LEG, "ringing", 1, CUSTOMER),
                leg(CUSTOMER_LEG, "in-progress", 2, CUSTOMER),
            ],
            id="click-to-call",
        ),
        pytest.param(
            INBOUND_ANSWERED,
            [incoming(), leg(INBOUND_OK_LEG, "ringing", 1, SAM), leg(INBOUND_OK_LEG, "initiated", 0, SAM)],
            id="inbound-answered",
        ),
    ],
)
def test_late_ringing_after_completed_changes_nothing(story: Story, late: list[Facts]) -> None:
    merged = fold(story.events)
    assert derive("call", merged).status == "completed"
    for event in late:
        after = merge_facts(merged, event)
        assert after == merged
        assert derive("call", after) == story.expected


def test_late_ringing_does_not_reopen_a_missed_call() -> None:
    events = [incoming(), leg(INBOUND_VM_LEG, "no-answer", 2, SAM, duration=0)]
    assert derive("call", fold(events)).status == "missed"
    later = fold([*events, leg(INBOUND_VM_LEG, "ringing", 1, SAM), incoming()])
    assert derive("call", later).status == "missed"


def test_inbound_call_is_ringing_until_something_happens() -> None:
    assert derive("call", fold([incoming()])).status == "ringing"
    assert derive("call", fold([incoming(), leg(INBOUND_VM_LEG, "initiated", 0, SAM)])).status == "ringing"
    assert derive("call", fold([incoming(), leg(INBOUND_VM_LEG, "ringing", 1, SAM)])).status == "ringing"


def test_inbound_dial_no_answer_is_missed_then_voicemail() -> None:
    facts = fold([incoming(), dial_action(INBOUND_VM_LEG, "no-answer", 0, False)])
    missed = derive("call", facts)
    assert missed.status == "missed"
    assert missed.answered is False
    assert missed.recording_url is None
    assert facts["voicemail_prompted"] is True

    facts = merge_facts(facts, recording(VM_RECORDING, "completed", "RecordVerb", 14, 1))
    voicemail = derive("call", facts)
    assert voicemail.status == "voicemail"
    assert voicemail.recording_url == recording_url(VM_RECORDING)
    assert voicemail.answered is False


@pytest.mark.parametrize("dial_status", ["no-answer", "busy", "failed", "canceled"])
def test_inbound_call_not_connected_is_missed(dial_status: str) -> None:
    events = [incoming(), dial_action(INBOUND_VM_LEG, dial_status, 0, False)]
    assert derive("call", fold(events)).status == "missed"


def test_inbound_call_ended_without_dial_is_missed() -> None:
    completed = INBOUND_VOICEMAIL.events[7]
    assert derive("call", fold([incoming(), completed])).status == "missed"


@pytest.mark.parametrize(
    "empty_recording",
    [
        pytest.param(recording(VM_RECORDING, "completed", "RecordVerb", 0, 1), id="zero-length"),
        pytest.param(recording(VM_RECORDING, "absent", "RecordVerb", 0, 1), id="absent"),
        pytest.param(recording(VM_RECORDING, "absent", "RecordVerb", None, None), id="absent-no-duration"),
        pytest.param(record_action(VM_RECORDING, 0), id="record-action-silence"),
        pytest.param(recording(VM_RECORDING, "failed", "RecordVerb", 14, 1), id="failed"),
    ],
)
def test_inbound_missed_call_with_empty_recording_stays_missed(empty_recording: Facts) -> None:
    events = [incoming(), dial_action(INBOUND_VM_LEG, "no-answer", 0, False), empty_recording]
    for order in itertools.permutations(events):
        derived = derive("call", fold(order))
        assert derived.status == "missed"
        assert derived.answered is False
    rec = next(iter(empty_recording.get("recordings", {}).values()), {})
    if rec.get("status") != "completed":
        assert derive("call", fold(events)).recording_url is None


def test_dial_verb_recording_is_not_a_voicemail() -> None:
    # A recording of a bridged conversation (DialVerb) never turns a call into a voicemail.
    events = [incoming(), dial_action(INBOUND_VM_LEG, "no-answer", 0, False)]
    events.append(recording(OK_RECORDING, "completed", "DialVerb", 30, 2))
    assert derive("call", fold(events)).status == "missed"


@pytest.mark.parametrize(
    ("connected", "talk"),
    [
        pytest.param([leg(INBOUND_OK_LEG, "in-progress", 2, SAM)], None, id="child-leg-in-progress"),
        pytest.param([leg(INBOUND_OK_LEG, "completed", 3, SAM, duration=100)], 100, id="child-leg-completed"),
        pytest.param([dial_action(INBOUND_OK_LEG, "completed", 100, True)], 100, id="dial-completed"),
        pytest.param([dial_action(INBOUND_OK_LEG, "answered", 100, True)], 100, id="dial-answered"),
    ],
)
def test_inbound_answered_is_in_progress_then_completed(connected: list[Facts], talk: int | None) -> None:
    ongoing = derive("call", fold([incoming(), *connected]))
    assert ongoing.status == "in-progress"
    assert ongoing.answered is True
    assert ongoing.ended_at is None

    completed_callback = INBOUND_ANSWERED.events[-1]  # parent completed, CallDuration=109
    done = derive("call", fold([incoming(), *connected, completed_callback]))
    assert done.status == "completed"
    assert done.answered is True
    assert done.ended_at == "2025-03-11T17:21:29+00:00"
    # Talk time from DialCallDuration / the child's CallDuration; the whole call's length only without one.
    assert done.duration_seconds == (talk if talk is not None else 109)


def test_answered_call_takes_recording_url_from_the_dial_recording() -> None:
    events = [
        incoming(),
        dial_action(INBOUND_OK_LEG, "completed", 100, True),
        recording(OK_RECORDING, "in-progress", "DialVerb", None, 2),
    ]
    assert derive("call", fold(events)).recording_url is None
    events.append(recording(OK_RECORDING, "completed", "DialVerb", 100, 2))
    assert derive("call", fold(events)).recording_url == recording_url(OK_RECORDING)


def test_click_to_call_progress() -> None:
    events = list(CLICK_TO_CALL.events)
    assert derive("call", fold(events[:1])).status == "initiated"
    assert derive("call", fold(events[:2])).status == "ringing"
    # The rep's leg is up and the customer's is ringing: in progress, never back to ringing.
    assert derive("call", fold(events[:5])).status == "in-progress"
    assert derive("call", fold(events[:6])).status == "in-progress"
    final = derive("call", fold(events))
    assert final == CLICK_TO_CALL.expected


@pytest.mark.parametrize("outcome", ["no-answer", "busy", "failed", "canceled"])
def test_click_to_call_customer_not_reached(outcome: str) -> None:
    events = [
        parent_status("initiated", 0, "2025-03-11T16:05:04+00:00"),
        parent_status("in-progress", 2, "2025-03-11T16:05:12+00:00"),
        leg(CUSTOMER_LEG, "ringing", 1, CUSTOMER),
        leg(CUSTOMER_LEG, outcome, 2, CUSTOMER, duration=0),
        dial_action(CUSTOMER_LEG, outcome, 0, False),
        parent_status("completed", 3, "2025-03-11T16:06:01+00:00", duration=49),
    ]
    for order in itertools.permutations(events):
        derived = derive("call", fold(order))
        assert derived.status == outcome
        assert derived.answered is False


@pytest.mark.parametrize(
    ("sid", "outcome", "seq"),
    [
        ("CA00000000000000000000000000000041", "busy", 2),
        ("CA00000000000000000000000000000042", "no-answer", 2),
        ("CA00000000000000000000000000000043", "canceled", 2),
        ("CA00000000000000000000000000000044", "failed", 1),
    ],
)
def test_outbound_direct_call_not_answered(sid: str, outcome: str, seq: int) -> None:
    events = [parent_status("initiated", 0, "2025-03-11T16:20:00+00:00")]
    if seq == 2:
        events.append(parent_status("ringing", 1, "2025-03-11T16:20:01+00:00"))
    events.append(parent_status(outcome, seq, "2025-03-11T16:20:09+00:00", duration=0))
    for order in itertools.permutations(events):
        derived = derive("call", fold(order))
        assert derived.status == outcome, sid
        assert derived.answered is False
        assert derived.direction == "outbound"
        assert derived.ended_at == "2025-03-11T16:20:09+00:00"
        assert derived.started_at == "2025-03-11T16:20:00+00:00"
    # A straggling ringing callback does not reopen it.
    late = fold([*events, parent_status("ringing", 1, "2025-03-11T16:20:01+00:00")])
    assert derive("call", late).status == outcome


def test_outbound_direct_call_answered_is_completed_with_call_duration() -> None:
    events = [
        parent_status("initiated", 0, "2025-03-11T16:20:00+00:00", to=CUSTOMER),
        parent_status("ringing", 1, "2025-03-11T16:20:01+00:00", to=CUSTOMER),
        parent_status("in-progress", 2, "2025-03-11T16:20:06+00:00", to=CUSTOMER),
    ]
    assert derive("call", fold(events)).status == "in-progress"
    events.append(parent_status("completed", 3, "2025-03-11T16:20:51+00:00", to=CUSTOMER, duration=45))
    for order in itertools.permutations(events):
        derived = derive("call", fold(order))
        assert derived.status == "completed"
        assert derived.answered is True
        assert derived.duration_seconds == 45
        assert derived.to_addr == CUSTOMER


# --- monotonicity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("story", [INBOUND_VOICEMAIL, INBOUND_ANSWERED], ids=lambda s: s.name)
def test_inbound_status_never_goes_backwards(story: Story) -> None:
    rng = random.Random(f"monotonic-{story.name}")
    for _ in range(1000):
        order = shuffled_with_duplicates(story.events, rng)
        facts: Facts = {}
        seen: list[str] = []
        for event in order:
            facts = merge_facts(facts, event)
            status = derive("call", facts).status
            assert status in CALL_RANK, status
            if seen:
                assert CALL_RANK[status] >= CALL_RANK[seen[-1]], f"status went {[*seen, status]}"
            seen.append(status)
        assert seen[-1] == story.expected.status


# --- messages -----------------------------------------------------------------------------------------


def test_sms_status_ranks_queued_sent_delivered() -> None:
    steps = [sms_status("queued"), sms_status("sent"), sms_status("delivered")]
    statuses = [derive("sms", fold(steps[: i + 1])).status for i in range(len(steps))]
    assert statuses == ["queued", "sent", "delivered"]


def test_late_sent_after_delivered_changes_nothing() -> None:
    delivered = fold([sms_status("queued"), sms_status("delivered")])
    assert merge_facts(delivered, sms_status("sent")) == delivered
    assert merge_facts(delivered, sms_status("queued")) == delivered
    assert derive("sms", merge_facts(delivered, sms_status("sent"))).status == "delivered"


@pytest.mark.parametrize(("status", "code"), [("failed", "30007"), ("undelivered", "30003")])
def test_failed_messages_keep_their_error_code(status: str, code: str) -> None:
    events = [sms_status("queued"), sms_status("sent"), sms_status(status, code)]
    for order in itertools.permutations(events):
        derived = derive("sms", fold(order))
        assert derived.status == status
        assert derived.error_code == code
    late = fold([*events, sms_status("sent"), sms_status("queued")])
    assert derive("sms", late).error_code == code


def test_delivered_message_has_no_error_code() -> None:
    assert derive("sms", fold(SMS_DELIVERED.events)).error_code is None


def test_message_without_status_yet() -> None:
    assert derive("sms", {"msg": {"direction": "outbound-api"}}).status == "queued"
    assert derive("sms", {"msg": {"direction": "inbound"}}).status == "received"


def test_inbound_sms_and_mms() -> None:
    text = derive("sms", fold([sms_inbound("Hi, can someone call me back?")]))
    assert text.status == "received"
    assert text.direction == "inbound"
    assert (text.from_addr, text.to_addr) == (CUSTOMER, OUR_NUMBER)
    assert text.body == "Hi, can someone call me back?"
    assert text.media == []

    media = [
        {
            "url": "https://api.twilio.com/media/ME00000000000000000000000000000001",
            "content_type": "image/jpeg",
        },
        {
            "url": "https://api.twilio.com/media/ME00000000000000000000000000000002",
            "content_type": "image/png",
        },
    ]
    mms = derive("sms", fold([sms_inbound("", media)]))
    assert mms.status == "received"
    assert mms.body == ""
    assert mms.media == media
