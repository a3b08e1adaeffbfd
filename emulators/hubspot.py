"""HubSpot CRM API contract emulator: CRM objects v3, associations v4, owners, properties and OAuth v1.

Answers with HubSpot's status codes, response shapes and error bodies (see /work/shared/fixtures/hubspot),
so the real hubspot-api-client can talk to it: ``HubSpot(access_token=token, host=emulator.base_url)``.

    with HubSpotEmulator() as emu:
        portal = emu.create_portal()  # {"portal_id": 12345678, "token": "pat-na1-..."}
        client = HubSpot(access_token=portal["token"], host=emu.base_url)

Choices where HubSpot's behaviour is undocumented or unverified (deliberate; change them here):
- Rate limits: requests rejected with 401 or 429, injected faults and OAuth/control requests do not count
  against the ten-second window. Search requests count against both the ten-second window and the per-token
  secondly search limit. Search responses carry no X-HubSpot-RateLimit-* headers.
- Batch create/update/upsert: invalid inputs give 207 with per-input errors when at least one input succeeded,
  and the plain 400/409 error of a single write when none did. An error carries
  ``context.objectWriteTraceId`` when its input had one.
- batch/associate/default answers 200, as hubspot-api-client 12 expects (it returns None on 201), and fails
  the whole batch with 400 when an object does not exist.
- Error codes other than PROPERTY_DOESNT_EXIST and INVALID_OPTION (REQUIRED, READ_ONLY_VALUE,
  INVALID_DECIMAL, INVALID_DATE, INVALID_BOOLEAN, INVALID_OWNER_ID) and the 5xx fault bodies are guesses.
- hubspot_owner_id must name an owner of the portal (EmulatorConfig.validate_owner_ids). Contacts' email is
  unique, as in HubSpot (409 "Contact already exists. Existing ID: N").
- Search is immediately consistent (HubSpot's lags a few seconds); string comparisons ignore case; NEQ and
  NOT_IN match objects without the property.
- Emails (/crm/v3/objects/emails, https://developers.hubspot.com/docs/api/crm/email): hs_timestamp is
  required; hs_email_direction EMAIL | INCOMING_EMAIL | FORWARDED_EMAIL and hs_email_status BOUNCED | FAILED |
  SCHEDULED | SENDING | SENT are enumerations; hs_email_headers is a JSON string from which HubSpot fills the
  read-only hs_email_from_email / _firstname / _lastname and hs_email_to_email / _firstname / _lastname
  (those names are documented). [UNVERIFIED]: that the type id is 0-49; that the default association types
  are email>contact 198/197, email>company 186/185, email>deal 210/209; that several recipients are joined
  with ";" in the hs_email_to_* properties; that headers which are not a JSON object are stored as given and
  fill nothing (HubSpot may reject them); the object's property group name (emailinformation).
- Calling extension settings (/crm/v3/extensions/calling/{appId}/settings,
  https://developers.hubspot.com/docs/api-reference/crm-calling-extensions-v3/guide): authenticated by the
  developer account's `hapikey` query parameter (add_developer_key), for an app made with create_app.
  [UNVERIFIED]: POST for an app that has settings is 409 (PATCH updates them); GET of none is 404; name and
  url are required on POST, width/height default to 400/600 and the flags to false.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import re
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import phonenumbers
from flask import Flask, Response, g, request

from emulators.base import ServedApp

OBJECT_TYPES = ("contacts", "companies", "deals", "calls", "communications", "tasks", "emails")
_SINGULAR = dict(
    zip(OBJECT_TYPES, ("contact", "company", "deal", "call", "communication", "task", "email"), strict=True)
)
_TYPE_IDS = dict(zip(OBJECT_TYPES, ("0-1", "0-2", "0-3", "0-48", "0-18", "0-27", "0-49"), strict=True))
_ALIASES = {**{t: t for t in OBJECT_TYPES}, **{s: t for t, s in _SINGULAR.items()}}
_ALIASES.update({i: t for t, i in _TYPE_IDS.items()})
_ID_BASE = dict(zip(OBJECT_TYPES, (51, 61, 71, 81, 91, 101, 111), strict=True))  # ids from 51000000001 ...
_ENGAGEMENTS = ("calls", "communications", "tasks", "emails")
_PHONES = {
    "phone": "hs_searchable_calculated_phone_number",
    "mobilephone": "hs_searchable_calculated_mobile_number",
}
_QUERY_FIELDS = {
    "contacts": "firstname lastname email phone mobilephone company",
    "companies": "name domain phone",
    "deals": "dealname",
    "calls": "hs_call_title hs_call_body",
    "communications": "hs_communication_body",
    "tasks": "hs_task_subject hs_task_body",
    "emails": "hs_email_subject hs_email_text",
}
_OWNER = "hubspot_owner_id"
_OPERATORS = {"EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN", "HAS_PROPERTY"}
_OPERATORS |= {"NOT_HAS_PROPERTY", "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"}

_EMAIL_PARTS = ("email", "firstname", "lastname")  # hs_email_from_email ... filled from hs_email_headers

# Properties per object type, space-separated: name (string), name:number, name:datetime, name:unique
# (hasUniqueValue), name:calc (read-only, calculated), name:datetime! (read-only system), name=A|B (options).
_PROPERTY_SPECS = {
    "contacts": "createdate:datetime! lastmodifieddate:datetime! firstname lastname email:unique phone "
    "mobilephone company associatedcompanyid:number hs_searchable_calculated_phone_number:calc "
    "hs_searchable_calculated_mobile_number:calc num_associated_deals:calc",
    "companies": "createdate:datetime! hs_lastmodifieddate:datetime! name domain phone",
    "deals": "createdate:datetime! hs_lastmodifieddate:datetime! dealname dealstage pipeline amount:number "
    "closedate:datetime",
    "calls": "hs_timestamp:datetime hs_call_title hs_call_body hs_call_direction=INBOUND|OUTBOUND "
    "hs_call_status=BUSY|CALLING_CRM_USER|CANCELED|COMPLETED|CONNECTING|FAILED|IN_PROGRESS|NO_ANSWER|QUEUED|"
    "RINGING hs_call_duration:number hs_call_from_number hs_call_to_number hs_call_recording_url "
    "hs_call_disposition",
    "communications": "hs_timestamp:datetime hs_communication_channel_type=SMS|WHATS_APP|LINKEDIN_MESSAGE "
    "hs_communication_logged_from=CRM hs_communication_body",
    "tasks": "hs_timestamp:datetime hs_task_subject hs_task_body "
    "hs_task_status=NOT_STARTED|COMPLETED|IN_PROGRESS|WAITING|DEFERRED hs_task_priority=LOW|MEDIUM|HIGH "
    "hs_task_type=EMAIL|CALL|TODO",
    "emails": "hs_timestamp:datetime hs_email_direction=EMAIL|INCOMING_EMAIL|FORWARDED_EMAIL "
    "hs_email_subject hs_email_text hs_email_html hs_email_status=BOUNCED|FAILED|SCHEDULED|SENDING|SENT "
    "hs_email_headers "
    "hs_attachment_ids " + " ".join(f"hs_email_{w}_{p}:calc" for w in ("from", "to") for p in _EMAIL_PARTS),
}
_ENGAGEMENT_SYSTEM = "hs_createdate:datetime! hs_lastmodifieddate:datetime! "
_SYSTEM = {"contacts": ("createdate", "hs_object_id", "lastmodifieddate")}
_SYSTEM.update({t: ("createdate", "hs_lastmodifieddate", "hs_object_id") for t in ("companies", "deals")})
_SYSTEM.update({t: ("hs_createdate", "hs_lastmodifieddate", "hs_object_id") for t in _ENGAGEMENTS})
_DEFAULT_READ = {"contacts": ("email", "firstname", "lastname"), "companies": ("domain", "name")}
_DEFAULT_READ["deals"] = ("amount", "closedate", "dealname", "dealstage", "pipeline")
_REQUIRED = {t: ("hs_timestamp",) for t in _ENGAGEMENTS}

# HUBSPOT_DEFINED association types, "from>to typeId/inverseId[/label]"; the first unlabelled is the default.
_ASSOCIATION_SPECS = (
    "calls>contacts 194/193, calls>companies 182/181, calls>deals 206/205, tasks>contacts 204/203, "
    "tasks>companies 192/191, tasks>deals 216/215, communications>contacts 81/82, "
    "communications>companies 87/88, communications>deals 85/86, emails>contacts 198/197, "
    "emails>companies 186/185, emails>deals 210/209, contacts>companies 279/280, "
    "contacts>companies 1/2/Primary, deals>contacts 3/4, deals>companies 341/342, deals>companies 5/6/Primary"
)
ASSOCIATION_TYPES: dict[int, tuple[str, str, int, str | None]] = {}  # typeId -> (from, to, inverse, label)
DEFAULT_ASSOCIATION: dict[tuple[str, str], int] = {}  # (from, to) -> default typeId
for _spec in _ASSOCIATION_SPECS.split(", "):
    _pair, _ids = _spec.split(" ")
    _from, _to = _pair.split(">")
    _fwd, _inv, *_label = _ids.split("/")
    ASSOCIATION_TYPES[int(_fwd)] = (_from, _to, int(_inv), _label[0] if _label else None)
    ASSOCIATION_TYPES[int(_inv)] = (_to, _from, int(_fwd), _label[0] if _label else None)
    if not _label:
        DEFAULT_ASSOCIATION.setdefault((_from, _to), int(_fwd))
        DEFAULT_ASSOCIATION.setdefault((_to, _from), int(_inv))


@dataclass
class PropertyDef:
    """One property definition of an object type in a portal."""

    name: str
    type: str = "string"  # string | number | date | datetime | enumeration | bool
    field_type: str = "text"
    options: list[str] | None = None
    read_only: bool = False
    calculated: bool = False
    unique: bool = False
    hubspot_defined: bool = True
    label: str = ""
    group_name: str = "hubspot_defined"


def default_properties(object_type: str) -> dict[str, PropertyDef]:
    """HubSpot's built-in properties of an object type (the subset the emulator models)."""
    spec = (_ENGAGEMENT_SYSTEM if object_type in _ENGAGEMENTS else "") + _PROPERTY_SPECS[object_type]
    props = {"hs_object_id": PropertyDef("hs_object_id", "number", "number", read_only=True)}
    for item in spec.split():
        name, _, kind = item.partition(":")
        name, _, options = name.partition("=")
        kind, read_only = kind.rstrip("!"), kind.endswith("!") or kind == "calc"
        prop = PropertyDef(name, read_only=read_only, calculated=kind == "calc", unique=kind == "unique")
        if kind in ("number", "datetime"):
            prop.type, prop.field_type = kind, "number" if kind == "number" else "date"
        if options:
            prop.type, prop.field_type, prop.options = "enumeration", "select", options.split("|")
        props[name] = prop
    props[_OWNER] = PropertyDef(_OWNER, "enumeration", "select")
    return props


@dataclass
class EmulatorConfig:
    """Defaults for new portals, and HubSpot's documented limits."""

    ten_second_max: int = 100
    search_per_second: int = 4
    access_token_ttl: int = 1800
    max_filter_groups: int = 5
    max_filters_per_group: int = 6
    max_filters_total: int = 18
    max_in_values: int = 100
    max_batch_inputs: int = 100
    max_search_limit: int = 200
    max_search_results: int = 10000
    validate_owner_ids: bool = True
    scopes: tuple[str, ...] = ("crm.objects.contacts.read", "crm.objects.contacts.write", "oauth")


@dataclass
class Portal:
    """One HubSpot account: objects, property definitions, associations, owners and rate-limit window."""

    portal_id: int
    ten_second_max: int
    search_per_second: int
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    properties: dict[str, dict[str, PropertyDef]] = field(default_factory=dict)
    associations: dict[tuple[str, str, str], dict[str, set[int]]] = field(default_factory=dict)
    owners: list[dict[str, Any]] = field(default_factory=list)
    window: deque[float] = field(default_factory=deque)
    # (object type, unique property) -> {lower-cased value: object id}: HubSpot finds an upsert's or a
    # unique check's record by index; a scan of every object per input made a batch cost O(objects).
    unique_index: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)


@dataclass
class Token:
    """An access token: a private-app token (never expires) or an OAuth access token."""

    portal_id: int
    kind: str  # "private" | "oauth"
    expires_at: float | None = None
    client_id: str | None = None


@dataclass
class Fault:
    """An injected failure and/or delay for the next `remaining` requests whose path starts with `prefix`."""

    prefix: str
    remaining: int
    status: int | None = None
    delay_ms: int = 0
    method: str | None = None
    body: dict[str, Any] | None = None
    retry_after: int | None = None


class ApiError(Exception):
    """An HTTP error answer, raised anywhere while handling a request."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("message"))
        self.status, self.body, self.headers = status, body, headers or {}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso_ms(ms: int) -> str:
    """ISO 8601 UTC with milliseconds and Z, as in HubSpot's createdAt."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_ms(value: Any) -> int | None:
    """Epoch milliseconds from ms digits, an ISO 8601 datetime or a date; None if it is none of them."""
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return round((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


def searchable_digits(raw: str) -> str:
    """HubSpot's hs_searchable_calculated_* value: the national significant number (region US)."""
    try:
        return phonenumbers.national_significant_number(phonenumbers.parse(raw, "US"))
    except phonenumbers.NumberParseException:
        return re.sub(r"\D", "", raw)


def email_header_properties(raw: str) -> dict[str, str]:
    """The read-only hs_email_from_* / hs_email_to_* values HubSpot derives from hs_email_headers (a JSON
    object {"from": {email, firstName, lastName}, "to": [...], "cc": [...], "bcc": [...]}); each is "" (unset)
    when the headers do not say."""
    try:
        headers = json.loads(raw) if raw else {}
    except ValueError:
        headers = {}
    headers = headers if isinstance(headers, dict) else {}
    sender, to = headers.get("from"), headers.get("to")
    people = {"from": [sender] if isinstance(sender, dict) else [], "to": to if isinstance(to, list) else []}
    keys = {"email": "email", "firstname": "firstName", "lastname": "lastName"}
    return {
        f"hs_email_{who}_{part}": ";".join(
            str(p.get(keys[part]) or "") for p in found if isinstance(p, dict) and p.get(keys[part])
        )
        for who, found in people.items()
        for part in _EMAIL_PARTS
    }


def error_body(message: str, category: str, **extra: Any) -> dict[str, Any]:
    """HubSpot's standard error body."""
    return dict(status="error", message=message, correlationId=str(uuid.uuid4()), category=category, **extra)


def property_error(portal_id: int, problems: list[tuple[str, str, str]]) -> ApiError:
    """400 "Property values were not valid" from (property name, error code, message) triples."""
    details = [
        dict(isValid=False, message=m, error=c, name=n, localizedErrorMessage=m) for n, c, m in problems
    ]
    details = [{**d, "portalId": portal_id} for d in details]
    message = "Property values were not valid: " + json.dumps(details, separators=(",", ":"))
    errors = [{"message": m, "code": c, "context": {"propertyName": [n]}} for n, c, m in problems]
    body = error_body(message, "VALIDATION_ERROR")
    category = body.pop("category")
    return ApiError(400, {**body, "errors": errors, "category": category})


def _invalid(message: str) -> ApiError:
    return ApiError(400, error_body(message, "VALIDATION_ERROR"))


def _not_found() -> ApiError:
    return ApiError(404, error_body("Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND"))


def _oauth_error(status: str, message: str, error: str = "invalid_grant") -> ApiError:
    return ApiError(400, {"error": error, "error_description": message, "status": status, "message": message})


def _object_type(raw: str) -> str:
    otype = _ALIASES.get(raw.lower())
    if otype is None:
        raise _invalid(f"Unable to infer object type from: {raw}")
    return otype


class HubSpotEmulator(ServedApp):
    """Owns the emulated HubSpot state and its Flask app; serves it on 127.0.0.1 from a background thread."""

    name = "hubspot-emulator"

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        super().__init__()
        self.lock = threading.RLock()
        self.reset()
        self.app = _build_app(self)

    # ---- control: portals, apps, tokens, limits, faults, owners ------------------------------------------
    def reset(self) -> None:
        """Forget every portal, app, token, fault and statistic."""
        with self.lock:
            self.portals: dict[int, Portal] = {}
            self.tokens: dict[str, Token] = {}
            self.apps: dict[str, dict[str, Any]] = {}
            self.codes: dict[str, dict[str, Any]] = {}
            self.refresh_tokens: dict[str, dict[str, Any]] = {}
            self.faults: list[Fault] = []
            self._search_windows: dict[str, deque[float]] = {}
            self._counters = {t: base * 1_000_000_000 for t, base in _ID_BASE.items()}
            self._next_owner = 11111110
            self._stats: dict[Any, dict[str, Any]] = {}
            self._log: deque[dict[str, Any]] = deque(maxlen=2000)
            self.developer_keys: set[str] = set()
            self.calling_settings: dict[int, dict[str, Any]] = {}  # app id -> settings

    def create_portal(
        self,
        portal_id: int | None = None,
        token: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> dict[str, Any]:
        """Create a portal with a private-app token (generated unless given), and an OAuth app if asked."""
        with self.lock:
            pid = int(portal_id or max([12345677, *self.portals]) + 1)
            if pid in self.portals:
                raise ValueError(f"portal {pid} exists")
            portal = Portal(pid, self.config.ten_second_max, self.config.search_per_second)
            portal.objects = {t: {} for t in OBJECT_TYPES}
            portal.properties = {t: default_properties(t) for t in OBJECT_TYPES}
            self.portals[pid] = portal
            token = token or f"pat-na1-{uuid.uuid4()}"
            self.tokens[token] = Token(pid, "private")
            info = {"portal_id": pid, "token": token}
            return (
                {**info, **self.create_app(client_id, client_secret)} if client_id or client_secret else info
            )

    def create_app(self, client_id: str | None = None, client_secret: str | None = None) -> dict[str, Any]:
        """Register an OAuth app (client id and secret generated unless given)."""
        with self.lock:
            app = {
                "client_id": client_id or str(uuid.uuid4()),
                "client_secret": client_secret or str(uuid.uuid4()),
            }
            app["app_id"] = 1234567 + len(self.apps)
            self.apps[app["client_id"]] = app
            return dict(app)

    def add_developer_key(self, key: str | None = None) -> dict[str, Any]:
        """A developer API key (hapikey) of the account that owns every app made with create_app."""
        with self.lock:
            key = key or str(uuid.uuid4())
            self.developer_keys.add(key)
            return {"developer_api_key": key}

    def issue_code(self, portal_id: int, client_id: str, redirect_uri: str | None = None) -> str:
        """A single-use authorization code, as if a user of the portal had installed the app."""
        with self.lock:
            if int(portal_id) not in self.portals or client_id not in self.apps:
                raise KeyError("unknown portal or client_id")
            code = str(uuid.uuid4())
            self.codes[code] = {
                "portal_id": int(portal_id),
                "client_id": client_id,
                "redirect_uri": redirect_uri,
            }
            return code

    def issue_access_token(
        self, portal_id: int, client_id: str | None = None, expires_in: int | None = None
    ) -> str:
        """An OAuth access token for a portal, without going through /oauth/v1/token."""
        with self.lock:
            token = "C" + secrets.token_urlsafe(96)
            ttl = self.config.access_token_ttl if expires_in is None else expires_in
            self.tokens[token] = Token(int(portal_id), "oauth", time.time() + ttl, client_id)
            return token

    def expire_token(self, token: str) -> None:
        """Make an access token expire now (later requests get 401 EXPIRED_AUTHENTICATION)."""
        with self.lock:
            self.tokens[token].expires_at = time.time() - 1

    def revoke_refresh_token(self, refresh_token: str) -> None:
        """Revoke a refresh token (later refreshes get 400 invalid_grant)."""
        with self.lock:
            self.refresh_tokens.pop(refresh_token, None)

    def set_limits(
        self,
        portal_id: int | None = None,
        ten_second_max: int | None = None,
        search_per_second: int | None = None,
    ) -> None:
        """Change the rate limits of one portal, or of every portal and the defaults for new ones."""
        with self.lock:
            everything = [self.config, *self.portals.values()]
            for target in [self.portals[int(portal_id)]] if portal_id is not None else everything:
                target.ten_second_max = int(ten_second_max or target.ten_second_max)
                target.search_per_second = int(search_per_second or target.search_per_second)

    def fail_next(
        self,
        prefix: str,
        status: int | None = 503,
        count: int = 1,
        method: str | None = None,
        delay_ms: int = 0,
        body: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Make the next `count` requests whose path starts with `prefix` wait `delay_ms`, then fail with
        `status` (a HubSpot-like body unless `body` is given; status None only delays)."""
        with self.lock:
            self.faults.append(
                Fault(prefix, count, status, delay_ms, method and method.upper(), body, retry_after)
            )

    def delay_next(self, prefix: str, delay_ms: int, count: int = 1, method: str | None = None) -> None:
        """Delay the next `count` requests whose path starts with `prefix` by `delay_ms`, then serve them."""
        self.fail_next(prefix, None, count, method, delay_ms)

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        with self.lock:
            self.faults.clear()

    def add_owner(
        self,
        portal_id: int,
        email: str,
        first_name: str = "",
        last_name: str = "",
        owner_id: str | None = None,
    ) -> dict[str, Any]:
        """Add a CRM owner (a HubSpot user) to a portal; returns it in the owners API's shape."""
        with self.lock:
            self._next_owner += 1
            now, user_id = iso_ms(_now_ms()), self._next_owner + 11111111
            owner = dict(
                id=owner_id or str(self._next_owner), email=email, type="PERSON", firstName=first_name
            )
            owner.update(lastName=last_name, userId=user_id, userIdIncludingInactive=user_id)
            owner.update(createdAt=now, updatedAt=now, archived=False)
            self.portals[int(portal_id)].owners.append(owner)
            return dict(owner)

    # ---- inspection --------------------------------------------------------------------------------------
    def objects(self, portal_id: int, object_type: str) -> list[dict[str, Any]]:
        """Every live object of a type in a portal, in the API's shape with all stored properties."""
        with self.lock:
            stored = self.portals[int(portal_id)].objects[_object_type(object_type)].values()
            return [self._view(o, None) for o in stored if not o["archived"]]

    def associations(self, portal_id: int, from_type: str, from_id: str, to_type: str) -> dict[str, set[int]]:
        """Associated object ids -> association type ids, from one object to objects of a type."""
        with self.lock:
            key = (_object_type(from_type), str(from_id), _object_type(to_type))
            return {k: set(v) for k, v in self.portals[int(portal_id)].associations.get(key, {}).items()}

    def stats(self, portal_id: int | None = None) -> dict[str, Any]:
        """Request counts, overall or for one portal: total, by_route ("POST /crm/v3/objects/{object_type}"),
        by_status and rate_limited (429s returned)."""
        with self.lock:
            entry = self._stats.get(int(portal_id) if portal_id is not None else "all")
            if entry is None:
                return {"total": 0, "by_route": {}, "by_status": {}, "rate_limited": 0}
            return {k: dict(v) if isinstance(v, Counter) else v for k, v in entry.items()}

    def requests(self, portal_id: int | None = None) -> list[dict[str, Any]]:
        """The last 2000 API requests (method, path, route, status, portal_id, json body), oldest first."""
        with self.lock:
            return [dict(r) for r in self._log if portal_id is None or r["portal_id"] == int(portal_id)]

    # ---- request gate: faults, authentication, rate limits, statistics -----------------------------------
    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if path.startswith(fault.prefix) and fault.method in (None, method):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _authenticate(self, header: str) -> tuple[Portal, str]:
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        info = self.tokens.get(token)
        if info is None or info.portal_id not in self.portals:
            message = (
                "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
                "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
            )
            raise ApiError(401, error_body(message, "INVALID_AUTHENTICATION"))
        if info.expires_at is not None and info.expires_at <= time.time():
            ago = int((time.time() - info.expires_at) // 60)
            message = f"The OAuth token used to make this call expired {ago} minute(s) ago."
            raise ApiError(401, error_body(message, "EXPIRED_AUTHENTICATION"))
        return self.portals[info.portal_id], token

    def _admit(self, portal: Portal, token: str, is_search: bool) -> None:
        now, window = time.monotonic(), portal.window
        while window and window[0] <= now - 10:
            window.popleft()
        if len(window) >= portal.ten_second_max:
            self._rate_limited(portal, "TEN_SECONDLY_ROLLING", window[0] + 10 - now)
        if is_search:
            searches = self._search_windows.setdefault(token, deque())
            while searches and searches[0] <= now - 1:
                searches.popleft()
            if len(searches) >= portal.search_per_second:
                self._rate_limited(portal, "SECONDLY", searches[0] + 1 - now)
            searches.append(now)
        window.append(now)

    @staticmethod
    def _rate_limited(portal: Portal, policy: str, wait: float) -> None:
        group = "private_app-api-calls-ten-secondly" if policy != "SECONDLY" else "search-api-calls-secondly"
        body = {"status": "error", "message": f"You have reached your {policy.lower()} limit."}
        body.update(errorType="RATE_LIMIT", correlationId=str(uuid.uuid4()), policyName=policy)
        body["groupName"] = f"publicapi:{group}:{portal.portal_id}"
        raise ApiError(429, body, {"Retry-After": str(max(1, math.ceil(wait)))})

    @staticmethod
    def _rate_headers(portal: Portal) -> dict[str, str]:
        used = sum(1 for t in portal.window if t > time.monotonic() - 10)
        return {
            "X-HubSpot-RateLimit-Max": str(portal.ten_second_max),
            "X-HubSpot-RateLimit-Remaining": str(max(0, portal.ten_second_max - used)),
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        }

    def _record(self, portal_id: int | None, route: str, status: int, path: str, body: Any) -> None:
        with self.lock:
            for key in ("all", portal_id):
                entry = self._stats.setdefault(
                    key, {"total": 0, "by_route": Counter(), "by_status": Counter()}
                )
                entry["total"] += 1
                entry["by_route"][route] += 1
                entry["by_status"][status] += 1
                entry["rate_limited"] = entry["by_status"][429]
            log = {"method": route.split(" ")[0], "path": path, "route": route, "status": status}
            self._log.append({**log, "portal_id": portal_id, "json": body})

    # ---- objects -----------------------------------------------------------------------------------------
    def _view(
        self, rec: dict[str, Any], names: list[str] | None, portal: Portal | None = None
    ) -> dict[str, Any]:
        """An object as the API returns it: every stored property (portal None), else the system properties
        plus `names` (or the type's defaults), null when unset."""
        stored, otype = rec["properties"], rec["type"]
        if portal is None:
            props = dict(stored)
        else:
            wanted = [*_SYSTEM[otype], *(names if names is not None else _DEFAULT_READ.get(otype, ()))]
            props = {n: stored.get(n) for n in wanted if n in portal.properties[otype]}
        created, updated = iso_ms(rec["created"]), iso_ms(rec["updated"])
        out = {"id": rec["id"], "properties": dict(sorted(props.items())), "createdAt": created}
        return {**out, "updatedAt": updated, "archived": rec["archived"]}

    def _get(
        self, portal: Portal, otype: str, object_id: str, id_property: str | None = None
    ) -> dict[str, Any]:
        if id_property and id_property != "hs_object_id":
            self._unique_property(portal, otype, id_property)
            rec = self._find_by(portal, otype, id_property, object_id)
        else:
            rec = portal.objects[otype].get(str(object_id))
        if rec is None or rec["archived"]:
            raise _not_found()
        return rec

    @staticmethod
    def _unique_property(portal: Portal, otype: str, name: str) -> None:
        prop = portal.properties[otype].get(name)
        if prop is None or not prop.unique:
            raise _invalid(
                f"{name} is not a unique property of {otype}; idProperty needs hasUniqueValue true"
            )

    @staticmethod
    def _find_by(portal: Portal, otype: str, name: str, value: Any) -> dict[str, Any] | None:
        wanted = str(value).strip().lower()
        prop = portal.properties[otype].get(name)
        if prop is not None and prop.unique:
            oid = portal.unique_index.get((otype, name), {}).get(wanted)
            if oid is None:
                return None  # every write of a unique property goes through _apply, which indexes it
            rec = portal.objects[otype].get(oid)
            live = rec is not None and not rec["archived"]
            if live and (rec["properties"].get(name) or "").lower() == wanted:  # type: ignore[index]
                return rec
        for rec in portal.objects[otype].values():  # not unique, or an archived record held the value
            if not rec["archived"] and (rec["properties"].get(name) or "").lower() == wanted:
                return rec
        return None

    def _clean(self, portal: Portal, otype: str, raw: Any, creating: bool) -> dict[str, str]:
        """Validate and normalise property values; raise HubSpot's 400 listing every invalid one."""
        if not isinstance(raw, dict):
            raise _invalid("properties must be an object of property names to values")
        defs, problems, values = portal.properties[otype], [], {}
        for name, value in raw.items():
            text = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
            prop, problem = defs.get(name), None
            if prop is None:
                problem = ("PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist')
            elif prop.read_only:
                problem = ("READ_ONLY_VALUE", f'"{name}" is a read only property; its value cannot be set.')
            elif text and name == _OWNER:
                if self.config.validate_owner_ids and text not in {o["id"] for o in portal.owners}:
                    problem = ("INVALID_OWNER_ID", f"{text} is not a valid owner id")
            elif text and prop.type == "enumeration" and prop.options is not None:
                chosen = text.split(";") if prop.field_type == "checkbox" else [text]
                if any(c not in prop.options for c in chosen):
                    allowed = ", ".join(prop.options)
                    problem = ("INVALID_OPTION", f"{text} was not one of the allowed options: [{allowed}]")
            elif text and prop.type == "number" and not re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", text):
                problem = ("INVALID_DECIMAL", f"{text} was not a valid number.")
            elif text and prop.type in ("date", "datetime"):
                ms = parse_ms(text)
                if ms is None:
                    problem = ("INVALID_DATE", f"{text} was not a valid date or datetime.")
                elif prop.type == "date":
                    text = iso_ms(ms)[:10]
                else:  # HubSpot echoes datetimes like Java's Instant.toString: no fraction when it is zero
                    text = iso_ms(ms) if ms % 1000 else iso_ms(ms)[:19] + "Z"
            elif text and prop.type == "bool" and text.lower() not in ("true", "false"):
                problem = ("INVALID_BOOLEAN", f"{text} was not a valid boolean.")
            if problem:
                problems.append((name, *problem))
            values[name] = text
        for name in _REQUIRED.get(otype, ()) if creating else ():
            if not values.get(name):
                problems.append((name, "REQUIRED", f'Property "{name}" is required'))
        if problems:
            raise property_error(portal.portal_id, problems)
        return values

    def _check_unique(self, portal: Portal, otype: str, values: dict[str, str], self_id: str | None) -> None:
        for name, value in values.items():
            if not value or not portal.properties[otype][name].unique:
                continue
            other = self._find_by(portal, otype, name, value)
            if other is not None and other["id"] != self_id:
                message = f"A {_SINGULAR[otype]} with {name} {value!r} already has that value."
                if (otype, name) == ("contacts", "email"):
                    message = "Contact already exists."
                raise ApiError(409, error_body(f"{message} Existing ID: {other['id']}", "CONFLICT"))

    @staticmethod
    def _apply(portal: Portal, rec: dict[str, Any], values: dict[str, str], now: int) -> None:
        props, otype = rec["properties"], rec["type"]
        for name, value in values.items():
            prop = portal.properties[otype].get(name)
            if prop is not None and prop.unique:
                index = portal.unique_index.setdefault((otype, name), {})
                old = (props.get(name) or "").lower()
                if old and index.get(old) == rec["id"]:
                    del index[old]
                if value:
                    index[value.lower()] = rec["id"]
            updates = {name: value}
            if otype == "contacts" and name in _PHONES:
                updates[_PHONES[name]] = searchable_digits(value) if value else ""
            if otype == "emails" and name == "hs_email_headers":
                updates.update(email_header_properties(value))
            for key, val in updates.items():
                if val:
                    props[key] = val
                else:
                    props.pop(key, None)
        rec["updated"] = now
        props["lastmodifieddate" if otype == "contacts" else "hs_lastmodifieddate"] = iso_ms(now)

    @staticmethod
    def _check_associations(portal: Portal, otype: str, specs: Any) -> list[tuple[str, str, int]]:
        links = []
        for spec in specs if isinstance(specs, list) else []:
            if not isinstance(spec, dict) or not isinstance(spec.get("types"), list):
                raise _invalid("associations must be a list of {to: {id}, types: [...]} objects")
            to_id = str((spec.get("to") or {}).get("id", ""))
            for kind in spec["types"]:
                type_id = kind.get("associationTypeId") if isinstance(kind, dict) else None
                type_id = int(type_id) if isinstance(type_id, str) and type_id.isdigit() else type_id
                known = ASSOCIATION_TYPES.get(type_id) if isinstance(type_id, int) else None
                if known is None or known[0] != otype or kind.get("associationCategory") != "HUBSPOT_DEFINED":
                    category = kind.get("associationCategory")
                    raise _invalid(
                        f"{category} association type {type_id} is not valid for {_SINGULAR[otype]}"
                    )
                target = portal.objects[known[1]].get(to_id)
                if target is None or target["archived"]:
                    raise _invalid(f"Could not find {_SINGULAR[known[1]]} {to_id!r} to associate with")
                links.append((known[1], to_id, type_id))
        return links

    @staticmethod
    def _associate(portal: Portal, ftype: str, fid: str, ttype: str, tid: str, type_id: int) -> None:
        """Store the association both ways; a labelled type implies the default (unlabelled) one too."""
        for fwd in {type_id, DEFAULT_ASSOCIATION[(ftype, ttype)]}:
            portal.associations.setdefault((ftype, fid, ttype), {}).setdefault(tid, set()).add(fwd)
            inverse = ASSOCIATION_TYPES[fwd][2]
            portal.associations.setdefault((ttype, tid, ftype), {}).setdefault(fid, set()).add(inverse)
        # HubSpot keeps a calculated deal count on contacts.
        for otype, oid, other in ((ftype, fid, ttype), (ttype, tid, ftype)):
            if otype == "contacts" and other == "deals" and oid in portal.objects["contacts"]:
                count = len(portal.associations.get(("contacts", oid, "deals"), {}))
                portal.objects["contacts"][oid]["properties"]["num_associated_deals"] = str(count)

    def _create(self, portal: Portal, otype: str, body: dict[str, Any]) -> dict[str, Any]:
        values = self._clean(portal, otype, body.get("properties") or {}, creating=True)
        self._check_unique(portal, otype, values, None)
        links = self._check_associations(portal, otype, body.get("associations"))
        self._counters[otype] += 1
        oid, now = str(self._counters[otype]), _now_ms()
        props = {"hs_object_id": oid, "hs_createdate" if otype in _ENGAGEMENTS else "createdate": iso_ms(now)}
        rec = {
            "id": oid,
            "type": otype,
            "properties": props,
            "created": now,
            "updated": now,
            "archived": False,
        }
        self._apply(portal, rec, values, now)
        portal.objects[otype][oid] = rec
        for ttype, tid, type_id in links:
            self._associate(portal, otype, oid, ttype, tid, type_id)
        return rec

    def _update(self, portal: Portal, rec: dict[str, Any], raw: Any) -> dict[str, Any]:
        values = self._clean(portal, rec["type"], raw or {}, creating=False)
        self._check_unique(portal, rec["type"], values, rec["id"])
        self._apply(portal, rec, values, _now_ms())
        return rec

    def _inputs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
            raise _invalid("inputs is required and must be a list of objects")
        if len(inputs) > self.config.max_batch_inputs:
            raise _invalid(
                f"Too many inputs: {len(inputs)}; a batch takes at most {self.config.max_batch_inputs}."
            )
        ids = [str(i["id"]) for i in inputs if i.get("id") is not None]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise _invalid(f"Duplicate IDs found in batch input: {dupes}. IDs must be unique")
        return inputs

    @staticmethod
    def _batch(
        inputs: list[dict[str, Any]], one: Callable[[dict[str, Any]], Any], ok: int
    ) -> tuple[Any, int]:
        """Run `one` per input; 207 with per-input errors if some failed, the first error if all did."""
        started, results, errors, first = iso_ms(_now_ms()), [], [], None
        for item in inputs:
            try:
                results.append(one(item))
            except ApiError as exc:
                first = first or exc
                entry = {"status": "error", "category": exc.body.get("category"), "message": str(exc)}
                trace = item.get("objectWriteTraceId")
                errors.append({**entry, "context": {"objectWriteTraceId": [trace]} if trace else {}})
        if first is not None and not results:
            raise first
        body: dict[str, Any] = {"status": "COMPLETE", "results": results}
        body.update({"numErrors": len(errors), "errors": errors} if errors else {})
        return {**body, "startedAt": started, "completedAt": iso_ms(_now_ms())}, 207 if errors else ok

    # ---- search ------------------------------------------------------------------------------------------
    @staticmethod
    def _key(prop: PropertyDef | None, value: Any) -> tuple[int, Any]:
        """A sort/compare key: numbers and datetimes numerically, strings case-insensitively, unset last."""
        if value is None or value == "":
            return (2, "")
        if prop is not None and prop.type in ("number", "date", "datetime"):
            text = str(value).strip()
            number = parse_ms(text) if prop.type != "number" else None
            if prop.type == "number" and re.fullmatch(r"-?\d+(\.\d+)?([eE][-+]?\d+)?", text):
                number = float(text)
            if number is not None:
                return (0, number)
        return (1, str(value).strip().lower())

    def _check_filter(self, portal: Portal, otype: str, flt: Any) -> None:
        name = str(flt.get("propertyName")) if isinstance(flt, dict) else None
        if name not in portal.properties[otype]:
            raise _invalid(f'Property "{name}" does not exist on {otype}')
        op, values = str(flt.get("operator", "EQ")).upper(), flt.get("values")
        if op not in _OPERATORS:
            raise _invalid(f"Unknown filter operator {op}")
        if op in ("IN", "NOT_IN") and (
            not isinstance(values, list) or len(values) > self.config.max_in_values
        ):
            raise _invalid(f"{op} needs a values list of at most {self.config.max_in_values} values")

    def _matches(self, portal: Portal, otype: str, rec: dict[str, Any], flt: dict[str, Any]) -> bool:
        name, op = str(flt.get("propertyName")), str(flt.get("operator", "EQ")).upper()
        prop, value = portal.properties[otype][name], rec["properties"].get(name)
        if op in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
            return (value is not None) == (op == "HAS_PROPERTY")
        if op in ("IN", "NOT_IN"):
            hit = value is not None and self._key(prop, value) in {self._key(prop, v) for v in flt["values"]}
            return hit == (op == "IN")
        if op in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
            text, pattern = (value or "").lower(), str(flt.get("value", "")).lower()
            tokens = [text, *re.split(r"[\s,;]+", text)]
            hit = value is not None and any(fnmatch.fnmatchcase(t, pattern) for t in tokens)
            return hit == (op == "CONTAINS_TOKEN")
        mine, theirs = self._key(prop, value), self._key(prop, flt.get("value"))
        if op in ("EQ", "NEQ"):
            return (value is not None and mine == theirs) == (op == "EQ")
        if value is None:
            return False
        if op == "BETWEEN":
            return theirs <= mine <= self._key(prop, flt.get("highValue"))
        return {"GT": mine > theirs, "GTE": mine >= theirs, "LT": mine < theirs, "LTE": mine <= theirs}[op]

    def _search(self, portal: Portal, otype: str, body: dict[str, Any]) -> dict[str, Any]:
        cfg, groups = self.config, body.get("filterGroups") or []
        if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
            raise _invalid("filterGroups must be a list of objects")
        sizes = [len(group.get("filters") or []) for group in groups]
        if len(groups) > cfg.max_filter_groups:
            raise _invalid(f"Too many filterGroups: {len(groups)}. The maximum is {cfg.max_filter_groups}.")
        if max(sizes, default=0) > cfg.max_filters_per_group:
            raise _invalid(f"Too many filters in a filterGroup: the maximum is {cfg.max_filters_per_group}.")
        if sum(sizes) > cfg.max_filters_total:
            raise _invalid(f"Too many filters: {sum(sizes)}. The maximum in all is {cfg.max_filters_total}.")
        try:
            limit, after = int(body.get("limit") or 10), int(body.get("after") or 0)
        except (TypeError, ValueError):
            raise _invalid("limit and after must be integers") from None
        if not 1 <= limit <= cfg.max_search_limit:
            raise _invalid(f"limit must be between 1 and {cfg.max_search_limit}, got {limit}")
        if after + limit > cfg.max_search_results:
            raise _invalid(f"Search cannot page beyond {cfg.max_search_results} results")
        filter_lists = [group.get("filters") or [] for group in groups]
        for flt in (flt for filters in filter_lists for flt in filters):
            self._check_filter(portal, otype, flt)
        query, fields = str(body.get("query") or "").strip().lower(), _QUERY_FIELDS[otype].split()

        def wanted(rec: dict[str, Any]) -> bool:
            if rec["archived"]:
                return False
            if query and not any(query in (rec["properties"].get(f) or "").lower() for f in fields):
                return False
            return not groups or any(
                all(self._matches(portal, otype, rec, f) for f in fs) for fs in filter_lists
            )

        hits = [r for r in sorted(portal.objects[otype].values(), key=lambda r: int(r["id"])) if wanted(r)]
        for sort in reversed(body.get("sorts") or []):
            spec = {"propertyName": sort} if isinstance(sort, str) else sort
            name, descending = spec.get("propertyName", ""), spec.get("direction") == "DESCENDING"
            prop = portal.properties[otype].get(name)
            hits.sort(key=lambda r, p=prop, n=name: self._key(p, r["properties"].get(n)), reverse=descending)
        page = [self._view(r, body.get("properties"), portal) for r in hits[after : after + limit]]
        out: dict[str, Any] = {"total": len(hits), "results": page}
        return (
            {**out, "paging": {"next": {"after": str(after + limit)}}} if after + limit < len(hits) else out
        )

    # ---- OAuth -------------------------------------------------------------------------------------------
    def _token_grant(self, form: dict[str, str]) -> dict[str, Any]:
        app = self.apps.get(form.get("client_id", ""))
        if app is None:
            raise _oauth_error("BAD_CLIENT_ID", "missing or invalid client id", "invalid_client")
        if form.get("client_secret") != app["client_secret"]:
            raise _oauth_error("BAD_CLIENT_SECRET", "missing or invalid client secret", "invalid_client")
        grant, refresh = form.get("grant_type"), form.get("refresh_token", "")
        if grant == "authorization_code":
            code = self.codes.get(form.get("code", ""))
            if code is None or code["client_id"] != app["client_id"]:
                raise _oauth_error("BAD_AUTH_CODE", "missing or unknown auth code")
            if code["redirect_uri"] and form.get("redirect_uri") != code["redirect_uri"]:
                raise _oauth_error(
                    "BAD_REDIRECT_URI", "redirect_uri does not match the authorization request"
                )
            del self.codes[form["code"]]
            refresh = str(uuid.uuid4())
            self.refresh_tokens[refresh] = {"portal_id": code["portal_id"], "client_id": app["client_id"]}
        elif grant == "refresh_token":
            stored = self.refresh_tokens.get(refresh)
            if (
                stored is None
                or stored["client_id"] != app["client_id"]
                or stored["portal_id"] not in self.portals
            ):
                raise _oauth_error("BAD_REFRESH_TOKEN", "refresh token is invalid, expired or revoked")
        else:
            raise _oauth_error(
                "BAD_GRANT_TYPE", f"unsupported grant_type {grant!r}", "unsupported_grant_type"
            )
        access = self.issue_access_token(self.refresh_tokens[refresh]["portal_id"], app["client_id"])
        ttl = self.config.access_token_ttl
        return {"token_type": "bearer", "refresh_token": refresh, "access_token": access, "expires_in": ttl}

    def _token_info(self, token: str) -> dict[str, Any]:
        info = self.tokens.get(token)
        if info is None or info.kind != "oauth" or (info.expires_at or 0) <= time.time():
            raise ApiError(404, error_body("access token not found or expired", "OBJECT_NOT_FOUND"))
        out = {
            "token": token,
            "user": "emulated.user@example.com",
            "hub_domain": f"portal-{info.portal_id}.example",
        }
        out.update(scopes=list(self.config.scopes), hub_id=info.portal_id)
        out.update(app_id=self.apps.get(info.client_id or "", {}).get("app_id", 0))
        out.update(expires_in=max(0, int((info.expires_at or 0) - time.time())), user_id=22222222)
        return {**out, "token_type": "access"}


def _fault_answer(fault: Fault) -> Response:
    status = fault.status or 500
    headers = {"Retry-After": str(fault.retry_after or 1)} if status == 429 or fault.retry_after else {}
    if fault.body is not None:
        return _json(fault.body, status, headers)
    if status == 429:
        message = "You have reached your ten_secondly_rolling limit."
        body = {
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
        }
        return _json({**body, "policyName": "TEN_SECONDLY_ROLLING"}, 429, headers)
    known = {500: "INTERNAL_ERROR", 502: "BAD_GATEWAY", 503: "SERVICE_UNAVAILABLE", 504: "GATEWAY_TIMEOUT"}
    category = known.get(status, "INJECTED_FAULT")
    return _json(
        error_body(f"Emulated failure: {category.replace('_', ' ').lower()}", category), status, headers
    )


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status, headers or {}, mimetype="application/json")


def _property_json(prop: PropertyDef, portal: Portal) -> dict[str, Any]:
    values = [o["id"] for o in portal.owners] if prop.name == _OWNER else (prop.options or [])
    options = [{"label": o, "value": o, "displayOrder": i, "hidden": False} for i, o in enumerate(values)]
    out = dict(name=prop.name, label=prop.label or prop.name, type=prop.type, fieldType=prop.field_type)
    out.update(description="", groupName=prop.group_name, displayOrder=-1, calculated=prop.calculated)
    out.update(externalOptions=prop.name == _OWNER, hasUniqueValue=prop.unique, hidden=False, options=options)
    out.update(hubspotDefined=prop.hubspot_defined, formField=not prop.hubspot_defined, archived=False)
    meta = {"archivable": not prop.hubspot_defined, "readOnlyValue": prop.read_only}
    out["modificationMetadata"] = {**meta, "readOnlyDefinition": prop.hubspot_defined}
    return {**out, "createdAt": "2024-01-01T00:00:00.000Z", "updatedAt": "2024-01-01T00:00:00.000Z"}


CALLING_PREFIX = "/crm/v3/extensions/calling/"
CALLING_FIELDS: dict[str, type] = {
    "name": str,
    "url": str,
    "height": int,
    "width": int,
    "isReady": bool,
    "supportsCustomObjects": bool,
    "supportsInboundCalling": bool,
    "usesCallingWindow": bool,
    "usesRemote": bool,
}
CALLING_DEFAULTS: dict[str, Any] = {
    "height": 600,
    "width": 400,
    "isReady": False,
    "supportsCustomObjects": False,
    "supportsInboundCalling": False,
    "usesCallingWindow": False,
    "usesRemote": False,
}

# Control endpoints: POST /_emulator/<action> with the method's keyword arguments as a JSON object.
CONTROL_ACTIONS = {
    "portals": "create_portal",
    "apps": "create_app",
    "codes": "issue_code",
    "access-tokens": "issue_access_token",
    "expire-token": "expire_token",
    "revoke-refresh-token": "revoke_refresh_token",
    "limits": "set_limits",
    "faults": "fail_next",
    "delays": "delay_next",
    "clear-faults": "clear_faults",
    "owners": "add_owner",
    "developer-keys": "add_developer_key",
    "reset": "reset",
}


def _build_app(emu: HubSpotEmulator) -> Flask:
    """Register every route up front (Flask refuses new routes after the first request)."""
    app = Flask("emulators.hubspot")
    app.extensions["hubspot_emulator"] = emu

    def api(rule: str, *methods: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a HubSpot route: handler(portal, **path params), run under the lock, returns the body
        or (body, status)."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            def view(**kwargs: Any) -> Response:
                with emu.lock:
                    for key in ("object_type", "from_type", "to_type"):
                        if key in kwargs:
                            kwargs[key] = _object_type(kwargs[key])
                    result = fn(g.portal, **kwargs)
                body, status = result if isinstance(result, tuple) else (result, 200)
                return Response(status=204) if status == 204 else _json(body, status)

            app.add_url_rule(rule, f"{fn.__name__}:{rule}", view, methods=list(methods))
            return fn

        return register

    def payload() -> dict[str, Any]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise _invalid("Invalid input JSON: the request body must be a JSON object")
        return body

    def props_arg() -> list[str] | None:
        raw = request.args.getlist("properties")
        return [p for chunk in raw for p in chunk.split(",") if p] if raw else None

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return _json(exc.body, exc.status, exc.headers)

    @app.errorhandler(404)
    @app.errorhandler(405)
    def _no_route(exc: Exception) -> Response:
        message = f"Unknown route {request.method} {request.path}"
        return _json(error_body(message, "OBJECT_NOT_FOUND"), getattr(exc, "code", 404))

    @app.before_request
    def _gate() -> Response | None:
        g.portal, g.search, g.faulted = None, request.path.endswith("/search"), False
        if request.path.startswith("/_emulator/"):
            return None
        known = emu.tokens.get(request.headers.get("Authorization", "")[7:].strip())
        g.portal_id = known and known.portal_id  # for the statistics, even of faulted requests
        fault = emu._take_fault(request.method, request.path)
        if fault is not None:
            time.sleep(fault.delay_ms / 1000)
            if fault.status:
                g.faulted = True
                return _fault_answer(fault)
        if request.path.startswith(("/oauth/", CALLING_PREFIX)):
            return None  # OAuth needs no token; calling settings take the developer key (hapikey)
        with emu.lock:
            g.portal, token = emu._authenticate(request.headers.get("Authorization", ""))
            emu._admit(g.portal, token, g.search)
        return None

    @app.after_request
    def _finish(resp: Response) -> Response:
        if request.path.startswith("/_emulator/"):
            return resp
        portal: Portal | None = g.get("portal")
        if portal is not None and not g.get("search") and not g.get("faulted"):
            with emu.lock:
                resp.headers.update(emu._rate_headers(portal))
        resp.headers["X-HubSpot-Correlation-Id"] = str(uuid.uuid4())
        rule = request.url_rule.rule if request.url_rule else request.path
        route = request.method + " " + re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)
        emu._record(g.get("portal_id"), route, resp.status_code, request.path, request.get_json(silent=True))
        return resp

    # ---- CRM objects v3 ----------------------------------------------------------------------------------
    @api("/crm/v3/objects/<object_type>", "POST")
    def create_object(portal: Portal, object_type: str) -> tuple[dict[str, Any], int]:
        return emu._view(emu._create(portal, object_type, payload()), None), 201

    @api("/crm/v3/objects/<object_type>/<object_id>", "GET")
    def get_object(portal: Portal, object_type: str, object_id: str) -> dict[str, Any]:
        rec = emu._get(portal, object_type, object_id, request.args.get("idProperty"))
        return emu._view(rec, props_arg(), portal)

    @api("/crm/v3/objects/<object_type>/<object_id>", "PATCH")
    def update_object(portal: Portal, object_type: str, object_id: str) -> dict[str, Any]:
        rec = emu._get(portal, object_type, object_id, request.args.get("idProperty"))
        return emu._view(emu._update(portal, rec, payload().get("properties")), None)

    @api("/crm/v3/objects/<object_type>/<object_id>", "DELETE")
    def archive_object(portal: Portal, object_type: str, object_id: str) -> tuple[None, int]:
        rec = portal.objects[object_type].get(object_id)
        if rec is not None:
            rec["archived"] = True
        return None, 204

    @api("/crm/v3/objects/<object_type>/batch/create", "POST")
    def batch_create(portal: Portal, object_type: str) -> tuple[dict[str, Any], int]:
        inputs = emu._inputs(payload())
        return emu._batch(inputs, lambda item: emu._view(emu._create(portal, object_type, item), None), 201)

    @api("/crm/v3/objects/<object_type>/batch/update", "POST")
    def batch_update(portal: Portal, object_type: str) -> tuple[dict[str, Any], int]:
        def one(item: dict[str, Any]) -> dict[str, Any]:
            rec = emu._get(portal, object_type, str(item.get("id")), item.get("idProperty"))
            return emu._view(emu._update(portal, rec, item.get("properties")), None)

        return emu._batch(emu._inputs(payload()), one, 200)

    @api("/crm/v3/objects/<object_type>/batch/upsert", "POST")
    def batch_upsert(portal: Portal, object_type: str) -> tuple[dict[str, Any], int]:
        inputs = emu._inputs(payload())
        for item in inputs:
            emu._unique_property(portal, object_type, str(item.get("idProperty")))

        def one(item: dict[str, Any]) -> dict[str, Any]:
            id_prop, key = item["idProperty"], str(item.get("id", ""))
            rec = emu._find_by(portal, object_type, id_prop, key)
            if rec is None:
                props = {**(item.get("properties") or {}), id_prop: key}
                return {
                    **emu._view(emu._create(portal, object_type, {"properties": props}), None),
                    "new": True,
                }
            return {**emu._view(emu._update(portal, rec, item.get("properties")), None), "new": False}

        return emu._batch(inputs, one, 200)

    @api("/crm/v3/objects/<object_type>/batch/read", "POST")
    def batch_read(portal: Portal, object_type: str) -> tuple[dict[str, Any], int]:
        body, started, results, missing = payload(), iso_ms(_now_ms()), [], []
        for item in emu._inputs(body):
            try:
                rec = emu._get(portal, object_type, str(item.get("id")), body.get("idProperty"))
                results.append(emu._view(rec, body.get("properties") or [], portal))
            except ApiError as exc:
                if exc.status != 404:
                    raise
                missing.append(str(item.get("id")))
        out: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if missing:
            kind = _SINGULAR[object_type].upper()
            message = f"Could not get some {kind} objects, they may be deleted or not exist."
            error = {"status": "error", "category": "OBJECT_NOT_FOUND", "context": {"ids": missing}}
            out.update(numErrors=1, errors=[{**error, "message": message + " Check that ids are valid."}])
        return {**out, "startedAt": started, "completedAt": iso_ms(_now_ms())}, 207 if missing else 200

    @api("/crm/v3/objects/<object_type>/search", "POST")
    def search(portal: Portal, object_type: str) -> dict[str, Any]:
        return emu._search(portal, object_type, payload())

    # ---- associations v4 ---------------------------------------------------------------------------------
    def default_links(portal: Portal, ftype: str, ttype: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        """Associate each (from id, to id) with the default type, after checking every object exists."""
        started, type_id = iso_ms(_now_ms()), DEFAULT_ASSOCIATION.get((ftype, ttype))
        if type_id is None:
            raise _invalid(f"There is no default association type from {ftype} to {ttype}")
        for otype, oid in [(ftype, fid) for fid, _ in pairs] + [(ttype, tid) for _, tid in pairs]:
            if portal.objects[otype].get(oid, {"archived": True})["archived"]:
                raise _invalid(f"Could not find {_SINGULAR[otype]} {oid!r} to associate")
        spec = {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}
        for fid, tid in pairs:
            emu._associate(portal, ftype, fid, ttype, tid, type_id)
        results = [{"from": {"id": fid}, "to": {"id": tid}, "associationSpec": spec} for fid, tid in pairs]
        return {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": iso_ms(_now_ms()),
        }

    @api("/crm/v4/associations/<from_type>/<to_type>/batch/associate/default", "POST")
    def batch_associate_default(portal: Portal, from_type: str, to_type: str) -> dict[str, Any]:
        inputs = emu._inputs(payload())
        pairs = [(str((i.get("from") or {}).get("id")), str((i.get("to") or {}).get("id"))) for i in inputs]
        return default_links(portal, from_type, to_type, pairs)

    @api("/crm/v4/associations/<from_type>/<to_type>/batch/read", "POST")
    def batch_read_associations(portal: Portal, from_type: str, to_type: str) -> tuple[dict[str, Any], int]:
        started, results, missing = iso_ms(_now_ms()), [], []
        for item in emu._inputs(payload()):
            fid = str(item.get("id"))
            if portal.objects[from_type].get(fid, {"archived": True})["archived"]:
                missing.append(fid)
                continue
            links = sorted(portal.associations.get((from_type, fid, to_type), {}).items())
            to = [
                {
                    "toObjectId": int(tid),
                    "associationTypes": [
                        {"category": "HUBSPOT_DEFINED", "typeId": t, "label": ASSOCIATION_TYPES[t][3]}
                        for t in sorted(types)
                    ],
                }
                for tid, types in links
            ]
            results.append({"from": {"id": fid}, "to": to})
        out: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": iso_ms(_now_ms()),
        }
        if missing:
            error = {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "context": {"ids": missing},
                "message": f"No {_SINGULAR[from_type]} with ids {', '.join(missing)}",
            }
            out.update(numErrors=1, errors=[error])
        return out, 207 if missing else 200

    @api("/crm/v4/objects/<from_type>/<from_id>/associations/default/<to_type>/<to_id>", "PUT")
    def associate_default(
        portal: Portal, from_type: str, from_id: str, to_type: str, to_id: str
    ) -> dict[str, Any]:
        return default_links(portal, from_type, to_type, [(from_id, to_id)])

    @api("/crm/v4/objects/<from_type>/<from_id>/associations/<to_type>", "GET")
    def read_associations(portal: Portal, from_type: str, from_id: str, to_type: str) -> dict[str, Any]:
        results = []
        for tid, types in sorted(portal.associations.get((from_type, from_id, to_type), {}).items()):
            labels = [(t, ASSOCIATION_TYPES[t][3]) for t in sorted(types)]
            kinds = [{"category": "HUBSPOT_DEFINED", "typeId": t, "label": label} for t, label in labels]
            results.append({"toObjectId": int(tid), "associationTypes": kinds})
        return {"results": results}

    # ---- owners, properties ------------------------------------------------------------------------------
    @api("/crm/v3/owners", "GET")
    @api("/crm/v3/owners/", "GET")
    def list_owners(portal: Portal) -> dict[str, Any]:
        email = request.args.get("email", "").lower()
        owners = [o for o in portal.owners if not email or o["email"].lower() == email]
        limit, after = min(int(request.args.get("limit", 100)), 500), int(request.args.get("after", 0) or 0)
        out: dict[str, Any] = {"results": owners[after : after + limit]}
        if after + limit < len(owners):
            out["paging"] = {"next": {"after": str(after + limit), "link": f"?after={after + limit}"}}
        return out

    @api("/crm/v3/properties/<object_type>", "GET")
    def list_properties(portal: Portal, object_type: str) -> dict[str, Any]:
        return {"results": [_property_json(p, portal) for p in portal.properties[object_type].values()]}

    @api("/crm/v3/properties/<object_type>", "POST")
    def create_property(portal: Portal, object_type: str) -> tuple[dict[str, Any], int]:
        body, defs = payload(), portal.properties[object_type]
        missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)]
        if missing:
            raise _invalid(f"Missing required fields: {missing}")
        name, kind = str(body["name"]), body["type"]
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise _invalid(f"Property name {name!r} must be lowercase letters, digits and underscores")
        if kind not in ("string", "number", "date", "datetime", "enumeration", "bool"):
            raise _invalid(f"Invalid property type {kind!r}")
        if name in defs:
            raise ApiError(
                409, error_body(f"Property named '{name}' already exists.", "OBJECT_ALREADY_EXISTS")
            )
        options = [str(o.get("value")) for o in body.get("options") or []] if kind == "enumeration" else None
        prop = PropertyDef(name, kind, body["fieldType"], options, unique=bool(body.get("hasUniqueValue")))
        prop.hubspot_defined, prop.label, prop.group_name = False, body["label"], body["groupName"]
        defs[name] = prop
        return _property_json(prop, portal), 201

    @api("/crm/v3/properties/<object_type>/<name>", "GET")
    def get_property(portal: Portal, object_type: str, name: str) -> dict[str, Any]:
        if name not in portal.properties[object_type]:
            message = f"Unable to find property named '{name}' for object type {_TYPE_IDS[object_type]}"
            raise ApiError(404, error_body(message, "OBJECT_NOT_FOUND"))
        return _property_json(portal.properties[object_type][name], portal)

    # ---- OAuth v1 ----------------------------------------------------------------------------------------
    @api("/oauth/v1/token", "POST")
    def oauth_token(portal: None) -> dict[str, Any]:
        return emu._token_grant(request.form.to_dict())

    @api("/oauth/v1/access-tokens/<token>", "GET")
    def access_token_info(portal: None, token: str) -> dict[str, Any]:
        return emu._token_info(token)

    # ---- calling extension settings (developer hapikey) -------------------------------------------------
    def calling_app(app_id: str) -> int:
        if request.args.get("hapikey") not in emu.developer_keys:
            raise ApiError(
                401,
                error_body(
                    "The API key provided is invalid. View or manage your API key here: "
                    "https://app.hubspot.com/l/api-key/",
                    "INVALID_AUTHENTICATION",
                ),
            )
        known = {int(a["app_id"]) for a in emu.apps.values()}
        if not app_id.isdigit() or int(app_id) not in known:
            raise ApiError(404, error_body(f"App {app_id} not found", "OBJECT_NOT_FOUND"))
        return int(app_id)

    def calling_fields(body: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
        out = dict(current)
        for name, kind in CALLING_FIELDS.items():
            if name not in body:
                continue
            value = body[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise _invalid(f"{name} must be a {kind.__name__}")
            out[name] = value
        return out

    @app.route(CALLING_PREFIX + "<app_id>/settings", methods=["GET", "POST", "PATCH", "DELETE"])
    def calling_settings(app_id: str) -> Response:
        with emu.lock:
            aid = calling_app(app_id)
            current = emu.calling_settings.get(aid)
            if request.method == "DELETE":
                emu.calling_settings.pop(aid, None)
                return Response(status=204)
            if request.method == "POST":
                if current is not None:
                    raise ApiError(409, error_body(f"Calling settings for app {aid} exist", "CONFLICT"))
                body = payload()
                missing = [k for k in ("name", "url") if not body.get(k)]
                if missing:
                    raise _invalid(f"Missing required fields: {missing}")
                now = iso_ms(_now_ms())
                current = {**CALLING_DEFAULTS, "createdAt": now}
                current = {**calling_fields(body, current), "updatedAt": now}
            elif current is None:
                raise ApiError(404, error_body(f"No calling settings for app {aid}", "OBJECT_NOT_FOUND"))
            elif request.method == "PATCH":
                current = {**calling_fields(payload(), current), "updatedAt": iso_ms(_now_ms())}
            emu.calling_settings[aid] = current
            return _json(current)

    # ---- control endpoints (no auth, not counted) --------------------------------------------------------
    @app.post("/_emulator/<action>")
    def control(action: str) -> Response:
        if action not in CONTROL_ACTIONS:
            return _json({"status": "error", "message": f"unknown action {action}"}, 404)
        try:
            result = getattr(emu, CONTROL_ACTIONS[action])(**(request.get_json(silent=True) or {}))
        except (KeyError, ValueError, TypeError) as exc:
            return _json({"status": "error", "message": f"{type(exc).__name__}: {exc}"}, 400)
        return _json(result if isinstance(result, dict) else {"ok": True, "result": result})

    @app.get("/_emulator/stats")
    def control_stats() -> Response:
        return _json(emu.stats(request.args.get("portal_id", type=int)))

    @app.get("/_emulator/requests")
    def control_requests() -> Response:
        return _json({"results": emu.requests(request.args.get("portal_id", type=int))})

    @app.get("/_emulator/objects/<int:portal_id>/<object_type>")
    def control_objects(portal_id: int, object_type: str) -> Response:
        return _json({"results": emu.objects(portal_id, object_type)})

    return app


def create_emulator(config: EmulatorConfig | None = None) -> Flask:
    """A Flask app emulating HubSpot; its HubSpotEmulator is app.extensions["hubspot_emulator"]."""
    return HubSpotEmulator(config).app


def main(argv: list[str] | None = None) -> None:
    """Run in the foreground: python -m emulators.hubspot --port N (prints the base URL, then serves)."""
    parser = argparse.ArgumentParser(description="HubSpot API contract emulator")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--portal-id", type=int, help="create this portal at startup")
    parser.add_argument("--token", help="private-app token of the startup portal")
    args = parser.parse_args(argv)
    emu = HubSpotEmulator()
    if args.portal_id or args.token:
        emu.create_portal(args.portal_id, token=args.token)
    print(emu.start(args.port), flush=True)
    emu.serve_forever()


if __name__ == "__main__":
    main()
