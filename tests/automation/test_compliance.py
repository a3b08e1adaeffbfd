"""Opt-out keywords and quiet hours, including time zones and daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from app.automation.compliance import allowed, keyword, next_allowed, parse_window, time_zone_for

NY, LA, LONDON = ZoneInfo("America/New_York"), ZoneInfo("America/Los_Angeles"), ZoneInfo("Europe/London")
START, END = time(8), time(21)


@pytest.mark.parametrize(
    "body",
    [
        "STOP",
        "stop",
        " Stop ",
        "STOP.",
        "stop!",
        "\tSTOPALL\n",
        "Unsubscribe",
        "cancel",
        "END",
        "quit",
        "Revoke",
        "optout",
        "OPTOUT ",
    ],
)
def test_opt_out_keywords(body):
    assert keyword(body) == "opt_out"


@pytest.mark.parametrize("body", ["START", "start", " Yes ", "UNSTOP", "unstop!"])
def test_opt_in_keywords(body):
    assert keyword(body) == "opt_in"


@pytest.mark.parametrize("body", ["HELP", "help?", " Info "])
def test_help_keywords(body):
    assert keyword(body) == "help"


@pytest.mark.parametrize(
    "body",
    ["please stop calling me", "stopping by at 5", "yes please", "", None, "STOP STOP", "🙂", "information"],
)
def test_not_keywords(body):
    assert keyword(body) is None


def test_time_zone_from_crm_then_number_then_default():
    assert time_zone_for("+14155550100", "Europe/Berlin") == ZoneInfo("Europe/Berlin")
    assert time_zone_for("+14155550100", None) == LA
    assert time_zone_for("+442079460000", "Not/AZone") == LONDON
    assert time_zone_for("+15555550123", None, default="America/Chicago") == ZoneInfo("America/Chicago")
    assert time_zone_for(None, None, default="Asia/Tokyo") == ZoneInfo("Asia/Tokyo")


def test_inside_the_window_sends_now():
    at = datetime(2026, 6, 1, 14, 0, tzinfo=NY)
    assert next_allowed(at, NY, START, END) == at.astimezone(UTC)


def test_late_evening_waits_for_tomorrow_morning_in_the_contacts_zone():
    at = datetime(2026, 6, 1, 22, 30, tzinfo=NY)  # 19:30 in LA: still allowed there
    assert next_allowed(at, LA, START, END) == at.astimezone(UTC)
    # ...but in New York it waits for 08:00 the next day
    assert next_allowed(at, NY, START, END) == datetime(2026, 6, 2, 8, 0, tzinfo=NY).astimezone(UTC)


def test_early_morning_waits_for_eight_the_same_day():
    at = datetime(2026, 6, 1, 6, 15, tzinfo=LONDON)
    assert next_allowed(at, LONDON, START, END) == datetime(2026, 6, 1, 8, 0, tzinfo=LONDON).astimezone(UTC)


def test_window_end_is_exclusive():
    assert not allowed(datetime(2026, 6, 1, 21, 0, tzinfo=NY), NY, START, END)
    assert allowed(datetime(2026, 6, 1, 20, 59, tzinfo=NY), NY, START, END)


def test_spring_forward_night():
    # 2026-03-08: New York skips 02:00-03:00. Due at 23:00 the night before: opens 08:00 EDT (12:00 UTC).
    at = datetime(2026, 3, 7, 23, 0, tzinfo=NY)
    assert next_allowed(at, NY, START, END) == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)


def test_fall_back_night():
    # 2026-11-01: New York repeats 01:00-02:00. 08:00 that morning is EST (13:00 UTC).
    at = datetime(2026, 11, 1, 5, 0, tzinfo=UTC)  # 01:00 EDT, the first pass
    assert next_allowed(at, NY, START, END) == datetime(2026, 11, 1, 13, 0, tzinfo=UTC)


def test_window_opening_inside_a_dst_gap_opens_at_the_first_real_minute():
    start = time(2, 30)  # does not exist on 2026-03-08 in New York
    at = datetime(2026, 3, 8, 6, 0, tzinfo=UTC)  # 01:00 EST
    assert next_allowed(at, NY, start, time(21)) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)  # 03:00 EDT


def test_window_across_midnight():
    start, end = parse_window("22:00-06:00")
    assert allowed(datetime(2026, 6, 1, 23, 0, tzinfo=NY), NY, start, end)
    assert not allowed(datetime(2026, 6, 1, 12, 0, tzinfo=NY), NY, start, end)
    assert next_allowed(datetime(2026, 6, 1, 12, 0, tzinfo=NY), NY, start, end) == datetime(
        2026, 6, 1, 22, 0, tzinfo=NY
    ).astimezone(UTC)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError):
        next_allowed(datetime(2026, 6, 1, 12, 0), NY, START, END)
