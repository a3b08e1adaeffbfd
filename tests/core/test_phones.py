"""Unit tests of app/phones.py: E.164 normalization of what Twilio and people type, and display formatting."""

from __future__ import annotations

import pytest

from app.core.phones import pretty, to_e164


@pytest.mark.parametrize(
    "raw",
    [
        "+1 (415) 555-0100",
        "4155550100",
        "415.555.0100",
        "+14155550100",
        "(415) 555-0100",
        "  +1 415 555 0100  ",
    ],
)
def test_us_formats_normalize_to_e164(raw: str) -> None:
    assert to_e164(raw, "US") == "+14155550100"


def test_region_defaults_to_us() -> None:
    assert to_e164("415-555-0100") == "+14155550100"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("020 7946 0018", "+442079460018"),  # London landline, national format
        ("07700 900123", "+447700900123"),  # UK mobile, national format
        ("+44 20 7946 0018", "+442079460018"),
    ],
)
def test_uk_national_numbers_use_the_gb_region(raw: str, expected: str) -> None:
    assert to_e164(raw, "GB") == expected


def test_region_is_case_insensitive() -> None:
    assert to_e164("020 7946 0018", "gb") == "+442079460018"


def test_international_number_ignores_region() -> None:
    # A number written with its country code means the same thing whatever the tenant's region.
    assert to_e164("+15555550123", "GB") == "+15555550123"


def test_fictional_555_numbers_are_kept() -> None:
    # Demo and test numbers are "possible" but not "valid"; they must still normalize.
    assert to_e164("(555) 555-0123", "US") == "+15555550123"


def test_national_number_without_region_is_not_a_number() -> None:
    assert to_e164("4155550100", "") is None


@pytest.mark.parametrize(
    "raw",
    [
        "client:alice",
        "sip:alice@example.sip.twilio.com",
        "anonymous",
        "Anonymous",
        "Restricted",
        "RESTRICTED",
        "unknown",
        "private",
        "Unavailable",
        "",
        "   ",
        None,
        "abc",
        "123",
    ],
)
def test_non_numbers_give_none(raw: str | None) -> None:
    assert to_e164(raw, "US") is None


@pytest.mark.parametrize(
    ("e164", "expected"),
    [
        ("+14155550100", "+1 415-555-0100"),
        ("+15555550123", "+1 555-555-0123"),
        ("+442079460018", "+44 20 7946 0018"),
    ],
)
def test_pretty_uses_international_format(e164: str, expected: str) -> None:
    assert pretty(e164) == expected


def test_pretty_leaves_unparseable_text_alone() -> None:
    assert pretty("client:alice") == "client:alice"


def test_pretty_round_trips_through_to_e164() -> None:
    for number in ("+14155550100", "+442079460018", "+15555550123"):
        assert to_e164(pretty(number), "US") == number
