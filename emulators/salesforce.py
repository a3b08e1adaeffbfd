"""Salesforce REST API contract emulator: sObjects, SOQL, SOSL, sObject Collections, limits, describe,
the Tooling API's CustomField, and the OAuth 2.0 web server flow (with PKCE) and refresh tokens.

Answers with Salesforce's status codes, response shapes and error bodies (see tests/fixtures/salesforce), so
the real simple-salesforce can talk to it. simple-salesforce forces https, so mount an adapter that
rewrites to http on its requests session (``http_session(base_url)`` below does that):

    with SalesforceEmulator() as emu:
        org = emu.create_org()  # {"org_id": "00D...", "token": "00D...!...", "user_id": "005..."}
        session = http_session(emu.base_url)
        sf = Salesforce(instance_url=emu.base_url, session_id=org["token"], session=session)

Every /services/data response carries ``Sforce-Limit-Info: api-usage=N/M``; the org's daily allocation is a
counter (a request past it answers 403 REQUEST_LIMIT_EXCEEDED); tokens expire (401 INVALID_SESSION_ID);
faults can be injected (whole requests: 503, UNABLE_TO_LOCK_ROW ...; or single records inside collections).

Choices where Salesforce's behaviour is undocumented or unverified (deliberate; change them here):
- The daily counter counts every /services/data request that passed authentication, faulted ones included;
  OAuth and /_emulator requests are free. The allocation is a plain counter (Salesforce's is rolling 24 h).
- SOSL phone search: a record matches a term when the digits of one of its phone fields equal the term's
  digits, or one ends with the other and the shorter has at least 7 digits (so 4155550100 and 14155550100
  both find "(415) 555-0100"). Unescaped reserved characters in FIND {...} are a 400 MALFORMED_SEARCH. The
  index is immediately consistent (Salesforce's lags). EMAIL FIELDS match a whole address, ignoring case.
  A FIND {...} over 10,000 characters returns no rows, as Salesforce documents.
- An upsert that updates and sets a create-only field (TaskSubtype) fails that record with
  INVALID_FIELD_FOR_INSERT_UPDATE. A Task whose WhoId is a Lead cannot have a WhatId
  (FIELD_INTEGRITY_EXCEPTION).
- Collections: more than 200 records is 400 EXCEEDED_ID_LIMIT; per-record failures carry `statusCode`, and a
  failed record's result has no `id`. allOrNone=true rolls everything back
  (ALL_OR_NONE_OPERATION_ROLLED_BACK).
- References: an id of the wrong object type is FIELD_INTEGRITY_EXCEPTION, a deleted record
  ENTITY_IS_DELETED, an unknown well-formed id INVALID_CROSS_REFERENCE_KEY, anything else MALFORMED_ID.
- SOQL supports SELECT fields FROM type [WHERE ...] [ORDER BY f [ASC|DESC], ...] [LIMIT n]; WHERE has = != <
  <= > >= LIKE IN NOT IN, AND, OR, NOT and parentheses; pages hold `query_batch_size` records (default 2000)
  and a query's pages are the records as they were when it ran (later edits show in the next query).
- Every write sets LastModifiedDate and SystemModstamp to a clock that never repeats, except inside
  `same_transaction()` (one stamp for all, like a bulk update) or `update(..., modstamp_ago=s)` (a stamp in
  the past: a long transaction that committed late).
- EmailMessage (Enhanced Email; an org made with `email_message=False` has none, and its describe and
  sobjects/EmailMessage resources answer 404 NOT_FOUND "The requested resource does not exist"; a SOQL query
  of it 400 INVALID_TYPE). Status codes '0' New, '1' Read, '2' Replied, '3' Sent, '4' Forwarded, '5' Draft
  (default '0'); after insert only New -> Read may change it (else INVALID_FIELD_FOR_INSERT_UPDATE on
  Status: the error code is UNVERIFIED). ToIds (Contact/Lead/User ids, describe type junctionidlist) is
  create-only and kept on the record as a list; Salesforce's EmailMessageRelation rows and the activity Task
  it creates (ActivityId) are not modelled [UNVERIFIED shapes]. Other fields stay updatable after insert
  [UNVERIFIED: Salesforce may lock a sent email's body].
- Composite (POST composite/) runs GET subrequests on query/ and query more (at most 25, 5 queries) and
  counts as one request, as Salesforce counts it.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from flask import Flask, Response, g, has_request_context, redirect, request

from emulators.base import ServedApp

API_VERSIONS = ("58.0", "59.0", "60.0", "61.0", "62.0")
EXTERNAL_ID = "Switchboard_Id__c"
_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"

# sObject type -> (key prefix, fields). Field spec: name[:type][!] where ! means required on create;
# types: string (default), id, phone, email, bool, int, double, date, datetime, textarea, picklist,
# calc (read-only, derived), createonly (createable, not updateable).
_SOBJECTS: dict[str, tuple[str, str]] = {
    "User": ("005", "Username! Email:email FirstName LastName! IsActive:bool"),
    "Group": ("00G", "Name! Type"),
    "Account": ("001", "Name! Phone:phone Website OwnerId:id Description:textarea"),
    "Contact": (
        "003",
        "FirstName LastName! Name:calc Email:email Phone:phone MobilePhone:phone HomePhone:phone "
        "OtherPhone:phone AssistantPhone:phone AccountId:id OwnerId:id Description:textarea "
        "EmailBouncedReason EmailBouncedDate:datetime HasOptedOutOfEmail:bool",
    ),
    "Lead": (
        "00Q",
        "FirstName LastName! Name:calc Company! Email:email Phone:phone MobilePhone:phone OwnerId:id "
        "Status:picklist IsConverted:bool LeadSource Description:textarea "
        "EmailBouncedReason EmailBouncedDate:datetime HasOptedOutOfEmail:bool",
    ),
    "Opportunity": (
        "006",
        "Name! StageName:picklist! CloseDate:date! Amount:double AccountId:id OwnerId:id "
        "IsClosed:calc IsWon:calc Description:textarea",
    ),
    "OpportunityContactRole": ("00K", "OpportunityId:id! ContactId:id! Role IsPrimary:bool"),
    "Task": (
        "00T",
        "Subject Description:textarea Status:picklist Priority:picklist ActivityDate:date WhoId:id "
        "WhatId:id OwnerId:id AccountId:calc IsClosed:calc TaskSubtype:createonly",
    ),
    "EmailMessage": (
        "02s",
        "FromAddress:email FromName ToAddress CcAddress Subject TextBody:textarea HtmlBody:textarea "
        "Incoming:bool Status:picklist MessageDate:datetime MessageIdentifier ThreadIdentifier "
        "RelatedToId:id ToIds:idlist",
    ),
}
# EmailMessage.Status codes (picklist of strings): New, Read, Replied, Sent, Forwarded, Draft.
EMAIL_STATUSES = {"0": "New", "1": "Read", "2": "Replied", "3": "Sent", "4": "Forwarded", "5": "Draft"}
_CALL_FIELDS = "CallType:picklist CallDurationInSeconds:int CallObject CallDisposition"
_REFERENCES = {  # field -> allowed target prefixes
    "OwnerId": ("005", "00G"),
    "AccountId": ("001",),
    "WhoId": ("003", "00Q"),
    "WhatId": ("001", "006"),
    "OpportunityId": ("006",),
    "ContactId": ("003",),
    "RelatedToId": ("001", "006"),
    "ToIds": ("003", "00Q", "005"),
}
_PREFIX_TYPE = {prefix: name for name, (prefix, _) in _SOBJECTS.items()}
_RESERVED = set("&|!(){}[]^\"~*?:'+-\\")
_SYSTEM_FIELDS = ("Id", "IsDeleted", "CreatedDate", "LastModifiedDate", "SystemModstamp", "CreatedById")


def case_safe(id15: str) -> str:
    """Salesforce's 18-character case-insensitive id: the 15-character id plus a 3-character checksum."""
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, ch in enumerate(id15[start : start + 5]) if ch.isupper())
        suffix += _SUFFIX[bits]
    return id15 + suffix


def sf_time(ts: float) -> str:
    """Salesforce's datetime format: 2025-03-11T16:07:41.000+0000."""
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+0000"


def parse_time(value: Any) -> float | None:
    """Epoch seconds from a Salesforce datetime or date literal."""
    text = str(value).strip().replace("Z", "+00:00")
    text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def digits(value: Any) -> str:
    return re.sub(r"\D", "", str(value or ""))


@dataclass
class FieldDef:
    """One field of an sObject type in an org."""

    name: str
    type: str = "string"
    required: bool = False
    createable: bool = True
    updateable: bool = True
    external_id: bool = False
    unique: bool = False
    custom: bool = False
    length: int = 255

    def describe(self) -> dict[str, Any]:
        kind = {
            "id": "reference",
            "calc": "boolean",
            "createonly": "picklist",
            "int": "int",
            "idlist": "junctionidlist",
        }.get(self.type, self.type)
        return {
            "name": self.name,
            "label": self.name.replace("__c", "").replace("_", " "),
            "type": kind,
            "length": self.length if kind in ("string", "textarea", "phone", "email", "picklist") else 0,
            "custom": self.custom,
            "externalId": self.external_id,
            "unique": self.unique,
            "idLookup": self.external_id or self.name == "Id",
            "createable": self.createable,
            "updateable": self.updateable,
            "nillable": not self.required,
            "filterable": self.type != "textarea",
            "referenceTo": [_PREFIX_TYPE[p] for p in _REFERENCES.get(self.name, ()) if p in _PREFIX_TYPE]
            if self.type == "id"
            else [],
        }


def default_fields(sobject: str, *, call_center: bool, external_id: bool) -> dict[str, FieldDef]:
    """The fields of an sObject type the emulator models."""
    spec = _SOBJECTS[sobject][1] + (" " + _CALL_FIELDS if sobject == "Task" and call_center else "")
    out = {
        "Id": FieldDef("Id", "id", createable=False, updateable=False),
        "IsDeleted": FieldDef("IsDeleted", "bool", createable=False, updateable=False),
        "CreatedDate": FieldDef("CreatedDate", "datetime", createable=False, updateable=False),
        "LastModifiedDate": FieldDef("LastModifiedDate", "datetime", createable=False, updateable=False),
        "SystemModstamp": FieldDef("SystemModstamp", "datetime", createable=False, updateable=False),
        "CreatedById": FieldDef("CreatedById", "id", createable=False, updateable=False),
    }
    for item in spec.split():
        required = item.endswith("!")
        name, _, kind = item.rstrip("!").partition(":")
        kind = kind or "string"
        out[name] = FieldDef(
            name,
            kind,
            required=required,
            createable=kind != "calc",
            updateable=kind not in ("calc", "createonly", "idlist"),
            length=32000 if kind == "textarea" else 255,
        )
    if external_id and sobject in ("Task", "Contact", "Lead", "EmailMessage"):
        out[EXTERNAL_ID] = FieldDef(EXTERNAL_ID, "string", external_id=True, unique=True, custom=True)
    return out


@dataclass
class Org:
    """One Salesforce org: records, field definitions, users, the daily API counter."""

    org_id: str
    daily_max: int
    used: int = 0
    query_batch_size: int = 2000
    allow_tooling: bool = True
    fields: dict[str, dict[str, FieldDef]] = field(default_factory=dict)
    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # type -> id -> record
    deleted: dict[str, str] = field(default_factory=dict)  # id -> type
    counter: int = 0
    user_id: str = ""
    lock_records: int = 0  # the next N record writes fail with UNABLE_TO_LOCK_ROW


@dataclass
class Token:
    org_id: str
    user_id: str
    expires_at: float | None = None


@dataclass
class Fault:
    """An injected failure for the next `remaining` requests whose path (after /services/data/vXX.X/)
    starts with `prefix`."""

    prefix: str
    remaining: int
    status: int
    error_code: str
    message: str
    method: str | None = None


class ApiError(Exception):
    """A Salesforce error answer: [{"message", "errorCode", "fields"}] (or an OAuth error object)."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def body(self) -> Any:
        entry: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            entry["fields"] = self.fields
        return [entry]


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


class RecordError(Exception):
    """A per-record failure (collections answer it inside a 200; single writes as 400)."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.fields, self.status = code, message, fields or [], status

    def entry(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}


# ---- SOQL ------------------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<dt>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d))"
    r"|(?P<date>\d{4}-\d\d-\d\d)|(?P<num>-?\d+(?:\.\d+)?)|(?P<op><=|>=|!=|<>|=|<|>|\(|\)|,)"
    r"|(?P<word>[A-Za-z_][\w.]*))"
)


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ApiError(
                400, "MALFORMED_QUERY", f"unexpected token at position {pos}: {text[pos : pos + 20]!r}"
            )
        pos = m.end()
        kind = m.lastgroup or ""
        raw = m.group(kind)
        if kind == "str":
            out.append(("value", re.sub(r"\\(.)", r"\1", raw[1:-1])))
        elif kind in ("dt", "date"):
            out.append(("value", raw))
        elif kind == "num":
            out.append(("value", float(raw) if "." in raw else int(raw)))
        elif kind == "op":
            out.append(("op", raw))
        else:
            upper = raw.upper()
            if upper in ("TRUE", "FALSE"):
                out.append(("value", upper == "TRUE"))
            elif upper == "NULL":
                out.append(("value", None))
            elif upper in ("AND", "OR", "NOT", "IN", "LIKE", "ASC", "DESC", "NULLS", "FIRST", "LAST"):
                out.append(("kw", upper))
            else:
                out.append(("field", raw))
    return out


class _Where:
    """A recursive-descent parser for SOQL conditions, producing a predicate over a record."""

    def __init__(self, tokens: list[tuple[str, Any]], types: dict[str, FieldDef]) -> None:
        self.t, self.i, self.types = tokens, 0, types

    def peek(self) -> tuple[str, Any] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> tuple[str, Any]:
        if self.i >= len(self.t):
            raise ApiError(400, "MALFORMED_QUERY", "unexpected end of condition")
        self.i += 1
        return self.t[self.i - 1]

    def parse(self) -> Any:
        pred = self.or_()
        if self.peek() is not None:
            raise ApiError(400, "MALFORMED_QUERY", f"unexpected {self.peek()[1]!r} in WHERE")  # type: ignore[index]
        return pred

    def or_(self) -> Any:
        parts = [self.and_()]
        while self.peek() == ("kw", "OR"):
            self.take()
            parts.append(self.and_())
        return lambda r: any(p(r) for p in parts)

    def and_(self) -> Any:
        parts = [self.not_()]
        while self.peek() == ("kw", "AND"):
            self.take()
            parts.append(self.not_())
        return lambda r: all(p(r) for p in parts)

    def not_(self) -> Any:
        if self.peek() == ("kw", "NOT"):
            self.take()
            inner = self.not_()
            return lambda r: not inner(r)
        if self.peek() == ("op", "("):
            self.take()
            inner = self.or_()
            if self.take() != ("op", ")"):
                raise ApiError(400, "MALFORMED_QUERY", "missing )")
            return inner
        return self.comparison()

    def comparison(self) -> Any:
        kind, name = self.take()
        if kind != "field":
            raise ApiError(400, "MALFORMED_QUERY", f"expected a field, not {name!r}")
        fdef = self.types.get(name)
        if fdef is None:
            raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on entity")
        kind, op = self.take()
        negate = False
        if (kind, op) == ("kw", "NOT"):
            negate, (kind, op) = True, self.take()
        if op in ("IN",):
            if self.take() != ("op", "("):
                raise ApiError(400, "MALFORMED_QUERY", "IN needs a list")
            values = []
            while True:
                k, v = self.take()
                if k != "value":
                    raise ApiError(400, "MALFORMED_QUERY", "IN list needs values")
                values.append(v)
                k, v = self.take()
                if v == ")":
                    break
                if v != ",":
                    raise ApiError(400, "MALFORMED_QUERY", "IN list needs commas")
            wanted = [_comparable(fdef, v) for v in values]
            return lambda r: (_comparable(fdef, r.get(name)) in wanted) != negate
        k, value = self.take()
        if k != "value":
            raise ApiError(400, "MALFORMED_QUERY", f"expected a value after {name} {op}")
        if op == "LIKE":
            pattern = re.compile(
                "^" + re.escape(str(value)).replace("%", ".*").replace("_", ".") + "$", re.IGNORECASE
            )
            return lambda r: bool(r.get(name) is not None and pattern.match(str(r.get(name))))
        target = _comparable(fdef, value)

        def compare(r: dict[str, Any]) -> bool:
            have = _comparable(fdef, r.get(name))
            if op == "=":
                return bool(have == target)
            if op in ("!=", "<>"):
                return bool(have != target)
            if have is None or target is None:
                return False
            return bool(
                {"<": have < target, "<=": have <= target, ">": have > target, ">=": have >= target}[op]
            )

        return compare


def _comparable(fdef: FieldDef, value: Any) -> Any:
    if value is None:
        return None
    if fdef.type in ("datetime", "date"):
        return parse_time(value)
    if fdef.type in ("string", "email", "phone", "picklist", "createonly", "textarea"):
        return str(value).lower()
    if fdef.type == "id":
        return str(value)[:15]
    return value


_SELECT = re.compile(
    r"^\s*SELECT\s+(?P<fields>.+?)\s+FROM\s+(?P<type>\w+)(?:\s+WHERE\s+(?P<where>.+?))?"
    r"(?:\s+ORDER\s+BY\s+(?P<order>\w+(?:\s+(?:ASC|DESC))?(?:\s+NULLS\s+(?:FIRST|LAST))?"
    r"(?:\s*,\s*\w+(?:\s+(?:ASC|DESC))?(?:\s+NULLS\s+(?:FIRST|LAST))?)*))?"
    r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
    re.IGNORECASE | re.DOTALL,
)


# ---- SOSL ------------------------------------------------------------------------------------------------


def parse_find(text: str) -> tuple[list[str], str, str]:
    """FIND {terms} IN X FIELDS RETURNING ...: the unescaped OR-ed terms, the scope and the RETURNING part."""
    m = re.match(r"^\s*FIND\s+\{", text, re.IGNORECASE)
    if not m:
        raise ApiError(
            400, "MALFORMED_SEARCH", "No search term found. The search term must be enclosed in braces."
        )
    pos, buf, terms, quoted = m.end(), "", [], False
    while True:
        if pos >= len(text):
            raise ApiError(400, "MALFORMED_SEARCH", "Search term is missing its closing brace.")
        ch = text[pos]
        if ch == "\\" and pos + 1 < len(text):
            buf += text[pos + 1]
            pos += 2
            continue
        if ch == '"':
            quoted = not quoted
            pos += 1
            continue
        if ch == "}" and not quoted:
            break
        if ch in _RESERVED and ch != '"':
            raise ApiError(400, "MALFORMED_SEARCH", f"line 1:{pos} no viable alternative at character '{ch}'")
        buf += ch
        pos += 1
    for part in re.split(r"\s+OR\s+", buf.strip()):
        if part.strip():
            terms.append(part.strip())
    if not terms:
        raise ApiError(400, "MALFORMED_SEARCH", "search term must be longer than one character")
    rest = text[pos + 1 :].strip()
    scope = "ALL"
    sm = re.match(r"^IN\s+(ALL|NAME|EMAIL|PHONE)\s+FIELDS\s*", rest, re.IGNORECASE)
    if sm:
        scope, rest = sm.group(1).upper(), rest[sm.end() :]
    rm = re.match(r"^RETURNING\s+", rest, re.IGNORECASE)
    if not rm:
        raise ApiError(400, "MALFORMED_SEARCH", "RETURNING clause is required by this emulator")
    return terms, scope, rest[rm.end() :]


def split_returning(text: str) -> list[tuple[str, str]]:
    """'Contact(Id, Phone), Lead(Id WHERE IsConverted = false)' -> [(type, inner), ...]."""
    out, pos = [], 0
    while pos < len(text):
        m = re.match(r"\s*,?\s*(\w+)\s*", text[pos:])
        if not m or not m.group(1):
            break
        name, pos = m.group(1), pos + m.end()
        inner = ""
        if pos < len(text) and text[pos] == "(":
            depth, start = 0, pos
            while pos < len(text):
                depth += {"(": 1, ")": -1}.get(text[pos], 0)
                pos += 1
                if depth == 0:
                    break
            inner = text[start + 1 : pos - 1]
        out.append((name, inner))
    return out


def _phone_match(term: str, stored: Any) -> bool:
    want, have = digits(term), digits(stored)
    if not want or not have:
        return False
    if want == have:
        return True
    short, long_ = sorted((want, have), key=len)
    return len(short) >= 7 and long_.endswith(short)


# ---- the emulator ----------------------------------------------------------------------------------------


class SalesforceEmulator(ServedApp):
    """Owns the emulated Salesforce state and its Flask app; serves it on 127.0.0.1 from a thread."""

    name = "salesforce-emulator"

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.RLock()
        self.reset()
        self.app = _build_app(self)

    # ---- control ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every org, client, token, fault and statistic."""
        with self.lock:
            self.orgs: dict[str, Org] = {}
            self.tokens: dict[str, Token] = {}
            self.refresh_tokens: dict[str, Token] = {}
            self.clients: dict[str, dict[str, Any]] = {}
            self.codes: dict[str, dict[str, Any]] = {}
            self.faults: list[Fault] = []
            self.stats_: dict[str, Counter[str]] = {}
            self.log: list[dict[str, Any]] = []
            self.clock = 0.0
            self.token_ttl = 7200
            self.approve_org: str | None = None
            self.cursors: dict[str, list[dict[str, Any]]] = {}
            self.frozen: float | None = None
            self.hooks: list[tuple[str, Callable[[], Any]]] = []

    def create_org(
        self,
        org_id: str | None = None,
        *,
        token: str | None = None,
        daily_max: int = 15000,
        external_id: bool = True,
        call_center: bool = True,
        allow_tooling: bool = True,
        email_message: bool = True,
    ) -> dict[str, Any]:
        """A new org with one admin user and a non-expiring access token; `email_message=False` is an org
        without EmailMessage (Enhanced Email off: its describe and sobjects/ answer 404 NOT_FOUND)."""
        with self.lock:
            n = len(self.orgs) + 1
            org_id = org_id or case_safe(f"00D{n:012d}")
            org = Org(org_id, daily_max, allow_tooling=allow_tooling)
            for sobject in _SOBJECTS:
                if sobject == "EmailMessage" and not email_message:
                    continue
                org.fields[sobject] = default_fields(
                    sobject, call_center=call_center, external_id=external_id
                )
                org.records[sobject] = {}
            self.orgs[org_id] = org
            org.user_id = self.add_user(org_id, email=f"admin@{org_id.lower()}.example", last_name="Admin")[
                "Id"
            ]
            token = token or f"{org_id[:15]}!{secrets.token_urlsafe(48)}"
            self.tokens[token] = Token(org_id, org.user_id)
            return {"org_id": org_id, "token": token, "user_id": org.user_id}

    def add_user(
        self, org_id: str, *, email: str, first_name: str = "", last_name: str = "User"
    ) -> dict[str, Any]:
        """A user (an owner for OwnerId)."""
        with self.lock:
            return self._insert(
                self.orgs[org_id],
                "User",
                {
                    "Username": email,
                    "Email": email,
                    "FirstName": first_name,
                    "LastName": last_name,
                    "IsActive": True,
                },
            )

    def add_queue(self, org_id: str, name: str) -> dict[str, Any]:
        """A queue (a Group of type Queue) that can own Leads."""
        with self.lock:
            return self._insert(self.orgs[org_id], "Group", {"Name": name, "Type": "Queue"})

    def insert(self, org_id: str, sobject: str, values: dict[str, Any]) -> dict[str, Any]:
        """Create a record directly (no API request counted)."""
        with self.lock:
            org = self.orgs[org_id]
            return self._write(org, sobject, None, values, creating=True)

    def records(self, org_id: str, sobject: str) -> list[dict[str, Any]]:
        """Copies of the org's live records of a type, oldest first."""
        with self.lock:
            org = self.orgs[org_id]
            return [self._full(org, sobject, r) for r in org.records[sobject].values()]

    def create_client(self, client_id: str, client_secret: str, redirect_uri: str) -> None:
        """An External Client App (consumer key and secret, callback URL)."""
        with self.lock:
            self.clients[client_id] = {"secret": client_secret, "redirect_uri": redirect_uri}

    def issue_code(
        self,
        org_id: str,
        client_id: str,
        redirect_uri: str,
        code_challenge: str | None = None,
        scope: str = "api refresh_token",
    ) -> str:
        """What /services/oauth2/authorize hands back after the admin approves."""
        with self.lock:
            code = "aPrx" + secrets.token_urlsafe(24)
            self.codes[code] = {
                "org_id": org_id,
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "challenge": code_challenge,
                "scope": scope,
                "expires": time.time() + 900,
            }
            return code

    def expire_token(self, token: str) -> None:
        """The session behind an access token ends (the next request with it gets 401 INVALID_SESSION_ID)."""
        with self.lock:
            self.tokens.pop(token, None)

    def revoke_refresh_token(self, refresh_token: str) -> None:
        with self.lock:
            self.refresh_tokens.pop(refresh_token, None)

    def set_limits(
        self,
        org_id: str,
        *,
        daily_max: int | None = None,
        used: int | None = None,
        query_batch_size: int | None = None,
    ) -> None:
        """Change the daily allocation, the requests already used, or the SOQL page size."""
        with self.lock:
            org = self.orgs[org_id]
            if daily_max is not None:
                org.daily_max = daily_max
            if used is not None:
                org.used = used
            if query_batch_size is not None:
                org.query_batch_size = query_batch_size

    def fail_next(
        self,
        prefix: str,
        *,
        status: int = 503,
        count: int = 1,
        error_code: str | None = None,
        message: str | None = None,
        method: str | None = None,
    ) -> None:
        """The next `count` API requests whose path after /services/data/vXX.X/ starts with `prefix` fail."""
        code = error_code or {503: "SERVER_UNAVAILABLE", 500: "UNKNOWN_EXCEPTION"}.get(
            status, "UNKNOWN_EXCEPTION"
        )
        text = message or {
            "SERVER_UNAVAILABLE": "Server Unavailable",
            "UNABLE_TO_LOCK_ROW": "unable to obtain exclusive access to this record or 1 records",
            "REQUEST_LIMIT_EXCEEDED": "TotalRequests Limit exceeded.",
        }.get(code, "An unexpected error occurred. Please include this ErrorId if you contact support")
        with self.lock:
            self.faults.append(Fault(prefix.lstrip("/"), count, status, code, text, method))

    def lock_next_records(self, org_id: str, count: int = 1) -> None:
        """The next `count` record writes (single or inside a collection) fail with UNABLE_TO_LOCK_ROW."""
        with self.lock:
            self.orgs[org_id].lock_records += count

    def remove_field(self, org_id: str, sobject: str, name: str) -> None:
        with self.lock:
            self.orgs[org_id].fields[sobject].pop(name, None)

    def stats(self, org_id: str | None = None) -> dict[str, Any]:
        """Request counts, overall or for one org: total and by_route ("GET search/")."""
        with self.lock:
            counter = self.stats_.get(org_id or "all", Counter())
            by_route = {k: v for k, v in counter.items() if k != "_total"}
            return {"total": counter.get("_total", 0), "by_route": by_route}

    def requests(self, org_id: str | None = None) -> list[dict[str, Any]]:
        """The last 2000 API requests (method, path, status, org_id, json), oldest first."""
        with self.lock:
            return [dict(r) for r in self.log if org_id is None or r["org_id"] == org_id]

    # ---- internals: records ---------------------------------------------------------------------------
    def _now(self) -> float:
        """A clock that never repeats, so LastModifiedDate and SystemModstamp order writes (one stamp for a
        whole same_transaction())."""
        if self.frozen is not None:
            return self.frozen
        self.clock = max(time.time(), self.clock + 0.001)
        return self.clock

    @contextmanager
    def same_transaction(self) -> Iterator[None]:
        """Writes made inside share one SystemModstamp, like the records of one bulk update."""
        with self.lock:
            self.frozen = self._now()
            try:
                yield
            finally:
                self.frozen = None

    def update(
        self, org_id: str, sobject: str, record_id: str, values: dict[str, Any], *, modstamp_ago: float = 0.0
    ) -> dict[str, Any]:
        """Change a record directly (no API request counted), as a user or a Flow in the org would;
        `modstamp_ago` stamps it that many seconds in the past (a transaction that committed late)."""
        with self.lock:
            org = self.orgs[org_id]
            rec = self._write(org, sobject, record_id, values, creating=False)
            if modstamp_ago:
                rec["SystemModstamp"] = rec["LastModifiedDate"] = sf_time(self._now() - modstamp_ago)
            return rec

    def before_next(self, prefix: str, action: Callable[[], Any]) -> None:
        """Run `action` (e.g. an edit) just before serving the next API request whose path after
        /services/data/vXX.X/ starts with `prefix`: what happens in the org while a client pages."""
        with self.lock:
            self.hooks.append((prefix.lstrip("/"), action))

    def _new_id(self, org: Org, sobject: str) -> str:
        org.counter += 1
        return case_safe(f"{_SOBJECTS[sobject][0]}{org.counter:012d}")

    def _insert(self, org: Org, sobject: str, values: dict[str, Any]) -> dict[str, Any]:
        return self._write(org, sobject, None, values, creating=True)

    def _find(self, org: Org, record_id: str) -> tuple[str, dict[str, Any]] | None:
        sobject = _PREFIX_TYPE.get(str(record_id)[:3])
        if sobject is None:
            return None
        for rid, rec in org.records.get(sobject, {}).items():
            if rid[:15] == str(record_id)[:15]:
                return sobject, rec
        return None

    def _check_reference(self, org: Org, name: str, value: Any) -> None:
        allowed = _REFERENCES.get(name)
        if value in (None, "") or allowed is None:
            return
        text = str(value)
        if not re.fullmatch(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?", text):
            raise RecordError("MALFORMED_ID", f"{name}: id value of incorrect type: {text}", [name])
        if text[:3] not in allowed:
            raise RecordError(
                "FIELD_INTEGRITY_EXCEPTION", f"{name}: id value of incorrect type: {text}", [name]
            )
        if any(d[:15] == text[:15] for d in org.deleted):
            raise RecordError("ENTITY_IS_DELETED", "entity is deleted", [name])
        if self._find(org, text) is None:
            raise RecordError("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {text}", [name])

    def _write(
        self,
        org: Org,
        sobject: str,
        record_id: str | None,
        values: dict[str, Any],
        *,
        creating: bool,
    ) -> dict[str, Any]:
        """Create (record_id None) or update a record; RecordError for a value Salesforce would refuse."""
        fields = org.fields[sobject]
        values = {k: v for k, v in values.items() if k != "attributes"}
        for name, value in values.items():
            fdef = fields.get(name)
            if fdef is None:
                raise RecordError(
                    "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject}", [name]
                )
            if (creating and not fdef.createable) or (not creating and not fdef.updateable):
                raise RecordError(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {name}. Please check the security settings of this "
                    "field and verify that it is read/write for your profile or permission set.",
                    [name],
                )
            if fdef.type == "id":
                self._check_reference(org, name, value)
            elif fdef.type == "idlist":
                if not isinstance(value, list):
                    raise RecordError(
                        "INVALID_TYPE_ON_FIELD_IN_RECORD",
                        f"{name}: value not of required type: {value}",
                        [name],
                    )
                for item in value:
                    self._check_reference(org, name, item)
            elif (value is not None and fdef.type == "int" and not isinstance(value, int)) or (
                value is not None and fdef.type == "date" and not re.fullmatch(r"\d{4}-\d\d-\d\d", str(value))
            ):
                raise RecordError(
                    "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{name}: value not of required type: {value}", [name]
                )
            elif isinstance(value, str) and len(value) > fdef.length:
                raise RecordError("STRING_TOO_LONG", f"{name}: data value too large: {value[:40]}...", [name])
        if org.lock_records > 0:
            org.lock_records -= 1
            raise RecordError(
                "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 records", []
            )
        current = org.records[sobject].get(record_id or "", {}) if not creating else {}
        merged = {**current, **values}
        if creating:
            missing = [f.name for f in fields.values() if f.required and merged.get(f.name) in (None, "")]
            if missing:
                raise RecordError(
                    "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing
                )
        if sobject == "EmailMessage":
            self._check_email_status(current, values, creating=creating)
        if sobject == "Task":
            who = str(merged.get("WhoId") or "")
            if who.startswith("00Q") and merged.get("WhatId"):
                raise RecordError(
                    "FIELD_INTEGRITY_EXCEPTION",
                    "Related To ID: WhatId can't be set when the Name is a Lead",
                    ["WhatId"],
                )
        for fdef in fields.values():
            if fdef.unique and merged.get(fdef.name) not in (None, ""):
                for rid, other in org.records[sobject].items():
                    if (
                        rid != record_id
                        and str(other.get(fdef.name)).lower() == str(merged[fdef.name]).lower()
                    ):
                        raise RecordError(
                            "DUPLICATE_VALUE",
                            f"duplicate value found: {fdef.name} duplicates value on record with id: {rid}",
                            [fdef.name],
                        )
        now = self._now()
        if creating:
            record_id = self._new_id(org, sobject)
            merged.update(Id=record_id, CreatedDate=sf_time(now), CreatedById=org.user_id or record_id)
            merged.setdefault("IsDeleted", False)
            if sobject == "Lead":
                merged.setdefault("IsConverted", False)
                merged.setdefault("Status", "Open - Not Contacted")
            if sobject == "Task":
                merged.setdefault("Status", "Not Started")
                merged.setdefault("Priority", "Normal")
                merged.setdefault("TaskSubtype", "Task")
            if sobject == "EmailMessage":
                merged.setdefault("Status", "0")
                merged.setdefault("Incoming", False)
        merged.update(LastModifiedDate=sf_time(now), SystemModstamp=sf_time(now))
        self._derive(org, sobject, merged)
        assert record_id is not None
        org.records[sobject][record_id] = merged
        return merged

    @staticmethod
    def _check_email_status(current: dict[str, Any], values: dict[str, Any], *, creating: bool) -> None:
        """EmailMessage.Status: one of the codes; after insert only New (0) -> Read (1) may change it."""
        if "Status" not in values:
            return
        new = str(values["Status"])
        if new not in EMAIL_STATUSES:
            raise RecordError(
                "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                f"Status: bad value for restricted picklist: {new}",
                ["Status"],
            )
        old = str(current.get("Status") or "")
        if not creating and new != old and (old, new) != ("0", "1"):
            raise RecordError(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                f"Unable to create/update fields: Status. Its status can't change from {old} to {new}.",
                ["Status"],
            )

    def _derive(self, org: Org, sobject: str, rec: dict[str, Any]) -> None:
        if sobject in ("Contact", "Lead"):
            rec["Name"] = " ".join(x for x in (rec.get("FirstName"), rec.get("LastName")) if x)
        if sobject == "Opportunity":
            stage = str(rec.get("StageName") or "")
            rec["IsClosed"] = stage.startswith("Closed")
            rec["IsWon"] = stage == "Closed Won"
        if sobject == "Task":
            rec["IsClosed"] = rec.get("Status") == "Completed"
            who = self._find(org, rec["WhoId"]) if rec.get("WhoId") else None
            rec["AccountId"] = who[1].get("AccountId") if who and who[0] == "Contact" else None

    def _delete(self, org: Org, record_id: str) -> None:
        found = self._find(org, record_id)
        if found is None:
            raise ApiError(
                404,
                "ENTITY_IS_DELETED" if record_id in org.deleted else "NOT_FOUND",
                "The requested resource does not exist",
            )
        sobject, rec = found
        del org.records[sobject][rec["Id"]]
        org.deleted[rec["Id"]] = sobject

    def _full(
        self, org: Org, sobject: str, rec: dict[str, Any], wanted: list[str] | None = None
    ) -> dict[str, Any]:
        names = wanted or list(org.fields[sobject])
        version = g.get("version", "59.0") if has_request_context() else "59.0"
        out: dict[str, Any] = {
            "attributes": {
                "type": sobject,
                "url": f"/services/data/v{version}/sobjects/{sobject}/{rec['Id']}",
            }
        }
        for name in names:
            if name not in org.fields[sobject]:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'.")
            out[name] = rec.get(name)
        return out

    def _by_external(self, org: Org, sobject: str, field_name: str, value: str) -> dict[str, Any] | None:
        fdef = org.fields[sobject].get(field_name)
        if fdef is None or not (fdef.external_id or field_name == "Id"):
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {field_name}",
            )
        hits = [
            r for r in org.records[sobject].values() if str(r.get(field_name) or "").lower() == value.lower()
        ]
        if len(hits) > 1:
            raise ApiError(
                300, "MULTIPLE_CHOICES", f"More than one record found for external id field {field_name}"
            )
        return hits[0] if hits else None

    def _upsert(
        self, org: Org, sobject: str, field_name: str, value: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        if "Id" in body:
            raise RecordError("INVALID_FIELD", "Id in the body of an upsert by external id", ["Id"])
        existing = self._by_external(org, sobject, field_name, value)
        values = {**body, field_name: value}
        if existing is None:
            return self._write(org, sobject, None, values, creating=True), True
        return self._write(org, sobject, existing["Id"], values, creating=False), False

    # ---- internals: query and search -------------------------------------------------------------------
    def query(self, org: Org, soql: str) -> dict[str, Any]:
        m = _SELECT.match(soql)
        if not m:
            raise ApiError(400, "MALFORMED_QUERY", f"unexpected token in query: {soql[:60]}")
        sobject = self._sobject(org, m.group("type"))
        wanted = [f.strip() for f in m.group("fields").split(",") if f.strip()]
        rows = self._select(org, sobject, wanted, m.group("where"), m.group("order"), m.group("limit"))
        return self._page(org, rows, 0)

    def _sobject(self, org: Org, name: str) -> str:
        for known in org.records:
            if known.lower() == name.lower():
                return known
        raise ApiError(400, "INVALID_TYPE", f"sObject type '{name}' is not supported.")

    def _resource(self, org: Org, name: str) -> str:
        """The sObject of a sobjects/<name>/... resource: an unknown one (EmailMessage in an org without
        Enhanced Email) is 404 NOT_FOUND, as Salesforce answers for a resource the org lacks."""
        for known in org.records:
            if known.lower() == name.lower():
                return known
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    def _select(
        self,
        org: Org,
        sobject: str,
        wanted: list[str],
        where: str | None,
        order: str | None,
        limit: str | None,
    ) -> list[dict[str, Any]]:
        fields = org.fields[sobject]
        for name in wanted:
            if name not in fields:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'.")
        pred = _Where(_tokens(where), fields).parse() if where else (lambda r: True)
        rows = [r for r in org.records[sobject].values() if pred(r)]
        for term in reversed((order or "").split(",") if order else []):  # stable sorts, last key first
            parts = term.split()
            key = parts[0]
            if key not in fields:
                raise ApiError(400, "INVALID_FIELD", f"No such column '{key}' on entity '{sobject}'.")
            desc = len(parts) > 1 and parts[1].upper() == "DESC"
            rows.sort(
                key=lambda r, k=key: (r.get(k) is None, _comparable(fields[k], r.get(k)) or 0), reverse=desc
            )
        if limit:
            rows = rows[: int(limit)]
        return [self._full(org, sobject, r, wanted) for r in rows]

    def _page(self, org: Org, rows: list[dict[str, Any]], start: int) -> dict[str, Any]:
        size = org.query_batch_size
        page = rows[start : start + size]
        done = start + size >= len(rows)
        body: dict[str, Any] = {"totalSize": len(rows), "done": done, "records": page}
        if not done:
            locator = "01g" + secrets.token_hex(6).upper()
            self.cursors[locator] = rows
            body["nextRecordsUrl"] = f"/services/data/v{g.version}/query/{locator}-{start + size}"
        return body

    def more(self, org: Org, locator: str) -> dict[str, Any]:
        key, _, start = locator.rpartition("-")
        rows = self.cursors.get(key)
        if rows is None or not start.isdigit():
            raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        return self._page(org, rows, int(start))

    def search(self, org: Org, sosl: str) -> dict[str, Any]:
        terms, scope, returning = parse_find(sosl)
        if len(sosl[sosl.index("{") + 1 : sosl.rindex("}")]) > 10_000:
            return {"searchRecords": []}  # Salesforce: a SearchQuery over 10,000 characters finds nothing
        out = []
        for name, inner in split_returning(returning):
            sobject = self._sobject(org, name)
            im = re.match(
                r"^\s*(?P<fields>.*?)(?:\s+WHERE\s+(?P<where>.+?))?(?:\s+ORDER\s+BY\s+(?P<order>\w+(?:\s+(?:ASC|DESC))?))?"
                r"(?:\s+LIMIT\s+(?P<limit>\d+))?\s*$",
                inner,
                re.IGNORECASE | re.DOTALL,
            )
            assert im is not None
            wanted = [f.strip() for f in (im.group("fields") or "Id").split(",") if f.strip()] or ["Id"]
            fields = org.fields[sobject]
            candidates = [r for r in org.records[sobject].values() if self._hit(fields, r, terms, scope)]
            ids = {r["Id"] for r in candidates}
            rows = [
                r
                for r in self._select(org, sobject, ["Id"], im.group("where"), im.group("order"), None)
                if r["Id"] in ids
            ]
            if im.group("limit"):
                rows = rows[: int(im.group("limit"))]
            out += [self._full(org, sobject, org.records[sobject][r["Id"]], wanted) for r in rows]
        return {"searchRecords": out[:2000]}

    @staticmethod
    def _hit(fields: dict[str, FieldDef], rec: dict[str, Any], terms: list[str], scope: str) -> bool:
        for fdef in fields.values():
            value = rec.get(fdef.name)
            if value in (None, ""):
                continue
            for term in terms:
                if fdef.type == "phone" and scope in ("PHONE", "ALL") and _phone_match(term, value):
                    return True
                if fdef.type == "email" and scope in ("EMAIL", "ALL") and str(value).lower() == term.lower():
                    return True
                named = fdef.name in ("Name", "Company") and scope in ("NAME", "ALL")
                if named and term.lower() in str(value).lower():
                    return True
        return False

    # ---- internals: gate -------------------------------------------------------------------------------
    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if path.startswith(fault.prefix) and fault.method in (None, method) and fault.remaining > 0:
                fault.remaining -= 1
                return fault
        self.faults = [f for f in self.faults if f.remaining > 0]
        return None

    def _record(self, org_id: str | None, route: str, status: int, path: str, body: Any) -> None:
        for key in ("all", org_id):
            if key:
                counter = self.stats_.setdefault(key, Counter())
                counter["_total"] += 1
                counter[route] += 1
        self.log.append(
            {
                "method": request.method,
                "path": path,
                "route": route,
                "status": status,
                "org_id": org_id,
                "json": body,
            }
        )
        del self.log[:-2000]

    def _token_response(self, token: Token, scope: str, refresh: str | None) -> dict[str, Any]:
        access = f"{token.org_id[:15]}!{secrets.token_urlsafe(48)}"
        self.tokens[access] = Token(token.org_id, token.user_id, time.time() + self.token_ttl)
        issued = str(int(time.time() * 1000))
        body = {
            "access_token": access,
            "signature": base64.b64encode(
                hashlib.sha256(access.encode() + issued.encode()).digest()
            ).decode(),
            "scope": scope,
            "instance_url": self.base_url or request.host_url.rstrip("/"),
            "id": f"{request.host_url.rstrip('/')}/id/{token.org_id}/{token.user_id}",
            "token_type": "Bearer",
            "issued_at": issued,
        }
        if refresh:
            body["refresh_token"] = refresh
        return body

    def _oauth_token(self, form: dict[str, str]) -> dict[str, Any]:
        grant = form.get("grant_type")
        client = self.clients.get(form.get("client_id", ""))
        if client is None:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        if form.get("client_secret") is not None and form.get("client_secret") != client["secret"]:
            raise OAuthError("invalid_client", "invalid client credentials", 401)
        if grant == "authorization_code":
            code = self.codes.pop(form.get("code", ""), None)
            if code is None or code["expires"] < time.time() or code["client_id"] != form.get("client_id"):
                raise OAuthError("invalid_grant", "invalid authorization code")
            if code["redirect_uri"] != form.get("redirect_uri"):
                raise OAuthError("redirect_uri_mismatch", "redirect_uri must match configuration")
            if code["challenge"]:
                verifier = form.get("code_verifier", "")
                digest = (
                    base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                )
                if digest != code["challenge"]:
                    raise OAuthError("invalid_grant", "invalid code verifier")
            elif form.get("client_secret") is None:
                raise OAuthError("invalid_client", "invalid client credentials", 401)
            org = self.orgs[code["org_id"]]
            token = Token(org.org_id, org.user_id)
            refresh = None
            if "refresh_token" in code["scope"].split() or "offline_access" in code["scope"].split():
                refresh = f"5Aep{secrets.token_urlsafe(60)}"
                self.refresh_tokens[refresh] = token
            return self._token_response(token, code["scope"], refresh)
        if grant == "refresh_token":
            if form.get("client_secret") is None:
                raise OAuthError("invalid_client", "invalid client credentials", 401)
            token = self.refresh_tokens.get(form.get("refresh_token", ""))
            if token is None:
                raise OAuthError("invalid_grant", "expired access/refresh token")
            return self._token_response(token, "api refresh_token", None)
        raise OAuthError("unsupported_grant_type", "grant type not supported")


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status, mimetype="application/json")


# Control endpoints for an emulator in another process: POST /_emulator/<action> with keyword arguments.
CONTROL_ACTIONS = {
    "orgs": "create_org",
    "users": "add_user",
    "insert": "insert",
    "clients": "create_client",
    "codes": "issue_code",
    "expire-token": "expire_token",
    "revoke-refresh-token": "revoke_refresh_token",
    "limits": "set_limits",
    "faults": "fail_next",
    "lock-records": "lock_next_records",
    "reset": "reset",
}


def _build_app(emu: SalesforceEmulator) -> Flask:
    app = Flask("emulators.salesforce")
    app.extensions["salesforce_emulator"] = emu
    base = "/services/data/v<version>/"

    def api(rule: str, *methods: str) -> Any:
        def register(fn: Any) -> Any:
            def view(version: str, **kwargs: Any) -> Response:
                with emu.lock:
                    result = fn(g.org, **kwargs)
                body, status = result if isinstance(result, tuple) else (result, 200)
                return Response(status=204) if status == 204 else _json(body, status)

            app.add_url_rule(base + rule, f"{fn.__name__}:{rule}", view, methods=list(methods))
            return fn

        return register

    def body_json() -> Any:
        body = request.get_json(silent=True, force=True)
        if body is None:
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body is not valid JSON")
        return body

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return _json(exc.body(), exc.status)

    @app.errorhandler(RecordError)
    def _record_error(exc: RecordError) -> Response:
        return _json([{"message": exc.message, "errorCode": exc.code, "fields": exc.fields}], exc.status)

    @app.errorhandler(OAuthError)
    def _oauth_error(exc: OAuthError) -> Response:
        return _json({"error": exc.error, "error_description": exc.description}, exc.status)

    @app.errorhandler(404)
    @app.errorhandler(405)
    def _no_route(exc: Exception) -> Response:
        return _json(
            [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}],
            getattr(exc, "code", 404),
        )

    @app.before_request
    def _gate() -> Response | None:
        g.org = None
        g.version = "59.0"
        path = request.path
        if not path.startswith("/services/data/"):
            return None
        m = re.match(r"^/services/data/v(\d+\.\d)(?:/|$)(.*)$", path)
        if not m:
            return None
        g.version, rest = m.group(1), m.group(2)
        if rest == "":
            return None
        with emu.lock:
            header = request.headers.get("Authorization", "")
            raw = header.split(" ", 1)[1].strip() if " " in header else ""
            token = emu.tokens.get(raw)
            if token is None or (token.expires_at is not None and token.expires_at < time.time()):
                emu.tokens.pop(raw, None)
                return _json(ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid").body(), 401)
            org = emu.orgs[token.org_id]
            if org.used >= org.daily_max:
                g.org_id = org.org_id
                g.org = org
                return _json(
                    ApiError(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.").body(), 403
                )
            org.used += 1
            g.org = org
            for hook in [h for h in emu.hooks if rest.startswith(h[0])][:1]:
                emu.hooks.remove(hook)
                hook[1]()
            fault = emu._take_fault(request.method, rest)
            if fault is not None:
                return _json(ApiError(fault.status, fault.error_code, fault.message, []).body(), fault.status)
        return None

    @app.after_request
    def _finish(resp: Response) -> Response:
        if request.path.startswith("/_emulator/"):
            return resp
        org: Org | None = g.get("org")
        if org is not None:
            resp.headers["Sforce-Limit-Info"] = f"api-usage={org.used}/{org.daily_max}"
        rule = request.url_rule.rule if request.url_rule else request.path
        rule = rule.replace("/services/data/v<version>/", "")
        route = request.method + " " + re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)
        with emu.lock:
            emu._record(
                org.org_id if org else None,
                route,
                resp.status_code,
                request.path,
                request.get_json(silent=True, force=True) if request.data else None,
            )
        return resp

    # ---- versions, limits, describe ---------------------------------------------------------------------
    @app.get("/services/data/")
    def versions() -> Response:
        return _json([{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v} for v in API_VERSIONS])

    @api("limits/", "GET")
    def limits(org: Org) -> dict[str, Any]:
        return {
            "DailyApiRequests": {"Max": org.daily_max, "Remaining": max(0, org.daily_max - org.used)},
            "DataStorageMB": {"Max": 5, "Remaining": 5},
        }

    @api("sobjects/", "GET")
    def describe_global(org: Org) -> dict[str, Any]:
        return {
            "encoding": "UTF-8",
            "maxBatchSize": 200,
            "sobjects": [
                {
                    "name": n,
                    "keyPrefix": _SOBJECTS[n][0],
                    "createable": True,
                    "queryable": True,
                    "searchable": True,
                }
                for n in org.records
            ],
        }

    @api("sobjects/<sobject>/describe/", "GET")
    def describe(org: Org, sobject: str) -> dict[str, Any]:
        name = emu._resource(org, sobject)
        return {
            "name": name,
            "keyPrefix": _SOBJECTS[name][0],
            "createable": True,
            "updateable": True,
            "fields": [f.describe() for f in org.fields[name].values()],
        }

    # ---- sObjects -----------------------------------------------------------------------------------------
    @api("sobjects/<sobject>/", "POST")
    def create(org: Org, sobject: str) -> tuple[dict[str, Any], int]:
        rec = emu._write(org, emu._resource(org, sobject), None, body_json(), creating=True)
        return {"id": rec["Id"], "success": True, "errors": []}, 201

    @api("sobjects/<sobject>/<record_id>", "GET", "PATCH", "DELETE")
    def record(org: Org, sobject: str, record_id: str) -> Any:
        name = emu._resource(org, sobject)
        found = emu._find(org, record_id)
        if found is None or found[0] != name:
            if any(d[:15] == record_id[:15] for d in org.deleted):
                raise ApiError(404, "ENTITY_IS_DELETED", "entity is deleted")
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        if request.method == "DELETE":
            emu._delete(org, record_id)
            return None, 204
        if request.method == "PATCH":
            emu._write(org, name, found[1]["Id"], body_json(), creating=False)
            return None, 204
        wanted = [f for f in request.args.get("fields", "").split(",") if f] or None
        return emu._full(org, name, found[1], wanted)

    @api("sobjects/<sobject>/<field_name>/<path:value>", "GET", "PATCH")
    def by_external_id(org: Org, sobject: str, field_name: str, value: str) -> Any:
        name = emu._resource(org, sobject)
        if request.method == "GET":
            rec = emu._by_external(org, name, field_name, value)
            if rec is None:
                raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
            return emu._full(org, name, rec)
        rec, created = emu._upsert(org, name, field_name, value, body_json())
        return {"id": rec["Id"], "success": True, "errors": [], "created": created}, 201 if created else 200

    # ---- query and search ------------------------------------------------------------------------------
    @api("query/", "GET")
    def query(org: Org) -> dict[str, Any]:
        q = request.args.get("q")
        if not q:
            raise ApiError(400, "MALFORMED_QUERY", "q parameter is required")
        return emu.query(org, q)

    @api("query/<locator>", "GET")
    def query_more(org: Org, locator: str) -> dict[str, Any]:
        return emu.more(org, locator)

    @api("search/", "GET")
    def search(org: Org) -> dict[str, Any]:
        q = request.args.get("q")
        if not q:
            raise ApiError(400, "MALFORMED_SEARCH", "q parameter is required")
        return emu.search(org, q)

    # ---- Composite: queries in one request ------------------------------------------------------------
    @api("composite/", "POST")
    def composite(org: Org) -> dict[str, Any]:
        subrequests = body_json().get("compositeRequest")
        if not isinstance(subrequests, list) or not subrequests or len(subrequests) > 25:
            raise ApiError(400, "INVALID_FIELD", "compositeRequest takes 1 to 25 subrequests")
        queries = [r for r in subrequests if "/query" in str((r or {}).get("url"))]
        if len(queries) > 5:
            raise ApiError(400, "INVALID_FIELD", "A composite request can have at most 5 query subrequests")
        out = []
        for sub in subrequests:
            ref = str(sub.get("referenceId") or "")
            url = urlsplit(str(sub.get("url") or ""))
            m = re.match(r"^/services/data/v\d+\.\d/query/(?P<locator>[^/]*)$", url.path)
            try:
                if str(sub.get("method", "")).upper() != "GET" or m is None:
                    raise ApiError(400, "INVALID_FIELD", "this emulator runs only GET query subrequests")
                if m.group("locator"):
                    body, status = emu.more(org, m.group("locator")), 200
                else:
                    q = parse_qs(url.query).get("q", [""])[0]
                    if not q:
                        raise ApiError(400, "MALFORMED_QUERY", "q parameter is required")
                    body, status = emu.query(org, q), 200
            except ApiError as exc:
                body, status = exc.body(), exc.status
            out.append({"body": body, "httpHeaders": {}, "httpStatusCode": status, "referenceId": ref})
        return {"compositeResponse": out}

    # ---- sObject Collections -----------------------------------------------------------------------------
    def collection(org: Org, records: Any, all_or_none: bool, one: Any) -> list[dict[str, Any]]:
        if not isinstance(records, list) or not records:
            raise ApiError(400, "INVALID_FIELD", "records is required")
        if len(records) > 200:
            raise ApiError(
                400,
                "EXCEEDED_ID_LIMIT",
                "record limit reached. cannot submit more than 200 records into this call",
            )
        snapshot = copy.deepcopy(org.records) if all_or_none else None
        results: list[dict[str, Any]] = []
        failed = False
        for rec in records:
            try:
                if not isinstance(rec, dict):
                    raise RecordError("INVALID_FIELD", "each record must be an object")
                results.append({"success": True, "errors": [], **one(rec)})
            except RecordError as exc:
                failed = True
                results.append({"success": False, "errors": [exc.entry()]})
        if failed and snapshot is not None:
            org.records = snapshot
            rolled = {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": "Record rolled back because not all records were valid and the request was using "
                "AllOrNone header",
                "fields": [],
            }
            results = [r if not r["success"] else {"success": False, "errors": [rolled]} for r in results]
        return results

    def sobject_of(org: Org, rec: dict[str, Any]) -> str:
        kind = (rec.get("attributes") or {}).get("type")
        if not kind:
            raise RecordError("INVALID_TYPE", "Must send a concrete entity type.")
        try:
            return emu._sobject(org, kind)
        except ApiError as exc:
            raise RecordError("INVALID_TYPE", exc.message) from None

    @api("composite/sobjects", "POST", "PATCH")
    def collections(org: Org) -> Any:
        body = body_json()
        all_or_none = bool(body.get("allOrNone", False))

        def create_one(rec: dict[str, Any]) -> dict[str, Any]:
            if rec.get("id") or rec.get("Id"):
                raise RecordError("INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
            return {"id": emu._write(org, sobject_of(org, rec), None, rec, creating=True)["Id"]}

        def update_one(rec: dict[str, Any]) -> dict[str, Any]:
            rid = rec.get("id") or rec.get("Id")
            name = sobject_of(org, rec)
            found = emu._find(org, str(rid or ""))
            if not rid or found is None or found[0] != name:
                code = "ENTITY_IS_DELETED" if rid in org.deleted else "INVALID_CROSS_REFERENCE_KEY"
                raise RecordError(code, f"invalid cross reference id: {rid}", ["Id"])
            values = {k: v for k, v in rec.items() if k not in ("id", "Id")}
            return {"id": emu._write(org, name, found[1]["Id"], values, creating=False)["Id"]}

        return collection(
            org, body.get("records"), all_or_none, create_one if request.method == "POST" else update_one
        )

    @api("composite/sobjects/<sobject>/<field_name>", "PATCH")
    def collections_upsert(org: Org, sobject: str, field_name: str) -> Any:
        name = emu._resource(org, sobject)
        body = body_json()
        if field_name not in org.fields[name] or not org.fields[name][field_name].external_id:
            raise ApiError(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {field_name}",
            )

        def upsert_one(rec: dict[str, Any]) -> dict[str, Any]:
            if sobject_of(org, rec) != name:
                raise RecordError("INVALID_TYPE", f"all records must be of type {name}")
            value = rec.get(field_name)
            if value in (None, ""):
                raise RecordError("MISSING_ARGUMENT", f"{field_name} not specified", [field_name])
            values = {k: v for k, v in rec.items() if k != field_name}
            written, created = emu._upsert(org, name, field_name, str(value), values)
            return {"id": written["Id"], "created": created}

        return collection(org, body.get("records"), bool(body.get("allOrNone", False)), upsert_one)

    # ---- Tooling API: custom fields -----------------------------------------------------------------------
    @api("tooling/sobjects/CustomField/", "POST")
    def create_custom_field(org: Org) -> tuple[dict[str, Any], int]:
        if not org.allow_tooling:
            raise ApiError(403, "INSUFFICIENT_ACCESS", "insufficient access rights on cross-reference id")
        body = body_json()
        full = str(body.get("FullName") or "")
        owner, _, fname = full.partition(".")
        meta = body.get("Metadata") or {}
        if not fname.endswith("__c") or not owner:
            raise ApiError(400, "INVALID_FIELD", "FullName must be Object.Name__c")
        targets = ["Task"] if owner == "Activity" else [emu._sobject(org, owner)]
        for target in targets:
            if fname in org.fields[target]:
                raise ApiError(
                    400, "DUPLICATE_DEVELOPER_NAME", f"There is already a field named {fname} on {owner}."
                )
        for target in targets:
            org.fields[target][fname] = FieldDef(
                fname,
                "string",
                external_id=bool(meta.get("externalId")),
                unique=bool(meta.get("unique")),
                custom=True,
                length=int(meta.get("length") or 255),
            )
        return {"id": case_safe(f"00N{len(org.fields[targets[0]]):012d}"), "success": True, "errors": []}, 201

    # ---- OAuth 2.0 ------------------------------------------------------------------------------------
    @app.get("/services/oauth2/authorize")
    def authorize() -> Any:
        args = request.args
        client = emu.clients.get(args.get("client_id", ""))
        if client is None:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        if args.get("redirect_uri") != client["redirect_uri"]:
            raise OAuthError("redirect_uri_mismatch", "redirect_uri must match configuration")
        if args.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "response type not supported")
        with emu.lock:
            org_id = emu.approve_org or next(iter(emu.orgs))
            code = emu.issue_code(
                org_id,
                args["client_id"],
                args["redirect_uri"],
                args.get("code_challenge"),
                args.get("scope", "api"),
            )
        query = {"code": code, **({"state": args["state"]} if "state" in args else {})}
        return redirect(f"{args['redirect_uri']}?{urlencode(query)}", code=302)

    @app.post("/services/oauth2/token")
    def oauth_token() -> Response:
        with emu.lock:
            return _json(emu._oauth_token(request.form.to_dict()))

    @app.post("/services/oauth2/revoke")
    def oauth_revoke() -> Response:
        with emu.lock:
            token = request.form.get("token", "")
            emu.tokens.pop(token, None)
            emu.refresh_tokens.pop(token, None)
        return Response(status=200)

    # ---- control -------------------------------------------------------------------------------------------
    @app.post("/_emulator/<action>")
    def control(action: str) -> Response:
        method = CONTROL_ACTIONS.get(action)
        if method is None:
            return _json({"error": f"unknown action {action}"}, 404)
        result = getattr(emu, method)(**(request.get_json(silent=True) or {}))
        return _json(result if result is not None else {"ok": True})

    @app.get("/_emulator/stats")
    def control_stats() -> Response:
        return _json(emu.stats(request.args.get("org_id")))

    @app.get("/_emulator/records/<org_id>/<sobject>")
    def control_records(org_id: str, sobject: str) -> Response:
        return _json(emu.records(org_id, sobject))

    return app


def http_session(base_url: str) -> Any:
    """A requests session on which simple-salesforce's forced https://HOST:PORT reaches the http emulator."""
    import requests
    from requests.adapters import HTTPAdapter

    class HttpsToHttp(HTTPAdapter):
        def send(self, req: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            u = urlsplit(req.url)
            req.url = urlunsplit(("http", u.netloc, u.path, u.query, u.fragment))
            return super().send(req, **kwargs)

    session = requests.Session()
    netloc = urlsplit(base_url).netloc
    session.mount(f"https://{netloc}", HttpsToHttp())
    return session


def main(argv: list[str] | None = None) -> None:
    """Run in the foreground: python -m emulators.salesforce --port N (prints the base URL, then serves)."""
    parser = argparse.ArgumentParser(description="Salesforce REST API contract emulator")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--org-id", help="create this org at startup (18 characters, 00D...)")
    parser.add_argument("--token", help="access token of the startup org")
    parser.add_argument("--client-id", help="register an External Client App with this consumer key")
    parser.add_argument("--client-secret", default="dev-secret")
    parser.add_argument("--redirect-uri", default="http://127.0.0.1:8000/oauth/salesforce/callback")
    args = parser.parse_args(argv)
    emu = SalesforceEmulator()
    if args.org_id or args.token:
        emu.create_org(args.org_id, token=args.token)
    if args.client_id:
        emu.create_client(args.client_id, args.client_secret, args.redirect_uri)
    print(emu.start(args.port), flush=True)
    emu.serve_forever()


if __name__ == "__main__":
    main()
