"""Phone numbers: everything we store or match is E.164, parsed with Google's libphonenumber port."""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

# Caller-ID strings Twilio passes through when there is no number to give; see
# https://www.twilio.com/docs/voice/twiml#request-parameters ("From" may be client:, sip:, anonymous ...).
_NOT_A_NUMBER = ("client:", "sip:", "anonymous", "unknown", "restricted", "private", "unavailable")


def to_e164(raw: str | None, region: str = "US") -> str | None:
    """Normalize a phone number to E.164, using `region` for national formats; None if it is not one."""
    if not raw:
        return None
    text = raw.strip()
    if not text or text.lower().startswith(_NOT_A_NUMBER):
        return None
    try:
        parsed = phonenumbers.parse(text, region.upper() if region else None)
    except phonenumbers.NumberParseException:
        return None
    # is_possible rather than is_valid: fictional 555 numbers (demos, tests) are possible, not valid.
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=4096)  # the sync titles every activity with it: phonenumbers takes ~95 us a call here
def pretty(e164: str) -> str:
    """Format an E.164 number for people (international format)."""
    try:
        return phonenumbers.format_number(
            phonenumbers.parse(e164, None), phonenumbers.PhoneNumberFormat.INTERNATIONAL
        )
    except phonenumbers.NumberParseException:
        return e164
