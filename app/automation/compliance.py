"""Texting rules a carrier (and the law) expects: opt-out keywords and quiet hours. Pure functions.

Keywords: a message that is exactly one of these words (any case, surrounding spaces and punctuation
ignored) opts the sender out of, or back in to, texts from the tenant. These are the keywords Twilio
itself honours on long codes: https://www.twilio.com/docs/messaging/tutorials/advanced-opt-out
"please stop calling me" is not an opt-out; "Stop." is.

Quiet hours: an automated text due outside the contact's allowed window (default 08:00-21:00 in the
contact's time zone) waits for the next allowed moment. The time zone comes from the CRM when it has one,
else from the number (libphonenumber's geocoding), else the tenant's default. Local times are computed
with zoneinfo, so daylight-saving jumps are handled (a window that opens at a time that does not exist
that day opens at the first existing minute after it).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezone

OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN = frozenset({"START", "YES", "UNSTOP"})
HELP = frozenset({"HELP", "INFO"})

_EDGES = re.compile(r"^[\s\W_]+|[\s\W_]+$", re.UNICODE)


def keyword(body: str | None) -> str | None:
    """'opt_out', 'opt_in' or 'help' when the whole message is such a keyword, else None."""
    if not body:
        return None
    word = _EDGES.sub("", body).upper()
    if word in OPT_OUT:
        return "opt_out"
    if word in OPT_IN:
        return "opt_in"
    if word in HELP:
        return "help"
    return None


def zone(name: str | None) -> ZoneInfo | None:
    """A ZoneInfo for an IANA name, or None if the name is empty or unknown."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def time_zone_for(
    phone: str | None, crm_time_zone: str | None = None, default: str = "America/New_York"
) -> ZoneInfo:
    """The contact's time zone: the CRM's, else the number's (if it has exactly one), else the default."""
    chosen = zone(crm_time_zone)
    if chosen is not None:
        return chosen
    if phone:
        try:
            zones = phone_timezone.time_zones_for_number(phonenumbers.parse(phone, None))
        except phonenumbers.NumberParseException:
            zones = ()
        # A number spanning several zones (a whole country) says nothing precise enough: use the default.
        if len(zones) == 1 and zones[0] != "Etc/Unknown":
            chosen = zone(zones[0])
            if chosen is not None:
                return chosen
    return zone(default) or ZoneInfo("UTC")


def parse_window(text: str) -> tuple[time, time]:
    """'08:00-21:00' -> (08:00, 21:00)."""
    start, _, end = text.partition("-")
    return time.fromisoformat(start.strip()), time.fromisoformat(end.strip())


def allowed(at: datetime, tz: ZoneInfo, start: time, end: time) -> bool:
    """Whether `at` falls inside the daily window [start, end) in `tz`."""
    local = at.astimezone(tz).time().replace(tzinfo=None)
    if start <= end:
        return start <= local < end
    return local >= start or local < end  # a window across midnight, e.g. 22:00-06:00


def next_allowed(at: datetime, tz: ZoneInfo, start: time, end: time) -> datetime:
    """`at` itself if allowed, else the next moment the window opens; aware UTC."""
    if at.tzinfo is None:
        raise ValueError("naive datetime")
    if allowed(at, tz, start, end):
        return at.astimezone(UTC)
    local = at.astimezone(tz)
    for days in range(0, 3):
        day = (local + timedelta(days=days)).date()
        opening = _wall_clock(day, start, tz)
        if opening > at:
            return opening.astimezone(UTC)
    raise AssertionError("a daily window opens within two days")


def _wall_clock(day: object, at: time, tz: ZoneInfo) -> datetime:
    """When the clock in `tz` shows `at` on `day`; if DST skips that time, the first minute after it."""
    naive = datetime.combine(day, at)  # type: ignore[arg-type]
    for minutes in range(0, 181):
        candidate = (naive + timedelta(minutes=minutes)).replace(tzinfo=tz)
        # A wall time that does not exist (spring forward) does not survive a round trip through UTC.
        if candidate.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == candidate.replace(tzinfo=None):
            return candidate
    raise AssertionError("no DST gap is three hours long")
