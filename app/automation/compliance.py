"""Texting rules a carrier (and the law) expects: opt-out keywords and quiet hours. Pure functions.

Keywords: a message that is exactly one of these words (any case, surrounding spaces and punctuation
ignored) opts the sender out of, or back in to, texts from the tenant. These are the keywords Twilio
itself honours on long codes: https://www.twilio.com/docs/messaging/tutorials/advanced-opt-out
"please stop calling me" is not an opt-out; "Stop." is.

Quiet hours: an automated text due outside the contact's allowed window (default 08:00-21:00 in the
contact's time zone) waits for the next allowed moment. The time zone comes from the CRM when it has one,
else from the number (libphonenumber's geocoding), else the tenant's default. Local times are computed
with zoneinfo, so daylight-saving jumps are handled (a window that opens at a time that does not exist
that day opens at the first existing minute after it). Quiet hours can be off (`quiet_hours: off`):
parse_window then gives (None, None) and every moment is allowed.
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
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory such as "America"
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


OFF = ("off", "none", "")  # quiet_hours values that mean "send any time"
_WINDOW = re.compile(r"\s*(\d\d):(\d\d)\s*-\s*(\d\d):(\d\d)\s*")


def parse_window(text: str | None) -> tuple[time, time] | tuple[None, None]:
    """'08:00-21:00' -> (08:00, 21:00); None or 'off' -> (None, None), no quiet hours.

    ValueError (saying why) for anything else: not HH:MM-HH:MM, a time that is not a time of day
    (25:00, 08:60), or a window that starts when it ends (is 00:00-00:00 never, or always?).
    """
    if text is None or text.strip().lower() in OFF:
        return None, None
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a window like 08:00-21:00 (or off)")
    h1, m1, h2, m2 = (int(x) for x in match.groups())
    for hour, minute in ((h1, m1), (h2, m2)):
        if hour > 23 or minute > 59:
            raise ValueError(
                f"{hour:02d}:{minute:02d} in {text.strip()!r} is not a time of day (00:00 to 23:59)"
            )
    start, end = time(h1, m1), time(h2, m2)
    if start == end:
        raise ValueError(
            f"{text.strip()!r} starts when it ends, which could mean never or always: "
            "write off to send texts at any time, or a window such as 08:00-21:00"
        )
    return start, end


def allowed(at: datetime, tz: ZoneInfo, start: time | None, end: time | None) -> bool:
    """Whether `at` falls inside the daily window [start, end) in `tz`; always, if quiet hours are off."""
    if start is None or end is None:
        return True
    local = at.astimezone(tz).time().replace(tzinfo=None)
    if start <= end:
        return start <= local < end
    return local >= start or local < end  # a window across midnight, e.g. 22:00-06:00


def next_allowed(at: datetime, tz: ZoneInfo, start: time | None, end: time | None) -> datetime:
    """`at` itself if allowed (always, with quiet hours off), else the next moment the window opens; UTC."""
    if at.tzinfo is None:
        raise ValueError("naive datetime")
    if allowed(at, tz, start, end):
        return at.astimezone(UTC)
    assert start is not None
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
