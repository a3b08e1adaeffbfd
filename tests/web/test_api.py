"""The read API (`/api/v1`, Bearer API keys) and the health checks.

Interactions are created by posting real signed Twilio fixtures and synced to the built-in CRM by a real
RQ worker; every query must stay inside the API key's tenant. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from app.core import db
from app.core.db import utcnow
from app.core.models import ApiKey, Interaction, LocalActivity, LocalContact, Tenant
from app.core.settings import Settings
from app.core.tenants import create_api_key
from app.web import create_app
from tests.conftest import count, make_tenant
from tests.signing import TwilioPoster, fixture_params

OTHER_ACCOUNT = "AC" + "c" * 32
OTHER_TOKEN = "00112233445566778899aabbccddeeff"
OTHER_NUMBER = "+15555550200"
JORDAN = "+15555550123"
STRANGER = "+15555550177"

VOICE = "/webhooks/twilio/voice"
SMS = "/webhooks/twilio/sms"


# --- helpers -----------------------------------------------------------------------------------------


def new_key(tenant: Tenant) -> str:
    """Create an API key for `tenant` the way the CLI does."""
    with db.transaction() as s:
        t = s.get(Tenant, tenant.id)
        assert t is not None
        return create_api_key(s, t)


def api(client: Any, path: str, key: str | None, **query: Any) -> Any:
    """GET an API path with a Bearer key (or none)."""
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return client.get(path, query_string=query, headers=headers)


def ok(response: Any) -> Any:
    """Assert a 200 JSON response and return its body."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.is_json
    return response.get_json()


def bad_param(response: Any, field: str) -> None:
    """Assert a 400 that names the offending query parameter."""
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert body["field"] == field
    assert isinstance(body["error"], str) and body["error"]


def ids(body: dict[str, Any]) -> list[int]:
    """The interaction or contact ids of a list response, in order."""
    return [row["id"] for row in body["data"]]


def interaction_ids(tenant_id: int) -> list[int]:
    """The tenant's interaction ids in the database, newest (highest) first."""
    with db.transaction() as s:
        return list(
            s.scalars(
                select(Interaction.id)
                .where(Interaction.tenant_id == tenant_id)
                .order_by(Interaction.id.desc())
            )
        )


def interaction_id(provider_id: str, tenant_id: int) -> int:
    """The id of the tenant's interaction for a CallSid or MessageSid."""
    with db.transaction() as s:
        found = s.scalar(
            select(Interaction.id).where(
                Interaction.tenant_id == tenant_id, Interaction.provider_id == provider_id
            )
        )
    assert found is not None
    return found


def contact_ids(tenant_id: int) -> list[int]:
    """The tenant's built-in CRM contact ids."""
    with db.transaction() as s:
        return list(
            s.scalars(
                select(LocalContact.id).where(LocalContact.tenant_id == tenant_id).order_by(LocalContact.id)
            )
        )


def jordan_id(tenant_id: int) -> int:
    """The id of Jordan Rivera, the contact make_tenant puts in every tenant's built-in CRM."""
    with db.transaction() as s:
        found = s.scalar(
            select(LocalContact.id).where(
                LocalContact.tenant_id == tenant_id, LocalContact.name == "Jordan Rivera"
            )
        )
    assert found is not None
    return found


def message_sid(n: int) -> str:
    """A well-formed MessageSid."""
    return f"SM{n:032x}"


def text_from(
    twilio: TwilioPoster,
    phone: str,
    n: int,
    *,
    account: str | None = None,
    token: str | None = None,
    to: str | None = None,
    body: str | None = None,
) -> Any:
    """Post the inbound-SMS fixture as message number `n` from `phone`."""
    params = fixture_params("sms__inbound")
    sid = message_sid(n)
    params.update(MessageSid=sid, SmsSid=sid, SmsMessageSid=sid, From=phone)
    if account:
        params["AccountSid"] = account
    if to:
        params["To"] = to
    if body is not None:
        params["Body"] = body
    r = twilio.post(SMS, params, token=token)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r


@pytest.fixture
def key(tenant: Tenant) -> str:
    """An API key of the fixture tenant (acme)."""
    return new_key(tenant)


@pytest.fixture
def other_tenant(tenant: Tenant) -> Tenant:
    """A second tenant (globex): its own Twilio account, token and number; Jordan is in its CRM too."""
    return make_tenant("globex", OTHER_ACCOUNT, OTHER_TOKEN, number=OTHER_NUMBER)


@pytest.fixture
def other_key(other_tenant: Tenant) -> str:
    """An API key of the second tenant."""
    return new_key(other_tenant)


@pytest.fixture
def three(tenant: Tenant, twilio: TwilioPoster) -> list[int]:
    """Acme's interactions, oldest first: Jordan's call, Jordan's text, a stranger's text."""
    assert twilio.fixture(VOICE, "voice__incoming").status_code == 200
    assert twilio.fixture(SMS, "sms__inbound").status_code == 200
    text_from(twilio, STRANGER, 0x77, body="Do you ship to Canada?")
    created = sorted(interaction_ids(tenant.id))
    assert len(created) == 3
    return created


# --- authentication ------------------------------------------------------------------------------


ENDPOINTS = ["/api/v1/interactions", "/api/v1/interactions/1", "/api/v1/contacts", "/api/v1/contacts/1"]


def assert_unauthorized(response: Any) -> None:
    """401, a JSON error, a Bearer challenge, and no data."""
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    body = response.get_json()
    assert body == {"error": "missing or invalid API key"}


@pytest.mark.parametrize("path", ENDPOINTS)
def test_no_key_is_401(client: Any, key: str, three: list[int], path: str) -> None:
    assert_unauthorized(client.get(path))


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic dXNlcjpwYXNzd29yZA==",
        "Bearer garbage",
        "Bearer sb_short_abc",
        "Bearer sb__",
        "Bearer " + "x" * 5000,
        "Bearer sb_0123456789ab_" + "A" * 43,
    ],
    ids=[
        "empty",
        "scheme-only",
        "scheme-space",
        "scheme-spaces",
        "basic-auth",
        "garbage",
        "short-prefix",
        "empty-parts",
        "huge",
        "unknown-prefix",
    ],
)
def test_malformed_or_unknown_key_is_401(client: Any, key: str, three: list[int], header: str) -> None:
    for path in ENDPOINTS:
        assert_unauthorized(client.get(path, headers={"Authorization": header}))


def test_key_in_the_wrong_scheme_or_without_one_is_401(client: Any, key: str, three: list[int]) -> None:
    for header in (key, f"Token {key}", f"Basic {key}"):
        assert_unauthorized(client.get("/api/v1/interactions", headers={"Authorization": header}))


def test_right_prefix_wrong_secret_is_401(client: Any, key: str, three: list[int]) -> None:
    prefix = key.rsplit("_", 1)[0]
    secret = key.split("_", 2)[2]
    forged = f"{prefix}_{'A' * len(secret)}"
    assert forged != key
    assert_unauthorized(api(client, "/api/v1/interactions", forged))
    assert_unauthorized(api(client, "/api/v1/interactions", key + "x"))
    assert_unauthorized(api(client, "/api/v1/interactions", key[:-1]))


def test_revoked_key_is_401(client: Any, key: str, three: list[int]) -> None:
    assert ok(api(client, "/api/v1/interactions", key))["data"]
    with db.transaction() as s:
        for row in s.scalars(select(ApiKey)):
            row.revoked_at = utcnow()
    assert_unauthorized(api(client, "/api/v1/interactions", key))


def test_valid_key_is_accepted_and_scheme_is_case_insensitive(
    client: Any, key: str, three: list[int]
) -> None:
    for header in (f"Bearer {key}", f"bearer {key}", f"BEARER {key}", f"Bearer   {key}  "):
        body = ok(client.get("/api/v1/interactions", headers={"Authorization": header}))
        assert len(body["data"]) == 3
    with db.transaction() as s:
        used = s.scalar(select(ApiKey.last_used_at))
    assert used is not None


# --- listing interactions --------------------------------------------------------------------------


def test_list_is_newest_first(client: Any, key: str, three: list[int]) -> None:
    body = ok(api(client, "/api/v1/interactions", key))
    assert ids(body) == sorted(three, reverse=True)
    assert [row["channel"] for row in body["data"]] == ["sms", "sms", "call"]
    assert [row["party"]["phone"] for row in body["data"]] == [STRANGER, JORDAN, JORDAN]
    assert body["next_cursor"] is None
    occurred = [datetime.fromisoformat(row["occurred_at"]) for row in body["data"]]
    assert all(t.tzinfo is not None for t in occurred)
    assert occurred == sorted(occurred, reverse=True)


def test_list_is_empty_for_a_tenant_without_interactions(client: Any, key: str) -> None:
    body = ok(api(client, "/api/v1/interactions", key))
    assert body == {"data": [], "next_cursor": None}


@pytest.mark.parametrize(
    "phone",
    [
        "(555) 555-0123",
        "555-555-0123",
        "555.555.0123",
        "+1 555 555 0123",
        "1-555-555-0123",
        JORDAN,
        " +15555550123 ",
    ],
)
def test_phone_filter_accepts_any_format(client: Any, key: str, three: list[int], phone: str) -> None:
    body = ok(api(client, "/api/v1/interactions", key, phone=phone))
    assert ids(body) == [three[1], three[0]]
    assert {row["party"]["phone"] for row in body["data"]} == {JORDAN}


def test_phone_filter_other_numbers(client: Any, key: str, three: list[int]) -> None:
    assert ids(ok(api(client, "/api/v1/interactions", key, phone="(555) 555-0177"))) == [three[2]]
    assert ids(ok(api(client, "/api/v1/interactions", key, phone="+15555550111"))) == []
    # Our own number is never the outside party.
    assert ids(ok(api(client, "/api/v1/interactions", key, phone="+15555550100"))) == []


@pytest.mark.parametrize("phone", ["not-a-phone", "123", "sip:alice@example.com", "+1555", "x" * 300])
def test_bad_phone_is_400(client: Any, key: str, three: list[int], phone: str) -> None:
    bad_param(api(client, "/api/v1/interactions", key, phone=phone), "phone")
    bad_param(api(client, "/api/v1/contacts", key, phone=phone), "phone")


def test_channel_filter(client: Any, key: str, three: list[int]) -> None:
    calls = ok(api(client, "/api/v1/interactions", key, channel="call"))
    assert ids(calls) == [three[0]]
    texts = ok(api(client, "/api/v1/interactions", key, channel="sms"))
    assert ids(texts) == [three[2], three[1]]
    assert ids(ok(api(client, "/api/v1/interactions", key, channel="email"))) == []
    bad_param(api(client, "/api/v1/interactions", key, channel="fax"), "channel")
    bad_param(api(client, "/api/v1/interactions", key, channel="SMS"), "channel")


def test_status_filter(client: Any, key: str, three: list[int]) -> None:
    assert ids(ok(api(client, "/api/v1/interactions", key, status="ringing"))) == [three[0]]
    assert ids(ok(api(client, "/api/v1/interactions", key, status="received"))) == [three[2], three[1]]
    assert ids(ok(api(client, "/api/v1/interactions", key, status="completed"))) == []


def test_filters_combine(client: Any, key: str, three: list[int]) -> None:
    body = ok(api(client, "/api/v1/interactions", key, phone="(555) 555-0123", channel="sms"))
    assert ids(body) == [three[1]]
    body = ok(api(client, "/api/v1/interactions", key, phone="(555) 555-0177", channel="call"))
    assert ids(body) == []


def test_crm_state_filter_follows_the_worker(
    client: Any, key: str, three: list[int], run_worker: Any
) -> None:
    assert ids(ok(api(client, "/api/v1/interactions", key, crm_state="pending"))) == three[::-1]
    assert ids(ok(api(client, "/api/v1/interactions", key, crm_state="synced"))) == []
    assert run_worker() == 1  # one sync trigger for the tenant drains all three
    assert ids(ok(api(client, "/api/v1/interactions", key, crm_state="pending"))) == []
    assert ids(ok(api(client, "/api/v1/interactions", key, crm_state="synced"))) == three[::-1]
    assert ids(ok(api(client, "/api/v1/interactions", key, crm_state="failed"))) == []


def test_since_filter_respects_the_time_zone(client: Any, key: str, three: list[int]) -> None:
    now = utcnow()
    plus_five = timezone(timedelta(hours=5))
    minus_eight = timezone(timedelta(hours=-8))
    # An hour ago, written in +05:00: its wall-clock time is *later* than now in UTC.
    hour_ago = (now - timedelta(hours=1)).astimezone(plus_five).isoformat()
    assert ids(ok(api(client, "/api/v1/interactions", key, since=hour_ago))) == three[::-1]
    # An hour from now, written in -08:00: its wall-clock time is *earlier* than now in UTC.
    hour_ahead = (now + timedelta(hours=1)).astimezone(minus_eight).isoformat()
    assert ids(ok(api(client, "/api/v1/interactions", key, since=hour_ahead))) == []
    zulu = (now - timedelta(days=1)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ids(ok(api(client, "/api/v1/interactions", key, since=zulu))) == three[::-1]


def test_since_splits_at_an_interaction(client: Any, key: str, three: list[int]) -> None:
    body = ok(api(client, "/api/v1/interactions", key))
    by_id = {row["id"]: row["occurred_at"] for row in body["data"]}
    # Exactly the second interaction's time: it and the ones after it, not the first.
    since = datetime.fromisoformat(by_id[three[1]]).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert ids(ok(api(client, "/api/v1/interactions", key, since=since))) == [three[2], three[1]]


@pytest.mark.parametrize(
    "since",
    [
        "yesterday",
        "2026-01-01T00:00:00",
        "2026-13-01T00:00:00Z",
        "2026-01-01T00:00:00 00:00",
        "1741709105",
    ],
    ids=["word", "no-zone", "month-13", "unencoded-plus", "epoch"],
)
def test_bad_since_is_400(client: Any, key: str, three: list[int], since: str) -> None:
    bad_param(api(client, "/api/v1/interactions", key, since=since), "since")


@pytest.mark.parametrize(
    ("since", "expected"),
    [("0001-01-01T00:00:00+05:00", "all"), ("9999-12-31T23:00:00-05:00", "none")],
    ids=["before-year-1-utc", "after-year-9999-utc"],
)
def test_since_at_the_edge_of_the_calendar_is_not_a_server_error(
    client: Any, key: str, three: list[int], since: str, expected: str
) -> None:
    """Valid ISO 8601 with a zone, but outside datetime's range once converted to UTC: 400 or an answer."""
    r = api(client, "/api/v1/interactions", key, since=since)
    assert r.status_code != 500, r.get_data(as_text=True)
    if r.status_code == 400:
        bad_param(r, "since")
    else:
        assert ids(ok(r)) == (three[::-1] if expected == "all" else [])


@pytest.mark.parametrize("limit", ["0", "201", "-1", "abc", "1.5", "\u00b2", "1e2"])
def test_limit_out_of_bounds_is_400(client: Any, key: str, three: list[int], limit: str) -> None:
    bad_param(api(client, "/api/v1/interactions", key, limit=limit), "limit")
    bad_param(api(client, "/api/v1/contacts", key, limit=limit), "limit")


def test_empty_limit_means_the_default(client: Any, key: str, three: list[int]) -> None:
    assert ids(ok(api(client, "/api/v1/interactions", key, limit=""))) == three[::-1]


def test_limit_bounds_are_inclusive(client: Any, key: str, three: list[int]) -> None:
    one = ok(api(client, "/api/v1/interactions", key, limit="1"))
    assert ids(one) == [three[2]]
    assert one["next_cursor"] == str(three[2])
    all_ = ok(api(client, "/api/v1/interactions", key, limit="200"))
    assert ids(all_) == three[::-1]
    assert all_["next_cursor"] is None
    assert len(ok(api(client, "/api/v1/contacts", key, limit="200"))["data"]) == 1


def walk(client: Any, key: str, limit: int, **filters: str) -> list[list[int]]:
    """Follow next_cursor to the end; return the ids of each page."""
    pages: list[list[int]] = []
    cursor: str | None = None
    for _ in range(100):
        query: dict[str, Any] = {"limit": str(limit), **filters}
        if cursor is not None:
            query["cursor"] = cursor
        body = ok(api(client, "/api/v1/interactions", key, **query))
        pages.append(ids(body))
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7, 8])
def test_cursor_pagination_walks_every_row_exactly_once(
    client: Any, key: str, tenant: Tenant, twilio: TwilioPoster, limit: int
) -> None:
    assert twilio.fixture(VOICE, "voice__incoming").status_code == 200
    for n in range(1, 8):
        text_from(twilio, JORDAN if n % 2 else STRANGER, n)
    expected = interaction_ids(tenant.id)
    assert len(expected) == 8
    pages = walk(client, key, limit)
    flat = [i for page in pages for i in page]
    assert flat == expected  # every row once, newest first, across page boundaries
    assert all(len(page) == limit for page in pages[:-1])
    assert 1 <= len(pages[-1]) <= limit
    assert len(pages) == -(-8 // limit)


def test_cursor_pagination_keeps_the_filters(
    client: Any, key: str, tenant: Tenant, twilio: TwilioPoster
) -> None:
    assert twilio.fixture(VOICE, "voice__incoming").status_code == 200
    for n in range(1, 8):
        text_from(twilio, JORDAN if n % 2 else STRANGER, n)
    pages = walk(client, key, 2, phone="(555) 555-0123", channel="sms")
    flat = [i for page in pages for i in page]
    with db.transaction() as s:
        expected = list(
            s.scalars(
                select(Interaction.id)
                .where(Interaction.party_phone == JORDAN, Interaction.channel == "sms")
                .order_by(Interaction.id.desc())
            )
        )
    assert len(expected) == 4
    assert flat == expected


def test_rows_arriving_during_pagination_do_not_shift_pages(
    client: Any, key: str, tenant: Tenant, twilio: TwilioPoster
) -> None:
    for n in range(1, 5):
        text_from(twilio, JORDAN, n)
    first = ok(api(client, "/api/v1/interactions", key, limit="2"))
    text_from(twilio, JORDAN, 99)  # newer than everything, so it belongs before page one
    second = ok(api(client, "/api/v1/interactions", key, limit="2", cursor=first["next_cursor"]))
    before = interaction_ids(tenant.id)[1:]
    assert ids(first) + ids(second) == before
    assert second["next_cursor"] is None


@pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "\u00b2", "0x10"])
def test_bad_cursor_is_400(client: Any, key: str, three: list[int], cursor: str) -> None:
    bad_param(api(client, "/api/v1/interactions", key, cursor=cursor), "cursor")


def test_cursor_beyond_any_id_is_not_a_server_error(client: Any, key: str, three: list[int]) -> None:
    """A digits-only cursor larger than any 64-bit id: refused naming cursor, or simply past the end."""
    r = api(client, "/api/v1/interactions", key, cursor="9" * 30)
    assert r.status_code != 500, r.get_data(as_text=True)
    if r.status_code == 400:
        bad_param(r, "cursor")
    else:
        assert ids(ok(r)) == three[::-1]  # every id is below the cursor


# --- one interaction -------------------------------------------------------------------------------


def test_interaction_detail_before_and_after_sync(
    client: Any, key: str, tenant: Tenant, twilio: TwilioPoster, run_worker: Any
) -> None:
    assert twilio.fixture(VOICE, "voice__incoming").status_code == 200
    call_id = interaction_id("CA00000000000000000000000000000011", tenant.id)

    before = ok(api(client, f"/api/v1/interactions/{call_id}", key))
    assert before["id"] == call_id
    assert before["channel"] == "call"
    assert before["direction"] == "inbound"
    assert before["status"] == "ringing"
    assert before["provider"] == "twilio"
    assert before["provider_id"] == "CA00000000000000000000000000000011"
    assert before["party"] == {"phone": JORDAN, "email": None}
    assert before["our_number"] == "+15555550100"
    assert before["from"] == JORDAN
    assert before["to"] == "+15555550100"
    # Jordan's owner is Sam, who has a phone, so the call was routed to Sam.
    assert before["user"]["name"] == "Sam Patel"
    assert before["user"]["email"] == "sam@acme.example"
    assert before["body"] is None
    assert before["media"] == []
    assert before["duration_seconds"] is None
    assert before["recording_url"] is None
    assert before["error_code"] is None
    assert before["ended_at"] is None
    assert datetime.fromisoformat(before["occurred_at"]).tzinfo is not None
    assert before["crm"] == {
        "state": "pending",
        "contact_id": None,
        "record_id": None,
        "match_reason": None,
        "version": 1,
        "synced_version": 0,
        "attempts": 0,
        "last_error": None,
        "synced_at": None,
    }

    assert run_worker() == 1

    after = ok(api(client, f"/api/v1/interactions/{call_id}", key))
    crm = after["crm"]
    assert crm["state"] == "synced"
    assert crm["contact_id"] == str(jordan_id(tenant.id))
    assert crm["attempts"] == 1
    assert crm["version"] == crm["synced_version"] == 1
    assert crm["last_error"] is None
    assert crm["match_reason"] == f"phone {JORDAN}"
    assert datetime.fromisoformat(crm["synced_at"]) >= datetime.fromisoformat(before["occurred_at"])
    with db.transaction() as s:
        activity = s.scalar(
            select(LocalActivity).where(LocalActivity.external_id == f"switchboard-interaction-{call_id}")
        )
    assert activity is not None
    assert crm["record_id"] == str(activity.id)
    assert activity.contact_id == jordan_id(tenant.id)
    # Everything but the CRM block is unchanged by the sync.
    assert {k: v for k, v in after.items() if k not in ("crm",)} == {
        k: v for k, v in before.items() if k not in ("crm",)
    }


def test_text_detail_carries_body_and_media(
    client: Any, key: str, tenant: Tenant, twilio: TwilioPoster
) -> None:
    assert twilio.fixture(SMS, "sms__inbound").status_code == 200
    assert twilio.fixture(SMS, "sms__inbound_mms").status_code == 200
    sms = ok(api(client, f"/api/v1/interactions/{interaction_id(message_sid(0x31), tenant.id)}", key))
    assert sms["channel"] == "sms"
    assert sms["direction"] == "inbound"
    assert sms["status"] == "received"
    assert sms["body"] == "Hi, can someone call me back about my order? Thanks - Jordan"
    assert sms["media"] == []
    assert sms["party"]["phone"] == JORDAN
    assert sms["user"] is None
    mms = ok(api(client, f"/api/v1/interactions/{interaction_id('MM' + '0' * 30 + '32', tenant.id)}", key))
    assert mms["body"] == ""
    assert [m["content_type"] for m in mms["media"]] == ["image/jpeg", "image/png"]
    assert all(m["url"].startswith("https://api.twilio.com/") for m in mms["media"])


@pytest.mark.parametrize("path", ["/api/v1/interactions/999999", "/api/v1/interactions/0"])
def test_unknown_interaction_is_404(client: Any, key: str, three: list[int], path: str) -> None:
    r = api(client, path, key)
    assert r.status_code == 404
    assert r.is_json and r.get_json()["error"]


def test_interaction_id_beyond_64_bits_is_404(client: Any, key: str, three: list[int]) -> None:
    r = api(client, "/api/v1/interactions/" + "9" * 30, key)
    assert r.status_code == 404, r.get_data(as_text=True)
    assert r.is_json


# --- tenant isolation -----------------------------------------------------------------------------


@pytest.fixture
def both(
    tenant: Tenant, other_tenant: Tenant, twilio: TwilioPoster, three: list[int], run_worker: Any
) -> dict[str, Any]:
    """Acme's three interactions plus globex's own call and text from Jordan, all synced.

    Globex's call and text reuse acme's CallSid and MessageSid: provider ids are only unique per account.
    """
    voice = fixture_params("voice__incoming")
    voice.update(AccountSid=OTHER_ACCOUNT, To=OTHER_NUMBER, Called=OTHER_NUMBER)
    assert twilio.post(VOICE, voice, token=OTHER_TOKEN).status_code == 200
    text_from(twilio, JORDAN, 0x31, account=OTHER_ACCOUNT, token=OTHER_TOKEN, to=OTHER_NUMBER, body="globex")
    assert run_worker() == 2  # one sync trigger per tenant
    theirs = interaction_ids(other_tenant.id)
    assert len(theirs) == 2
    assert not set(theirs) & set(three)
    return {"ours": three, "theirs": theirs}


def test_other_tenants_interactions_are_404(client: Any, key: str, both: dict[str, Any]) -> None:
    for other_id in both["theirs"]:
        r = api(client, f"/api/v1/interactions/{other_id}", key)
        assert r.status_code == 404
        assert "globex" not in r.get_data(as_text=True)


def test_other_tenants_rows_never_appear_in_lists(
    client: Any, key: str, other_key: str, both: dict[str, Any]
) -> None:
    ours, theirs = both["ours"], both["theirs"]
    queries: list[dict[str, str]] = [
        {},
        {"phone": JORDAN},
        {"phone": "(555) 555-0123"},
        {"channel": "call"},
        {"channel": "sms"},
        {"status": "received"},
        {"crm_state": "synced"},
        {"since": "2000-01-01T00:00:00Z"},
        {"limit": "1", "cursor": str(max(theirs) + 1)},
    ]
    for query in queries:
        seen = ids(ok(api(client, "/api/v1/interactions", key, **query)))
        assert seen, query
        assert set(seen) <= set(ours), query
        seen_b = ids(ok(api(client, "/api/v1/interactions", other_key, **query)))
        assert seen_b, query
        assert set(seen_b) <= set(theirs), query
    assert ids(ok(api(client, "/api/v1/interactions", key, limit="200"))) == ours[::-1]
    assert ids(ok(api(client, "/api/v1/interactions", other_key, limit="200"))) == theirs
    # Globex's call came in on its own number; acme's key must not find it through that number either.
    assert ids(ok(api(client, "/api/v1/interactions", key, phone=OTHER_NUMBER))) == []


def test_the_other_tenant_sees_its_own_sync(
    client: Any, other_key: str, other_tenant: Tenant, both: dict[str, Any]
) -> None:
    body = ok(api(client, "/api/v1/interactions", other_key))
    assert {row["crm"]["state"] for row in body["data"]} == {"synced"}
    assert {row["crm"]["contact_id"] for row in body["data"]} == {str(jordan_id(other_tenant.id))}
    assert {row["our_number"] for row in body["data"]} == {OTHER_NUMBER}
    text = next(row for row in body["data"] if row["channel"] == "sms")
    assert text["body"] == "globex"
    assert text["provider_id"] == message_sid(0x31)


def test_other_tenants_contacts_are_invisible(
    client: Any, key: str, tenant: Tenant, other_tenant: Tenant, both: dict[str, Any]
) -> None:
    ours, theirs = contact_ids(tenant.id), contact_ids(other_tenant.id)
    assert ours and theirs and not set(ours) & set(theirs)
    for contact_id in theirs:
        r = api(client, f"/api/v1/contacts/{contact_id}", key)
        assert r.status_code == 404
        assert "globex" not in r.get_data(as_text=True)
    assert ids(ok(api(client, "/api/v1/contacts", key))) == ours
    assert ids(ok(api(client, "/api/v1/contacts", key, phone="(555) 555-0123"))) == [jordan_id(tenant.id)]
    our_jordan = ok(api(client, f"/api/v1/contacts/{jordan_id(tenant.id)}", key))
    assert len(our_jordan["timeline"]) == 2
    assert "globex" not in {a["body"] for a in our_jordan["timeline"]}


# --- contacts ------------------------------------------------------------------------------------


def test_contact_lookup_by_phone_in_any_format(client: Any, key: str, tenant: Tenant) -> None:
    jordan = jordan_id(tenant.id)
    for phone in ("(555) 555-0123", "555.555.0123", "+1 (555) 555-0123", JORDAN):
        body = ok(api(client, "/api/v1/contacts", key, phone=phone))
        assert ids(body) == [jordan]
        contact = body["data"][0]
        assert contact["name"] == "Jordan Rivera"
        assert contact["email"] == "jordan.rivera@example.net"
        assert contact["owner_id"] == "sam@acme.example"
        assert contact["phones"] == [{"number": JORDAN, "as_entered": JORDAN, "label": "phone"}]
        assert contact["last_activity_at"] is None
    assert ok(api(client, "/api/v1/contacts", key, phone=STRANGER))["data"] == []


def test_contact_lookup_by_email(client: Any, key: str, tenant: Tenant) -> None:
    jordan = jordan_id(tenant.id)
    assert ids(ok(api(client, "/api/v1/contacts", key, email="jordan.rivera@example.net"))) == [jordan]
    assert ids(ok(api(client, "/api/v1/contacts", key, email="nobody@example.net"))) == []


def test_contact_lookup_by_email_ignores_case(client: Any, key: str, tenant: Tenant) -> None:
    """Email addresses match case-insensitively, as in the CRM matcher and the interactions filter."""
    body = ok(api(client, "/api/v1/contacts", key, email="Jordan.Rivera@Example.NET"))
    assert ids(body) == [jordan_id(tenant.id)]


def test_contact_timeline_after_the_worker(
    client: Any, key: str, tenant: Tenant, three: list[int], run_worker: Any
) -> None:
    jordan = jordan_id(tenant.id)
    empty = ok(api(client, f"/api/v1/contacts/{jordan}", key))
    assert empty["timeline"] == []
    assert empty["tasks"] == []

    assert run_worker() == 1  # one sync trigger for the tenant drains all three

    detail = ok(api(client, f"/api/v1/contacts/{jordan}", key))
    assert detail["id"] == jordan
    assert detail["name"] == "Jordan Rivera"
    timeline = detail["timeline"]
    assert [a["kind"] for a in timeline] == ["sms", "call"]  # newest first
    assert [a["external_id"] for a in timeline] == [
        f"switchboard-interaction-{three[1]}",
        f"switchboard-interaction-{three[0]}",
    ]
    text, call = timeline
    assert text["direction"] == "inbound"
    assert text["status"] == "received"
    assert text["from"] == JORDAN
    assert text["to"] == "+15555550100"
    assert text["body"] == "Hi, can someone call me back about my order? Thanks - Jordan"
    assert text["owner_id"] == "sam@acme.example"
    assert call["direction"] == "inbound"
    assert call["status"] == "ringing"
    assert call["from"] == JORDAN
    assert call["owner_id"] == "sam@acme.example"
    assert detail["last_activity_at"] == text["occurred_at"]

    # The interactions point back at these activities.
    for interaction, activity in ((three[1], text), (three[0], call)):
        crm = ok(api(client, f"/api/v1/interactions/{interaction}", key))["crm"]
        assert crm["record_id"] == str(activity["id"])
        assert crm["contact_id"] == str(jordan)
    assert count(LocalActivity) == 3


def test_unknown_caller_gets_a_contact_with_a_timeline(
    client: Any, key: str, tenant: Tenant, three: list[int], run_worker: Any
) -> None:
    assert ok(api(client, "/api/v1/contacts", key, phone=STRANGER))["data"] == []
    assert run_worker() == 1  # one sync trigger for the tenant drains all three
    found = ok(api(client, "/api/v1/contacts", key, phone="(555) 555-0177"))["data"]
    assert len(found) == 1
    stranger = found[0]
    assert stranger["name"] == "+1 555-555-0177"
    assert stranger["phones"][0]["number"] == STRANGER
    detail = ok(api(client, f"/api/v1/contacts/{stranger['id']}", key))
    assert [a["body"] for a in detail["timeline"]] == ["Do you ship to Canada?"]
    crm = ok(api(client, f"/api/v1/interactions/{three[2]}", key))["crm"]
    assert crm["contact_id"] == str(stranger["id"])
    assert crm["match_reason"] == "no match; contact created"
    assert ids(ok(api(client, "/api/v1/contacts", key))) == contact_ids(tenant.id)
    assert len(contact_ids(tenant.id)) == 2


@pytest.mark.parametrize("path", ["/api/v1/contacts/999999", "/api/v1/contacts/" + "9" * 30])
def test_unknown_contact_is_404(client: Any, key: str, tenant: Tenant, path: str) -> None:
    r = api(client, path, key)
    assert r.status_code == 404, r.get_data(as_text=True)
    assert r.is_json


# --- health -----------------------------------------------------------------------------------------


def test_healthz(client: Any) -> None:
    r = client.get("/healthz")
    assert ok(r) == {"status": "ok"}


def test_readyz_when_everything_answers(client: Any) -> None:
    body = ok(client.get("/readyz"))
    assert body == {"status": "ok", "checks": {"database": True, "redis": True}}


def test_readyz_is_503_when_redis_is_down(settings: Settings, app: Any) -> None:
    dead = create_app(settings.with_(redis_url="redis://127.0.0.1:1/0"))
    r = dead.test_client().get("/readyz")
    assert r.status_code == 503
    assert r.get_json() == {"status": "unavailable", "checks": {"database": True, "redis": False}}
    # Liveness does not depend on Redis.
    assert ok(dead.test_client().get("/healthz")) == {"status": "ok"}
    # Nothing about the healthy app changed.
    assert ok(create_app(settings).test_client().get("/readyz"))["checks"] == {
        "database": True,
        "redis": True,
    }


def test_health_checks_need_no_key_and_api_does(client: Any, key: str) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert_unauthorized(client.get("/api/v1/interactions"))
    assert ok(api(client, "/api/v1/interactions", key)) == {"data": [], "next_cursor": None}
