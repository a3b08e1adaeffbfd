"""The Salesforce contract emulator, driven by the real simple-salesforce over HTTP: shapes match the captured
fixtures, errors are Salesforce's, limits and sessions behave like an org's."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from emulators.salesforce import SalesforceEmulator, case_safe, http_session

FIXTURES = Path(__file__).parents[2] / "fixtures" / "salesforce"
VERSION = "62.0"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def server() -> Any:
    emu = SalesforceEmulator()
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def org(server: SalesforceEmulator) -> dict[str, Any]:
    server.reset()
    return server.create_org()


@pytest.fixture
def sf(server: SalesforceEmulator, org: dict[str, Any]) -> Salesforce:
    return Salesforce(
        instance_url=server.base_url,
        session_id=org["token"],
        session=http_session(server.base_url),
        version=VERSION,
    )


def keys(value: Any) -> Any:
    """The shape of a JSON value: key sets, recursively (first list item only)."""
    if isinstance(value, dict):
        return {k: keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [keys(value[0])] if value else []
    return type(value).__name__ if value is not None else None


def test_ids_are_18_character_case_safe():
    assert case_safe("003000000000001") == "003000000000001AAA"
    assert case_safe("00Q000000000001") == "00Q000000000001EAA"
    assert case_safe("00D000000000001") == "00D000000000001EAA"


def test_create_answers_like_the_captured_task_create(sf):
    created = sf.Task.create({"Subject": "Call", "TaskSubtype": "Call", "CallDurationInSeconds": 60})
    assert set(created) == set(fixture("api__task_create_response.json"))
    assert created["id"].startswith("00T") and len(created["id"]) == 18
    assert sf.Task.get(created["id"])["TaskSubtype"] == "Call"


def test_every_response_carries_the_daily_usage(sf, server, org):
    sf.query("SELECT Id FROM Contact")
    assert sf.api_usage["api-usage"].used == 1 and sf.api_usage["api-usage"].total == 15000
    limits = sf.limits()
    assert set(limits["DailyApiRequests"]) >= {"Max", "Remaining"}
    assert limits["DailyApiRequests"]["Remaining"] == 15000 - 2
    assert set(fixture("api__limits_response_excerpt.json")["DailyApiRequests"]) >= {"Max", "Remaining"}


def test_the_daily_allocation_runs_out_with_request_limit_exceeded(sf, server, org):
    server.set_limits(org["org_id"], daily_max=3)
    sf.limits()
    sf.limits()
    sf.limits()
    with pytest.raises(SalesforceRefusedRequest) as err:
        sf.limits()
    assert err.value.content == fixture("api__error_request_limit_exceeded.json")


def test_an_ended_session_is_401_invalid_session_id(sf, server, org):
    server.expire_token(org["token"])
    with pytest.raises(SalesforceExpiredSession) as err:
        sf.query("SELECT Id FROM Contact")
    assert err.value.content == fixture("api__error_invalid_session.json")


def test_sosl_finds_phones_in_any_stored_format_and_skips_converted_leads(sf, server, org):
    contact = sf.Contact.create({"LastName": "Rivera", "Phone": "(555) 555-0123", "AccountId": None})["id"]
    lead = sf.Lead.create({"LastName": "Rivera", "Company": "Rivera Logistics", "Phone": "555-555-0123"})[
        "id"
    ]
    server.insert(
        org["org_id"], "Lead", {"LastName": "Old", "Company": "X", "Phone": "5555550123", "IsConverted": True}
    )
    sosl = (
        "FIND {5555550123 OR 15555550123} IN PHONE FIELDS RETURNING Contact(Id, Name, Phone, MobilePhone, "
        "OwnerId, AccountId), Lead(Id, Name, Phone, MobilePhone, OwnerId, Company WHERE IsConverted = false)"
    )
    found = sf.search(sosl)["searchRecords"]
    assert [r["Id"] for r in found] == [contact, lead]
    captured = fixture("api__sosl_phone_search_response.json")["searchRecords"]
    assert keys(found[0]) == keys(captured[0]) or set(found[0]) == set(captured[0])
    assert set(found[1]) == set(captured[1])


def test_sosl_refuses_unescaped_reserved_characters(sf):
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.search("FIND {+15555550123} IN PHONE FIELDS RETURNING Contact(Id)")
    assert err.value.content[0]["errorCode"] == "MALFORMED_SEARCH"
    assert sf.search(r"FIND {\+15555550123} IN PHONE FIELDS RETURNING Contact(Id)")["searchRecords"] == []


def test_soql_pages_with_next_records_url(sf, server, org):
    server.set_limits(org["org_id"], query_batch_size=2)
    for n in range(5):
        sf.Contact.create({"LastName": f"P{n}", "Email": f"p{n}@example.org"})
    first = sf.query("SELECT Id, LastName FROM Contact WHERE Email LIKE '%example.org' ORDER BY LastName")
    assert first["done"] is False and first["totalSize"] == 5 and first["nextRecordsUrl"]
    every = sf.query_all("SELECT Id, LastName FROM Contact ORDER BY LastName DESC")
    assert [r["LastName"] for r in every["records"]] == ["P4", "P3", "P2", "P1", "P0"]


def test_order_by_several_fields_modstamps_and_composite_queries(sf, server, org):
    ids = [sf.Contact.create({"LastName": f"P{n}"})["id"] for n in range(3)]
    with server.same_transaction():  # one SystemModstamp for all three
        for rid in reversed(ids):
            server.update(org["org_id"], "Contact", rid, {"FirstName": "Same"})
    server.update(org["org_id"], "Contact", ids[0], {"FirstName": "Late"}, modstamp_ago=60)
    rows = sf.query_all("SELECT Id, SystemModstamp FROM Contact ORDER BY SystemModstamp, Id")["records"]
    stamps = [r["SystemModstamp"] for r in rows]
    assert [r["Id"] for r in rows] == [ids[0], ids[1], ids[2]] and stamps[1] == stamps[2] > stamps[0]
    q = f"/services/data/v{VERSION}/query/?q=SELECT+Id+FROM+Contact+ORDER+BY+Id+DESC"
    before = server.stats(org["org_id"])["total"]
    answer = sf.restful(
        "composite/",
        method="POST",
        json={
            "compositeRequest": [
                {"method": "GET", "url": q, "referenceId": "people"},
                {"method": "GET", "url": q.replace("Contact", "Nope"), "referenceId": "bad"},
            ]
        },
    )
    good, bad = answer["compositeResponse"]
    assert good["httpStatusCode"] == 200 and [r["Id"] for r in good["body"]["records"]] == ids[::-1]
    assert bad["httpStatusCode"] == 400 and bad["body"][0]["errorCode"] == "INVALID_TYPE"
    assert server.stats(org["org_id"])["total"] == before + 1  # one request, as Salesforce counts it
    with pytest.raises(SalesforceMalformedRequest):
        sf.restful("composite/", method="POST", json={"compositeRequest": [{"method": "GET", "url": q}] * 6})


def test_upsert_by_external_id_creates_then_updates(sf, server, org):
    assert sf.Task.upsert("Switchboard_Id__c/switchboard-interaction-1", {"Subject": "a"}) == 201
    assert sf.Task.upsert("Switchboard_Id__c/switchboard-interaction-1", {"Subject": "b"}) == 200
    [task] = server.records(org["org_id"], "Task")
    assert task["Subject"] == "b"


def test_collections_upsert_reports_each_record(sf, server, org):
    contact = sf.Contact.create({"LastName": "Rivera"})["id"]
    body = {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Task"},
                "Switchboard_Id__c": "a",
                "WhoId": contact,
                "TaskSubtype": "Call",
            },
            {"attributes": {"type": "Task"}, "Switchboard_Id__c": "b", "WhoId": "006000000000001AAA"},
        ],
    }
    results = sf.restful("composite/sobjects/Task/Switchboard_Id__c", method="PATCH", json=body)
    captured = fixture("api__composite_sobjects_response.json")
    assert results[0]["success"] is True and results[0]["created"] is True
    assert results[1]["success"] is False
    assert set(results[1]["errors"][0]) == set(captured[1]["errors"][0])
    assert results[1]["errors"][0]["statusCode"] == "FIELD_INTEGRITY_EXCEPTION"
    # TaskSubtype is create-only: sending it again on an update fails that record only
    again = sf.restful("composite/sobjects/Task/Switchboard_Id__c", method="PATCH", json=body)
    assert again[0]["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    body["records"] = [{"attributes": {"type": "Task"}, "Switchboard_Id__c": f"t{i}"} for i in range(201)]
    with pytest.raises(SalesforceMalformedRequest):
        sf.restful("composite/sobjects/Task/Switchboard_Id__c", method="PATCH", json=body)


def test_all_or_none_rolls_back(sf, server, org):
    body = {
        "allOrNone": True,
        "records": [
            {"attributes": {"type": "Contact"}, "LastName": "Ok"},
            {"attributes": {"type": "Contact"}, "FirstName": "No last name"},
        ],
    }
    results = sf.restful("composite/sobjects", method="POST", json=body)
    assert [r["success"] for r in results] == [False, False]
    assert results[0]["errors"][0]["statusCode"] == "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    assert server.records(org["org_id"], "Contact") == []


def test_a_lead_task_cannot_have_a_what_id(sf):
    lead = sf.Lead.create({"LastName": "L", "Company": "C"})["id"]
    account = sf.Account.create({"Name": "A"})["id"]
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.Task.create({"Subject": "x", "WhoId": lead, "WhatId": account})
    assert err.value.content[0]["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"


def test_injected_faults(sf, server, org):
    server.fail_next("query", status=503)
    with pytest.raises(SalesforceGeneralError) as err:
        sf.query("SELECT Id FROM Contact")
    assert err.value.status == 503
    server.lock_next_records(org["org_id"], 1)
    body = {"allOrNone": False, "records": [{"attributes": {"type": "Contact"}, "LastName": n} for n in "ab"]}
    results = sf.restful("composite/sobjects", method="POST", json=body)
    assert results[0]["errors"][0]["statusCode"] == "UNABLE_TO_LOCK_ROW" and results[1]["success"]


def test_describe_names_the_external_id_field(sf, server, org):
    fields = {f["name"]: f for f in sf.Task.describe()["fields"]}
    assert fields["Switchboard_Id__c"]["externalId"] and fields["CallObject"]["type"] == "string"
    bare = server.create_org(external_id=False, call_center=False)
    sf2 = Salesforce(
        instance_url=server.base_url, session_id=bare["token"], session=http_session(server.base_url)
    )
    names = {f["name"] for f in sf2.Task.describe()["fields"]}
    assert "Switchboard_Id__c" not in names and "CallObject" not in names
    created = sf2.restful(
        "tooling/sobjects/CustomField/",
        method="POST",
        json={"FullName": "Activity.Switchboard_Id__c", "Metadata": {"externalId": True, "unique": True}},
    )
    assert created["success"]
    assert any(f["name"] == "Switchboard_Id__c" and f["externalId"] for f in sf2.Task.describe()["fields"])


def test_oauth_web_server_flow_with_pkce_and_refresh(server, org):
    server.create_client("cid", "csecret", "https://sb.example/oauth/salesforce/callback")
    verifier = "v" * 64
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    r = requests.get(
        f"{server.base_url}/services/oauth2/authorize",
        params={
            "response_type": "code",
            "client_id": "cid",
            "redirect_uri": "https://sb.example/oauth/salesforce/callback",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "scope": "api refresh_token",
            "state": "s1",
        },
        allow_redirects=False,
        timeout=5,
    )
    assert r.status_code == 302 and "state=s1" in r.headers["Location"]
    code = r.headers["Location"].split("code=")[1].split("&")[0]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": "cid",
        "client_secret": "csecret",
        "redirect_uri": "https://sb.example/oauth/salesforce/callback",
        "code_verifier": "wrong",
    }
    bad = requests.post(f"{server.base_url}/services/oauth2/token", data=form, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    code = server.issue_code(org["org_id"], "cid", form["redirect_uri"], challenge)
    tokens = requests.post(
        f"{server.base_url}/services/oauth2/token",
        data={**form, "code": code, "code_verifier": verifier},
        timeout=5,
    ).json()
    assert tokens["instance_url"] == server.base_url and tokens["id"].endswith(
        f"/id/{org['org_id']}/{org['user_id']}"
    )
    refreshed = requests.post(
        f"{server.base_url}/services/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "cid",
            "client_secret": "csecret",
        },
        timeout=5,
    ).json()
    assert refreshed["access_token"] != tokens["access_token"] and "refresh_token" not in refreshed
    server.revoke_refresh_token(tokens["refresh_token"])
    gone = requests.post(
        f"{server.base_url}/services/oauth2/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "cid",
            "client_secret": "csecret",
        },
        timeout=5,
    )
    assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"


def test_email_message_create_upsert_query_and_its_status_rule(sf, server, org):
    account = server.insert(org["org_id"], "Account", {"Name": "Rivera Roofing"})["Id"]
    contact = server.insert(org["org_id"], "Contact", {"LastName": "Rivera", "AccountId": account})["Id"]
    fields = {f["name"]: f for f in sf.EmailMessage.describe()["fields"]}
    assert fields["ToIds"]["type"] == "junctionidlist" and not fields["ToIds"]["updateable"]
    assert fields["Switchboard_Id__c"]["externalId"] and fields["RelatedToId"]["referenceTo"] == [
        "Account",
        "Opportunity",
    ]
    created = sf.EmailMessage.create(
        {
            "Subject": "Hello",
            "TextBody": "Hi",
            "Incoming": True,
            "ToIds": [contact],
            "RelatedToId": account,
            "MessageIdentifier": "<a@x>",
        }
    )
    assert created["id"].startswith("02s")
    got = sf.EmailMessage.get(created["id"])
    assert got["Status"] == "0" and got["ToIds"] == [contact] and got["Incoming"] is True
    sf.EmailMessage.update(created["id"], {"Status": "1"})  # New -> Read: allowed
    with pytest.raises(SalesforceMalformedRequest) as err:
        sf.EmailMessage.update(created["id"], {"Status": "3"})
    assert err.value.content[0]["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    with pytest.raises(SalesforceMalformedRequest):
        sf.EmailMessage.update(created["id"], {"ToIds": [contact]})  # create-only
    assert sf.EmailMessage.upsert("Switchboard_Id__c/sb-1", {"Subject": "Out", "Status": "3"}) == 201
    assert sf.EmailMessage.upsert("Switchboard_Id__c/sb-1", {"Subject": "Out again"}) == 200
    rows = sf.query("SELECT Id, Subject, Status FROM EmailMessage WHERE MessageIdentifier = '<a@x>'")
    assert [r["Id"] for r in rows["records"]] == [created["id"]]
    assert len(server.records(org["org_id"], "EmailMessage")) == 2


def test_an_org_without_enhanced_email_has_no_email_message(server):
    bare = server.create_org(email_message=False)
    sf2 = Salesforce(
        instance_url=server.base_url, session_id=bare["token"], session=http_session(server.base_url)
    )
    with pytest.raises(SalesforceResourceNotFound) as err:
        sf2.EmailMessage.describe()
    assert err.value.content[0]["errorCode"] == "NOT_FOUND"
    assert err.value.content[0]["message"] == "The requested resource does not exist"
    with pytest.raises(SalesforceResourceNotFound):
        sf2.EmailMessage.create({"Subject": "x"})
    with pytest.raises(SalesforceMalformedRequest):
        sf2.query("SELECT Id FROM EmailMessage")
    assert "EmailMessage" not in {s["name"] for s in sf2.describe()["sobjects"]}
