"""HubSpot connector on hubspot-api-client: contacts by phone or email, calls, SMS, emails, tasks, batched.

Exactly once: every object we write carries our id in the unique property `switchboard_id` (created by
`switchboard hubspot setup`), and we write with batch *upsert* on that property
(https://developers.hubspot.com/docs/api/crm/understanding-the-crm#upsert). A job that crashes after
HubSpot created the call but before we saved its id upserts the same call again on retry: HubSpot
updates it instead of creating a second one. Associations (call -> contact) are idempotent.

Requests: every call goes through the portal's shared rate limiter (app.ratelimit) and is retried on 429
after Retry-After; 401 triggers one token refresh. SDK errors become RetryableError (429 after retries,
5xx, timeouts) or PermanentError (400/403/404/409) with HubSpot's message.

Phone matching: HubSpot stores numbers as typed. We search its calculated, digits-only properties
`hs_searchable_calculated_phone_number` / `..._mobile_number` (the national number) with IN, up to 100
numbers per request, then confirm each hit by normalizing the stored number to E.164. Several contacts
on one number: the most recently modified wins, and the interaction records why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, ClassVar, TypeVar

import phonenumbers
from hubspot import HubSpot
from hubspot.discovery.discovery_base import DiscoveryBase

from app.core import bootstrap
from app.core.interactions import InteractionData
from app.core.models import Tenant
from app.core.phones import pretty, to_e164
from app.core.queue import redis_for
from app.core.ratelimit import Budget, Limit, RateLimiter, RateLimitTimeout
from connectors import tenant_settings
from connectors.base import (
    ActivityWrite,
    ContactGone,
    ContactMatch,
    CrmError,
    CrmRef,
    Party,
    PermanentError,
    RetryableError,
    TaskSpec,
    chunks,
    raise_if_error,
)
from connectors.hubspot.auth import HubSpotTokens

log = logging.getLogger(__name__)

T = TypeVar("T")

UNIQUE = "switchboard_id"
MAX_BATCH = 100
MAX_IN_VALUES = 100
MAX_429_RETRIES = 5
SEARCHERS = 4  # phone searches in flight at once (HubSpot allows 4 a second)
CONTACT_CACHE_TTL = 300  # seconds a phone -> contact lookup is reused
CONTACT_PROPERTIES = [
    "phone",
    "mobilephone",
    "email",
    "hubspot_owner_id",
    "lastmodifieddate",
    "firstname",
    "lastname",
    "associatedcompanyid",
    "num_associated_deals",
]
TIMEOUT = (5, 30)  # connect, read seconds for every HubSpot request

# HubSpot-defined association type ids (v4 table): https://developers.hubspot.com/docs/api/crm/associations
ASSOCIATION_TYPES = {
    ("calls", "contacts"): 194,
    ("communications", "contacts"): 81,
    ("tasks", "contacts"): 204,
    ("calls", "companies"): 182,
    ("communications", "companies"): 87,
    ("emails", "contacts"): 198,  # [UNVERIFIED] the email ids; we associate with the default types anyway
    ("emails", "companies"): 186,
}

# Default call outcomes (dispositions) HubSpot ships with.
DISPOSITIONS = {
    "busy": "9d9162e7-6cf3-4944-bf63-4dff82258764",
    "connected": "f240bbac-87c9-4f6e-bf70-924b57d47db7",
    "no_answer": "73a0d17f-1163-4015-bdd5-ec830791da20",
}
_CALL_STATUS = {
    "initiated": "CONNECTING",
    "ringing": "RINGING",
    "in-progress": "IN_PROGRESS",
    "completed": "COMPLETED",
    "missed": "NO_ANSWER",
    "voicemail": "COMPLETED",
    "busy": "BUSY",
    "no-answer": "NO_ANSWER",
    "failed": "FAILED",
    "canceled": "CANCELED",
}
_PRIORITY = {"low": "LOW", "normal": "MEDIUM", "high": "HIGH"}
# Our email status -> HubSpot's send status (BOUNCED | FAILED | SCHEDULED | SENDING | SENT, the enumeration in
# https://developers.hubspot.com/docs/api/crm/email); anything else, received, delivered, opened ...
# complained, is SENT, and the text says which. "sending" is our attempt before the provider took it (or an
# attempt whose outcome is unknown), so not yet SENT; "deferred" is the provider still trying.
_EMAIL_STATUS = {"sending": "SENDING", "deferred": "SENDING", "bounced": "BOUNCED", "failed": "FAILED"}


# --- pure mapping (no I/O) -----------------------------------------------------------------------------


def hs_time(value: datetime) -> str:
    """HubSpot's timestamp format (ISO 8601 UTC with milliseconds)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def call_properties(data: InteractionData, external_id: str) -> dict[str, str]:
    """Properties of the HubSpot call object for an interaction."""
    inbound = data.direction == "inbound"
    props = {
        UNIQUE: external_id,
        "hs_timestamp": hs_time(data.occurred_at),
        "hs_call_title": _call_title(data),
        "hs_call_direction": "INBOUND" if inbound else "OUTBOUND",
        "hs_call_status": _CALL_STATUS.get(data.status, "COMPLETED"),
        "hs_call_from_number": data.from_addr or "",
        "hs_call_to_number": data.to_addr or "",
        "hs_call_duration": str((data.duration_seconds or 0) * 1000),  # milliseconds
    }
    # The rep's notes from the dialer, then a transcription if there is one.
    body = "\n\n".join(x for x in (data.notes, data.body) if x)
    if body:
        props["hs_call_body"] = body
    if data.recording_url:
        # HubSpot plays .mp3/.wav links; Twilio serves a recording as MP3 when the URL ends in .mp3.
        url = data.recording_url
        props["hs_call_recording_url"] = url if url.rsplit("/", 1)[-1].count(".") else url + ".mp3"
    disposition = _disposition(data)
    if disposition:
        props["hs_call_disposition"] = disposition
    if data.owner_id:
        props["hubspot_owner_id"] = data.owner_id
    return props


def _call_title(data: InteractionData) -> str:
    who = data.caller_name or (pretty(data.party_phone) if data.party_phone else "unknown number")
    if data.status == "voicemail":
        return f"Voicemail from {who}"
    if data.status == "missed":
        return f"Missed call from {who}"
    if data.direction == "inbound":
        return f"Inbound call from {who}"
    return f"Outbound call to {who}"


def _disposition(data: InteractionData) -> str | None:
    if data.outcome:  # the rep chose one in the dialer (a GUID of the portal's outcomes)
        return data.outcome
    if data.status == "completed":
        return DISPOSITIONS["connected"]
    if data.status == "busy":
        return DISPOSITIONS["busy"]
    if data.status in ("missed", "no-answer", "voicemail"):
        return DISPOSITIONS["no_answer"]
    return None


def sms_properties(data: InteractionData, external_id: str) -> dict[str, str]:
    """Properties of the HubSpot communication (channel SMS) for a text."""
    lines = [data.body or ""]
    lines += [f"[attachment] {m.get('url')}" for m in data.media]
    if data.direction != "inbound":
        lines.append(f"[{data.status}{' error ' + data.error_code if data.error_code else ''}]")
    props = {
        UNIQUE: external_id,
        "hs_timestamp": hs_time(data.occurred_at),
        "hs_communication_channel_type": "SMS",
        "hs_communication_logged_from": "CRM",  # the only value HubSpot accepts from integrations
        "hs_communication_body": "\n".join(line for line in lines if line),
    }
    if data.owner_id:
        props["hubspot_owner_id"] = data.owner_id
    return props


def email_properties(data: InteractionData, external_id: str) -> dict[str, str]:
    """Properties of the HubSpot email for an email interaction: one we received is INCOMING_EMAIL, one we
    sent EMAIL (https://developers.hubspot.com/docs/api/crm/email). HubSpot's send status knows no
    delivered, opened or clicked, so the text of an email we sent ends with our status, as texts do."""
    lines = [data.body or ""]
    lines += [f"[attachment] {m.get('name')}" for m in data.media if m.get("name")]
    if data.direction != "inbound":
        lines.append(f"[{data.status}{' error ' + data.error_code if data.error_code else ''}]")
    props = {
        UNIQUE: external_id,
        "hs_timestamp": hs_time(data.occurred_at),
        "hs_email_direction": "INCOMING_EMAIL" if data.direction == "inbound" else "EMAIL",
        "hs_email_status": _EMAIL_STATUS.get(data.status, "SENT"),
        "hs_email_subject": data.subject or "",
        "hs_email_text": "\n".join(line for line in lines if line),
        "hs_email_headers": json.dumps(email_headers(data), separators=(",", ":")),
    }
    if data.owner_id:
        props["hubspot_owner_id"] = data.owner_id
    return props


def email_headers(data: InteractionData) -> dict[str, Any]:
    """hs_email_headers: {"from": {email, firstName, lastName}, "to": [...], "cc": [...], "bcc": []}, from
    which HubSpot fills the email's read-only sender and recipient properties."""

    def people(addresses: str | None) -> list[dict[str, str]]:
        return [{"email": a.strip()} for a in (addresses or "").split(",") if a.strip()]

    headers: dict[str, Any] = {"to": people(data.to_addr), "cc": people(data.cc), "bcc": []}
    if data.from_addr:
        sender = {"email": data.from_addr}
        first, _, last = (data.from_name or "").strip().partition(" ")
        sender.update({k: v for k, v in (("firstName", first), ("lastName", last.strip())) if v})
        headers = {"from": sender, **headers}
    return headers


def task_properties(task: TaskSpec, external_id: str) -> dict[str, str]:
    """Properties of a HubSpot task."""
    due = task.due_at or datetime.now(UTC)
    props = {
        UNIQUE: external_id,
        "hs_timestamp": hs_time(due),  # HubSpot's task due date
        "hs_task_subject": task.subject,
        "hs_task_status": "NOT_STARTED",
        "hs_task_priority": _PRIORITY.get(task.priority, "MEDIUM"),
        "hs_task_type": "TODO",
    }
    if task.body:
        props["hs_task_body"] = task.body
    if task.assignee_owner_id:
        props["hubspot_owner_id"] = task.assignee_owner_id
    return props


def contact_properties(party: Party, external_id: str) -> dict[str, str]:
    """Properties of a contact we create for an unknown party."""
    props = {UNIQUE: external_id}
    if party.phone:
        props["phone"] = party.phone
    if party.email:
        props["email"] = party.email
    if party.name:
        first, _, last = party.name.partition(" ")
        props["firstname"], props["lastname"] = first, last
    return props


def national_digits(e164: str) -> str:
    """What HubSpot's calculated searchable phone property holds: the national number's digits."""
    return str(phonenumbers.parse(e164, None).national_number)


def choose_contact(candidates: list[dict[str, Any]], phone: str) -> tuple[dict[str, Any], str]:
    """The shared-number rule: the most recently modified contact, then the lowest id; and why."""
    ordered = sorted(
        candidates, key=lambda c: (-_epoch(c["properties"].get("lastmodifieddate")), int(c["id"]))
    )
    if len(ordered) == 1:
        return ordered[0], f"phone {phone}"
    return ordered[0], f"phone {phone} shared by {len(ordered)} contacts; chose the most recently modified"


def _epoch(value: str | None) -> float:
    if not value:
        return 0.0
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- the connector -----------------------------------------------------------------------------------


class HubSpotConnector:
    """Connector for one tenant's HubSpot portal."""

    name: ClassVar[str] = "hubspot"
    batch_size: ClassVar[int] = 100  # HubSpot's batch endpoints take up to 100 inputs
    OPT_OUT_FIELD: ClassVar[str] = "switchboard_sms_opt_out"  # created by setup(); "true"/"false"

    def __init__(self, tenant: Tenant) -> None:
        self.tenant_id = tenant.id
        self.region = tenant.region
        self.portal = tenant.crm_account_id or f"tenant-{tenant.id}"
        self.settings = bootstrap.current()
        self.redis = redis_for(self.settings)
        options = tenant_settings(tenant, "hubspot")  # also under a subclass registered as another CRM
        self.limiter = RateLimiter(
            self.redis, f"hubspot:{self.portal}", Limit(int(options["hubspot_requests_per_10s"]), 10.0)
        )
        self.search_limiter = RateLimiter(
            self.redis,
            f"hubspot:{self.portal}:search",
            Limit(int(options["hubspot_searches_per_second"]), 1.0),
        )
        self.tokens = HubSpotTokens(tenant.id, self.settings, self.redis)
        self.requests = 0  # HubSpot requests made by this instance (for logs and benchmarks)
        self.companies: dict[str, str] = {}  # contact id -> its primary company id (associatedcompanyid)
        self.deals: dict[str, str] = {}  # contact id -> its most recent deal id

    @classmethod
    def preload(cls) -> None:
        """Import the SDK's API modules this connector reaches. The SDK imports each on first attribute
        access (0.1-0.4 s of CPU); RQ forks a work horse per job, so unless the worker's main process
        imported them first (jobs.rq_config calls connectors.preload), every drain job imports them anew."""
        client = HubSpot(access_token="preload")  # builds API objects only: no request is made
        for dotted in _SDK_APIS:
            _api(client, dotted)

    # --- transport ---------------------------------------------------------------------------------

    def _client(self) -> HubSpot:
        return HubSpot(
            access_token=self.tokens.access_token(),
            host=self.settings.hubspot_api_base,
            api_factory=_shared_api,
        )

    def _learn(self, headers: Any, search: bool) -> None:
        """HubSpot reports the portal's real ten-second budget; a lower one than configured wins."""
        if search or not headers:
            return
        try:
            reported = int(headers.get("X-HubSpot-RateLimit-Max") or 0)
        except (TypeError, ValueError):
            return
        if reported:
            self.limiter.learn(reported)

    def call(self, fn: Callable[[HubSpot], tuple[Any, int, Any]], *, search: bool = False) -> Any:
        """Run one SDK request (a *_with_http_info method) under the rate limits, with 429 and token-expiry
        handling; returns the response data."""
        refreshed = False
        for _attempt in range(MAX_429_RETRIES + 1):
            try:
                if search:
                    self.search_limiter.acquire(timeout=60)
                self.limiter.acquire(timeout=60)
            except RateLimitTimeout as exc:
                raise RetryableError(str(exc), retry_after=10) from None
            client = self._client()
            self.requests += 1
            try:
                data, _status, headers = fn(client)
                self._learn(headers, search)
                return data  # type: ignore[no-any-return]
            except Exception as exc:
                status = getattr(exc, "status", None)
                if status == 429:
                    wait = _retry_after(exc)
                    (self.search_limiter if search else self.limiter).block_for(wait)
                    log.info("hubspot.rate_limited portal=%s wait=%.1f", self.portal, wait)
                    continue
                if status == 401 and not refreshed:
                    self.tokens.refresh(stale=self.tokens.access_token())
                    refreshed = True
                    continue
                raise _translate(exc) from None
        raise RetryableError("HubSpot kept answering 429", retry_after=10)

    # --- contacts ----------------------------------------------------------------------------------

    def _cache_key(self, key: str) -> str:
        return f"switchboard:hubspot:{self.portal}:contact:{key}"

    def _remember(self, key: str, match: ContactMatch) -> None:
        company, deal = self.companies.get(match.ref.id), self.deals.get(match.ref.id)
        value = json.dumps(
            {
                "id": match.ref.id,
                "owner": match.owner_id,
                "reason": match.reason,
                "company": company,
                "deal": deal,
            }
        )
        self.redis.set(self._cache_key(key), value, ex=CONTACT_CACHE_TTL)

    def _recall(self, keys: list[str]) -> dict[str, ContactMatch]:
        if not keys:
            return {}
        values = self.redis.mget([self._cache_key(k) for k in keys])
        out = {}
        for key, raw in zip(keys, values, strict=True):
            if raw:
                v = json.loads(raw)
                out[key] = ContactMatch(CrmRef("contact", v["id"]), v["owner"], v["reason"] + " (cached)")
                if v.get("company"):
                    self.companies[v["id"]] = v["company"]
                if v.get("deal"):
                    self.deals[v["id"]] = v["deal"]
        return out

    def find_contacts(self, parties: Sequence[Party]) -> dict[Party, ContactMatch]:
        """Match parties by phone (any stored format, phone or mobile), else by email; batched and cached."""
        parties = list(dict.fromkeys(parties))
        phones = sorted({p.phone for p in parties if p.phone})
        by_phone = self._recall(phones)
        todo = [p for p in phones if p not in by_phone]
        with ThreadPoolExecutor(max_workers=SEARCHERS) as pool:  # the search limiter paces them
            for found in pool.map(self._search_phones, list(chunks(todo, MAX_IN_VALUES))):
                by_phone.update(found)
        emails = sorted(
            {p.email.lower() for p in parties if p.email and not (p.phone and p.phone in by_phone)}
        )
        by_email = self._recall([f"email:{e}" for e in emails])
        by_email = {k.removeprefix("email:"): v for k, v in by_email.items()}
        for chunk in chunks([e for e in emails if e not in by_email], MAX_IN_VALUES):
            by_email.update(self._search_emails(chunk))
        found = {}
        for party in parties:
            match = by_phone.get(party.phone or "") or by_email.get((party.email or "").lower())
            if match is not None:
                found[party] = match
        return found

    def _search_phones(self, phones: list[str]) -> dict[str, ContactMatch]:
        digits = sorted({national_digits(p) for p in phones})
        groups = [
            {"filters": [{"propertyName": prop, "operator": "IN", "values": digits}]}
            for prop in ("hs_searchable_calculated_phone_number", "hs_searchable_calculated_mobile_number")
        ]
        candidates: dict[str, list[dict[str, Any]]] = {p: [] for p in phones}
        for contact in self._search("contacts", groups):
            for prop in ("phone", "mobilephone"):
                e164 = to_e164(contact["properties"].get(prop), self.region)
                if e164 in candidates and contact not in candidates[e164]:
                    candidates[e164].append(contact)
        chosen = [choose_contact(found, p)[0] for p, found in candidates.items() if found]
        self._load_deals(sorted({c["id"] for c in chosen if _has_deals(c)}))
        out = {}
        for phone, found in candidates.items():
            if found:
                chosen, reason = choose_contact(found, phone)
                out[phone] = ContactMatch(
                    CrmRef("contact", chosen["id"]), chosen["properties"].get("hubspot_owner_id"), reason
                )
                self._remember(phone, out[phone])
        return out

    def _load_deals(self, contact_ids: list[str]) -> None:
        """The most recent deal (highest id) of each contact that has deals, 100 contacts a request."""
        for chunk in chunks(contact_ids, MAX_BATCH):
            body = {"inputs": [{"id": c} for c in chunk]}
            response = self.call(
                lambda c, b=body: c.crm.associations.v4.batch_api.get_page_with_http_info(
                    "contacts",
                    "deals",
                    batch_input_public_fetch_associations_batch_request=b,
                    _request_timeout=TIMEOUT,
                )
            )
            for result in response.results or []:
                deals = [str(t.to_object_id) for t in (result.to or [])]
                if deals:
                    self.deals[str(result._from.id)] = max(deals, key=int)

    def _search_emails(self, emails: list[str]) -> dict[str, ContactMatch]:
        groups = [{"filters": [{"propertyName": "email", "operator": "IN", "values": emails}]}]
        contacts = list(self._search("contacts", groups))
        self._load_deals(sorted({c["id"] for c in contacts if _has_deals(c)}))
        out = {}
        for contact in contacts:
            email = (contact["properties"].get("email") or "").lower()
            if email in emails and email not in out:
                out[email] = ContactMatch(
                    CrmRef("contact", contact["id"]), contact["properties"].get("hubspot_owner_id"), "email"
                )
                self._remember(f"email:{email}", out[email])
        return out

    def _search(self, object_type: str, groups: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        api = (
            f"crm.{object_type}.search_api"
            if object_type == "contacts"
            else f"crm.objects.{object_type}.search_api"
        )
        after: str | None = None
        while True:
            body: dict[str, Any] = {"filterGroups": groups, "properties": CONTACT_PROPERTIES, "limit": 200}
            if after:
                body["after"] = after
            response = self.call(
                lambda c, b=body: _api(c, api).do_search_with_http_info(
                    public_object_search_request=b, _request_timeout=TIMEOUT
                ),
                search=True,
            )
            for result in response.results:
                props = dict(result.properties or {})
                if props.get("associatedcompanyid"):
                    self.companies[str(result.id)] = str(props["associatedcompanyid"])
                yield {"id": result.id, "properties": props}
            paging = getattr(response, "paging", None)
            after = paging.next.after if paging and paging.next else None
            if not after:
                return

    def find_contact(self, party: Party) -> ContactMatch | None:
        """The contact for one party."""
        return self.find_contacts([party]).get(party)

    def create_contacts(self, parties: Sequence[tuple[Party, str]]) -> dict[str, CrmRef | CrmError]:
        """Create contacts for unknown parties by upsert on switchboard_id (a retry finds the first)."""
        out: dict[str, CrmRef | CrmError] = {}
        by_ext = {ext: party for party, ext in parties}
        for chunk in chunks(list(by_ext), MAX_BATCH):
            inputs = [
                {"idProperty": UNIQUE, "id": ext, "properties": contact_properties(by_ext[ext], ext)}
                for ext in chunk
            ]
            results, errors = self._upsert("contacts", inputs)
            for ext in chunk:
                if ext in results:
                    out[ext] = CrmRef("contact", results[ext][0])
                    party = by_ext[ext]
                    if party.phone:
                        self._remember(party.phone, ContactMatch(out[ext], None, "created by switchboard"))
                else:
                    out[ext] = errors.get(ext) or PermanentError("HubSpot did not return the contact")
        return out

    def create_contact(self, party: Party, *, external_id: str) -> CrmRef:
        """Create one contact (idempotent on external_id)."""
        return raise_if_error(self.create_contacts([(party, external_id)])[external_id])

    def contact_info(self, contact: CrmRef, extra: Sequence[str] = ()) -> dict[str, Any]:
        """The contact's fields from HubSpot (hs_timezone is HubSpot's own time-zone property)."""
        props = [
            "firstname",
            "lastname",
            "email",
            "phone",
            "mobilephone",
            "hubspot_owner_id",
            "hs_timezone",
            *extra,
        ]
        obj = self.call(
            lambda c: c.crm.contacts.basic_api.get_by_id_with_http_info(
                contact.id, properties=props, _request_timeout=TIMEOUT
            )
        )
        p = dict(obj.properties or {})
        first, last = p.get("firstname") or "", p.get("lastname") or ""
        phone = to_e164(p.get("phone") or p.get("mobilephone"), self.region)
        info: dict[str, Any] = {
            "id": str(obj.id),
            "name": f"{first} {last}".strip() or (pretty(phone) if phone else p.get("email")),
            "first_name": first or None,
            "email": p.get("email"),
            "phone": phone,
            "owner_id": p.get("hubspot_owner_id"),
            "time_zone": p.get("hs_timezone"),
        }
        for name in extra:
            info[name] = p.get(name)
        return info

    def update_contact(self, contact: CrmRef, properties: dict[str, Any]) -> None:
        """PATCH the contact's properties (HubSpot wants strings)."""
        body = {"properties": {k: _hs_value(v) for k, v in properties.items()}}
        self.call(
            lambda c: c.crm.contacts.basic_api.update_with_http_info(
                contact.id, simple_public_object_input=body, _request_timeout=TIMEOUT
            )
        )

    def deal_context(self, deal_id: str) -> dict[str, Any]:
        """The deal's name, amount, stage, owner, first contact, and csm_owner_id if the portal has it."""
        props = ["dealname", "amount", "dealstage", "hubspot_owner_id", "csm_owner_id", "closedate"]
        deal = self.call(
            lambda c: c.crm.deals.basic_api.get_by_id_with_http_info(
                deal_id, properties=props, _request_timeout=TIMEOUT
            )
        )
        links = self.call(
            lambda c: c.crm.associations.v4.basic_api.get_page_with_http_info(
                "deals", deal_id, "contacts", _request_timeout=TIMEOUT
            )
        )
        p = dict(deal.properties or {})
        contacts = sorted(str(r.to_object_id) for r in (links.results or []))
        return {
            "id": str(deal.id),
            "name": p.get("dealname"),
            "amount": p.get("amount"),
            "stage": p.get("dealstage"),
            "owner_id": p.get("hubspot_owner_id"),
            "csm_owner_id": p.get("csm_owner_id"),
            "contact_id": contacts[0] if contacts else None,
        }

    def budget(self) -> Budget:
        """The portal's ten-second budget (shared by every worker through Redis), without spending any."""
        return self.limiter.budget()

    def owner_hint(self, phone: str) -> str | None:
        """The owner of the contact last matched to this number (from our cache; never calls HubSpot)."""
        cached = self._recall([phone]).get(phone)
        return cached.owner_id if cached else None

    # --- activities --------------------------------------------------------------------------------

    def write_activities(self, items: Sequence[ActivityWrite]) -> list[CrmRef | CrmError]:
        """Upsert calls, texts and emails by switchboard_id, then associate the new ones with their
        contacts."""
        results: list[CrmRef | CrmError] = [PermanentError("not written")] * len(items)
        for object_type, channel, mapper in (
            ("calls", "call", call_properties),
            ("communications", "sms", sms_properties),
            ("emails", "email", email_properties),
        ):
            positions = [i for i, item in enumerate(items) if item.data.channel == channel]
            if channel == "call":
                # A call HubSpot's own dialer logged (the calling SDK's createEngagement) is updated by its
                # id: never a second call record for the same call.
                engaged = [i for i in positions if items[i].data.engagement_id]
                positions = [i for i in positions if not items[i].data.engagement_id]
                self._update_engagements(items, engaged, results)
            for chunk in chunks(positions, MAX_BATCH):
                inputs = [
                    {
                        "idProperty": UNIQUE,
                        "id": items[i].external_id,
                        "properties": mapper(items[i].data, items[i].external_id),
                    }
                    for i in chunk
                ]
                try:
                    written, errors = self._upsert(object_type, inputs)
                except CrmError as exc:
                    for i in chunk:
                        results[i] = exc
                    continue
                pairs = []
                for i in chunk:
                    ext = items[i].external_id
                    if ext in written:
                        object_id, new = written[ext]
                        results[i] = CrmRef(channel, object_id)
                        if (new or items[i].record is None) and items[i].contact.id:
                            pairs.append((object_id, items[i].contact.id))
                    else:
                        results[i] = errors.get(ext) or PermanentError("HubSpot did not return the object")
                # The contact's primary company and most recent deal get the activity on their timelines too
                # (best effort: the contact's association is the one that must hold).
                for to_type, known in (("companies", self.companies), ("deals", self.deals)):
                    extra = [(a, known[c]) for a, c in pairs if c in known]
                    if extra:
                        try:
                            self._associate(object_type, to_type, extra)
                        except CrmError as exc:
                            log.info("hubspot.association_failed to=%s error=%s", to_type, exc)
                if pairs:
                    gone = self._associate_checked(object_type, pairs)
                    for i in chunk:
                        if isinstance(results[i], CrmRef) and items[i].contact.id in gone:
                            results[i] = gone[items[i].contact.id]
                        elif isinstance(results[i], CrmRef) and "*" in gone:
                            results[i] = gone["*"]
        return results

    def _update_engagements(
        self, items: Sequence[ActivityWrite], positions: list[int], results: list[CrmRef | CrmError]
    ) -> None:
        """Batch-update calls HubSpot created itself (ids from the dialer) with the call's state and the rep's
        outcome and notes; associate them with the contact on the first write (HubSpot associates its
        engagement too; a repeated association is harmless). The engagement is addressed by its id and keeps
        no switchboard_id: a call we had logged ourselves before its id arrived is archived first (its
        switchboard_id is unique), so the call ends with one record, HubSpot's."""
        for chunk in chunks(positions, MAX_BATCH):
            ours = {i: _replaced_record(items[i]) for i in chunk}
            replaced = [record for record in ours.values() if record is not None]
            inputs = [
                {
                    "id": items[i].data.engagement_id,
                    "properties": {
                        k: v
                        for k, v in call_properties(items[i].data, items[i].external_id).items()
                        if k != UNIQUE
                    },
                }
                for i in chunk
            ]
            try:
                if replaced:
                    self._archive("calls", replaced)
                response = self.call(
                    lambda c, b=inputs: c.crm.objects.calls.batch_api.update_with_http_info(
                        batch_input_simple_public_object_batch_input={"inputs": b}, _request_timeout=TIMEOUT
                    )
                )
            except CrmError as exc:
                for i in chunk:
                    results[i] = exc
                continue
            written = {str(r.id) for r in response.results or []}
            pairs = []
            for i in chunk:
                engagement = str(items[i].data.engagement_id)
                if engagement in written:
                    results[i] = CrmRef("call", engagement)
                    first = items[i].record is None or ours[i] is not None
                    if first and items[i].contact.id:
                        pairs.append((engagement, items[i].contact.id))
                else:
                    results[i] = PermanentError(f"HubSpot has no call engagement {engagement}")
            if pairs:
                gone = self._associate_checked("calls", pairs)
                for i in chunk:
                    if isinstance(results[i], CrmRef) and items[i].contact.id in gone:
                        results[i] = gone[items[i].contact.id]
                    elif isinstance(results[i], CrmRef) and "*" in gone:
                        results[i] = gone["*"]

    def _archive(self, object_type: str, ids: list[str]) -> None:
        """Archive objects by id (rare: one per call whose engagement id came late; archiving an object
        already archived answers 204 again)."""
        for object_id in ids:
            self.call(
                lambda c, i=object_id: _api(c, f"crm.objects.{object_type}.basic_api").archive_with_http_info(
                    i, _request_timeout=TIMEOUT
                )
            )

    def _associate_checked(self, object_type: str, pairs: list[tuple[str, str]]) -> dict[str, CrmError]:
        """Associate activities with contacts; a contact deleted or merged in HubSpot since we matched it
        fails the whole batch, so find which ones are gone, associate the rest, and report them."""
        try:
            self._associate(object_type, "contacts", pairs)
            return {}
        except PermanentError as exc:
            missing = self._missing_contacts(sorted({c for _, c in pairs}))
            if not missing:
                return {"*": exc}
        except CrmError as exc:  # the objects exist; the retry upserts (a no-op) and associates
            return {"*": exc}
        for key in self.redis.scan_iter(self._cache_key("*")):
            raw = self.redis.get(key)
            if raw and json.loads(raw)["id"] in missing:
                self.redis.delete(key)
        rest = [(a, c) for a, c in pairs if c not in missing]
        gone: dict[str, CrmError] = {c: ContactGone(f"HubSpot contact {c} no longer exists") for c in missing}
        if rest:
            try:
                self._associate(object_type, "contacts", rest)
            except CrmError as exc:
                gone["*"] = exc
        return gone

    def _missing_contacts(self, ids: list[str]) -> set[str]:
        """Which of these contact ids HubSpot no longer has (batch read, 100 per request)."""
        found: set[str] = set()
        for chunk in chunks(ids, MAX_BATCH):
            body = {"inputs": [{"id": i} for i in chunk], "properties": ["hs_object_id"]}
            response = self.call(
                lambda c, b=body: c.crm.contacts.batch_api.read_with_http_info(
                    batch_read_input_simple_public_object_id=b, _request_timeout=TIMEOUT
                )
            )
            found.update(str(r.id) for r in response.results or [])
        return set(ids) - found

    def log_interaction(self, contact: CrmRef, data: InteractionData, *, external_id: str) -> CrmRef:
        """Write one activity (idempotent on external_id)."""
        return raise_if_error(self.write_activities([ActivityWrite(contact, data, external_id)])[0])

    def update_interaction(self, ref: CrmRef, data: InteractionData) -> None:
        """Patch the activity with the interaction's latest state."""
        external_id = f"switchboard-interaction-{data.id}"
        raise_if_error(
            self.write_activities([ActivityWrite(CrmRef("contact", ""), data, external_id, ref)])[0]
        )

    def create_task(self, contact: CrmRef | None, task: TaskSpec, *, external_id: str) -> CrmRef:
        """Create (or find, by external_id) a task, associated with the contact."""
        inputs = [{"idProperty": UNIQUE, "id": external_id, "properties": task_properties(task, external_id)}]
        written, errors = self._upsert("tasks", inputs)
        if external_id not in written:
            raise errors.get(external_id) or PermanentError("HubSpot did not return the task")
        task_id, new = written[external_id]
        if contact is not None and new:
            self._associate("tasks", "contacts", [(task_id, contact.id)])
        return CrmRef("task", task_id)

    # --- batch endpoints -----------------------------------------------------------------------------

    def _upsert(
        self, object_type: str, inputs: list[dict[str, Any]]
    ) -> tuple[dict[str, tuple[str, bool]], dict[str, CrmError]]:
        """Batch upsert; returns {switchboard_id: (hubspot id, created?)} and {switchboard_id: error}."""
        for entry in inputs:
            entry["objectWriteTraceId"] = entry["id"]
        api = (
            "crm.contacts.batch_api" if object_type == "contacts" else f"crm.objects.{object_type}.batch_api"
        )
        # The raw JSON, not the SDK's models: deserializing 100 results (two dateutil parses each) cost a
        # fifth of a drain's CPU, and we read three fields of each.
        response = self.call(
            lambda c: _raw(
                _api(c, api).upsert_with_http_info(
                    batch_input_simple_public_object_batch_input_upsert={"inputs": inputs},
                    _request_timeout=TIMEOUT,
                    _preload_content=False,
                )
            )
        )
        written = {}
        for result in response.get("results") or []:
            key = (result.get("properties") or {}).get(UNIQUE)
            if key:
                written[key] = (str(result["id"]), bool(result.get("new", False)))
        errors: dict[str, CrmError] = {}
        for error in response.get("errors") or []:
            context = error.get("context") or {}
            message = error.get("message") or "HubSpot rejected the input"
            for key in context.get("objectWriteTraceId", []) or context.get("ids", []) or []:
                errors[key] = PermanentError(message)
        return written, errors

    def _associate(self, from_type: str, to_type: str, pairs: list[tuple[str, str]]) -> None:
        """Default (HubSpot-defined) associations, 100 per request; repeating one is harmless."""
        for chunk in chunks(pairs, MAX_BATCH):
            body = {"inputs": [{"from": {"id": a}, "to": {"id": b}} for a, b in chunk]}
            self.call(
                lambda c, b=body: _raw(
                    c.crm.associations.v4.batch_api.create_default_with_http_info(
                        from_type,
                        to_type,
                        batch_input_public_default_association_multi_post=b,
                        _request_timeout=TIMEOUT,
                        _preload_content=False,
                    )
                )
            )

    # --- owners --------------------------------------------------------------------------------------

    def owners(self) -> list[dict[str, str]]:
        """The portal's owners: [{id, email, name}]."""
        out, after = [], None
        while True:
            page = self.call(
                lambda c, a=after: c.crm.owners.owners_api.get_page_with_http_info(
                    limit=100, after=a, _request_timeout=TIMEOUT
                )
            )
            for owner in page.results or []:
                name = " ".join(x for x in (owner.first_name, owner.last_name) if x)
                out.append({"id": str(owner.id), "email": (owner.email or "").lower(), "name": name})
            after = page.paging.next.after if getattr(page, "paging", None) and page.paging.next else None
            if not after:
                return out

    def setup(self) -> list[str]:
        """Create the properties Switchboard writes (idempotent): the unique switchboard_id on every object
        type, and switchboard_sms_opt_out on contacts. Returns the object types it created them on."""
        made = []
        wanted = [
            (
                t,
                UNIQUE,
                True,
                "Switchboard ID",
                "Set by Switchboard so it never writes the same record twice.",
            )
            for t in ("contacts", "calls", "communications", "tasks", "emails")
        ]
        wanted.append(
            (
                "contacts",
                self.OPT_OUT_FIELD,
                False,
                "SMS opt-out (Switchboard)",
                "true when the contact texted STOP (or a carrier reported an opt-out).",
            )
        )
        for object_type, name, unique, label, description in wanted:
            body = {
                "name": name,
                "label": label,
                "type": "string",
                "fieldType": "text",
                "groupName": _property_group(object_type),
                "hasUniqueValue": unique,
                "description": description,
            }
            try:
                self.call(
                    lambda c, t=object_type, b=body: c.crm.properties.core_api.create_with_http_info(
                        t, property_create=b, _request_timeout=TIMEOUT
                    )
                )
                if name == UNIQUE:
                    made.append(object_type)
            except PermanentError as exc:
                if "already" not in str(exc).lower() and "exists" not in str(exc).lower():
                    raise
        return made


def _replaced_record(item: ActivityWrite) -> str | None:
    """The call record we wrote ourselves before HubSpot's engagement id arrived (to archive), if any."""
    if item.record is None or item.record.id == str(item.data.engagement_id):
        return None
    return item.record.id


def _property_group(object_type: str) -> str:
    return {
        "contacts": "contactinformation",
        "calls": "callinformation",
        "communications": "communicationinformation",
        "tasks": "taskinformation",
        "emails": "emailinformation",  # [UNVERIFIED] the group name of HubSpot's email properties
    }[object_type]


def _hs_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _has_deals(contact: dict[str, Any]) -> bool:
    """HubSpot's calculated num_associated_deals says whether reading a contact's deals is worth a request."""
    try:
        return int(contact["properties"].get("num_associated_deals") or 0) > 0
    except ValueError:
        return True


def _shared_api(package: Any, api_name: str, config: dict[str, Any]) -> Any:
    """The SDK's API object for this token and host, built once (the SDK's api_factory hook).

    By default every attribute access (client.crm.contacts.batch_api) builds a Configuration, an ApiClient,
    reads the package's version from its metadata and opens a new urllib3 pool, so no request reused a
    connection (a TLS handshake each, against HubSpot). One pool per token and API is shared by the drain's
    writer threads; urllib3's pools are thread-safe. A refreshed token is a new key.
    """
    return _api_for(package, api_name, tuple(sorted(config.items())))


@lru_cache(maxsize=256)
def _api_for(package: Any, api_name: str, config: tuple[tuple[str, Any], ...]) -> Any:
    return DiscoveryBase._default_api_factory(package, api_name, dict(config))


_SDK_APIS = (
    "crm.contacts.basic_api",
    "crm.contacts.batch_api",
    "crm.contacts.search_api",
    "crm.deals.basic_api",
    "crm.owners.owners_api",
    "crm.properties.core_api",
    "crm.associations.v4.basic_api",
    "crm.associations.v4.batch_api",
    *(f"crm.objects.{t}.{a}" for t in ("calls", "communications", "emails", "tasks") for a in ("batch_api",)),
    "crm.objects.search_api",
)


def _raw(response: Any) -> tuple[dict[str, Any], int, Any]:
    """An SDK call made with _preload_content=False (the SDK then returns urllib3's response, and still
    raises its ApiException for a status outside 2xx) as `call` expects it: (JSON body, status, headers)."""
    try:
        body = response.data
    finally:
        response.release_conn()
    return (json.loads(body) if body else {}), response.status, response.headers


def _api(client: HubSpot, dotted: str) -> Any:
    target: Any = client
    for part in dotted.split("."):
        target = getattr(target, part)
    return target


def _retry_after(exc: Exception) -> float:
    headers = getattr(exc, "headers", None) or {}
    try:
        return max(1.0, float(headers.get("Retry-After") or 1))
    except (TypeError, ValueError):
        return 1.0


def _translate(exc: Exception) -> CrmError:
    """SDK exception -> our taxonomy, with HubSpot's own message (never the token)."""
    status = getattr(exc, "status", None)
    if status is None:
        return RetryableError(f"HubSpot unreachable: {type(exc).__name__}")
    message = _message(getattr(exc, "body", None)) or getattr(exc, "reason", "") or ""
    if status >= 500 or status == 429:
        return RetryableError(f"HubSpot HTTP {status}: {message}")
    if status == 401:
        return RetryableError(f"HubSpot HTTP 401 after a token refresh: {message}")
    return PermanentError(f"HubSpot HTTP {status}: {message}")


def _message(body: Any) -> str:
    if not body:
        return ""
    try:
        return str(json.loads(body).get("message", ""))[:500]
    except (ValueError, AttributeError, TypeError):
        return str(body)[:200]
