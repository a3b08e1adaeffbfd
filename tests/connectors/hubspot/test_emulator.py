"""The HubSpot contract emulator, driven by the real hubspot-api-client over real HTTP on 127.0.0.1.

No database or Redis: these tests request none of the conftest's fixtures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hubspot import HubSpot
from hubspot.crm.associations.v4 import (
    BatchInputPublicDefaultAssociationMultiPost,
    PublicDefaultAssociationMultiPost,
)
from hubspot.crm.associations.v4 import PublicObjectId as V4ObjectId
from hubspot.crm.associations.v4.exceptions import ApiException as AssociationsApiException
from hubspot.crm.companies import SimplePublicObjectInputForCreate as CompanyInput
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInput,
    BatchReadInputSimplePublicObjectId,
    Filter,
    FilterGroup,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInput,
    SimplePublicObjectId,
    SimplePublicObjectInput,
)
from hubspot.crm.contacts import SimplePublicObjectInputForCreate as ContactInput
from hubspot.crm.contacts.exceptions import ApiException as ContactsApiException
from hubspot.crm.objects.calls import (
    AssociationSpec,
    BatchInputSimplePublicObjectBatchInputForCreate,
    BatchInputSimplePublicObjectBatchInputUpsert,
    PublicAssociationsForObject,
    PublicObjectId,
    SimplePublicObjectBatchInputForCreate,
    SimplePublicObjectBatchInputUpsert,
)
from hubspot.crm.objects.calls import SimplePublicObjectInputForCreate as CallInput
from hubspot.crm.objects.calls.exceptions import ApiException as CallsApiException
from hubspot.crm.objects.communications import SimplePublicObjectInputForCreate as CommunicationInput
from hubspot.crm.objects.communications.exceptions import ApiException as CommunicationsApiException
from hubspot.crm.objects.tasks import SimplePublicObjectInputForCreate as TaskInput
from hubspot.crm.owners.exceptions import ApiException as OwnersApiException
from hubspot.crm.properties import PropertyCreate
from hubspot.crm.properties.exceptions import ApiException as PropertiesApiException
from hubspot.oauth.exceptions import ApiException as OAuthApiException

from emulators.hubspot import EmulatorConfig, HubSpotEmulator, create_emulator

REDIRECT_URI = "https://switchboard.example.com/oauth/hubspot/callback"
CLIENT_ID, CLIENT_SECRET = "client-123", "secret-456"
NOW_ISO = "2025-03-11T16:05:04Z"


@pytest.fixture(scope="module")
def emulator() -> Iterator[HubSpotEmulator]:
    """One emulator thread for the module; each test resets it."""
    with HubSpotEmulator() as emu:
        yield emu


@pytest.fixture
def portal(emulator: HubSpotEmulator) -> dict[str, Any]:
    """A fresh portal with a private-app token and an OAuth app."""
    emulator.reset()
    emulator.config = EmulatorConfig()
    return emulator.create_portal(12345678, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)


@pytest.fixture
def client(emulator: HubSpotEmulator, portal: dict[str, Any]) -> HubSpot:
    return HubSpot(access_token=portal["token"], host=emulator.base_url)


def body_of(exc: Exception) -> dict[str, Any]:
    return json.loads(exc.body)  # type: ignore[attr-defined]


def new_contact(client: HubSpot, **props: str) -> Any:
    return client.crm.contacts.basic_api.create(ContactInput(properties=props))


def call_input(contact_id: str | None = None, **props: str) -> CallInput:
    associations = None
    if contact_id:
        spec = AssociationSpec(association_category="HUBSPOT_DEFINED", association_type_id=194)
        associations = [PublicAssociationsForObject(to=PublicObjectId(id=contact_id), types=[spec])]
    base = {"hs_timestamp": NOW_ISO, "hs_call_direction": "OUTBOUND", "hs_call_status": "COMPLETED"}
    return CallInput(properties={**base, **props}, associations=associations)


def control(emulator: HubSpotEmulator, path: str, payload: dict[str, Any] | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(
        emulator.base_url + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


# ---- objects ----------------------------------------------------------------------------------------------
def test_contact_create_answers_201_and_the_sdk_returns_the_object(client: HubSpot) -> None:
    obj, status, _ = client.crm.contacts.basic_api.create_with_http_info(
        ContactInput(
            properties={"firstname": "Jordan", "email": "jordan@example.net", "phone": "+1 (415) 555-0100"}
        )
    )
    assert status == 201
    assert obj.id == "51000000001"
    assert obj.properties["firstname"] == "Jordan"
    assert obj.properties["hs_object_id"] == obj.id
    assert obj.properties["hs_searchable_calculated_phone_number"] == "4155550100"
    assert obj.created_at is not None and obj.archived is False

    fetched = client.crm.contacts.basic_api.get_by_id(obj.id, properties=["phone", "mobilephone"])
    assert fetched.properties["phone"] == "+1 (415) 555-0100"
    assert fetched.properties["mobilephone"] is None  # requested but unset -> null
    assert set(fetched.properties) == {
        "createdate",
        "hs_object_id",
        "lastmodifieddate",
        "phone",
        "mobilephone",
    }
    by_email = client.crm.contacts.basic_api.get_by_id("JORDAN@example.net", id_property="email")
    assert by_email.id == obj.id

    updated = client.crm.contacts.basic_api.update(obj.id, SimplePublicObjectInput(properties={"phone": ""}))
    assert "phone" not in updated.properties
    assert "hs_searchable_calculated_phone_number" not in updated.properties


def test_search_by_phone_in_any_stored_format(client: HubSpot) -> None:
    stored = ["+1 (415) 555-0100", "415.555.0101", "4155550102", "+14155550103"]
    ids = [new_contact(client, firstname=f"C{i}", phone=p).id for i, p in enumerate(stored)]
    new_contact(client, firstname="Mobile", mobilephone="(415) 555-0199")

    flt = Filter(
        property_name="hs_searchable_calculated_phone_number",
        operator="IN",
        values=["4155550100", "4155550102"],
    )
    request = PublicObjectSearchRequest(
        filter_groups=[FilterGroup(filters=[flt])], properties=["phone", "mobilephone"]
    )
    found = client.crm.contacts.search_api.do_search(request)
    assert found.total == 2
    assert [r.id for r in found.results] == [ids[0], ids[2]]
    assert found.results[0].properties["mobilephone"] is None

    # OR across filter groups: an EQ on the mobile number or on the E.164 phone
    groups = [
        FilterGroup(
            filters=[
                Filter(
                    property_name="hs_searchable_calculated_mobile_number", operator="EQ", value="4155550199"
                )
            ]
        ),
        FilterGroup(filters=[Filter(property_name="phone", operator="EQ", value="+14155550103")]),
    ]
    found = client.crm.contacts.search_api.do_search(PublicObjectSearchRequest(filter_groups=groups))
    assert found.total == 2
    assert {r.properties["firstname"] for r in found.results} == {"Mobile", "C3"}


def test_search_paging_sorting_and_operators(
    emulator: HubSpotEmulator, client: HubSpot, portal: dict
) -> None:
    emulator.set_limits(portal["portal_id"], search_per_second=100)  # many searches in a row
    for i, name in enumerate(["alpha", "bravo", "charlie", "delta", "echo"]):
        new_contact(client, firstname=name, email=f"{name}@example.com", company="Acme Inc" if i % 2 else "")

    def search(**kwargs: Any) -> Any:
        return client.crm.contacts.search_api.do_search(PublicObjectSearchRequest(**kwargs))

    page = search(
        limit=2, sorts=[{"propertyName": "firstname", "direction": "DESCENDING"}], properties=["firstname"]
    )
    assert page.total == 5 and [r.properties["firstname"] for r in page.results] == ["echo", "delta"]
    assert page.paging.next.after == "2"
    last = search(limit=2, after="4", sorts=[{"propertyName": "firstname", "direction": "DESCENDING"}])
    assert [r.properties["firstname"] for r in last.results] == ["alpha"] and last.paging is None

    def count(*filters: Filter) -> int:
        return search(filter_groups=[FilterGroup(filters=list(filters))]).total

    assert count(Filter(property_name="company", operator="HAS_PROPERTY")) == 2
    assert count(Filter(property_name="company", operator="NOT_HAS_PROPERTY")) == 3
    assert count(Filter(property_name="company", operator="CONTAINS_TOKEN", value="acme")) == 2
    assert count(Filter(property_name="email", operator="CONTAINS_TOKEN", value="*@example.com")) == 5
    assert count(Filter(property_name="firstname", operator="NOT_IN", values=["alpha", "BRAVO"])) == 3
    assert count(Filter(property_name="firstname", operator="NEQ", value="alpha")) == 4
    assert count(Filter(property_name="hs_object_id", operator="GT", value="51000000003")) == 2
    assert count(Filter(property_name="hs_object_id", operator="LTE", value="51000000003")) == 3
    assert count(Filter(property_name="createdate", operator="GTE", value="2020-01-01T00:00:00Z")) == 5


@pytest.mark.parametrize(
    ("groups", "filters_each", "limit"),
    [(6, 1, 10), (1, 7, 10), (4, 5, 10), (1, 1, 201)],
    ids=["6-groups", "7-filters-in-a-group", "20-filters", "limit-201"],
)
def test_search_limits_answer_400(client: HubSpot, groups: int, filters_each: int, limit: int) -> None:
    flt = Filter(property_name="firstname", operator="EQ", value="x")
    request = PublicObjectSearchRequest(
        filter_groups=[FilterGroup(filters=[flt] * filters_each) for _ in range(groups)], limit=limit
    )
    with pytest.raises(ContactsApiException) as err:
        client.crm.contacts.search_api.do_search(request)
    assert err.value.status == 400
    assert body_of(err.value)["category"] == "VALIDATION_ERROR"


def test_in_filter_takes_at_most_100_values(client: HubSpot) -> None:
    flt = Filter(property_name="phone", operator="IN", values=[str(i) for i in range(101)])
    with pytest.raises(ContactsApiException) as err:
        client.crm.contacts.search_api.do_search(
            PublicObjectSearchRequest(filter_groups=[FilterGroup(filters=[flt])])
        )
    assert err.value.status == 400


def test_call_with_inline_association_reads_back_both_ways(
    emulator: HubSpotEmulator, client: HubSpot, portal: dict
) -> None:
    contact = new_contact(client, firstname="Jordan")
    call, status, _ = client.crm.objects.calls.basic_api.create_with_http_info(
        call_input(contact.id, hs_call_body="Quote #1042", hs_call_duration="109000")
    )
    assert status == 201 and call.id == "81000000001"
    assert call.properties["hs_timestamp"] == NOW_ISO
    assert call.properties["hs_call_duration"] == "109000"

    links = client.crm.associations.v4.basic_api.get_page("calls", call.id, "contacts")
    assert [(r.to_object_id, [t.type_id for t in r.association_types]) for r in links.results] == [
        (contact.id, [194])
    ]
    back = client.crm.associations.v4.basic_api.get_page("contacts", contact.id, "calls")
    assert back.results[0].to_object_id == call.id and back.results[0].association_types[0].type_id == 193
    assert emulator.associations(portal["portal_id"], "calls", call.id, "contacts") == {contact.id: {194}}


def test_default_associations_batch_and_single(client: HubSpot) -> None:
    contact = new_contact(client, firstname="A")
    company = client.crm.companies.basic_api.create(CompanyInput(properties={"name": "Acme"}))
    batch = BatchInputPublicDefaultAssociationMultiPost(
        inputs=[
            PublicDefaultAssociationMultiPost(_from=V4ObjectId(id=contact.id), to=V4ObjectId(id=company.id))
        ]
    )
    for _ in range(2):  # idempotent
        result = client.crm.associations.v4.batch_api.create_default("contacts", "companies", batch)
        assert result.status == "COMPLETE" and result.results[0].association_spec.association_type_id == 279
    single = client.crm.associations.v4.basic_api.create_default(
        "companies", company.id, "contacts", contact.id
    )
    assert single.results[0].association_spec.association_type_id == 280
    assert (
        len(client.crm.associations.v4.basic_api.get_page("companies", company.id, "contacts").results) == 1
    )

    missing = BatchInputPublicDefaultAssociationMultiPost(
        inputs=[PublicDefaultAssociationMultiPost(_from=V4ObjectId(id=contact.id), to=V4ObjectId(id="999"))]
    )
    with pytest.raises(AssociationsApiException) as err:
        client.crm.associations.v4.batch_api.create_default("contacts", "companies", missing)
    assert err.value.status == 400


def test_batch_create_201_then_207_with_one_invalid_input(client: HubSpot) -> None:
    good = SimplePublicObjectBatchInputForCreate(properties={"hs_timestamp": NOW_ISO, "hs_call_title": "ok"})
    result, status, _ = client.crm.objects.calls.batch_api.create_with_http_info(
        BatchInputSimplePublicObjectBatchInputForCreate(inputs=[good, good])
    )
    assert status == 201 and len(result.results) == 2 and result.status == "COMPLETE"

    bad = SimplePublicObjectBatchInputForCreate(
        properties={"hs_timestamp": NOW_ISO, "twilio_call_sid": "CA43"}, object_write_trace_id="CA43"
    )
    result, status, _ = client.crm.objects.calls.batch_api.create_with_http_info(
        BatchInputSimplePublicObjectBatchInputForCreate(inputs=[good, bad])
    )
    assert status == 207
    assert len(result.results) == 1 and result.num_errors == 1
    error = result.errors[0]
    assert error.category == "VALIDATION_ERROR" and error.context == {"objectWriteTraceId": ["CA43"]}
    assert "PROPERTY_DOESNT_EXIST" in error.message


def test_batch_update_and_read_answer_207_for_unknown_ids(client: HubSpot) -> None:
    ids = [new_contact(client, firstname=f"n{i}", email=f"n{i}@example.com").id for i in range(2)]
    update = BatchInputSimplePublicObjectBatchInput(
        inputs=[
            SimplePublicObjectBatchInput(id=ids[0], properties={"lastname": "Updated"}),
            SimplePublicObjectBatchInput(id="51000000999", properties={"lastname": "Nobody"}),
        ]
    )
    result, status, _ = client.crm.contacts.batch_api.update_with_http_info(update)
    assert status == 207 and result.results[0].properties["lastname"] == "Updated"
    assert result.errors[0].category == "OBJECT_NOT_FOUND"

    read = BatchReadInputSimplePublicObjectId(
        inputs=[SimplePublicObjectId(id="N1@example.com"), SimplePublicObjectId(id="nobody@example.com")],
        id_property="email",
        properties=["firstname"],
        properties_with_history=[],
    )
    result, status, _ = client.crm.contacts.batch_api.read_with_http_info(read)
    assert status == 207 and [r.id for r in result.results] == [ids[1]]
    assert result.results[0].properties["firstname"] == "n1"
    assert result.errors[0].context == {"ids": ["nobody@example.com"]}


def test_batch_limits(client: HubSpot) -> None:
    inputs = [SimplePublicObjectBatchInputForCreate(properties={"hs_timestamp": NOW_ISO})] * 101
    with pytest.raises(CallsApiException) as err:
        client.crm.objects.calls.batch_api.create(
            BatchInputSimplePublicObjectBatchInputForCreate(inputs=inputs)
        )
    assert err.value.status == 400


def test_batch_upsert_by_a_unique_custom_property(client: HubSpot) -> None:
    created = client.crm.properties.core_api.create(
        "calls",
        PropertyCreate(
            name="twilio_call_sid",
            label="Twilio Call SID",
            type="string",
            field_type="text",
            group_name="callinformation",
            has_unique_value=True,
        ),
    )
    assert created.has_unique_value is True
    assert client.crm.properties.core_api.get_by_name("calls", "twilio_call_sid").name == "twilio_call_sid"

    def upsert(title: str) -> Any:
        item = SimplePublicObjectBatchInputUpsert(
            id_property="twilio_call_sid",
            id="CA0001",
            properties={"hs_timestamp": NOW_ISO, "hs_call_title": title},
        )
        return client.crm.objects.calls.batch_api.upsert(
            BatchInputSimplePublicObjectBatchInputUpsert(inputs=[item])
        )

    first, second = upsert("first"), upsert("second")
    assert first.results[0].new is True and second.results[0].new is False
    assert first.results[0].id == second.results[0].id
    assert second.results[0].properties["hs_call_title"] == "second"
    assert second.results[0].properties["twilio_call_sid"] == "CA0001"

    with pytest.raises(CallsApiException) as err:  # the unique value is taken
        client.crm.objects.calls.basic_api.create(call_input(twilio_call_sid="CA0001"))
    assert err.value.status == 409 and "already has that value" in body_of(err.value)["message"]
    with pytest.raises(CallsApiException) as err:  # idProperty must be a unique property
        item = SimplePublicObjectBatchInputUpsert(id_property="hs_call_title", id="x", properties={})
        client.crm.objects.calls.batch_api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=[item]))
    assert err.value.status == 400
    with pytest.raises(PropertiesApiException) as err:
        client.crm.properties.core_api.create(
            "calls",
            PropertyCreate(
                name="twilio_call_sid", label="x", type="string", field_type="text", group_name="g"
            ),
        )
    assert err.value.status == 409


# ---- errors -----------------------------------------------------------------------------------------------
def test_unknown_property_is_400_with_hubspots_body(client: HubSpot) -> None:
    with pytest.raises(CallsApiException) as err:
        client.crm.objects.calls.basic_api.create(call_input(twilio_call_sid="CA43"))
    assert err.value.status == 400
    body = body_of(err.value)
    assert list(body) == ["status", "message", "correlationId", "errors", "category"]  # the fixture's order
    assert body["category"] == "VALIDATION_ERROR"
    assert body["message"].startswith('Property values were not valid: [{"isValid":false,')
    assert body["errors"] == [
        {
            "message": 'Property "twilio_call_sid" does not exist',
            "code": "PROPERTY_DOESNT_EXIST",
            "context": {"propertyName": ["twilio_call_sid"]},
        }
    ]
    detail = json.loads(body["message"].split(": ", 1)[1])[0]
    assert detail["error"] == "PROPERTY_DOESNT_EXIST" and detail["portalId"] == 12345678


@pytest.mark.parametrize(
    ("props", "code"),
    [
        ({"hs_call_status": "DONE"}, "INVALID_OPTION"),
        ({"hs_call_direction": "SIDEWAYS"}, "INVALID_OPTION"),
        ({"hs_timestamp": ""}, "REQUIRED"),
        ({"hs_call_duration": "long"}, "INVALID_DECIMAL"),
        ({"hs_timestamp": "yesterday"}, "INVALID_DATE"),
        ({"hubspot_owner_id": "424242"}, "INVALID_OWNER_ID"),
    ],
)
def test_invalid_call_values_are_400(client: HubSpot, props: dict[str, str], code: str) -> None:
    with pytest.raises(CallsApiException) as err:
        client.crm.objects.calls.basic_api.create(call_input(**props))
    assert err.value.status == 400
    assert body_of(err.value)["errors"][0]["code"] == code


def test_read_only_property_and_bad_associations_are_400(client: HubSpot) -> None:
    with pytest.raises(ContactsApiException) as err:
        new_contact(client, hs_searchable_calculated_phone_number="4155550100")
    assert err.value.status == 400 and body_of(err.value)["errors"][0]["code"] == "READ_ONLY_VALUE"
    with pytest.raises(CallsApiException) as err:
        client.crm.objects.calls.basic_api.create(call_input("51000000999"))  # no such contact
    assert err.value.status == 400 and body_of(err.value)["category"] == "VALIDATION_ERROR"
    contact = new_contact(client, firstname="x")
    spec = AssociationSpec(association_category="HUBSPOT_DEFINED", association_type_id=999)
    bad_type = call_input()
    bad_type.associations = [PublicAssociationsForObject(to=PublicObjectId(id=contact.id), types=[spec])]
    with pytest.raises(CallsApiException) as err:
        client.crm.objects.calls.basic_api.create(bad_type)
    assert err.value.status == 400


def test_communications_and_tasks_validate_their_enumerations(client: HubSpot) -> None:
    sms = {
        "hs_timestamp": NOW_ISO,
        "hs_communication_channel_type": "SMS",
        "hs_communication_logged_from": "CRM",
    }
    created = client.crm.objects.communications.basic_api.create(CommunicationInput(properties=sms))
    assert created.id == "91000000001"
    wrong = CommunicationInput(properties={**sms, "hs_communication_logged_from": "API"})
    with pytest.raises(CommunicationsApiException) as err:
        client.crm.objects.communications.basic_api.create(wrong)
    assert err.value.status == 400
    assert body_of(err.value)["errors"][0]["code"] == "INVALID_OPTION"
    task = client.crm.objects.tasks.basic_api.create(
        TaskInput(
            properties={
                "hs_timestamp": "1741709104000",
                "hs_task_status": "NOT_STARTED",
                "hs_task_type": "CALL",
            }
        )
    )
    assert task.properties["hs_timestamp"] == "2025-03-11T16:05:04Z"  # ms epoch in, ISO out


def test_unknown_id_is_404(client: HubSpot) -> None:
    with pytest.raises(ContactsApiException) as err:
        client.crm.contacts.basic_api.get_by_id("51000000999")
    assert err.value.status == 404
    assert body_of(err.value)["category"] == "OBJECT_NOT_FOUND"
    assert body_of(err.value)["message"] == "Object not found.  objectId are usually numeric."
    with pytest.raises(ContactsApiException) as err:
        client.crm.contacts.basic_api.update(
            "51000000999", SimplePublicObjectInput(properties={"firstname": "x"})
        )
    assert err.value.status == 404


def test_bad_token_is_401(emulator: HubSpotEmulator, portal: dict) -> None:
    client = HubSpot(access_token="pat-na1-not-a-token", host=emulator.base_url)
    with pytest.raises(ContactsApiException) as err:
        new_contact(client, firstname="x")
    assert err.value.status == 401
    body = body_of(err.value)
    assert (
        body["category"] == "INVALID_AUTHENTICATION" and body["status"] == "error" and body["correlationId"]
    )
    assert body["message"].startswith("Authentication credentials not found")


def test_email_is_unique_among_contacts(client: HubSpot) -> None:
    first = new_contact(client, email="dup@example.com")
    with pytest.raises(ContactsApiException) as err:
        new_contact(client, email="DUP@example.com")
    assert err.value.status == 409
    assert body_of(err.value)["message"] == f"Contact already exists. Existing ID: {first.id}"
    assert body_of(err.value)["category"] == "CONFLICT"


def test_a_unique_value_moves_with_its_updates_and_frees_on_archive(client: HubSpot) -> None:
    # The emulator finds unique values through an index (emulators.hubspot.Portal.unique_index): an
    # update moves the value, an archived contact gives it up.
    first = new_contact(client, email="old@example.com")
    client.crm.contacts.basic_api.update(
        first.id, SimplePublicObjectInput(properties={"email": "New@Example.com"})
    )
    second = new_contact(client, email="old@example.com")  # free again
    with pytest.raises(ContactsApiException) as err:
        new_contact(client, email="new@example.com")
    assert body_of(err.value)["message"] == f"Contact already exists. Existing ID: {first.id}"
    client.crm.contacts.basic_api.archive(first.id)
    third = new_contact(client, email="new@example.com")
    assert len({first.id, second.id, third.id}) == 3


# ---- rate limits ------------------------------------------------------------------------------------------
def test_429_storm_after_the_ten_second_limit(
    emulator: HubSpotEmulator, client: HubSpot, portal: dict
) -> None:
    # POSTs: urllib3's default Retry (the SDK's, as retries=None) re-sends a GET answered 429 with Retry-After
    # after sleeping that long, so a GET would come back 200 ten seconds later instead of raising.
    emulator.set_limits(portal["portal_id"], ten_second_max=5)
    for i in range(5):
        _, _, headers = client.crm.contacts.basic_api.create_with_http_info(ContactInput(properties={}))
        assert headers["X-HubSpot-RateLimit-Max"] == "5"
        assert headers["X-HubSpot-RateLimit-Remaining"] == str(4 - i)
        assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    for _ in range(3):  # rejected requests do not count, so each keeps being rejected
        with pytest.raises(ContactsApiException) as err:
            new_contact(client, firstname="x")
        assert err.value.status == 429
        assert 1 <= int(err.value.headers["Retry-After"]) <= 10
        body = body_of(err.value)
        assert body["errorType"] == "RATE_LIMIT" and body["policyName"] == "TEN_SECONDLY_ROLLING"
    stats = emulator.stats(portal["portal_id"])
    assert stats["rate_limited"] == 3 and stats["by_status"] == {201: 5, 429: 3}
    assert len(emulator.objects(portal["portal_id"], "contacts")) == 5


def test_search_limit_per_second(emulator: HubSpotEmulator, client: HubSpot, portal: dict) -> None:
    emulator.set_limits(portal["portal_id"], search_per_second=2)
    for _ in range(2):
        _, status, headers = client.crm.contacts.search_api.do_search_with_http_info(
            PublicObjectSearchRequest()
        )
        assert status == 200 and "X-HubSpot-RateLimit-Max" not in headers
    with pytest.raises(ContactsApiException) as err:
        client.crm.contacts.search_api.do_search(PublicObjectSearchRequest())
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "1"
    assert body_of(err.value)["policyName"] == "SECONDLY"
    time.sleep(1.05)
    assert client.crm.contacts.search_api.do_search(PublicObjectSearchRequest()).total == 0


# ---- OAuth ------------------------------------------------------------------------------------------------
def test_oauth_code_exchange_refresh_revoke_and_expiry(emulator: HubSpotEmulator, portal: dict) -> None:
    oauth = HubSpot(host=emulator.base_url).oauth
    code = emulator.issue_code(portal["portal_id"], CLIENT_ID, REDIRECT_URI)
    creds = dict(redirect_uri=REDIRECT_URI, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    tokens = oauth.tokens_api.create(grant_type="authorization_code", code=code, **creds)
    assert tokens.token_type == "bearer" and tokens.expires_in == 1800 and tokens.refresh_token
    info = oauth.access_tokens_api.get(tokens.access_token)
    assert info.hub_id == portal["portal_id"] and info.token_type == "access" and 0 < info.expires_in <= 1800

    with pytest.raises(OAuthApiException) as err:  # codes are single-use
        oauth.tokens_api.create(grant_type="authorization_code", code=code, **creds)
    assert err.value.status == 400 and body_of(err.value)["error"] == "invalid_grant"

    client = HubSpot(access_token=tokens.access_token, host=emulator.base_url)
    assert new_contact(client, firstname="via oauth").id
    refreshed = oauth.tokens_api.create(
        grant_type="refresh_token",
        refresh_token=tokens.refresh_token,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    assert refreshed.access_token != tokens.access_token and refreshed.refresh_token == tokens.refresh_token

    with pytest.raises(OAuthApiException) as err:
        oauth.tokens_api.create(
            grant_type="refresh_token",
            refresh_token=tokens.refresh_token,
            client_id=CLIENT_ID,
            client_secret="wrong",
        )
    assert err.value.status == 400

    emulator.revoke_refresh_token(tokens.refresh_token)
    with pytest.raises(OAuthApiException) as err:
        oauth.tokens_api.create(
            grant_type="refresh_token",
            refresh_token=tokens.refresh_token,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
        )
    assert err.value.status == 400
    assert body_of(err.value) == {
        "error": "invalid_grant",
        "error_description": "refresh token is invalid, expired or revoked",
        "status": "BAD_REFRESH_TOKEN",
        "message": "refresh token is invalid, expired or revoked",
    }

    emulator.expire_token(tokens.access_token)
    with pytest.raises(ContactsApiException) as err:
        client.crm.contacts.search_api.do_search(PublicObjectSearchRequest())
    assert err.value.status == 401 and body_of(err.value)["category"] == "EXPIRED_AUTHENTICATION"
    with pytest.raises(OAuthApiException) as err:
        oauth.access_tokens_api.get(tokens.access_token)
    assert err.value.status == 404


def test_short_lived_tokens_expire_by_themselves(emulator: HubSpotEmulator, portal: dict) -> None:
    token = emulator.issue_access_token(portal["portal_id"], CLIENT_ID, expires_in=1)
    client = HubSpot(access_token=token, host=emulator.base_url)
    assert new_contact(client, firstname="x").id
    time.sleep(1.1)
    with pytest.raises(ContactsApiException) as err:
        new_contact(client, firstname="y")
    assert err.value.status == 401


# ---- faults, owners, stats, control endpoints --------------------------------------------------------------
def test_injected_503_then_success_and_delays(
    emulator: HubSpotEmulator, client: HubSpot, portal: dict
) -> None:
    emulator.fail_next("/crm/v3/objects/contacts", 503)
    with pytest.raises(ContactsApiException) as err:
        new_contact(client, firstname="x")
    assert err.value.status == 503 and body_of(err.value)["status"] == "error"
    assert new_contact(client, firstname="x").id  # the fault was for one request only
    assert emulator.stats(portal["portal_id"])["by_status"] == {503: 1, 201: 1}

    emulator.fail_next("/crm/v3/objects/calls", 502, count=2, method="POST")
    client.crm.contacts.search_api.do_search(PublicObjectSearchRequest())  # other paths are untouched
    for _ in range(2):
        with pytest.raises(CallsApiException) as err:
            client.crm.objects.calls.basic_api.create(call_input())
        assert err.value.status == 502
    assert client.crm.objects.calls.basic_api.create(call_input()).id

    emulator.delay_next("/crm/v3/objects/contacts", 300)
    started = time.monotonic()
    assert new_contact(client, firstname="slow").id
    assert time.monotonic() - started >= 0.3


def test_owners_and_owner_validation(emulator: HubSpotEmulator, client: HubSpot, portal: dict) -> None:
    alex = emulator.add_owner(portal["portal_id"], "alex.agent@example.com", "Alex", "Agent")
    emulator.add_owner(portal["portal_id"], "sam.seller@example.com", "Sam", "Seller")
    page = client.crm.owners.owners_api.get_page(email="ALEX.agent@example.com")
    assert [(o.id, o.email, o.first_name, o.user_id) for o in page.results] == [
        (alex["id"], "alex.agent@example.com", "Alex", alex["userId"])
    ]
    assert len(client.crm.owners.owners_api.get_page(limit=1).results) == 1
    call = client.crm.objects.calls.basic_api.create(call_input(hubspot_owner_id=alex["id"]))
    assert call.properties["hubspot_owner_id"] == alex["id"]


def test_stats_count_requests_per_route(emulator: HubSpotEmulator, client: HubSpot, portal: dict) -> None:
    for _ in range(3):
        new_contact(client, firstname="x")
    client.crm.contacts.search_api.do_search(PublicObjectSearchRequest())
    with pytest.raises(ContactsApiException):
        client.crm.contacts.basic_api.get_by_id("1")
    stats = emulator.stats(portal["portal_id"])
    assert stats["total"] == 5
    assert stats["by_route"] == {
        "POST /crm/v3/objects/{object_type}": 3,
        "POST /crm/v3/objects/{object_type}/search": 1,
        "GET /crm/v3/objects/{object_type}/{object_id}": 1,
    }
    assert stats["by_status"] == {201: 3, 200: 1, 404: 1}
    assert emulator.stats()["total"] == 5
    assert len(emulator.objects(portal["portal_id"], "contacts")) == 3
    assert emulator.requests(portal["portal_id"])[0]["json"] == {"properties": {"firstname": "x"}}
    over_http = control(emulator, f"/_emulator/stats?portal_id={portal['portal_id']}")
    assert over_http["by_route"]["POST /crm/v3/objects/{object_type}"] == 3


def test_control_endpoints_over_http(emulator: HubSpotEmulator) -> None:
    emulator.reset()
    created = control(
        emulator, "/_emulator/portals", {"portal_id": 777, "client_id": "c", "client_secret": "s"}
    )
    assert created["portal_id"] == 777 and created["token"].startswith("pat-na1-")
    control(emulator, "/_emulator/owners", {"portal_id": 777, "email": "o@example.com"})
    code = control(emulator, "/_emulator/codes", {"portal_id": 777, "client_id": "c"})["result"]
    control(emulator, "/_emulator/faults", {"prefix": "/crm/v3/owners", "status": 500})
    client = HubSpot(access_token=created["token"], host=emulator.base_url)
    with pytest.raises(OwnersApiException) as err:
        client.crm.owners.owners_api.get_page()
    assert err.value.status == 500
    assert len(client.crm.owners.owners_api.get_page().results) == 1
    control(emulator, "/_emulator/limits", {"portal_id": 777, "ten_second_max": 1})
    with pytest.raises(ContactsApiException) as err:
        new_contact(client, firstname="x")
    assert err.value.status == 429
    tokens = HubSpot(host=emulator.base_url).oauth.tokens_api.create(
        grant_type="authorization_code",
        code=code,
        redirect_uri=REDIRECT_URI,
        client_id="c",
        client_secret="s",
    )
    assert emulator.tokens[tokens.access_token].portal_id == 777
    assert control(emulator, "/_emulator/objects/777/contacts") == {"results": []}


def test_create_emulator_returns_a_flask_app_with_its_state() -> None:
    app = create_emulator(EmulatorConfig(ten_second_max=2))
    emu = app.extensions["hubspot_emulator"]
    token = emu.create_portal()["token"]
    http = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    assert http.post("/crm/v3/objects/contacts", json={"properties": {}}, headers=headers).status_code == 201
    assert http.post("/crm/v3/objects/contacts", json={"properties": {}}, headers=headers).status_code == 201
    assert http.post("/crm/v3/objects/contacts", json={"properties": {}}, headers=headers).status_code == 429


def test_module_entry_point_prints_the_base_url() -> None:
    root = Path(__file__).resolve().parents[3]
    with subprocess.Popen(
        [sys.executable, "-m", "emulators.hubspot", "--port", "0", "--token", "pat-na1-cli"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:")
            client = HubSpot(access_token="pat-na1-cli", host=base_url)
            assert new_contact(client, firstname="cli").id == "51000000001"
        finally:
            proc.terminate()
            proc.wait(10)
